//! `qat-overhead`: the cost of a QAT training step against the full-precision step of the same
//! model and batch: time and peak heap memory, on Flex or (with the `wgpu` / `cuda` feature) a
//! GPU, where it also counts each step's kernel launches.
//!
//! ```text
//! cargo run --release --bin qat-overhead -- --json qat-overhead.json
//! ```
//!
//! Models: an MLP 784-H-H-10 (H = `--hidden`, 256 by default: Fashion-MNIST sized; synthetic
//! data) built three ways —
//! `linear` (Burn `Linear`: what a user had before QAT, the headline baseline), `norm-linear`
//! (RMSNorm + `Linear`, the FP32 twin of `BitLinear`) and `bitlinear` (W1.58 A8 with RMSNorm) —
//! plus `linear-dx`, the `linear` model whose first layer also computes its input's gradient:
//! the matmul that any trainable parameter in front of the first layer (the norm's `γ`) costs,
//! the floor of a model with a learnable input norm — and `bitlinear-fixed-norm`, BitLinear with
//! a parameter-free norm (`norm_affine(false)`), which has no such floor — and the pair
//! `bitlinear-no-norm` (BitLinear without its norm) and `dropin-linear` (the drop-in
//! `bitnet_qat::nn::Linear`, W1.58A8: the same computation through the generic layer). One step =
//! forward, cross-entropy, backward, Adam. Variants are interleaved, at least 21 samples each,
//! medians reported.

use std::path::PathBuf;

use bitnet_qat::nn::{BitLinear, BitLinearConfig, update_quantizers};
use bitnet_qat::quant::has_fused_kernels;
use bitnet_qat::ste::Ste;
use bitnet_qat_benches::heap::{Counting, peak_during};
use bitnet_qat_benches::{Stats, count_launches, interleaved, load_average, write_atomic};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor};
use clap::Parser;
use serde::Serialize;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Measure the QAT step overhead.
#[derive(Parser, Debug)]
struct Args {
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Samples per variant.
    #[arg(long, default_value_t = 21)]
    samples: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Width of the two hidden layers (256: launch-bound on a GPU; 4096 with a large batch: bound
    /// by the matmuls).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// `flex` (CPU) or, with the `wgpu` / `vulkan` / `cuda` feature, that GPU (each step ends with
    /// a device sync; the peak-memory column counts host allocations only).
    #[arg(long, default_value = "flex")]
    device: String,
    /// Which quantizers the BitLinear model has (to locate an overhead): `full` (W1.58 A8),
    /// `weights` (FP activations) or `activations` (8-bit activations, FP weights: int8 weights
    /// with the STE blend at 0).
    #[arg(long, default_value = "full")]
    bitlinear: String,
    /// The weight STE: `standard`, `clipped` or `lsq` (learned step size).
    #[arg(long, default_value = "standard")]
    weight_ste: String,
}

#[derive(Module, Debug)]
struct NormLinear {
    norm: RmsNorm,
    linear: Linear,
}

#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // three layers per model
enum Layer {
    Linear(Linear),
    NormLinear(NormLinear),
    Bit(BitLinear),
    DropIn(bitnet_qat::nn::Linear),
}

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Layer>,
}

impl Mlp {
    fn new(kind: &str, hidden: usize, quantizers: &str, ste: Ste, device: &Device) -> Self {
        let sizes = [784, hidden, hidden, 10];
        let layers = sizes
            .windows(2)
            .map(|w| match kind {
                "linear" | "linear-dx" => {
                    Layer::Linear(LinearConfig::new(w[0], w[1]).with_bias(false).init(device))
                }
                "dropin-linear" => Layer::DropIn(
                    bitnet_qat::nn::LinearConfig::new(w[0], w[1])
                        .with_bias(false)
                        .init(device),
                ),
                "norm-linear" => Layer::NormLinear(NormLinear {
                    norm: RmsNormConfig::new(w[0]).init(device),
                    linear: LinearConfig::new(w[0], w[1]).with_bias(false).init(device),
                }),
                _ => {
                    let config = BitLinearConfig::new(w[0], w[1])
                        .with_weight_ste(ste)
                        .with_norm_affine(kind != "bitlinear-fixed-norm")
                        .with_norm(kind != "bitlinear-no-norm");
                    let config = match quantizers {
                        "weights" => config.with_activation_quant(None),
                        _ => config,
                    };
                    let layer = config.init(device).expect("valid");
                    let layer = if quantizers == "activations" {
                        // lambda 0: the weight quantizer passes the latent weight through.
                        update_quantizers(layer, |path, s| {
                            Ok(if path == "weight.qat" {
                                s.clone().with_lambda(0.0)
                            } else {
                                s.clone()
                            })
                        })
                        .expect("valid settings")
                    } else {
                        layer
                    };
                    Layer::Bit(layer)
                }
            })
            .collect();
        Self { layers }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, l)| {
            let y = match l {
                Layer::Linear(l) => l.forward(x),
                Layer::NormLinear(l) => l.linear.forward(l.norm.forward(x)),
                Layer::Bit(l) => l.forward(x),
                Layer::DropIn(l) => l.forward(x),
            };
            if i < last { relu(y) } else { y }
        })
    }
}

