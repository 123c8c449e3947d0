//! [`PackedWeight`]: a packed ternary weight (2-bit codes and scales) that describes itself in
//! its record, usable as a layer's field or attached to any layer's weight as a Burn
//! reparameterization.

use std::sync::{Arc, LazyLock, Mutex};

use bitnet_kernels::burn_ext::{ScaleKind, ternary_matmul, ternary_matmul_float, unpack_codes};
use bitnet_kernels::packed::{
    BLOCK, MAX_K, PackedTernary, TernaryScales, padded_cols, words_per_row,
};
use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
    Param, ParamId, Reparameterization,
};
use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};

use crate::check::check_last_dim;
use crate::error::{QatError, Result};
use crate::recorded::{IdCache, Recorded, check_header, param_of, push_u64, read_back, u64_at};

/// What a [`PackedWeight`] holds: the shape of the weight, how its scales are laid out, and
/// whether the layer it belongs to quantizes its activations to int8 per token (BitNet) before
/// the product.
///
/// # Example
/// ```
/// use bitnet_kernels::burn_ext::ScaleKind;
/// use bitnet_qat::infer::PackedLayout;
///
/// let layout = PackedLayout::new(512, 64, ScaleKind::PerGroup(256), true).unwrap();
/// assert_eq!(layout.scale_count(), 64 * 2);
/// assert!(PackedLayout::new(500, 64, ScaleKind::PerGroup(256), true).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayout {
    /// Input features (the length of a packed row).
    pub d_input: usize,
    /// Output features (packed rows).
    pub d_output: usize,
    /// The scale layout.
    pub scales: ScaleKind,
    /// Whether activations are quantized to int8 per token (absmax, BitNet) for the product;
    /// otherwise they stay floats.
    pub int8_activations: bool,
}

impl PackedLayout {
    /// A checked layout.
    ///
    /// # Errors
    /// [`QatError::Config`] naming the field: a zero size, an input size above the packed
    /// format's maximum (2^18), more than [`MAX_PACKED_WEIGHTS`] weights, or groups that are
    /// not a multiple of 256 dividing the input size.
    pub fn new(
        d_input: usize,
        d_output: usize,
        scales: ScaleKind,
        int8_activations: bool,
    ) -> Result<Self> {
        let layout = Self {
            d_input,
            d_output,
            scales,
            int8_activations,
        };
        layout.validate()?;
        Ok(layout)
    }

    fn validate(&self) -> Result<()> {
        if !(1..=MAX_K).contains(&self.d_input) {
            return Err(QatError::config(
                "PackedLayout.d_input",
                self.d_input,
                format!("1..={MAX_K} (the packed kernels' largest reduction)"),
            ));
        }
        // Every size derived from the layout (codes, scales, bytes) is computed from these two
        // checked products, so none of them overflows.
        let weights = self.d_output.checked_mul(padded_cols(self.d_input));
        if self.d_output == 0 || weights.is_none_or(|n| n > MAX_PACKED_WEIGHTS) {
            return Err(QatError::config(
                "PackedLayout.d_output",
                self.d_output,
                format!(
                    "at least 1, and at most {MAX_PACKED_WEIGHTS} weights with {} inputs",
                    self.d_input
                ),
            ));
        }
        if let ScaleKind::PerGroup(group) = self.scales
            && !(group > 0 && group.is_multiple_of(BLOCK) && self.d_input.is_multiple_of(group))
        {
            return Err(QatError::config(
                "PackedLayout.scales",
                format!("groups of {group}"),
                format!(
                    "groups that are a multiple of {BLOCK} dividing the {} inputs",
                    self.d_input
                ),
            ));
        }
        Ok(())
    }

    /// The number of scales: 1, `d_output`, or `d_output * d_input / group`.
    pub fn scale_count(&self) -> usize {
        match self.scales {
            ScaleKind::PerTensor => 1,
            ScaleKind::PerRow => self.d_output,
            ScaleKind::PerGroup(group) => self.d_output * (self.d_input / group),
        }
    }

    /// Whether a parameter of shape `shape` is what this layout packs: a matrix in Burn's layout
    /// `[d_input, d_output]`, or a convolution kernel `[d_output, k...]` whose linear view
    /// ([`crate::nn::linear_view`]) has `d_input` rows (`k...` multiplying to `d_input`).
    pub fn fits(&self, shape: &[usize]) -> bool {
        match shape {
            [d_input, d_output] => (*d_input, *d_output) == (self.d_input, self.d_output),
            [d_output, rest @ ..] if !rest.is_empty() => {
                *d_output == self.d_output
                    && rest
                        .iter()
                        .try_fold(1usize, |n, k| n.checked_mul(*k))
                        .is_some_and(|n| n == self.d_input)
            }
            _ => false,
        }
    }

