//! Fused fake quantization: the statistic, the scale, rounding, clamping and dequantization in
//! one backend call (two passes over the data) instead of a dozen tensor operations, with the
//! STE's gradient as a custom backward pass (standard: the identity; clipped: a fused mask;
//! adaptive: scaled by a fused rounding residual; soft: the soft staircase forward and its fused
//! slope backward), and LSQ's quantization from its learned step with LSQ's gradients.
//!
//! Used by [`crate::ste`] and [`crate::nn::Quantizer`] for every STE on Flex and CubeCL (GPU)
//! devices when the
//! quantizer is ternary, binary or integer, with an absmean or absmax scale per tensor, per slice
//! along one axis (per token; per channel, whose axis is moved last for the kernel) or per group
//! (rows of a `[-1, size]` view). Everything else takes the portable tensor-operation path, and
//! the tests check that the two agree.
// Without a backend feature the generated dispatch never reads its arguments.
#![cfg_attr(
    not(any(feature = "flex", feature = "cube")),
    allow(unused_variables, dead_code)
)]

mod norm_slice;
mod slice;

use burn::backend::{Backend, backend_extension, tensor::FloatTensor};

#[cfg_attr(not(feature = "flex"), allow(unused_imports))]
pub(crate) use slice::{FusedOutput, fake_quant_slice, lsq_slice, ste_grad_slice};

/// The statistic and layout of a fused fake quantization (the kernels' description).
pub(crate) use bitnet_kernels::fake_quant::FakeQuant as FusedSpec;
/// RMSNorm followed by a fused fake quantization per group (the kernels' description).
pub(crate) use bitnet_kernels::fake_quant::NormQuant as NormQuantSpec;
#[cfg_attr(not(feature = "flex"), allow(unused_imports))]
pub(crate) use norm_slice::{NormQuantOutput, norm_quant_slice};

/// [`FusedQuantBackend::fused_fake_quant`] of `x` with `spec` and `ste` on backend `B`.
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) fn fake_quant<B: FusedQuantBackend>(
    spec: &FusedSpec,
    x: FloatTensor<B>,
    ste: FusedSte,
) -> FloatTensor<B> {
    let (ste, param) = ste.encode();
    B::fused_fake_quant(
        x,
        spec.qn,
        spec.qp,
        spec.eps,
        spec.abs_mean,
        spec.per_row,
        spec.centered,
        ste,
        param,
    )
}

/// [`FusedQuantBackend::fused_ste_grad`] of `x` with `spec` on backend `B`.
pub(crate) fn ste_grad<B: FusedQuantBackend>(
    spec: &FusedSpec,
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
    ste: FusedSte,
) -> FloatTensor<B> {
    let (ste, param) = ste.encode();
    B::fused_ste_grad(
        x,
        grad,
        spec.qn,
        spec.qp,
        spec.eps,
        spec.abs_mean,
        spec.per_row,
        spec.centered,
        ste,
        param,
    )
}

/// Fused fake quantization supplied by a backend extension.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube"),
    Autodiff
)]
pub trait FusedQuantBackend: Backend {
    /// `clamp(round(u), qn, qp) / s` for `u = x s`, `s = qp / max(stat, eps)`; with `centered`
    /// (the binary format) `u = (x - mean(x)) s` and the code `sign(u)` (`sign(0) = -1`). The
    /// STE `ste` ([`FusedSte::encode`], with its parameter `param`) sets the gradient `g` under
    /// autodiff: standard, `g`; clipped, `g` where `qn <= u <= qp`, else 0; adaptive (EWGS),
    /// `g + delta |g| e` with `e` the rounding residual; soft, the forward value is the soft
    /// staircase at temperature `param` and the gradient its slope (the backward pass is
    /// [`fused_ste_grad`](FusedQuantBackend::fused_ste_grad)).
    #[fusion(dtype = x, shape = x)]
    #[allow(clippy::too_many_arguments)]
    fn fused_fake_quant(
        x: FloatTensor<Self>,
        qn: i32,
        qp: i32,
        eps: f64,
        abs_mean: bool,
        per_row: bool,
        centered: bool,
        ste: usize,
        param: f64,
    ) -> FloatTensor<Self>;

