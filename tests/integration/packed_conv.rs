//! Packed convolutions: the drop-in `Conv1d`/`Conv2d` packed by `infer::pack` run the int8 ×
//! ternary kernels (a product per position for all taps, then a shift-add) with outputs equal
//! to the QAT layer's `valid()` bit for bit — strides, dilations, `Same`/asymmetric padding,
//! per-tensor and per-channel scales, channel counts across the kernels' 256-input blocks —
//! saved and loaded back; `valid()` is the training forward pass up to rounding; layers
//! without a per-position form (grouped, per-group scales) and burn-nn convolutions made
//! quantization-aware by the reparameterizer keep burn-nn's convolution over the dequantized
//! kernel, with the same outputs as before packing.

use bitnet_qat::infer::{load_packed, pack, record_bytes, save};
use bitnet_qat::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use bitnet_qat::nn::{Embedding, EmbeddingConfig, QuantScheme, QuantizerConfig};
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat::reparam::QatReparameterizer;
use burn::module::Module;
use burn::nn::{PaddingConfig1d, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Int, Tensor};

use crate::{assert_close, fresh_dir, values};

fn per_channel() -> QuantScheme {
    QuantScheme::bitnet().with_weight(Some(
        QuantConfig::ternary().with_granularity(Granularity::PerChannel),
    ))
}

#[derive(Module, Debug)]
struct Convs {
    conv: Conv2d,
}

#[test]
fn packed_conv2d_is_valid_bit_for_bit_across_geometries_and_channel_counts() {
    let device = Device::flex();
    device.seed(17);
    // (channels in, out, kernel, stride, dilation, padding, scheme); 300 channels cross a
    // 256-input block of the packed kernels, 257 leaves a partial one.
    let cases = [
        (
            3,
            8,
            [3, 3],
            [1, 1],
            [1, 1],
            PaddingConfig2d::Same,
            QuantScheme::bitnet(),
        ),
        (
            16,
            32,
            [3, 3],
            [2, 2],
            [1, 1],
            PaddingConfig2d::Same,
            per_channel(),
        ),
        (
            5,
            7,
            [3, 2],
            [2, 1],
            [1, 2],
            PaddingConfig2d::Explicit(0, 2, 1, 0),
            per_channel(),
        ),
        (
            300,
            4,
            [1, 1],
            [1, 1],
            [1, 1],
            PaddingConfig2d::Valid,
            QuantScheme::bitnet(),
        ),
        (
            257,
            6,
            [2, 2],
            [1, 2],
            [2, 1],
            PaddingConfig2d::Explicit(1, 1, 1, 1),
            per_channel(),
        ),
    ];
    for (i, (c_in, c_out, kernel, stride, dilation, padding, quant)) in
        cases.into_iter().enumerate()
    {
        let conv = Conv2dConfig::new([c_in, c_out], kernel)
            .with_stride(stride)
            .with_dilation(dilation)
            .with_padding(padding)
            .with_quant(quant)
            .init(&device);
        let x = Tensor::<4>::random([2, c_in, 11, 9], Distribution::Normal(0.0, 1.0), &device);
        let valid = conv.valid();
        let expected = valid.forward(x.clone());
        let packed = pack(&Convs { conv }).unwrap().conv;
        assert!(packed.packed_weight().is_some(), "case {i}");
        let got = packed.forward(x.clone());
        assert_eq!(got.into_data(), expected.clone().into_data(), "case {i}");

        // valid() is the training forward pass (fake-quantized activations and kernel, burn's
        // convolution) up to rounding.
        let trained = valid.clone().try_forward(x.clone()).unwrap();
        let fake = {
            let float = burn::nn::conv::Conv2d {
                weight: valid.weight.clone(),
                bias: valid.bias.clone(),
                stride: valid.stride,
                kernel_size: valid.kernel_size,
                dilation: valid.dilation,
                groups: valid.groups,
                padding: valid.padding.clone(),
            };
            let q = valid.activation_quantizer.as_ref().unwrap();
            float.forward(q.forward(x.swap_dims(1, 3)).swap_dims(1, 3))
        };
        let (trained, fake) = (values(trained), values(fake));
        assert_close(&trained, &fake, 1e-4, &format!("case {i}"));
        // ... computed another way (integer sums, tap by tap): not the same bits everywhere.
        assert_ne!(
            trained, fake,
            "case {i}: valid() did not take the per-position path"
        );
    }
}

