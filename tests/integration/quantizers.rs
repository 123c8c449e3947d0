//! Golden values: every quantizer against the plain-Rust reference.

use bitnet_qat::quant::{
    Granularity, QuantConfig, QuantFormat, ScaleStat, fake_quantize, fake_quantize_weight,
};
use burn::tensor::{Tensor, TensorData};

use crate::reference::{self as r, Stat};
use crate::{assert_close, devices, values};

/// Deterministic values in about [-2, 2] (a small LCG, no dependency).
pub fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn matrix(data: &[f32], rows: usize, cols: usize, device: &burn::tensor::Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data.to_vec(), [rows, cols]), device)
}

#[test]
fn ternary_ties_round_half_to_even() {
    // mean|W| = 2, so W * s = [0.5, -0.5, 1.5, -1.5, 2.5, 0, 1, -0.5]: every tie is exact.
    let w = [1.0, -1.0, 3.0, -3.0, 5.0, 0.0, 2.0, -1.0];
    let expected = [0.0, 0.0, 2.0, -2.0, 2.0, 0.0, 2.0, 0.0];
    assert_eq!(r::ternary(&w, 1e-5), expected);
    for (name, device) in devices() {
        let q = fake_quantize(Tensor::<1>::from_data(w, &device), &QuantConfig::ternary());
        assert_eq!(values(q.unwrap()), expected, "{name}");
    }
}

#[test]
fn activation_ties_round_half_to_even() {
    // max|x| = 127, so s = 1 and the codes are round_half_even(x).
    let x = [0.5, 1.5, 2.5, -0.5, -1.5, 127.0, -127.0, 63.5];
    let expected = [0.0, 2.0, 2.0, 0.0, -2.0, 127.0, -127.0, 64.0];
    assert_eq!(r::act8(&x), expected);
    for (name, device) in devices() {
        let t = Tensor::<2>::from_data([x], &device);
        let q = fake_quantize(t, &QuantConfig::activation_int8()).unwrap();
        assert_eq!(values(q), expected, "{name}");
    }
}

#[test]
fn all_zero_tensors_stay_finite() {
    let zeros = [0.0f32; 6];
    for (name, device) in devices() {
        for (config, expected) in [
            (QuantConfig::ternary(), r::ternary(&zeros, 1e-5)),
            (QuantConfig::activation_int8(), r::act8(&zeros)),
            (
                QuantConfig::int(4),
                r::int_quant(&zeros, -8, 7, Stat::Max, 1e-5),
            ),
            (QuantConfig::binary(), r::binary(&zeros)),
        ] {
            let q = fake_quantize(Tensor::<2>::from_data([zeros], &device), &config).unwrap();
            let q = values(q);
            assert!(q.iter().all(|v| v.is_finite()), "{name} {config:?}");
            assert_close(&q, &expected, 1e-6, name);
        }
        // Ternary and integer formats give exact zeros; binary gives -eps (sign(0) = -1).
        let t = fake_quantize(
            Tensor::<1>::from_data(zeros, &device),
            &QuantConfig::ternary(),
        );
        assert_eq!(values(t.unwrap()), zeros);
    }
}

#[test]
fn a_single_huge_outlier() {
    let mut w = pseudo_random(16, 3);
    w[5] = 1.0e6;
    for (name, device) in devices() {
        let t = || Tensor::<1>::from_data(w.as_slice(), &device);
        // absmean: the outlier sets the scale; every other weight rounds to 0.
        let q = values(fake_quantize(t(), &QuantConfig::ternary()).unwrap());
        assert_close(&q, &r::ternary(&w, 1e-5), 1e-6, name);
        assert_eq!(q.iter().filter(|v| **v != 0.0).count(), 1, "{name}");
        // absmax 8-bit: likewise.
        let q = values(fake_quantize(t(), &QuantConfig::int(8)).unwrap());
        assert_close(
            &q,
            &r::int_quant(&w, -128, 127, Stat::Max, 1e-5),
            1e-6,
            name,
        );
        // absmedian is robust to it: the small weights keep non-zero codes.
        let med = QuantConfig::int(4).with_stat(ScaleStat::AbsMedian);
        let q = values(fake_quantize(t(), &med).unwrap());
        assert_close(&q, &r::int_quant(&w, -8, 7, Stat::Median, 1e-5), 1e-6, name);
        assert!(q.iter().filter(|v| **v != 0.0).count() > 8, "{name}");
    }
}

