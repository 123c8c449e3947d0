//! The BitNet language model trained with burn-train's `Learner`: a [`LanguageModel`] (a
//! [`BitNetLm`] plus its [`QatState`]) implementing `TrainStep`/`InferenceStep`, and [`fit_lm`],
//! which runs `SupervisedTraining` with loss, perplexity, next-token accuracy, learning rate and
//! every QAT metric, checkpoints and exact resume. A trained model is saved and read back as a
//! folder with [`bitnet_qat::lm::SavedLm`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_qat::data::EpochLoader;
use bitnet_qat::lm::{BitNetLm, BitNetLmConfig, Sampling, generate};
use bitnet_qat::lm::{CharTokenizer, TokenBatch, TokenBatcher, TokenWindows};
use bitnet_qat::schedule::BitNetLrSchedulerConfig;
use bitnet_qat::train::{QatPlan, QatState, QuietRenderer, WeightDecaySchedule, prepare};
use bitnet_qat::{QatError, Result};
use burn::data::dataloader::DataLoader;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamConfig;
use burn::tensor::Device;
use burn::train::metric::{AccuracyMetric, LossMetric, PerplexityMetric};
use burn::train::renderer::MetricsRenderer;
use burn::train::{ClassificationOutput, Learner, SupervisedTraining};

use crate::learner::{Run, bitnet_lr, launch, positive, qat_classification_steps};

/// A [`BitNetLm`] with the QAT state that burn-train checkpoints with it.
#[derive(Module, Debug)]
pub struct LanguageModel {
    /// The network.
    pub lm: BitNetLm,
    /// Global step, the last weight statistics and the QAT plan.
    pub qat: QatState,
}

impl LanguageModel {
    /// Next-token loss, logits `[batch · len, vocab]` and targets `[batch · len]` of a batch.
    pub fn predict(&self, batch: TokenBatch) -> ClassificationOutput {
        let [b, t] = batch.inputs.dims();
        let logits = self.lm.forward(batch.inputs);
        let vocab = logits.dims()[2];
        let logits = logits.reshape([b * t, vocab]);
        let targets = batch.targets.reshape([b * t]);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), targets.clone());
        ClassificationOutput::new(loss, logits, targets)
    }
}

qat_classification_steps!(LanguageModel, TokenBatch, predict);

/// Settings of [`fit_lm`].
pub struct LmFitConfig {
    /// Where burn-train writes logs and checkpoints.
    pub dir: PathBuf,
    /// The model.
    pub model: BitNetLmConfig,
    /// Tokens per training window.
    pub context: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Optimizer steps of the whole run.
    pub steps: usize,
    /// Epochs the steps are split into: validation, logs and checkpoints come after each.
    pub epochs: usize,
    /// Peak learning rate of BitNet's two-stage schedule (Adam, betas 0.9 / 0.95).
    pub lr: f64,
    /// Weight decay of stage 1 (0 in stage 2).
    pub weight_decay: f64,
    /// Warm-up steps of the learning rate; `None`: 5 % of the steps, 1 to 375 (BitNet's).
    pub warmup: Option<usize>,
    /// Seed of the initialisation and the training windows.
    pub seed: u64,
    /// Quantizer schedules and latent clipping (its weight decay is set from `weight_decay`).
    pub plan: QatPlan,
    /// Start from this network instead of a freshly initialised one (of `model`). Burn's
    /// initialisers draw from the device's global generator, which concurrent code also draws
    /// from.
    pub initial: Option<BitNetLm>,
    /// Validation windows (consecutive, from the start of the validation text).
    pub valid_windows: usize,
    /// Stop after this epoch (the schedules still span `epochs`).
    pub stop_after: Option<usize>,
    /// Resume after this many epochs from the checkpoints in `dir`.
    pub resume_from: Option<usize>,
    /// Save a checkpoint after every epoch.
    pub checkpoints: bool,
    /// The renderer: `None` uses burn-train's default (the TUI on a terminal with the `tui`
    /// feature); see [`QuietRenderer`].
    pub renderer: Option<Box<dyn MetricsRenderer>>,
}

