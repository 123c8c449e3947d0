//! Loading a burnpack record that someone else may have written into a model: every size
//! bounded by the bytes that back it before anything is allocated, every tensor of the type its
//! parameter takes, every value the forward pass relies on checked ([`load_packed`],
//! [`load_packed_bytes`], and [`load_checked`] behind them and behind
//! [`crate::train::check_checkpoint`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{ApplyError, BurnpackStore, ModuleSnapshot, ModuleStore};
use burn::tensor::{Bytes, DType, Device, Tensor, TensorData};

use super::pack::{ParamPaths, attach};
use super::packed_weight::{PackedLayout, PackedWeight};
use crate::check::check_model;
use crate::error::{QatError, Result};
use crate::recorded::int_values;

/// The record path of a packed weight's layout, after the weight's own path.
pub(crate) const LAYOUT_SUFFIX: &str = ".packed.layout";
/// The record path of a packed weight's codes, after the weight's own path.
const CODES_SUFFIX: &str = ".packed.codes";
/// The record path of a packed weight's scales, after the weight's own path.
const SCALES_SUFFIX: &str = ".packed.scales";

/// Loads a model written by [`save`](super::save) after [`pack`](super::pack) into
/// `skeleton`, a model of the same structure built from its configuration (for burn-nn layers
/// the f32 weights of a fresh model are lazy, so the packed ones are never allocated in f32):
/// the packed weights are read from the file's own layouts, everything else from the record.
/// The file is read whole (a model loaded from it never reads the path again).
///
/// Nothing the file describes is allocated before it is matched against the bytes that back
/// it: the tensors must not overlap (their sizes add up to at most the file's) nor be
/// Burn-quantized, each packed layout must agree with the shapes and types of the codes (u32)
/// and scales (f32) stored beside it and with the skeleton parameter it replaces. Float
/// parameters stored in another float type (a model saved on a bf16 device) are cast to the
/// device's. The loaded model is then checked as [`check_model`] checks it — every code in
/// `0..=2` with zero padding, every scale finite and positive, every parameter finite, every
/// quantizer setting well formed — so a corrupted or hostile file is an error here, never a
/// panic, an abort or a wrong answer later.
///
/// # Errors
/// [`QatError::Io`] for a file that cannot be read; [`QatError::File`] (format `burnpack`) for
/// bytes that are not a burnpack file or whose tensors overlap; [`QatError::Record`] naming the
/// parameter for a malformed layout, codes or scales, a packed weight at a path the skeleton
/// lacks or of another shape, a tensor of the wrong kind, a record that does not fit the
/// skeleton (missing or unused tensors); [`QatError::Shape`] naming the parameter for a tensor
/// of another shape; [`QatError::NonFinite`] naming the parameter.
///
/// # Example
/// ```
/// use bitnet_qat::infer::{load_packed, pack, save};
/// use bitnet_qat::nn::BitLinearConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let config = BitLinearConfig::new(256, 8);
/// let packed = pack(&vec![config.init(&device).unwrap()]).unwrap();
/// let path = std::env::temp_dir().join(format!("bitnet-doc-{}.bpk", std::process::id()));
/// save(packed.clone(), &path).unwrap();
/// let loaded = load_packed(vec![config.init(&device).unwrap()], &path).unwrap();
/// let x = Tensor::<2>::ones([2, 256], &device);
/// assert_eq!(
///     loaded[0].forward(x.clone()).into_data(),
///     packed[0].forward(x).into_data()
/// );
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub fn load_packed<M: Module>(skeleton: M, path: impl AsRef<Path>) -> Result<M> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| QatError::io(path, e))?;
    load_packed_bytes(skeleton, bytes).map_err(|e| e.in_file(path))
}

/// [`load_packed`] from the bytes of a file.
///
/// # Errors
/// As [`load_packed`].
pub fn load_packed_bytes<M: Module>(skeleton: M, bytes: Vec<u8>) -> Result<M> {
    load_checked(skeleton, bytes, FloatTypes::Cast)
}

/// What a loader does with a float parameter stored in another float type than the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatTypes {
    /// Cast it (a packed model saved on a bf16 device runs on an f32 one).
    Cast,
    /// Refuse it: burn-train loads a checkpoint as it is, and mixed float types fail inside a
    /// training step.
    Refuse,
}

pub(crate) fn burnpack(reason: String) -> QatError {
    QatError::File {
        format: "burnpack",
        path: String::new(),
        field: String::new(),
        offset: None,
        reason,
    }
}

