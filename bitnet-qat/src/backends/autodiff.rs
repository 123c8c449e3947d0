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

/// The fused fake quantization with the backward pass of the standard, clipped, adaptive or
/// soft STE.
mod fused {
    use burn::backend::Backend;
    use burn::backend::TensorMetadata;
    use burn::backend::autodiff::NodeId;
    use burn::backend::autodiff::checkpoint::{retro_forward::RetroForward, state::BackwardStates};
    use burn::backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind, binary, unary},
    };
    use burn::backend::tensor::FloatTensor;

    use crate::fused::{
        FusedQuantBackend, FusedSpec, FusedSte, NormQuantSpec, fake_quant, norm_quant,
        norm_quant_grad, norm_spec, ste_grad,
    };

    impl<B: Backend + FusedQuantBackend, C: CheckpointStrategy> FusedQuantBackend for Autodiff<B, C> {
        fn fused_fake_quant(
            x: FloatTensor<Self>,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            per_row: bool,
            centered: bool,
            ste: usize,
            param: f64,
        ) -> FloatTensor<Self> {
            /// The standard STE (no state), or the clipped / adaptive / soft one (the input, its
            /// spec and the STE), whose gradient is one fused op.
            #[derive(Debug)]
            struct StraightThrough;

            impl<B: Backend + FusedQuantBackend> Backward<B, 1> for StraightThrough {
                type State = Option<(NodeId, FusedSpec, FusedSte)>;

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    checkpointer: &mut Checkpointer,
                ) {
                    let state = ops
                        .state
                        .map(|(x, spec, ste)| (checkpointer.retrieve_node_output(x), spec, ste));
                    unary::<B, _>(ops.parents, ops.node, grads, |grad| match state {
                        None => grad,
                        Some((x, spec, ste)) => ste_grad::<B>(&spec, x, grad, ste),
                    });
                }
            }

            /// Recomputes the output from the input: under gradient checkpointing the
            /// quantized tensor (what the next matmul keeps) need not be stored.
            #[derive(Debug)]
            struct Recompute<B> {
                x: NodeId,
                spec: FusedSpec,
                ste: FusedSte,
                backend: core::marker::PhantomData<B>,
            }

            impl<B: Backend + FusedQuantBackend> RetroForward for Recompute<B> {
                fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
                    let x = states.get_state::<FloatTensor<B>>(&self.x);
                    states.save(out_node, fake_quant::<B>(&self.spec, x, self.ste));
                }
            }

            let spec = FusedSpec::new(qn, qp, eps, abs_mean, per_row, centered);
            let fused = FusedSte::decode(ste, param);
            let out = fake_quant::<B>(&spec, x.primitive().clone(), fused);
            let recompute = Recompute::<B> {
                x: x.id(),
                spec,
                ste: fused,
                backend: core::marker::PhantomData,
            };
            // Memory-bound: Burn's balanced checkpointing recomputes it (one pass over its
            // input); without checkpointing it behaves as before.
            match StraightThrough
                .prepare::<C>([x.node()])
                .memory_bound()
                .retro_forward(recompute)
                .parents([&x])
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state =
                        (fused != FusedSte::Standard).then(|| (prep.checkpoint(&x), spec, fused));
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }

        fn fused_ste_grad(
            x: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            per_row: bool,
            centered: bool,
            ste: usize,
            param: f64,
        ) -> FloatTensor<Self> {
            // A constant: no second-order gradient flows through an STE's backward pass.
            FloatTensor::<Self>::new(B::fused_ste_grad(
                x.into_primitive(),
                grad.into_primitive(),
                qn,
                qp,
                eps,
                abs_mean,
                per_row,
                centered,
                ste,
                param,
            ))
        }

        fn fused_lsq(
            x: FloatTensor<Self>,
            step: FloatTensor<Self>,
            qn: i32,
            qp: i32,
            per_row: bool,
            grad_scale: f64,
        ) -> FloatTensor<Self> {
            /// LSQ's gradients: `x` inside the range; `step` the per-scale sums of the factors.
            #[derive(Debug)]
            struct Lsq;

            impl<B: Backend + FusedQuantBackend> Backward<B, 2> for Lsq {
                type State = (FloatTensor<B>, FloatTensor<B>, i32, i32, bool, f64);

                fn backward(
                    self,
                    ops: Ops<Self::State, 2>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let (x, step, qn, qp, per_row, grad_scale) = ops.state;
                    let step_shape = step.shape();
                    let (x2, step2) = (x.clone(), step.clone());
                    binary::<B, _, _>(
                        ops.parents,
                        ops.node,
                        grads,
                        |grad| B::fused_lsq_grad(x, step, grad, qn, qp, per_row, false),
                        |grad| {
                            let terms = B::fused_lsq_grad(x2, step2, grad, qn, qp, per_row, true);
                            let rank = terms.shape().num_dims();
                            let sums = if per_row {
                                B::float_sum_dim(terms, rank - 1)
                            } else {
                                B::float_sum(terms)
                            };
                            let sums = B::float_reshape(sums, step_shape);
                            B::float_mul_scalar(sums, grad_scale.into())
                        },
                    );
                }
            }

            let nodes = [x.node(), step.node()];
            let (x, step) = (x.into_primitive(), step.into_primitive());
            let out = B::fused_lsq(x.clone(), step.clone(), qn, qp, per_row, grad_scale);
            match Lsq.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish((x, step, qn, qp, per_row, grad_scale), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }

        fn fused_norm_quant(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            norm_eps: f64,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            centered: bool,
            group: usize,
            clipped: bool,
        ) -> FloatTensor<Self> {
            /// RMSNorm's Jacobian after the standard or clipped STE, for `x` and `γ`.
            #[derive(Debug)]
            struct NormQuant;

            impl<B: Backend + FusedQuantBackend> Backward<B, 2> for NormQuant {
                type State = (NodeId, NodeId, NormQuantSpec, bool);

                fn backward(
                    self,
                    ops: Ops<Self::State, 2>,
                    grads: &mut Gradients,
                    checkpointer: &mut Checkpointer,
                ) {
                    let (x, gamma, spec, clipped) = ops.state;
                    let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
                    let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(gamma);
                    let gamma_shape = gamma.shape();
                    let (x2, gamma2) = (x.clone(), gamma.clone());
                    binary::<B, _, _>(
                        ops.parents,
                        ops.node,
                        grads,
                        |grad| norm_quant_grad::<B>(&spec, x, gamma, grad, clipped, false),
                        |grad| {
                            let terms =
                                norm_quant_grad::<B>(&spec, x2, gamma2, grad, clipped, true);
                            // Summed over every row: all the axes before the last.
                            let d = gamma_shape.num_elements();
                            let rows = terms.shape().num_elements() / d.max(1);
                            let terms = B::float_reshape(terms, [rows, d].into());
                            B::float_reshape(B::float_sum_dim(terms, 0), gamma_shape)
                        },
                    );
                }
            }

            /// Recomputes the output from the input and the gain (see `fused_fake_quant`).
            #[derive(Debug)]
            struct Recompute<B> {
                x: NodeId,
                gamma: NodeId,
                spec: NormQuantSpec,
                clipped: bool,
                backend: core::marker::PhantomData<B>,
            }

            impl<B: Backend + FusedQuantBackend> RetroForward for Recompute<B> {
                fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
                    let x = states.get_state::<FloatTensor<B>>(&self.x);
                    let gamma = states.get_state::<FloatTensor<B>>(&self.gamma);
                    states.save(
                        out_node,
                        norm_quant::<B>(&self.spec, x, gamma, self.clipped),
                    );
                }
            }

            let spec = norm_spec(norm_eps, qn, qp, eps, abs_mean, centered, group);
            let out = norm_quant::<B>(
                &spec,
                x.primitive().clone(),
                gamma.primitive().clone(),
                clipped,
            );
            let recompute = Recompute::<B> {
                x: x.id(),
                gamma: gamma.id(),
                spec,
                clipped,
                backend: core::marker::PhantomData,
            };
            match NormQuant
                .prepare::<C>([x.node(), gamma.node()])
                .memory_bound()
                .retro_forward(recompute)
                .parents([&x, &gamma])
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), spec, clipped);
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }

        fn fused_norm_quant_grad(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            norm_eps: f64,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            centered: bool,
            group: usize,
            clipped: bool,
            of_gamma: bool,
        ) -> FloatTensor<Self> {
            // A constant: no second-order gradient flows through the STE's backward pass.
            let spec = norm_spec(norm_eps, qn, qp, eps, abs_mean, centered, group);
            FloatTensor::<Self>::new(norm_quant_grad::<B>(
                &spec,
                x.into_primitive(),
                gamma.into_primitive(),
                grad.into_primitive(),
                clipped,
                of_gamma,
            ))
        }

        fn fused_lsq_grad(
            x: FloatTensor<Self>,
            step: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            qn: i32,
            qp: i32,
            per_row: bool,
            of_step: bool,
        ) -> FloatTensor<Self> {
            FloatTensor::<Self>::new(B::fused_lsq_grad(
                x.into_primitive(),
                step.into_primitive(),
                grad.into_primitive(),
                qn,
                qp,
                per_row,
                of_step,
            ))
        }
    }
}
