//! The fused fake quantization on a CPU buffer (what the Flex backend runs): one pass for the
//! statistics of each scale group, one to write the codes, the clip mask or the rounding
//! residual, on Rayon's pool for large buffers.
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

use bitnet_kernels::activation::round_half_even_small;

use super::{FusedSpec, FusedSte};

/// What the fused op writes per element, for `u` on the integer grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FusedOutput {
    /// The fake-quantized value.
    Quantized,
    /// 1 inside the representable range, 0 outside.
    ClipMask,
    /// `clamp(u) - code`.
    Residual,
    /// The soft STE's staircase at this temperature, dequantized.
    SoftValue(f32),
    /// The soft staircase's derivative with respect to `x`.
    SoftSlope(f32),
}

/// Below this many elements one thread is faster.
const PARALLEL: usize = 1 << 15;
/// Elements per parallel task.
const TASK: usize = 1 << 14;

/// Fake-quantizes (or writes the clip mask of) a contiguous f32 buffer whose rows have `row_len`
/// elements, on Rayon's pool for large buffers. With `grad` (the incoming gradient, `x`'s
/// length, and the STE), each task then turns what it wrote into the STE's gradient
/// ([`FusedSte::grad`]) while it is still in cache.
pub(crate) fn fake_quant_slice(
    x: &[f32],
    row_len: usize,
    spec: FusedSpec,
    output: FusedOutput,
    grad: Option<(&[f32], FusedSte)>,
) -> Vec<f32> {
    use rayon::prelude::*;
    let (qn, qp) = (spec.qn as f32, spec.qp as f32);
    // As the tensor path: s = qp / max(stat, eps).
    let group = |stat: f32, center: f32| (qp / stat.max(spec.eps as f32), center);
    // `start`: the offset of `xs` in `x`.
    let write = |xs: &[f32], os: &mut [f32], start: usize, (s, center): (f32, f32)| {
        write_group(xs, os, s, center, qn, qp, spec.centered, output);
        if let Some((grad, ste)) = grad {
            for (o, g) in os.iter_mut().zip(&grad[start..start + xs.len()]) {
                *o = ste.grad(*g, *o);
            }
        }
    };
    let mut out = vec![0f32; x.len()];
    let parallel = x.len() >= PARALLEL;
    if spec.per_row {
        let row_len = row_len.max(1);
        for_row_tasks(x, &mut out, row_len, |start, xs, os| {
            let rows = xs.chunks(row_len).zip(os.chunks_mut(row_len));
            for (r, (xr, or)) in rows.enumerate() {
                write(xr, or, start + r * row_len, group_scale(xr, &spec));
            }
        });
    } else {
        // Sums in f32, in one order whatever the thread count: per task, then the tasks' in
        // order.
        // `abs`: of `|x|`, else of `x` (two monomorphic calls, so that each inlines).
        let chunked_sum = |abs: bool| -> f32 {
            let task_sum = |c: &[f32]| {
                if abs {
                    lane_sum(c, f32::abs)
                } else {
                    lane_sum(c, |v| v)
                }
            };
            let partials: Vec<f32> = if parallel {
                x.par_chunks(TASK).map(task_sum).collect()
            } else {
                x.chunks(TASK).map(task_sum).collect()
            };
            partials.iter().sum()
        };
        let n = x.len().max(1) as f32;
        let stat = if spec.abs_mean {
            chunked_sum(true) / n
        } else if parallel {
            x.par_chunks(TASK)
                .map(lane_abs_max)
                .reduce(|| 0.0, f32::max)
        } else {
            lane_abs_max(x)
        };
        let center = if spec.centered {
            chunked_sum(false) / n
        } else {
            0.0
        };
        let g = group(stat, center);
        if parallel {
            x.par_chunks(TASK)
                .zip(out.par_chunks_mut(TASK))
                .enumerate()
                .for_each(|(t, (xs, os))| write(xs, os, t * TASK, g));
        } else {
            write(x, &mut out, 0, g);
        }
    }
    out
}

/// Runs `run(start, xs, os)` over tasks of whole rows of `row_len` elements (`xs` the rows of
/// `x` from element `start`, `os` the same span of `out`), on Rayon's pool when `x` is large.
pub(super) fn for_row_tasks(
    x: &[f32],
    out: &mut [f32],
    row_len: usize,
    run: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    let rows_per_task = (TASK / row_len.max(1)).max(1) * row_len.max(1);
    if x.len() >= PARALLEL {
        x.par_chunks(rows_per_task)
            .zip(out.par_chunks_mut(rows_per_task))
            .enumerate()
            .for_each(|(t, (xs, os))| run(t * rows_per_task, xs, os));
    } else {
        run(0, x, out);
    }
}

/// The scale `s = qp / max(stat, eps)` of one group `xs` (`stat` the mean or max of `|x|`) and
/// its center (the mean of `xs` for the centered binary format, else 0).
pub(super) fn group_scale(xs: &[f32], spec: &FusedSpec) -> (f32, f32) {
    let n = xs.len().max(1) as f32;
    let stat = if spec.abs_mean {
        lane_sum(xs, f32::abs) / n
    } else {
        lane_abs_max(xs)
    };
    let center = if spec.centered {
        lane_sum(xs, |v| v) / n
    } else {
        0.0
    };
    (spec.qp as f32 / stat.max(spec.eps as f32), center)
}