/// The checked load behind [`load_packed_bytes`] and [`crate::train::check_checkpoint`].
pub(crate) fn load_checked<M: Module>(
    skeleton: M,
    bytes: Vec<u8>,
    floats: FloatTypes,
) -> Result<M> {
    let file_len = bytes.len();
    // Errors of the load are this function's to report (with their paths), not the store's.
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)))
        .allow_partial(true)
        .validate(false);
    check_table(&mut store, file_len)?;
    let keys = store.keys().map_err(|e| burnpack(e.to_string()))?;
    let device = skeleton
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(Device::flex);
    // The skeleton's parameter shapes (lazy ones are not allocated to be asked).
    let shapes = ParamPaths::of(&skeleton).float_shapes;
    let mut packs = HashMap::new();
    for key in keys {
        let Some(weight_path) = key.strip_suffix(LAYOUT_SUFFIX) else {
            continue;
        };
        let layout = stored_layout(&mut store, weight_path).map_err(|e| e.at(&key))?;
        // The parameter it replaces must exist with this shape before anything is allocated.
        match shapes.get(weight_path) {
            Some(shape) if layout.fits(shape) => {}
            Some(shape) => {
                return Err(QatError::record(
                    weight_path,
                    format!(
                        "a packed weight of {} inputs x {} outputs for a parameter of shape \
                         {shape:?}",
                        layout.d_input, layout.d_output
                    ),
                ));
            }
            None => {
                return Err(QatError::record(
                    weight_path,
                    "a packed weight for a parameter the model lacks",
                ));
            }
        }
        packs.insert(
            weight_path.to_string(),
            PackedWeight::zeros(layout, &device),
        );
    }
    // For a packed record, `materialize` folds the skeleton's own quantizers (a skeleton built
    // for training carries them) but leaves its plain (lazy) weights untouched; `attach` drops
    // the packed ones uninitialized. A record without packed weights (a QAT checkpoint) loads
    // into the skeleton as it is, quantizers and all.
    let skeleton = if packs.is_empty() {
        skeleton
    } else {
        skeleton.materialize()
    };
    let mut model = attach(skeleton, packs)?;
    let placeholders: HashSet<String> = ParamPaths::of(&model).placeholders.into_iter().collect();
    let result = model
        .load_from(&mut store)
        .map_err(|e| burnpack(e.to_string()))?;
    if let Some(error) = result.errors.into_iter().next() {
        return Err(apply_error(error));
    }
    let missing: Vec<&str> = result
        .missing
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !placeholders.contains(*p))
        .collect();
    if let Some(path) = missing.first() {
        return Err(QatError::record(
            *path,
            format!(
                "the model has this parameter, the file does not ({} missing in all)",
                missing.len()
            ),
        ));
    }
    if let Some(path) = result.unused.first() {
        return Err(QatError::record(
            path.as_str(),
            format!(
                "the file has this tensor, the model does not ({} unused in all)",
                result.unused.len()
            ),
        ));
    }
    let model = float_types(model, &device, floats)?;
    check_model(&model)?;
    Ok(model)
}

/// The tensor table of a burnpack file, checked before anything it describes is allocated: no
/// Burn-quantized tensor (this crate writes none, and burnpack does not check their sizes), no
/// tensor whose data is not aligned to its elements, and no two tensors sharing bytes (their
/// sizes add up to at most the file's), so that every allocation a load makes from the table
/// is backed by bytes of its own.
pub(crate) fn check_table(store: &mut BurnpackStore, file_len: usize) -> Result<()> {
    let tensors = store
        .get_all_tensors()
        .map_err(|e| burnpack(e.to_string()))?;
    let mut total = 0usize;
    for (name, tensor) in tensors {
        if let DType::QFloat(_) = tensor.dtype {
            return Err(QatError::record(
                name.as_str(),
                "a Burn-quantized tensor: a record of this crate holds none",
            ));
        }
        // Burnpack writes every tensor at a 256-byte boundary; data at an offset that is not a
        // multiple of its element size would reach the backends unaligned (Flex panics).
        let bytes = tensor.to_bytes().map_err(|e| burnpack(e.to_string()))?;
        let size = tensor.dtype.size().max(1);
        if !(bytes.as_ptr() as usize).is_multiple_of(size) {
            return Err(QatError::File {
                format: "burnpack",
                path: String::new(),
                field: name.clone(),
                offset: None,
                reason: format!(
                    "{:?} data at an offset that is not a multiple of its {size}-byte elements",
                    tensor.dtype
                ),
            });
        }
        total = total.saturating_add(tensor.byte_len());
    }
    if total > file_len {
        return Err(burnpack(format!(
            "its tensors take {total} bytes, more than the {file_len} of the file: tensors that \
             share bytes"
        )));
    }
    Ok(())
}

/// A load error of Burn's store as this crate's error, naming the parameter.
fn apply_error(error: ApplyError) -> QatError {
    match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => QatError::Shape {
            what: format!("`{path}`"),
            expected: format!("{:?}", expected.to_vec()),
            got: found.to_vec(),
        },
        ApplyError::DTypeMismatch {
            path,
            expected,
            found,
        } => QatError::record(
            path,
            format!("stored as {found:?}, a parameter of this model is {expected:?}"),
        ),
        ApplyError::AdapterError { path, message } | ApplyError::LoadError { path, message } => {
            QatError::record(path, message)
        }
    }
}

