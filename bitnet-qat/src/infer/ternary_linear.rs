//! `TernaryLinear`: a linear layer with packed ternary (or binary) weights, for inference.

use bitnet_kernels::packed::PackedTernary;
use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};

use super::convert::{pack_weight, scale_kind};
use super::packed_weight::{PackedLayout, PackedWeight};
use crate::check::{check_finite, check_last_dim, check_norm_eps};
use crate::error::QatError;
use crate::nn::{BitLinear, Quantizer};
use crate::quant::{Granularity, without_graph};

/// Configuration of a [`TernaryLinear`]: what its record holds. [`TernaryLinearConfig::init`]
/// builds the skeleton a saved layer loads into — packed zeros, no f32 weight.
///
/// # Example
/// ```
/// use bitnet_qat::infer::TernaryLinearConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let layer = TernaryLinearConfig::new(512, 64).init(&Device::flex()).unwrap();
/// assert_eq!(layer.packed_bytes(), 64 * 512 / 4 + 4); // 2 bits a weight, one scale
/// let y = layer.forward(Tensor::<2>::ones([2, 512], &Device::flex()));
/// assert_eq!(y.dims(), [2, 64]);
/// ```
#[derive(Config, Debug)]
pub struct TernaryLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Which weights share a scale: per tensor, per output (`PerChannel`), or per group of
    /// inputs (a multiple of 256 dividing `d_input`).
    #[config(default = "Granularity::PerTensor")]
    pub scales: Granularity,
    /// Whether activations are quantized to int8 per token (BitNet) for the product.
    #[config(default = true)]
    pub int8_activations: bool,
    /// Whether the layer adds a bias.
    #[config(default = false)]
    pub bias: bool,
    /// Whether the layer normalises its input with RMSNorm (BitLinear's norm).
    #[config(default = true)]
    pub norm: bool,
    /// The RMSNorm epsilon.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl TernaryLinearConfig {
    /// The packed layout this configuration describes.
    ///
    /// # Errors
    /// As [`PackedLayout::new`].
    pub fn layout(&self) -> crate::Result<PackedLayout> {
        PackedLayout::new(
            self.d_input,
            self.d_output,
            scale_kind(self.scales),
            self.int8_activations,
        )
    }

    /// The layer on `device` with all codes 0 and unit scales, biases 0, a fresh norm.
    ///
    /// # Errors
    /// As [`TernaryLinearConfig::layout`]; [`QatError::NormEpsilon`] for an invalid epsilon.
    pub fn init(&self, device: &Device) -> crate::Result<TernaryLinear> {
        let layout = self.layout()?;
        if self.norm {
            check_norm_eps(self.norm_eps)?;
        }
        Ok(TernaryLinear {
            weight: PackedWeight::zeros(layout, device),
            bias: self
                .bias
                .then(|| Param::from_tensor(Tensor::zeros([self.d_output], device))),
            norm: self.norm.then(|| {
                RmsNormConfig::new(self.d_input)
                    .with_epsilon(self.norm_eps)
                    .init(device)
            }),
        })
    }
}

/// A linear layer with packed ternary weights, for inference.
///
/// Everything it needs is recorded: its [`PackedWeight`] (2-bit codes, scales and their
/// layout — input size, scale layout, activation mode), bias and norm. On Flex and NdArray
/// devices the forward pass runs the SIMD CPU kernels, on GPUs the CubeCL kernels, elsewhere a
/// tensor-op fallback; with float activations the float kernels (no dense weight is built).
///
/// Build one from a trained [`BitLinear`] ([`TernaryLinear::from_bit_linear`]) or reparameterized
/// `Linear` ([`TernaryLinear::from_linear`]), from packed rows ([`TernaryLinear::from_packed`]),
/// or as the skeleton of a saved layer ([`TernaryLinearConfig::init`]). To pack a whole model
/// and keep its types, use [`pack`](super::pack) instead.
///
/// # Example
/// ```
/// use bitnet_qat::infer::TernaryLinear;
/// use bitnet_qat::nn::BitLinearConfig;
/// use burn::module::Module;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let layer = BitLinearConfig::new(64, 16).init(&device).unwrap();
/// let packed = TernaryLinear::from_bit_linear(&layer).unwrap();
/// let x = Tensor::<2>::ones([4, 64], &device);
/// let (a, b) = (packed.forward(x.clone()), layer.valid().forward(x));
/// let diff = (a - b).abs().max().into_scalar::<f32>();
/// assert!(diff < 1e-5);
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct TernaryLinear {
    /// The packed weight.
    pub weight: PackedWeight,
    /// The optional bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The input RMSNorm, when the trained layer had one.
    pub norm: Option<RmsNorm>,
}

