//! The settings of a [`Quantizer`](super::Quantizer): its configuration and the values its
//! schedules set (lambda, temperature, format), recorded with the model.
//!
//! They live in an integer parameter of the quantizer, so a checkpoint saves and loads them with
//! the weights, a clone owns its own copy, and any code that walks a model's parameters (a Burn
//! `ModuleVisitor` or `ModuleMapper`) finds and updates every quantizer without knowing the
//! model's types. A host-side cache keyed by the parameter's id spares the forward pass a device
//! round trip: the parameter's id changes whenever its value may have (every write and every
//! load, see `crate::recorded::Recorded`), so a cached value is never stale.

use std::sync::{Arc, LazyLock};

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor};

use super::QuantAxis;
use crate::error::{QatError, Result};
use crate::quant::{Granularity, QuantConfig, QuantFormat, ScaleStat};
use crate::recorded::{IdCache, Recorded, check_header, param_of, push_u64, read_back, u64_at};
use crate::ste::Ste;

/// Everything a quantizer does, as recorded with the model.
///
/// # Example
/// ```
/// use bitnet_qat::nn::{QuantizerConfig, QuantizerSettings};
/// use bitnet_qat::quant::QuantConfig;
/// use burn::tensor::Device;
///
/// let q = QuantizerConfig::new(QuantConfig::ternary())
///     .init_activation(16, &Device::flex())
///     .unwrap()
///     .with_lambda(0.25);
/// let s: QuantizerSettings = q.settings();
/// assert_eq!((s.lambda, s.quant), (0.25, QuantConfig::ternary()));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizerSettings {
    /// The configured quantizer.
    pub quant: QuantConfig,
    /// The configured straight-through estimator.
    pub ste: Ste,
    /// Which axis the scales run along.
    pub axis: QuantAxis,
    /// Whether the quantizer has a learned step (LSQ), held in its `step` parameter.
    pub learned_step: bool,
    /// The blend `x + lambda (q(x) - x)`: 0 is full precision, 1 fully quantized.
    pub lambda: f64,
    /// A temperature that replaces the configured soft STE temperature.
    pub temperature: Option<f64>,
    /// A format that replaces the configured weight format.
    pub format: Option<QuantFormat>,
}

impl QuantizerSettings {
    /// Settings of a freshly built quantizer: lambda 1, no overrides.
    pub(crate) fn new(quant: QuantConfig, ste: Ste, axis: QuantAxis, learned_step: bool) -> Self {
        Self {
            quant,
            ste,
            axis,
            learned_step,
            lambda: 1.0,
            temperature: None,
            format: None,
        }
    }

    /// The quantizer and STE in force: the configured ones with the overrides. A format
    /// override applies to weight quantizers without a learned step and brings that format's
    /// preset statistic (absmean for ternary and binary, absmax for integers); a temperature
    /// override applies to the soft STE.
    pub fn effective(&self) -> (QuantConfig, Ste) {
        let mut quant = self.quant.clone();
        if self.axis.is_weight()
            && !self.learned_step
            && let Some(format) = self.format
            && format != quant.format
        {
            quant.format = format;
            quant.stat = match format {
                QuantFormat::Int { .. } => ScaleStat::AbsMax,
                QuantFormat::Ternary | QuantFormat::Binary => ScaleStat::AbsMean,
            };
        }
        let ste = match (self.ste, self.temperature) {
            (Ste::Soft { .. }, Some(temperature)) => Ste::Soft { temperature },
            (ste, _) => ste,
        };
        (quant, ste)
    }

    /// With lambda set, clamped to `[0, 1]` (NaN is taken as 1).
    pub fn with_lambda(mut self, lambda: f64) -> Self {
        self.lambda = if lambda.is_nan() {
            1.0
        } else {
            lambda.clamp(0.0, 1.0)
        };
        self
    }

    /// With the soft STE temperature overridden (`None` restores the configured one).
    ///
    /// # Errors
    /// [`QatError::Temperature`] for a temperature that is not finite and positive.
    pub fn with_temperature(mut self, temperature: Option<f64>) -> Result<Self> {
        if let Some(t) = temperature
            && !(t.is_finite() && t > 0.0)
        {
            return Err(QatError::Temperature(t));
        }
        self.temperature = temperature;
        Ok(self)
    }

    /// With the weight format overridden (`None` restores the configured one).
    ///
    /// # Errors
    /// [`QatError::UnsupportedBits`] for an invalid format.
    pub fn with_format(mut self, format: Option<QuantFormat>) -> Result<Self> {
        if let Some(f) = format {
            f.validate()?;
        }
        self.format = format;
        Ok(self)
    }

    /// The settings as a new recorded parameter on `device` (a fresh id, registered in the host
    /// cache).
    pub(crate) fn to_param(&self, device: &Device) -> Recorded {
        let param = param_of(self.encode(), device);
        CACHE.remember(param.id, Arc::new(self.clone()));
        param
    }

