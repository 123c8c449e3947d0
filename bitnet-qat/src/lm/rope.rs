//! Rotary position embedding (Su et al., "RoFormer", 2021) in the rotate-half pairing of
//! GPT-NeoX, Hugging Face LLaMA and llama.cpp's `NEOX` mode: feature `i` of the first half of a
//! head pairs with feature `i + d/2`, and
//! `x'_i = x_i cos(p θ_i) - x_{i+d/2} sin(p θ_i)`,
//! `x'_{i+d/2} = x_{i+d/2} cos(p θ_i) + x_i sin(p θ_i)`, `θ_i = base^(-2i/d)`.

use burn::tensor::{Device, Tensor, TensorData};

/// The cosine and sine tables `[len, head_dim]` of positions `offset..offset + len` (each
/// frequency twice, first half and second half), computed in f64 and rounded to f32.
pub(crate) fn rope_tables(
    head_dim: usize,
    theta: f64,
    offset: usize,
    len: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for p in offset..offset + len {
        for j in 0..head_dim {
            let angle = p as f64 * freqs[j % half];
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
    )
}

/// Rotates `x` `[batch, heads, len, head_dim]` by the tables of [`rope_tables`].
pub(crate) fn apply_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    let cos = cos.clone().unsqueeze::<4>().expand([b, h, t, d]);
    let sin = sin.clone().unsqueeze::<4>().expand([b, h, t, d]);
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_matches_the_formula() {
        let device = Device::flex();
        let (d, theta, offset, len) = (8, 500.0f64, 3, 5);
        let values: Vec<f32> = (0..2 * len * d)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, 2, len, d]), &device);
        let (cos, sin) = rope_tables(d, theta, offset, len, &device);
        let y = apply_rope(x, &cos, &sin)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for head in 0..2 {
            for t in 0..len {
                let p = (offset + t) as f64;
                let at = |j: usize| values[(head * len + t) * d + j] as f64;
                for i in 0..d / 2 {
                    let a = p * theta.powf(-2.0 * i as f64 / d as f64);
                    let lo = at(i) * a.cos() - at(i + d / 2) * a.sin();
                    let hi = at(i + d / 2) * a.cos() + at(i) * a.sin();
                    let got = |j: usize| y[(head * len + t) * d + j] as f64;
                    assert!((got(i) - lo).abs() < 1e-5, "head {head} t {t} i {i}");
                    assert!(
                        (got(i + d / 2) - hi).abs() < 1e-5,
                        "head {head} t {t} i {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn position_zero_is_the_identity_and_norms_are_kept() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..16).map(|i| i as f32 - 7.5).collect(), [1, 1, 2, 8]),
            &device,
        );
        let (cos, sin) = rope_tables(8, 10000.0, 0, 2, &device);
        let y = apply_rope(x.clone(), &cos, &sin);
        let first = |t: Tensor<4>| t.narrow(2, 0, 1).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(first(y.clone()), first(x.clone()));
        let norm = |t: Tensor<4>| t.narrow(2, 1, 1).square().sum().into_scalar::<f32>();
        assert!((norm(y) - norm(x)).abs() < 1e-3);
    }
}
