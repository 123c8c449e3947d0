//! The quantizers on a GPU against Flex, element by element, at the weight sizes of real
//! layers (`gpu-check` prints it): for each format and granularity, how many elements of the
//! fake-quantized tensor differ from Flex's (more than 1e-5 relative: another code) and the
//! quantization level `1/s` on both devices, for the portable path (`fake_quantize_weight` /
//! `fake_quantize`: Burn's tensor operations) and the fused kernels (`quantize_ste`), weights
//! drawn from N(0, 0.05²). A per-tensor statistic that misses part of the tensor shows as a
//! lower level and most elements differing; rounding ties of a scale summed in another order
//! as a handful.

use bitnet_qat::quant::{Granularity, QuantConfig, ScaleStat, fake_quantize, fake_quantize_weight};
use bitnet_qat::ste::{Ste, quantize_ste};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use serde::Serialize;

/// Weight shapes `[d_input, d_output]`.
const SHAPES: [[usize; 2]; 6] = [
    [784, 64],
    [784, 512],
    [1024, 1024],
    [2048, 1024],
    [2048, 2048],
    [4096, 4096],
];

/// One quantizer of the table: weights (scales along axis 0) or activations (the last axis).
struct Quantizer {
    name: &'static str,
    config: QuantConfig,
    weight: bool,
}

fn quantizers() -> Vec<Quantizer> {
    let q = |name, config, weight| Quantizer {
        name,
        config,
        weight,
    };
    vec![
        q("ternary, per tensor", QuantConfig::ternary(), true),
        q("int4, per tensor", QuantConfig::int(4), true),
        q("int8 absmax, per tensor", QuantConfig::int(8), true),
        q("binary, per tensor", QuantConfig::binary(), true),
        q(
            "ternary, per channel",
            QuantConfig::ternary().with_granularity(Granularity::PerChannel),
            true,
        ),
        q(
            "ternary absmedian, per tensor",
            QuantConfig::ternary().with_stat(ScaleStat::AbsMedian),
            true,
        ),
        q(
            "int8 activations, per token",
            QuantConfig::activation_int8(),
            false,
        ),
    ]
}

/// One cell: a quantizer, a shape, a path.
#[derive(Debug, Serialize)]
pub struct Cell {
    /// The quantizer, in words.
    pub quantizer: &'static str,
    /// The weight shape `[d_input, d_output]` (activations: `[tokens, features]`).
    pub shape: [usize; 2],
    /// `portable` (Burn's tensor operations) or `fused` (the fused kernels).
    pub path: &'static str,
    /// Elements of the tensor.
    pub elements: usize,
    /// Elements more than 1e-5 relative away from Flex's.
    pub differ: usize,
    /// The largest `|q| / Q_p` on the GPU: the level `1/s` of a per-tensor scale.
    pub level_gpu: f32,
    /// The same on Flex.
    pub level_flex: f32,
}

impl Cell {
    /// More elements differ than rounding ties of a scale summed in another order explain
    /// (one in 100,000, and 2).
    pub fn failed(&self) -> bool {
        self.differ > (self.elements / 100_000).max(2)
    }
}

/// The values of a `[d_input, d_output]` weight drawn from N(0, 0.05²) with Flex's generator
/// seeded with `seed`.
fn normal(shape: [usize; 2], seed: u64) -> Vec<f32> {
    let cpu = Device::flex();
    cpu.seed(seed);
    Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.05), &cpu)
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32")
}

/// The fake-quantized values of `x` on `device` by the portable path or the fused kernels.
fn quantize(q: &Quantizer, x: &[f32], shape: [usize; 2], device: &Device, fused: bool) -> Vec<f32> {
    let t = Tensor::<2>::from_data(TensorData::new(x.to_vec(), shape), device);
    let y = match (fused, q.weight) {
        (false, true) => fake_quantize_weight(t, &q.config),
        (false, false) => fake_quantize(t, &q.config),
        // The fused kernels run along the last axis: a weight's axis 0 is its transpose's.
        (true, true) => {
            quantize_ste(t.transpose(), &q.config, &Ste::Standard).map(|y| y.transpose())
        }
        (true, false) => quantize_ste(t, &q.config, &Ste::Standard),
    };
    y.expect("a valid quantizer for the shape")
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32")
}

fn level(values: &[f32], qp: i32) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs())) / qp as f32
}

/// Measures every quantizer × path × shape on `gpu` against Flex, printing the table as it
/// goes (a Markdown row per quantizer and path).
pub fn measure(gpu: &Device) -> Vec<Cell> {
    let cpu = Device::flex();
    let header: Vec<String> = SHAPES.iter().map(|[k, n]| format!("{k}×{n}")).collect();
    println!(
        "\n| format, granularity | path | {} |\n|---|---|{}",
        header.join(" | "),
        "---|".repeat(SHAPES.len())
    );
    // One input per shape (seeded), shared by every quantizer and path.
    let inputs: Vec<_> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, &shape)| normal(shape, 1 + i as u64))
        .collect();
    let mut cells = Vec::new();
    for q in quantizers() {
        let (_, qp) = q.config.code_range();
        for (path, fused) in [("portable", false), ("fused", true)] {
            let mut row = Vec::new();
            for (&shape, x) in SHAPES.iter().zip(&inputs) {
                let expected = quantize(&q, x, shape, &cpu, fused);
                let got = quantize(&q, x, shape, gpu, fused);
                let differ = got
                    .iter()
                    .zip(&expected)
                    .filter(|(g, e)| (*g - *e).abs() > 1e-5 * e.abs())
                    .count();
                let cell = Cell {
                    quantizer: q.name,
                    shape,
                    path,
                    elements: x.len(),
                    differ,
                    level_gpu: level(&got, qp),
                    level_flex: level(&expected, qp),
                };
                row.push(if differ == 0 {
                    "equal".to_string()
                } else {
                    format!(
                        "{differ} of {} differ; level {:.4} vs {:.4}",
                        cell.elements, cell.level_gpu, cell.level_flex
                    )
                });
                cells.push(cell);
            }
            println!("| {} | {path} | {} |", q.name, row.join(" | "));
        }
    }
    cells
}
