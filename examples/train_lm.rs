//! Train a BitNet b1.58 language model on Shakespeare (character level) with burn-train's
//! `Learner`: the TUI dashboard shows loss, perplexity, next-character accuracy, learning rate
//! and the QAT metrics. Off a terminal (or with `--quiet`) it prints one line per epoch. Then
//! it packs the model (ternary or binary weights), checks the packed logits against the
//! trained model's, saves it with its tokenizer and generates a sample.
//!
//! ```text
//! scripts/install-deps.sh                          # fetches the corpus
//! cargo run --release --example train_lm -- --quick
//! cargo run --release --example train_lm -- --d-model 256 --layers 4 --steps 2000
//! cargo run --release --example train_lm -- --precision fp32 --out target/lm-fp32
//! cargo run --release --example generate -- --checkpoint target/train_lm/model --prompt "ROMEO."
//! ```

use std::path::PathBuf;

use bitnet_qat::lm::SavedLm;
use bitnet_qat::lm::{TokenBatcher, TokenWindows};
use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
use bitnet_qat::train::QatPlan;
use bitnet_qat_examples::cli::{DeviceArg, LmArgs, QuietArg, ShakespeareArgs, ShakespeareData};
use bitnet_qat_examples::lm::{LmFitConfig, fit_lm, sample};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use clap::Parser;

/// Train a BitNet language model on Shakespeare.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    data: ShakespeareArgs,
    /// Where burn-train writes logs and checkpoints; the trained model goes to OUT/model.
    #[arg(long, default_value = "target/train_lm")]
    out: PathBuf,
    #[command(flatten)]
    lm: LmArgs,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Epochs the steps are split into (validation and a checkpoint after each).
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (BitNet two-stage schedule, Adam).
    #[arg(long, default_value_t = 1.5e-3)]
    lr: f64,
    /// Weight decay in stage 1 (0 in stage 2).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Steps of a linear lambda warm-up from full precision to fully quantized (0: none).
    #[arg(long, default_value_t = 0)]
    lambda_warmup: usize,
    /// Validation windows.
    #[arg(long, default_value_t = 64)]
    valid_windows: usize,
    /// Resume from the checkpoint of this epoch in --out.
    #[arg(long)]
    resume: Option<usize>,
    /// A seconds-long run: width 64, 2 blocks, context 64, 60 steps in 2 epochs.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    quiet: QuietArg,
    /// Characters to generate from the trained model.
    #[arg(long, default_value_t = 200)]
    sample: usize,
    #[command(flatten)]
    device: DeviceArg,
    /// Seed of the initialisation, the training windows and the sample.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse();
    if args.quick {
        args.lm.d_model = 64;
        args.lm.layers = 2;
        args.lm.heads = 2;
        args.lm.context = 64;
        args.steps = 60;
        args.epochs = 2;
        args.batch_size = 16;
        args.valid_windows = 16;
        args.sample = args.sample.min(100);
    }
    let device = args.device.device()?;
    let ShakespeareData {
        corpus,
        tokenizer,
        train,
        valid,
    } = args.data.load()?;
    let config = args.lm.config(tokenizer.vocab_size());
    println!(
        "Shakespeare: {} training characters ({} works), {} validation ({}); vocabulary {}",
        train.len(),
        corpus.train_works.len(),
        valid.len(),
        corpus.valid_works.join(", "),
        tokenizer.vocab_size()
    );
    println!(
        "model: width {}, {} blocks, {} heads ({} key/value), d_ff {}, context {}, {:?} weights, \
         activations {:?}, {:?}, {} head",
        config.d_model,
        config.n_layers,
        config.n_heads,
        config.kv_heads(),
        config.d_ff,
        args.lm.context,
        args.lm.precision,
        args.lm.act_quant,
        config.activation,
        if config.tied_head { "tied" } else { "separate" }
    );

    let mut scheduler = QatScheduler::default();
    if args.lambda_warmup > 0 {
        scheduler =
            scheduler.with_lambda(LambdaSchedule::new(args.lambda_warmup, LambdaRamp::Linear));
    }
    let mut fit = LmFitConfig::new(&args.out, config.clone());
    fit.context = args.lm.context;
    fit.batch_size = args.batch_size;
    fit.steps = args.steps;
    fit.epochs = args.epochs;
    fit.lr = args.lr;
    fit.weight_decay = args.weight_decay;
    fit.seed = args.seed;
    fit.plan = QatPlan::new().with_scheduler(scheduler);
    fit.valid_windows = args.valid_windows;
    fit.resume_from = args.resume;
    fit.renderer = args.quiet.renderer();
    let fitted = fit_lm(train.clone(), valid.clone(), fit, &device)?;
    let tokens = args.steps.div_ceil(args.epochs) * args.epochs * args.batch_size * args.lm.context;
    println!(
        "validation loss per epoch (nats/char): {}; perplexity {:.3}; {:.1} s, {:.0} train tokens/s",
        fitted
            .valid_loss
            .iter()
            .map(|l| format!("{l:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
        fitted.valid_loss.last().copied().unwrap_or(f64::NAN).exp(),
        fitted.seconds,
        tokens as f64 / fitted.seconds
    );

    let lm = fitted.model.lm;
    let model_dir = args.out.join("model");
    let packs = args.lm.precision.packs();
    SavedLm::save(&model_dir, &config, &tokenizer, &lm, packs)?;
    let (saved, _, _) = SavedLm::load(&model_dir, &device)?;
    if packs {
        // The packed model computes the trained model's logits.
        let windows = TokenWindows::tiled(valid.clone(), args.lm.context, Some(2))?;
        let batch = TokenBatcher.batch(windows.iter().collect::<Result<Vec<_>, _>>()?, &device);
        let a = lm.forward(batch.inputs.clone());
        let b = saved.forward(batch.inputs);
        let scale = a.clone().abs().max().into_scalar::<f32>().max(1.0);
        let diff = (a - b).abs().max().into_scalar::<f32>() / scale;
        println!(
            "packed: {} bytes vs {} bytes in f32; max logit difference {diff:.2e} of the largest",
            std::fs::metadata(model_dir.join(SavedLm::PACKED))?.len(),
            bitnet_qat::infer::record_bytes(lm.clone())?
        );
    }
    println!(
        "sample:\n{}",
        sample(&saved, &tokenizer, args.sample, args.seed)?
    );
    println!(
        "model: {}; logs and checkpoints: {}",
        model_dir.display(),
        args.out.display()
    );
    Ok(())
}