    /// The shape of the packed codes: `[d_output, words_per_row(d_input)]`.
    pub fn codes_shape(&self) -> [usize; 2] {
        [self.d_output, words_per_row(self.d_input)]
    }

    fn encode(&self) -> Vec<i64> {
        let mut out = vec![MAGIC, VERSION];
        push_u64(&mut out, self.d_input as u64);
        push_u64(&mut out, self.d_output as u64);
        let (kind, group) = match self.scales {
            ScaleKind::PerTensor => (0, 0),
            ScaleKind::PerRow => (1, 0),
            ScaleKind::PerGroup(group) => (2, group as u64),
        };
        out.push(kind);
        push_u64(&mut out, group);
        out.push(self.int8_activations as i64);
        debug_assert_eq!(out.len(), ENCODED_LEN);
        out
    }

    /// The layout recorded in `values` (a [`PackedWeight`]'s layout parameter), checked: a
    /// [`QatError::Record`] (without a path, which the caller adds) naming the field.
    pub(crate) fn decode_record(values: &[i64]) -> Result<Self> {
        check_header(values, ENCODED_LEN, MAGIC, VERSION, WHAT)?;
        let bad = |what: String| QatError::record("", format!("{WHAT}: {what}"));
        let size = |i, name| {
            usize::try_from(u64_at(values, i))
                .map_err(|_| bad(format!("{name} {} is too large", u64_at(values, i))))
        };
        let scales = match (values[10], size(11, "group")?) {
            (0, 0) => ScaleKind::PerTensor,
            (1, 0) => ScaleKind::PerRow,
            (2, group) if group > 0 => ScaleKind::PerGroup(group),
            (kind, group) => {
                return Err(bad(format!(
                    "scale layout {kind} with group {group} (0 per tensor, 1 per row, 2 per \
                     group of a positive size)"
                )));
            }
        };
        let int8_activations = match values[15] {
            0 => false,
            1 => true,
            v => return Err(bad(format!("activation mode {v} (0 float, 1 int8)"))),
        };
        Self::new(
            size(2, "d_input")?,
            size(6, "d_output")?,
            scales,
            int8_activations,
        )
        .map_err(|e| bad(e.to_string()))
    }
}

/// The layout a recorded `layout` parameter holds (host cache or one read-back), checked
/// against the shapes of the codes and scales it describes.
pub(crate) fn recorded_layout(
    param: &Param<Tensor<1, Int>>,
    codes: [usize; 2],
    scales: usize,
) -> Result<PackedLayout> {
    let layout = match CACHE.recall(param.id) {
        Some(layout) => layout,
        None => {
            let layout = PackedLayout::decode_record(&read_back(param, WHAT)?)?;
            CACHE.remember(param.id, layout);
            layout
        }
    };
    checked_layout(layout, codes, scales)
}

fn checked_layout(layout: PackedLayout, codes: [usize; 2], scales: usize) -> Result<PackedLayout> {
    if codes != layout.codes_shape() || scales != layout.scale_count() {
        return Err(QatError::record(
            "",
            format!(
                "packed weight: codes {codes:?} and {scales} scales do not match the recorded \
                 layout {layout:?} (codes {:?}, {} scales)",
                layout.codes_shape(),
                layout.scale_count()
            ),
        ));
    }
    Ok(layout)
}

/// The codes (u32 words, `[rows, words_per_row(cols)]`) and scales of `packed` as tensors on
/// `device`.
fn device_tensors(packed: &PackedTernary, device: &Device) -> (Tensor<2, Int>, Tensor<1>) {
    let codes = Tensor::<2, Int>::from_data(
        TensorData::new(
            packed.words().to_vec(),
            [packed.rows(), words_per_row(packed.cols())],
        ),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
    );
    let values = packed.scales().values().to_vec();
    let n = values.len();
    // f32 whatever the device's float type: the scales are the quantizer's exact ones.
    let scales = Tensor::<1>::from_data(
        TensorData::new(values, [n]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::F32),
    );
    (codes, scales)
}

/// The scales of `kind` from their flat values.
pub(crate) fn ternary_scales(kind: ScaleKind, values: Vec<f32>) -> TernaryScales {
    match kind {
        // No value (a malformed record) gives a NaN scale, which the packed format refuses.
        ScaleKind::PerTensor => {
            TernaryScales::PerTensor(values.first().copied().unwrap_or(f32::NAN))
        }
        ScaleKind::PerRow => TernaryScales::PerRow(values),
        ScaleKind::PerGroup(group) => TernaryScales::PerGroup {
            group,
            scales: values,
        },
    }
}