impl LmFitConfig {
    /// Defaults for `dir` and `model`: context 128, batch 32, 2000 steps in 4 epochs, peak LR
    /// 1.5e-3 with BitNet's warm-up (5 % of the steps, at most 375), weight decay 0.1, seed 42, 64 validation windows, quiet
    /// renderer, checkpoints on.
    pub fn new(dir: impl AsRef<Path>, model: BitNetLmConfig) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            model,
            context: 128,
            batch_size: 32,
            steps: 2000,
            epochs: 4,
            lr: 1.5e-3,
            weight_decay: 0.1,
            warmup: None,
            seed: 42,
            plan: QatPlan::new(),
            initial: None,
            valid_windows: 64,
            stop_after: None,
            resume_from: None,
            checkpoints: true,
            renderer: Some(Box::new(QuietRenderer::new())),
        }
    }
}

/// The result of [`fit_lm`].
#[derive(Debug)]
pub struct LmFitted {
    /// The trained model in inference mode.
    pub model: LanguageModel,
    /// Validation loss (nats per token) after each epoch run by this call.
    pub valid_loss: Vec<f64>,
    /// Wall time of the training (validation included) in seconds.
    pub seconds: f64,
}

/// Trains a [`LanguageModel`] on windows of `train` (token ids) with burn-train's `Learner`
/// (Adam, BitNet's two-stage LR and weight decay, the QAT metrics), validating on `valid` after
/// each epoch. Each epoch reads new windows (drawn from `seed` for the whole run), so a run
/// resumed from a checkpoint continues exactly.
///
/// # Errors
/// [`QatError::Config`] for zero steps, epochs or batch size, or a context longer than the
/// model's `max_seq_len`; the model's own errors for an invalid model; [`QatError::Training`]
/// for a failed run; [`QatError::Dataset`] for texts not longer than the context.
pub fn fit_lm(
    train: Arc<Vec<usize>>,
    valid: Arc<Vec<usize>>,
    mut config: LmFitConfig,
    device: &Device,
) -> Result<LmFitted> {
    if config.context > config.model.max_seq_len {
        return Err(QatError::Config {
            name: "LmFitConfig.context".into(),
            value: config.context.to_string(),
            allowed: format!(
                "at most the model's max_seq_len {}",
                config.model.max_seq_len
            ),
        });
    }
    let device = device.clone().autodiff();
    device.seed(config.seed);
    let (lr, plan) = lm_schedule(&config)?;
    let lm = match config.initial.take() {
        Some(lm) => lm.fork(&device).train(),
        None => config.model.init(&device)?,
    };
    let model = prepare(LanguageModel {
        lm,
        qat: plan.init(&device),
    })?;
    let optim = model
        .qat
        .optimizer(&model, AdamConfig::new().with_beta_2(0.95).build());
    let learner = Learner::new(model, optim, lr.init()?);
    let (model, valid_loss, seconds) = fit_text(learner, train, valid, config, &device)?;
    Ok(LmFitted {
        model,
        valid_loss,
        seconds,
    })
}

/// BitNet's two-stage learning rate of `config` (its steps rounded up to whole epochs, its
/// warm-up) and its QAT plan with the matching weight decay: what [`fit_lm`] trains with, for
/// any other language model to train with the same recipe through [`fit_text`].
///
/// # Errors
/// [`QatError::Config`] for zero steps or epochs.
pub fn lm_schedule(config: &LmFitConfig) -> Result<(BitNetLrSchedulerConfig, QatPlan)> {
    positive(&[
        ("LmFitConfig.steps", config.steps),
        ("LmFitConfig.epochs", config.epochs),
    ])?;
    let steps_per_epoch = config.steps.div_ceil(config.epochs);
    let total_steps = steps_per_epoch * config.epochs;
    let lr = bitnet_lr(
        config.lr,
        total_steps,
        config
            .warmup
            .unwrap_or((config.steps / 20).clamp(1, 375))
            .min(total_steps / 2),
        config.weight_decay,
    );
    let plan = config
        .plan
        .clone()
        .with_weight_decay(WeightDecaySchedule::bitnet(&lr));
    Ok((lr, plan))
}

