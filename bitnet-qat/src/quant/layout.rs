//! Which elements share a scale: reductions to scales and broadcasts back.

use burn::tensor::Tensor;

use super::config::{Granularity, ScaleStat};

/// How the scales of one tensor are laid out.
///
/// Scales are computed along the *reduction axis* `axis` (the input-feature axis). Per-tensor and
/// per-axis statistics keep the reduced dimensions as size 1, so they broadcast against the
/// tensor; group statistics are expanded to the tensor's full shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScaleLayout<const D: usize> {
    pub granularity: Granularity,
    pub axis: usize,
    pub dims: [usize; D],
}

/// The reductions a scale can be computed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Reduce {
    Mean,
    Max,
    Median,
}

impl From<ScaleStat> for Reduce {
    fn from(stat: ScaleStat) -> Self {
        match stat {
            ScaleStat::AbsMean => Reduce::Mean,
            ScaleStat::AbsMax => Reduce::Max,
            ScaleStat::AbsMedian => Reduce::Median,
        }
    }
}

impl<const D: usize> ScaleLayout<D> {
    pub fn new(granularity: Granularity, axis: usize, dims: [usize; D]) -> Self {
        debug_assert!(axis < D);
        Self {
            granularity,
            axis,
            dims,
        }
    }

    /// Number of distinct scales.
    pub fn num_scales(&self) -> usize {
        let numel: usize = self.dims.iter().product();
        numel / self.elems_per_scale().max(1)
    }

    /// Number of elements that share each scale.
    pub fn elems_per_scale(&self) -> usize {
        match self.granularity {
            Granularity::PerTensor => self.dims.iter().product(),
            Granularity::PerChannel | Granularity::PerToken => self.dims[self.axis],
            Granularity::PerGroup { size } => size,
        }
    }

    /// The statistic of `t` per scale, broadcastable against `t`.
    pub fn reduce(&self, t: Tensor<D>, reduce: Reduce) -> Tensor<D> {
        match self.granularity {
            // Keep the reduced dimensions: the result already broadcasts.
            Granularity::PerChannel | Granularity::PerToken => apply_reduce(t, self.axis, reduce),
            _ => self.broadcast(self.reduce_compact(t, reduce)),
        }
    }

    /// The statistic of `t` per scale, one value per scale (`[num_scales]`) in the order
    /// [`broadcast`](Self::broadcast) reads.
    pub fn reduce_compact(&self, t: Tensor<D>, reduce: Reduce) -> Tensor<1> {
        match self.granularity {
            Granularity::PerTensor => reduce_all(t.flatten(0, D - 1), reduce),
            Granularity::PerChannel | Granularity::PerToken => {
                apply_reduce(t, self.axis, reduce).flatten(0, D - 1)
            }
            Granularity::PerGroup { size } => {
                let rows: Tensor<2> = self.move_axis_last(t).reshape([-1, size as i64]);
                apply_reduce(rows, 1, reduce).flatten(0, 1)
            }
        }
    }

    /// Spreads one value per scale (`[num_scales]`, in row-major order of the scale layout)
    /// to a tensor broadcastable against the quantized tensor.
    pub fn broadcast(&self, scales: Tensor<1>) -> Tensor<D> {
        match self.granularity {
            Granularity::PerTensor => scales.reshape([1; D]),
            Granularity::PerChannel | Granularity::PerToken => {
                let mut shape = self.dims;
                shape[self.axis] = 1;
                scales.reshape(shape)
            }
            Granularity::PerGroup { size } => {
                let rows = self.num_scales();
                let mut moved_dims = self.dims;
                moved_dims.swap(self.axis, D - 1);
                let grid: Tensor<2> = scales.reshape([rows, 1]);
                self.move_axis_back(grid.expand([rows, size]).reshape(moved_dims))
            }
        }
    }

    fn move_axis_last(&self, t: Tensor<D>) -> Tensor<D> {
        if self.axis == D - 1 {
            t
        } else {
            t.swap_dims(self.axis, D - 1)
        }
    }

    fn move_axis_back(&self, t: Tensor<D>) -> Tensor<D> {
        self.move_axis_last(t)
    }
}

/// The longest axis a per-tensor statistic reduces in one kernel launch.
///
/// Mesa's software Vulkan (lavapipe, llvmpipe's `gallivm`) leaves every loop of a shader once
/// the loops of one invocation have run 65,535 iterations together (`LP_MAX_TGSI_LOOP_ITERATIONS`),
/// silently. Burn 0.22.1's autotuned reduction can pick a routine where one invocation loops
/// over the whole axis (four elements an iteration): over one axis of more than 262,140
/// elements it then returns the statistic of a prefix. Blocks of this length keep such a loop
/// at 4,096 iterations or fewer (1,024 at four elements an iteration), on every backend.
pub(crate) const REDUCE_BLOCK: usize = 4096;

