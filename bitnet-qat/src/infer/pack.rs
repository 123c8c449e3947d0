//! Packed inference for any Burn model: [`pack`] replaces every quantized weight by its packed
//! form in place, [`save`] writes a model atomically, [`load_packed`] loads a packed model into a
//! skeleton built from its configuration without an f32 copy of the packed weights.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId, Reparameterization, Reparameterizer};
use burn::store::{BurnpackStore, ModuleSnapshot, ModuleStore, PathFilter};
use burn::tensor::{Bool, Bytes, Device, Int, Tensor, TensorData};

use super::convert::pack_weight;
use super::packed_weight::{PackedLayout, PackedWeight};
use crate::error::{QatError, Result};
use crate::nn::quantizers;

/// The path suffix of a quantizer attached to a weight ([`Quantizer`](crate::nn::Quantizer)'s
/// reparameterization name).
/// The record path of a packed weight's layout, after the weight's own path.
const LAYOUT_SUFFIX: &str = ".packed.layout";

/// `model` for inference with every quantized weight packed in place: each weight that carries
/// a [`Quantizer`](crate::nn::Quantizer) (a [`BitLinear`](crate::nn::BitLinear)'s, or any layer's
/// made quantization-aware by the [`QatReparameterizer`](crate::reparam::QatReparameterizer))
/// becomes a [`PackedWeight`] — 2-bit codes and scales — as the quantizer's forward pass
/// quantizes it (the effective quantizer: a scheduled format included). The layers are
/// unchanged: a `Linear` multiplies by the dequantized weight, which is exactly the QAT model's
/// quantized weight, so the packed model's outputs equal those of `model.valid()`;
/// `BitLinear` runs the packed kernels (int8 activations for BitNet's activation quantizer).
/// Activation quantizers stay. Other reparameterizations are folded into their weights.
///
/// # Errors
/// [`QatError::Invalid`] for a weight the packed form cannot reproduce — a format other than
/// ternary or binary, the soft STE, lambda below 1, an input size above 2^18, per-group scales
/// whose groups are not multiples of 256 — naming the layer; [`QatError::Record`] for malformed
/// quantizer settings.
///
/// # Example
/// ```
/// use bitnet_qat::infer::pack;
/// use bitnet_qat::nn::BitLinearConfig;
/// use burn::module::Module;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let layers = vec![BitLinearConfig::new(64, 16).init(&device).unwrap()];
/// let packed = pack(&layers).unwrap();
/// let x = Tensor::<2>::ones([4, 64], &device);
/// let (a, b) = (packed[0].forward(x.clone()), layers[0].valid().forward(x));
/// assert!((a - b).abs().max().into_scalar::<f32>() < 1e-5);
/// ```
pub fn pack<M: Module>(model: &M) -> Result<M> {
    let mut packs = HashMap::new();
    for found in quantizers(model) {
        let Some(path) = found.weight_path().map(str::to_string) else {
            continue;
        };
        let Some(weight) = found.weight else {
            continue;
        };
        let device = weight.device().inner();
        let packed = pack_weight(weight, &found.quantizer)
            .map_err(|e| QatError::Invalid(format!("cannot pack `{path}`: {e}")))?;
        packs.insert(path, PackedWeight::from_packed(&packed, false, &device)?);
    }
    attach(model.valid().materialize(), packs)
}

/// Writes `model` to `path` as a burnpack file, atomically (a temporary file renamed over
/// `path`, so a crash leaves the old file or the new one, never half of one). The empty
/// structural bases that packed weights stand on are not written (see [`pack`]).
///
/// # Errors
/// [`QatError::Record`] for an I/O error or a tensor that cannot be read back.
pub fn save<M: Module>(model: M, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let paths = ParamPaths::of(&model);
    let filter = PathFilter::new().with_full_paths(paths.saved());
    let mut store = BurnpackStore::from_file(path)
        .auto_extension(false)
        .overwrite(true)
        .with_filter(filter);
    model
        .save_into(&mut store)
        .map_err(|e| QatError::Record(format!("writing {}: {e}", path.display())))
}

/// The size in bytes of the file [`save`] writes for `model`: what a packed model costs on
/// disk, to compare with the same model before [`pack`].
///
/// # Errors
/// [`QatError::Record`] for a tensor that cannot be read back.
pub fn record_bytes<M: Module>(model: M) -> Result<usize> {
    let paths = ParamPaths::of(&model);
    let mut store = BurnpackStore::from_bytes(None)
        .with_filter(PathFilter::new().with_full_paths(paths.saved()));
    model
        .save_into(&mut store)
        .and_then(|()| store.get_bytes())
        .map(|b| b.len())
        .map_err(|e| QatError::Record(format!("encoding the record: {e}")))
}