#[test]
fn packed_conv1d_saves_loads_and_shrinks() {
    let device = Device::flex();
    device.seed(5);
    #[derive(Module, Debug)]
    struct Net {
        first: Conv1d,
        second: Conv1d,
    }
    let net = |device: &Device| Net {
        first: Conv1dConfig::new(64, 128, 5)
            .with_padding(PaddingConfig1d::Same)
            .init(device),
        second: Conv1dConfig::new(128, 96, 3)
            .with_stride(2)
            .with_padding(PaddingConfig1d::Explicit(2, 0))
            .with_quant(per_channel())
            .init(device),
    };
    let model = net(&device);
    let x = Tensor::<3>::random([3, 64, 40], Distribution::Normal(0.0, 1.0), &device);
    let run = |m: &Net| m.second.forward(m.first.forward(x.clone())).into_data();
    let expected = run(&model.valid());
    let packed = pack(&model).unwrap();
    assert_eq!(run(&packed), expected);
    let dir = fresh_dir("packed-conv1d");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("convs.bpk");
    save(packed.clone(), &path).unwrap();
    let loaded = load_packed(net(&device), &path).unwrap();
    assert_eq!(run(&loaded), expected);
    // 2-bit codes (the 320 and 384 inputs of the kernels' linear views padded to 512) against
    // f32: (128 · 512 + 96 · 512) / 4 bytes of codes against 4 · (128 · 320 + 96 · 384).
    let (f32_bytes, packed_bytes) = (
        record_bytes(model.valid()).unwrap(),
        record_bytes(packed).unwrap(),
    );
    assert!(
        f32_bytes > 8 * packed_bytes,
        "{f32_bytes} vs {packed_bytes}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn convolutions_without_a_per_position_form_keep_burn_nns_convolution() {
    let device = Device::flex();
    device.seed(8);
    let x = Tensor::<4>::random([2, 4, 7, 7], Distribution::Normal(0.0, 1.0), &device);
    // Grouped, and per-group kernel scales (groups of 256 of the 4 · 8 · 8 = 256 inputs).
    let grouped = Conv2dConfig::new([4, 6], [3, 3])
        .with_groups(2)
        .init(&device);
    let per_group = Conv2dConfig::new([4, 2], [8, 8])
        .with_padding(PaddingConfig2d::Same)
        .with_quant(QuantScheme::bitnet().with_weight(Some(
            QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 256 }),
        )))
        .init(&device);
    for (name, conv) in [("grouped", grouped), ("per-group", per_group)] {
        let expected = conv.valid().forward(x.clone()).into_data();
        let packed = pack(&Convs { conv }).unwrap().conv;
        assert!(packed.packed_weight().is_some(), "{name}");
        assert_eq!(packed.forward(x.clone()).into_data(), expected, "{name}");
    }

    // A burn-nn convolution made ternary by the reparameterizer: its packed kernel is
    // dequantized for burn-nn's own forward pass.
    #[derive(Module, Debug)]
    struct Float {
        conv: burn::nn::conv::Conv2d,
    }
    let float = Float {
        conv: burn::nn::conv::Conv2dConfig::new([4, 3], [3, 3]).init(&device),
    };
    let (model, _) = QatReparameterizer::new(QuantConfig::ternary())
        .apply(float)
        .unwrap();
    let expected = model.valid().conv.forward(x.clone()).into_data();
    let packed = pack(&model).unwrap();
    assert_eq!(packed.conv.forward(x).into_data(), expected);
}

/// Found in review: `pack` must leave quantized embedding tables (their quantizers also run
/// along the output-first axis) as they are — not refuse a model with one, nor attach a
/// transposed table to a square one.
#[test]
fn quantized_embedding_tables_are_left_unpacked() {
    let device = Device::flex();
    device.seed(12);
    #[derive(Module, Debug)]
    struct Tables {
        ternary: Embedding,
        square: Embedding,
        int8: Embedding,
    }
    let per_vector = |q: QuantConfig| {
        Some(QuantizerConfig::new(
            q.with_granularity(Granularity::PerChannel),
        ))
    };
    let tables = Tables {
        ternary: EmbeddingConfig::new(10, 6)
            .with_quant(per_vector(QuantConfig::ternary()))
            .init(&device),
        square: EmbeddingConfig::new(6, 6)
            .with_quant(per_vector(QuantConfig::ternary()))
            .init(&device),
        int8: EmbeddingConfig::new(7, 4)
            .with_quant(per_vector(QuantConfig::int(8)))
            .init(&device),
    };
    let ids = Tensor::<2, Int>::from_data([[0, 5, 3], [1, 2, 4]], &device);
    let run = |t: &Tables| {
        [
            t.ternary.forward(ids.clone()).into_data(),
            t.square.forward(ids.clone()).into_data(),
            t.int8.forward(ids.clone()).into_data(),
        ]
    };
    let packed = pack(&tables).unwrap();
    assert_eq!(run(&packed), run(&tables.valid()));
    assert!(
        packed
            .square
            .weight
            .reparameterization::<bitnet_qat::infer::PackedWeight>()
            .is_none()
    );
}
