//! Statistics of quantized weights for QAT dashboards: quantization error, code distribution,
//! flip rate and scales.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::{QatError, Result};
use crate::nn::{Quantizer, quantizers};
use crate::quant::without_graph;

/// Statistics of the quantized weights of a layer or a whole model.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WeightStats {
    /// `Σ (w - q(w))² / Σ w²` over the latent weights `w` (0 for an all-zero model).
    pub relative_mse: f64,
    /// Fraction of negative codes (−1 for ternary).
    pub fraction_negative: f64,
    /// Fraction of zero codes.
    pub fraction_zero: f64,
    /// Fraction of positive codes (+1 for ternary).
    pub fraction_positive: f64,
    /// Mean of the quantization steps `1/s` (one per scale).
    pub step_mean: f64,
    /// Smallest step.
    pub step_min: f64,
    /// Largest step.
    pub step_max: f64,
    /// Number of weights.
    pub numel: usize,
}

/// A weight read back: latent values, quantized values, codes, and the step of every element.
type ReadBack = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// The latent weight, its quantized value, its codes and the step of every element, read back.
fn codes_of(quantizer: &Quantizer, weight: Tensor<2>) -> Result<ReadBack> {
    let weight = without_graph(weight);
    let (codes, scale) = quantizer.weight_codes(weight.clone())?;
    let q = codes.clone() / scale.clone();
    let read = |t: Tensor<2>| -> Result<Vec<f32>> {
        t.into_data()
            .try_cast_as::<f32>()
            .and_then(|d| d.try_to_vec())
            .map_err(|e| QatError::device("a quantized weight", e))
    };
    Ok((read(weight)?, read(q)?, read(codes)?, read(scale.recip())?))
}

/// Accumulates [`WeightStats`] over layers.
#[derive(Debug, Default)]
struct Acc {
    err: f64,
    norm: f64,
    neg: usize,
    zero: usize,
    pos: usize,
    steps: Vec<f64>,
    numel: usize,
}

impl Acc {
    /// Adds the weight of the quantizer at `path`.
    ///
    /// # Errors
    /// [`QatError::NonFinite`] for NaN or infinite latent weights or steps (naming `path`); as
    /// [`codes_of`].
    fn add(&mut self, quantizer: &Quantizer, weight: Tensor<2>, path: &str) -> Result<Vec<f32>> {
        let (w, q, codes, steps) = codes_of(quantizer, weight)?;
        let nan = w.iter().chain(&steps).filter(|v| v.is_nan()).count();
        let inf = w.iter().chain(&steps).filter(|v| v.is_infinite()).count();
        if nan + inf > 0 {
            return Err(QatError::NonFinite {
                what: format!("weight or quantization steps of `{path}`"),
                nan,
                inf,
            });
        }
        for ((wv, qv), c) in w.iter().zip(&q).zip(&codes) {
            self.err += ((wv - qv) as f64).powi(2);
            self.norm += (*wv as f64).powi(2);
            match c.partial_cmp(&0.0) {
                Some(core::cmp::Ordering::Less) => self.neg += 1,
                Some(core::cmp::Ordering::Greater) => self.pos += 1,
                _ => self.zero += 1,
            }
        }
        let mut distinct = steps.iter().map(|s| *s as f64).collect::<Vec<_>>();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        self.steps.extend(distinct);
        self.numel += w.len();
        Ok(codes)
    }

    /// Adds every weight quantizer of `model`; returns all their codes in traversal order.
    fn add_model(&mut self, model: &impl Module) -> Result<Vec<i8>> {
        let mut codes = Vec::new();
        for found in quantizers(model) {
            if let Some(weight) = found.weight {
                let added = self.add(&found.quantizer, weight, &found.path)?;
                codes.extend(added.iter().map(|c| *c as i8));
            }
        }
        Ok(codes)
    }

    fn finish(self) -> WeightStats {
        let n = self.numel.max(1) as f64;
        let steps = &self.steps;
        WeightStats {
            relative_mse: if self.norm > 0.0 {
                self.err / self.norm
            } else {
                0.0
            },
            fraction_negative: self.neg as f64 / n,
            fraction_zero: self.zero as f64 / n,
            fraction_positive: self.pos as f64 / n,
            step_mean: steps.iter().sum::<f64>() / steps.len().max(1) as f64,
            step_min: steps.iter().cloned().fold(f64::INFINITY, f64::min),
            step_max: steps.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            numel: self.numel,
        }
    }
}

/// [`WeightStats`] of every quantized weight of `model` (any Burn module: every weight with a
/// [`Quantizer`] attached, found by [`quantizers`]), pooled (weighted by weight count).
///
/// # Errors
/// [`QatError::NonFinite`] for NaN or infinite weights, naming the quantizer;
/// [`QatError::Record`] for a quantizer whose recorded settings are malformed.
///
/// # Example
/// ```
/// use bitnet_qat::nn::BitLinearConfig;
/// use bitnet_qat::schedule::weight_stats;
///
/// let layer = BitLinearConfig::new(64, 32).init(&burn::tensor::Device::flex()).unwrap();
/// let s = weight_stats(&layer).unwrap();
/// assert_eq!(s.numel, 64 * 32);
/// assert!((s.fraction_negative + s.fraction_zero + s.fraction_positive - 1.0).abs() < 1e-12);
/// ```
pub fn weight_stats(model: &impl Module) -> Result<WeightStats> {
    let mut acc = Acc::default();
    acc.add_model(model)?;
    Ok(acc.finish())
}