/// The statistic of all of `flat`, as one value (`[1]`): sums and maxima in blocks of
/// [`REDUCE_BLOCK`] (then blocks of the block results), so that no reduction runs over a long
/// axis; the median sorts the whole tensor.
fn reduce_all(flat: Tensor<1>, reduce: Reduce) -> Tensor<1> {
    let n = flat.dims()[0];
    match reduce {
        Reduce::Median => flat.median(0),
        Reduce::Max => blocked(flat, |t, dim| t.max_dim(dim)),
        // The mean of the block sums would weigh a short last block like a full one.
        Reduce::Mean => blocked(flat, |t, dim| t.sum_dim(dim)).div_scalar(n.max(1) as f64),
    }
}

/// Folds `flat` to one value with `fold` (an associative reduction along `dim`), never along an
/// axis longer than [`REDUCE_BLOCK`]: full blocks as rows of a `[blocks, REDUCE_BLOCK]` view,
/// the remainder on its own, then the same over the block results.
fn blocked(mut flat: Tensor<1>, fold: impl Fn(Tensor<2>, usize) -> Tensor<2>) -> Tensor<1> {
    loop {
        let n = flat.dims()[0];
        if n <= REDUCE_BLOCK {
            let row: Tensor<2> = flat.reshape([1, n]);
            return fold(row, 1).reshape([1]);
        }
        let (blocks, rest) = (n / REDUCE_BLOCK, n % REDUCE_BLOCK);
        let rows: Tensor<2> = flat
            .clone()
            .narrow(0, 0, blocks * REDUCE_BLOCK)
            .reshape([blocks, REDUCE_BLOCK]);
        let mut parts = vec![fold(rows, 1).reshape([blocks])];
        if rest > 0 {
            let tail: Tensor<2> = flat
                .narrow(0, blocks * REDUCE_BLOCK, rest)
                .reshape([1, rest]);
            parts.push(fold(tail, 1).reshape([1]));
        }
        flat = Tensor::cat(parts, 0);
    }
}

fn apply_reduce<const D: usize>(t: Tensor<D>, dim: usize, reduce: Reduce) -> Tensor<D> {
    match reduce {
        Reduce::Mean => t.mean_dim(dim),
        Reduce::Max => t.max_dim(dim),
        Reduce::Median => t.median(dim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn device() -> Device {
        Device::flex()
    }

    #[test]
    fn group_reduce_runs_along_axis_zero() {
        // [4, 2]: column 0 = 1,2,3,4 ; column 1 = 10,20,30,40; groups of 2 along axis 0.
        let t = Tensor::<2>::from_data(
            [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]],
            &device(),
        );
        let layout = ScaleLayout::new(Granularity::PerGroup { size: 2 }, 0, [4, 2]);
        assert_eq!(layout.num_scales(), 4);
        let m = layout.reduce(t, Reduce::Mean);
        m.into_data().assert_eq(
            &TensorData::from([[1.5, 15.0], [1.5, 15.0], [3.5, 35.0], [3.5, 35.0]]),
            false,
        );
    }

    #[test]
    fn broadcast_matches_reduce_order() {
        let t = Tensor::<2>::from_data([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], &device());
        for granularity in [
            Granularity::PerTensor,
            Granularity::PerToken,
            Granularity::PerGroup { size: 2 },
        ] {
            let layout = ScaleLayout::new(granularity, 1, [2, 4]);
            let full = layout.reduce(t.clone(), Reduce::Max);
            // Collect one value per scale from the reduction and broadcast it back.
            let values: Vec<f32> = match granularity {
                Granularity::PerTensor => vec![8.0],
                Granularity::PerToken => vec![4.0, 8.0],
                _ => vec![2.0, 4.0, 6.0, 8.0],
            };
            assert_eq!(layout.num_scales(), values.len());
            let spread = layout.broadcast(Tensor::from_data(values.as_slice(), &device()));
            let expanded = spread + t.zeros_like();
            expanded
                .into_data()
                .assert_eq(&(full + t.zeros_like()).into_data(), false);
        }
    }

    #[test]
    fn per_tensor_statistics_fold_blocks_and_remainders() {
        // Lengths around one block, and one past REDUCE_BLOCK² with remainders at two levels
        // (4097 blocks and 3 left, then one block of the 4098 results and 2 left).
        for n in [
            1,
            REDUCE_BLOCK - 1,
            REDUCE_BLOCK,
            REDUCE_BLOCK + 1,
            3 * REDUCE_BLOCK + 5,
            REDUCE_BLOCK * REDUCE_BLOCK + REDUCE_BLOCK + 3,
        ] {
            // Ones and zeros: every partial sum is an exact f32 integer, whatever the order.
            let mut data: Vec<f32> = (0..n).map(|i| (i % 8 == 0) as u8 as f32).collect();
            data[n - 1] = 9.0; // the maximum in the last remainder
            let sum: f64 = data.iter().map(|&v| v as f64).sum();
            let t = Tensor::<1>::from_data(TensorData::new(data, [n]), &device());
            let layout = ScaleLayout::new(Granularity::PerTensor, 0, [n]);
            let max: f32 = layout.reduce_compact(t.clone(), Reduce::Max).into_scalar();
            assert_eq!(max, 9.0, "max of {n}");
            let mean: f32 = layout.reduce_compact(t, Reduce::Mean).into_scalar();
            let expected = sum / n as f64;
            assert!(
                (mean as f64 - expected).abs() <= 1e-6 * expected,
                "mean of {n}: {mean}, expected {expected}"
            );
        }
    }
}
