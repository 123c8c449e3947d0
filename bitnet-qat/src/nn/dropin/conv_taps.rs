//! A convolution as a product per position and a shift-add over the kernel's taps: how the
//! drop-in convolutions compute W1.58A8 outside training and once packed.
//!
//! With activations quantized per position (BitNet's per-token quantization, a position being a
//! token), every input position has a scale of its own, so the int8 × ternary product cannot
//! run over an im2col patch (positions of different scales). Instead each position's channels
//! are multiplied by every tap of the kernel at once — one product of `channels` inputs and
//! `taps · channels_out` outputs, `Σ c_x c_w / (s_x s_w)`, exactly what the packed kernels
//! compute for a linear layer — and output position `p` adds, tap by tap in a fixed order, the
//! products of the input positions its taps read. The same order in both paths makes the
//! packed model's outputs the QAT model's `valid()` outputs, bit for bit.

use burn::tensor::ops::PadMode;
use burn::tensor::{Slice, Tensor};

use crate::error::{QatError, Result};

/// The shape of a convolution along its spatial axes.
pub(super) struct Geometry {
    /// Kernel size per axis.
    pub(super) kernel: Vec<usize>,
    /// Stride per axis.
    pub(super) stride: Vec<usize>,
    /// Dilation per axis.
    pub(super) dilation: Vec<usize>,
    /// Zeros added before and after each axis.
    pub(super) pads: Vec<(usize, usize)>,
}

impl Geometry {
    /// The number of taps (kernel positions).
    pub(super) fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// The output size of each axis for inputs of `sizes`.
    fn output_sizes(&self, sizes: &[usize], layer: &str) -> Result<Vec<usize>> {
        (0..sizes.len())
            .map(|i| {
                let padded = sizes[i] + self.pads[i].0 + self.pads[i].1;
                let span = self.dilation[i] * (self.kernel[i] - 1) + 1;
                if padded < span {
                    return Err(QatError::Shape {
                        what: format!("{layer} input (spatial axis {i}, padded)"),
                        expected: format!("at least {span} positions (the dilated kernel)"),
                        got: sizes.to_vec(),
                    });
                }
                Ok((padded - span) / self.stride[i] + 1)
            })
            .collect()
    }
}

/// The padding burn-nn's `Same` gives an axis of `size` positions: outputs `ceil(size /
/// stride)`, the missing positions split with the smaller half before (burn-nn's rule, which
/// counts the kernel without its dilation).
pub(super) fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = match out {
        0 => 0,
        _ => ((out - 1) * stride + kernel).saturating_sub(size),
    };
    (total / 2, total - total / 2)
}

