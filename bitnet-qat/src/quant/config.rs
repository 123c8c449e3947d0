//! The quantizer configuration: format, scale statistic, granularity.
// `AbsMean`/`AbsMax` and `PerTensor`/`PerToken` are the names the literature uses; the lint
// fires on the `Config` derive's expansion, so it is allowed for the module.
#![allow(clippy::enum_variant_names)]

use burn::config::Config;

use crate::error::QatError;

/// The set of values a quantized tensor may take.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum QuantFormat {
    /// 1-bit weights, BitNet b1: `sign(W - mean W) * scale`, codes `{-1, +1}`.
    ///
    /// `sign` maps values `<= 0` to `-1`, as in the BitNet paper (eq. 2).
    Binary,
    /// 1.58-bit weights, BitNet b1.58: codes `{-1, 0, +1}`.
    Ternary,
    /// Signed integers of `bits` bits, codes `-2^(bits-1) ..= 2^(bits-1) - 1`. `bits` is 2 to 8.
    Int {
        /// The bit width, 2 to 8.
        bits: u32,
    },
}

impl QuantFormat {
    /// The smallest and the largest integer code `(Q_n, Q_p)`.
    ///
    /// # Example
    /// ```
    /// use bitnet_qat::quant::QuantFormat;
    /// assert_eq!(QuantFormat::Ternary.code_range(), (-1, 1));
    /// assert_eq!(QuantFormat::Int { bits: 8 }.code_range(), (-128, 127));
    /// ```
    pub fn code_range(&self) -> (i32, i32) {
        match self {
            QuantFormat::Binary | QuantFormat::Ternary => (-1, 1),
            QuantFormat::Int { bits } => {
                let half = 1i32 << (bits.clamp(&1, &31) - 1);
                (-half, half - 1)
            }
        }
    }

    /// Bits of information per value (`log2` of the number of codes).
    ///
    /// # Example
    /// ```
    /// use bitnet_qat::quant::QuantFormat;
    /// assert!((QuantFormat::Ternary.bits_per_value() - 1.585).abs() < 1e-3);
    /// ```
    pub fn bits_per_value(&self) -> f64 {
        match self {
            QuantFormat::Binary => 1.0,
            QuantFormat::Ternary => 3f64.log2(),
            QuantFormat::Int { bits } => *bits as f64,
        }
    }

    /// Checks the bit width.
    pub fn validate(&self) -> crate::Result<()> {
        match self {
            QuantFormat::Int { bits } if !(2..=8).contains(bits) => {
                Err(QatError::UnsupportedBits {
                    bits: *bits,
                    hint: "integer formats take 2 to 8 bits; use Binary for 1 bit and Ternary for 1.58",
                })
            }
            _ => Ok(()),
        }
    }
}

/// The statistic of `|x|` the scale is computed from.
///
/// The scale maps that statistic to the largest positive code `Q_p`:
/// `s = Q_p / max(stat(|x|), eps)`, then `q = clamp(round(x * s), Q_n, Q_p) / s`.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum ScaleStat {
    /// `mean |x|`: the BitNet b1.58 weight quantizer (and BitNet b1's `beta`).
    AbsMean,
    /// `max |x|`: the BitNet activation quantizer; nothing is clipped.
    AbsMax,
    /// The lower median of `|x|` (PyTorch's `median`), as in "BitNet b1.58 Reloaded".
    AbsMedian,
}

/// Which elements share one scale.
///
/// The *reduction axis* is the input-feature axis: axis 0 of a Burn `Linear` weight
/// (`[d_input, d_output]`, see [`fake_quantize_weight`](crate::quant::fake_quantize_weight)) and
/// the last axis of an activation (see [`fake_quantize`](crate::quant::fake_quantize)).
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Granularity {
    /// One scale for the whole tensor (BitNet b1.58 weights).
    PerTensor,
    /// One scale per output channel of a weight: the statistic runs along the reduction axis.
    PerChannel,
    /// One scale per token of an activation (BitNet activations): the statistic runs along
    /// the reduction axis. It is computed exactly like [`Granularity::PerChannel`]; the two
    /// names say which tensor they are meant for.
    PerToken,
    /// One scale per group of `size` consecutive elements along the reduction axis.
    PerGroup {
        /// Number of elements per group; must divide the reduction axis.
        size: usize,
    },
}

