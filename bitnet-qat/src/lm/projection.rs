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
    ///
    /// # Panics
    /// If the last axis of `x` is not the projection's input width, or a BitNet layer's
    /// recorded settings do not fit it; [`Projection::try_forward`] returns an error instead.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.try_forward(x) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Projection::forward`] with a typed error for an input of another width or a BitNet
    /// layer whose recorded settings do not fit it (a group size that does not divide its
    /// input, a malformed record).
    ///
    /// # Errors
    /// As [`BitLinear::try_forward`] (without its NaN check of the input).
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> crate::Result<Tensor<D>> {
        match self {
            Projection::Full(l) => {
                let d_input = l.weight.shape().dims::<2>()[0];
                crate::check::check_last_dim(&x, d_input, "Linear projection input")?;
                Ok(l.forward(x))
            }
            Projection::Bit(l) => l.forward_checked(x),
        }
    }

    /// Applies the projection to `norm.forward(x)` (a SubLN norm in front of it). A BitNet
    /// projection without a norm of its own runs the norm and its activation quantizer as one
    /// fused op in training ([`crate::ste::norm_quantize_ste`]).
    ///
    /// # Errors
    /// As [`Projection::try_forward`].
    pub fn forward_normed<const D: usize>(
        &self,
        norm: &RmsNorm,
        x: Tensor<D>,
    ) -> crate::Result<Tensor<D>> {
        match self {
            Projection::Bit(l) if l.norm.is_none() => l.forward_normed(Some(norm), x),
            _ => self.try_forward(norm.forward(x)),
        }
    }

    /// Applies the projection to the output of a pre-norm shared by several projections.
    pub(crate) fn forward_input<const D: usize>(
        &self,
        input: &NormedInput<D>,
    ) -> crate::Result<Tensor<D>> {
        match input {
            NormedInput::Normalized(x) => self.try_forward(x.clone()),
            NormedInput::Deferred(norm, x) => self.forward_normed(norm, x.clone()),
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

/// The input of the projections that share a pre-norm: normalized once, or — training BitNet
/// projections, whose activation quantizers fuse the norm in ([`Projection::forward_normed`]) —
/// the input with the norm, which each projection then applies itself.
pub(crate) enum NormedInput<'a, const D: usize> {
    /// `norm(x)`.
    Normalized(Tensor<D>),
    /// `x` and the norm, not yet applied.
    Deferred(&'a RmsNorm, Tensor<D>),
}

impl<'a, const D: usize> NormedInput<'a, D> {
    /// `norm(x)` for `projections`: deferred when they are all BitNet layers without a norm of
    /// their own that fuse it ([`BitLinear::fuses_norm`]: unpacked, in training), normalized
    /// once otherwise.
    pub(crate) fn new(norm: &'a RmsNorm, x: Tensor<D>, projections: &[&Projection]) -> Self {
        let fused = projections.iter().all(
            |p| matches!(p, Projection::Bit(l) if l.norm.is_none() && l.fuses_norm(Some(norm), &x)),
        );
        if fused {
            Self::Deferred(norm, x)
        } else {
            Self::Normalized(norm.forward(x))
        }
    }

    /// The shape of the input.
    pub(crate) fn dims(&self) -> [usize; D] {
        match self {
            Self::Normalized(x) | Self::Deferred(_, x) => x.dims(),
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
    fn a_shared_pre_norm_is_deferred_only_for_training_bitnet_projections() {
        use burn::nn::LinearConfig;
        let device = Device::flex().autodiff();
        device.seed(43);
        let bit = || {
            Projection::Bit(
                BitLinearConfig::new(64, 16)
                    .with_norm(false)
                    .init(&device)
                    .unwrap(),
            )
        };
        let (q, k) = (bit(), bit());
        let norm = RmsNormConfig::new(64).init(&device);
        let x = Tensor::<3>::random([2, 3, 64], Distribution::Normal(0.0, 1.0), &device);
        let c = Tensor::<3>::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &device);
        let deferred = NormedInput::new(&norm, x.clone(), &[&q, &k]);
        assert!(matches!(deferred, NormedInput::Deferred(..)));
        // The same gradients of γ as normalizing once, through both projections.
        let grad = |input: &NormedInput<3>| {
            let y = q.forward_input(input).unwrap() + k.forward_input(input).unwrap();
            let grads = (y * c.clone()).sum().backward();
            norm.gamma.val().grad(&grads).unwrap().into_data()
        };
        let once = NormedInput::Normalized(norm.forward(x.clone()));
        grad(&deferred).assert_approx_eq::<f32>(&grad(&once), Tolerance::rel_abs(1e-5, 1e-6));
        // A full-precision projection, or no gradient to track: normalized once.
        let full = Projection::Full(LinearConfig::new(64, 16).init(&device));
        let mixed = NormedInput::new(&norm, x.clone(), &[&q, &full]);
        assert!(matches!(mixed, NormedInput::Normalized(_)));
        let (valid_norm, valid_q) = (norm.valid(), q.valid());
        let inference = NormedInput::new(&valid_norm, x.inner(), &[&valid_q]);
        assert!(matches!(inference, NormedInput::Normalized(_)));
    }

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
                projection.forward_normed(&norm, x.clone()).unwrap()
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