    /// The STE `ste`'s gradient of [`fused_fake_quant`](FusedQuantBackend::fused_fake_quant)
    /// for the incoming gradient `grad` (same shape), with `u` as there: clipped, `grad` where
    /// `qn <= u <= qp`, else 0; adaptive (EWGS, `param` = delta), `grad + delta |grad| e` with
    /// `e = clamp(u) - code`; soft (`param` = the temperature), `grad` times the staircase's
    /// slope. One pass (per tensor: two) over `x` and `grad`; not differentiable.
    #[fusion(dtype = x, shape = x)]
    #[allow(clippy::too_many_arguments)]
    fn fused_ste_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        qn: i32,
        qp: i32,
        eps: f64,
        abs_mean: bool,
        per_row: bool,
        centered: bool,
        ste: usize,
        param: f64,
    ) -> FloatTensor<Self>;

    /// LSQ's fake quantization `round(clamp(x / step, qn, qp)) * step` with `step` one value
    /// per row of the last axis (`per_row`) or one for the tensor. Under autodiff the gradient
    /// reaches `x` inside the code range, and `step` as LSQ's: `round(v) - v` inside, `qn` /
    /// `qp` outside (`v = x / step`), summed per step and scaled by `grad_scale`.
    #[fusion(dtype = x, shape = x)]
    fn fused_lsq(
        x: FloatTensor<Self>,
        step: FloatTensor<Self>,
        qn: i32,
        qp: i32,
        per_row: bool,
        grad_scale: f64,
    ) -> FloatTensor<Self>;

    /// The terms of LSQ's gradients for the incoming gradient `grad` of
    /// [`fused_lsq`](FusedQuantBackend::fused_lsq), with `v = x / step`: for `x` (`of_step`
    /// false) `grad` where `qn <= v <= qp`, else 0; for the step, `grad` times `round(v) - v`
    /// inside and `qn` / `qp` outside (to be summed per step). Not differentiable.
    #[fusion(dtype = x, shape = x)]
    #[allow(clippy::too_many_arguments)]
    fn fused_lsq_grad(
        x: FloatTensor<Self>,
        step: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        qn: i32,
        qp: i32,
        per_row: bool,
        of_step: bool,
    ) -> FloatTensor<Self>;

    /// RMSNorm then fake quantization, BitLinear's input in one op: for each row of the last
    /// axis (length `d` = `gamma`'s), `n = (x / rms) γ` with `rms = sqrt(Σ x² / d + norm_eps)`,
    /// then [`fused_fake_quant`](FusedQuantBackend::fused_fake_quant) of `n` with one scale per
    /// `group` elements (`group` divides `d`; `d`: per token). Under autodiff the gradient is the
    /// standard STE's (`clipped`: the clipped STE's mask) composed with RMSNorm's Jacobian, for
    /// both `x` and `gamma` (see
    /// [`fused_norm_quant_grad`](FusedQuantBackend::fused_norm_quant_grad)).
    #[fusion(dtype = x, shape = x)]
    #[allow(clippy::too_many_arguments)]
    fn fused_norm_quant(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        norm_eps: f64,
        qn: i32,
        qp: i32,
        eps: f64,
        abs_mean: bool,
        centered: bool,
        group: usize,
        clipped: bool,
    ) -> FloatTensor<Self>;

    /// The gradients of [`fused_norm_quant`](FusedQuantBackend::fused_norm_quant) for the
    /// incoming gradient `grad` (`x`'s shape), with `g_n` the STE's gradient of `n` (`grad`,
    /// masked where `qn <= u <= qp` fails when `clipped`): for `x` (`of_gamma` false)
    /// `γ g_n / rms - x Σ(γ g_n x) / (d rms³)`; for `gamma` the terms `g_n x / rms`, which the
    /// caller sums over the rows. One pass over the row (two with the mask). Not
    /// differentiable.
    #[fusion(dtype = x, shape = x)]
    #[allow(clippy::too_many_arguments)]
    fn fused_norm_quant_grad(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        norm_eps: f64,
        qn: i32,
        qp: i32,
        eps: f64,
        abs_mean: bool,
        centered: bool,
        group: usize,
        clipped: bool,
        of_gamma: bool,
    ) -> FloatTensor<Self>;
}

/// RMSNorm (`gamma` and `norm_eps` of a Burn `RmsNorm`) and then the fake quantization of
/// `config` along the last axis with `ste`, in one fused op when `x` lives on a device that has
/// it and the pair is one it covers: a per-token or per-group scale (the group divides the last
/// axis) with an absmean or absmax statistic, and the standard or clipped STE. `None` otherwise.
pub(crate) fn try_fused_norm_quant<const D: usize>(
    x: &burn::tensor::Tensor<D>,
    gamma: &burn::tensor::Tensor<1>,
    norm_eps: f64,
    config: &crate::quant::QuantConfig,
    ste: FusedSte,
) -> Option<burn::tensor::Tensor<D>> {
    use crate::quant::Granularity;
    let dims = x.dims();
    let d = *dims.last()?;
    if !fused_takes(x) || gamma.dtype() != x.dtype() || gamma.dims() != [d] || d == 0 {
        return None;
    }
    let clipped = match ste {
        FusedSte::Standard => false,
        FusedSte::Clipped => true,
        _ => return None,
    };
    let quant = fused_spec(config, true)?;
    let group = match config.granularity {
        Granularity::PerToken => d,
        Granularity::PerGroup { size } if size > 0 && d.is_multiple_of(size) => size,
        _ => return None,
    };
    let spec = NormQuantSpec {
        quant,
        norm_eps,
        group,
    };
    let rows: burn::tensor::Tensor<2> = x.clone().reshape([-1, d as i64]);
    Some(fused_norm_quant_call(rows, gamma.clone(), spec, clipped)?.reshape(dims))
}