/// Packed codes `[d_output, words]` and scales of `layout` read back to the host, checked by
/// [`PackedTernary::from_parts`]: codes must be u32 and scales f32 (as this crate makes them and
/// the kernels read them; a record may bring anything).
pub(crate) fn host_packed(
    layout: PackedLayout,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
) -> Result<PackedTernary> {
    let bad = |e: &dyn std::fmt::Display| QatError::record("", format!("packed weight: {e}"));
    let (codes, scales) = (codes.into_data(), scales.into_data());
    if codes.dtype() != DType::U32 || scales.dtype() != DType::F32 {
        return Err(bad(&format!(
            "codes of type {:?} and scales of type {:?} (u32 and f32 expected)",
            codes.dtype(),
            scales.dtype()
        )));
    }
    let words = codes
        .try_into_vec::<u32>()
        .map_err(|e| QatError::device("packed codes", e))?;
    let values = scales
        .try_into_vec::<f32>()
        .map_err(|e| QatError::device("packed scales", e))?;
    PackedTernary::from_parts(
        layout.d_output,
        layout.d_input,
        words,
        ternary_scales(layout.scales, values),
    )
    .map_err(|e| bad(&e))
}

/// A kernel's refusal of a packed weight's tensors: codes or scales that its checked layout
/// does not describe, or invalid scales (a record that [`crate::check::check_model`] refuses).
fn kernel_error(e: bitnet_kernels::KernelError) -> QatError {
    QatError::record("", format!("packed weight: {e}"))
}

/// "PW", the tag of the encoding.
const MAGIC: i64 = 0x5057;
const VERSION: i64 = 1;
const ENCODED_LEN: usize = 16;
const WHAT: &str = "packed weight layout";

/// The most weights (rows times inputs padded to whole 256-blocks) a [`PackedLayout`] may
/// describe: 2^40, 256 GiB of 2-bit codes. A layout read from a file is also bounded by the
/// bytes that back it (see [`crate::infer::load_packed`]).
pub const MAX_PACKED_WEIGHTS: usize = 1 << 40;

/// Decoded layouts by parameter id (see `crate::recorded`).
static CACHE: LazyLock<IdCache<PackedLayout>> = LazyLock::new(|| IdCache::new(1 << 14));

/// A ternary (or binary) weight packed 16 codes per `u32` ([`bitnet_kernels::packed`]) with its
/// scales and its [`PackedLayout`], all recorded: a burnpack or safetensors record of it is the
/// 2-bit codes, the scales and sixteen integers, and loading a record of another layout gives
/// that layout, never a scale read the wrong way.
///
/// As a [`Reparameterization`] it stands in for a layer's weight (`[d_input, d_output]`, Burn's
/// layout, or a convolution kernel whose linear view that is): `weight.val()` is the dequantized weight, so any layer runs with it unchanged;
/// [`BitLinear`](crate::nn::BitLinear) and [`TernaryLinear`](super::TernaryLinear) run the
/// packed kernels instead ([`PackedWeight::matmul`]). [`crate::infer::pack`] attaches one to
/// every quantized weight of a model.
#[derive(Module, Debug)]
pub struct PackedWeight {
    /// Packed codes `[d_output, words_per_row(d_input)]`, dtype u32; code `c` is the value
    /// `c - 1`.
    pub codes: Param<Tensor<2, Int>>,
    /// The multipliers `s` (`w = value / s`), laid out as the layout says.
    pub scales: Param<Tensor<1>>,
    /// The recorded [`PackedLayout`].
    layout: Recorded,
    /// The layout of the parameter id it was built with.
    #[module(skip)]
    host: Option<(ParamId, PackedLayout)>,
    /// The codes regrouped for [`PackedWeight::linear_grouped`], built on first use (a cache:
    /// nothing is recorded, every map empties it).
    grouped: GroupedCodes,
}

/// Sixteen codes 1 (the weight 0) in one word.
const ZERO_WORD: u32 = 0x5555_5555;

/// The regrouped codes of a [`PackedWeight`] and the codes parameter id and group they were
/// built from. Shared by clones; freed with the last of them.
///
/// A module of its own so that it cannot outlive the codes it was built from: every
/// [`Module::map`] of the weight — a load from any store (burnpack, safetensors, a Burn
/// record), which may write new codes under the old parameter id, a move to another device, a
/// fork — gives the weight an empty cache, and a parameter of another id is never answered
/// from it.
#[derive(Clone, Debug, Default)]
struct GroupedCodes(Arc<Mutex<Option<Regrouped>>>);

