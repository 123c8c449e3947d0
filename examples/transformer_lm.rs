//! A Burn user's causal language model — token and position embeddings, burn-nn's
//! `TransformerEncoder` (pre-norm, autoregressive mask), a linear head — made BitNet W1.58A8 by
//! importing `bitnet_qat::nn::transformer` instead of `burn::nn::transformer`
//! (`examples/src/your_lm`), trained on Shakespeare by burn-train's `Learner` through `Qat`;
//! with `--reference`, our own [`BitNetLm`](bitnet_qat::lm::BitNetLm) ternary model of the same
//! width, blocks, steps, data and recipe beside it (the parity of the generic path with the
//! hand-built one), and with `--fp32` the same user model in FP32. The first seed's W1.58A8
//! model is then packed (its linear layers run the int8 × ternary kernels), checked against the
//! trained model bit for bit, saved, loaded back and checked again.
//!
//! ```text
//! scripts/install-deps.sh                       # the Shakespeare corpus, once
//! cargo run --release --example transformer_lm -- --seeds 42 43 44 --reference --fp32
//! ```

use std::path::PathBuf;

use bitnet_qat::infer::{load_packed, pack, record_bytes, save};
use bitnet_qat::lm::{TokenBatcher, TokenWindows};
use bitnet_qat::train::Qat;
use bitnet_qat_examples::cli::{
    Act, ActQuant, DeviceArg, LmArgs, QuietArg, ShakespeareArgs, ShakespeareData, Weights,
};
use bitnet_qat_examples::lm::{LmFitConfig, fit_lm, fit_text, lm_schedule};
use bitnet_qat_examples::report::mean_sd;
use bitnet_qat_examples::your_lm::{float, qat};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::train::Learner;
use clap::Parser;

/// Train a burn-nn TransformerEncoder language model as W1.58A8 and compare it with BitNetLm.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    data: ShakespeareArgs,
    /// Where burn-train writes logs and checkpoints, and the packed model goes.
    #[arg(long, default_value = "target/transformer_lm")]
    out: PathBuf,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Feed-forward width of the user's model (default: 4.5 × the width, the parameters of
    /// BitNetLm's gated network of 8/3 × the width rounded up to 64).
    #[arg(long)]
    d_ff: Option<usize>,
    /// Tokens per training window.
    #[arg(long, default_value_t = 64)]
    context: usize,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 1200)]
    steps: usize,
    /// Validation points per run.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate of the user's W1.58A8 model (BitNet's two-stage schedule, Adam
    /// β₂ = 0.95).
    #[arg(long, default_value_t = 6e-3)]
    lr: f64,
    /// Peak learning rate of the BitNetLm reference (that of `lm_table`).
    #[arg(long, default_value_t = 1.5e-3)]
    reference_lr: f64,
    /// Peak learning rate of the FP32 runs.
    #[arg(long, default_value_t = 1e-3)]
    fp32_lr: f64,
    /// Weight decay of stage 1 (on the quantized weights).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// No layer norm before the head of the user's model (Burn's text-generation example).
    #[arg(long)]
    no_final_norm: bool,
    /// Validation windows.
    #[arg(long, default_value_t = 256)]
    valid_windows: usize,
    /// The seeds, one run of each model per seed.
    #[arg(long, num_args = 1.., default_values_t = [42])]
    seeds: Vec<u64>,
    /// Also train BitNetLm (ternary, W1.58A8) with the same width, blocks, steps and data.
    #[arg(long)]
    reference: bool,
    /// Also train the user's model in FP32.
    #[arg(long)]
    fp32: bool,
    /// Write the table as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    quiet: QuietArg,
    #[command(flatten)]
    device: DeviceArg,
}

