//! The description of a fused fake quantization, shared by the CPU implementation
//! (`bitnet_qat`'s Flex backend) and the GPU kernels (`gpu`, with the `cube` feature).

/// The quantizer of the fused fake-quantization kernels: codes `qn..=qp`, the scale
/// `s = qp / max(stat, eps)` with `stat` the mean (`abs_mean`) or max of `|x|` over the whole
/// tensor or over each row of the last axis (`per_row`); `centered` is the binary format
/// (`sign(x - mean(x))`, with the mean over the same group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeQuant {
    /// The smallest code.
    pub qn: i32,
    /// The largest code.
    pub qp: i32,
    /// The lower bound of the statistic.
    pub eps: f64,
    /// `true`: `mean |x|`; `false`: `max |x|`.
    pub abs_mean: bool,
    /// `true`: one scale per row of the last axis; `false`: one per tensor.
    pub per_row: bool,
    /// `true`: the binary format, codes `sign((x - mean(x)) s)` with `sign(0) = -1`.
    pub centered: bool,
}

impl FakeQuant {
    /// A fake quantizer from its parts.
    ///
    /// # Example
    /// ```
    /// use bitnet_kernels::fake_quant::FakeQuant;
    ///
    /// // BitNet's ternary weights: codes -1..=1, absmean per tensor.
    /// let ternary = FakeQuant::new(-1, 1, 1e-5, true, false, false);
    /// assert_eq!((ternary.qn, ternary.qp), (-1, 1));
    /// ```
    pub fn new(qn: i32, qp: i32, eps: f64, abs_mean: bool, per_row: bool, centered: bool) -> Self {
        Self {
            qn,
            qp,
            eps,
            abs_mean,
            per_row,
            centered,
        }
    }
}

/// RMSNorm followed by a fake quantization per group of each row (BitLinear's input): for a row
/// `x` of length `d`, `n = (x / rms) γ` with `rms = sqrt(Σ x² / d + norm_eps)` (Burn's
/// `RmsNorm`), then `quant` applied to `n` with one scale per `group` consecutive elements
/// (`group = d`: per token). `quant.per_row` is ignored: the scales are per group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormQuant {
    /// The fake quantization of the normalized row.
    pub quant: FakeQuant,
    /// The RMSNorm epsilon.
    pub norm_eps: f64,
    /// Elements per quantization scale; divides the row length.
    pub group: usize,
}