impl Module for GroupedCodes {
    fn collect_devices(&self, devices: Devices) -> Devices {
        devices
    }

    fn fork(self, _device: &Device) -> Self {
        Self::default()
    }

    fn to_device(self, _device: &Device) -> Self {
        Self::default()
    }

    fn train(self) -> Self {
        self
    }

    fn valid(&self) -> Self {
        self.clone()
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper>(self, _mapper: &mut M) -> Self {
        Self::default()
    }
}

impl ModuleDisplayDefault for GroupedCodes {
    fn content(&self, _content: Content) -> Option<Content> {
        None
    }
}

impl ModuleDisplay for GroupedCodes {}

/// The codes parameter id and the regrouping, and the codes (and scales, if they change)
/// regrouped for them.
type Regrouped = (ParamId, Regrouping, Tensor<2, Int>, Option<Tensor<1>>);

/// How the codes of a [`PackedWeight`] are regrouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Regrouping {
    /// Group by group of inputs ([`PackedWeight::linear_grouped`]).
    Groups(usize),
    /// Kernel tap by tap ([`PackedWeight::linear_by_taps`]).
    Taps(usize),
}

impl PackedWeight {
    /// Packed weights on `device` from packed rows (rows are outputs).
    ///
    /// # Errors
    /// As [`PackedLayout::new`].
    pub fn from_packed(
        packed: &PackedTernary,
        int8_activations: bool,
        device: &Device,
    ) -> Result<Self> {
        let scales = match packed.scales() {
            TernaryScales::PerTensor(_) => ScaleKind::PerTensor,
            TernaryScales::PerRow(_) => ScaleKind::PerRow,
            TernaryScales::PerGroup { group, .. } => ScaleKind::PerGroup(*group),
        };
        let layout = PackedLayout::new(packed.cols(), packed.rows(), scales, int8_activations)?;
        let (codes, scales) = device_tensors(packed, device);
        Ok(Self::from_parts(codes, scales, layout, device))
    }

    /// A packed weight of `layout` whose every weight is 0 (code 1), with scales 1, on
    /// `device`: a skeleton to load a record into, with no f32 copy of the weight.
    ///
    /// # Example
    /// ```
    /// use bitnet_kernels::burn_ext::ScaleKind;
    /// use bitnet_qat::infer::{PackedLayout, PackedWeight};
    /// use burn::tensor::Device;
    ///
    /// let layout = PackedLayout::new(256, 2, ScaleKind::PerRow, false).unwrap();
    /// let w = PackedWeight::zeros(layout, &Device::flex());
    /// let dense = w.dequantize().unwrap().into_data().to_vec::<f32>().unwrap();
    /// assert!(dense.iter().all(|v| *v == 0.0));
    /// ```
    pub fn zeros(layout: PackedLayout, device: &Device) -> Self {
        let codes = Tensor::<2, Int>::full(
            layout.codes_shape(),
            ZERO_WORD as i64,
            TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
        );
        let scales = Tensor::<1>::ones(
            [layout.scale_count()],
            TensorCreationOptions::new(device.clone()).with_dtype(DType::F32),
        );
        Self::from_parts(codes, scales, layout, device)
    }

    fn from_parts(
        codes: Tensor<2, Int>,
        scales: Tensor<1>,
        layout: PackedLayout,
        device: &Device,
    ) -> Self {
        let param = param_of(layout.encode(), device);
        CACHE.remember(param.id, layout);
        Self {
            codes: Param::initialized(ParamId::new(), codes),
            // Not trained: a plain (non-autodiff) parameter.
            scales: Param::initialized(ParamId::new(), scales),
            host: Some((param.id, layout)),
            grouped: GroupedCodes::default(),
            layout: param,
        }
    }

    /// The recorded layout, checked against the codes and scales it describes.
    ///
    /// # Errors
    /// [`QatError::Record`] for a malformed layout or tensors of other shapes (a corrupted or
    /// mixed-up record).
    pub fn layout(&self) -> Result<PackedLayout> {
        if let Some((id, layout)) = &self.host
            && *id == self.layout.id
        {
            return checked_layout(
                *layout,
                self.codes.shape().dims::<2>(),
                self.scales.shape().num_elements(),
            );
        }
        recorded_layout(
            &self.layout,
            self.codes.shape().dims::<2>(),
            self.scales.shape().num_elements(),
        )
    }

    /// `x · W` for `x [m, d_input]`, `[m, d_output]`, with the packed kernels of the device
    /// (SIMD on CPU devices, CubeCL on GPUs): int8 per-token activations when the layout says
    /// so, float activations otherwise. No gradient flows through it.
    ///
    /// # Errors
    /// As [`PackedWeight::layout`]; [`QatError::Shape`] for an input of another width.
    pub fn matmul(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let int8 = self.layout()?.int8_activations;
        self.matmul_with(x, int8)
    }

