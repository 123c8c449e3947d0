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
        let y = super::run_cpu(
            &x.storage::<f32>()[span(&x)],
            m,
            &codes.storage::<u32>()[span(&codes)],
            rows,
            cols,
            &scales.storage::<f32>()[span(&scales)],
            kind,
            activations,
        );
        FlexTensor::from_data(TensorData::new(y, [m, rows]))
    }
}

/// `t`, copied only when its elements are not one row-major run of its buffer (a slice of
/// leading rows stays in place, wherever it starts).
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// Where a contiguous tensor's elements are in the buffer it may share with others.
fn span(t: &FlexTensor) -> std::ops::Range<usize> {
    let start = t.layout().start_offset();
    start..start + t.layout().shape().num_elements()
}
