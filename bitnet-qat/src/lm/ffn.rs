//! [`GatedFfn`]: the gated feed-forward network with SubLN.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, silu};

use super::config::FfnActivation;
use super::projection::{NormedInput, Projection};

/// `down(ffn_sub_norm(act(gate x) * up x))`, BitNet b1.58 2B4T's feed-forward network
/// (`act` = squared ReLU) or LLaMA's (SiLU) with SubLN.
#[derive(Module, Debug)]
pub struct GatedFfn {
    /// Gate `[d_model, d_ff]`.
    pub gate_proj: Projection,
    /// Up `[d_model, d_ff]`.
    pub up_proj: Projection,
    /// Down `[d_ff, d_model]`.
    pub down_proj: Projection,
    /// SubLN: the RMSNorm before `down_proj`.
    pub sub_norm: RmsNorm,
    /// The gate activation (configuration, not recorded).
    #[module(skip)]
    pub activation: FfnActivation,
}

impl GatedFfn {
    /// Applies the network to the last axis of `x`.
    ///
    /// # Panics
    /// As [`Projection::forward`](super::Projection::forward).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self.forward_input(&NormedInput::Normalized(x)) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`GatedFfn::forward`] of the output of the pre-FFN norm.
    pub(crate) fn forward_input(&self, x: &NormedInput<3>) -> crate::Result<Tensor<3>> {
        let gate = self.gate_proj.forward_input(x)?;
        let gate = match self.activation {
            FfnActivation::ReluSquared => relu(gate).square(),
            FfnActivation::Silu => silu(gate),
        };
        let hidden = gate * self.up_proj.forward_input(x)?;
        self.down_proj.forward_normed(&self.sub_norm, hidden)
    }
}