/// Trains `learner`'s language model (any model whose steps take a [`TokenBatch`] and give a
/// classification of the next tokens) on windows of `train` as [`fit_lm`] does — the windows,
/// epochs, validation on `valid`, metrics, checkpoints and resume of `config` (its model,
/// learning rate and plan are the learner's business: see [`lm_schedule`]). Returns the trained
/// model, the validation loss after each epoch run, and the wall time in seconds.
///
/// # Errors
/// [`QatError::Config`] for zero steps, epochs or batch size; [`QatError::Training`] for a
/// failed run; [`QatError::Dataset`] for texts not longer than the context.
pub fn fit_text<M>(
    learner: Learner<M>,
    train: Arc<Vec<usize>>,
    valid: Arc<Vec<usize>>,
    config: LmFitConfig,
    device: &Device,
) -> Result<(M, Vec<f64>, f64)>
where
    M: burn::train::LearnerModel + bitnet_qat::train::QatTrainModel,
    M: burn::train::TrainStep<Input = TokenBatch> + burn::train::InferenceStep<Input = TokenBatch>,
    <M as burn::train::TrainStep>::Output: burn::train::metric::Adaptor<bitnet_qat::train::QatStats>
        + burn::train::metric::Adaptor<()>
        + burn::train::metric::Adaptor<burn::train::metric::LossInput>
        + burn::train::metric::Adaptor<burn::train::metric::PerplexityInput>
        + burn::train::metric::Adaptor<burn::train::metric::AccuracyInput>,
    <M as burn::train::InferenceStep>::Output: burn::train::metric::Adaptor<burn::train::metric::LossInput>
        + burn::train::metric::Adaptor<burn::train::metric::PerplexityInput>
        + burn::train::metric::Adaptor<burn::train::metric::AccuracyInput>,
{
    positive(&[
        ("LmFitConfig.steps", config.steps),
        ("LmFitConfig.epochs", config.epochs),
        ("LmFitConfig.batch_size", config.batch_size),
    ])?;
    let device = device.clone().autodiff();
    let per_epoch = config.steps.div_ceil(config.epochs) * config.batch_size;
    let windows = TokenWindows::random(
        train,
        config.context,
        per_epoch * config.epochs,
        config.seed,
    )?;
    let train_loader: Arc<dyn DataLoader<TokenBatch>> = Arc::new(
        EpochLoader::new(windows, TokenBatcher, config.batch_size, &device)?
            .stream(per_epoch)?
            .starting_epoch(config.resume_from.unwrap_or(0)),
    );
    let valid_windows = TokenWindows::tiled(valid, config.context, Some(config.valid_windows))?;
    let valid_loader: Arc<dyn DataLoader<TokenBatch>> = Arc::new(EpochLoader::new(
        valid_windows,
        TokenBatcher,
        config.batch_size,
        &device.clone().without_autodiff(),
    )?);
    let training = SupervisedTraining::new(&config.dir, train_loader, valid_loader).metrics((
        LossMetric::new(),
        PerplexityMetric::new(),
        AccuracyMetric::new(),
    ));
    let run = Run {
        dir: &config.dir,
        epochs: config.epochs,
        stop_after: config.stop_after,
        resume_from: config.resume_from,
        checkpoints: config.checkpoints,
        renderer: config.renderer,
    };
    launch(training, learner, run, "Loss")
}

/// A sample of `lm`: up to `n` characters after the prompt `ROMEO.` (fewer when the model's
/// `max_seq_len` ends first), top-10 at temperature 0.8, drawn from `seed`; the prompt and the
/// continuation as text.
///
/// # Errors
/// As [`generate`].
pub fn sample(lm: &BitNetLm, tokenizer: &CharTokenizer, n: usize, seed: u64) -> Result<String> {
    let prompt = tokenizer.encode("ROMEO.\n");
    let n = n.min(lm.max_seq_len.saturating_sub(prompt.len()));
    let top_k = Sampling::TopK {
        k: 10,
        temperature: 0.8,
    };
    let text = generate(lm, &prompt, n, top_k, seed)?;
    Ok(format!(
        "{}{}",
        tokenizer.decode(&prompt),
        tokenizer.decode(&text)
    ))
}
