//! BitLinear forward and gradients against the BitNet b1.58 reference formulas.

use bitnet_qat::nn::BitLinearConfig;
use bitnet_qat::quant::QuantConfig;
use bitnet_qat::ste::Ste;
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use crate::quantizers::pseudo_random;
use crate::reference as r;
use crate::{assert_close, devices, values};

const EPS: f32 = 1e-5;

#[test]
fn forward_and_gradients_equal_the_reference() {
    let (batch, d_in, d_out) = (3, 16, 5);
    let x = pseudo_random(batch * d_in, 41);
    let w = pseudo_random(d_in * d_out, 42)
        .iter()
        .map(|v| v * 0.3)
        .collect::<Vec<_>>();
    let c = pseudo_random(batch * d_out, 43);

    // Reference forward: RMSNorm, absmax int8 per token (BitNet, arXiv:2310.11453), absmean
    // ternary weights (BitNet b1.58, arXiv:2402.17764).
    let x_n = r::rms_norm(&x, d_in, EPS);
    let x_q = r::per_row(&x_n, d_in, r::act8);
    let w_q = r::ternary(&w, 1e-5);
    let y = r::matmul(&x_q, &w_q, batch, d_in, d_out);
    // Reference backward of sum(y * c): the STEs pass the gradient straight through.
    let g_w = r::matmul(&r::transpose(&x_q, batch, d_in), &c, d_in, batch, d_out);
    let g_xq = r::matmul(&c, &r::transpose(&w_q, d_in, d_out), batch, d_out, d_in);
    let g_x = r::rms_norm_backward(&x, &g_xq, d_in, EPS);
    let g_gamma: Vec<f32> = (0..d_in)
        .map(|j| {
            (0..batch)
                .map(|b| g_xq[b * d_in + j] * x_n[b * d_in + j])
                .sum()
        })
        .collect();

    for (name, device) in devices() {
        let device = device.autodiff();
        let weight = Tensor::<2>::from_data(TensorData::new(w.clone(), [d_in, d_out]), &device);
        let layer = BitLinearConfig::new(d_in, d_out)
            .init_with(weight, None, &device)
            .unwrap();
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [batch, d_in]), &device)
            .require_grad();
        let ct = Tensor::<2>::from_data(TensorData::new(c.clone(), [batch, d_out]), &device);
        let out = layer.forward(xt.clone());
        let grads = (out.clone() * ct).sum().backward();

        assert_close(&values(out), &y, 1e-6, &format!("{name} forward"));
        let gw = values(layer.weight.base().grad(&grads).unwrap());
        assert_close(&gw, &g_w, 1e-6, &format!("{name} weight grad"));
        let gx = values(xt.grad(&grads).unwrap());
        assert_close(&gx, &g_x, 1e-6, &format!("{name} input grad"));
        let norm = layer.norm.as_ref().unwrap();
        let gg = values(norm.gamma.val().grad(&grads).unwrap());
        assert_close(&gg, &g_gamma, 1e-6, &format!("{name} gamma grad"));

        // valid(): the same quantized computation without autodiff.
        let inference = layer.valid();
        let xi = Tensor::<2>::from_data(
            TensorData::new(x.clone(), [batch, d_in]),
            &device.clone().inner(),
        );
        assert_close(
            &values(inference.forward(xi)),
            &y,
            1e-6,
            &format!("{name} valid"),
        );
    }
}

#[test]
fn configured_formats_are_used() {
    // Binary weights, 4-bit activations, no norm, clipped STE: forward equals the reference.
    let (batch, d_in, d_out) = (2, 8, 3);
    let x = pseudo_random(batch * d_in, 51);
    let w = pseudo_random(d_in * d_out, 52);
    let x_q = r::per_row(&x, d_in, |row| {
        r::int_quant(row, -8, 7, crate::reference::Stat::Max, 1e-5)
    });
    let y = r::matmul(&x_q, &r::binary(&w), batch, d_in, d_out);
    for (name, device) in devices() {
        let weight = Tensor::<2>::from_data(TensorData::new(w.clone(), [d_in, d_out]), &device);
        let layer = BitLinearConfig::new(d_in, d_out)
            .with_norm(false)
            .with_weight_quant(QuantConfig::binary())
            .with_weight_ste(Ste::Clipped)
            .with_activation_quant(Some(QuantConfig::activation(4)))
            .init_with(weight, None, &device)
            .unwrap();
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [batch, d_in]), &device);
        assert_close(&values(layer.forward(xt)), &y, 1e-6, name);
    }
}

#[test]
fn bias_and_rank_three_inputs() {
    let (d_in, d_out) = (8, 4);
    let device = burn::tensor::Device::flex();
    let layer = BitLinearConfig::new(d_in, d_out)
        .with_bias(true)
        .init(&device)
        .unwrap();
    let x = Tensor::<3>::from_data(
        TensorData::new(pseudo_random(2 * 3 * d_in, 61), [2, 3, d_in]),
        &device,
    );
    let y3 = layer.forward(x.clone());
    assert_eq!(y3.dims(), [2, 3, d_out]);
    // Per-token quantization makes rank 3 equal to the flattened rank-2 computation.
    let y2 = layer.forward(x.reshape([6, d_in]));
    assert_close(&values(y3), &values(y2), 1e-6, "rank 3");
}

#[test]
fn a_fixed_norm_takes_no_gradient_and_stays_fixed_through_a_checkpoint() {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    use burn::tensor::Device;
    let device = Device::flex().autodiff();
    let w = Tensor::<2>::from_data(
        TensorData::new(pseudo_random(48 * 20, 5), [48, 20]),
        &device,
    );
    let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(6 * 48, 6), [6, 48]), &device);
    let fixed = BitLinearConfig::new(48, 20).with_norm_affine(false);
    let layer = fixed.init_with(w.clone(), None, &device).unwrap();
    let trained = BitLinearConfig::new(48, 20)
        .init_with(w, None, &device)
        .unwrap();
    // γ = 1 either way: the same output.
    let y = layer.forward(x.clone());
    assert_eq!(values(y.clone()), values(trained.forward(x.clone())));
    let grads = y.sum().backward();
    let gamma = layer.norm.as_ref().unwrap().gamma.val();
    assert!(
        gamma.grad(&grads).is_none(),
        "a fixed norm takes no gradient"
    );
    assert!(layer.weight.base().grad(&grads).is_some());
    // Through a checkpoint: γ = 1 is stored, and stays frozen in the skeleton it loads into.
    let path = std::env::temp_dir().join(format!(
        "bitnet-qat-fixed-norm-{}.safetensors",
        std::process::id()
    ));
    layer
        .save_into(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    let mut loaded = fixed.init(&device).unwrap();
    loaded
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    std::fs::remove_file(&path).ok();
    let norm = loaded.norm.as_ref().unwrap();
    assert!(!norm.gamma.val().is_require_grad());
    assert_eq!(values(norm.gamma.val()), vec![1.0; 48]);
    assert_eq!(values(loaded.forward(x.clone())), values(layer.forward(x)));
}
