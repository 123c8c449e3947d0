//! `BitLinear`: the BitNet b1.58 linear layer.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param, Reparameterizer};
use burn::nn::{Initializer, RmsNorm, RmsNormConfig};
use burn::tensor::module::linear;
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};

use super::quantizer::{Quantizer, QuantizerConfig};
use crate::check::{check_finite, check_last_dim, check_norm_eps};
use crate::error::QatError;
use crate::infer::PackedWeight;
use crate::infer::convert::{check_packable, multiplier_of};
use crate::quant::layout::{Reduce, ScaleLayout};
use crate::quant::{Granularity, QuantConfig, QuantGrid, quant_grid};
use crate::ste::Ste;

/// Configuration of a [`BitLinear`] layer. The defaults are the BitNet b1.58 recipe: RMSNorm
/// (epsilon 1e-5) inside the layer, 8-bit absmax per-token activations, ternary absmean
/// per-tensor weights, the standard STE, no bias.
///
/// # Example
/// ```
/// use bitnet_qat::nn::BitLinearConfig;
/// use bitnet_qat::quant::QuantConfig;
/// use bitnet_qat::ste::Ste;
/// use burn::tensor::{Device, Tensor, TensorData};
///
/// let device = Device::flex().autodiff();
/// let layer = BitLinearConfig::new(64, 32).init(&device).unwrap();
/// let y = layer.forward(Tensor::<2>::ones([8, 64], &device));
/// assert_eq!(y.dims(), [8, 32]);
///
/// // 4-bit weights with one scale per output, learned step size, no norm (SubLN models).
/// let w4 = BitLinearConfig::new(64, 32)
///     .with_weight_quant(QuantConfig::int(4).with_granularity(
///         bitnet_qat::quant::Granularity::PerChannel,
///     ))
///     .with_weight_ste(Ste::LearnedStepSize)
///     .with_norm(false)
///     .init(&device)
///     .unwrap();
/// assert!(w4.weight_quantizer().unwrap().step.is_some());
///
/// // Invalid settings are reported when the layer is built.
/// assert!(BitLinearConfig::new(64, 32).with_norm_eps(0.0).init(&device).is_err());
/// ```
#[derive(Config, Debug)]
pub struct BitLinearConfig {
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the output features.
    pub d_output: usize,
    /// Whether to add a (full-precision) bias. BitNet has none.
    #[config(default = false)]
    pub bias: bool,
    /// Whether to apply RMSNorm to the input inside the layer (the Training Tips recipe).
    /// Turn it off for SubLN-style models that normalise outside the layer.
    #[config(default = true)]
    pub norm: bool,
    /// Whether the norm's gain `γ` is trained. `false` keeps it at 1, a parameter-free RMS norm
    /// (as BitNetMCU's layers have): the norm then takes no gradient, and a first layer whose input is data computes no input gradient, which a
    /// trained `γ` needs (the step costs about what a plain `Linear` step costs; see
    /// `docs/ste.md`). Stored in the record either way (`γ` = 1), frozen on load.
    #[config(default = true)]
    pub norm_affine: bool,
    /// The RMSNorm epsilon (BitNet b1.58 2B4T uses 1e-5).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// The weight quantizer. Scales run along the input axis of the `[d_input, d_output]`
    /// weight, so `PerChannel` is one scale per output.
    #[config(default = "QuantConfig::ternary()")]
    pub weight_quant: QuantConfig,
    /// The weight STE.
    #[config(default = "Ste::Standard")]
    pub weight_ste: Ste,
    /// The activation quantizer (scales along the last axis), or `None` for full-precision
    /// activations.
    #[config(default = "Some(QuantConfig::activation_int8())")]
    pub activation_quant: Option<QuantConfig>,
    /// The activation STE ([`Ste::LearnedStepSize`] is for weights only).
    #[config(default = "Ste::Standard")]
    pub activation_ste: Ste,
    /// The weight initializer (the same default as Burn's `Linear`).
    #[config(default = "Initializer::KaimingUniform{gain:1.0/3.0f64.sqrt(), fan_out_only:false}")]
    pub initializer: Initializer,
}