/// The layout of the packed weight at `weight_path` in `store`, decoded and matched against
/// the shapes and types of the codes and scales stored beside it (sizes that burnpack has
/// checked against the bytes of the file), so that building its skeleton allocates no more
/// than the file holds.
fn stored_layout(store: &mut BurnpackStore, weight_path: &str) -> Result<PackedLayout> {
    fn snapshot<'a>(store: &'a mut BurnpackStore, key: &str) -> Result<&'a PackTensor> {
        store
            .get_tensor(key)
            .map_err(|e| QatError::record(key, e.to_string()))?
            .ok_or_else(|| {
                QatError::record(
                    key,
                    "missing: a packed weight needs its layout, codes and scales",
                )
            })
    }
    let layout_key = format!("{weight_path}{LAYOUT_SUFFIX}");
    let tensor = snapshot(store, &layout_key)?;
    // 16 integer pieces (see `PackedLayout::encode`); anything else is refused before it is
    // read.
    if !(tensor.dtype.is_int() || tensor.dtype.is_uint()) || tensor.shape.to_vec() != [16] {
        return Err(QatError::record(
            &layout_key,
            format!(
                "a layout of {:?} {:?}, expected 16 integers",
                tensor.dtype,
                tensor.shape.to_vec()
            ),
        ));
    }
    let bytes = tensor
        .to_bytes()
        .map_err(|e| QatError::record(&layout_key, e.to_string()))?;
    let data = TensorData::from_bytes(bytes, tensor.shape.clone(), tensor.dtype);
    let values = int_values(&data).map_err(|e| QatError::record(&layout_key, e))?;
    let layout = PackedLayout::decode_record(&values)?;
    for (suffix, dtype, expected) in [
        (CODES_SUFFIX, DType::U32, layout.codes_shape().to_vec()),
        (SCALES_SUFFIX, DType::F32, vec![layout.scale_count()]),
    ] {
        let key = format!("{weight_path}{suffix}");
        let tensor = snapshot(store, &key)?;
        let found = tensor.shape.to_vec();
        if tensor.dtype != dtype || found != expected {
            return Err(QatError::record(
                &key,
                format!(
                    "{:?} {found:?}, but the recorded layout {layout:?} needs {dtype:?} \
                     {expected:?}",
                    tensor.dtype
                ),
            ));
        }
    }
    Ok(layout)
}

/// `model` with every float parameter in the float type it runs in: the device's, and f32
/// for the scales of packed weights (the kernels read f32 scales). Another type is cast or
/// refused, as `floats` says.
pub(crate) fn float_types<M: Module>(model: M, device: &Device, floats: FloatTypes) -> Result<M> {
    let mut mapper = FloatTypeMapper {
        device_float: device.settings().float_dtype.into(),
        floats,
        path: Vec::new(),
        error: None,
    };
    let model = model.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

struct FloatTypeMapper {
    device_float: DType,
    floats: FloatTypes,
    /// `(field name, container type)` of the modules entered.
    path: Vec<(String, String)>,
    error: Option<QatError>,
}

impl ModuleMapper for FloatTypeMapper {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let packed_scales = self
            .path
            .last()
            .is_some_and(|(name, ty)| name == "scales" && ty == "Struct:PackedWeight");
        let wanted = if packed_scales {
            DType::F32
        } else {
            self.device_float
        };
        // A lazy parameter is the skeleton's own: of the device's type.
        if !param.is_initialized() {
            return param;
        }
        let found = param.val().dtype();
        if found == wanted {
            return param;
        }
        match self.floats {
            FloatTypes::Cast => param.map(|t| t.cast(wanted)),
            FloatTypes::Refuse => {
                if self.error.is_none() {
                    let path: Vec<&str> = self.path.iter().map(|(n, _)| n.as_str()).collect();
                    self.error = Some(QatError::record(
                        path.join("."),
                        format!("stored as {found:?}, this model runs in {wanted:?}"),
                    ));
                }
                param
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{pack, save};
    use crate::nn::BitLinearConfig;

    #[test]
    fn a_file_saved_without_an_extension_loads_from_the_same_path_and_is_read_whole() {
        let device = Device::flex();
        let config = BitLinearConfig::new(256, 4);
        let packed = pack(&vec![config.init(&device).unwrap()]).unwrap();
        let path = std::env::temp_dir().join(format!("bitnet-qat-noext-{}", std::process::id()));
        save(packed.clone(), &path).unwrap();
        let loaded = load_packed(vec![config.init(&device).unwrap()], &path);
        // The loaded model does not read the file again.
        std::fs::remove_file(&path).unwrap();
        let x = Tensor::<2>::from_data(
            TensorData::new((0..512).map(|i| (i % 7) as f32 - 3.0).collect(), [2, 256]),
            &device,
        );
        assert_eq!(
            loaded.unwrap()[0].forward(x.clone()).into_data(),
            packed[0].forward(x).into_data()
        );
    }
}