/// The [`NormQuantSpec`] of the backend ops' arguments.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_spec(
    norm_eps: f64,
    qn: i32,
    qp: i32,
    eps: f64,
    abs_mean: bool,
    centered: bool,
    group: usize,
) -> NormQuantSpec {
    NormQuantSpec {
        quant: FusedSpec::new(qn, qp, eps, abs_mean, true, centered),
        norm_eps,
        group,
    }
}

/// [`FusedQuantBackend::fused_norm_quant`] of `x` with `spec` on backend `B`.
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) fn norm_quant<B: FusedQuantBackend>(
    spec: &NormQuantSpec,
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    clipped: bool,
) -> FloatTensor<B> {
    let q = &spec.quant;
    B::fused_norm_quant(
        x,
        gamma,
        spec.norm_eps,
        q.qn,
        q.qp,
        q.eps,
        q.abs_mean,
        q.centered,
        spec.group,
        clipped,
    )
}

/// [`FusedQuantBackend::fused_norm_quant_grad`] on backend `B`.
pub(crate) fn norm_quant_grad<B: FusedQuantBackend>(
    spec: &NormQuantSpec,
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    clipped: bool,
    of_gamma: bool,
) -> FloatTensor<B> {
    let q = &spec.quant;
    B::fused_norm_quant_grad(
        x,
        gamma,
        grad,
        spec.norm_eps,
        q.qn,
        q.qp,
        q.eps,
        q.abs_mean,
        q.centered,
        spec.group,
        clipped,
        of_gamma,
    )
}

/// The fused RMSNorm + fake quantization op of the device's backend on the rows `x`.
fn fused_norm_quant_call(
    x: burn::tensor::Tensor<2>,
    gamma: burn::tensor::Tensor<1>,
    spec: NormQuantSpec,
    clipped: bool,
) -> Option<burn::tensor::Tensor<2>> {
    #[cfg(any(feature = "flex", feature = "cube"))]
    {
        use burn::backend::Dispatch;
        Some(burn::tensor::Tensor::from_dispatch(norm_quant::<Dispatch>(
            &spec,
            x.into_dispatch(),
            gamma.into_dispatch(),
            clipped,
        )))
    }
    #[cfg(not(any(feature = "flex", feature = "cube")))]
    {
        let _ = (x, gamma, spec, clipped);
        None
    }
}

/// LSQ through the fused op when `x` lives on a device that has it: `step` holds one value per
/// scale of `config`'s layout along `axis` (the learned step of a
/// [`Quantizer`](crate::nn::Quantizer)); `None` otherwise.
pub(crate) fn try_fused_lsq<const D: usize>(
    x: &burn::tensor::Tensor<D>,
    step: &burn::tensor::Tensor<1>,
    config: &crate::quant::QuantConfig,
    axis: usize,
    grad_scale: f64,
) -> Option<burn::tensor::Tensor<D>> {
    use crate::quant::Granularity;
    if !fused_takes(x) || step.dtype() != x.dtype() {
        return None;
    }
    let per_row = config.granularity != Granularity::PerTensor;
    let (qn, qp) = config.code_range();
    let (rows, restore) = as_rows(x, config.granularity, axis);
    Some(restore(fused_lsq_call(
        rows,
        step.clone(),
        qn,
        qp,
        per_row,
        grad_scale,
    )?))
}

/// The fused LSQ op of the device's backend.
fn fused_lsq_call(
    x: burn::tensor::Tensor<2>,
    step: burn::tensor::Tensor<1>,
    qn: i32,
    qp: i32,
    per_row: bool,
    grad_scale: f64,
) -> Option<burn::tensor::Tensor<2>> {
    #[cfg(any(feature = "flex", feature = "cube"))]
    {
        use burn::backend::Dispatch;
        Some(burn::tensor::Tensor::from_dispatch(
            <Dispatch as FusedQuantBackend>::fused_lsq(
                x.into_dispatch(),
                step.into_dispatch(),
                qn,
                qp,
                per_row,
                grad_scale,
            ),
        ))
    }
    #[cfg(not(any(feature = "flex", feature = "cube")))]
    {
        let _ = (x, step, qn, qp, per_row, grad_scale);
        None
    }
}

/// The STEs the fused op has a backward pass for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FusedSte {
    /// The identity.
    Standard,
    /// The identity inside the code range, 0 outside.
    Clipped,
    /// EWGS with its `delta`.
    Adaptive(f64),
    /// The soft staircase at its temperature.
    Soft(f64),
}