/// The BitNet b1.58 linear layer:
/// `x_n = RMSNorm(x)`, `x_q = x_n + (act_quant(x_n) - x_n).detach()`,
/// `w_q = W + (weight_quant(W) - W).detach()`, `y = x_q W_q (+ b)`.
///
/// The latent weight is stored `[d_input, d_output]` like Burn's `Linear`, so `Linear` weights
/// load into it. Its weight quantizer is attached to it as a reparameterization (the same way
/// the [`QatReparameterizer`](crate::reparam::QatReparameterizer) attaches one to any layer's
/// weights): `weight.val()` is the quantized weight, `weight.base()` the latent one, and the
/// gradient of the configured STE reaches the latent weight. After [`Module::valid`] the forward
/// pass is the same quantized computation, without the STE; with BitNet's int8 activations and
/// packable weights it sums the integer codes as the packed kernels do (see
/// `BitLinear::integer_forward`), which re-quantizes the weight and reads its level back to the
/// host on every call: for inference, [`crate::infer::pack`] the model.
///
/// # Non-finite values
/// [`BitLinear::forward`] does not look at the values (that would cost a device sync per call);
/// a NaN input gives NaN outputs. [`BitLinear::try_forward`] checks the input and returns
/// [`QatError::NonFinite`]; [`crate::check::check_model_finite`] checks every parameter of a
/// model.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct BitLinear {
    /// The weight `[d_input, d_output]`: the latent values (`weight.base()`) with the weight
    /// [`Quantizer`] attached (`weight.val()` is the quantized weight; see
    /// [`BitLinear::weight_quantizer`]).
    pub weight: Param<Tensor<2>>,
    /// The optional bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The input RMSNorm, when the layer normalises its input.
    pub norm: Option<RmsNorm>,
    /// The activation quantizer, if activations are quantized.
    pub activation_quantizer: Option<Quantizer>,
}

/// Attaches one quantizer to the parameter at one path (the weight of a layer being built).
pub(crate) struct AttachAt {
    pub(crate) path: &'static str,
    pub(crate) quantizer: Option<Quantizer>,
}

impl Reparameterizer for AttachAt {
    type Reparam = Quantizer;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Quantizer>) {
        if path == self.path {
            (param, self.quantizer.take())
        } else {
            (param, None)
        }
    }
}

impl BitLinearConfig {
    /// Checks every setting without building anything.
    pub fn validate(&self) -> crate::Result<()> {
        if self.d_input == 0 {
            return Err(QatError::ZeroDim { name: "d_input" });
        }
        if self.d_output == 0 {
            return Err(QatError::ZeroDim { name: "d_output" });
        }
        if self.norm {
            check_norm_eps(self.norm_eps)?;
        }
        self.weight_ste.validate(&self.weight_quant)?;
        self.weight_quant.validate_for_dim(self.d_input)?;
        if let Some(act) = &self.activation_quant {
            self.activation_config(act)
                .validate_activation_as(self.d_input, "BitLinearConfig.activation_ste")?;
        }
        Ok(())
    }

    /// Builds the layer on `device`, or reports the first invalid setting.
    pub fn init(&self, device: &Device) -> crate::Result<BitLinear> {
        self.validate()?;
        let (weight, bias) = self.lazy_params(device);
        self.build(weight, bias, device)
    }

    /// The weight and bias from the initializer, not yet allocated.
    #[allow(clippy::type_complexity)]
    fn lazy_params(&self, device: &Device) -> (Param<Tensor<2>>, Option<Param<Tensor<1>>>) {
        let weight = self.initializer.init_with(
            [self.d_input, self.d_output],
            Some(self.d_input),
            Some(self.d_output),
            device,
        );
        let bias = self.bias.then(|| {
            self.initializer.init_with(
                [self.d_output],
                Some(self.d_input),
                Some(self.d_output),
                device,
            )
        });
        (weight, bias)
    }

