//! The packed form of one quantized weight, exactly as its quantizer's forward pass
//! quantizes it: what [`pack`](super::pack) and [`TernaryLinear`](super::TernaryLinear)'s
//! constructors build on.

use bitnet_kernels::burn_ext::ScaleKind;
use bitnet_kernels::packed::{BLOCK, PackedTernary};
use burn::tensor::Tensor;

use super::packed_weight::ternary_scales;
use crate::error::{QatError, Result};
use crate::nn::{Quantizer, QuantizerSettings};
use crate::quant::{Granularity, QuantFormat};
use crate::ste::Ste;

/// Packs a latent weight `[d_input, d_output]` with its quantizer, as the forward pass
/// quantizes it (the effective quantizer: scheduled format included): rows of the packed matrix
/// are outputs. What the packed form cannot reproduce is a [`QatError::Unsupported`] without a
/// layer path (the caller adds it with [`QatError::at`]): formats other than ternary and
/// binary, the soft STE's soft forward pass, a lambda below 1 (a blend with the latent weight),
/// per-group scales whose groups are not whole 256-blocks, a weight too large to pack.
pub(crate) fn pack_weight(weight: Tensor<2>, quantizer: &Quantizer) -> Result<PackedTernary> {
    let settings = quantizer.try_settings()?;
    check_packable(&settings)?;
    let (config, _) = settings.effective();
    let [d_in, d_out] = weight.dims();
    // The codes and scales are read off the forward pass's own output: every nonzero value of
    // a ternary or binary group is ±level, so the code is its sign and the multiplier `s` is
    // the one whose `1 / s` is the level — `code / s`, what the packed weight dequantizes to,
    // is then the quantized weight to the bit.
    let hard: Vec<f32> = to_vec(quantizer.hard_weight(weight)?.transpose())?; // [d_out, d_in]
    let kind = scale_kind(config.granularity);
    let group = match kind {
        ScaleKind::PerTensor => d_in * d_out,
        ScaleKind::PerRow => d_in,
        ScaleKind::PerGroup(size) => {
            if !size.is_multiple_of(BLOCK) {
                return Err(QatError::unsupported(
                    "",
                    format!(
                        "packed per-group scales need groups that are a multiple of {BLOCK} \
                         inputs; this layer uses groups of {size}"
                    ),
                ));
            }
            size
        }
    };
    let mut multipliers = Vec::with_capacity(hard.len() / group);
    for values in hard.chunks(group) {
        let level = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if values.iter().any(|v| *v != 0.0 && v.abs() != level) {
            return Err(QatError::unsupported(
                "",
                "the quantized weight is not ternary (values other than 0 and ±one level in a \
                 scale group)",
            ));
        }
        multipliers.push(multiplier_of(level));
    }
    let values: Vec<i8> = hard
        .iter()
        .map(|v| (*v > 0.0) as i8 - (*v < 0.0) as i8)
        .collect();
    PackedTernary::pack(&values, d_out, d_in, ternary_scales(kind, multipliers))
        .map_err(|e| QatError::unsupported("", format!("the packed format refuses it: {e}")))
}

/// Whether the weight quantizer of `settings` has a packed form, which reproduces it exactly:
/// ternary or binary values (the effective format), a hard forward pass (no soft STE), lambda 1.
///
/// # Errors
/// [`QatError::Unsupported`] (without a layer path) saying which of the three it is not.
pub(crate) fn check_packable(settings: &QuantizerSettings) -> Result<()> {
    let (config, ste) = settings.effective();
    if !matches!(config.format, QuantFormat::Ternary | QuantFormat::Binary) {
        return Err(QatError::unsupported(
            "",
            format!(
                "only ternary and binary weights have a packed form; this layer uses {:?}",
                config.format
            ),
        ));
    }
    if let Ste::Soft { .. } = ste {
        return Err(QatError::unsupported(
            "",
            "the soft STE's forward pass is not the hard quantizer: finish annealing and \
             switch to a hard STE before converting",
        ));
    }
    if settings.lambda != 1.0 {
        return Err(QatError::unsupported(
            "",
            format!(
                "the weight quantizer runs at lambda {} (a blend with the latent weight): \
                 convert once the lambda schedule has reached 1",
                settings.lambda
            ),
        ));
    }
    Ok(())
}

/// The packed scale layout of a weight quantized with `granularity` (scales along the input
/// axis): one per tensor, one per output row, or one per group of inputs of a row.
pub(crate) fn scale_kind(granularity: Granularity) -> ScaleKind {
    match granularity {
        Granularity::PerTensor => ScaleKind::PerTensor,
        Granularity::PerChannel | Granularity::PerToken => ScaleKind::PerRow,
        Granularity::PerGroup { size } => ScaleKind::PerGroup(size),
    }
}

/// The multiplier `s` whose `1 / s` (an f32 division, as the kernels and the dequantization
/// compute `code / s`) is `level`: the f32 reciprocal or one of its neighbours. The level of a
/// quantizer that divides by its scale is such a quotient, so one exists; a learned step (LSQ,
/// which multiplies by its step) may have none, and then the reciprocal is within an ulp. A
/// group of zeros gets 1.
pub(crate) fn multiplier_of(level: f32) -> f32 {
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

fn to_vec(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data()
        .try_cast_as::<f32>()
        .and_then(|d| d.try_to_vec())
        .map_err(|e| QatError::device("the quantized weight", e))
}
