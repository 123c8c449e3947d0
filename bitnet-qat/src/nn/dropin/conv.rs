//! [`Conv1d`] and [`Conv2d`]: burn-nn's convolutions with BitNet quantization.
//!
//! The kernel `[channels_out, channels_in / groups, k...]` is quantized through its linear view
//! ([`QuantAxis::OutputFirst`](crate::nn::QuantAxis::OutputFirst): `PerChannel` is one scale
//! per output channel); the input activations per position (pixel, time step) over the
//! channels — BitNet's per-token quantization, a position being a token. Records, initial
//! values and (without quantization) outputs are burn-nn's.
//!
//! In training the layer runs burn-nn's convolution over the fake-quantized activations and
//! kernel (the straight-through estimators' forward pass). Outside training (no autodiff) and
//! once [packed](crate::infer::pack), a W1.58A8 layer (ternary or binary kernel with one scale
//! per tensor or per output channel, BitNet's int8 activations, `groups` 1) computes the same
//! convolution as the packed int8 × ternary kernels do: each position's channels times every
//! tap of the kernel (`Σ c_x c_w / (s_x s_w)`, integer sums), the taps' products added in a
//! fixed order — so the packed layer's outputs are `valid()`'s, bit for bit, and `valid()`'s
//! are the training forward pass's up to rounding.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::conv::{Conv1d as FloatConv1d, Conv2d as FloatConv2d};
use burn::nn::{Initializer, PaddingConfig1d, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use bitnet_kernels::burn_ext::ScaleKind;

use super::config::hand_written_config;
use super::conv_taps::{Geometry, conv_by_taps, same_padding};
use super::latent;
use crate::error::QatError;
use crate::infer::PackedWeight;
use crate::nn::bit_linear::{AttachAt, integer_product, integer_weight};
use crate::nn::{QuantScheme, Quantizer, linear_view};

/// Configuration of a drop-in [`Conv1d`]: burn-nn's `Conv1dConfig` (the same fields and
/// defaults) plus [`Conv1dConfig::quant`], BitNet b1.58 by default.
///
/// # Example
/// ```
/// use bitnet_qat::nn::conv::Conv1dConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let conv = Conv1dConfig::new(4, 8, 3).init(&device);
/// assert_eq!(conv.forward(Tensor::<3>::ones([2, 4, 10], &device)).dims(), [2, 8, 8]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conv1dConfig {
    /// The number of input channels.
    pub channels_in: usize,
    /// The number of output channels.
    pub channels_out: usize,
    /// The size of the kernel.
    pub kernel_size: usize,
    /// The stride of the convolution (default 1).
    pub stride: usize,
    /// Spacing between kernel elements (default 1).
    pub dilation: usize,
    /// Controls the connections between input and output channels (default 1).
    pub groups: usize,
    /// The padding configuration (default `Valid`).
    pub padding: PaddingConfig1d,
    /// Whether to add a (full-precision) bias (default `true`).
    pub bias: bool,
    /// The weight initializer (burn-nn's default).
    pub initializer: Initializer,
    /// The quantization of the kernel and the input activations (default: BitNet b1.58).
    #[serde(default)]
    pub quant: QuantScheme,
}

