//! Flex: the CPU kernels read the tensors' storage in place.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

use super::ops::TernaryOps;

impl TernaryOps for Flex {
    fn ternary_matmul(
        x: FlexTensor,
        codes: FlexTensor,
        scales: FlexTensor,
        cols: usize,
        kind: usize,
        activations: u8,
    ) -> FlexTensor {
        let (x, codes, scales) = (contiguous(x), contiguous(codes), contiguous(scales));
        let m = x.layout().shape().num_elements() / cols.max(1);
        let rows = codes.layout().shape()[0];
        // A contiguous view at offset 0 (a leading slice, a narrowed single row) may sit on a
        // longer buffer: take only its own elements.
        let own = |t: &FlexTensor| t.layout().shape().num_elements();
        let y = super::run_cpu(
            &x.storage::<f32>()[..own(&x)],
            m,
            &codes.storage::<u32>()[..own(&codes)],
            rows,
            cols,
            &scales.storage::<f32>()[..own(&scales)],
            kind,
            activations,
        );
        FlexTensor::from_data(TensorData::new(y, [m, rows]))
    }
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}