    /// [`PackedWeight::matmul`] with the activation mode chosen by the caller (a
    /// [`BitLinear`](crate::nn::BitLinear) decides by its own activation quantizer).
    ///
    /// # Errors
    /// As [`PackedWeight::matmul`].
    pub fn matmul_with(&self, x: Tensor<2>, int8_activations: bool) -> Result<Tensor<2>> {
        self.linear(x, int8_activations, None)
    }

    /// `x · W (+ bias)` along the last axis of `x` (any rank), as [`PackedWeight::matmul_with`]
    /// computes it: the forward pass of a packed layer.
    ///
    /// # Errors
    /// As [`PackedWeight::matmul`].
    pub fn linear<const D: usize>(
        &self,
        x: Tensor<D>,
        int8_activations: bool,
        bias: Option<Tensor<1>>,
    ) -> Result<Tensor<D>> {
        let layout = self.layout()?;
        self.rows(x, layout, bias, |x| {
            let (codes, scales) = (self.codes.val(), self.scales.val());
            if int8_activations {
                ternary_matmul(x, codes, scales, layout.d_input, layout.scales)
            } else {
                ternary_matmul_float(x, codes, scales, layout.d_input, layout.scales)
            }
            .map_err(kernel_error)
        })
    }

    /// `product` of the rows `[m, d_input]` of `x` (any rank, checked), plus `bias`, in the
    /// shape of `x` with `d_output` features.
    fn rows<const D: usize>(
        &self,
        x: Tensor<D>,
        layout: PackedLayout,
        bias: Option<Tensor<1>>,
        product: impl FnOnce(Tensor<2>) -> Result<Tensor<2>>,
    ) -> Result<Tensor<D>> {
        check_last_dim(&x, layout.d_input, "packed matmul input")?;
        let mut out_dims = x.dims();
        out_dims[D - 1] = layout.d_output;
        let y = product(x.reshape([-1, layout.d_input as i64]))?;
        let y = match bias {
            Some(b) => y + b.unsqueeze(),
            None => y,
        };
        Ok(y.reshape(out_dims))
    }

    /// `x · W (+ bias)` with the activations quantized to int8 per group of `group` inputs
    /// (a multiple of 256 dividing `d_input`; weights with one scale per tensor or per row):
    /// each group's integer sums scaled by its two scales, the groups' results added in order —
    /// how llama.cpp computes a ternary product on the CPU (`Q8_K` blocks of 256). `None` when
    /// the group or the weight's scales do not allow it.
    ///
    /// # Errors
    /// As [`PackedWeight::linear`].
    pub fn linear_grouped<const D: usize>(
        &self,
        x: Tensor<D>,
        group: usize,
        bias: Option<Tensor<1>>,
    ) -> Result<Option<Tensor<D>>> {
        let layout = self.layout()?;
        let grouped = group > 0
            && group.is_multiple_of(BLOCK)
            && layout.d_input.is_multiple_of(group)
            && !matches!(layout.scales, ScaleKind::PerGroup(_));
        if !grouped {
            return Ok(None);
        }
        if group == layout.d_input {
            return self.linear(x, true, bias).map(Some);
        }
        let rows = layout.d_output;
        let codes = self.grouped_codes(group, layout);
        self.rows(x, layout, bias, |x| {
            let mut sum: Option<Tensor<2>> = None;
            for g in 0..layout.d_input / group {
                let part = ternary_matmul(
                    x.clone().narrow(1, g * group, group),
                    codes.clone().narrow(0, g * rows, rows),
                    self.scales.val(),
                    group,
                    layout.scales,
                )
                .map_err(kernel_error)?;
                sum = Some(match sum {
                    Some(s) => s + part,
                    None => part,
                });
            }
            sum.ok_or_else(|| QatError::record("", "a packed weight without inputs"))
        })
        .map(Some)
    }

