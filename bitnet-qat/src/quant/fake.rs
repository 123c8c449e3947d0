//! Fake quantization: quantize and dequantize in one step, with no gradient.

use burn::tensor::{FloatDType, Tensor};

use super::config::{QuantConfig, QuantFormat};
use super::layout::{Reduce, ScaleLayout};
use crate::error::{QatError, Result};

/// A tensor mapped onto its integer grid.
///
/// `grid = x * scale` (for binary weights `(x - mean x) * scale`), `codes` are the rounded and
/// clamped grid values, and the dequantized tensor is `codes / scale`. Every field is computed
/// from a detached input, so none of them carries a gradient. For an f16 or bf16 input the
/// statistic, scale, grid and codes are computed in f32 (bf16's 8-bit mantissa cannot hold an
/// int8 activation's grid exactly); [`QuantGrid::dequantize`] returns the input's type.
#[derive(Debug, Clone)]
pub struct QuantGrid<const D: usize> {
    /// The input on the grid, before rounding.
    pub grid: Tensor<D>,
    /// Integer codes stored as floats: `Q_n ..= Q_p` (binary: `-1` or `+1`).
    pub codes: Tensor<D>,
    /// The multiplier `s = Q_p / max(stat, eps)`, broadcastable against the input.
    pub scale: Tensor<D>,
    /// The smallest code.
    pub qn: i32,
    /// The largest code.
    pub qp: i32,
    /// The per-scale mean subtracted before binarization (binary format only).
    pub center: Option<Tensor<D>>,
    /// The input's float type.
    pub dtype: FloatDType,
}

impl<const D: usize> QuantGrid<D> {
    /// The dequantized tensor `codes / scale`, in the input's float type.
    pub fn dequantize(&self) -> Tensor<D> {
        self.restore(self.codes.clone() / self.scale.clone())
    }

    /// `t` (computed on this grid) in the input's float type.
    pub fn restore(&self, t: Tensor<D>) -> Tensor<D> {
        t.cast(self.dtype)
    }

    /// Maps a (possibly gradient-tracking) `x` onto this grid with the same, detached, scale
    /// and center: `(x - center) * scale` (in the grid's type, f32 for a half-precision `x`).
    pub fn regrid(&self, x: Tensor<D>) -> Tensor<D> {
        let x = x.cast(self.scale.dtype());
        match &self.center {
            Some(center) => (x - center.clone()) * self.scale.clone(),
            None => x * self.scale.clone(),
        }
    }
}

/// Maps `x` onto the integer grid of `config`, with the scales computed along `axis`.
///
/// The configuration must already be valid for `x`'s shape. This is the building block the
/// STEs, [`fake_quantize`] and model conversion share.
pub(crate) fn quant_grid<const D: usize>(
    x: Tensor<D>,
    config: &QuantConfig,
    axis: usize,
) -> QuantGrid<D> {
    let dtype = FloatDType::from(x.dtype());
    let x = match dtype {
        FloatDType::F16 | FloatDType::BF16 => x.detach().cast(FloatDType::F32),
        _ => x.detach(),
    };
    let layout = ScaleLayout::new(config.granularity, axis, x.dims());
    let (qn, qp) = config.code_range();
    let stat = layout
        .reduce(x.clone().abs(), config.stat.into())
        .clamp_min(config.eps);
    // s = Q_p / max(stat, eps), written as the published code writes it.
    let scale = stat.ones_like().mul_scalar(qp) / stat;
    match config.format {
        QuantFormat::Binary => {
            let center = layout.reduce(x.clone(), Reduce::Mean);
            let grid = (x - center.clone()) * scale.clone();
            // sign with sign(0) = -1 (BitNet eq. 2).
            let codes = grid
                .clone()
                .greater_elem(0.0)
                .float()
                .mul_scalar(2.0)
                .sub_scalar(1.0);
            QuantGrid {
                grid,
                codes,
                scale,
                qn: -1,
                qp: 1,
                center: Some(center),
                dtype,
            }
        }
        QuantFormat::Ternary | QuantFormat::Int { .. } => {
            let grid = x * scale.clone();
            let codes = grid.clone().round().clamp(qn, qp);
            QuantGrid {
                grid,
                codes,
                scale,
                qn,
                qp,
                center: None,
                dtype,
            }
        }
    }
}