impl FusedSte {
    /// What the forward pass writes: the soft staircase for the soft STE, else the code.
    #[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
    pub(crate) fn forward_output(self) -> FusedOutput {
        match self {
            Self::Soft(temperature) => FusedOutput::SoftValue(temperature as f32),
            _ => FusedOutput::Quantized,
        }
    }

    /// What the backward pass computes per element before [`FusedSte::grad`] combines it with
    /// the incoming gradient: the clip mask, the rounding residual or the soft slope (`None`:
    /// the standard STE passes the gradient through).
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    pub(crate) fn backward_output(self) -> Option<FusedOutput> {
        match self {
            Self::Standard => None,
            Self::Clipped => Some(FusedOutput::ClipMask),
            Self::Adaptive(_) => Some(FusedOutput::Residual),
            Self::Soft(temperature) => Some(FusedOutput::SoftSlope(temperature as f32)),
        }
    }

    /// The input gradient from the incoming gradient `g` and the factor `a` of
    /// [`FusedSte::backward_output`]: EWGS `g + (|g| a) delta`, otherwise `g a` (as the GPU
    /// kernels compute it).
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    pub(crate) fn grad(self, g: f32, a: f32) -> f32 {
        match self {
            Self::Adaptive(delta) => g + g.abs() * a * delta as f32,
            _ => g * a,
        }
    }

    /// The fused STE of `ste`, if there is one.
    pub(crate) fn of(ste: &crate::ste::Ste) -> Option<Self> {
        use crate::ste::Ste;
        match *ste {
            Ste::Standard => Some(Self::Standard),
            Ste::Clipped => Some(Self::Clipped),
            // delta = 0 is the standard STE: no residual pass.
            Ste::Adaptive { delta: 0.0 } => Some(Self::Standard),
            Ste::Adaptive { delta } => Some(Self::Adaptive(delta)),
            Ste::Soft { temperature } => Some(Self::Soft(temperature)),
            Ste::LearnedStepSize => None,
        }
    }

    /// `(ste, param)` as the backend op takes them (`param`: EWGS's delta, the temperature).
    pub(crate) fn encode(self) -> (usize, f64) {
        match self {
            Self::Standard => (0, 0.0),
            Self::Clipped => (1, 0.0),
            Self::Adaptive(delta) => (2, delta),
            Self::Soft(temperature) => (3, temperature),
        }
    }

    /// The inverse of [`FusedSte::encode`] (unknown codes are the standard STE).
    #[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
    pub(crate) fn decode(ste: usize, delta: f64) -> Self {
        match ste {
            1 => Self::Clipped,
            2 => Self::Adaptive(delta),
            3 => Self::Soft(delta),
            _ => Self::Standard,
        }
    }
}

/// Whether fake quantization on `device` runs the fused kernels (Flex with the `flex` feature,
/// CubeCL devices — wgpu, Vulkan, Metal, CUDA, … — with a GPU feature) rather than the portable
/// tensor-operation path. Both compute the same values; the fused one costs two passes over the
/// data instead of a dozen operations. Every STE with a ternary, binary or integer
/// format, an absmean or absmax statistic, and one scale per tensor, token, channel or group
/// takes it (BitLinear's defaults for weights and activations), for f32 tensors (and f16 / bf16
/// on CubeCL devices).
///
/// # Example
/// ```
/// use bitnet_qat::quant::has_fused_kernels;
/// use burn::tensor::Device;
///
/// assert!(has_fused_kernels(&Device::flex().autodiff()));
/// ```
pub fn has_fused_kernels(device: &burn::tensor::Device) -> bool {
    #[cfg(any(feature = "flex", feature = "cube"))]
    {
        use burn::backend::DispatchDevice;
        #[allow(unreachable_patterns)]
        match device.clone().inner().as_dispatch() {
            #[cfg(feature = "flex")]
            DispatchDevice::Flex(_) => true,
            #[cfg(feature = "cube")]
            DispatchDevice::Cube(_) => true,
            _ => false,
        }
    }
    #[cfg(not(any(feature = "flex", feature = "cube")))]
    {
        let _ = device;
        false
    }
}

/// Whether the fused kernels take tensors of `dtype` on `device`: the types the ternary kernels
/// read as they are ([`bitnet_kernels::burn_ext::kernel_dtype`]): f32 everywhere, f16 and bf16
/// on CubeCL devices (the kernels compute in f32 and round the result once).
fn fused_dtype(device: &burn::tensor::Device, dtype: burn::tensor::DType) -> bool {
    bitnet_kernels::burn_ext::kernel_dtype(device, dtype) == dtype
}

