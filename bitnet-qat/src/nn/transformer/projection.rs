//! [`Projection`]: a linear map of the transformer, BitNet or full precision.

use burn::module::Module;
use burn::nn::{Linear, RmsNorm};
use burn::tensor::Tensor;

use crate::nn::BitLinear;

/// A bias-free projection of a [`BitNetLm`](super::BitNetLm): a [`BitLinear`] (quantized
/// weights and activations, no inner norm) or, for the full-precision baseline, Burn's
/// `Linear`. Both store the weight `[d_input, d_output]`.
// A few per block: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Projection {
    /// Burn's `Linear` (full precision).
    Full(Linear),
    /// A BitNet layer.
    Bit(BitLinear),
}

impl Projection {
    /// Applies the projection to the last axis of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Projection::Full(l) => l.forward(x),
            Projection::Bit(l) => l.forward(x),
        }
    }

    /// Applies the projection to `norm.forward(x)` (a SubLN norm in front of it). A BitNet
    /// projection without a norm of its own runs the norm and its activation quantizer as one
    /// fused op in training ([`crate::ste::norm_quantize_ste`]).
    pub fn forward_normed<const D: usize>(&self, norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
        match self {
            Projection::Bit(l) if l.norm.is_none() => match l.forward_normed(Some(norm), x) {
                Ok(y) => y,
                Err(e) => panic!("{e}"),
            },
            _ => self.forward(norm.forward(x)),
        }
    }

    /// The BitNet layer, if this projection is one.
    pub fn bit_linear(&self) -> Option<&BitLinear> {
        match self {
            Projection::Bit(l) => Some(l),
            Projection::Full(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::BitLinearConfig;
    use burn::module::Param;
    use burn::nn::RmsNormConfig;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn a_subln_norm_fused_into_the_projection_gives_the_gradients_of_the_two_apart() {
        let device = Device::flex().autodiff();
        device.seed(41);
        let layer = BitLinearConfig::new(320, 48)
            .with_norm(false)
            .init(&device)
            .unwrap();
        let projection = Projection::Bit(layer);
        let mut norm = RmsNormConfig::new(320).init(&device);
        norm.gamma = Param::from_tensor(Tensor::random(
            [320],
            Distribution::Uniform(0.5, 1.5),
            &device,
        ));
        let x = Tensor::<3>::random([2, 7, 320], Distribution::Normal(0.0, 2.0), &device);
        let c = Tensor::<3>::random([2, 7, 48], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let x = x.clone().require_grad();
            let y = if fused {
                projection.forward_normed(&norm, x.clone())
            } else {
                projection.forward(norm.forward(x.clone()))
            };
            let grads = (y * c.clone()).sum().backward();
            let gamma = norm.gamma.val().grad(&grads).unwrap();
            (x.grad(&grads).unwrap().into_data(), gamma.into_data())
        };
        let (fused, apart) = (run(true), run(false));
        let tol = Tolerance::rel_abs(1e-5, 1e-6);
        fused.0.assert_approx_eq::<f32>(&apart.0, tol);
        fused.1.assert_approx_eq::<f32>(&apart.1, tol);
    }
}
