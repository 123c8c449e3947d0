//! RMSNorm fused with the fake quantization on a CPU buffer (what the Flex backend runs): per
//! row, one pass for the sum of squares, one to normalize into a scratch row, and per group one
//! for the statistic and one to write; the backward pass likewise per row, in one pass over the
//! row for the standard STE's input gradient (two with the clipped STE's mask). On Rayon's pool
//! for large buffers (the tasks of [`for_row_tasks`]).
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

use super::NormQuantSpec;
use super::slice::{FusedOutput, LANES, for_row_tasks, group_scale, lane_sum, write_group};

/// What [`norm_quant_slice`] computes per element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NormQuantOutput<'a> {
    /// The fake-quantized normalized row.
    Quantized,
    /// The gradient of the input for the incoming gradient (the STE, then RMSNorm's Jacobian).
    InputGrad(&'a [f32]),
    /// The terms of the gradient of `γ` for the incoming gradient, `g_n x / rms`, to be summed
    /// over the rows.
    GammaTerms(&'a [f32]),
}

/// RMSNorm (Burn's: `n = (x / rms) γ`, `rms = sqrt(Σ x² / d + norm_eps)`) then the fake
/// quantization of `spec` per group, over a contiguous f32 buffer of rows of `gamma.len()`
/// elements; or one of its gradients ([`NormQuantOutput`]). The STE's gradient of `n` is the
/// incoming gradient `g`, masked where `qn <= u <= qp` fails when `clipped`; then
/// `g_x = γ g_n / rms - x Σ(γ g_n x) / (d rms³)` and `g_γ = Σ_rows g_n x / rms`.
pub(crate) fn norm_quant_slice(
    x: &[f32],
    gamma: &[f32],
    spec: &NormQuantSpec,
    clipped: bool,
    output: NormQuantOutput,
) -> Vec<f32> {
    let d = gamma.len().max(1);
    let mut out = vec![0f32; x.len()];
    for_row_tasks(x, &mut out, d, |start, xs, os| {
        let mut scratch = vec![0f32; d];
        for (r, (xr, or)) in xs.chunks(d).zip(os.chunks_mut(d)).enumerate() {
            let at = start + r * d;
            let grad = match output {
                NormQuantOutput::Quantized => None,
                NormQuantOutput::InputGrad(g) | NormQuantOutput::GammaTerms(g) => {
                    Some(&g[at..at + d])
                }
            };
            row(xr, gamma, spec, clipped, output, grad, &mut scratch, or);
        }
    });
    out
}

/// One row of [`norm_quant_slice`] (`clipped`: the clipped STE's mask); `grad`: the row of the incoming gradient (gradients only);
/// `scratch`: a row of working space.
#[allow(clippy::too_many_arguments)]
fn row(
    x: &[f32],
    gamma: &[f32],
    spec: &NormQuantSpec,
    clipped: bool,
    output: NormQuantOutput,
    grad: Option<&[f32]>,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let d = x.len();
    let rms = (lane_sum(x, |v| v * v) / d as f32 + spec.norm_eps as f32).sqrt();
    let normalize = |scratch: &mut [f32]| {
        for ((n, v), g) in scratch.iter_mut().zip(x).zip(gamma) {
            *n = (v / rms) * g;
        }
    };
    // Writes `what` of `quant` for each group of the normalized row into `out`.
    let per_group = |scratch: &[f32], out: &mut [f32], what: FusedOutput| {
        let q = &spec.quant;
        let groups = scratch.chunks(spec.group).zip(out.chunks_mut(spec.group));
        for (ns, os) in groups {
            let (s, center) = group_scale(ns, q);
            write_group(
                ns,
                os,
                s,
                center,
                q.qn as f32,
                q.qp as f32,
                q.centered,
                what,
            );
        }
    };
    let Some(g) = grad else {
        normalize(scratch);
        per_group(scratch, out, FusedOutput::Quantized);
        return;
    };
    // g_n: the STE's gradient of the normalized row, in `out`.
    if clipped {
        normalize(scratch);
        per_group(scratch, out, FusedOutput::ClipMask);
        for (o, g) in out.iter_mut().zip(g) {
            *o *= g;
        }
    } else {
        out.copy_from_slice(g);
    }
    match output {
        NormQuantOutput::GammaTerms(_) => {
            for (o, v) in out.iter_mut().zip(x) {
                *o = *o * v / rms;
            }
        }
        _ => {
            // Σ γ g_n x in `LANES` interleaved partial sums, as `lane_sum` adds.
            let dot: f32 = {
                let mut acc = [0f32; LANES];
                let n = d / LANES * LANES;
                for k in (0..n).step_by(LANES) {
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a += gamma[k + l] * out[k + l] * x[k + l];
                    }
                }
                (n..d).fold(acc.iter().sum(), |t, k| t + gamma[k] * out[k] * x[k])
            };
            let c = dot / (d as f32 * rms * rms * rms);
            for ((o, v), g) in out.iter_mut().zip(x).zip(gamma) {
                *o = g * *o / rms - v * c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::FusedSpec;

    /// `x` of `rows × d` with a spread of magnitudes, and `γ` around 1.
    fn data(rows: usize, d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..rows * d)
            .map(|i| ((i * 7919 % 4001) as f32 - 2000.0) / 997.0)
            .collect();
        let gamma = (0..d).map(|j| 0.5 + (j % 11) as f32 / 10.0).collect();
        let g = (0..rows * d)
            .map(|i| ((i % 13) as f32 - 6.0) / 3.0)
            .collect();
        (x, gamma, g)
    }

    /// The f64 reference of one row: the normalized values, the input gradient and the γ terms
    /// for the incoming gradient `g` (already masked).
    fn reference(x: &[f32], gamma: &[f32], g: &[f32], eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let d = x.len() as f64;
        let rms = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d + eps).sqrt();
        let n = x
            .iter()
            .zip(gamma)
            .map(|(&v, &c)| v as f64 / rms * c as f64)
            .collect();
        let dot: f64 = (0..x.len())
            .map(|k| gamma[k] as f64 * g[k] as f64 * x[k] as f64)
            .sum();
        let gx = (0..x.len())
            .map(|k| gamma[k] as f64 * g[k] as f64 / rms - x[k] as f64 * dot / (d * rms.powi(3)))
            .collect();
        let terms = (0..x.len())
            .map(|k| g[k] as f64 * x[k] as f64 / rms)
            .collect();
        (n, gx, terms)
    }

    #[test]
    fn forward_and_gradients_follow_the_formulas_on_many_rows() {
        // 150 rows of 300 (past PARALLEL: several tasks), groups of 100 and whole rows.
        let (rows, d) = (150usize, 300usize);
        let (x, gamma, g) = data(rows, d);
        for (group, clipped, abs_mean) in [(d, false, false), (100, true, true), (d, true, true)] {
            let spec = NormQuantSpec {
                quant: FusedSpec::new(-8, 7, 1e-5, abs_mean, true, false),
                norm_eps: 1e-5,
                group,
            };
            let q = norm_quant_slice(&x, &gamma, &spec, clipped, NormQuantOutput::Quantized);
            let gx = norm_quant_slice(&x, &gamma, &spec, clipped, NormQuantOutput::InputGrad(&g));
            let gt = norm_quant_slice(&x, &gamma, &spec, clipped, NormQuantOutput::GammaTerms(&g));
            let mut clipped_count = 0;
            for r in 0..rows {
                let span = r * d..(r + 1) * d;
                let (n, _, _) = reference(&x[span.clone()], &gamma, &g[span.clone()], 1e-5);
                // The reference quantizer on the f64-normalized row, group by group.
                let mut masked = g[span.clone()].to_vec();
                for (k, chunk) in n.chunks(group).enumerate() {
                    let stat = if abs_mean {
                        chunk.iter().map(|v| v.abs()).sum::<f64>() / group as f64
                    } else {
                        chunk.iter().fold(0f64, |m, v| m.max(v.abs()))
                    };
                    let s = 7.0 / stat.max(1e-5);
                    for (i, v) in chunk.iter().enumerate() {
                        let j = k * group + i;
                        let u = v * s;
                        let want = u.clamp(-8.0, 7.0).round_ties_even() / s;
                        let got = q[r * d + j] as f64;
                        // One code apart at most, where f32 and f64 round a boundary apart.
                        assert!(
                            (got - want).abs() < 1e-4
                                || ((got - want).abs() * s - 1.0).abs() < 1e-3,
                            "group {group} row {r} [{j}]: {got} vs {want}"
                        );
                        if clipped && !(-8.0..=7.0).contains(&u) {
                            masked[j] = 0.0;
                            clipped_count += 1;
                        }
                    }
                }
                let (_, want_gx, want_terms) = reference(&x[span.clone()], &gamma, &masked, 1e-5);
                for j in 0..d {
                    let (a, b) = (gx[r * d + j] as f64, want_gx[j]);
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "g_x row {r} [{j}]: {a} vs {b}"
                    );
                    let (a, b) = (gt[r * d + j] as f64, want_terms[j]);
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "g_γ row {r} [{j}]: {a} vs {b}"
                    );
                }
            }
            // Absmean scales put values outside the range: the mask is exercised.
            assert_eq!(clipped_count > 0, clipped, "group {group}");
        }
    }
}
