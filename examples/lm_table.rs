//! The FP32 / ternary comparison of the BitNet language model on Shakespeare: the same data,
//! steps and seeds for FP32 at width d, ternary at width d and ternary at width 2d; a markdown
//! table (validation loss in nats per character, perplexity, training tokens per second,
//! parameters, packed size) and a PNG of the validation curves.
//!
//! ```text
//! cargo run --release --example lm_table -- --out results/lm --seeds 3
//! ```

use std::path::PathBuf;
use std::time::Instant;

use bitnet_qat::infer::record_bytes;
use bitnet_qat::lm::BitNetLmConfig;
use bitnet_qat::lm::SavedLm;
use bitnet_qat::lm::{TokenBatcher, TokenWindows};
use bitnet_qat::train::{QatPlan, optimize, prepare};
use bitnet_qat_examples::cli::{DeviceArg, LmArgs, ShakespeareArgs, ShakespeareData, Weights};
use bitnet_qat_examples::lm::{LanguageModel, LmFitConfig, fit_lm, sample};
use bitnet_qat_examples::report::{Variant, mean_sd, plot_curves};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use clap::Parser;

/// Train FP32 and ternary language models side by side and tabulate them.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    data: ShakespeareArgs,
    /// Where the table, the plot and the runs go.
    #[arg(long, default_value = "target/lm_table")]
    out: PathBuf,
    #[command(flatten)]
    lm: LmArgs,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Validation points per run.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate of the ternary runs.
    #[arg(long, default_value_t = 1.5e-3)]
    lr: f64,
    /// Peak learning rate of the FP32 runs.
    #[arg(long, default_value_t = 1e-3)]
    fp32_lr: f64,
    /// Seeds per variant (42, 43, ...).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Validation windows.
    #[arg(long, default_value_t = 64)]
    valid_windows: usize,
    /// Interleaved timing samples of one training step per variant (median reported).
    #[arg(long, default_value_t = 21)]
    timing_samples: usize,
    #[command(flatten)]
    device: DeviceArg,
}

struct Run {
    name: String,
    config: BitNetLmConfig,
    lr: f64,
    losses: Vec<Vec<f64>>,
    params: usize,
    packed: Option<usize>,
    f32_bytes: usize,
    sample: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.device.device()?;
    let ShakespeareData {
        tokenizer,
        train,
        valid,
        ..
    } = args.data.load()?;
    std::fs::create_dir_all(&args.out)?;
    let vocab = tokenizer.vocab_size();
    let d = args.lm.d_model;
    let mut fp32 = args.lm.clone();
    fp32.precision = Weights::Fp32;
    let mut ternary = args.lm.clone();
    ternary.precision = Weights::Ternary;
    let mut wide = ternary.clone();
    wide.d_model = 2 * d;
    wide.d_ff = args.lm.d_ff.map(|f| 2 * f);
    let mut runs: Vec<Run> = [
        (format!("FP32, width {d}"), fp32, args.fp32_lr),
        (format!("ternary, width {d}"), ternary, args.lr),
        (format!("ternary, width {}", 2 * d), wide, args.lr),
    ]
    .into_iter()
    .map(|(name, lm, lr)| Run {
        name,
        config: lm.config(vocab),
        lr,
        losses: Vec::new(),
        params: 0,
        packed: None,
        f32_bytes: 0,
        sample: String::new(),
    })
    .collect();