/// Configuration of a drop-in [`Conv2d`]: burn-nn's `Conv2dConfig` (the same fields and
/// defaults) plus [`Conv2dConfig::quant`], BitNet b1.58 by default.
///
/// # Example
/// ```
/// use bitnet_qat::nn::QuantScheme;
/// use bitnet_qat::nn::conv::Conv2dConfig;
/// use bitnet_qat::quant::{Granularity, QuantConfig};
/// use burn::nn::PaddingConfig2d;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// // One ternary scale per output channel, 8-bit activations per pixel.
/// let quant = QuantScheme::bitnet()
///     .with_weight(Some(QuantConfig::ternary().with_granularity(Granularity::PerChannel)));
/// let conv = Conv2dConfig::new([1, 8], [3, 3])
///     .with_padding(PaddingConfig2d::Same)
///     .with_quant(quant)
///     .init(&device);
/// let y = conv.forward(Tensor::<4>::ones([2, 1, 28, 28], &device));
/// assert_eq!(y.dims(), [2, 8, 28, 28]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conv2dConfig {
    /// The number of channels `[in, out]`.
    pub channels: [usize; 2],
    /// The size of the kernel.
    pub kernel_size: [usize; 2],
    /// The stride of the convolution (default `[1, 1]`).
    pub stride: [usize; 2],
    /// Spacing between kernel elements (default `[1, 1]`).
    pub dilation: [usize; 2],
    /// Controls the connections between input and output channels (default 1).
    pub groups: usize,
    /// The padding configuration (default `Valid`).
    pub padding: PaddingConfig2d,
    /// Whether to add a (full-precision) bias (default `true`).
    pub bias: bool,
    /// The weight initializer (burn-nn's default).
    pub initializer: Initializer,
    /// The quantization of the kernel and the input activations (default: BitNet b1.58).
    #[serde(default)]
    pub quant: QuantScheme,
}

hand_written_config!(Conv1dConfig);
hand_written_config!(Conv2dConfig);

impl Conv1dConfig {
    /// burn-nn's defaults, quantized as BitNet b1.58.
    pub fn new(channels_in: usize, channels_out: usize, kernel_size: usize) -> Self {
        let burn = burn::nn::conv::Conv1dConfig::new(channels_in, channels_out, kernel_size);
        Self {
            channels_in,
            channels_out,
            kernel_size,
            stride: burn.stride,
            dilation: burn.dilation,
            groups: burn.groups,
            padding: burn.padding,
            bias: burn.bias,
            initializer: burn.initializer,
            quant: QuantScheme::bitnet(),
        }
    }

    /// burn-nn's configuration of the same layer.
    pub fn to_float(&self) -> burn::nn::conv::Conv1dConfig {
        burn::nn::conv::Conv1dConfig::new(self.channels_in, self.channels_out, self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
            .with_padding(self.padding.clone())
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
    }
}

impl Conv2dConfig {
    /// burn-nn's defaults, quantized as BitNet b1.58.
    pub fn new(channels: [usize; 2], kernel_size: [usize; 2]) -> Self {
        let burn = burn::nn::conv::Conv2dConfig::new(channels, kernel_size);
        Self {
            channels,
            kernel_size,
            stride: burn.stride,
            dilation: burn.dilation,
            groups: burn.groups,
            padding: burn.padding,
            bias: burn.bias,
            initializer: burn.initializer,
            quant: QuantScheme::bitnet(),
        }
    }