/// A complete quantizer: what values, which scale statistic, which elements share a scale.
///
/// # Example
/// ```
/// use bitnet_qat::quant::{Granularity, QuantConfig, QuantFormat, ScaleStat};
///
/// // The BitNet b1.58 weight quantizer and its 8-bit per-token activation quantizer.
/// let w = QuantConfig::ternary();
/// assert_eq!(w.format, QuantFormat::Ternary);
/// assert_eq!(w.stat, ScaleStat::AbsMean);
/// let a = QuantConfig::activation_int8();
/// assert_eq!(a.granularity, Granularity::PerToken);
///
/// // A 4-bit weight quantizer with one absmax scale per group of 32 inputs.
/// let g = QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 32 });
/// assert!(g.validate_for_dim(64).is_ok());
/// assert!(g.validate_for_dim(48).is_err());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct QuantConfig {
    /// The set of quantized values.
    pub format: QuantFormat,
    /// The statistic the scale is computed from.
    pub stat: ScaleStat,
    /// Which elements share one scale.
    #[config(default = "Granularity::PerTensor")]
    pub granularity: Granularity,
    /// Lower bound of the statistic, as in the published BitNet code
    /// (`max(mean|W|, 1e-5)`), so an all-zero tensor quantizes to zeros rather than NaN.
    #[config(default = 1e-5)]
    pub eps: f64,
}

impl QuantConfig {
    /// BitNet b1.58 weights: ternary, absmean, per tensor.
    pub fn ternary() -> Self {
        Self::new(QuantFormat::Ternary, ScaleStat::AbsMean)
    }

    /// BitNet b1 weights: binary, `beta = mean|W|`, per tensor.
    pub fn binary() -> Self {
        Self::new(QuantFormat::Binary, ScaleStat::AbsMean)
    }

    /// Signed `bits`-bit weights with an absmax scale per tensor.
    pub fn int(bits: u32) -> Self {
        Self::new(QuantFormat::Int { bits }, ScaleStat::AbsMax)
    }

    /// BitNet activations: 8-bit, absmax, per token.
    pub fn activation_int8() -> Self {
        Self::activation(8)
    }

    /// `bits`-bit activations, absmax, per token.
    pub fn activation(bits: u32) -> Self {
        Self::int(bits).with_granularity(Granularity::PerToken)
    }

    /// Replaces the format.
    pub fn with_format(mut self, format: QuantFormat) -> Self {
        self.format = format;
        self
    }

    /// Replaces the scale statistic.
    pub fn with_stat(mut self, stat: ScaleStat) -> Self {
        self.stat = stat;
        self
    }

    /// The smallest and the largest integer code `(Q_n, Q_p)`.
    pub fn code_range(&self) -> (i32, i32) {
        self.format.code_range()
    }

    /// Checks everything that does not depend on a tensor shape.
    pub fn validate(&self) -> crate::Result<()> {
        self.format.validate()?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(QatError::Epsilon(self.eps));
        }
        if let Granularity::PerGroup { size: 0 } = self.granularity {
            return Err(QatError::GroupSize {
                group_size: 0,
                dim: 0,
            });
        }
        Ok(())
    }

    /// Checks the configuration for a tensor whose reduction axis has `dim` elements.
    pub fn validate_for_dim(&self, dim: usize) -> crate::Result<()> {
        self.validate()?;
        if let Granularity::PerGroup { size } = self.granularity
            && !dim.is_multiple_of(size)
        {
            return Err(QatError::GroupSize {
                group_size: size,
                dim,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_ranges() {
        assert_eq!(QuantFormat::Binary.code_range(), (-1, 1));
        assert_eq!(QuantFormat::Int { bits: 2 }.code_range(), (-2, 1));
        assert_eq!(QuantFormat::Int { bits: 4 }.code_range(), (-8, 7));
    }

    #[test]
    fn bad_bits_are_rejected() {
        for bits in [0, 1, 9, 16, 32] {
            assert!(matches!(
                QuantConfig::int(bits).validate(),
                Err(QatError::UnsupportedBits { bits: b, .. }) if b == bits
            ));
        }
        for bits in 2..=8 {
            assert!(QuantConfig::int(bits).validate().is_ok());
        }
    }

    #[test]
    fn bad_group_and_eps_are_rejected() {
        let zero = QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 0 });
        assert!(matches!(zero.validate(), Err(QatError::GroupSize { .. })));
        let g = QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 3 });
        assert_eq!(
            g.validate_for_dim(10),
            Err(QatError::GroupSize {
                group_size: 3,
                dim: 10
            })
        );
        assert!(g.validate_for_dim(9).is_ok());
        for eps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                QuantConfig::ternary().with_eps(eps).validate(),
                Err(QatError::Epsilon(_))
            ));
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 16 });
        let json = burn::config::config_to_json(&c);
        let back = QuantConfig::load_binary(json.as_bytes()).unwrap();
        assert_eq!(back, c);
    }
}
