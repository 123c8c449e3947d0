//! Flex: the forward passes of [`QatBackend`] are the trait's portable defaults; the fused
//! fake quantization runs on the tensor's storage in place.

use burn::backend::Flex;

use crate::ops::QatBackend;

impl QatBackend for Flex {}

mod fused {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    use crate::fused::{
        FusedOutput, FusedQuantBackend, FusedSpec, FusedSte, NormQuantOutput, NormQuantSpec,
        fake_quant_slice, lsq_slice, norm_quant_slice, norm_spec, ste_grad_slice,
    };

    /// `x` with a contiguous storage starting at 0, and the length of its last axis.
    fn contiguous(x: FlexTensor) -> (FlexTensor, usize) {
        let x = if x.is_contiguous() && x.layout().start_offset() == 0 {
            x
        } else {
            x.to_contiguous()
        };
        let dims = x.layout().shape();
        let row_len = if dims.is_empty() {
            1
        } else {
            dims[dims.len() - 1]
        };
        (x, row_len)
    }

    /// Runs [`fake_quant_slice`] on the tensor's (contiguous) storage.
    fn run(x: FlexTensor, spec: FusedSpec, output: FusedOutput) -> FlexTensor {
        let (x, row_len) = contiguous(x);
        let out = fake_quant_slice(x.storage::<f32>(), row_len, spec, output, None);
        FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
    }

    /// Runs [`lsq_slice`] on the tensors' (contiguous) storage; `grad`: the incoming gradient
    /// and whether the step's terms are wanted.
    fn lsq(
        x: FlexTensor,
        step: FlexTensor,
        qn: i32,
        qp: i32,
        per_row: bool,
        grad: Option<(FlexTensor, bool)>,
    ) -> FlexTensor {
        let (x, row_len) = contiguous(x);
        let (step, _) = contiguous(step);
        let grad = grad.map(|(g, of_step)| (contiguous(g).0, of_step));
        let out = lsq_slice(
            x.storage::<f32>(),
            step.storage::<f32>(),
            row_len,
            per_row,
            qn as f32,
            qp as f32,
            grad.as_ref()
                .map(|(g, of_step)| (g.storage::<f32>(), *of_step)),
        );
        FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
    }

    /// Runs [`norm_quant_slice`] on the tensors' (contiguous) storage; `grad`: the incoming
    /// gradient and whether `γ`'s terms are wanted.
    fn norm_quant(
        x: FlexTensor,
        gamma: FlexTensor,
        spec: &NormQuantSpec,
        clipped: bool,
        grad: Option<(FlexTensor, bool)>,
    ) -> FlexTensor {
        let (x, _) = contiguous(x);
        let (gamma, _) = contiguous(gamma);
        let grad = grad.map(|(g, of_gamma)| (contiguous(g).0, of_gamma));
        let output = match &grad {
            None => NormQuantOutput::Quantized,
            Some((g, false)) => NormQuantOutput::InputGrad(g.storage::<f32>()),
            Some((g, true)) => NormQuantOutput::GammaTerms(g.storage::<f32>()),
        };
        let out = norm_quant_slice(
            x.storage::<f32>(),
            gamma.storage::<f32>(),
            spec,
            clipped,
            output,
        );
        FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
    }

    impl FusedQuantBackend for Flex {
        fn fused_norm_quant(
            x: FlexTensor,
            gamma: FlexTensor,
            norm_eps: f64,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            centered: bool,
            group: usize,
            clipped: bool,
        ) -> FlexTensor {
            let spec = norm_spec(norm_eps, qn, qp, eps, abs_mean, centered, group);
            norm_quant(x, gamma, &spec, clipped, None)
        }

        fn fused_norm_quant_grad(
            x: FlexTensor,
            gamma: FlexTensor,
            grad: FlexTensor,
            norm_eps: f64,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            centered: bool,
            group: usize,
            clipped: bool,
            of_gamma: bool,
        ) -> FlexTensor {
            let spec = norm_spec(norm_eps, qn, qp, eps, abs_mean, centered, group);
            norm_quant(x, gamma, &spec, clipped, Some((grad, of_gamma)))
        }

        fn fused_fake_quant(
            x: FlexTensor,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            per_row: bool,
            centered: bool,
            ste: usize,
            param: f64,
        ) -> FlexTensor {
            let spec = FusedSpec::new(qn, qp, eps, abs_mean, per_row, centered);
            run(x, spec, FusedSte::decode(ste, param).forward_output())
        }

        fn fused_ste_grad(
            x: FlexTensor,
            grad: FlexTensor,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            per_row: bool,
            centered: bool,
            ste: usize,
            param: f64,
        ) -> FlexTensor {
            let spec = FusedSpec::new(qn, qp, eps, abs_mean, per_row, centered);
            let (x, row_len) = contiguous(x);
            let (grad, _) = contiguous(grad);
            let out = ste_grad_slice(
                x.storage::<f32>(),
                grad.storage::<f32>(),
                row_len,
                spec,
                FusedSte::decode(ste, param),
            );
            FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
        }

        fn fused_lsq(
            x: FlexTensor,
            step: FlexTensor,
            qn: i32,
            qp: i32,
            per_row: bool,
            _grad_scale: f64,
        ) -> FlexTensor {
            lsq(x, step, qn, qp, per_row, None)
        }

        fn fused_lsq_grad(
            x: FlexTensor,
            step: FlexTensor,
            grad: FlexTensor,
            qn: i32,
            qp: i32,
            per_row: bool,
            of_step: bool,
        ) -> FlexTensor {
            lsq(x, step, qn, qp, per_row, Some((grad, of_step)))
        }
    }
}