    /// The codes regrouped for [`PackedWeight::linear_grouped`]: `[groups · d_output,
    /// words_per_row(group)]`, group `g`'s packed rows at rows `g · d_output..`, so each group's
    /// codes are one contiguous run the kernels read in place. Built once per weight (a copy of
    /// the codes, kept with the weight).
    fn grouped_codes(&self, group: usize, layout: PackedLayout) -> Tensor<2, Int> {
        let key = Regrouping::Groups(group);
        let mut cached = self.grouped.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, k, codes, _)) = &*cached
            && (*id, *k) == (self.codes.id, key)
        {
            return codes.clone();
        }
        let (rows, groups, words) = (
            layout.d_output,
            layout.d_input / group,
            words_per_row(group),
        );
        let codes: Tensor<2, Int> = self
            .codes
            .val()
            .reshape([rows, groups, words])
            .swap_dims(0, 1)
            .reshape([groups * rows, words]);
        *cached = Some((self.codes.id, key, codes.clone(), None));
        codes
    }

    /// `x · K_t` for every tap `t` of a packed convolution kernel, with int8 activations per row:
    /// the kernel `[d_output, channels, taps]` (its linear view: `d_input = channels · taps`,
    /// channel-major) as the matrix of `channels` inputs and `taps · d_output` outputs, output
    /// `t · d_output + o` being tap `t` of output channel `o`. For rows `x` `[m, channels]`
    /// (one position's channels each), `[m, taps · d_output]` — what a convolution adds up, tap
    /// by tap, from each position (see [`crate::nn::conv`]). The re-laid codes are built once (on
    /// the host) and kept with the weight. `None` for per-group scales (no per-tap form).
    ///
    /// # Errors
    /// As [`PackedWeight::linear`]; [`QatError::Shape`] for taps that do not divide the inputs.
    pub fn linear_by_taps(&self, x: Tensor<2>, taps: usize) -> Result<Option<Tensor<2>>> {
        let layout = self.layout()?;
        if matches!(layout.scales, ScaleKind::PerGroup(_)) {
            return Ok(None);
        }
        if taps == 0 || !layout.d_input.is_multiple_of(taps) {
            return Err(QatError::Shape {
                what: "packed kernel taps".into(),
                expected: format!("a divisor of the {} inputs", layout.d_input),
                got: vec![taps],
            });
        }
        let channels = layout.d_input / taps;
        let (codes, scales) = self.codes_by_taps(taps, layout)?;
        check_last_dim(&x, channels, "packed kernel input")?;
        ternary_matmul(x, codes, scales, channels, layout.scales)
            .map(Some)
            .map_err(kernel_error)
    }

    /// The codes and scales of [`PackedWeight::linear_by_taps`], cached.
    fn codes_by_taps(
        &self,
        taps: usize,
        layout: PackedLayout,
    ) -> Result<(Tensor<2, Int>, Tensor<1>)> {
        let key = Regrouping::Taps(taps);
        let mut cached = self.grouped.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, k, codes, Some(scales))) = &*cached
            && (*id, *k) == (self.codes.id, key)
        {
            return Ok((codes.clone(), scales.clone()));
        }
        let (out, channels) = (layout.d_output, layout.d_input / taps);
        let packed = self.to_packed()?;
        let values = packed.unpack(); // [out, channels · taps], channel-major
        let mut by_taps = vec![0i8; values.len()];
        for o in 0..out {
            for c in 0..channels {
                for t in 0..taps {
                    by_taps[(t * out + o) * channels + c] = values[(o * channels + c) * taps + t];
                }
            }
        }
        let scales = match packed.scales() {
            TernaryScales::PerRow(s) => {
                TernaryScales::PerRow((0..taps).flat_map(|_| s.iter().copied()).collect())
            }
            other => other.clone(),
        };
        let relaid = PackedTernary::pack(&by_taps, taps * out, channels, scales)
            .map_err(|e| QatError::record("", format!("packed kernel by taps: {e}")))?;
        let (codes, scales) = device_tensors(&relaid, &self.codes.val().device());
        *cached = Some((self.codes.id, key, codes.clone(), Some(scales.clone())));
        Ok((codes, scales))
    }

    /// The dequantized weight `[d_input, d_output]` (Burn's layout, contiguous): `value / s`
    /// per element, exactly the quantized weight the QAT forward pass computed.
    ///
    /// # Errors
    /// As [`PackedWeight::layout`].
    pub fn dequantize(&self) -> Result<Tensor<2>> {
        let layout = self.layout()?;
        let (rows, cols) = (layout.d_output, layout.d_input);
        let values = unpack_codes(self.codes.val(), cols)
            .map_err(kernel_error)?
            .transpose(); // [cols, rows]
        // Divided in f32 (the scales' type), returned in the device's float type.
        let dtype = values.dtype();
        let values = values.cast(DType::F32);
        let scales = self.scales.val().cast(DType::F32);
        // The multiplier of every element, in the same [cols, rows] layout.
        let per_element: Tensor<2> = match layout.scales {
            ScaleKind::PerTensor => scales.reshape([1, 1]),
            ScaleKind::PerRow => scales.reshape([1, rows]),
            ScaleKind::PerGroup(group) => {
                let groups = cols / group;
                let s: Tensor<3> = scales.reshape([rows, groups, 1]);
                let s: Tensor<2> = s.expand([rows, groups, group]).reshape([rows, cols]);
                s.transpose()
            }
        };
        Ok((values / per_element).cast(dtype))
    }

    /// The codes and scales read back to the host as a [`PackedTernary`] (rows are outputs),
    /// with every invariant checked: what export formats write.
    ///
    /// # Errors
    /// As [`PackedWeight::layout`]; [`QatError::Record`] for codes or scales that break the
    /// packed format.
    pub fn to_packed(&self) -> Result<PackedTernary> {
        host_packed(self.layout()?, self.codes.val(), self.scales.val())
    }

    /// Bytes of the packed codes and scales (what replaces `4 d_input d_output` f32 bytes).
    pub fn packed_bytes(&self) -> usize {
        let [rows, words] = self.codes.shape().dims::<2>();
        rows * words * 4 + self.scales.shape().num_elements() * 4
    }
}