/// Checks `config` against a tensor shape and a reduction axis.
pub(crate) fn validate_shape(config: &QuantConfig, dims: &[usize], axis: usize) -> Result<()> {
    if dims.is_empty() || axis >= dims.len() {
        return Err(QatError::Shape {
            what: "quantized tensor".into(),
            expected: format!("a tensor with an axis {axis}"),
            got: dims.to_vec(),
        });
    }
    config.validate_for_dim(dims[axis])
}

/// Fake-quantizes `x` with scales along its **last** axis (activations, or weights stored
/// `[d_output, d_input]`): quantize, then dequantize.
///
/// The result carries no gradient (rounding has none); use [`crate::ste`] to train through it.
///
/// # Example
/// ```
/// use bitnet_qat::quant::{fake_quantize, QuantConfig};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let w = Tensor::<2>::from_data([[0.4, -0.05], [-1.2, 0.25]], &device);
/// // mean|w| = 0.475, codes round(w / 0.475) clamped to [-1, 1].
/// let q = fake_quantize(w, &QuantConfig::ternary()).unwrap();
/// let q: Vec<f32> = q.into_data().try_to_vec::<f32>().unwrap();
/// let expected = [0.475, 0.0, -0.475, 0.475];
/// assert!(q.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6));
/// ```
pub fn fake_quantize<const D: usize>(x: Tensor<D>, config: &QuantConfig) -> Result<Tensor<D>> {
    validate_shape(config, &x.dims(), D - 1)?;
    Ok(quant_grid(x, config, D - 1).dequantize())
}

/// Fake-quantizes a Burn `Linear` weight, stored `[d_input, d_output]`: the scales are computed
/// along axis 0, so [`PerChannel`](super::Granularity::PerChannel) gives one scale per output and
/// [`PerGroup`](super::Granularity::PerGroup) groups consecutive inputs.
///
/// # Example
/// ```
/// use bitnet_qat::quant::{fake_quantize_weight, Granularity, QuantConfig};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let w = Tensor::<2>::from_data([[1.0, 0.25], [-3.0, -0.75]], &device);
/// let per_output = QuantConfig::ternary().with_granularity(Granularity::PerChannel);
/// let q: Vec<f32> = fake_quantize_weight(w, &per_output).unwrap().into_data().try_to_vec::<f32>().unwrap();
/// // Column scales 1/2 and 1/0.5; 0.5 and -1.5 on the grid round half to even.
/// assert_eq!(q, vec![0.0, 0.0, -2.0, -0.5]);
/// ```
pub fn fake_quantize_weight(weight: Tensor<2>, config: &QuantConfig) -> Result<Tensor<2>> {
    validate_shape(config, &weight.dims(), 0)?;
    Ok(quant_grid(weight, config, 0).dequantize())
}

/// Quantizes `x` along `axis` and returns its integer codes and scales.
///
/// This is what a packed inference model stores: `x ≈ codes / scale`.
///
/// # Example
/// ```
/// use bitnet_qat::quant::{quantize, QuantConfig};
/// use burn::tensor::{Device, Tensor};
///
/// let x = Tensor::<2>::from_data([[0.5, -1.0, 0.0]], &Device::flex());
/// let g = quantize(x, &QuantConfig::activation_int8(), 1).unwrap();
/// let codes: Vec<f32> = g.codes.into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(codes, vec![64.0, -127.0, 0.0]); // 63.5 rounds to even
/// ```
pub fn quantize<const D: usize>(
    x: Tensor<D>,
    config: &QuantConfig,
    axis: usize,
) -> Result<QuantGrid<D>> {
    validate_shape(config, &x.dims(), axis)?;
    Ok(quant_grid(x, config, axis))
}