/// One model's runs.
#[derive(Default)]
struct Row {
    name: &'static str,
    losses: Vec<Vec<f64>>,
    seconds: Vec<f64>,
    params: usize,
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
    let vocab = tokenizer.vocab_size();
    let reference = LmArgs {
        d_model: args.d_model,
        layers: args.layers,
        heads: args.heads,
        kv_heads: None,
        d_ff: None,
        context: args.context,
        precision: Weights::Ternary,
        act_quant: ActQuant::Token,
        activation: Act::Relu2,
        untied: false,
        rope_theta: 10000.0,
    };
    let d_ff = args.d_ff.unwrap_or(reference.d_ff() * 3 / 2);
    let (c, d, h, l) = (args.context, args.d_model, args.heads, args.layers);
    let norm = !args.no_final_norm;
    let model = float::TextGenerationConfig::new(vocab, c, d, d_ff, h, l).with_final_norm(norm);
    let qat_model = qat::TextGenerationConfig::new(vocab, c, d, d_ff, h, l).with_final_norm(norm);
    println!(
        "Shakespeare ({vocab} characters): {} steps of {} windows of {}; user's model width {}, \
         {} blocks, {} heads, d_ff {}",
        args.steps,
        args.batch_size,
        args.context,
        model.d_model,
        model.n_layers,
        model.n_heads,
        model.d_ff
    );
    let fit_config = |name: &str, seed: u64, lr: f64| {
        let mut fit = LmFitConfig::new(
            args.out.join(format!("{name}-{seed}")),
            reference.config(vocab),
        );
        fit.context = args.context;
        fit.batch_size = args.batch_size;
        fit.steps = args.steps;
        fit.epochs = args.epochs;
        fit.lr = lr;
        fit.weight_decay = args.weight_decay;
        fit.seed = seed;
        fit.valid_windows = args.valid_windows;
        fit.checkpoints = false;
        fit.renderer = Some(
            args.quiet
                .renderer()
                .unwrap_or_else(|| Box::new(bitnet_qat::train::QuietRenderer::new())),
        );
        let _ = std::fs::remove_dir_all(&fit.dir);
        fit
    };
    let adam = || AdamConfig::new().with_beta_2(0.95).build();
    let mut rows: Vec<Row> = [
        (true, "burn-nn TransformerEncoder, drop-in W1.58A8"),
        (args.reference, "BitNetLm ternary W1.58A8 (reference)"),
        (args.fp32, "burn-nn TransformerEncoder, FP32"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| Row {
        name,
        ..Row::default()
    })
    .collect();
    let mut first = None;
    for &seed in &args.seeds {
        // The user's model as W1.58A8, BitNet's recipe (`lm_schedule`) through `Qat`.
        let fit = fit_config("w158a8", seed, args.lr);
        let (lr, plan) = lm_schedule(&fit)?;
        let adevice = device.clone().autodiff();
        adevice.seed(seed);
        let learner =
            Qat::new(qat_model.init(&adevice), &plan, &adevice)?.learner(adam(), lr.init()?);
        let (trained, losses, seconds) =
            fit_text(learner, train.clone(), valid.clone(), fit, &device)?;
        report(
            &mut rows[0],
            seed,
            losses,
            seconds,
            trained.model.num_params(),
        );
        first.get_or_insert(trained.model);

        if args.reference {
            let fitted = fit_lm(
                train.clone(),
                valid.clone(),
                fit_config("bitnet-lm", seed, args.reference_lr),
                &device,
            )?;
            let params = fitted.model.lm.num_params();
            report(
                &mut rows[1],
                seed,
                fitted.valid_loss,
                fitted.seconds,
                params,
            );
        }
        if args.fp32 {
            let fit = fit_config("fp32", seed, args.fp32_lr);
            let (lr, mut plan) = lm_schedule(&fit)?;
            plan = plan.with_float_weight_decay(true);
            adevice.seed(seed);
            let learner: Learner<Qat<float::TextGeneration>> =
                Qat::new(model.init(&adevice), &plan, &adevice)?.learner(adam(), lr.init()?);
            let (trained, losses, seconds) =
                fit_text(learner, train.clone(), valid.clone(), fit, &device)?;
            let row = rows.len() - 1;
            report(
                &mut rows[row],
                seed,
                losses,
                seconds,
                trained.model.num_params(),
            );
        }
    }

    let finals = |row: &Row| -> Vec<f64> {
        row.losses
            .iter()
            .map(|l| *l.last().unwrap_or(&f64::NAN))
            .collect()
    };
    let base = args.reference.then(|| mean_sd(&finals(&rows[1])).0);
    println!(
        "\n| model | final validation loss per seed (nats/char) | mean ± sd | vs BitNetLm | \
         parameters | s / run |\n|---|---|---|---|---:|---:|"
    );
    for row in &rows {
        let values = finals(row);
        let (mean, sd) = mean_sd(&values);
        println!(
            "| {} | {} | {mean:.4} ± {sd:.4} | {} | {} | {:.0} |",
            row.name,
            values
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(", "),
            base.map_or("-".into(), |b| format!(
                "{:+.2} %",
                (mean / b - 1.0) * 100.0
            )),
            row.params,
            mean_sd(&row.seconds).0,
        );
    }

    // The first seed's W1.58A8 model, packed: its linear layers run the int8 × ternary kernels;
    // the outputs are the trained model's, bit for bit, before saving and after loading.
    let trained = first.ok_or("no seed given")?;
    let windows = TokenWindows::tiled(valid.clone(), args.context, Some(16))?;
    let batch = TokenBatcher.batch(windows.iter().collect::<Result<Vec<_>, _>>()?, &device);
    let packed = pack(&trained)?;
    let expected = trained.forward(batch.inputs.clone()).into_data();
    let same = packed.forward(batch.inputs.clone()).into_data() == expected;
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("transformer_lm.packed.bpk");
    save(packed.clone(), &path)?;
    let loaded = load_packed(qat_model.init(&device), &path)?;
    let reloaded = loaded.forward(batch.inputs).into_data() == expected;
    println!(
        "\npacked: outputs of 16 validation windows equal to the trained model's: {same}; \
         saved to {} ({} bytes, {} bytes unpacked); reloaded, equal: {reloaded}",
        path.display(),
        record_bytes(packed)?,
        record_bytes(trained)?,
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "steps": args.steps,
            "batch_size": args.batch_size,
            "context": args.context,
            "d_model": args.d_model,
            "layers": args.layers,
            "d_ff": model.d_ff,
            "seeds": args.seeds,
            "rows": rows.iter().map(|r| serde_json::json!({
                "model": r.name,
                "valid_loss": r.losses,
                "seconds": r.seconds,
                "params": r.params,
            })).collect::<Vec<_>>(),
            "packed_equal": same,
            "reloaded_equal": reloaded,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}

fn report(row: &mut Row, seed: u64, losses: Vec<f64>, seconds: f64, params: usize) {
    println!(
        "{} seed {seed}: validation loss {} ({seconds:.0} s)",
        row.name,
        losses
            .iter()
            .map(|l| format!("{l:.4}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    row.losses.push(losses);
    row.seconds.push(seconds);
    row.params = params;
}
