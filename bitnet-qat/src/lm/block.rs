//! [`DecoderBlock`]: one pre-norm transformer block.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

use super::attention::Attention;
use super::ffn::GatedFfn;
use super::kv_cache::LayerKv;
use super::projection::{NormedInput, Projection};

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
    /// The seven projections in the order q, k, v, o, gate, up, down.
    pub(crate) fn projections(&self) -> [&Projection; 7] {
        let (a, f) = (&self.attention, &self.ffn);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &f.gate_proj,
            &f.up_proj,
            &f.down_proj,
        ]
    }

    /// [`DecoderBlock::projections`], mutable.
    pub(crate) fn projections_mut(&mut self) -> [&mut Projection; 7] {
        let (a, f) = (&mut self.attention, &mut self.ffn);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut f.gate_proj,
            &mut f.up_proj,
            &mut f.down_proj,
        ]
    }

    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        offset: usize,
        cache: Option<&mut LayerKv>,
    ) -> crate::Result<Tensor<3>> {
        let [q, k, v, _, gate, up, _] = self.projections();
        let normed = NormedInput::new(&self.attention_norm, x.clone(), &[q, k, v]);
        let h = x + self.attention.forward(normed, cos, sin, offset, cache)?;
        let normed = NormedInput::new(&self.ffn_norm, h.clone(), &[gate, up]);
        Ok(h + self.ffn.forward_input(&normed)?)
    }
}