/// [`WeightStats`] of each quantized weight of `model`, with the path of its quantizer (as
/// [`quantizers`] reports it), in traversal order: the per-layer view of [`weight_stats`].
///
/// # Errors
/// As [`weight_stats`].
///
/// # Example
/// ```
/// use bitnet_qat::nn::BitLinearConfig;
/// use bitnet_qat::schedule::layer_stats;
///
/// let layers = vec![BitLinearConfig::new(16, 8).init(&burn::tensor::Device::flex()).unwrap()];
/// let stats = layer_stats(&layers).unwrap();
/// assert_eq!(stats.len(), 1);
/// assert_eq!((stats[0].0.as_str(), stats[0].1.numel), ("0.weight.qat", 128));
/// ```
pub fn layer_stats(model: &impl Module) -> Result<Vec<(String, WeightStats)>> {
    quantizers(model)
        .into_iter()
        .filter_map(|found| found.weight.map(|w| (found.path, found.quantizer, w)))
        .map(|(path, quantizer, weight)| {
            let mut acc = Acc::default();
            acc.add(&quantizer, weight, &path)?;
            Ok((path, acc.finish()))
        })
        .collect()
}

/// Tracks the codes of a model's weights between steps to report the flip rate: the fraction of
/// weights whose code changed since the previous call. Its state ([`FlipTracker::codes`]) is
/// what a checkpoint must save for a resumed run to report the same values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlipTracker {
    codes: Option<Vec<i8>>,
}

impl FlipTracker {
    /// A tracker that resumes from saved codes.
    pub fn from_codes(codes: Option<Vec<i8>>) -> Self {
        Self { codes }
    }

    /// The codes seen last.
    pub fn codes(&self) -> Option<&[i8]> {
        self.codes.as_deref()
    }

    /// Fraction of codes that changed since the previous call (0 on the first call or when the
    /// model's size changed), and the model's current [`WeightStats`].
    ///
    /// # Errors
    /// As [`weight_stats`]; the tracker is unchanged then.
    pub fn update(&mut self, model: &impl Module) -> Result<(f64, WeightStats)> {
        let mut acc = Acc::default();
        let codes = acc.add_model(model)?;
        let rate = match &self.codes {
            Some(prev) if prev.len() == codes.len() && !codes.is_empty() => {
                prev.iter().zip(&codes).filter(|(a, b)| a != b).count() as f64 / codes.len() as f64
            }
            _ => 0.0,
        };
        self.codes = Some(codes);
        Ok((rate, acc.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::BitLinearConfig;
    use burn::module::{Module, Param};
    use burn::tensor::Device;

    #[test]
    fn stats_of_a_hand_computed_layer() {
        let device = Device::flex();
        // mean|W| = 0.45: codes [1, 0, -1, 0], q = [0.45, 0, -0.45, 0].
        let w = Tensor::<2>::from_data([[0.5, -0.1], [-1.0, 0.2]], &device);
        let layer = BitLinearConfig::new(2, 2)
            .init_with(w, None, &device)
            .unwrap();
        let s = weight_stats(&layer).unwrap();
        assert!((s.relative_mse - 0.355 / 1.3).abs() < 1e-6, "{s:?}");
        assert_eq!(
            (s.fraction_negative, s.fraction_zero, s.fraction_positive),
            (0.25, 0.5, 0.25)
        );
        assert!((s.step_mean - 0.45).abs() < 1e-6 && s.step_min == s.step_max);
        assert_eq!(s.numel, 4);
        // During a lambda warm-up the statistics still describe the hard quantizer.
        let warming = crate::schedule::QatScheduler::default()
            .with_lambda(crate::schedule::LambdaSchedule::new(
                4,
                crate::schedule::LambdaRamp::Linear,
            ))
            .apply(layer.clone(), 2)
            .unwrap();
        assert_eq!(warming.weight_quantizer().unwrap().settings().lambda, 0.5);
        assert_eq!(weight_stats(&warming).unwrap(), s);

        let mut flips = FlipTracker::default();
        assert_eq!(flips.update(&layer).unwrap().0, 0.0);
        // Move one weight across a threshold: -0.1 -> 0.4 (code 0 -> 1); mean|W| becomes 0.525.
        let moved = Tensor::<2>::from_data([[0.5, 0.4], [-1.0, 0.2]], &device);
        let layer = layer.map(&mut SetWeight(Some(moved)));
        let (rate, _) = flips.update(&layer).unwrap();
        assert_eq!(rate, 0.25);
        assert_eq!(flips.codes(), Some(&[1i8, 1, -1, 0][..]));
        assert_eq!(
            FlipTracker::from_codes(flips.codes().map(<[i8]>::to_vec)),
            flips
        );
    }

    #[test]
    fn non_finite_weights_are_typed_errors_naming_the_layer() {
        let device = Device::flex();
        let w = Tensor::<2>::from_data([[0.5, f32::NAN], [-1.0, f32::INFINITY]], &device);
        let layers = vec![
            BitLinearConfig::new(2, 2)
                .init_with(w, None, &device)
                .unwrap(),
        ];
        match weight_stats(&layers) {
            Err(QatError::NonFinite { what, nan, inf }) => {
                assert!(what.contains("`0.weight.qat`"), "{what}");
                assert!(nan >= 1 && inf >= 1, "{nan} {inf}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            FlipTracker::default().update(&layers),
            Err(QatError::NonFinite { .. })
        ));
    }

    struct SetWeight(Option<Tensor<2>>);

    impl burn::module::ModuleMapper for SetWeight {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D == 2
                && let Some(w) = self.0.take()
            {
                let dims = param.shape().dims::<D>();
                return param.map(|_| w.reshape(dims));
            }
            param
        }
    }
}
