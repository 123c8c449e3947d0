//! Conversion of trained QAT layers into packed [`TernaryLinear`] layers.

use bitnet_kernels::packed::{BLOCK, PackedTernary, TernaryScales};
use burn::nn::Linear;
use burn::tensor::Tensor;

use super::TernaryLinear;
use crate::error::{QatError, Result};
use crate::nn::{BitLinear, Quantizer};
use crate::quant::{Granularity, QuantConfig, QuantFormat, without_graph};
use crate::ste::Ste;

/// Conversion of a trained QAT module into its packed inference form.
///
/// Implemented for [`BitLinear`], for Burn's `Linear` reparameterized by
/// [`QatReparameterizer`](crate::reparam::QatReparameterizer), and for `Vec` and `Option` of
/// those. For a model of your own, implement it by converting each field — a few lines — and
/// the whole model converts with one call:
///
/// ```
/// use bitnet_qat::infer::{ToTernary, TernaryLinear};
/// use bitnet_qat::nn::{BitLinear, BitLinearConfig};
/// use bitnet_qat::Result;
/// use burn::module::Module;
///
/// #[derive(Module, Debug)]
/// struct Mlp { fc1: BitLinear, fc2: BitLinear }
/// #[derive(Module, Debug)]
/// struct PackedMlp { fc1: TernaryLinear, fc2: TernaryLinear }
///
/// impl ToTernary for Mlp {
///     type Output = PackedMlp;
///     fn to_ternary(&self) -> Result<PackedMlp> {
///         Ok(PackedMlp { fc1: self.fc1.to_ternary()?, fc2: self.fc2.to_ternary()? })
///     }
/// }
///
/// let device = burn::tensor::Device::flex();
/// let mlp = Mlp {
///     fc1: BitLinearConfig::new(8, 8).init(&device)?,
///     fc2: BitLinearConfig::new(8, 2).init(&device)?,
/// };
/// let packed = mlp.to_ternary()?;
/// assert_eq!(packed.fc2.layout()?.d_output, 2);
/// # Ok::<(), bitnet_qat::QatError>(())
/// ```
pub trait ToTernary {
    /// The packed inference module.
    type Output;

    /// Packs the trained weights. The result's outputs equal those of the QAT module after
    /// `valid()` (to float rounding).
    fn to_ternary(&self) -> Result<Self::Output>;
}

impl ToTernary for BitLinear {
    type Output = TernaryLinear;

    fn to_ternary(&self) -> Result<TernaryLinear> {
        let int8_activations = match &self.activation_quantizer {
            None => false,
            Some(q) => {
                let settings = q.try_settings()?;
                let (quant, ste) = settings.effective();
                if quant != QuantConfig::activation_int8()
                    || matches!(ste, Ste::Soft { .. })
                    || settings.lambda != 1.0
                {
                    return Err(QatError::Invalid(format!(
                        "the packed kernels quantize activations to 8-bit absmax per token \
                         (QuantConfig::activation_int8() with a hard STE at lambda 1); this \
                         layer's activation quantizer is {quant:?} with {ste:?} at lambda {}",
                        settings.lambda
                    )));
                }
                true
            }
        };
        let quantizer = self.weight_quantizer().ok_or_else(|| {
            QatError::Invalid("this BitLinear's weight has no quantizer attached".into())
        })?;
        let weight = self.weight.base();
        let packed = pack_weight(weight.clone(), quantizer)?;
        let norm = self.norm.as_ref().map(burn::module::Module::valid);
        TernaryLinear::from_packed(
            &packed,
            self.bias.as_ref().map(|b| without_graph(b.val())),
            norm,
            int8_activations,
            &weight.device().inner(),
        )
    }
}

impl ToTernary for Linear {
    type Output = TernaryLinear;

    fn to_ternary(&self) -> Result<TernaryLinear> {
        let quantizer = self
            .weight
            .reparameterization::<Quantizer>()
            .ok_or_else(|| {
                QatError::Invalid(
                    "this Linear has no QAT quantizer: apply a QatReparameterizer first".into(),
                )
            })?;
        let weight = self.weight.base();
        let packed = pack_weight(weight.clone(), quantizer)?;
        TernaryLinear::from_packed(
            &packed,
            self.bias.as_ref().map(|b| without_graph(b.val())),
            None,
            false,
            &weight.device().inner(),
        )
    }
}

impl<T: ToTernary> ToTernary for Vec<T> {
    type Output = Vec<T::Output>;

