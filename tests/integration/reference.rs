//! Independent plain-Rust reference quantizers, written from the published formulas: BitNet
//! (Wang et al. 2023, arXiv:2310.11453), BitNet b1.58 (Ma et al. 2024, arXiv:2402.17764), LSQ
//! (Esser et al. 2020, arXiv:1902.08153) and EWGS (Lee et al. 2021, arXiv:2104.00903). No Burn
//! code is used here.

/// Which statistic of |x| sets the scale.
#[derive(Clone, Copy)]
pub enum Stat {
    Mean,
    Max,
    Median,
}

pub fn stat(values: &[f32], stat: Stat) -> f32 {
    let mut abs: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    match stat {
        Stat::Mean => abs.iter().sum::<f32>() / abs.len() as f32,
        Stat::Max => abs.iter().cloned().fold(0.0, f32::max),
        Stat::Median => {
            abs.sort_by(|a, b| a.partial_cmp(b).unwrap());
            abs[(abs.len() - 1) / 2] // the lower median, as torch.median
        }
    }
}

/// `q = clamp(round_half_even(x * s), qn, qp) / s`, `s = qp / max(stat, eps)`.
pub fn int_quant(values: &[f32], qn: i32, qp: i32, st: Stat, eps: f32) -> Vec<f32> {
    let s = qp as f32 / stat(values, st).max(eps);
    values
        .iter()
        .map(|v| (v * s).round_ties_even().clamp(qn as f32, qp as f32) / s)
        .collect()
}

/// BitNet b1.58: `s = 1 / max(mean|W|, eps)`, `clamp(round(W s), -1, 1) / s`.
pub fn ternary(values: &[f32], eps: f32) -> Vec<f32> {
    int_quant(values, -1, 1, Stat::Mean, eps)
}

/// BitNet activations: `s = 127 / max(max|x|, eps)`, `clamp(round(x s), -128, 127) / s`.
pub fn act8(values: &[f32]) -> Vec<f32> {
    int_quant(values, -128, 127, Stat::Max, 1e-5)
}

/// BitNet b1: `sign(W - mean W) * mean|W|` with sign(0) = -1.
pub fn binary(values: &[f32]) -> Vec<f32> {
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    let beta = stat(values, Stat::Mean).max(1e-5);
    values
        .iter()
        .map(|v| if v - mean > 0.0 { beta } else { -beta })
        .collect()
}

/// Applies `f` to each column of a row-major `[rows, cols]` matrix (per output channel of a
/// Burn `[d_input, d_output]` weight).
pub fn per_column(m: &[f32], rows: usize, cols: usize, f: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for c in 0..cols {
        let col: Vec<f32> = (0..rows).map(|r| m[r * cols + c]).collect();
        for (r, v) in f(&col).into_iter().enumerate() {
            out[r * cols + c] = v;
        }
    }
    out
}

/// Applies `f` to each row of a row-major matrix (per token).
pub fn per_row(m: &[f32], cols: usize, f: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
    m.chunks(cols).flat_map(f).collect()
}

/// RMSNorm of each row (gamma = 1): `x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    per_row(x, cols, |row| {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / cols as f32;
        let r = 1.0 / (ms + eps).sqrt();
        row.iter().map(|v| v * r).collect()
    })
}

/// Backward of the row RMSNorm (gamma = 1): `g_x = r g - r^3 x (g . x) / n`.
pub fn rms_norm_backward(x: &[f32], g: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for (row, grow) in x.chunks(cols).zip(g.chunks(cols)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / cols as f32;
        let r = 1.0 / (ms + eps).sqrt();
        let dot: f32 = row.iter().zip(grow).map(|(a, b)| a * b).sum();
        for (xv, gv) in row.iter().zip(grow) {
            out.push(r * gv - r * r * r * xv * dot / cols as f32);
        }
    }
    out
}

/// Row-major `[m, k] x [k, n]`.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

/// Row-major transpose of `[rows, cols]`.
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}