impl Reparameterization for PackedWeight {
    const NAME: &'static str = "packed";

    /// The dequantized weight in place of the (empty) stored base: the matrix `[d_input,
    /// d_output]`, or for a convolution kernel (3-D and up) the kernel `[d_output, k...]` whose
    /// linear view it is, in the base's shape.
    ///
    /// # Panics
    /// For a malformed record (see [`PackedWeight::layout`]; [`crate::check::check_model`]
    /// reports it as an error after loading) or a base whose shape the layout does not fit
    /// ([`PackedLayout::fits`]: [`crate::infer::pack`] and the loaders never attach one there).
    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let (w, layout) = match self.layout().and_then(|l| Ok((self.dequantize()?, l))) {
            Ok(found) => found,
            Err(e) => panic!("{e}"),
        };
        let shape = base.dims();
        assert!(
            layout.fits(&shape),
            "a packed weight of {} inputs x {} outputs stands in for a parameter of shape \
             {shape:?}",
            layout.d_input,
            layout.d_output
        );
        let w = match D {
            2 => w.reshape(shape),
            // The linear view `[k..., d_output]` back to the kernel `[d_output, k...]`.
            _ => w.transpose().reshape(shape),
        };
        w.to_device(&base.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(kind: ScaleKind) -> PackedTernary {
        let (rows, cols) = (3, 512);
        let values: Vec<i8> = (0..rows * cols).map(|i| (i % 3) as i8 - 1).collect();
        let scales = match kind {
            ScaleKind::PerTensor => TernaryScales::PerTensor(2.0),
            ScaleKind::PerRow => TernaryScales::PerRow(vec![1.0, 2.0, 4.0]),
            ScaleKind::PerGroup(g) => TernaryScales::PerGroup {
                group: g,
                scales: (0..rows * cols / g).map(|i| 1.0 + i as f32).collect(),
            },
        };
        PackedTernary::pack(&values, rows, cols, scales).unwrap()
    }

    #[test]
    fn a_layout_fits_its_matrix_and_the_kernels_whose_linear_view_it_is() {
        let layout = PackedLayout::new(36, 8, ScaleKind::PerRow, true).unwrap();
        assert!(layout.fits(&[36, 8]));
        assert!(!layout.fits(&[8, 36]));
        // Kernels [out, in, k...] with in · k... = 36.
        assert!(layout.fits(&[8, 4, 3, 3]));
        assert!(layout.fits(&[8, 12, 3]));
        assert!(!layout.fits(&[8, 4, 3, 2]));
        assert!(!layout.fits(&[4, 4, 3, 3]));
        assert!(!layout.fits(&[36]));
        assert!(!layout.fits(&[8, usize::MAX, 2]));
    }

    #[test]
    fn layouts_round_trip_and_malformed_ones_are_record_errors() {
        for scales in [
            ScaleKind::PerTensor,
            ScaleKind::PerRow,
            ScaleKind::PerGroup(512),
        ] {
            let layout = PackedLayout::new(1024, 7, scales, true).unwrap();
            assert_eq!(
                PackedLayout::decode_record(&layout.encode()).unwrap(),
                layout
            );
        }
        let good = PackedLayout::new(1024, 7, ScaleKind::PerRow, false)
            .unwrap()
            .encode();
        for (i, v) in [(10, 3), (15, 2), (2, 0), (11, 5)] {
            let mut bad = good.clone();
            bad[i] = v;
            assert!(
                matches!(
                    PackedLayout::decode_record(&bad),
                    Err(QatError::Record { .. })
                ),
                "entry {i} = {v}"
            );
        }
    }

    #[test]
    fn dequantized_weights_and_kernels_agree_with_the_codes() {
        let device = Device::flex();
        for kind in [
            ScaleKind::PerTensor,
            ScaleKind::PerRow,
            ScaleKind::PerGroup(256),
        ] {
            let p = packed(kind);
            let w = PackedWeight::from_packed(&p, false, &device).unwrap();
            let dense = w.dequantize().unwrap();
            assert_eq!(dense.dims(), [512, 3]);
            let values = p.unpack();
            let scales = p.scales().values();
            let scale = |n: usize, k: usize| match kind {
                ScaleKind::PerTensor => scales[0],
                ScaleKind::PerRow => scales[n],
                ScaleKind::PerGroup(g) => scales[n * (512 / g) + k / g],
            };
            let expected: Vec<f32> = (0..512 * 3)
                .map(|i| {
                    let (k, n) = (i / 3, i % 3);
                    values[n * 512 + k] as f32 / scale(n, k)
                })
                .collect();
            assert_eq!(
                dense.clone().into_data().try_to_vec::<f32>().unwrap(),
                expected,
                "{kind:?}"
            );
            let x = Tensor::<2>::ones([2, 512], &device);
            let y = w.matmul(x.clone()).unwrap();
            let reference = x.matmul(dense);
            y.into_data().assert_approx_eq::<f32>(
                &reference.into_data(),
                burn::tensor::Tolerance::absolute(1e-3),
            );
        }
    }

    #[test]
    fn a_record_of_another_layout_brings_its_layout() {
        let device = Device::flex();
        let per_row =
            PackedWeight::from_packed(&packed(ScaleKind::PerRow), false, &device).unwrap();
        let per_tensor = PackedWeight::zeros(
            PackedLayout::new(512, 3, ScaleKind::PerTensor, true).unwrap(),
            &device,
        );
        // Burn refuses the scales of another shape: a typed record error, not a wrong scale.
        let refused = per_tensor
            .clone()
            .try_load_record(per_row.clone().into_record());
        assert!(
            matches!(&refused, Err(burn::store::RecordError::Validation(m)) if m.contains("shape mismatch")),
            "{:?}",
            refused.map(|_| ())
        );
        let skeleton = PackedWeight::zeros(
            PackedLayout::new(512, 3, ScaleKind::PerRow, true).unwrap(),
            &device,
        );
        let loaded = skeleton.load_record(per_row.clone().into_record());
        // The record's activation mode (float) replaces the skeleton's (int8).
        assert_eq!(loaded.layout().unwrap(), per_row.layout().unwrap());
    }

    #[test]
    fn grouped_activations_sum_the_groups_int8_products() {
        let device = Device::flex();
        let (rows, cols) = (3, 512);
        let values: Vec<i8> = (0..rows * cols).map(|i| ((i * 5) % 3) as i8 - 1).collect();
        let half = |h: usize| -> Vec<i8> {
            (0..rows)
                .flat_map(|r| values[r * cols + h * 256..r * cols + (h + 1) * 256].to_vec())
                .collect()
        };
        let scales = TernaryScales::PerRow(vec![2.0, 4.0, 0.5]);
        let pack = |v: &[i8], c: usize| {
            let t = PackedTernary::pack(v, rows, c, scales.clone()).unwrap();
            PackedWeight::from_packed(&t, true, &device).unwrap()
        };
        let whole = pack(&values, cols);
        // The second half of the inputs is 100x the first: one per-token scale would flatten
        // the first half's codes, one per group keeps them.
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| (((i * 37) % 23) as f32 - 11.0) * if i % cols < 256 { 0.01 } else { 1.0 })
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [2, cols]), &device);
        let grouped = whole.linear_grouped(x.clone(), 256, None).unwrap().unwrap();
        let expected = pack(&half(0), 256)
            .matmul(x.clone().narrow(1, 0, 256))
            .unwrap()
            + pack(&half(1), 256)
                .matmul(x.clone().narrow(1, 256, 256))
                .unwrap();
        assert_eq!(grouped.into_data(), expected.into_data());
        // One group of all inputs is the per-token product.
        assert_eq!(
            whole
                .linear_grouped(x.clone(), 512, None)
                .unwrap()
                .unwrap()
                .into_data(),
            whole.matmul(x.clone()).unwrap().into_data()
        );
        // Groups that are not whole 256-blocks dividing the inputs, or per-group weight
        // scales, are left to the caller.
        assert!(
            whole
                .linear_grouped(x.clone(), 128, None)
                .unwrap()
                .is_none()
        );
        let per_group =
            PackedWeight::from_packed(&packed(ScaleKind::PerGroup(256)), true, &device).unwrap();
        assert!(per_group.linear_grouped(x, 256, None).unwrap().is_none());
    }
}
