//! The CubeCL kernels against the CPU kernels, on whatever wgpu adapter the machine has (Mesa's
//! lavapipe on CI: `scripts/install-deps.sh` installs it). Under CI (`CI=true`) a missing
//! adapter fails; elsewhere the tests say they skipped.

use bitnet_kernels::burn_ext::{ScaleKind, ternary_matmul, ternary_matmul_float};
use bitnet_kernels::packed::{PackedTernary, TernaryScales};
use burn::tensor::{DType, Device, DeviceKind, Int, Tensor, TensorCreationOptions, TensorData};

use super::{Lcg, skip, values};

/// The wgpu device, or `None` (the test skips, see [`skip`]) when no adapter works outside CI.
/// `scripts/test.sh` sets `XDG_RUNTIME_DIR`, without which Mesa warns on every call.
pub fn gpu_device() -> Option<Device> {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let probe = device.clone();
    let works = std::panic::catch_unwind(move || {
        Tensor::<1>::from_data([1.0, 2.0], &probe)
            .sum()
            .into_scalar::<f32>()
    });
    match works {
        Ok(3.0) => Some(device),
        other => {
            skip(&format!(
                "no working wgpu adapter ({other:?}): install mesa-vulkan-drivers libvulkan1 \
                 (scripts/install-deps.sh)"
            ));
            None
        }
    }
}

#[derive(Clone)]
struct Case {
    m: usize,
    rows: usize,
    cols: usize,
    x: Vec<f32>,
    words: Vec<u32>,
    scales: Vec<f32>,
    kind: ScaleKind,
}

fn case(m: usize, rows: usize, cols: usize, kind: ScaleKind, integer_x: bool, seed: u64) -> Case {
    let mut rng = Lcg(seed);
    let w: Vec<i8> = (0..rows * cols)
        .map(|_| (rng.uniform() * 3.0) as i8 - 1)
        .collect();
    let x: Vec<f32> = (0..m * cols)
        .map(|i| {
            if integer_x {
                // Each row reaches ±127, so s_x = 1 and the output is the integer product.
                if i % cols == 0 {
                    127.0
                } else {
                    (rng.uniform() * 255.0).floor() - 127.0
                }
            } else {
                (rng.uniform() - 0.5) * 4.0
            }
        })
        .collect();
    let (scales, packed_scales) = match kind {
        ScaleKind::PerTensor => {
            let s = if integer_x { 1.0 } else { 0.37 };
            (vec![s], TernaryScales::PerTensor(s))
        }
        ScaleKind::PerRow => {
            let s: Vec<f32> = (0..rows).map(|_| 0.1 + rng.uniform()).collect();
            (s.clone(), TernaryScales::PerRow(s))
        }
        ScaleKind::PerGroup(group) => {
            let s: Vec<f32> = (0..rows * cols / group)
                .map(|_| 0.1 + rng.uniform())
                .collect();
            (s.clone(), TernaryScales::PerGroup { group, scales: s })
        }
    };
    let words = PackedTernary::pack(&w, rows, cols, packed_scales)
        .unwrap()
        .words()
        .to_vec();
    Case {
        m,
        rows,
        cols,
        x,
        words,
        scales,
        kind,
    }
}

fn run(c: &Case, device: &Device, int8: bool) -> Vec<f32> {
    let (y, dtype) = run_as(c, device, int8, DType::F32);
    assert_eq!(dtype, DType::F32);
    y
}

/// Runs the case with int8 activations whose dot products are formed as `dot` says.
fn run_with_dot(c: &Case, device: &Device, dot: bitnet_kernels::int8_dot::Int8Dot) -> Vec<f32> {
    use bitnet_kernels::burn_ext::ternary_matmul_with_dot;
    let (x, codes, scales) = operands(c, device, DType::F32);
    values(ternary_matmul_with_dot(x, codes, scales, c.cols, c.kind, dot).unwrap())
}