/// The gradient of the fused fake quantization under `ste` for the incoming gradient `grad`
/// (same length as `x`): the STE's factor per element ([`FusedSte::backward_output`]) combined
/// with `grad` by [`FusedSte::grad`]; the standard STE passes `grad` through.
pub(crate) fn ste_grad_slice(
    x: &[f32],
    grad: &[f32],
    row_len: usize,
    spec: FusedSpec,
    ste: FusedSte,
) -> Vec<f32> {
    match ste.backward_output() {
        Some(output) => fake_quant_slice(x, row_len, spec, output, Some((grad, ste))),
        None => grad.to_vec(),
    }
}

/// Accumulators of [`lane_sum`] and [`lane_abs_max`]: independent lanes the compiler keeps in
/// one SIMD register, instead of one chain of dependent adds.
pub(super) const LANES: usize = 8;

/// `Σ f(x)` over `xs` in f32, in [`LANES`] interleaved partial sums added in a fixed order.
pub(super) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    rest.iter().fold(acc.iter().sum(), |total, &v| total + f(v))
}

/// `max |x|` over `xs` (0 for none; NaN values are passed over, as `f32::max` does).
fn lane_abs_max(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v.abs());
        }
    }
    rest.iter()
        .fold(acc.iter().fold(0f32, |m, &a| m.max(a)), |m, &v| {
            m.max(v.abs())
        })
}

/// Writes `output` for the elements `xs` of one scale group with scale `s` (and `center`, for
/// the centered binary format): `u = (x - center) s`; the dequantized code
/// (`clamp(round_half_even(u), qn, qp) / s`, binary `±1 / s` with `sign(0) = -1`), the clip
/// mask (`qn <= u <= qp`), the rounding residual (`clamp(u) - code`), or the soft staircase
/// and its slope (see [`soft_value`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn write_group(
    xs: &[f32],
    os: &mut [f32],
    s: f32,
    center: f32,
    qn: f32,
    qp: f32,
    centered: bool,
    output: FusedOutput,
) {
    let sign = |u: f32| if u > 0.0 { 1.0 } else { -1.0 };
    let pairs = os.iter_mut().zip(xs);
    // One loop per case, so that the common one (integer codes) vectorizes.
    match (output, centered) {
        (FusedOutput::Quantized, false) => pairs.for_each(|(o, v)| {
            // Clamping to integer bounds commutes with rounding; below 2^22 in magnitude,
            // adding and subtracting 1.5 * 2^23 rounds half to even exactly and vectorizes
            // (`round_ties_even` is a libm call on baseline x86-64).
            *o = round_half_even_small((v * s).clamp(qn, qp)) / s;
        }),
        (FusedOutput::Quantized, true) => pairs.for_each(|(o, v)| *o = sign((v - center) * s) / s),
        (FusedOutput::ClipMask, _) => pairs.for_each(|(o, v)| {
            let u = (v - center) * s;
            *o = f32::from(u8::from(u >= qn && u <= qp));
        }),
        (FusedOutput::Residual, false) => pairs.for_each(|(o, v)| {
            let c = (v * s).clamp(qn, qp);
            *o = c - round_half_even_small(c);
        }),
        (FusedOutput::Residual, true) => pairs.for_each(|(o, v)| {
            let u = (v - center) * s;
            *o = u.clamp(qn, qp) - sign(u);
        }),
        (FusedOutput::SoftValue(t), _) => pairs.for_each(|(o, v)| {
            *o = soft_value((v - center) * s, qn, qp, t, centered).0 / s;
        }),
        (FusedOutput::SoftSlope(t), _) => pairs.for_each(|(o, v)| {
            *o = soft_value((v - center) * s, qn, qp, t, centered).1;
        }),
    }
}

/// The soft STE's staircase at `u` and its derivative with respect to `x` (`du/dx = s`, the
/// staircase's value is divided by `s`): `qn + Σ_k σ((u - t_k) / T)` over the thresholds
/// `t_k = qn + k + 1/2`, or for binary (`centered`) `2 σ(u / T) - 1`; the slope is
/// `Σ_k σ_k (1 - σ_k) / T` (binary: `2 σ (1 - σ) / T`).
fn soft_value(u: f32, qn: f32, qp: f32, t: f32, centered: bool) -> (f32, f32) {
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    if centered {
        let p = sigmoid(u / t);
        return (2.0 * p - 1.0, 2.0 * p * (1.0 - p) / t);
    }
    let (mut value, mut slope) = (qn, 0.0);
    let mut threshold = qn + 0.5;
    while threshold < qp {
        let p = sigmoid((u - threshold) / t);
        value += p;
        slope += p * (1.0 - p) / t;
        threshold += 1.0;
    }
    (value, slope)
}