    /// The layer as [`crate::infer::pack`] leaves it before attaching its packed weight: no
    /// weight quantizer (folded away) and a weight that is never allocated (a lazy parameter),
    /// with the bias, norm and activation quantizer of the configuration. A model built from
    /// such layers is a skeleton [`crate::infer::load_packed`] loads a packed record into
    /// without allocating the layers' f32 weights. Not for training.
    ///
    /// # Errors
    /// As [`BitLinearConfig::validate`].
    pub fn init_packed_skeleton(&self, device: &Device) -> crate::Result<BitLinear> {
        self.validate()?;
        let (weight, bias) = self.lazy_params(device);
        let (norm, activation_quantizer) = self.inner_parts(device)?;
        Ok(BitLinear {
            weight,
            bias,
            norm,
            activation_quantizer,
        })
    }

    /// Builds the layer around an existing weight `[d_input, d_output]` (and bias), for example
    /// the weights of a trained Burn `Linear`.
    pub fn init_with(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        device: &Device,
    ) -> crate::Result<BitLinear> {
        self.validate()?;
        if weight.dims() != [self.d_input, self.d_output] {
            return Err(QatError::Shape {
                what: "BitLinear weight".into(),
                expected: format!("[{}, {}]", self.d_input, self.d_output),
                got: weight.dims().to_vec(),
            });
        }
        if let Some(b) = &bias
            && b.dims() != [self.d_output]
        {
            return Err(QatError::Shape {
                what: "BitLinear bias".into(),
                expected: format!("[{}]", self.d_output),
                got: b.dims().to_vec(),
            });
        }
        let weight = Param::from_tensor(weight.to_device(device));
        let bias = bias.map(|b| Param::from_tensor(b.to_device(device)));
        self.build(weight, bias, device)
    }

    fn build(
        &self,
        weight: Param<Tensor<2>>,
        bias: Option<Param<Tensor<1>>>,
        device: &Device,
    ) -> crate::Result<BitLinear> {
        let weight_quantizer = QuantizerConfig::new(self.weight_quant.clone())
            .with_ste(self.weight_ste)
            .init_weight(&weight.val())?;
        let (norm, activation_quantizer) = self.inner_parts(device)?;
        let layer = BitLinear {
            weight,
            bias,
            norm,
            activation_quantizer,
        };
        Ok(layer.apply_reparameterization(AttachAt {
            path: "weight",
            quantizer: Some(weight_quantizer),
        }))
    }

    /// The input norm and the activation quantizer.
    fn inner_parts(&self, device: &Device) -> crate::Result<(Option<RmsNorm>, Option<Quantizer>)> {
        let activation_quantizer = match &self.activation_quant {
            Some(act) => Some(
                self.activation_config(act)
                    .init_activation(self.d_input, device)?,
            ),
            None => None,
        };
        let norm = self.norm.then(|| {
            let norm = RmsNormConfig::new(self.d_input)
                .with_epsilon(self.norm_eps)
                .init(device);
            if self.norm_affine {
                norm
            } else {
                RmsNorm {
                    gamma: norm.gamma.set_require_grad(false),
                    epsilon: norm.epsilon,
                }
            }
        });
        Ok((norm, activation_quantizer))
    }

    fn activation_config(&self, act: &QuantConfig) -> QuantizerConfig {
        QuantizerConfig::new(act.clone()).with_ste(self.activation_ste)
    }
}

impl BitLinear {
    /// The forward pass.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// # Panics
    /// If the last axis of `input` is not `d_input`; [`BitLinear::try_forward`] returns an
    /// error instead.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self.forward_checked(input) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// The forward pass with its input checked: a wrong shape or a NaN/infinite input value is
    /// a [`QatError`]. The value check reads the input back from the device.
    pub fn try_forward<const D: usize>(&self, input: Tensor<D>) -> crate::Result<Tensor<D>> {
        check_finite(&input, "BitLinear input")?;
        self.forward_checked(input)
    }