/// `conv(x, K) + bias` for `x` `[batch, channels, positions...]` as a product per position and
/// a shift-add (see the [module](self)): `product` maps rows `[n, channels]` (a position's
/// channels each) to `[n, taps · channels_out]`, column `t · channels_out + o` being tap `t`
/// (row-major over the kernel's axes) of output channel `o`.
///
/// # Errors
/// [`QatError::Shape`] for an input shorter than the dilated kernel; the errors of `product`.
pub(super) fn conv_by_taps<const D: usize>(
    x: Tensor<D>,
    geometry: &Geometry,
    channels_out: usize,
    bias: Option<Tensor<1>>,
    layer: &str,
    product: impl FnOnce(Tensor<2>) -> Result<Tensor<2>>,
) -> Result<Tensor<D>> {
    let dims = x.dims();
    let (batch, channels, sizes) = (dims[0], dims[1], &dims[2..]);
    let out_sizes = geometry.output_sizes(sizes, layer)?;
    let taps = geometry.taps();
    // [batch, positions..., channels] as rows of channels.
    let mut to_rows = [0; D];
    for (i, axis) in to_rows.iter_mut().enumerate() {
        *axis = match i {
            0 => 0,
            i if i == D - 1 => 1,
            i => i + 1,
        };
    }
    let rows: Tensor<2> = x.permute(to_rows).reshape([-1, channels as i64]);
    let products = product(rows)?;
    let mut shape = [0; D];
    shape[0] = batch;
    shape[1..D - 1].copy_from_slice(sizes);
    shape[D - 1] = taps * channels_out;
    let mut pads = vec![(0, 0)];
    pads.extend(&geometry.pads);
    pads.push((0, 0));
    let products = products
        .reshape(shape)
        .pad(pads.as_slice(), PadMode::Constant(0.0));
    let mut sum: Option<Tensor<D>> = None;
    for t in 0..taps {
        // The tap's index along each axis (row-major), and the input positions it reads for
        // the outputs: `p · stride + index · dilation` in the padded input.
        let mut rest = t;
        let mut index = vec![0; D - 2];
        for axis in (0..D - 2).rev() {
            index[axis] = rest % geometry.kernel[axis];
            rest /= geometry.kernel[axis];
        }
        let mut ranges = vec![Slice::new(0, None, 1)];
        for axis in 0..D - 2 {
            let start = index[axis] * geometry.dilation[axis];
            let end = start + (out_sizes[axis] - 1) * geometry.stride[axis] + 1;
            ranges.push(Slice::new(
                start as isize,
                Some(end as isize),
                geometry.stride[axis] as isize,
            ));
        }
        let columns = t * channels_out;
        ranges.push(Slice::new(
            columns as isize,
            Some((columns + channels_out) as isize),
            1,
        ));
        let part = products.clone().slice(ranges.as_slice());
        sum = Some(match sum {
            Some(s) => s + part,
            None => part,
        });
    }
    let y = sum.unwrap_or_else(|| unreachable!("a kernel has one tap at least"));
    // [batch, outputs..., channels_out] to [batch, channels_out, outputs...].
    let mut to_channels = [0; D];
    for (i, axis) in to_channels.iter_mut().enumerate() {
        *axis = match i {
            0 => 0,
            1 => D - 1,
            i => i - 1,
        };
    }
    let y = y.permute(to_channels);
    Ok(match bias {
        Some(b) => {
            let mut bias_shape = [1; D];
            bias_shape[1] = channels_out;
            y + b.reshape(bias_shape)
        }
        None => y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution};

    /// With a float product (`x · W` per position), the shift-add is a convolution: burn's,
    /// up to rounding, for strides, dilations and asymmetric padding.
    #[test]
    fn the_shift_add_of_per_position_products_is_a_convolution() {
        let device = Device::flex();
        device.seed(1);
        for (stride, dilation, pads) in [
            ([1, 1], [1, 1], [(1, 1), (1, 1)]),
            ([2, 1], [1, 2], [(0, 2), (1, 0)]),
            ([3, 2], [2, 1], [(0, 0), (0, 0)]),
        ] {
            let (batch, channels, out, kernel) = (2, 3, 4, [3, 2]);
            let x = Tensor::<4>::random([batch, channels, 9, 8], Distribution::Default, &device);
            let w = Tensor::<4>::random([out, channels, 3, 2], Distribution::Default, &device);
            let bias = Tensor::<1>::random([out], Distribution::Default, &device);
            let expected = conv2d(
                x.clone(),
                w.clone(),
                Some(bias.clone()),
                ConvOptions::new_with_padding(stride, pads, dilation, 1),
            );
            let geometry = Geometry {
                kernel: kernel.to_vec(),
                stride: stride.to_vec(),
                dilation: dilation.to_vec(),
                pads: pads.to_vec(),
            };
            // [channels, taps · out]: column t · out + o is w[o, :, t].
            let by_taps: Tensor<2> = w
                .reshape([out, channels, 6])
                .permute([1, 2, 0])
                .reshape([channels, 6 * out]);
            let got = conv_by_taps(x, &geometry, out, Some(bias), "test", |rows| {
                Ok(rows.matmul(by_taps))
            })
            .unwrap();
            assert_eq!(got.dims(), expected.dims());
            let diff = (got - expected).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-4, "{stride:?} {dilation:?} {pads:?}: {diff}");
        }
    }

    #[test]
    fn same_padding_is_burn_nns() {
        // Outputs ceil(size / stride); the odd position after.
        assert_eq!(same_padding(3, 1, 28), (1, 1));
        assert_eq!(same_padding(4, 1, 10), (1, 2));
        assert_eq!(same_padding(3, 2, 9), (1, 1));
        assert_eq!(same_padding(1, 3, 5), (0, 0));
    }

    #[test]
    fn an_input_shorter_than_the_kernel_is_a_shape_error() {
        let device = Device::flex();
        let geometry = Geometry {
            kernel: vec![5],
            stride: vec![1],
            dilation: vec![2],
            pads: vec![(0, 0)],
        };
        let x = Tensor::<3>::ones([1, 2, 8], &device);
        let err = conv_by_taps(x, &geometry, 3, None, "Conv1d", Ok).unwrap_err();
        assert!(
            matches!(&err, QatError::Shape { what, got, .. } if what.starts_with("Conv1d input") && *got == vec![8]),
            "{err}"
        );
    }
}
