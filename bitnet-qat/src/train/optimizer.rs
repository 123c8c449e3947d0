//! The quantization-aware optimizer wrapper: a scheduled decoupled weight decay and optional
//! latent-weight clipping around any Burn optimizer, and per-layer learning-rate scaling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::module::ParamGroup;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

/// The weight decay of the current step, shared by a [`QatState`](super::QatState), which sets
/// it, and its [`QatOptimizer`], which applies it (and says that it ran, so that a run whose
/// optimizer is not the QAT one stops with an error instead of training without the decay).
#[derive(Debug, Clone, Default)]
pub struct DecayControl(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    decay: AtomicU64,
    stepped: AtomicBool,
}

impl DecayControl {
    /// The current weight decay.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.decay.load(Ordering::Relaxed))
    }

    /// Sets the weight decay of the next optimizer steps.
    pub fn set(&self, value: f64) {
        self.0.decay.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Whether a [`QatOptimizer`] updated a parameter since the last call (and resets it).
    pub(crate) fn take_stepped(&self) -> bool {
        self.0.stepped.swap(false, Ordering::Relaxed)
    }
}

/// Wraps a Burn optimizer (Adam, AdamW, SGD, …) for QAT: after the inner update it applies the
/// scheduled decoupled weight decay and clips the latent weights, both to parameters of rank ≥ 2
/// only (weights; norms, biases and learned steps are left alone).
///
/// Build it with [`QatState::optimizer`](super::QatState::optimizer), which connects the weight
/// decay to the state's schedule and gives it the quantized weights only (full-precision
/// embeddings and heads take the inner optimizer alone, unless
/// [`QatPlan::float_weight_decay`](super::QatPlan::float_weight_decay)). Give the inner
/// optimizer no weight decay of its own.
///
/// # Example
/// ```
/// use bitnet_qat::train::{QatOptimizer, DecayControl};
/// use burn::optim::{AdamConfig, ModuleOptimizer};
///
/// let decay = DecayControl::default();
/// decay.set(0.1);
/// let optim: ModuleOptimizer = QatOptimizer::new(AdamConfig::new().build(), decay)
///     .with_latent_clip(Some(1.0))
///     .into();
/// # let _ = optim;
/// ```
#[derive(Debug, Clone)]
pub struct QatOptimizer<O> {
    inner: O,
    decay: DecayControl,
    clip: Option<f32>,
}

impl<O> QatOptimizer<O> {
    /// Wraps `inner`; the weight decay is read from `decay` at every step.
    pub fn new(inner: O, decay: DecayControl) -> Self {
        Self {
            inner,
            decay,
            clip: None,
        }
    }

    /// Clips latent weights to `[-c, c]` after each update (BinaryConnect); `None` turns it off.
    pub fn with_latent_clip(mut self, clip: Option<f32>) -> Self {
        self.clip = clip;
        self
    }
}

impl<O: Optimizer> Optimizer for QatOptimizer<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        self.decay.0.stepped.store(true, Ordering::Relaxed);
        let weight_decay = if D >= 2 { self.decay.get() } else { 0.0 };
        let before = (weight_decay > 0.0).then(|| tensor.clone());
        let (mut tensor, state) = self.inner.step(lr, tensor, grad, state);
        if let Some(before) = before {
            tensor = tensor - before.mul_scalar(lr * weight_decay);
        }
        if D >= 2
            && let Some(c) = self.clip
        {
            tensor = tensor.clamp(-c, c);
        }
        (tensor, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        O::to_device(state, device)
    }
}

/// A learning-rate scheduler scaled by a constant factor, for per-layer learning rates.
#[derive(Clone)]
pub struct ScaledLrScheduler<S> {
    inner: S,
    scale: f64,
}

impl<S> ScaledLrScheduler<S> {
    /// `scale ×` the learning rate of `inner`.
    pub fn new(inner: S, scale: f64) -> Self {
        Self { inner, scale }
    }
}

impl<S: LrScheduler + Clone + 'static> LrScheduler for ScaledLrScheduler<S> {
    fn step(&mut self) -> LearningRate {
        self.inner.step() * self.scale
    }

    fn to_record(&self) -> LrSchedulerRecord {
        self.inner.to_record()
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        self.inner.load_record(record);
    }
}

