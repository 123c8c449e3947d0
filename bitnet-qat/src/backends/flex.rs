//! Flex: the forward passes of [`QatBackend`] are the trait's portable defaults; the fused
//! fake quantization runs on the tensor's storage in place.

use burn::backend::Flex;

use crate::ops::QatBackend;

impl QatBackend for Flex {}

mod fused {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    use crate::fused::{FusedOutput, FusedQuantBackend, FusedSpec, FusedSte, fake_quant_slice};

    /// Runs [`fake_quant_slice`] on the tensor's (contiguous) storage.
    fn run(x: FlexTensor, spec: FusedSpec, output: FusedOutput) -> FlexTensor {
        let x = if x.is_contiguous() && x.layout().start_offset() == 0 {
            x
        } else {
            x.to_contiguous()
        };
        let shape = x.layout().shape().clone();
        let row_len = if shape.is_empty() {
            1
        } else {
            shape[shape.len() - 1]
        };
        let out = fake_quant_slice(x.storage::<f32>(), row_len, spec, output);
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    impl FusedQuantBackend for Flex {
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

        fn fused_ste_aux(
            x: FlexTensor,
            qn: i32,
            qp: i32,
            eps: f64,
            abs_mean: bool,
            per_row: bool,
            centered: bool,
            aux: usize,
            param: f64,
        ) -> FlexTensor {
            let spec = FusedSpec::new(qn, qp, eps, abs_mean, per_row, centered);
            run(x, spec, FusedOutput::decode(aux, param))
        }
    }
}