    /// The settings a recorded parameter holds: from the host cache, or read back from the
    /// device and decoded once.
    ///
    /// # Errors
    /// [`QatError::Record`] (with an empty path, for the caller to fill in with
    /// [`QatError::at`]) when the parameter does not hold valid settings (a corrupted or foreign
    /// record); [`QatError::Device`] when it cannot be read back.
    pub(crate) fn of(param: &Param<Tensor<1, Int>>) -> Result<Arc<Self>> {
        if let Some(s) = CACHE.recall(param.id) {
            return Ok(s);
        }
        let settings = Arc::new(Self::decode(&read_back(param, WHAT)?)?);
        CACHE.remember(param.id, settings.clone());
        Ok(settings)
    }

    /// The settings as 16-bit integers (f64 values in four pieces of their bits), so any
    /// device integer type holds them exactly; see [`QuantizerSettings::decode`].
    fn encode(&self) -> Vec<i64> {
        let mut out = vec![MAGIC, VERSION, format_code(self.quant.format)];
        out.push(match self.quant.stat {
            ScaleStat::AbsMean => 0,
            ScaleStat::AbsMax => 1,
            ScaleStat::AbsMedian => 2,
        });
        let (kind, size) = match self.quant.granularity {
            Granularity::PerTensor => (0, 0),
            Granularity::PerChannel => (1, 0),
            Granularity::PerToken => (2, 0),
            Granularity::PerGroup { size } => (3, size as u64),
        };
        out.push(kind);
        push_u64(&mut out, size);
        push_u64(&mut out, self.quant.eps.to_bits());
        let (ste, param) = match self.ste {
            Ste::Standard => (0, 0.0),
            Ste::Clipped => (1, 0.0),
            Ste::Soft { temperature } => (2, temperature),
            Ste::LearnedStepSize => (3, 0.0),
            Ste::Adaptive { delta } => (4, delta),
        };
        out.push(ste);
        push_u64(&mut out, param.to_bits());
        out.push(match self.axis {
            QuantAxis::Weight => 0,
            QuantAxis::Activation => 1,
            QuantAxis::OutputFirst => 2,
        });
        out.push(self.learned_step as i64);
        push_u64(&mut out, self.lambda.to_bits());
        out.push(self.temperature.is_some() as i64);
        push_u64(&mut out, self.temperature.unwrap_or(0.0).to_bits());
        out.push(self.format.map_or(NO_FORMAT, format_code));
        debug_assert_eq!(out.len(), ENCODED_LEN);
        out
    }

    /// The inverse of [`QuantizerSettings::encode`], checking every field.
    fn decode(values: &[i64]) -> Result<Self> {
        // The decoder does not know the parameter's path: the caller names it (`QatError::at`).
        let bad = |what: &str| QatError::record("", format!("{WHAT}: {what}"));
        check_header(values, ENCODED_LEN, MAGIC, VERSION, WHAT)?;
        let u64_at = |i: usize| u64_at(values, i);
        let f64_at = |i: usize| f64::from_bits(u64_at(i));
        let format = decode_format(values[2]).ok_or_else(|| bad("format code"))?;
        let stat = match values[3] {
            0 => ScaleStat::AbsMean,
            1 => ScaleStat::AbsMax,
            2 => ScaleStat::AbsMedian,
            _ => return Err(bad("statistic code")),
        };
        let granularity = match (values[4], u64_at(5)) {
            (0, 0) => Granularity::PerTensor,
            (1, 0) => Granularity::PerChannel,
            (2, 0) => Granularity::PerToken,
            (3, size) if size > 0 => Granularity::PerGroup {
                size: usize::try_from(size).map_err(|_| bad("group size"))?,
            },
            _ => return Err(bad("granularity")),
        };
        let quant = QuantConfig::new(format, stat)
            .with_granularity(granularity)
            .with_eps(f64_at(9));
        let param = f64_at(14);
        let ste = match values[13] {
            0 => Ste::Standard,
            1 => Ste::Clipped,
            2 => Ste::Soft { temperature: param },
            3 => Ste::LearnedStepSize,
            4 => Ste::Adaptive { delta: param },
            _ => return Err(bad("STE code")),
        };
        ste.validate(&quant)
            .map_err(|e| bad(&format!("quantizer: {e}")))?;
        let axis = match values[18] {
            0 => QuantAxis::Weight,
            1 => QuantAxis::Activation,
            2 => QuantAxis::OutputFirst,
            _ => return Err(bad("axis code")),
        };
        let learned_step = match values[19] {
            0 => false,
            1 => true,
            _ => return Err(bad("learned-step flag")),
        };
        if learned_step != (ste == Ste::LearnedStepSize) {
            return Err(bad("learned-step flag disagrees with the STE"));
        }
        let lambda = f64_at(20);
        if !(0.0..=1.0).contains(&lambda) {
            return Err(bad(&format!("lambda {lambda} outside [0, 1]")));
        }
        let temperature = match values[24] {
            0 => None,
            1 => Some(f64_at(25)),
            _ => return Err(bad("temperature flag")),
        };
        let format_override = match values[29] {
            NO_FORMAT => None,
            code => Some(decode_format(code).ok_or_else(|| bad("format override code"))?),
        };
        Self::new(quant, ste, axis, learned_step)
            .with_lambda(lambda)
            .with_temperature(temperature)
            .and_then(|s| s.with_format(format_override))
            .map_err(|e| bad(&e.to_string()))
    }
}

