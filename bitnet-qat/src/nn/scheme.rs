//! [`QuantScheme`]: what a drop-in layer quantizes — its weight and its input activations.

use burn::config::Config;
use burn::tensor::{Device, Tensor};

use super::quantizer::{Quantizer, QuantizerConfig};
use crate::quant::QuantConfig;
use crate::ste::Ste;

/// The quantization of a drop-in layer ([`Linear`](super::Linear),
/// [`Conv1d`](super::conv::Conv1d), [`Conv2d`](super::conv::Conv2d)): its weight and its input
/// activations, each with its straight-through estimator. The default is BitNet b1.58
/// (W1.58A8): ternary absmean weights with one scale per tensor, 8-bit absmax activations per
/// token (per position — pixel, time step — for a convolution), the standard STE.
///
/// # Example
/// ```
/// use bitnet_qat::nn::QuantScheme;
/// use bitnet_qat::quant::{Granularity, QuantConfig};
///
/// assert_eq!(QuantScheme::default(), QuantScheme::bitnet());
/// assert_eq!(QuantScheme::bitnet().weight, Some(QuantConfig::ternary()));
/// // Full precision: the layer computes exactly what burn-nn's computes.
/// assert_eq!(QuantScheme::none().activation, None);
/// // 4-bit weights with one scale per output, 8-bit activations.
/// let w4a8 = QuantScheme::bitnet()
///     .with_weight(Some(QuantConfig::int(4).with_granularity(Granularity::PerChannel)));
/// assert!(w4a8.validate(64, 64).is_ok());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct QuantScheme {
    /// The weight quantizer, or `None` for full-precision weights. For a layer's linear view
    /// `[d_input, d_output]` (a convolution's `[channels_in / groups · k..., channels_out]`):
    /// `PerChannel` is one scale per output, `PerGroup` groups consecutive inputs.
    #[config(default = "Some(QuantConfig::ternary())")]
    pub weight: Option<QuantConfig>,
    /// The weight STE.
    #[config(default = "Ste::Standard")]
    pub weight_ste: Ste,
    /// The input-activation quantizer (scales along the features: per token for `Linear`, per
    /// position over the channels for a convolution), or `None` for full-precision inputs.
    #[config(default = "Some(QuantConfig::activation_int8())")]
    pub activation: Option<QuantConfig>,
    /// The activation STE ([`Ste::LearnedStepSize`] is for weights only).
    #[config(default = "Ste::Standard")]
    pub activation_ste: Ste,
}

impl Default for QuantScheme {
    fn default() -> Self {
        Self::bitnet()
    }
}

impl QuantScheme {
    /// BitNet b1.58: ternary absmean weights per tensor, 8-bit absmax activations per token.
    pub fn bitnet() -> Self {
        Self::new()
    }

    /// No quantization: the layer is burn-nn's, bit for bit.
    pub fn none() -> Self {
        Self::new().with_weight(None).with_activation(None)
    }

    /// `weight` quantized, activations in full precision (what the
    /// [`QatReparameterizer`](crate::reparam::QatReparameterizer) gives a model it cannot edit).
    pub fn weight_only(weight: QuantConfig) -> Self {
        Self::new().with_weight(Some(weight)).with_activation(None)
    }

    /// Checks the scheme for a layer whose weight's linear view has `d_input` inputs and whose
    /// activations have `d_features` features.
    ///
    /// # Errors
    /// As [`Ste::validate`] and [`QuantConfig::validate_for_dim`];
    /// [`QatError::Config`](crate::QatError::Config) of `QuantScheme.activation_ste` for
    /// [`Ste::LearnedStepSize`] on activations.
    pub fn validate(&self, d_input: usize, d_features: usize) -> crate::Result<()> {
        if let Some(weight) = &self.weight {
            self.weight_ste.validate(weight)?;
            weight.validate_for_dim(d_input)?;
        }
        if let Some(act) = &self.activation {
            QuantizerConfig::new(act.clone())
                .with_ste(self.activation_ste)
                .validate_activation_as(d_features, "QuantScheme.activation_ste")?;
        }
        Ok(())
    }

    /// The weight quantizer of a `[d_input, d_output]` weight (`None` without one).
    pub(crate) fn weight_quantizer(&self, weight: &Tensor<2>) -> crate::Result<Option<Quantizer>> {
        self.weight_config()
            .map(|c| c.init_weight(weight))
            .transpose()
    }

    /// The weight quantizer of an output-first weight `[d_output, ...]` (a convolution kernel).
    pub(crate) fn output_first_quantizer<const D: usize>(
        &self,
        weight: &Tensor<D>,
    ) -> crate::Result<Option<Quantizer>> {
        self.weight_config()
            .map(|c| c.init_output_first(weight))
            .transpose()
    }

    /// The activation quantizer for `d_features` features (`None` without one).
    pub(crate) fn activation_quantizer(
        &self,
        d_features: usize,
        device: &Device,
    ) -> crate::Result<Option<Quantizer>> {
        self.activation
            .as_ref()
            .map(|act| {
                QuantizerConfig::new(act.clone())
                    .with_ste(self.activation_ste)
                    .init_activation(d_features, device)
            })
            .transpose()
    }

    fn weight_config(&self) -> Option<QuantizerConfig> {
        self.weight
            .as_ref()
            .map(|w| QuantizerConfig::new(w.clone()).with_ste(self.weight_ste))
    }
}
