//! Packed inference for any Burn model: [`pack`] replaces every quantized weight by its packed
//! form in place, [`save`] writes a model atomically (its loader is
//! [`load_packed`](super::load_packed)).

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId, Reparameterization, Reparameterizer};
use burn::store::{BurnpackStore, ModuleSnapshot, PathFilter};
use burn::tensor::{Bool, Int, Tensor};

use super::convert::pack_weight;
use super::packed_weight::PackedWeight;
use crate::error::{QatError, Result};
use crate::nn::{QuantAxis, quantizers};

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
/// Convolution kernels (the drop-in [`Conv1d`](crate::nn::conv::Conv1d) and
/// [`Conv2d`](crate::nn::conv::Conv2d), burn-nn convolutions made quantization-aware by the
/// reparameterizer) are packed through their linear view ([`crate::nn::linear_view`]). A drop-in
/// convolution with BitNet's activations then runs the packed kernels (a product per position
/// for all the kernel's taps, then a shift-add: see [`crate::nn::conv`]), with the outputs of
/// `model.valid()` bit for bit; grouped convolutions, per-group kernel scales and burn-nn
/// convolutions run burn-nn's convolution over the dequantized kernel (the same values).
/// Quantized embedding tables (the drop-in [`Embedding`](crate::nn::Embedding) with `quant`,
/// or reparameterized with `quantize_embeddings`) are not packed: a lookup reads rows, not a
/// product, so they keep their quantized values as f32 (the outputs are still `valid()`'s).
///
/// # Errors
/// [`QatError::Unsupported`] naming the weight's path for a weight the packed form cannot
/// reproduce — a format other than ternary or binary, the soft STE, lambda below 1, an input
/// size above 2^18, per-group scales whose groups are not multiples of 256;
/// [`QatError::Record`] for malformed quantizer settings.
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
    let shapes = ParamPaths::of(model).float_shapes;
    for found in quantizers(model) {
        let Some(path) = found.weight_path().map(str::to_string) else {
            continue;
        };
        let Some(weight) = found.weight else {
            continue;
        };
        let axis = found
            .quantizer
            .try_settings()
            .map_err(|e| e.at(&path))?
            .axis;
        if axis == QuantAxis::OutputFirst && shapes.get(&path).is_some_and(|s| s.len() == 2) {
            // An embedding table quantized per vector (see the docs above).
            continue;
        }
        let device = weight.device().inner();
        let packed = pack_weight(weight, &found.quantizer).map_err(|e| e.at(&path))?;
        let packed = PackedWeight::from_packed(&packed, false, &device).map_err(|e| match e {
            QatError::Config {
                name,
                value,
                allowed,
            } => QatError::unsupported(
                &path,
                format!("{name} = {value}: the packed format takes {allowed}"),
            ),
            other => other,
        })?;
        packs.insert(path, packed);
    }
    attach(model.valid().materialize(), packs)
}

/// Writes `model` to `path` as a burnpack file, atomically (a temporary file renamed over
/// `path`, so a crash leaves the old file or the new one, never half of one). The empty
/// structural bases that packed weights stand on are not written (see [`pack`]).
///
/// # Errors
/// [`QatError::Io`] for a file that cannot be written; [`QatError::Record`] for a tensor that
/// cannot be encoded.
pub fn save<M: Module>(model: M, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode(model)?;
    bitnet_kernels::file::write_atomic(path, &bytes).map_err(|e| QatError::io(path, e))
}

/// The size in bytes of the file [`save`] writes for `model`: what a packed model costs on
/// disk, to compare with the same model before [`pack`].
///
/// # Errors
/// [`QatError::Record`] for a tensor that cannot be read back.
pub fn record_bytes<M: Module>(model: M) -> Result<usize> {
    encode(model).map(|b| b.len())
}

/// The burnpack bytes of `model` without the structural bases of packed weights.
fn encode<M: Module>(model: M) -> Result<Vec<u8>> {
    let paths = ParamPaths::of(&model);
    let mut store = BurnpackStore::from_bytes(None)
        .with_filter(PathFilter::new().with_full_paths(paths.saved()));
    model
        .save_into(&mut store)
        .and_then(|()| store.get_bytes())
        .map(|b| b.to_vec())
        .map_err(|e| QatError::record("", format!("encoding the record: {e}")))
}

/// The record paths of a model's parameters, the shapes of its float ones (without allocating
/// lazy ones), and which of them are the structural bases of packed weights (visited just
/// before Burn enters their `packed` reparameterization).
#[derive(Default)]
pub(super) struct ParamPaths {
    path: Vec<String>,
    all: Vec<String>,
    last_float: Option<(usize, String)>,
    /// The paths of the structural bases of packed weights.
    pub(super) placeholders: Vec<String>,
    /// The shape of every float parameter, by path.
    pub(super) float_shapes: HashMap<String, Vec<usize>>,
}

impl ParamPaths {
    /// The paths of `model`.
    pub(super) fn of(model: &impl Module) -> Self {
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

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.push();
        self.float_shapes
            .insert(path.clone(), param.lazy_shape().to_vec());
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
///
/// # Errors
/// [`QatError::Record`] naming the parameter for a packed weight at a path the model lacks, or
/// whose layout (`d_input x d_output`) is not the parameter's shape (a file of another model:
/// the layer would read inputs of the wrong width).
pub(crate) fn attach<M: Module>(model: M, packs: HashMap<String, PackedWeight>) -> Result<M> {
    let mut attacher = Attach {
        packs,
        mismatch: None,
    };
    let model = model.apply_reparameterization(&mut attacher);
    if let Some(error) = attacher.mismatch {
        return Err(error);
    }
    let mut left: Vec<String> = attacher.packs.into_keys().collect();
    if !left.is_empty() {
        left.sort();
        return Err(QatError::record(
            left[0].clone(),
            format!("a packed weight for a parameter the model lacks (all such: {left:?})"),
        ));
    }
    Ok(model)
}

struct Attach {
    packs: HashMap<String, PackedWeight>,
    /// The first packed weight whose layout is not its parameter's shape.
    mismatch: Option<QatError>,
}

impl Reparameterizer for &mut Attach {
    type Reparam = PackedWeight;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<PackedWeight>) {
        let Some(packed) = self.packs.remove(path) else {
            return (param, None);
        };
        // A well-formed layout that fits the parameter (a matrix or a kernel), or not attached
        // (and reported).
        let Ok(layout) = packed.layout() else {
            self.packs.insert(path.to_string(), packed);
            return (param, None);
        };
        let found = param.lazy_shape().to_vec();
        if !layout.fits(&found) {
            self.mismatch.get_or_insert_with(|| {
                QatError::record(
                    path,
                    format!(
                        "a packed weight of {} inputs x {} outputs for a parameter of shape \
                         {found:?}",
                        layout.d_input, layout.d_output
                    ),
                )
            });
            return (param, None);
        }
        let shape: [usize; D] = found
            .clone()
            .try_into()
            .unwrap_or_else(|_| unreachable!("a parameter of rank D has D sizes"));
        // The f32 values are never read again. The structural base keeps the weight's shape
        // (layers read it) as one zero broadcast to that shape, which holds no data on backends
        // with strided views; `save` does not write it.
        let base = Tensor::<D>::zeros([1; D], &param.lazy_device()).expand(shape);
        (Param::initialized(ParamId::new(), base), Some(packed))
    }
}