/// LSQ on a contiguous f32 buffer with rows of `row_len` elements and `step` one value per row
/// (`per_row`) or one in all, for `v = x / step`: without `grad`, `round(clamp(v, qn, qp)) *
/// step`; with `(grad, of_step)`, `grad` times the inside mask (`of_step` false: the gradient
/// of `x`) or times the step factor (`round(v) - v` inside, `qn` / `qp` outside).
pub(crate) fn lsq_slice(
    x: &[f32],
    step: &[f32],
    row_len: usize,
    per_row: bool,
    qn: f32,
    qp: f32,
    grad: Option<(&[f32], bool)>,
) -> Vec<f32> {
    let row_len = row_len.max(1);
    let mut out = vec![0f32; x.len()];
    for (r, (xr, or)) in x.chunks(row_len).zip(out.chunks_mut(row_len)).enumerate() {
        let st = if per_row { step[r] } else { step[0] };
        let start = r * row_len;
        for (k, (o, v)) in or.iter_mut().zip(xr).enumerate() {
            let v = v / st;
            let c = v.clamp(qn, qp);
            *o = match grad {
                None => round_half_even_small(c) * st,
                Some((g, false)) => g[start + k] * f32::from(u8::from(v >= qn && v <= qp)),
                Some((g, true)) => {
                    let factor = if v < qn {
                        qn
                    } else if v > qp {
                        qp
                    } else {
                        round_half_even_small(v) - v
                    };
                    g[start + k] * factor
                }
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_match_the_plain_ones() {
        for len in [0usize, 1, 7, 8, 9, 300, 1027] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0)
                .collect();
            // Multiples of 1/8: every partial sum is exact, so the order cannot matter.
            let plain: f32 = xs.iter().map(|v| v.abs()).sum();
            assert_eq!(lane_sum(&xs, f32::abs), plain, "{len}");
            assert_eq!(lane_sum(&xs, |v| v), xs.iter().sum::<f32>(), "{len}");
            let max = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(lane_abs_max(&xs), max, "{len}");
        }
        assert_eq!(lane_abs_max(&[1.0, f32::NAN, -3.0]), 3.0);
    }

    #[test]
    fn ste_gradients_on_many_rows_combine_the_factor_with_the_incoming_gradient() {
        // 300 rows of 200: past PARALLEL, so tasks write the factors and combine them.
        let (rows, len) = (300usize, 200usize);
        let x: Vec<f32> = (0..rows * len)
            .map(|i| ((i * 7919 % 4001) as f32 - 2000.0) / 997.0)
            .collect();
        let g: Vec<f32> = (0..rows * len).map(|i| (i % 13) as f32 - 6.0).collect();
        for per_row in [false, true] {
            let spec = FusedSpec::new(-1, 1, 1e-5, true, per_row, false);
            for ste in [
                FusedSte::Clipped,
                FusedSte::Adaptive(0.3),
                FusedSte::Soft(0.5),
            ] {
                let factor = ste.backward_output().unwrap();
                let a = fake_quant_slice(&x, len, spec, factor, None);
                let got = ste_grad_slice(&x, &g, len, spec, ste);
                for i in 0..rows * len {
                    assert_eq!(
                        got[i],
                        ste.grad(g[i], a[i]),
                        "{ste:?} per_row={per_row} [{i}]"
                    );
                }
                assert!(a.iter().any(|&v| v != 0.0) && a.iter().any(|&v| v != 1.0));
            }
            let standard = ste_grad_slice(&x, &g, len, spec, FusedSte::Standard);
            assert_eq!(standard, g);
        }
    }

    #[test]
    fn lsq_on_many_rows_matches_the_elementwise_formulas() {
        let (rows, len, qn, qp) = (300usize, 200usize, -8.0f32, 7.0f32);
        let x: Vec<f32> = (0..rows * len)
            .map(|i| ((i * 7919 % 4001) as f32 - 2000.0) / 97.0)
            .collect();
        let g: Vec<f32> = (0..rows * len).map(|i| (i % 13) as f32 - 6.0).collect();
        let step: Vec<f32> = (0..rows).map(|r| 0.5 + (r % 17) as f32 / 8.0).collect();
        let q = lsq_slice(&x, &step, len, true, qn, qp, None);
        let gx = lsq_slice(&x, &step, len, true, qn, qp, Some((&g, false)));
        let gs = lsq_slice(&x, &step, len, true, qn, qp, Some((&g, true)));
        let mut outside = 0;
        for i in 0..rows * len {
            let st = step[i / len];
            let v = x[i] / st;
            assert_eq!(q[i], round_half_even_small(v.clamp(qn, qp)) * st, "q[{i}]");
            let inside = v >= qn && v <= qp;
            outside += usize::from(!inside);
            assert_eq!(gx[i], if inside { g[i] } else { 0.0 }, "gx[{i}]");
            let factor = if v < qn {
                qn
            } else if v > qp {
                qp
            } else {
                round_half_even_small(v) - v
            };
            assert_eq!(gs[i], g[i] * factor, "gs[{i}]");
        }
        assert!(outside > 0, "some values clip");
    }
}