    /// burn-nn's configuration of the same layer.
    pub fn to_float(&self) -> burn::nn::conv::Conv2dConfig {
        burn::nn::conv::Conv2dConfig::new(self.channels, self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
            .with_padding(self.padding.clone())
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
    }
}

macro_rules! conv_config_setters {
    ($config:ident, $layer:ident, $stride:ty, $padding:ty, |$c:ident| $channels:expr) => {
        impl $config {
            /// Builds the layer on `device`: burn-nn's parameters (the same initial values for
            /// the same seed) with the quantizers of the configuration's `quant`.
            ///
            /// # Panics
            /// For an invalid configuration, as burn-nn's `init` does, with the message of the
            /// error `try_init` returns.
            pub fn init(&self, device: &Device) -> $layer {
                self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
            }

            /// `init`, with a typed error for an invalid configuration.
            ///
            /// # Errors
            /// [`QatError::Config`] naming `channels`, `groups` or the kernel sizes (zero, or
            /// channels the groups do not divide); as [`QuantScheme::validate`].
            pub fn try_init(&self, device: &Device) -> crate::Result<$layer> {
                let $c = self;
                let sizes = [
                    self.kernel_size.axes(),
                    self.stride.axes(),
                    self.dilation.axes(),
                ]
                .concat();
                check_conv(stringify!($config), $channels, self.groups, &sizes)?;
                $layer::from_float(self.to_float().init(device), &self.quant)
            }

            /// Sets the stride.
            pub fn with_stride(mut self, stride: $stride) -> Self {
                self.stride = stride;
                self
            }

            /// Sets the dilation.
            pub fn with_dilation(mut self, dilation: $stride) -> Self {
                self.dilation = dilation;
                self
            }

            /// Sets the number of groups.
            pub fn with_groups(mut self, groups: usize) -> Self {
                self.groups = groups;
                self
            }

            /// Sets the padding.
            pub fn with_padding(mut self, padding: $padding) -> Self {
                self.padding = padding;
                self
            }

            /// Sets whether the layer has a bias.
            pub fn with_bias(mut self, bias: bool) -> Self {
                self.bias = bias;
                self
            }

            /// Sets the weight initializer.
            pub fn with_initializer(mut self, initializer: Initializer) -> Self {
                self.initializer = initializer;
                self
            }

            /// Sets the quantization.
            pub fn with_quant(mut self, quant: QuantScheme) -> Self {
                self.quant = quant;
                self
            }
        }
    };
}
conv_config_setters!(Conv1dConfig, Conv1d, usize, PaddingConfig1d, |c| [
    c.channels_in,
    c.channels_out
]);
conv_config_setters!(Conv2dConfig, Conv2d, [usize; 2], PaddingConfig2d, |c| c
    .channels);

/// Checks what burn-nn's convolutions assert (and panic on): channels, kernel sizes, strides
/// and dilations above zero, channels divisible by the groups.
fn check_conv(
    config: &str,
    [channels_in, channels_out]: [usize; 2],
    groups: usize,
    sizes: &[usize],
) -> crate::Result<()> {
    if channels_in == 0 || channels_out == 0 {
        return Err(QatError::config(
            format!("{config}.channels"),
            format!("[{channels_in}, {channels_out}]"),
            "at least one input and one output channel",
        ));
    }
    if groups == 0 || !channels_in.is_multiple_of(groups) || !channels_out.is_multiple_of(groups) {
        return Err(QatError::config(
            format!("{config}.groups"),
            groups.to_string(),
            format!("a divisor of both channel counts {channels_in} and {channels_out}"),
        ));
    }
    if sizes.contains(&0) {
        return Err(QatError::config(
            format!("{config}.kernel_size, stride, dilation"),
            format!("{sizes:?}"),
            "sizes of at least 1",
        ));
    }
    Ok(())
}

/// burn-nn's convolution with BitNet quantization: `y = conv(act_quant(x), weight_quant(K)) + b`
/// (see the [module](self) for the axes).
///
/// # Example
/// ```
/// use bitnet_qat::nn::QuantScheme;
/// use bitnet_qat::nn::conv::{Conv1d, Conv1dConfig};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let float = burn::nn::conv::Conv1dConfig::new(2, 4, 3).init(&device);
/// let x = Tensor::<3>::ones([1, 2, 8], &device);
/// let expected = float.forward(x.clone());
/// // Without quantization, burn-nn's outputs bit for bit.
/// let conv = Conv1d::from_float(float, &QuantScheme::none()).unwrap();
/// assert_eq!(conv.forward(x).into_data(), expected.into_data());
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct Conv1d {
    /// The kernel `[channels_out, channels_in / groups, kernel_size]`, its quantizer attached.
    pub weight: Param<Tensor<3>>,
    /// The optional bias `[channels_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Stride of the convolution.
    pub stride: usize,
    /// Size of the kernel.
    pub kernel_size: usize,
    /// Spacing between kernel elements.
    pub dilation: usize,
    /// Controls the connections between input and output channels.
    pub groups: usize,
    /// The padding configuration.
    #[module(skip)]
    pub padding: PaddingConfig1d,
    /// The input-activation quantizer (per position over the channels), if any.
    pub activation_quantizer: Option<Quantizer>,
}

/// The 2-D version of [`Conv1d`].
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct Conv2d {
    /// The kernel `[channels_out, channels_in / groups, k0, k1]`, its quantizer attached.
    pub weight: Param<Tensor<4>>,
    /// The optional bias `[channels_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Stride of the convolution.
    pub stride: [usize; 2],
    /// Size of the kernel.
    pub kernel_size: [usize; 2],
    /// Spacing between kernel elements.
    pub dilation: [usize; 2],
    /// Controls the connections between input and output channels.
    pub groups: usize,
    /// The padding configuration.
    #[module(skip)]
    pub padding: PaddingConfig2d,
    /// The input-activation quantizer (per pixel over the channels), if any.
    pub activation_quantizer: Option<Quantizer>,
}

/// The weight and activation quantizers of a convolution with kernel `weight`.
fn conv_quantizers<const D: usize>(
    weight: &Param<Tensor<D>>,
    groups: usize,
    quant: &QuantScheme,
) -> crate::Result<(Option<Quantizer>, Option<Quantizer>)> {
    let dims = weight.shape().dims::<D>();
    let channels_in = dims[1] * groups;
    quant.validate(dims[1..].iter().product(), channels_in)?;
    let weight_quantizer = match quant.weight {
        Some(_) => quant.output_first_quantizer(&weight.val())?,
        None => None,
    };
    let act = quant.activation_quantizer(channels_in, &weight.lazy_device())?;
    Ok((weight_quantizer, act))
}

/// `input` `[batch, channels, positions...]` (its channels checked: [`check_channels`])
/// through the activation quantizer, per position over the channels.
fn quantize_positions<const D: usize>(
    quantizer: Option<&Quantizer>,
    input: Tensor<D>,
) -> crate::Result<Tensor<D>> {
    match quantizer {
        Some(q) => Ok(q
            .try_forward(input.swap_dims(1, D - 1))?
            .swap_dims(1, D - 1)),
        None => Ok(input),
    }
}

/// [`QatError::Shape`] for an input `[batch, channels, ...]` without `channels` channels.
fn check_channels<const D: usize>(
    input: &Tensor<D>,
    channels: usize,
    layer: &str,
) -> crate::Result<()> {
    let dims = input.dims();
    if dims[1] != channels {
        return Err(QatError::Shape {
            what: format!("{layer} input"),
            expected: format!("[batch, {channels}, ...]"),
            got: dims.to_vec(),
        });
    }
    Ok(())
}

/// A convolution setting given per spatial axis (`usize` for 1-D, `[usize; 2]` for 2-D).
trait Axes {
    fn axes(&self) -> Vec<usize>;
}

impl Axes for usize {
    fn axes(&self) -> Vec<usize> {
        vec![*self]
    }
}

impl Axes for [usize; 2] {
    fn axes(&self) -> Vec<usize> {
        self.to_vec()
    }
}

/// burn-nn's padding configurations as zeros before and after each spatial axis.
trait Pads {
    fn pairs(&self, sizes: &[usize], kernel: &[usize], stride: &[usize]) -> Vec<(usize, usize)>;
}

impl Pads for PaddingConfig1d {
    fn pairs(&self, sizes: &[usize], kernel: &[usize], stride: &[usize]) -> Vec<(usize, usize)> {
        vec![match self {
            Self::Valid => (0, 0),
            Self::Same => same_padding(kernel[0], stride[0], sizes[0]),
            Self::Explicit(left, right) => (*left, *right),
        }]
    }
}

impl Pads for PaddingConfig2d {
    fn pairs(&self, sizes: &[usize], kernel: &[usize], stride: &[usize]) -> Vec<(usize, usize)> {
        match self {
            Self::Valid => vec![(0, 0); 2],
            Self::Same => (0..2)
                .map(|i| same_padding(kernel[i], stride[i], sizes[i]))
                .collect(),
            Self::Explicit(top, left, bottom, right) => vec![(*top, *bottom), (*left, *right)],
        }
    }
}

macro_rules! conv_layer {
    ($layer:ident, $burn:ident, $dims:literal) => {
        impl $layer {
            /// burn-nn's convolution made quantization-aware with `quant`: the same parameters
            /// (ids, values) and settings, with the quantizers attached. The kernel quantizer
            /// is built from the kernel's values.
            ///
            /// # Errors
            /// As [`QuantScheme::validate`] for the layer's sizes.
            pub fn from_float(conv: $burn, quant: &QuantScheme) -> crate::Result<Self> {
                let (weight_quantizer, activation_quantizer) =
                    conv_quantizers(&conv.weight, conv.groups, quant)?;
                let layer = Self {
                    weight: conv.weight,
                    bias: conv.bias,
                    stride: conv.stride,
                    kernel_size: conv.kernel_size,
                    dilation: conv.dilation,
                    groups: conv.groups,
                    padding: conv.padding,
                    activation_quantizer,
                };
                Ok(layer.apply_reparameterization(AttachAt {
                    path: "weight",
                    quantizer: weight_quantizer,
                }))
            }

            /// burn-nn's convolution with this layer's latent kernel and bias (the quantizers
            /// dropped; the same parameter ids). [`Module::materialize`] first to keep the
            /// quantized kernel instead.
            pub fn to_float(self) -> $burn {
                self.as_float_with(latent(self.weight.clone()))
            }

            /// The forward pass.
            ///
            /// # Shapes
            /// - input: `[batch_size, channels_in, positions...]`
            /// - output: `[batch_size, channels_out, positions_out...]`
            ///
            /// # Panics
            /// For an input without `channels_in` channels; [`Self::try_forward`] returns an
            /// error instead.
            pub fn forward(&self, input: Tensor<$dims>) -> Tensor<$dims> {
                match self.try_forward(input) {
                    Ok(y) => y,
                    Err(e) => panic!("{e}"),
                }
            }

            /// The forward pass, with a typed error for an input without `channels_in`
            /// channels (or a malformed record: see [`crate::check::check_model`]).
            pub fn try_forward(&self, input: Tensor<$dims>) -> crate::Result<Tensor<$dims>> {
                let channels = self.weight.shape().dims::<$dims>()[1] * self.groups;
                check_channels(&input, channels, stringify!($layer))?;
                if let Some(y) = self.tap_forward(&input)? {
                    return Ok(y);
                }
                let x = quantize_positions(self.activation_quantizer.as_ref(), input)?;
                // burn-nn's own forward pass, over the quantized kernel (`weight.val()`).
                Ok(self.as_float_with(self.weight.clone()).forward(x))
            }

            /// The kernel quantizer, if the kernel is quantized.
            pub fn weight_quantizer(&self) -> Option<&Quantizer> {
                self.weight.reparameterization::<Quantizer>()
            }

            /// The packed kernel, once [`crate::infer::pack`] has packed the layer.
            pub fn packed_weight(&self) -> Option<&PackedWeight> {
                self.weight.reparameterization::<PackedWeight>()
            }

            /// W1.58A8 outside training and once packed: the per-position products and the
            /// shift-add of [`conv_taps`](super::conv_taps), with the packed int8 kernels or
            /// (unpacked, no autodiff) the same integer arithmetic in tensor operations, so
            /// the packed layer computes `valid()`'s outputs bit for bit. `None` (burn-nn's
            /// convolution of the quantized activations and kernel) for grouped convolutions,
            /// activations other than BitNet's int8 per position, kernels without a packed
            /// form, per-group kernel scales, and in training.
            fn tap_forward(&self, input: &Tensor<$dims>) -> crate::Result<Option<Tensor<$dims>>> {
                let Some(act) = &self.activation_quantizer else {
                    return Ok(None);
                };
                if self.groups != 1 || act.bitnet_int8_group()? != Some(None) {
                    return Ok(None);
                }
                let dims = self.weight.shape().dims::<$dims>();
                let (out, channels) = (dims[0], dims[1]);
                let (kernel, stride) = (self.kernel_size.axes(), self.stride.axes());
                let geometry = Geometry {
                    pads: self.padding.pairs(&input.dims()[2..], &kernel, &stride),
                    kernel,
                    stride,
                    dilation: self.dilation.axes(),
                };
                let taps = geometry.taps();
                let bias = self.bias.as_ref().map(|b| b.val());
                let (layer, dtype) = (stringify!($layer), input.dtype());
                if let Some(packed) = self.packed_weight() {
                    if matches!(packed.layout()?.scales, ScaleKind::PerGroup(_)) {
                        return Ok(None);
                    }
                    return conv_by_taps(input.clone(), &geometry, out, bias, layer, |rows| {
                        let y = packed.linear_by_taps(rows, taps)?;
                        let y = y.unwrap_or_else(|| unreachable!("per-tensor or per-row scales"));
                        Ok(y.cast(dtype))
                    })
                    .map(Some);
                }
                let Some(wq) = self.weight_quantizer() else {
                    return Ok(None);
                };
                if input.is_require_grad() || self.weight.base().is_require_grad() {
                    return Ok(None);
                }
                let Some((codes, sw)) = integer_weight(wq, linear_view(self.weight.base()))? else {
                    return Ok(None);
                };
                // The linear view `[channels · taps, out]` (channel-major) as `[channels,
                // taps · out]`: column `t · out + o` is tap `t` of output `o`.
                let codes = codes.reshape([channels, taps * out]);
                let sw = match sw.dims()[1] {
                    1 => sw,
                    _ => sw.repeat_dim(1, taps),
                };
                conv_by_taps(input.clone(), &geometry, out, bias, layer, |rows| {
                    Ok(integer_product(rows, &codes, &sw, channels).cast(dtype))
                })
                .map(Some)
            }

            /// burn-nn's layer with `weight` and this layer's other parameters and settings.
            fn as_float_with(&self, weight: Param<Tensor<$dims>>) -> $burn {
                $burn {
                    weight,
                    bias: self.bias.clone(),
                    stride: self.stride,
                    kernel_size: self.kernel_size,
                    dilation: self.dilation,
                    groups: self.groups,
                    padding: self.padding.clone(),
                }
            }
        }

        impl ModuleDisplay for $layer {
            fn custom_settings(&self) -> Option<DisplaySettings> {
                DisplaySettings::new()
                    .with_new_line_after_attribute(false)
                    .optional()
            }

            fn custom_content(&self, content: Content) -> Option<Content> {
                let dims = self.weight.shape().dims::<$dims>();
                let quant = |q: Option<&Quantizer>| {
                    q.and_then(|q| q.try_settings().ok())
                        .map_or_else(|| "float".to_string(), |s| format!("{:?}", s.quant.format))
                };
                content
                    .add("ch_in", &(dims[1] * self.groups))
                    .add("ch_out", &dims[0])
                    .add("kernel_size", &format!("{:?}", self.kernel_size))
                    .add("stride", &format!("{:?}", self.stride))
                    .add("groups", &self.groups)
                    .add_debug_attribute("padding", &self.padding)
                    .add("weight", &quant(self.weight_quantizer()))
                    .add("activation", &quant(self.activation_quantizer.as_ref()))
                    .optional()
            }
        }
    };
}

conv_layer!(Conv1d, FloatConv1d, 3);
conv_layer!(Conv2d, FloatConv2d, 4);
