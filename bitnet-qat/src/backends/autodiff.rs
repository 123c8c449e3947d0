//! Autodiff: custom backward passes of [`QatBackend`].

use burn::backend::Backend;
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind, unary},
};
use burn::backend::tensor::FloatTensor;

use crate::ops::QatBackend;

impl<B: Backend + QatBackend, C: CheckpointStrategy> QatBackend for Autodiff<B, C> {
    fn ewgs_ste(
        x: FloatTensor<Self>,
        q: FloatTensor<Self>,
        e: FloatTensor<Self>,
        delta: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Ewgs;

        impl<B: Backend> Backward<B, 1> for Ewgs {
            type State = (FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (e, delta) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    // g + delta * |g| * e  ==  g * (1 + delta * sign(g) * e)
                    let scaled = B::float_mul(B::float_abs(grad.clone()), e);
                    B::float_add(grad, B::float_mul_scalar(scaled, delta.into()))
                });
            }
        }

        let x_node = x.node();
        let q = q.into_primitive();
        match Ewgs.prepare::<C>([x_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((e.into_primitive(), delta), q),
            OpsKind::UnTracked(prep) => prep.finish(q),
        }
    }
}
