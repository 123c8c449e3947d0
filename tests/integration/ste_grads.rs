//! Each STE's gradient against its analytic form, on Flex and NdArray.

use bitnet_qat::nn::QuantizerConfig;
use bitnet_qat::quant::{Granularity, QuantConfig, ScaleStat};
use bitnet_qat::ste::{Ste, quantize_ste};
use burn::tensor::{Tensor, TensorData};

use crate::quantizers::pseudo_random;
use crate::reference::{self as r, Stat};
use crate::{assert_close, devices, values};

/// `x` (leaf, requires grad), the upstream gradient `c`, and `d(sum(q * c))/dx`.
fn grad_through(
    x: &[f32],
    c: &[f32],
    device: &burn::tensor::Device,
    f: impl Fn(Tensor<1>) -> Tensor<1>,
) -> (Vec<f32>, Vec<f32>) {
    let device = device.clone().autodiff();
    let xt = Tensor::<1>::from_data(x, &device).require_grad();
    let ct = Tensor::<1>::from_data(c, &device);
    let q = f(xt.clone());
    let grads = (q.clone() * ct).sum().backward();
    (values(q), values(xt.grad(&grads).unwrap()))
}

fn inputs() -> (Vec<f32>, Vec<f32>) {
    (pseudo_random(32, 21), pseudo_random(32, 22))
}

#[test]
fn standard_is_the_identity() {
    let (x, c) = inputs();
    for (name, device) in devices() {
        let (q, g) = grad_through(&x, &c, &device, |x| {
            quantize_ste(x, &QuantConfig::ternary(), &Ste::Standard).unwrap()
        });
        assert_close(&q, &r::ternary(&x, 1e-5), 1e-6, name);
        assert_close(&g, &c, 1e-6, name);
    }
}

#[test]
fn clipped_masks_outside_the_code_range() {
    let (x, c) = inputs();
    // An absmax scale maps the largest |x| to Q_p, so only its negative end can clip (-Q_p - 1
    // = Q_n at most one step out): absmean scales, which put many inputs outside, are the cases
    // that clip.
    for (config, qn, qp, st) in [
        (QuantConfig::ternary(), -1.0, 1.0, Stat::Mean),
        (
            QuantConfig::int(2).with_stat(ScaleStat::AbsMean),
            -2.0,
            1.0,
            Stat::Mean,
        ),
        (
            QuantConfig::int(4).with_stat(ScaleStat::AbsMean),
            -8.0,
            7.0,
            Stat::Mean,
        ),
    ] {
        let s = qp / r::stat(&x, st);
        let expected: Vec<f32> = x
            .iter()
            .zip(&c)
            .map(|(xv, cv)| {
                if (qn..=qp).contains(&(xv * s)) {
                    *cv
                } else {
                    0.0
                }
            })
            .collect();
        let clipped = expected.iter().filter(|g| **g == 0.0).count();
        assert!(clipped > 0 && clipped < x.len(), "{qp}: {clipped} clipped");
        for (name, device) in devices() {
            let (_, g) = grad_through(&x, &c, &device, |x| {
                quantize_ste(x, &config, &Ste::Clipped).unwrap()
            });
            assert_close(&g, &expected, 1e-6, name);
        }
    }
}

#[test]
fn soft_matches_its_derivative_and_tends_to_hard() {
    let (x, c) = inputs();
    let s = 1.0 / r::stat(&x, Stat::Mean);
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    for (name, device) in devices() {
        // T -> 0: the forward pass is the hard quantizer (no input sits on a threshold).
        let (q, _) = grad_through(&x, &c, &device, |x| {
            quantize_ste(x, &QuantConfig::ternary(), &Ste::Soft { temperature: 1e-4 }).unwrap()
        });
        assert_close(&q, &r::ternary(&x, 1e-5), 1e-5, name);
        // T = 0.5: d/dx [(-1 + sum_k sig((xs - t_k)/T)) / s] = sum_k sig'(z_k) / T.
        let t = 0.5f32;
        let (q, g) = grad_through(&x, &c, &device, |x| {
            quantize_ste(x, &QuantConfig::ternary(), &Ste::Soft { temperature: 0.5 }).unwrap()
        });
        let zs = |xv: f32| [(xv * s + 0.5) / t, (xv * s - 0.5) / t];
        let expected_q: Vec<f32> = x
            .iter()
            .map(|xv| (-1.0 + zs(*xv).iter().map(|z| sigmoid(*z)).sum::<f32>()) / s)
            .collect();
        let expected_g: Vec<f32> = x
            .iter()
            .zip(&c)
            .map(|(xv, cv)| {
                cv * zs(*xv)
                    .iter()
                    .map(|z| sigmoid(*z) * (1.0 - sigmoid(*z)) / t)
                    .sum::<f32>()
            })
            .collect();
        assert_close(&q, &expected_q, 1e-5, name);
        assert_close(&g, &expected_g, 1e-5, name);
    }
}