    /// The packed weight, once [`crate::infer::pack`] has packed the layer.
    pub fn packed_weight(&self) -> Option<&PackedWeight> {
        self.weight.reparameterization::<PackedWeight>()
    }

    /// Input features.
    ///
    /// # Errors
    /// For a packed layer whose record is malformed (see [`PackedWeight::layout`]).
    pub fn d_input(&self) -> crate::Result<usize> {
        match self.packed_weight() {
            Some(packed) => Ok(packed.layout()?.d_input),
            None => Ok(self.weight.shape().dims::<2>()[0]),
        }
    }

    /// The weight quantizer: the [`Quantizer`] attached to [`BitLinear::weight`] (`None` only
    /// once [`Module::materialize`] has folded it into the weight).
    pub fn weight_quantizer(&self) -> Option<&Quantizer> {
        self.weight.reparameterization::<Quantizer>()
    }

    /// The quantized weight the forward pass uses, `[d_input, d_output]` (with the STE's
    /// gradient path to the latent weight).
    pub fn quantized_weight(&self) -> Tensor<2> {
        self.weight.val()
    }

    /// Checks the latent weight and bias for NaN and infinite values.
    pub fn check_finite(&self) -> crate::Result<()> {
        check_finite(&self.weight.base(), "BitLinear weight")?;
        if let Some(b) = &self.bias {
            check_finite(&b.val(), "BitLinear bias")?;
        }
        Ok(())
    }

    pub(crate) fn forward_checked<const D: usize>(
        &self,
        input: Tensor<D>,
    ) -> crate::Result<Tensor<D>> {
        self.forward_normed(self.norm.as_ref(), input)
    }

    /// The forward pass of the layer with `norm` as its input norm: its own, or for a layer
    /// without one, the RMSNorm in front of it (a transformer's SubLN), so that in training the
    /// norm and the activation quantizer run as one fused op
    /// ([`Quantizer::try_forward_normalized`]). Without a gradient to track (inference,
    /// `valid()`: neither the input, the weight nor the norm takes one) and for packed layers
    /// the norm runs on its own first, as the packed kernels and [`BitLinear::integer_forward`]
    /// need it.
    pub(crate) fn forward_normed<const D: usize>(
        &self,
        norm: Option<&RmsNorm>,
        input: Tensor<D>,
    ) -> crate::Result<Tensor<D>> {
        check_last_dim(&input, self.d_input()?, "BitLinear input")?;
        let bias = self.bias.as_ref().map(|b| b.val());
        let fused = self.fuses_norm(norm, &input);
        let (norm, x) = match norm {
            Some(n) if !fused => (None, n.forward(input)),
            norm => (norm, input),
        };
        if let Some(packed) = self.packed_weight() {
            return self.packed_forward(packed, x, bias);
        }
        if norm.is_none()
            && let Some(y) = self.integer_forward(&x)?
        {
            return Ok(match bias {
                Some(b) => y + b.unsqueeze(),
                None => y,
            });
        }
        let x = match (norm, &self.activation_quantizer) {
            (Some(n), Some(q)) => q.try_forward_normalized(x, n)?,
            (Some(n), None) => n.forward(x),
            (None, Some(q)) => q.try_forward(x)?,
            (None, None) => x,
        };
        Ok(linear(x, self.try_quantized_weight()?, bias))
    }

    /// [`BitLinear::quantized_weight`], with the weight quantizer's error (a recorded setting
    /// that does not fit the weight) returned instead of the panic of `weight.val()`, which
    /// applies the quantizer through Burn's infallible `Reparameterization::apply`.
    fn try_quantized_weight(&self) -> crate::Result<Tensor<2>> {
        match self.weight_quantizer() {
            Some(quantizer) => quantizer.try_forward(self.weight.base()),
            None => Ok(self.weight.val()),
        }
    }