/// "QS", the tag of the encoding.
const MAGIC: i64 = 0x5153;
const VERSION: i64 = 1;
const ENCODED_LEN: usize = 30;
const NO_FORMAT: i64 = 0xFFFF;
const WHAT: &str = "quantizer settings";

/// Decoded settings by parameter id (see `crate::recorded`).
static CACHE: LazyLock<IdCache<Arc<QuantizerSettings>>> = LazyLock::new(|| IdCache::new(1 << 16));

/// Binary 0, ternary 1, integers their bit width (2 to 8).
fn format_code(format: QuantFormat) -> i64 {
    match format {
        QuantFormat::Binary => 0,
        QuantFormat::Ternary => 1,
        QuantFormat::Int { bits } => bits as i64,
    }
}

fn decode_format(code: i64) -> Option<QuantFormat> {
    match code {
        0 => Some(QuantFormat::Binary),
        1 => Some(QuantFormat::Ternary),
        2..=8 => Some(QuantFormat::Int { bits: code as u32 }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<QuantizerSettings> {
        vec![
            QuantizerSettings::new(
                QuantConfig::ternary(),
                Ste::Standard,
                QuantAxis::Weight,
                false,
            ),
            QuantizerSettings::new(
                QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 96 }),
                Ste::LearnedStepSize,
                QuantAxis::Weight,
                true,
            )
            .with_lambda(0.123_456_789),
            QuantizerSettings::new(
                QuantConfig::activation_int8().with_eps(1e-7),
                Ste::Soft { temperature: 0.3 },
                QuantAxis::Activation,
                false,
            )
            .with_temperature(Some(1e-6))
            .unwrap(),
            QuantizerSettings::new(
                QuantConfig::binary().with_stat(ScaleStat::AbsMedian),
                Ste::Adaptive { delta: 0.01 },
                QuantAxis::Weight,
                false,
            )
            .with_format(Some(QuantFormat::Int { bits: 2 }))
            .unwrap(),
        ]
    }

    #[test]
    fn settings_round_trip_exactly() {
        for s in examples() {
            let encoded = s.encode();
            assert!(encoded.iter().all(|v| (0..=0xFFFF).contains(v)));
            assert_eq!(QuantizerSettings::decode(&encoded).unwrap(), s);
        }
    }

    #[test]
    fn malformed_settings_are_record_errors() {
        let good = examples()[1].encode();
        let mut cases: Vec<(Vec<i64>, &str)> = vec![
            (good[..29].to_vec(), "29 values"),
            (vec![0; ENCODED_LEN], "not this record"),
        ];
        for (i, v, what) in [
            (2, 9, "format code"),
            (3, 3, "statistic code"),
            (4, 7, "granularity"),
            (13, 5, "STE code"),
            (18, 3, "axis code"),
            (19, 0, "learned-step flag"),
            (24, 2, "temperature flag"),
            (29, 77, "format override code"),
            (0, -1, "outside"),
        ] {
            let mut bad = good.clone();
            bad[i] = v;
            cases.push((bad, what));
        }
        // Lambda 2.0 (bits of 2.0 in the four pieces at 20..24).
        let mut bad = good.clone();
        bad.splice(
            20..24,
            (0..4).map(|k| ((2f64.to_bits() >> (16 * k)) & 0xFFFF) as i64),
        );
        cases.push((bad, "lambda 2"));
        for (values, what) in cases {
            match QuantizerSettings::decode(&values) {
                Err(QatError::Record { path, reason }) => {
                    assert!(reason.contains(what), "{what}: {reason}");
                    assert!(reason.starts_with(WHAT), "{reason}");
                    assert_eq!(path, "", "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn parameters_are_read_through_the_cache_and_from_the_device() {
        let device = Device::flex();
        let s = examples()[2].clone();
        let param = s.to_param(&device);
        assert_eq!(*QuantizerSettings::of(&param).unwrap(), s);
        // A parameter with a fresh id (as a loaded record has) is read back from the device.
        let fresh = Param::initialized(burn::module::ParamId::new(), param.val());
        assert_eq!(*QuantizerSettings::of(&fresh).unwrap(), s);
    }
}