impl TernaryLinear {
    /// The packed form of a trained [`BitLinear`]: its weight as the effective weight quantizer
    /// quantizes it (a scheduled format included), its bias and norm. The outputs equal those of
    /// `layer.valid()` (to float rounding).
    ///
    /// # Errors
    /// [`QatError::Unsupported`] (the layer named `BitLinear`) for what the packed layer cannot
    /// reproduce: a weight format other than ternary or binary, the soft STE, lambda below 1,
    /// per-group scales whose groups are not multiples of 256, an activation quantizer other
    /// than BitNet's 8-bit absmax per token with a hard STE at lambda 1 (none at all is fine:
    /// float activations), a layer whose weight is already packed; [`QatError::Record`] for
    /// malformed quantizer settings.
    pub fn from_bit_linear(layer: &BitLinear) -> crate::Result<Self> {
        let int8_activations = match &layer.activation_quantizer {
            None => false,
            Some(q) if q.is_bitnet_int8()? => true,
            Some(q) => {
                let settings = q.try_settings()?;
                let (quant, ste) = settings.effective();
                return Err(QatError::unsupported(
                    "BitLinear",
                    format!(
                        "the packed kernels quantize activations to 8-bit absmax per token \
                         (QuantConfig::activation_int8() with a hard STE at lambda 1); this \
                         layer's activation quantizer is {quant:?} with {ste:?} at lambda {}",
                        settings.lambda
                    ),
                ));
            }
        };
        let quantizer = layer.weight_quantizer().ok_or_else(|| {
            QatError::unsupported(
                "BitLinear",
                "its weight has no quantizer attached (is it packed already?)",
            )
        })?;
        Self::from_quantized(
            &layer.weight,
            quantizer,
            layer.bias.as_ref(),
            layer.norm.as_ref().map(Module::valid),
            int8_activations,
        )
        .map_err(|e| e.at("BitLinear"))
    }

    /// The packed form of a Burn `Linear` made quantization-aware by the
    /// [`QatReparameterizer`](crate::reparam::QatReparameterizer): float activations, no norm.
    ///
    /// # Errors
    /// [`QatError::Unsupported`] (the layer named `Linear`) for a `Linear` without a quantizer,
    /// and as [`TernaryLinear::from_bit_linear`] for the weight.
    pub fn from_linear(linear: &Linear) -> crate::Result<Self> {
        let quantizer = linear
            .weight
            .reparameterization::<Quantizer>()
            .ok_or_else(|| {
                QatError::unsupported(
                    "Linear",
                    "it has no QAT quantizer: apply a QatReparameterizer first",
                )
            })?;
        Self::from_quantized(&linear.weight, quantizer, linear.bias.as_ref(), None, false)
            .map_err(|e| e.at("Linear"))
    }

    /// The layer of a latent `weight` `[d_input, d_output]` packed as `quantizer` quantizes it.
    fn from_quantized(
        weight: &Param<Tensor<2>>,
        quantizer: &Quantizer,
        bias: Option<&Param<Tensor<1>>>,
        norm: Option<RmsNorm>,
        int8_activations: bool,
    ) -> crate::Result<Self> {
        let weight = weight.base();
        let device = weight.device().inner();
        let packed = pack_weight(weight, quantizer)?;
        Self::from_packed(
            &packed,
            bias.map(|b| without_graph(b.val())),
            norm,
            int8_activations,
            &device,
        )
    }

    /// Builds the layer from packed weights (`[d_output, d_input]`, rows are outputs).
    ///
    /// # Errors
    /// [`QatError::Shape`] for a bias of another size; as [`PackedLayout::new`].
    pub fn from_packed(
        packed: &PackedTernary,
        bias: Option<Tensor<1>>,
        norm: Option<RmsNorm>,
        int8_activations: bool,
        device: &Device,
    ) -> crate::Result<Self> {
        let rows = packed.rows();
        if let Some(b) = &bias
            && b.dims() != [rows]
        {
            return Err(QatError::Shape {
                what: "TernaryLinear bias".into(),
                expected: format!("[{rows}]"),
                got: b.dims().to_vec(),
            });
        }
        Ok(Self {
            weight: PackedWeight::from_packed(packed, int8_activations, device)?,
            bias: bias.map(|b| Param::from_tensor(b.to_device(device))),
            norm,
        })
    }

    /// The recorded layout of the weight.
    ///
    /// # Errors
    /// As [`PackedWeight::layout`].
    pub fn layout(&self) -> crate::Result<PackedLayout> {
        self.weight.layout()
    }

    /// Bytes of the packed codes and scales (what replaces `4 * d_input * d_output` f32 bytes).
    pub fn packed_bytes(&self) -> usize {
        self.weight.packed_bytes()
    }

    /// The forward pass.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// # Panics
    /// If the last axis of `input` is not `d_input`, or the record is malformed;
    /// [`TernaryLinear::try_forward`] returns an error instead.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self.forward_checked(input) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// The forward pass with its input checked for shape and NaN/infinite values.
    pub fn try_forward<const D: usize>(&self, input: Tensor<D>) -> crate::Result<Tensor<D>> {
        check_finite(&input, "TernaryLinear input")?;
        self.forward_checked(input)
    }

    fn forward_checked<const D: usize>(&self, input: Tensor<D>) -> crate::Result<Tensor<D>> {
        let layout = self.layout()?;
        check_last_dim(&input, layout.d_input, "TernaryLinear input")?;
        let x = match &self.norm {
            Some(norm) => norm.forward(input),
            None => input,
        };
        let bias = self.bias.as_ref().map(|b| b.val());
        self.weight.linear(x, layout.int8_activations, bias)
    }
}

impl ModuleDisplay for TernaryLinear {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        match self.layout() {
            Ok(layout) => content
                .add("d_input", &layout.d_input)
                .add("d_output", &layout.d_output)
                .add("bias", &self.bias.is_some())
                .add("int8_activations", &layout.int8_activations),
            Err(e) => content.add("layout", &e.to_string()),
        }
        .optional()
    }
}
