//! [`Attention`]: causal grouped-query self-attention with rotary positions and SubLN.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::kv_cache::LayerKv;
use super::projection::{NormedInput, Projection};
use super::rope::apply_rope;

/// Causal self-attention of a [`BitNetLm`](super::BitNetLm) block:
/// `o_proj(attn_sub_norm(softmax(q kᵀ / √d + mask) v))` with rotary `q`, `k` and `n_kv_heads`
/// key/value heads shared by `n_heads / n_kv_heads` query heads each.
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries `[d_model, n_heads · head_dim]`.
    pub q_proj: Projection,
    /// Keys `[d_model, n_kv_heads · head_dim]`.
    pub k_proj: Projection,
    /// Values `[d_model, n_kv_heads · head_dim]`.
    pub v_proj: Projection,
    /// Output `[d_model, d_model]`.
    pub o_proj: Projection,
    /// SubLN: the RMSNorm of the attention output before `o_proj`.
    pub sub_norm: RmsNorm,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl Attention {
    /// `x` `[batch, len, d_model]` at positions `offset..offset + len` (the rotary tables
    /// `cos`/`sin` are of those positions). With `cache` (the keys and values of positions
    /// `0..offset`), the new keys and values are appended to it and attended to with it.
    pub(crate) fn forward(
        &self,
        x: NormedInput<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        offset: usize,
        cache: Option<&mut LayerKv>,
    ) -> crate::Result<Tensor<3>> {
        let [b, t, _] = x.dims();
        let (h, kv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let q = apply_rope(heads(self.q_proj.forward_input(&x)?, h), cos, sin);
        let mut k = apply_rope(heads(self.k_proj.forward_input(&x)?, kv), cos, sin);
        let mut v = heads(self.v_proj.forward_input(&x)?, kv);
        if let Some(cache) = cache {
            if let Some((k0, v0)) = cache.take() {
                k = Tensor::cat(vec![k0, k], 2);
                v = Tensor::cat(vec![v0, v], 2);
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let s = k.dims()[2];
        let (k, v) = (repeat_kv(k, h / kv), repeat_kv(v, h / kv));
        let scores = q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt();
        let scores = if t > 1 {
            // Query i (position offset + i) sees keys 0..=offset + i.
            let mask = Tensor::<2, Bool>::tril_mask([t, s], offset as i64, &scores.device());
            scores.mask_fill(
                mask.unsqueeze::<4>().expand([b, h, t, s]),
                f32::NEG_INFINITY,
            )
        } else {
            scores
        };
        let out = softmax(scores, 3).matmul(v);
        let out = out.swap_dims(1, 2).reshape([b, t, h * d]);
        self.o_proj.forward_normed(&self.sub_norm, out)
    }
}

/// `[b, kv, s, d]` → `[b, kv · n, s, d]`, each key/value head repeated for its `n` query heads
/// (query head `j` uses key/value head `j / n`).
fn repeat_kv(x: Tensor<4>, n: usize) -> Tensor<4> {
    if n == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, n, s, d])
        .reshape([b, kv * n, s, d])
}