/// The case's activations (cast to `dtype`), codes and scales on `device`.
fn operands(c: &Case, device: &Device, dtype: DType) -> (Tensor<2>, Tensor<2, Int>, Tensor<1>) {
    let x = Tensor::<2>::from_data(TensorData::new(c.x.clone(), [c.m, c.cols]), device).cast(dtype);
    let per_row = c.words.len() / c.rows;
    let codes = Tensor::<2, Int>::from_data(
        TensorData::new(c.words.clone(), [c.rows, per_row]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
    );
    let scales =
        Tensor::<1>::from_data(TensorData::new(c.scales.clone(), [c.scales.len()]), device);
    (x, codes, scales)
}

/// Runs the case with the activations cast to `dtype`; returns the output values and type.
fn run_as(c: &Case, device: &Device, int8: bool, dtype: DType) -> (Vec<f32>, DType) {
    let (x, codes, scales) = operands(c, device, dtype);
    let y = if int8 {
        ternary_matmul(x, codes, scales, c.cols, c.kind)
    } else {
        ternary_matmul_float(x, codes, scales, c.cols, c.kind)
    }
    .unwrap();
    assert_eq!(y.dims(), [c.m, c.rows]);
    let dtype = y.dtype();
    (values(y), dtype)
}

/// Ragged K and N, GEMV and GEMM.
const SHAPES: [(usize, usize, usize); 5] = [
    (1, 37, 300),
    (1, 64, 256),
    (5, 19, 777),
    (9, 130, 1000),
    (4, 8, 2),
];

#[test]
fn int8_products_are_bit_exact_on_the_gpu() {
    use bitnet_kernels::int8_dot::Int8Dot;
    let Some(gpu) = gpu_device() else { return };
    // Both ways of forming the dot products (lavapipe runs WGSL, where `Auto` takes the SWAR
    // masks and `dp4a` is polyfilled).
    for dot in [Int8Dot::Dp4a, Int8Dot::Swar, Int8Dot::Auto] {
        for (i, &(m, rows, cols)) in SHAPES.iter().enumerate() {
            for kind in kinds(cols) {
                let c = case(m, rows, cols, kind, true, i as u64);
                let cpu = run(&c, &Device::flex(), true);
                let got = run_with_dot(&c, &gpu, dot);
                let what = format!("{dot:?} {kind:?} m={m} rows={rows} cols={cols}");
                if kind == ScaleKind::PerTensor {
                    // Unit scales: the integer products themselves.
                    assert!(cpu.iter().all(|v| v.fract() == 0.0), "integer products");
                    assert_eq!(got, cpu, "{what}");
                } else {
                    assert_matches_cpu(&c, &got, &cpu, 1e-5, &what);
                }
            }
        }
    }
}

/// Asserts the GPU result matches the CPU's within `rel` relative, or a few f32 ulps of the sum
/// of |terms| (float sums in another order can differ by that much more than a cancelling
/// result).
#[track_caller]
fn assert_matches_cpu(c: &Case, got: &[f32], cpu: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), cpu.len(), "{what}: length");
    let min_scale = c.scales.iter().copied().fold(f32::INFINITY, f32::min);
    for (j, (a, b)) in got.iter().zip(cpu).enumerate() {
        let r = j / c.rows;
        let l1: f32 = c.x[r * c.cols..(r + 1) * c.cols]
            .iter()
            .map(|v| v.abs())
            .sum();
        let tol = (rel * b.abs().max(1.0)).max(2e-6 * l1 / min_scale);
        assert!(
            (a - b).abs() <= tol,
            "{what} {:?} m={} rows={} cols={} [{j}]: gpu {a} cpu {b}",
            c.kind,
            c.m,
            c.rows,
            c.cols
        );
    }
}

/// The case's activations rounded to f16 (and back to f32): what the CPU reference must see
/// when the GPU reads them in f16.
fn f16_rounded(c: &Case, gpu: &Device) -> Vec<f32> {
    values(
        Tensor::<2>::from_data(TensorData::new(c.x.clone(), [c.m, c.cols]), gpu).cast(DType::F16),
    )
}

/// Every scale layout the shape allows.
fn kinds(cols: usize) -> Vec<ScaleKind> {
    let mut kinds = vec![ScaleKind::PerTensor, ScaleKind::PerRow];
    if cols.is_multiple_of(256) {
        kinds.push(ScaleKind::PerGroup(256));
    }
    kinds
}

