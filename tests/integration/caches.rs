//! No cache answers with stale values: every host-side cache of this crate — the regrouped
//! codes of a packed weight, the decoded packed layouts, the decoded quantizer settings, the
//! QAT state's mirror and its codes cache — is warmed on a skeleton, then another model's
//! weights are loaded into a clone of that skeleton through each of Burn's store formats
//! (burnpack, safetensors — which keeps the skeleton's parameter ids —, and a Burn record), and
//! the loaded model must answer exactly as the model whose weights it loaded.

use bitnet_qat::infer::pack;
use bitnet_qat::nn::{BitLinear, BitLinearConfig, update_quantizers};
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat::train::{QatPlan, QatState, QatTrainModel, optimize, prepare};
use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::store::{BurnpackStore, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};

use super::values;

/// The store formats a model may be loaded from.
#[derive(Debug, Clone, Copy)]
enum Format {
    Burnpack,
    Safetensors,
    Record,
}

const FORMATS: [Format; 3] = [Format::Burnpack, Format::Safetensors, Format::Record];

/// `source`'s weights loaded into `skeleton` through `format`.
fn load_through<M: Module>(format: Format, skeleton: M, source: &M) -> M {
    match format {
        Format::Burnpack => {
            let mut out = BurnpackStore::from_bytes(None);
            source.clone().save_into(&mut out).unwrap();
            let bytes = out.get_bytes().unwrap();
            let mut model = skeleton;
            model
                .load_from(&mut BurnpackStore::from_bytes(Some(bytes)))
                .unwrap();
            model
        }
        Format::Safetensors => {
            let mut out = SafetensorsStore::from_bytes(None);
            source.clone().save_into(&mut out).unwrap();
            let bytes = out.get_bytes().unwrap();
            let mut model = skeleton;
            model
                .load_from(&mut SafetensorsStore::from_bytes(Some(bytes)))
                .unwrap();
            model
        }
        Format::Record => skeleton.load_record(source.clone().into_record()),
    }
}

/// Inputs of `width` features whose second 256-group is 100 times the first (per-group
/// activation scales matter).
fn input(width: usize, device: &Device) -> Tensor<2> {
    let x: Vec<f32> = (0..3 * width)
        .map(|i| (((i * 37) % 23) as f32 - 11.0) * if i % width < 256 { 0.01 } else { 1.0 })
        .collect();
    Tensor::from_data(TensorData::new(x, [3, width]), device)
}

/// Packed layers that run `PackedWeight::linear_grouped` (int8 activations per group of 256 on
/// 512 inputs), one per-tensor and one per-channel.
fn grouped_layers(device: &Device) -> Vec<BitLinear> {
    let activations =
        QuantConfig::activation_int8().with_granularity(Granularity::PerGroup { size: 256 });
    let layers: Vec<BitLinear> = [Granularity::PerTensor, Granularity::PerChannel]
        .into_iter()
        .map(|g| {
            BitLinearConfig::new(512, 8)
                .with_weight_quant(QuantConfig::ternary().with_granularity(g))
                .with_activation_quant(Some(activations.clone()))
                .init(device)
                .unwrap()
        })
        .collect();
    pack(&layers).unwrap()
}

fn outputs(layers: &[BitLinear], x: &Tensor<2>) -> Vec<Vec<f32>> {
    layers
        .iter()
        .map(|l| values(l.forward(x.clone())))
        .collect()
}

#[test]
fn regrouped_codes_follow_every_load() {
    let device = Device::flex();
    let x = input(512, &device);
    for format in FORMATS {
        let skeleton = grouped_layers(&device);
        // The skeleton's regrouped codes are built and cached (shared with its clones).
        let warm = outputs(&skeleton, &x);
        let other = grouped_layers(&device);
        let expected = outputs(&other, &x);
        assert_ne!(warm, expected, "two models with different weights");
        let loaded = load_through(format, skeleton.clone(), &other);
        assert_eq!(outputs(&loaded, &x), expected, "{format:?}");
        // The skeleton itself keeps its own answer.
        assert_eq!(outputs(&skeleton, &x), warm, "{format:?}: the skeleton");
    }
}

/// A packed layer with float (`int8 = false`) or int8 activations.
fn packed_layer(int8: bool, device: &Device) -> Vec<BitLinear> {
    let config =
        BitLinearConfig::new(256, 4).with_activation_quant(int8.then(QuantConfig::activation_int8));
    pack(&vec![config.init(device).unwrap()]).unwrap()
}

