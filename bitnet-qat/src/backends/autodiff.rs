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

/// The fused fake quantization with the standard STE's identity backward, or the clipped STE's
/// masked one.
mod fused {
    use burn::backend::Backend;
    use burn::backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind, unary},
    };
    use burn::backend::tensor::FloatTensor;

    use crate::fused::{FusedQuantBackend, FusedSpec};

    impl<B: Backend + FusedQuantBackend, C: CheckpointStrategy> FusedQuantBackend for Autodiff<B, C> {
        fn fused_fake_quant(
            x: FloatTensor<Self>,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            per_row: bool,
            clipped: bool,
        ) -> FloatTensor<Self> {
            /// The standard STE (no state) or the clipped one (the input and its spec).
            #[derive(Debug)]
            struct StraightThrough;

            impl<B: Backend + FusedQuantBackend> Backward<B, 1> for StraightThrough {
                type State = Option<(FloatTensor<B>, FusedSpec)>;

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let state = ops.state;
                    unary::<B, _>(ops.parents, ops.node, grads, |grad| match state {
                        None => grad,
                        Some((x, s)) => B::float_mul(
                            grad,
                            B::fused_clip_mask(x, s.qn, s.qp, s.eps, s.abs_mean, s.per_row),
                        ),
                    });
                }
            }

            let node = x.node();
            let x = x.into_primitive();
            let spec = FusedSpec::new(qn, qp, eps, abs_mean, per_row);
            let saved = clipped.then(|| x.clone());
            let out = B::fused_fake_quant(x, qn, qp, eps, abs_mean, per_row, clipped);
            match StraightThrough
                .prepare::<C>([node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(saved.map(|x| (x, spec)), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }

        fn fused_clip_mask(
            x: FloatTensor<Self>,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            per_row: bool,
        ) -> FloatTensor<Self> {
            // A constant: no gradient flows through a mask.
            FloatTensor::<Self>::new(B::fused_clip_mask(
                x.into_primitive(),
                qn,
                qp,
                eps,
                abs_mean,
                per_row,
            ))
        }
    }
}
