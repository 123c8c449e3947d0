//! `TernaryLinear`: the packed inference form of a ternary (or binary) linear layer.

use bitnet_kernels::burn_ext::{ScaleKind, ternary_matmul, unpack_codes};
use bitnet_kernels::packed::{PackedTernary, TernaryScales, words_per_row};
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param, ParamId};
use burn::nn::RmsNorm;
use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};

use crate::check::{check_finite, check_last_dim};
use crate::error::{QatError, Result};

/// A linear layer with packed ternary weights, for inference.
///
/// The weights are ordinary recorded tensors — `codes`, u32 words in the
/// [`bitnet_kernels::packed`] layout, and `scales` — so burnpack and safetensors records
/// store them (2 bits per weight). On Flex and NdArray devices the forward pass runs the SIMD
/// CPU kernels; elsewhere a tensor-op fallback.
///
/// Build one with [`crate::infer::ToTernary`] from a trained [`BitLinear`](crate::nn::BitLinear)
/// or reparameterized `Linear`, or with [`TernaryLinear::from_packed`].
///
/// # Example
/// ```
/// use bitnet_qat::infer::{ToTernary, TernaryLinear};
/// use bitnet_qat::nn::BitLinearConfig;
/// use burn::module::Module;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let layer = BitLinearConfig::new(64, 16).init(&device).unwrap();
/// let packed: TernaryLinear = layer.to_ternary().unwrap();
/// let x = Tensor::<2>::ones([4, 64], &device);
/// let (a, b) = (packed.forward(x.clone()), layer.valid().forward(x));
/// let diff = (a - b).abs().max().into_scalar::<f32>();
/// assert!(diff < 1e-5);
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct TernaryLinear {
    /// Packed codes `[d_output, words_per_row(d_input)]`, dtype u32.
    pub codes: Param<Tensor<2, Int>>,
    /// The weight multipliers `s` (`w = code_value / s`): `[1]`, `[d_output]` or
    /// `[d_output * d_input / group]`.
    pub scales: Param<Tensor<1>>,
    /// The optional bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The input RMSNorm, when the trained layer had one.
    pub norm: Option<RmsNorm>,
    /// Input features.
    pub d_input: usize,
    /// Scale layout: 0 per tensor, `usize::MAX` per output, otherwise the group size.
    pub scale_layout: usize,
    /// Whether activations are quantized to int8 per token (BitLinear) or stay in full
    /// precision (a reparameterized `Linear`).
    pub int8_activations: bool,
}

impl TernaryLinear {
    /// Builds the layer from packed weights (`[d_output, d_input]`, rows are outputs).
    pub fn from_packed(
        packed: &PackedTernary,
        bias: Option<Tensor<1>>,
        norm: Option<RmsNorm>,
        int8_activations: bool,
        device: &Device,
    ) -> Result<Self> {
        let (rows, cols) = (packed.rows(), packed.cols());
        if let Some(b) = &bias
            && b.dims() != [rows]
        {
            return Err(QatError::Shape {
                what: "TernaryLinear bias",
                expected: format!("[{rows}]"),
                got: b.dims().to_vec(),
            });
        }
        let codes = Tensor::<2, Int>::from_data(
            TensorData::new(packed.words().to_vec(), [rows, words_per_row(cols)]),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
        );
        let values = packed.scales().values().to_vec();
        let n_scales = values.len();
        let scales = Tensor::<1>::from_data(TensorData::new(values, [n_scales]), device);
        let scale_layout = match packed.scales() {
            TernaryScales::PerTensor(_) => ScaleKind::PerTensor,
            TernaryScales::PerRow(_) => ScaleKind::PerRow,
            TernaryScales::PerGroup { group, .. } => ScaleKind::PerGroup(*group),
        };
        Ok(Self {
            codes: Param::initialized(ParamId::new(), codes),
            scales: Param::from_tensor(scales),
            bias: bias.map(|b| Param::from_tensor(b.to_device(device))),
            norm,
            d_input: cols,
            scale_layout: scale_layout.encode(),
            int8_activations,
        })
    }

    /// Output features.
    pub fn d_output(&self) -> usize {
        self.codes.shape().dims::<2>()[0]
    }

    /// Bytes of the packed codes and scales (what replaces `4 * d_input * d_output` f32 bytes).
    pub fn packed_bytes(&self) -> usize {
        let [rows, words] = self.codes.shape().dims::<2>();
        rows * words * 4 + self.scales.shape().num_elements() * 4
    }

    /// The forward pass.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// # Panics
    /// If the last axis of `input` is not `d_input`; [`TernaryLinear::try_forward`] returns an
    /// error instead.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self.check_input_shape(&input) {
            Ok(()) => self.forward_unchecked(input),
            Err(e) => panic!("{e}"),
        }
    }

    /// The forward pass with its input checked for shape and NaN/infinite values.
    pub fn try_forward<const D: usize>(&self, input: Tensor<D>) -> Result<Tensor<D>> {
        self.check_input_shape(&input)?;
        check_finite(&input, "TernaryLinear input")?;
        Ok(self.forward_unchecked(input))
    }

    fn check_input_shape<const D: usize>(&self, input: &Tensor<D>) -> Result<()> {
        check_last_dim(input, self.d_input, "TernaryLinear input")
    }

    fn forward_unchecked<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let x = match &self.norm {
            Some(norm) => norm.forward(input),
            None => input,
        };
        let mut out_dims = x.dims();
        out_dims[D - 1] = self.d_output();
        let x2: Tensor<2> = x.reshape([-1, self.d_input as i64]);
        let kind = ScaleKind::decode(self.scale_layout);
        let y = if self.int8_activations {
            ternary_matmul(x2, self.codes.val(), self.scales.val(), self.d_input, kind)
        } else {
            self.float_activation_matmul(x2, kind)
        };
        let y = match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        };
        y.reshape(out_dims)
    }

    /// `x · (codes / s)ᵀ` with full-precision activations (reparameterized `Linear` layers).
    fn float_activation_matmul(&self, x: Tensor<2>, kind: ScaleKind) -> Tensor<2> {
        let rows = self.d_output();
        let values = unpack_codes(self.codes.val(), self.d_input);
        let scales = self.scales.val();
        let weights = match kind {
            ScaleKind::PerTensor => values / scales.reshape([1, 1]),
            ScaleKind::PerRow => values / scales.reshape([rows, 1]),
            ScaleKind::PerGroup(group) => {
                let groups = self.d_input / group;
                let w: Tensor<3> = values.reshape([rows, groups, group]);
                (w / scales.reshape([rows, groups, 1])).reshape([rows, self.d_input])
            }
        };
        x.matmul(weights.transpose())
    }
}

impl ModuleDisplay for TernaryLinear {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_input", &self.d_input)
            .add("d_output", &self.d_output())
            .add("bias", &self.bias.is_some())
            .add("int8_activations", &self.int8_activations)
            .optional()
    }
}