#[test]
fn decoded_packed_layouts_follow_every_load() {
    let device = Device::flex();
    let x = input(256, &device);
    // The layout says float activations; the loaded record's packed weight is the same shape
    // with other codes and scales: its own dequantized values must be used, whatever the
    // skeleton decoded before.
    for format in FORMATS {
        let skeleton = packed_layer(false, &device);
        let warm = outputs(&skeleton, &x);
        let other = packed_layer(false, &device);
        let expected = outputs(&other, &x);
        assert_ne!(warm, expected);
        let loaded = load_through(format, skeleton.clone(), &other);
        assert_eq!(
            loaded[0].packed_weight().unwrap().layout().unwrap(),
            other[0].packed_weight().unwrap().layout().unwrap()
        );
        assert_eq!(outputs(&loaded, &x), expected, "{format:?}");
    }
}

#[test]
fn decoded_quantizer_settings_follow_every_load() {
    let device = Device::flex();
    let x = input(256, &device);
    let layer = |lambda: f64| {
        let layer = vec![BitLinearConfig::new(256, 4).init(&device).unwrap()];
        update_quantizers(layer, |_, s| Ok(s.clone().with_lambda(lambda))).unwrap()
    };
    for format in FORMATS {
        // The skeleton at lambda 0.25 (its settings decoded and cached), the source at 1, with
        // the same weights: only the recorded settings differ.
        let source = layer(1.0);
        let skeleton =
            update_quantizers(source.clone(), |_, s| Ok(s.clone().with_lambda(0.25))).unwrap();
        let warm = outputs(&skeleton, &x);
        let expected = outputs(&source, &x);
        assert_ne!(warm, expected);
        let loaded = load_through(format, skeleton.clone(), &source);
        assert_eq!(
            loaded[0].weight_quantizer().unwrap().settings().lambda,
            1.0,
            "{format:?}"
        );
        assert_eq!(outputs(&loaded, &x), expected, "{format:?}");
    }
}

#[derive(Module, Debug)]
struct Net {
    fc: BitLinear,
    qat: QatState,
}

impl QatTrainModel for Net {
    fn qat_state(&self) -> &QatState {
        &self.qat
    }
    fn qat_state_mut(&mut self) -> &mut QatState {
        &mut self.qat
    }
}

/// The loss of a batch: outputs against fixed signs, so that each step moves the weights
/// differently and some codes flip.
fn loss(net: &Net, device: &Device) -> Tensor<1> {
    let x: Vec<f32> = (0..2 * 64)
        .map(|i| ((i * 29 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let y: Vec<f32> = (0..2 * 16)
        .map(|i| if i % 3 == 0 { 1.0 } else { -1.0 })
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(x, [2, 64]), device);
    let y = Tensor::<2>::from_data(TensorData::new(y, [2, 16]), device);
    (net.fc.forward(x) * y).sum()
}

/// `steps` SGD steps of a fresh net (statistics measured every step).
fn trained(steps: usize, device: &Device) -> Net {
    let mut net = prepare(Net {
        fc: BitLinearConfig::new(64, 16).init(device).unwrap(),
        qat: QatPlan::new().with_stats_every(1).init(device),
    })
    .unwrap();
    let mut optim = net.qat.optimizer(&net, SgdConfig::new().build());
    for _ in 0..steps {
        let grads = GradientsParams::from_grads(loss(&net, device).backward(), &net);
        net = optimize(net, &mut optim, 0.02, grads);
    }
    net
}

#[test]
fn the_qat_state_mirror_and_codes_cache_follow_every_load() {
    let device = Device::flex().autodiff();
    for format in FORMATS {
        // Two runs at the same step with different weights: the skeleton's mirror and codes
        // cache hold its own step-2 state when the other run's checkpoint is loaded.
        let skeleton = trained(2, &device);
        let other = trained(2, &device);
        let empty = GradientsParams::new();
        let expected = other.qat.stats(&other, &empty, &other);
        let warm = skeleton.qat.stats(&skeleton, &empty, &skeleton);
        assert_ne!(warm.weights, expected.weights);
        let loaded = load_through(format, skeleton.clone(), &other);
        assert_eq!(
            loaded.qat.stats(&loaded, &empty, &loaded),
            expected,
            "{format:?}"
        );
        // One more step of each: the flip rate is measured against the loaded model's own codes
        // (the skeleton's cached step-2 codes would give another rate).
        let step = |net: Net| {
            let mut optim = net.qat.optimizer(&net, SgdConfig::new().build());
            let grads = GradientsParams::from_grads(loss(&net, &device).backward(), &net);
            let net = optimize(net, &mut optim, 0.02, grads);
            net.qat.stats(&net, &GradientsParams::new(), &net)
        };
        let (a, b) = (step(loaded), step(other.clone()));
        assert!(b.flip_rate > 0.0, "{format:?}: some codes flip");
        assert_eq!(a, b, "{format:?}");
    }
}
