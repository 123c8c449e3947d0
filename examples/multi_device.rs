//! Trains the digits classifier (BitNet b1.58, the QAT schedules and metrics) over several
//! devices with burn-train's `MultiDevice` or `ddp`, and checks it against the run it must
//! equal: one device accumulating one micro-batch per device each step (docs/scale-out.md).
//!
//! The check compares:
//! - the optimizer steps and every quantizer's schedule values, which must be identical;
//! - the final weights, which must be equal bit for bit for `MultiDevice` over two devices (the
//!   gradients of two devices add the same in either order) and equal to 1e-5 otherwise (the
//!   order of the additions).
//!
//! It exits with an error if any of these differ.
//!
//! ```text
//! cargo run --release --example multi_device                                  # flex, twice
//! cargo run --release --example multi_device --features cuda -- --device cuda --devices 2 --strategy ddp
//! ```

use bitnet_qat::data::{DIGITS_CLASSES, DIGITS_PIXELS, DigitsDataset};
use bitnet_qat::ste::Ste;
use bitnet_qat_examples::multi::{
    DeviceRun, Strategy, float_parameters, interleave, quantizer_settings as settings,
    train_on_devices,
};
use bitnet_qat_examples::{Mlp, Precision};
use burn::tensor::Device;
use burn::train::MultiDeviceOptim;
use clap::{Parser, ValueEnum};

/// Check QAT under burn-train's multi-device strategies against single-device training.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    device: bitnet_qat_examples::cli::DeviceArg,
    /// Devices to train on: CUDA devices 0..N with `--device cuda`, else the one device N times.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// The strategy.
    #[arg(long, value_enum, default_value_t = StrategyArg::Main)]
    strategy: StrategyArg,
    /// Items per device and step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Epochs.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum StrategyArg {
    /// `MultiDevice`, optimizer on the main device.
    Main,
    /// `MultiDevice`, optimizer sharded over the devices.
    Sharded,
    /// Distributed data parallel (all-reduce; CUDA only).
    Ddp,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let base = args.device.device()?;
    let devices = device_list(&args.device.name, base, args.devices)?;
    let strategy = match args.strategy {
        StrategyArg::Main => Strategy::Multi(MultiDeviceOptim::OptimMainDevice),
        StrategyArg::Sharded => Strategy::Multi(MultiDeviceOptim::OptimSharded),
        StrategyArg::Ddp => Strategy::Ddp,
    };
    let (train, valid) = DigitsDataset::load()?.split(0.2, 7);
    // 256 items per device (the training split holds 1,437: up to 5 devices).
    let n = devices.len() * 256;
    if n > train.items().len() {
        return Err(format!("at most 5 devices: {} given", devices.len()).into());
    }
    let items = train.items()[..n].to_vec();
    let valid = valid.items().to_vec();
    let initial = |device: &Device| -> Result<Mlp, Box<dyn std::error::Error>> {
        let device = device.clone().autodiff();
        device.seed(42);
        let sizes = [DIGITS_PIXELS, 64, DIGITS_CLASSES];
        Ok(Mlp::with_ste(
            &sizes,
            Precision::Ternary,
            Ste::Standard,
            &device,
        )?)
    };
    let dir = std::env::temp_dir().join(format!("bitnet-qat-multi-device-{}", std::process::id()));
    let run = |strategy: Strategy, devices: Vec<Device>, items, name: &str| {
        let initial = initial(&devices[0])?;
        let run = DeviceRun {
            strategy,
            devices,
            batch: args.batch,
            epochs: args.epochs,
            stop_after: None,
            resume_from: None,
            lambda_ramp: 10,
            dir: &dir.join(name),
            initial,
        };
        let start = std::time::Instant::now();
        let model = train_on_devices(run, items, valid.clone())?;
        println!("{name}: {:.1} s", start.elapsed().as_secs_f64());
        Ok::<_, Box<dyn std::error::Error>>(model)
    };
    let slices = devices.len();
    let single = run(
        Strategy::Accumulated,
        vec![devices[0].clone(); slices],
        interleave(&items, slices, args.batch)?,
        "accumulated",
    )?;
    let multi = run(strategy, devices, items, "multi")?;
    let _ = std::fs::remove_dir_all(&dir);

    let flat = |m: &_| -> Vec<f32> { float_parameters(m).concat() };
    let (a, b) = (flat(&single), flat(&multi));
    // NaN for a NaN weight or for models of different sizes: never within the tolerance.
    let max_diff = if a.len() == b.len() {
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / x.abs().max(1e-3))
            .fold(0f32, |m, d| {
                if d.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(d)
                }
            })
    } else {
        f32::NAN
    };
    let exact = matches!(strategy, Strategy::Multi(_)) && slices <= 2;
    println!(
        "{:?} over {slices} devices against one device accumulating {slices} micro-batches:",
        strategy
    );
    println!(
        "  optimizer steps {} / {}; quantizer settings {}; max relative weight difference {max_diff:e} ({})",
        multi.qat.step(),
        single.qat.step(),
        if settings(&multi) == settings(&single) {
            "equal"
        } else {
            "DIFFER"
        },
        if exact {
            "must be 0"
        } else {
            "must be <= 1e-5"
        },
    );
    let ok = multi.qat.step() == single.qat.step()
        && settings(&multi) == settings(&single)
        && if exact { a == b } else { max_diff <= 1e-5 };
    if !ok {
        return Err("the multi-device run differs from the single-device run".into());
    }
    println!("  OK");
    Ok(())
}

/// CUDA devices `0..n` with `--device cuda`; otherwise `base` `n` times.
fn device_list(name: &str, base: Device, n: usize) -> Result<Vec<Device>, String> {
    if n == 0 {
        return Err("--devices must be at least 1".into());
    }
    #[cfg(feature = "cuda")]
    if name == "cuda" {
        return Ok((0..n).map(Device::cuda).collect());
    }
    let _ = name;
    Ok(vec![base; n])
}