    fn to_ternary(&self) -> Result<Self::Output> {
        self.iter().map(ToTernary::to_ternary).collect()
    }
}

impl<T: ToTernary> ToTernary for Option<T> {
    type Output = Option<T::Output>;

    fn to_ternary(&self) -> Result<Self::Output> {
        self.as_ref().map(ToTernary::to_ternary).transpose()
    }
}

/// Packs a latent weight `[d_input, d_output]` with its quantizer, as the forward pass
/// quantizes it (the effective quantizer: scheduled format included): rows of the packed matrix
/// are outputs. What the packed form cannot reproduce is an error: formats other than ternary
/// and binary, the soft STE's soft forward pass, a lambda below 1 (a blend with the latent
/// weight).
pub(crate) fn pack_weight(weight: Tensor<2>, quantizer: &Quantizer) -> Result<PackedTernary> {
    let settings = quantizer.try_settings()?;
    let (config, ste) = settings.effective();
    if !matches!(config.format, QuantFormat::Ternary | QuantFormat::Binary) {
        return Err(QatError::Invalid(format!(
            "only ternary and binary weights have a packed form; this layer uses {:?}",
            config.format
        )));
    }
    if let Ste::Soft { .. } = ste {
        return Err(QatError::Invalid(
            "the soft STE's forward pass is not the hard quantizer: finish annealing and \
             switch to a hard STE before converting"
                .into(),
        ));
    }
    if settings.lambda != 1.0 {
        return Err(QatError::Invalid(format!(
            "the weight quantizer runs at lambda {} (a blend with the latent weight): convert \
             once the lambda schedule has reached 1",
            settings.lambda
        )));
    }
    let [d_in, d_out] = weight.dims();
    // The codes and scales are read off the forward pass's own output: every nonzero value of
    // a ternary or binary group is ±level, so the code is its sign and the multiplier `s` is
    // the one whose `1 / s` is the level — `code / s`, what the packed weight dequantizes to,
    // is then the quantized weight to the bit.
    let hard: Vec<f32> = to_vec(quantizer.hard_weight(weight)?.transpose()); // [d_out, d_in]
    let group = match config.granularity {
        Granularity::PerTensor => d_in * d_out,
        Granularity::PerChannel | Granularity::PerToken => d_in,
        Granularity::PerGroup { size } => {
            if !size.is_multiple_of(BLOCK) {
                return Err(QatError::Invalid(format!(
                    "packed per-group scales need groups that are a multiple of {BLOCK} \
                     inputs; this layer uses groups of {size}"
                )));
            }
            size
        }
    };
    let mut multipliers = Vec::with_capacity(hard.len() / group);
    for values in hard.chunks(group) {
        let level = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if values.iter().any(|v| *v != 0.0 && v.abs() != level) {
            return Err(QatError::Invalid(
                "the quantized weight is not ternary (values other than 0 and ±one level in \
                 a scale group)"
                    .into(),
            ));
        }
        multipliers.push(multiplier_of(level));
    }
    let values: Vec<i8> = hard
        .iter()
        .map(|v| (*v > 0.0) as i8 - (*v < 0.0) as i8)
        .collect();
    let scales = match config.granularity {
        Granularity::PerTensor => TernaryScales::PerTensor(multipliers[0]),
        Granularity::PerChannel | Granularity::PerToken => TernaryScales::PerRow(multipliers),
        Granularity::PerGroup { size } => TernaryScales::PerGroup {
            group: size,
            scales: multipliers,
        },
    };
    PackedTernary::pack(&values, d_out, d_in, scales)
        .map_err(|e| QatError::Invalid(format!("packing failed: {e}")))
}

/// The multiplier `s` whose `1 / s` (an f32 division, as the kernels and the dequantization
/// compute `code / s`) is `level`: the f32 reciprocal or one of its neighbours. The level of a
/// quantizer that divides by its scale is such a quotient, so one exists; a learned step (LSQ,
/// which multiplies by its step) may have none, and then the reciprocal is within an ulp. A
/// group of zeros gets 1.
fn multiplier_of(level: f32) -> f32 {
    if level == 0.0 {
        return 1.0;
    }
    let s = 1.0 / level;
    [
        s,
        s.next_up(),
        s.next_down(),
        s.next_up().next_up(),
        s.next_down().next_down(),
    ]
    .into_iter()
    .find(|c| 1.0 / c == level)
    .unwrap_or(s)
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 tensor data")
}