/// A Burn [`ModuleLrScheduler`] that runs `base` for every parameter and `scale × base` for the
/// parameters under one of the given module paths (later entries win), e.g. a smaller
/// learning rate for the full-precision head. A path matches whole segments: `"layers.2"`
/// matches `layers.2.weight` and `model.layers.2.bias`, not `layers.20.weight`; `"head"` does
/// not match `header.weight`.
///
/// # Errors
/// [`crate::QatError::Config`] of `per_layer_lr.path` for an empty path (or one that does not
/// make a pattern), of `per_layer_lr.scale` for a scale that is not finite and `>= 0`.
///
/// # Example
/// ```
/// use bitnet_qat::train::per_layer_lr;
/// use burn::optim::lr_scheduler::constant::ConstantLr;
///
/// let lr = per_layer_lr(ConstantLr::from(1e-3), &[("layers.2", 0.1)]).unwrap();
/// # let _ = lr;
/// ```
pub fn per_layer_lr<S: LrScheduler + Clone + 'static>(
    base: S,
    scales: &[(&str, f64)],
) -> crate::Result<ModuleLrScheduler> {
    let mut scheduler = ModuleLrScheduler::new(base.clone());
    for (path, scale) in scales {
        if path.is_empty() {
            return Err(crate::QatError::config(
                "per_layer_lr.path",
                format!("{path:?}"),
                "a non-empty module path",
            ));
        }
        if !(scale.is_finite() && *scale >= 0.0) {
            return Err(crate::QatError::config(
                "per_layer_lr.scale",
                scale,
                format!("finite and >= 0 (the scale of `{path}`)"),
            ));
        }
        let group = ParamGroup::from_regex(segments_pattern(path)).map_err(|e| {
            crate::QatError::config(
                "per_layer_lr.path",
                format!("{path:?}"),
                format!("a module path that makes a valid pattern ({e:?})"),
            )
        })?;
        scheduler = scheduler.with_group(group, ScaledLrScheduler::new(base.clone(), *scale));
    }
    Ok(scheduler)
}

/// A regular expression matching module paths that contain `path` as whole segments.
fn segments_pattern(path: &str) -> String {
    let mut escaped = String::with_capacity(path.len() * 2);
    for c in path.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!(r"(^|\.){escaped}(\.|$)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{BitNetLrSchedulerConfig, WeightDecaySchedule};
    use burn::optim::SgdConfig;
    use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
    use burn::tensor::TensorData;

    #[test]
    fn decay_then_clip_follow_the_inner_step() {
        let device = Device::flex();
        let decay = DecayControl::default();
        let optim =
            QatOptimizer::new(SgdConfig::new().build(), decay.clone()).with_latent_clip(Some(1.0));
        let w = Tensor::<2>::from_data([[0.5, -2.0], [0.9, 0.0]], &device);
        let g = Tensor::<2>::from_data([[1.0, 1.0], [-1.0, 1.0]], &device);
        // SGD: w - 0.1 g, then - 0.1 * 0.5 * w, then clip to [-1, 1].
        decay.set(0.5);
        let (out, _) = optim.step(0.1, w.clone(), g.clone(), None);
        let expected = [[0.5 - 0.1 - 0.025, -1.0], [0.9 + 0.1 - 0.045, -0.1]];
        out.into_data().assert_approx_eq::<f32>(
            &TensorData::from(expected),
            burn::tensor::Tolerance::absolute(1e-6),
        );
        // Rank-1 parameters (norm gains, learned steps) get neither.
        let b = Tensor::<1>::from_data([3.0, -3.0], &device);
        let (out, _) = optim.step(0.1, b.clone(), b.ones_like(), None);
        out.into_data().assert_approx_eq::<f32>(
            &TensorData::from([2.9, -3.1]),
            burn::tensor::Tolerance::absolute(1e-6),
        );
        // Stage 2 of the BitNet schedule: no decay.
        decay.set(WeightDecaySchedule::constant(0.1).at(5));
        assert_eq!(decay.get(), 0.1);
        decay.set(
            WeightDecaySchedule {
                value: 0.1,
                until_step: Some(5),
            }
            .at(5),
        );
        let (out, _) = optim.step(0.1, w.clone().clamp(-1.0, 1.0), g, None);
        out.into_data().assert_approx_eq::<f32>(
            &TensorData::from([[0.4, -1.0], [1.0, -0.1]]),
            burn::tensor::Tolerance::absolute(1e-6),
        );
    }

    #[test]
    fn per_layer_scaling_multiplies_the_base_rate() {
        use burn::module::ParamId;
        // Stage 1 at 1.0 for two steps, then stage 2 from 0.5.
        let base = BitNetLrSchedulerConfig::new(1.0, 0.5, 4)
            .with_warmup_steps(0)
            .init()
            .unwrap();
        let mut lr = per_layer_lr(base, &[("head", 0.1), ("layers.2", 0.5)]).unwrap();
        let id = ParamId::new();
        for expected in [1.0, 1.0, 0.5] {
            let rates: ModuleLearningRate = lr.step();
            assert_eq!(rates.lr_from_param(id, Some("body.weight")), expected);
            let head = rates.lr_from_param(id, Some("head.weight"));
            assert!((head - 0.1 * expected).abs() < 1e-12, "{head}");
            // Whole segments only: not `header`, not `layers.20`.
            for other in ["header.weight", "layers.20.weight", "xlayers.2.weight"] {
                assert_eq!(rates.lr_from_param(id, Some(other)), expected, "{other}");
            }
            let nested = rates.lr_from_param(id, Some("model.layers.2.bias"));
            assert!((nested - 0.5 * expected).abs() < 1e-12, "{nested}");
        }
        assert!(matches!(
            per_layer_lr(0.1, &[("", 0.5)]),
            Err(crate::QatError::Config { name, value, .. })
                if name == "per_layer_lr.path" && value == "\"\""
        ));
        assert!(matches!(
            per_layer_lr(0.1, &[("head", f64::NAN)]),
            Err(crate::QatError::Config { name, value, allowed })
                if name == "per_layer_lr.scale" && value == "NaN" && allowed.contains("`head`")
        ));
    }
}
