//! NdArray: the CPU kernels read the arrays in place when they are contiguous.
#![allow(deprecated)] // NdArray is deprecated in Burn 0.22 but still supported.

use burn::backend::NdArray;
use burn::backend::ndarray::NdArrayTensor;
use burn::tensor::TensorData;

use super::ops::TernaryOps;

impl TernaryOps for NdArray {
    fn ternary_matmul(
        x: NdArrayTensor,
        codes: NdArrayTensor,
        scales: NdArrayTensor,
        cols: usize,
        kind: usize,
        activations: u8,
    ) -> NdArrayTensor {
        let (NdArrayTensor::F32(x), NdArrayTensor::U32(codes), NdArrayTensor::F32(scales)) =
            (x, codes, scales)
        else {
            panic!("ternary_matmul: expected f32 activations, u32 codes and f32 scales");
        };
        let (xv, cv, sv) = (x.view(), codes.view(), scales.view());
        let xs = xv.as_standard_layout();
        let cs = cv.as_standard_layout();
        let ss = sv.as_standard_layout();
        let m = xs.len() / cols.max(1);
        let rows = cs.shape()[0];
        let y = super::run_cpu(
            xs.as_slice().expect("standard layout"),
            m,
            cs.as_slice().expect("standard layout"),
            rows,
            cols,
            ss.as_slice().expect("standard layout"),
            kind,
            activations,
        );
        NdArrayTensor::from_data(TensorData::new(y, [m, rows]))
    }
}