#[test]
fn every_format_and_statistic_per_tensor() {
    let x = pseudo_random(48, 11);
    let cases: Vec<(QuantConfig, Vec<f32>)> = vec![
        (QuantConfig::ternary(), r::ternary(&x, 1e-5)),
        (QuantConfig::binary(), r::binary(&x)),
        (
            QuantConfig::int(2),
            r::int_quant(&x, -2, 1, Stat::Max, 1e-5),
        ),
        (
            QuantConfig::int(4),
            r::int_quant(&x, -8, 7, Stat::Max, 1e-5),
        ),
        (
            QuantConfig::int(8),
            r::int_quant(&x, -128, 127, Stat::Max, 1e-5),
        ),
        (
            QuantConfig::int(4).with_stat(ScaleStat::AbsMean),
            r::int_quant(&x, -8, 7, Stat::Mean, 1e-5),
        ),
        (
            QuantConfig::new(QuantFormat::Ternary, ScaleStat::AbsMedian),
            r::int_quant(&x, -1, 1, Stat::Median, 1e-5),
        ),
        (
            QuantConfig::new(QuantFormat::Ternary, ScaleStat::AbsMax),
            r::int_quant(&x, -1, 1, Stat::Max, 1e-5),
        ),
    ];
    for (name, device) in devices() {
        for (config, expected) in &cases {
            let q = fake_quantize(Tensor::<1>::from_data(x.as_slice(), &device), config).unwrap();
            assert_close(&values(q), expected, 1e-6, &format!("{name} {config:?}"));
        }
    }
}

#[test]
fn per_channel_and_per_group_weights() {
    // A Burn weight [d_input = 8, d_output = 3]: channels are columns, groups run down them.
    let (rows, cols) = (8, 3);
    let w = pseudo_random(rows * cols, 5);
    let per_channel = QuantConfig::ternary().with_granularity(Granularity::PerChannel);
    let per_group = QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 4 });
    let binary_channel = QuantConfig::binary().with_granularity(Granularity::PerChannel);
    let expected_channel = r::per_column(&w, rows, cols, |c| r::ternary(c, 1e-5));
    let expected_group = r::per_column(&w, rows, cols, |c| {
        c.chunks(4)
            .flat_map(|g| r::int_quant(g, -8, 7, Stat::Max, 1e-5))
            .collect()
    });
    let expected_binary = r::per_column(&w, rows, cols, r::binary);
    for (name, device) in devices() {
        let t = || matrix(&w, rows, cols, &device);
        let q = fake_quantize_weight(t(), &per_channel).unwrap();
        assert_close(&values(q), &expected_channel, 1e-6, name);
        let q = fake_quantize_weight(t(), &per_group).unwrap();
        assert_close(&values(q), &expected_group, 1e-6, name);
        let q = fake_quantize_weight(t(), &binary_channel).unwrap();
        assert_close(&values(q), &expected_binary, 1e-6, name);
    }
}

#[test]
fn per_token_and_grouped_activations() {
    let (tokens, features) = (5, 8);
    let x = pseudo_random(tokens * features, 9);
    let expected8 = r::per_row(&x, features, r::act8);
    let expected4 = r::per_row(&x, features, |row| {
        r::int_quant(row, -8, 7, Stat::Max, 1e-5)
    });
    let grouped = QuantConfig::activation(8).with_granularity(Granularity::PerGroup { size: 4 });
    let expected_grouped = r::per_row(&x, 4, r::act8);
    for (name, device) in devices() {
        let t = || matrix(&x, tokens, features, &device);
        let q = fake_quantize(t(), &QuantConfig::activation_int8()).unwrap();
        assert_close(&values(q), &expected8, 1e-6, name);
        let q = fake_quantize(t(), &QuantConfig::activation(4)).unwrap();
        assert_close(&values(q), &expected4, 1e-6, name);
        let q = fake_quantize(t(), &grouped).unwrap();
        assert_close(&values(q), &expected_grouped, 1e-6, name);
        // Rank 3 [batch, seq, features]: per token is per last-axis row.
        let t3: Tensor<3> = t().reshape([1, tokens, features]);
        let q = fake_quantize(t3, &QuantConfig::activation_int8()).unwrap();
        assert_close(&values(q), &expected8, 1e-6, name);
    }
}
