//! [`DecoderBlock`]: one pre-norm transformer block.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

use super::attention::Attention;
use super::ffn::GatedFfn;
use super::kv_cache::LayerKv;

/// `h = x + attention(attention_norm(x))`, `y = h + ffn(ffn_norm(h))`.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    /// The pre-attention RMSNorm.
    pub attention_norm: RmsNorm,
    /// Self-attention.
    pub attention: Attention,
    /// The pre-FFN RMSNorm.
    pub ffn_norm: RmsNorm,
    /// The feed-forward network.
    pub ffn: GatedFfn,
}

impl DecoderBlock {
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        offset: usize,
        cache: Option<&mut LayerKv>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .attention
                .forward(self.attention_norm.forward(x), cos, sin, offset, cache);
        h.clone() + self.ffn.forward(self.ffn_norm.forward(h))
    }
}