/// Runs the fused op if `x` lives on a device that has it and the quantizer is one it covers
/// (`axis` is the reduction axis); `None` otherwise.
pub(crate) fn try_fused<const D: usize>(
    x: &burn::tensor::Tensor<D>,
    config: &crate::quant::QuantConfig,
    axis: usize,
    ste: FusedSte,
) -> Option<burn::tensor::Tensor<D>> {
    use crate::quant::Granularity;
    if !fused_takes(x) {
        return None;
    }
    let spec = fused_spec(config, config.granularity != Granularity::PerTensor)?;
    let (rows, restore) = as_rows(x, config.granularity, axis);
    Some(restore(fused_call(rows, spec, ste)?))
}

/// The kernels' description of `config` (`per_row`: one scale per row, else per tensor), if its
/// statistic is one they compute (absmean or absmax).
fn fused_spec(config: &crate::quant::QuantConfig, per_row: bool) -> Option<FusedSpec> {
    use crate::quant::{QuantFormat, ScaleStat};
    let abs_mean = match config.stat {
        ScaleStat::AbsMean => true,
        ScaleStat::AbsMax => false,
        ScaleStat::AbsMedian => return None,
    };
    let (qn, qp) = config.code_range();
    let centered = config.format == QuantFormat::Binary;
    Some(FusedSpec::new(
        qn, qp, config.eps, abs_mean, per_row, centered,
    ))
}

/// Whether `x`'s device has the fused kernels for `x`'s float type.
fn fused_takes<const D: usize>(x: &burn::tensor::Tensor<D>) -> bool {
    let device = x.device();
    has_fused_kernels(&device) && fused_dtype(&device, x.dtype())
}

/// `x` as the rows the kernels quantize (one scale per row, or one for the whole tensor) and
/// the inverse: the scale axis moved last (per-channel weights `[d_input, d_output]` reduce
/// along axis 0), and groups as rows of a `[-1, size]` view. The kernels read a contiguous copy
/// of a moved view; the result comes back as a strided view, which Burn's ops take as is.
fn as_rows<const D: usize>(
    x: &burn::tensor::Tensor<D>,
    granularity: crate::quant::Granularity,
    axis: usize,
) -> (
    burn::tensor::Tensor<2>,
    impl FnOnce(burn::tensor::Tensor<2>) -> burn::tensor::Tensor<D>,
) {
    use crate::quant::Granularity;
    let moved = granularity != Granularity::PerTensor && axis != D - 1;
    let x = if moved {
        x.clone().swap_dims(axis, D - 1)
    } else {
        x.clone()
    };
    let dims = x.dims();
    let row_len = match granularity {
        Granularity::PerGroup { size } => size,
        _ => dims[D - 1],
    };
    let rows = dims
        .iter()
        .product::<usize>()
        .checked_div(row_len)
        .unwrap_or(0);
    let restore = move |y: burn::tensor::Tensor<2>| {
        let y: burn::tensor::Tensor<D> = y.reshape(dims);
        if moved { y.swap_dims(axis, D - 1) } else { y }
    };
    (x.reshape([rows, row_len]), restore)
}