    /// Whether [`BitLinear::forward_normed`] runs `norm` fused with the activation quantizer
    /// for `input`: in training — the input, the weight or the norm's `γ` takes a gradient (a
    /// frozen norm still fuses) — and for an unpacked layer.
    pub(crate) fn fuses_norm<const D: usize>(
        &self,
        norm: Option<&RmsNorm>,
        input: &Tensor<D>,
    ) -> bool {
        let tracked = input.is_require_grad()
            || self.weight.base().is_require_grad()
            || norm.is_some_and(|n| n.gamma.val().is_require_grad());
        tracked && self.packed_weight().is_none()
    }

    /// Outside training (no autodiff), a layer with BitNet's int8 activations (per token, or
    /// per group of a multiple of 256 inputs, group by group) and hard ternary
    /// or binary weights (one scale per tensor or per output) computes what the packed int8
    /// kernels compute: `y = (Σ c_x c_w) / (s_x s_w)`, the sum of integer codes (exact in f32
    /// below 2^24, so whatever the order) scaled once, with the multiplier `s_w` that
    /// [`crate::infer::pack`] stores. The float path `Σ (c_x / s_x)(c_w / s_w)` is the same
    /// number up to rounding, but a last-bit difference can flip the rounding of the next
    /// layer's activation codes, and a packed model would drift from its source; computed this
    /// way, `valid()` and the packed model agree. It reads the weight's level (one value per
    /// scale) back to the host. `None` when the layer does not qualify.
    fn integer_forward<const D: usize>(&self, x: &Tensor<D>) -> crate::Result<Option<Tensor<D>>> {
        let (Some(act), Some(wq)) = (&self.activation_quantizer, self.weight_quantizer()) else {
            return Ok(None);
        };
        if x.is_require_grad() || self.weight.base().is_require_grad() {
            return Ok(None);
        }
        let Some(group) = act.bitnet_int8_group()? else {
            return Ok(None);
        };
        let Some((codes, sw)) = integer_weight(wq, self.weight.base())? else {
            return Ok(None);
        };
        let [d_in, d_out] = codes.dims();
        // Per token one group of all inputs; per group, each group's sums scaled by its own
        // activation scale and the groups added in order, as `PackedWeight::linear_grouped`.
        let group = group.unwrap_or(d_in);
        if !d_in.is_multiple_of(group) {
            return Ok(None);
        }
        let dtype = x.dtype();
        let mut out_dims = x.dims();
        out_dims[D - 1] = d_out;
        let x2: Tensor<2> = x.clone().reshape([-1, d_in as i64]);
        let y = integer_product(x2, &codes, &sw, group);
        Ok(Some(y.cast(dtype).reshape(out_dims)))
    }

    /// The forward pass of a packed layer: the int8 kernels when the activation quantizer is
    /// BitNet's (8-bit absmax per token, a hard STE, lambda 1: the kernels quantize exactly so)
    /// or the same per group of a multiple of 256 inputs (group by group,
    /// [`PackedWeight::linear_grouped`]), otherwise the activation quantizer's values times the
    /// weight with the float kernels.
    fn packed_forward<const D: usize>(
        &self,
        packed: &PackedWeight,
        x: Tensor<D>,
        bias: Option<Tensor<1>>,
    ) -> crate::Result<Tensor<D>> {
        let int8 = match &self.activation_quantizer {
            Some(q) => q.bitnet_int8_group()?,
            None => None,
        };
        if let Some(Some(group)) = int8
            && let Some(y) = packed.linear_grouped(x.clone(), group, bias.clone())?
        {
            return Ok(y);
        }
        let int8 = int8 == Some(None);
        let x = match (&self.activation_quantizer, int8) {
            (Some(q), false) => q.try_forward(x)?,
            _ => x,
        };
        packed.linear(x, int8, bias)
    }
}