    for seed in 42..42 + args.seeds {
        for (i, run) in runs.iter_mut().enumerate() {
            let mut fit = LmFitConfig::new(
                args.out.join(format!("run-{i}-seed-{seed}")),
                run.config.clone(),
            );
            fit.context = args.lm.context;
            fit.batch_size = args.batch_size;
            fit.steps = args.steps;
            fit.epochs = args.epochs;
            fit.lr = run.lr;
            fit.seed = seed;
            fit.valid_windows = args.valid_windows;
            fit.checkpoints = false;
            let _ = std::fs::remove_dir_all(&fit.dir);
            let fitted = fit_lm(train.clone(), valid.clone(), fit, &device)?;
            println!(
                "{} seed {seed}: validation loss {} ({:.0} s)",
                run.name,
                fitted
                    .valid_loss
                    .iter()
                    .map(|l| format!("{l:.4}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                fitted.seconds
            );
            // The model of the first seed: its sizes, saved (packed when ternary), and a sample
            // from the saved folder.
            if seed == 42 {
                let lm = fitted.model.lm;
                let packs = run.config.weight_quant.is_some();
                let model_dir = args.out.join(format!("model-{i}"));
                SavedLm::save(&model_dir, &run.config, &tokenizer, &lm, packs)?;
                run.params = lm.num_params();
                run.f32_bytes = record_bytes(lm)?;
                if packs {
                    run.packed =
                        Some(std::fs::metadata(model_dir.join(SavedLm::PACKED))?.len() as usize);
                }
                let (saved, _, _) = SavedLm::load(&model_dir, &device)?;
                run.sample = sample(&saved, &tokenizer, 200, 1)?;
            }
            run.losses.push(fitted.valid_loss);
        }
    }

    // Training throughput: one step (forward, backward, optimizer) of each model on the same
    // batch, interleaved, median of the samples.
    let batch_windows = TokenWindows::random(train.clone(), args.lm.context, args.batch_size, 1)?;
    let adevice = device.clone().autodiff();
    let batch = TokenBatcher.batch(
        batch_windows.iter().collect::<Result<Vec<_>, _>>()?,
        &adevice,
    );
    let mut models = runs
        .iter()
        .map(|r| {
            prepare(LanguageModel {
                lm: r.config.init(&adevice)?,
                qat: QatPlan::new().init(&adevice),
            })
        })
        .collect::<bitnet_qat::Result<Vec<_>>>()?;
    let mut optims: Vec<_> = models
        .iter()
        .map(|m| m.qat.optimizer(m, AdamConfig::new().build()))
        .collect();
    let mut samples = vec![Vec::new(); runs.len()];
    for round in 0..args.timing_samples + 2 {
        for i in 0..runs.len() {
            let start = Instant::now();
            let model = models[i].clone();
            let loss = model.predict(batch.clone()).loss;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let model = optimize(model, &mut optims[i], 1e-4, grads);
            // Wait for the device.
            let _ = model.lm.norm.gamma.val().into_data();
            models[i] = model;
            if round >= 2 {
                samples[i].push(start.elapsed().as_secs_f64());
            }
        }
    }
    let tokens = (args.batch_size * args.lm.context) as f64;
    let throughput: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            tokens / s[s.len() / 2]
        })
        .collect();

    let finals: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| {
            r.losses
                .iter()
                .map(|l| *l.last().unwrap_or(&f64::NAN))
                .collect()
        })
        .collect();
    let base = mean_sd(&finals[0]).0;
    let mut table = format!(
        "Shakespeare (character level, vocabulary {vocab}), {} steps of {} windows of {} characters, \
         {} seed(s); validation on {} windows of the held-out works.\n\n\
         | variant | validation loss (nats/char) | perplexity | vs FP32 | train tokens/s | vs FP32 | parameters | f32 record (B) | packed (B) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.steps, args.batch_size, args.lm.context, args.seeds, args.valid_windows
    );
    for (i, run) in runs.iter().enumerate() {
        let (mean, sd) = mean_sd(&finals[i]);
        table.push_str(&format!(
            "| {} | {mean:.4} ± {sd:.4} | {:.3} | {:.3}× ({:+.4} nats) | {:.0} | {:.2}× | {} | {} | {} |\n",
            run.name,
            mean.exp(),
            mean / base,
            mean - base,
            throughput[i],
            throughput[i] / throughput[0],
            run.params,
            run.f32_bytes,
            run.packed.map_or("-".to_string(), |b| b.to_string()),
        ));
    }
    table.push_str("\nSamples (first seed, top-10 at temperature 0.8, from the saved model):\n");
    for run in &runs {
        table.push_str(&format!(
            "\n{}:\n\n```text\n{}\n```\n",
            run.name, run.sample
        ));
    }
    let table_path = args.out.join("lm_table.md");
    std::fs::write(&table_path, &table)?;
    print!("{table}");
    let variants: Vec<Variant> = runs
        .iter()
        .map(|r| {
            let epochs = r.losses.first().map_or(0, Vec::len);
            let curve = (0..epochs)
                .map(|e| r.losses.iter().map(|l| l[e]).sum::<f64>() / r.losses.len() as f64)
                .collect();
            Variant {
                name: r.name.clone(),
                weights: String::new(),
                curve,
                seconds: 0.0,
            }
        })
        .collect();
    let plot = args.out.join("lm_curves.png");
    plot_curves(
        &variants,
        "BitNet LM on Shakespeare",
        ("validation loss (nats/char)", ""),
        &plot,
    )?;
    println!("table: {}\nplot: {}", table_path.display(), plot.display());
    Ok(())
}