#[test]
fn gpu_kernels_match_the_cpu_kernels_for_every_scale_layout() {
    let Some(gpu) = gpu_device() else { return };
    let mut checked = 0;
    for (i, &(m, rows, cols)) in SHAPES.iter().enumerate() {
        for kind in kinds(cols) {
            let c = case(m, rows, cols, kind, false, 100 + i as u64);
            for int8 in [true, false] {
                let cpu = run(&c, &Device::flex(), int8);
                let got = run(&c, &gpu, int8);
                assert_matches_cpu(&c, &got, &cpu, 1e-5, &format!("int8={int8}"));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 22);
}

#[test]
fn many_rows_take_the_dense_route_with_the_same_results() {
    use bitnet_kernels::gpu::{FLOAT_DENSE_MIN_M, INT8_DENSE_MIN_M};
    let Some(gpu) = gpu_device() else { return };
    // Integer products stay bit-exact through Burn's f32 matmul.
    let c = case(
        INT8_DENSE_MIN_M + 4,
        33,
        512,
        ScaleKind::PerTensor,
        true,
        300,
    );
    let cpu = run(&c, &Device::flex(), true);
    assert!(cpu.iter().all(|v| v.fract() == 0.0), "integer products");
    assert_eq!(run(&c, &gpu, true), cpu, "dense int8 route");
    let mut checked = 0;
    for (m, int8) in [(INT8_DENSE_MIN_M + 4, true), (FLOAT_DENSE_MIN_M + 6, false)] {
        for cols in [512, 300] {
            for kind in kinds(cols) {
                let case32 = case(m, 19, cols, kind, false, 310 + checked);
                for dtype in [DType::F32, DType::F16] {
                    let mut c = case32.clone();
                    let rel = if dtype == DType::F16 {
                        c.x = f16_rounded(&c, &gpu);
                        1e-3
                    } else {
                        1e-5
                    };
                    let cpu = run(&c, &Device::flex(), int8);
                    let (got, out) = run_as(&c, &gpu, int8, dtype);
                    assert_eq!(out, dtype);
                    let what = format!("dense int8={int8} {dtype:?}");
                    assert_matches_cpu(&c, &got, &cpu, rel, &what);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 10);
}

#[test]
fn float_activation_path_matches_the_tensor_op_fallback() {
    use bitnet_kernels::burn_ext::ternary_matmul_float_fallback;
    let device = Device::flex();
    let c = case(3, 21, 512, ScaleKind::PerGroup(256), false, 7);
    let kernel = run(&c, &device, false);
    let x = Tensor::<2>::from_data(TensorData::new(c.x.clone(), [c.m, c.cols]), &device);
    let codes = Tensor::<2, Int>::from_data(
        TensorData::new(c.words.clone(), [c.rows, c.words.len() / c.rows]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
    );
    let scales =
        Tensor::<1>::from_data(TensorData::new(c.scales.clone(), [c.scales.len()]), &device);
    let reference =
        values(ternary_matmul_float_fallback(x, codes, scales, c.cols, c.kind).unwrap());
    for (a, b) in kernel.iter().zip(&reference) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn f16_activations_run_in_f16_on_the_gpu() {
    let Some(gpu) = gpu_device() else { return };
    let mut checked = 0;
    for (i, &(m, rows, cols)) in SHAPES.iter().enumerate() {
        let mut c = case(m, rows, cols, ScaleKind::PerRow, false, 200 + i as u64);
        c.x = f16_rounded(&c, &gpu);
        for int8 in [true, false] {
            let cpu = run(&c, &Device::flex(), int8);
            let (got, dtype) = run_as(&c, &gpu, int8, DType::F16);
            assert_eq!(dtype, DType::F16, "the output keeps the activations' type");
            // One f16 rounding of the f32 result (2^-11 relative), on top of the f32 bound.
            assert_matches_cpu(&c, &got, &cpu, 1e-3, &format!("f16 int8={int8}"));
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
}

#[test]
fn gpu_kernels_match_the_cpu_kernels_at_large_sizes() {
    let Some(gpu) = gpu_device() else { return };
    // Long reductions: K = 140,032 (past 2^24 / 127, where the int8 per-tensor sum of exact
    // integer partials starts rounding), a ragged long K in tiles, activation rows of the
    // packed format's longest (2^18 - 1: the int8 quantizer's absmax over a long row). Grids past 65,535 cubes: 2,049 blocks of output rows
    // × 40 tiles of activation rows (int8), 4,097 × 16 (float activations, below the dense
    // route).
    let shapes: [(usize, usize, usize, &[bool]); 5] = [
        (1, 16, 140_032, &[true, false]),
        (5, 40, 16_643, &[true, false]),
        (2, 8, 262_143, &[true, false]),
        (160, 16_392, 256, &[true]),
        (63, 32_776, 256, &[false]),
    ];
    let mut checked = 0;
    for (i, &(m, rows, cols, int8s)) in shapes.iter().enumerate() {
        for kind in kinds(cols) {
            let c = case(m, rows, cols, kind, false, 400 + i as u64);
            for &int8 in int8s {
                let cpu = run(&c, &Device::flex(), int8);
                let got = run(&c, &gpu, int8);
                assert_matches_cpu(&c, &got, &cpu, 1e-5, &format!("int8={int8}"));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 2 + 2 * 2 + 2 * 2 + 3 + 3);
}