#[test]
fn adaptive_scales_by_the_sign_of_the_gradient() {
    let (x, c) = inputs();
    let delta = 0.2f32;
    let qp = 7.0;
    let s = qp / r::stat(&x, Stat::Max);
    let expected: Vec<f32> = x
        .iter()
        .zip(&c)
        .map(|(xv, cv)| {
            let u = (xv * s).clamp(-8.0, 7.0);
            let e = u - u.round_ties_even();
            cv * (1.0 + delta * cv.signum() * e)
        })
        .collect();
    for (name, device) in devices() {
        let (q, g) = grad_through(&x, &c, &device, |x| {
            quantize_ste(x, &QuantConfig::int(4), &Ste::Adaptive { delta: 0.2 }).unwrap()
        });
        assert_close(&q, &r::int_quant(&x, -8, 7, Stat::Max, 1e-5), 1e-6, name);
        assert_close(&g, &expected, 1e-6, name);
        // delta = 0 is the standard STE.
        let (_, g0) = grad_through(&x, &c, &device, |x| {
            quantize_ste(x, &QuantConfig::int(4), &Ste::Adaptive { delta: 0.0 }).unwrap()
        });
        assert_close(&g0, &c, 1e-6, name);
    }
}

#[test]
fn learned_step_size_gradients() {
    // A Burn weight [d_input = 6, d_output = 4], one learned step per output channel. The
    // absmean initial step clips the larger weights, so both LSQ regions are exercised.
    let (rows, cols) = (6, 4);
    let w = pseudo_random(rows * cols, 31);
    let c = pseudo_random(rows * cols, 32);
    let config = QuantConfig::int(4)
        .with_stat(ScaleStat::AbsMean)
        .with_granularity(Granularity::PerChannel);
    let (qn, qp) = (-8.0f32, 7.0f32);
    for (name, device) in devices() {
        let device = device.autodiff();
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [rows, cols]), &device)
            .require_grad();
        let quantizer = QuantizerConfig::new(config.clone())
            .with_ste(Ste::LearnedStepSize)
            .init_weight(&wt)
            .unwrap();
        let step = quantizer.step.as_ref().unwrap().val();
        let steps = values(step.clone());
        // The initial step is the non-learned one: mean|column| / Q_p.
        let expected_steps: Vec<f32> = (0..cols)
            .map(|j| {
                r::stat(
                    &(0..rows).map(|i| w[i * cols + j]).collect::<Vec<_>>(),
                    Stat::Mean,
                ) / qp
            })
            .collect();
        assert_close(&steps, &expected_steps, 1e-6, name);

        let ct = Tensor::<2>::from_data(TensorData::new(c.clone(), [rows, cols]), &device);
        let q = quantizer.forward(wt.clone());
        let grads = (q.clone() * ct).sum().backward();
        let g_w = values(wt.grad(&grads).unwrap());
        let g_step = values(step.grad(&grads).unwrap());

        let grad_scale = 1.0 / ((rows as f32) * qp).sqrt();
        let mut expected_q = vec![0.0; w.len()];
        let mut expected_gw = vec![0.0; w.len()];
        let mut expected_gs = vec![0.0; cols];
        let mut clipped = 0;
        for i in 0..rows {
            for j in 0..cols {
                let k = i * cols + j;
                let v = w[k] / steps[j];
                let vc = v.clamp(qn, qp);
                expected_q[k] = vc.round_ties_even() * steps[j];
                assert!(
                    (v - qn).abs() > 1e-3 && (v - qp).abs() > 1e-3,
                    "no input on the clip edge"
                );
                let inside = v > qn && v < qp;
                expected_gw[k] = if inside { c[k] } else { 0.0 };
                clipped += usize::from(!inside);
                let dstep = if v <= qn {
                    qn
                } else if v >= qp {
                    qp
                } else {
                    v.round_ties_even() - v
                };
                expected_gs[j] += c[k] * dstep * grad_scale;
            }
        }
        assert!(
            clipped > 0 && clipped < w.len(),
            "{name}: {clipped} clipped"
        );
        assert_close(&values(q), &expected_q, 1e-6, name);
        assert_close(&g_w, &expected_gw, 1e-6, name);
        assert_close(&g_step, &expected_gs, 1e-5, name);
    }
}