/// Loads a model written by [`save`] after [`pack`] into `skeleton`, a model of the same
/// structure built from its configuration (for burn-nn layers the f32 weights of a fresh model
/// are lazy, so the packed ones are never allocated in f32): the packed weights are read from
/// the file's own layouts, everything else from the record.
///
/// # Errors
/// [`QatError::Record`] for a file that cannot be read, a malformed layout, a packed weight at
/// a path the skeleton lacks, or a record that does not fit the skeleton (Burn's validation:
/// missing, unused or differently shaped tensors).
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
    let io = |e: &dyn std::fmt::Display| QatError::Record(format!("{}: {e}", path.display()));
    // Read whole: a file-backed store reads tensor data lazily by path, so a model loaded from
    // it would read whatever is at the path later (a file saved over it, or none).
    let bytes = Bytes::from_bytes_vec(std::fs::read(path).map_err(|e| io(&e))?);
    let mut store = BurnpackStore::from_bytes(Some(bytes)).allow_partial(true);
    let keys = store.keys().map_err(|e| io(&e))?;
    let device = skeleton
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(Device::flex);
    let mut packs = HashMap::new();
    for key in keys {
        let Some(weight_path) = key.strip_suffix(LAYOUT_SUFFIX) else {
            continue;
        };
        let tensor = store
            .get_tensor(&key)
            .map_err(|e| io(&e))?
            .ok_or_else(|| io(&format!("no tensor {key}")))?;
        let bytes = tensor.to_bytes().map_err(|e| io(&e))?;
        let values = TensorData::from_bytes(bytes, tensor.shape.clone(), tensor.dtype)
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| io(&format!("{e:?}")))?;
        let layout = PackedLayout::decode_record(&values)?;
        packs.insert(
            weight_path.to_string(),
            PackedWeight::zeros(layout, &device),
        );
    }
    // `materialize` folds the skeleton's own quantizers but leaves its plain (lazy) weights
    // untouched; `attach` drops the packed ones uninitialized.
    let mut model = attach(skeleton.materialize(), packs)?;
    let placeholders = ParamPaths::of(&model).placeholders;
    let result = model.load_from(&mut store).map_err(|e| io(&e))?;
    let missing: Vec<&str> = result
        .missing
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !placeholders.iter().any(|q| q == p))
        .collect();
    if !missing.is_empty() || !result.unused.is_empty() || !result.errors.is_empty() {
        return Err(io(&format!(
            "the record does not fit the model: missing {missing:?}, unused {:?}, errors {:?}",
            result.unused, result.errors
        )));
    }
    Ok(model)
}

/// The record paths of a model's parameters, and which of them are the structural bases of
/// packed weights (visited just before Burn enters their `packed` reparameterization).
#[derive(Default)]
struct ParamPaths {
    path: Vec<String>,
    all: Vec<String>,
    last_float: Option<(usize, String)>,
    placeholders: Vec<String>,
}

impl ParamPaths {
    fn of(model: &impl Module) -> Self {
        let mut paths = Self::default();
        model.visit(&mut paths);
        paths
    }

    /// Every path but the placeholders.
    fn saved(&self) -> Vec<String> {
        self.all
            .iter()
            .filter(|p| !self.placeholders.contains(p))
            .cloned()
            .collect()
    }

    fn push(&mut self) -> String {
        let path = self.path.join(".");
        self.all.push(path.clone());
        path
    }
}

impl ModuleVisitor for ParamPaths {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == "Reparameterization"
            && name == <PackedWeight as Reparameterization>::NAME
            && let Some((depth, path)) = self.last_float.take()
            && depth == self.path.len()
        {
            self.placeholders.push(path);
        }
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
        let path = self.push();
        self.last_float = Some((self.path.len(), path));
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<D, Int>>) {
        self.push();
    }

    fn visit_bool<const D: usize>(&mut self, _param: &Param<Tensor<D, Bool>>) {
        self.push();
    }
}

/// Attaches each packed weight of `packs` (by parameter path) to its parameter of `model`, in
/// place of the f32 values (an empty placeholder stays as the structural base).
pub(crate) fn attach<M: Module>(model: M, packs: HashMap<String, PackedWeight>) -> Result<M> {
    let mut attacher = Attach { packs };
    let model = model.apply_reparameterization(&mut attacher);
    let mut left: Vec<String> = attacher.packs.into_keys().collect();
    if !left.is_empty() {
        left.sort();
        return Err(QatError::Record(format!(
            "packed weights for parameters the model lacks: {left:?}"
        )));
    }
    Ok(model)
}

struct Attach {
    packs: HashMap<String, PackedWeight>,
}

impl Reparameterizer for &mut Attach {
    type Reparam = PackedWeight;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<PackedWeight>) {
        match self.packs.remove(path) {
            Some(packed) if D == 2 => {
                // The f32 values are never read again. The structural base keeps the weight's
                // shape (layers read it) as one zero broadcast to that shape, which holds no
                // data on backends with strided views; `save` does not write it.
                let shape = packed.layout().map(|l| {
                    let mut s = [1; D];
                    s[0] = l.d_input;
                    s[D - 1] = l.d_output;
                    s
                });
                match shape {
                    Ok(shape) => {
                        let base = Tensor::<D>::zeros([1; D], &param.lazy_device()).expand(shape);
                        (Param::initialized(ParamId::new(), base), Some(packed))
                    }
                    Err(_) => {
                        self.packs.insert(path.to_string(), packed);
                        (param, None)
                    }
                }
            }
            Some(packed) => {
                // Not a matrix: leave it, and report it as not attached.
                self.packs.insert(path.to_string(), packed);
                (param, None)
            }
            None => (param, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::BitLinearConfig;
    use burn::tensor::Tensor;

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