#[derive(Debug, Serialize)]
struct Variant {
    name: &'static str,
    stats: Stats,
    peak_step_bytes: usize,
    /// GPU kernels launched by one step (GPU devices only): on a GPU where a small model's
    /// step is bound by launch overhead, what its time follows.
    launches_per_step: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Report {
    device: String,
    /// Whether the device has the fused fake-quantization kernels (the standard STE uses them).
    fused_fake_quant: bool,
    /// The weight STE.
    weight_ste: String,
    batch: usize,
    hidden: usize,
    samples: usize,
    load_average_before: f64,
    load_average_after: f64,
    noisy: bool,
    variants: Vec<Variant>,
    /// The headline: the BitLinear step over the plain `Linear` step.
    time_ratio_vs_linear: f64,
    time_ratio_vs_norm_linear: f64,
    /// Over `linear-dx`, the floor of a model with a trainable input norm.
    time_ratio_vs_linear_dx: f64,
    /// `bitlinear-fixed-norm` over `linear`.
    fixed_norm_time_ratio_vs_linear: f64,
    memory_ratio_vs_norm_linear: f64,
    memory_ratio_vs_linear: f64,
    /// Kernel launches of the QAT step over those of the RMSNorm+Linear step (GPU devices).
    launch_ratio_vs_norm_linear: Option<f64>,
    /// `dropin-linear` over `bitlinear-no-norm`: the generic drop-in layer against the
    /// hand-built one of the same computation.
    dropin_time_ratio_vs_bitlinear_no_norm: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let load_before = load_average();
    let device = match args.device.as_str() {
        "flex" => Device::flex(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        other => return Err(format!("unknown or disabled device {other:?}").into()),
    }
    .autodiff();
    device.seed(7);
    let ste = match args.weight_ste.as_str() {
        "standard" => Ste::Standard,
        "clipped" => Ste::Clipped,
        "lsq" => Ste::LearnedStepSize,
        other => return Err(format!("unknown weight STE {other:?}").into()),
    };
    let fused = has_fused_kernels(&device);
    if !fused {
        // Both devices have them: without, the build lost a feature and would time the
        // portable path under the fused path's name.
        return Err(format!(
            "no fused fake-quantization kernels for {:?}: build with bitnet-qat's matching feature",
            args.device
        )
        .into());
    }
    let x = Tensor::<2>::random([args.batch, 784], Distribution::Uniform(0.0, 1.0), &device);
    let y = Tensor::<1, Int>::from_data(
        (0..args.batch as i64)
            .map(|i| i % 10)
            .collect::<Vec<_>>()
            .as_slice(),
        &device,
    );
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let names = [
        "linear",
        "linear-dx",
        "norm-linear",
        "bitlinear",
        "bitlinear-fixed-norm",
        "bitlinear-no-norm",
        "dropin-linear",
    ];
    let mut models: Vec<Option<Mlp>> = names
        .iter()
        .map(|n| Some(Mlp::new(n, args.hidden, &args.bitlinear, ste, &device)))
        .collect();
    let mut optims: Vec<_> = names.iter().map(|_| AdamConfig::new().init()).collect();
    let mut peaks = [0usize; 7];
    let mut step = |i: usize| {
        let model = models[i].take().expect("model");
        let (model, peak) = peak_during(|| {
            // `linear-dx`: the first layer's input takes a gradient too.
            let input = if names[i] == "linear-dx" {
                x.clone().require_grad()
            } else {
                x.clone()
            };
            let loss = loss_fn.forward(model.forward(input), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let model = optims[i].step(1e-3, model, grads);
            device.sync().expect("device sync");
            model
        });
        peaks[i] = peaks[i].max(peak);
        models[i] = Some(model);
    };
    // Closures borrowing `step` one at a time through a RefCell-free trampoline.
    let step = std::cell::RefCell::new(&mut step);
    let stats = interleaved(
        args.samples,
        &mut [
            &mut || (step.borrow_mut())(0),
            &mut || (step.borrow_mut())(1),
            &mut || (step.borrow_mut())(2),
            &mut || (step.borrow_mut())(3),
            &mut || (step.borrow_mut())(4),
            &mut || (step.borrow_mut())(5),
            &mut || (step.borrow_mut())(6),
        ],
    );
    // One more step of each, counting its kernel launches (GPU builds; the step ends with a
    // device sync, so the lazily fused operations are issued inside the count).
    let launches: Vec<Option<usize>> = if args.device == "flex" {
        vec![None; names.len()]
    } else {
        (0..names.len())
            .map(|i| count_launches(|| (step.borrow_mut())(i)))
            .collect()
    };
    let load_after = load_average();
    let median = |i: usize| stats[i].median_s;
    let report = Report {
        device: args.device.clone(),
        fused_fake_quant: fused,
        weight_ste: args.weight_ste.clone(),
        batch: args.batch,
        hidden: args.hidden,
        samples: args.samples,
        load_average_before: load_before,
        load_average_after: load_after,
        noisy: load_before > 1.0 || load_after > 1.0,
        time_ratio_vs_linear: median(3) / median(0),
        time_ratio_vs_norm_linear: median(3) / median(2),
        time_ratio_vs_linear_dx: median(3) / median(1),
        fixed_norm_time_ratio_vs_linear: median(4) / median(0),
        memory_ratio_vs_norm_linear: peaks[3] as f64 / peaks[2] as f64,
        memory_ratio_vs_linear: peaks[3] as f64 / peaks[0] as f64,
        dropin_time_ratio_vs_bitlinear_no_norm: median(6) / median(5),
        launch_ratio_vs_norm_linear: launches[3]
            .zip(launches[2])
            .map(|(qat, fp)| qat as f64 / fp as f64),
        variants: names
            .iter()
            .zip(&stats)
            .zip(peaks)
            .zip(&launches)
            .map(|(((name, s), peak), launches)| Variant {
                name,
                stats: s.clone(),
                peak_step_bytes: peak,
                launches_per_step: *launches,
            })
            .collect(),
    };
    println!(
        "device {} | fake quantization {} | MLP 784-{h}-{h}-10 | batch {} | samples {} | load average {load_before:.2} -> {load_after:.2}",
        args.device,
        match (fused, ste) {
            (true, Ste::Standard) => "fused kernels".to_string(),
            (true, ste) => format!("fused kernels ({ste:?} weight STE)"),
            (false, _) => "portable tensor ops".to_string(),
        },
        args.batch,
        args.samples,
        h = args.hidden
    );
    println!(
        "{:>20} {:>10} {:>10} {:>10} {:>14} {:>9}",
        "model", "median ms", "p10 ms", "p90 ms", "peak step MB", "launches"
    );
    for v in &report.variants {
        println!(
            "{:>20} {:>10.3} {:>10.3} {:>10.3} {:>14.2} {:>9}",
            v.name,
            v.stats.median_s * 1e3,
            v.stats.p10_s * 1e3,
            v.stats.p90_s * 1e3,
            v.peak_step_bytes as f64 / 1e6,
            v.launches_per_step
                .map_or_else(|| "-".to_string(), |n| n.to_string())
        );
    }
    println!(
        "BitLinear step / Linear step: {:.2}x time, {:.2}x peak memory ({:.2}x time with a parameter-free norm)",
        report.time_ratio_vs_linear,
        report.memory_ratio_vs_linear,
        report.fixed_norm_time_ratio_vs_linear
    );
    println!(
        "BitLinear step / RMSNorm+Linear step: {:.2}x time, {:.2}x peak memory; / Linear with input gradient: {:.2}x time",
        report.time_ratio_vs_norm_linear,
        report.memory_ratio_vs_norm_linear,
        report.time_ratio_vs_linear_dx
    );
    println!(
        "drop-in Linear step / BitLinear (no norm) step: {:.2}x time",
        report.dropin_time_ratio_vs_bitlinear_no_norm
    );
    if let Some(ratio) = report.launch_ratio_vs_norm_linear {
        println!("QAT step / FP32 step: {ratio:.2}x kernel launches (vs RMSNorm+Linear)");
    }
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