/// The fused op of the device's backend on `x` (rows of its last axis when `spec.per_row`).
fn fused_call(
    x: burn::tensor::Tensor<2>,
    spec: FusedSpec,
    ste: FusedSte,
) -> Option<burn::tensor::Tensor<2>> {
    #[cfg(any(feature = "flex", feature = "cube"))]
    {
        use burn::backend::Dispatch;
        Some(burn::tensor::Tensor::from_dispatch(fake_quant::<Dispatch>(
            &spec,
            x.into_dispatch(),
            ste,
        )))
    }
    #[cfg(not(any(feature = "flex", feature = "cube")))]
    {
        // has_fused_kernels is false without a backend feature.
        let _ = (x, spec, ste);
        None
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::quant::{Granularity, QuantConfig, ScaleStat, quant_grid};
    use burn::tensor::{Device, Distribution, Tensor, Tolerance};

    #[test]
    fn fused_and_portable_paths_agree() {
        let device = Device::flex();
        device.seed(11);
        let x = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 1.5), &device);
        for config in [
            QuantConfig::ternary(),
            QuantConfig::activation_int8(),
            QuantConfig::int(4)
                .with_stat(ScaleStat::AbsMean)
                .with_granularity(Granularity::PerToken),
            QuantConfig::int(2),
        ] {
            let fused =
                try_fused(&x, &config, 1, FusedSte::Standard).expect("Flex runs the fused op");
            let portable = quant_grid(x.clone(), &config, 1).dequantize();
            // The scale is a mean over 11,100 values: the fused op and Flex sum them in different
            // orders, a few ulps apart.
            fused
                .into_data()
                .assert_approx_eq::<f32>(&portable.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        }
        // Per channel along axis 0 (Burn weights `[d_input, d_output]`): one scale per column.
        for config in [
            QuantConfig::ternary().with_granularity(Granularity::PerChannel),
            QuantConfig::int(4).with_granularity(Granularity::PerChannel),
        ] {
            let fused =
                try_fused(&x, &config, 0, FusedSte::Standard).expect("per channel along axis 0");
            assert_eq!(fused.dims(), [37, 300]);
            let portable = quant_grid(x.clone(), &config, 0).dequantize();
            fused
                .into_data()
                .assert_approx_eq::<f32>(&portable.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        }
        // Groups along the last axis and along axis 0 (a weight `[48, 20]`, groups of 8 inputs).
        let w = Tensor::<2>::random([48, 20], Distribution::Normal(0.0, 0.1), &device);
        for (x, config, axis) in [
            (
                &x,
                QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 100 }),
                1,
            ),
            (
                &x,
                QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 4 }),
                1,
            ),
            (
                &w,
                QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 8 }),
                0,
            ),
        ] {
            let fused = try_fused(x, &config, axis, FusedSte::Standard).expect("groups");
            let portable = quant_grid(x.clone(), &config, axis).dequantize();
            fused
                .into_data()
                .assert_approx_eq::<f32>(&portable.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        }
        // Binary (centered on the mean): per tensor, per token, per channel along axis 0.
        for (config, axis) in [
            (QuantConfig::binary(), 1),
            (
                QuantConfig::binary().with_granularity(Granularity::PerToken),
                1,
            ),
            (
                QuantConfig::binary().with_granularity(Granularity::PerChannel),
                0,
            ),
        ] {
            let fused = try_fused(&x, &config, axis, FusedSte::Standard).expect("binary");
            let portable = quant_grid(x.clone(), &config, axis).dequantize();
            fused
                .into_data()
                .assert_approx_eq::<f32>(&portable.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        }
        // Not covered: the median.
        let median = QuantConfig::ternary().with_stat(ScaleStat::AbsMedian);
        assert!(try_fused(&x, &median, 1, FusedSte::Standard).is_none());
        // NdArray takes the portable path.
        #[allow(deprecated)]
        let nd = Tensor::<2>::zeros([2, 2], &Device::ndarray());
        assert!(try_fused(&nd, &QuantConfig::ternary(), 1, FusedSte::Standard).is_none());
    }

    /// Asserts `got` equals `want` within `1e-5` relative, except where an activation on a
    /// rounding boundary took the neighbouring code (at most one step `max |want| / qp` apart,
    /// and at most `max_flips` of them).
    #[track_caller]
    fn assert_equal_up_to_code_flips(got: &[f32], want: &[f32], qp: f32, max_flips: usize) {
        let step = want.iter().fold(0f32, |m, v| m.max(v.abs())) / qp;
        let mut flips = 0;
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            let diff = (a - b).abs();
            if diff > 1e-5 * b.abs().max(1e-3) {
                flips += 1;
                assert!(diff <= 1.01 * step, "[{i}]: {a} vs {b} (step {step})");
            }
        }
        assert!(flips <= max_flips, "{flips} code flips");
    }

    #[test]
    fn the_fused_norm_quant_matches_rmsnorm_then_the_quantizer() {
        use burn::nn::RmsNormConfig;
        use burn::tensor::TensorData;
        let flex = Device::flex().autodiff();
        #[allow(deprecated)] // NdArray has no fused kernels: the portable tensor-op path.
        let portable = Device::ndarray().autodiff();
        flex.seed(31);
        // Ragged shapes; per token (3-D input), per group of 256 and of 64, absmax and absmean,
        // the standard and the clipped STE, int8, int4 and binary.
        let cases: [(Vec<usize>, QuantConfig, FusedSte); 5] = [
            (
                vec![3, 5, 300],
                QuantConfig::activation_int8(),
                FusedSte::Standard,
            ),
            (
                vec![37, 512],
                QuantConfig::activation_int8()
                    .with_granularity(Granularity::PerGroup { size: 256 }),
                FusedSte::Standard,
            ),
            (
                vec![7, 130],
                QuantConfig::int(4)
                    .with_stat(ScaleStat::AbsMean)
                    .with_granularity(Granularity::PerToken),
                FusedSte::Clipped,
            ),
            (
                vec![9, 192],
                QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 64 }),
                FusedSte::Clipped,
            ),
            (
                vec![4, 96],
                QuantConfig::binary().with_granularity(Granularity::PerToken),
                FusedSte::Standard,
            ),
        ];
        // Inputs from a generator of this test's own: the device's is shared by the tests
        // running in parallel, and the tolerance below is for these inputs.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xF05E);
        let mut uniform = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        for (shape, config, ste) in cases {
            let d = *shape.last().unwrap();
            let n: usize = shape.iter().product();
            let x = TensorData::new(uniform(n, -2.3, 2.9), [n / d, d]);
            let gamma = TensorData::new(uniform(d, 0.5, 1.5), [d]);
            let c = TensorData::new(uniform(n, -1.7, 1.7), [n / d, d]);
            let run = |device: &Device| {
                let shape3 = |t: TensorData| {
                    Tensor::<2>::from_data(t, device).reshape::<3, _>([n / d, 1, d])
                };
                let x = shape3(x.clone()).require_grad();
                let mut norm = RmsNormConfig::new(d).init(device);
                norm.gamma =
                    burn::module::Param::from_tensor(Tensor::from_data(gamma.clone(), device));
                let q = if has_fused_kernels(device) {
                    try_fused_norm_quant(&x, &norm.gamma.val(), norm.epsilon, &config, ste)
                        .expect("Flex runs the fused op")
                } else {
                    let n = norm.forward(x.clone());
                    let ste = match ste {
                        FusedSte::Clipped => crate::ste::Ste::Clipped,
                        _ => crate::ste::Ste::Standard,
                    };
                    crate::ste::apply_ste(n, &config, &ste, 2)
                };
                let grads = (q.clone() * shape3(c.clone())).sum().backward();
                let values =
                    |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                (
                    values(q.inner()),
                    values(x.grad(&grads).unwrap()),
                    norm.gamma
                        .val()
                        .grad(&grads)
                        .unwrap()
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap(),
                )
            };
            let (fused, reference) = (run(&flex), run(&portable));
            let (_, qp) = config.code_range();
            assert_equal_up_to_code_flips(&fused.0, &reference.0, qp as f32, n / 500);
            let tol = Tolerance::rel_abs(1e-5, 1e-6);
            TensorData::new(fused.1, [n])
                .assert_approx_eq::<f32>(&TensorData::new(reference.1, [n]), tol);
            TensorData::new(fused.2, [d])
                .assert_approx_eq::<f32>(&TensorData::new(reference.2, [d]), tol);
        }
    }

    #[test]
    fn the_fused_gradient_is_the_identity() {
        let device = Device::flex().autodiff();
        let x =
            Tensor::<2>::from_data([[0.3, -1.2, 0.05], [2.0, -0.7, 0.4]], &device).require_grad();
        let c = Tensor::<2>::from_data([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]], &device);
        let q = try_fused(&x, &QuantConfig::ternary(), 1, FusedSte::Standard).unwrap();
        let grads = (q * c.clone()).sum().backward();
        x.grad(&grads)
            .unwrap()
            .into_data()
            .assert_eq(&c.clone().inner().into_data(), true);
        // Through the axis swap of per-channel weights too.
        let per_channel = QuantConfig::ternary().with_granularity(Granularity::PerChannel);
        let q = try_fused(&x, &per_channel, 0, FusedSte::Standard).unwrap();
        let grads = (q * c.clone()).sum().backward();
        x.grad(&grads)
            .unwrap()
            .into_data()
            .assert_eq(&c.inner().into_data(), true);
    }

    #[test]
    fn the_fused_clipped_gradient_is_masked_where_the_grid_leaves_the_range() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let x = Tensor::<2>::random([6, 50], Distribution::Normal(0.0, 1.0), &device);
        let c = Tensor::<2>::random([6, 50], Distribution::Normal(0.0, 1.0), &device);
        for (config, axis) in [
            (QuantConfig::ternary(), 1),
            // Absmean scales: an absmax scale keeps every value inside.
            (
                QuantConfig::int(2)
                    .with_stat(ScaleStat::AbsMean)
                    .with_granularity(Granularity::PerToken),
                1,
            ),
            (
                QuantConfig::int(4)
                    .with_stat(ScaleStat::AbsMean)
                    .with_granularity(Granularity::PerChannel),
                0,
            ),
            (QuantConfig::binary(), 1),
        ] {
            let x = x.clone().require_grad();
            let q = try_fused(&x, &config, axis, FusedSte::Clipped).unwrap();
            let standard = try_fused(&x, &config, axis, FusedSte::Standard).unwrap();
            q.clone().into_data().assert_eq(&standard.into_data(), true);
            let grads = (q * c.clone()).sum().backward();
            let got = x.grad(&grads).unwrap();
            // The portable clipped STE's mask: qn <= x s <= qp.
            let grid = quant_grid(x.clone().inner(), &config, axis);
            let inside = grid
                .grid
                .clone()
                .greater_equal_elem(grid.qn)
                .bool_and(grid.grid.lower_equal_elem(grid.qp))
                .float();
            let expected = c.clone().inner() * inside.clone();
            got.into_data().assert_eq(&expected.into_data(), true);
            // Absmean scales put some values outside the range: the mask does work.
            let inside = inside.sum().into_scalar::<f32>();
            assert!(inside < 300.0, "{config:?}: everything inside");
        }
    }

    #[test]
    fn the_fused_adaptive_gradient_is_ewgs() {
        let device = Device::flex().autodiff();
        device.seed(9);
        let x = Tensor::<2>::random([5, 64], Distribution::Normal(0.0, 1.0), &device);
        let c = Tensor::<2>::random([5, 64], Distribution::Normal(0.0, 1.0), &device);
        let delta = 0.2;
        for (config, axis) in [
            (QuantConfig::ternary(), 1),
            (
                QuantConfig::int(4).with_granularity(Granularity::PerChannel),
                0,
            ),
        ] {
            let x = x.clone().require_grad();
            let q = try_fused(&x, &config, axis, FusedSte::Adaptive(delta)).unwrap();
            let grads = (q * c.clone()).sum().backward();
            let got = x.grad(&grads).unwrap();
            // EWGS: g + delta |g| e, e = clamp(u) - round(clamp(u)) on the portable grid.
            let grid = quant_grid(x.clone().inner(), &config, axis);
            let e = grid.grid.clone().clamp(grid.qn, grid.qp) - grid.codes.clone();
            let g = c.clone().inner();
            let expected = g.clone() + g.abs().mul(e.clone()).mul_scalar(delta);
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
            // The residuals are not all zero: the test sees the scaling.
            assert!(e.abs().sum().into_scalar::<f32>() > 1.0);
        }
    }

    #[test]
    fn the_fused_soft_staircase_and_its_gradient_are_the_portable_ones() {
        use crate::ste::soft_staircase;
        let device = Device::flex().autodiff();
        device.seed(13);
        let x = Tensor::<2>::random([4, 40], Distribution::Normal(0.0, 1.0), &device);
        let c = Tensor::<2>::random([4, 40], Distribution::Normal(0.0, 1.0), &device);
        for (config, axis, t) in [
            (QuantConfig::ternary(), 1, 0.3),
            (
                QuantConfig::int(4).with_granularity(Granularity::PerChannel),
                0,
                0.5,
            ),
            (
                QuantConfig::binary().with_granularity(Granularity::PerToken),
                1,
                0.2,
            ),
        ] {
            let run = |fused: bool| {
                let x = x.clone().require_grad();
                let q = if fused {
                    try_fused(&x, &config, axis, FusedSte::Soft(t)).unwrap()
                } else {
                    let grid = quant_grid(x.clone(), &config, axis);
                    soft_staircase(grid.regrid(x.clone()), config.format, t) / grid.scale
                };
                let grads = (q.clone() * c.clone()).sum().backward();
                (q.inner().into_data(), x.grad(&grads).unwrap().into_data())
            };
            let ((q_fused, g_fused), (q_portable, g_portable)) = (run(true), run(false));
            q_fused.assert_approx_eq::<f32>(&q_portable, Tolerance::rel_abs(1e-5, 1e-6));
            g_fused.assert_approx_eq::<f32>(&g_portable, Tolerance::rel_abs(1e-4, 1e-5));
        }
    }

    #[test]
    fn the_fused_lsq_matches_the_portable_one() {
        use crate::quant::layout::ScaleLayout;
        use crate::ste::{lsq_grad_scale, lsq_quantize};
        let device = Device::flex().autodiff();
        device.seed(21);
        let x = Tensor::<2>::random([12, 16], Distribution::Normal(0.0, 1.0), &device);
        let c = Tensor::<2>::random([12, 16], Distribution::Normal(0.0, 1.0), &device);
        for (config, axis) in [
            (QuantConfig::int(4), 0),
            (
                QuantConfig::int(4).with_granularity(Granularity::PerChannel),
                0,
            ),
            (
                QuantConfig::int(2).with_granularity(Granularity::PerGroup { size: 4 }),
                0,
            ),
            (
                QuantConfig::ternary().with_granularity(Granularity::PerToken),
                1,
            ),
        ] {
            let layout = ScaleLayout::new(config.granularity, axis, [12, 16]);
            let (qn, qp) = config.code_range();
            let g = lsq_grad_scale(layout.elems_per_scale(), qp);
            let step = Tensor::<1>::random(
                [layout.num_scales()],
                Distribution::Uniform(0.1, 0.6),
                &device,
            );
            let run = |fused: bool| {
                let x = x.clone().require_grad();
                let step = step.clone().require_grad();
                let q = if fused {
                    try_fused_lsq(&x, &step, &config, axis, g).unwrap()
                } else {
                    lsq_quantize(x.clone(), layout.broadcast(step.clone()), qn, qp, g)
                };
                let grads = (q.clone() * c.clone()).sum().backward();
                (
                    q.inner().into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    step.grad(&grads).unwrap().into_data(),
                )
            };
            let (fused, portable) = (run(true), run(false));
            let tol = Tolerance::rel_abs(1e-5, 1e-6);
            fused.0.assert_approx_eq::<f32>(&portable.0, tol);
            fused.1.assert_approx_eq::<f32>(&portable.1, tol);
            fused
                .2
                .assert_approx_eq::<f32>(&portable.2, Tolerance::rel_abs(1e-4, 1e-6));
        }
    }
}