/// The integer form of a hard ternary or binary weight `[d_input, d_output]` (a layer's latent
/// weight, or a kernel's linear view) as its quantizer `wq` quantizes it: the codes (as floats,
/// `-1`, `0`, `1`) and the multiplier `s_w` of each scale as `[1, 1]` (per tensor) or
/// `[1, d_output]` (per output), which [`crate::infer::pack`] stores. `None` when the quantizer
/// has no such form (another format or granularity, a soft STE, lambda below 1). It reads the
/// weight's level (one value per scale) back to the host.
pub(crate) fn integer_weight(
    wq: &Quantizer,
    weight: Tensor<2>,
) -> crate::Result<Option<(Tensor<2>, Tensor<2>)>> {
    let settings = wq.try_settings()?;
    let (quant, _) = settings.effective();
    let per_tensor_or_output = matches!(
        quant.granularity,
        Granularity::PerTensor | Granularity::PerChannel
    );
    if !per_tensor_or_output || check_packable(&settings).is_err() {
        return Ok(None);
    }
    let hard = wq.hard_weight(weight)?; // [d_in, d_out]
    let [d_in, d_out] = hard.dims();
    // One level per scale, reduced as the quantizers reduce (in blocks; see `ScaleLayout`).
    let levels = ScaleLayout::new(quant.granularity, 0, [d_in, d_out])
        .reduce_compact(hard.clone().abs(), Reduce::Max)
        .into_data()
        .try_cast_as::<f32>()
        .and_then(|d| d.try_into_vec::<f32>())
        .map_err(|e| QatError::device("BitLinear weight level", e))?;
    let n = levels.len();
    let multipliers: Vec<f32> = levels.into_iter().map(multiplier_of).collect();
    // In f32 whatever the device's float type, as the activation grid (`quant_grid`).
    let sw = Tensor::<2>::from_data(
        TensorData::new(multipliers, [1, n]),
        TensorCreationOptions::new(hard.device()).with_dtype(DType::F32),
    );
    Ok(Some((hard.sign().cast(DType::F32), sw)))
}

/// `x2 · W` for rows `x2` `[m, d_input]` and the integer form of `W` ([`integer_weight`]),
/// computed as the packed int8 kernels compute it: per group of `group` inputs (all of them for
/// BitNet's per-token quantization) the activations' int8 codes and scale, the sum of integer
/// products (exact in f32 below 2^24, so whatever the order) divided once by `s_x s_w`, the
/// groups' results added in order.
pub(crate) fn integer_product(
    x2: Tensor<2>,
    codes: &Tensor<2>,
    sw: &Tensor<2>,
    group: usize,
) -> Tensor<2> {
    let [_, d_in] = x2.dims();
    (0..d_in / group)
        .map(|g| {
            // BitNet's activation quantizer, as the kernels' `quantize_rows` computes it:
            // `s_x = 127 / max(max|x|, 1e-5)`, codes `clamp(round_half_even(x s_x), -128,
            // 127)`.
            let QuantGrid {
                codes: cx,
                scale: sx,
                ..
            } = quant_grid(
                x2.clone().narrow(1, g * group, group),
                &QuantConfig::activation_int8(),
                1,
            );
            cx.matmul(codes.clone().narrow(0, g * group, group)) / (sx * sw.clone())
        })
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| unreachable!("d_input > 0 gives one group at least"))
}

impl ModuleDisplay for BitLinear {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [d_input, d_output] = match self.packed_weight().map(PackedWeight::layout) {
            Some(Ok(layout)) => [layout.d_input, layout.d_output],
            _ => self.weight.shape().dims(),
        };
        content
            .add("d_input", &d_input)
            .add("d_output", &d_output)
            .add("bias", &self.bias.is_some())
            .add("norm", &self.norm.is_some())
            .add(
                "weight",
                &self
                    .weight_quantizer()
                    .and_then(|q| q.try_settings().ok())
                    .map_or_else(
                        || "unquantized".to_string(),
                        |s| format!("{:?}", s.quant.format),
                    ),
            )
            .optional()
    }
}
