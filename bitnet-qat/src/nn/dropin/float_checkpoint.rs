//! [`load_float_checkpoint`]: a checkpoint of a full-precision burn-nn model, loaded into the
//! same model built from drop-in layers.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::store::{BurnpackStore, ModuleStore};
use burn::tensor::{Bool, Bytes, Device, Int, Tensor, TensorData};

use crate::check::check_model;
use crate::error::{QatError, Result};
use crate::infer::load::{FloatTypes, burnpack, check_table, float_types};
use crate::nn::discover::QUANTIZER;
use crate::nn::quantizers;

/// What [`load_float_checkpoint`] returns: the model with the file's weights, and the
/// quantizer parameters the file did not have.
#[derive(Debug)]
pub struct FloatLoad<M> {
    /// The model, its weights and biases from the file.
    pub model: M,
    /// The paths of the quantizer parameters the file lacks (all of them for a checkpoint of
    /// the float model): their settings are the model's configuration's, and their learned
    /// steps were recomputed from the loaded weights.
    pub quantizer_params: Vec<String>,
}

/// Loads a burnpack checkpoint (Burn's `Module::save_file`, `ModuleRecord::save` or
/// `into_bytes`, a `BurnpackStore`) of a full-precision model into `model`, the same model
/// built from drop-in layers ([`Linear`](crate::nn::Linear), [`conv`](crate::nn::conv),
/// [`Embedding`](crate::nn::Embedding)) or made quantization-aware by the
/// [`QatReparameterizer`](crate::reparam::QatReparameterizer): every parameter of `model` must
/// be in the file except the quantizers' own, and the file may hold nothing else. A learned
/// step (LSQ) missing from the file is recomputed from the loaded weight, so training starts
/// where the fixed quantizer of the float weights is. Float tensors stored in another type
/// (an f16 checkpoint) are cast to the device's. A file that holds the quantizer state too (a
/// QAT checkpoint) loads as it is.
///
/// The file is checked as [`load_packed`](crate::infer::load_packed) checks one before
/// anything it describes is allocated, and the loaded model as [`check_model`] checks it.
///
/// # Errors
/// [`QatError::File`] (format `burnpack`) for bytes that are not a burnpack file;
/// [`QatError::Record`] naming the parameter the file lacks (other than a quantizer's) or the
/// tensor the model lacks, or a tensor of the wrong kind; [`QatError::Shape`] naming the
/// parameter for a tensor of another shape; [`QatError::NonFinite`] naming the parameter.
///
/// # Example
/// ```
/// use bitnet_qat::nn::{Linear, LinearConfig, QuantScheme, load_float_checkpoint};
/// use burn::module::Module;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// // A trained burn-nn model, saved as Burn saves it.
/// let float = burn::nn::LinearConfig::new(16, 4).init(&device);
/// let bytes = float.clone().into_record().into_bytes().unwrap().to_vec();
/// // The same model with the drop-in layer: W1.58A8, started from the float weights.
/// let loaded = load_float_checkpoint(LinearConfig::new(16, 4).init(&device), bytes)
///     .unwrap();
/// assert_eq!(loaded.quantizer_params, ["weight.qat.settings", "activation_quantizer.settings"]);
/// assert_eq!(
///     loaded.model.weight.base().into_data(),
///     float.weight.val().into_data()
/// );
/// ```
pub fn load_float_checkpoint<M: Module>(model: M, bytes: Vec<u8>) -> Result<FloatLoad<M>> {
    let file_len = bytes.len();
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)));
    check_table(&mut store, file_len)?;
    let tensors = store
        .get_all_tensors()
        .map_err(|e| burnpack(e.to_string()))?;
    // What the file holds against what the model saves (Burn's save form: a `Col`-layout
    // weight is stored transposed), before anything is loaded.
    let params = saved_form(&model);
    let mut quantizer_params = Vec::new();
    let mut missing = Vec::new();
    for param in &params {
        let Some(tensor) = tensors.get(&param.path) else {
            if param.in_quantizer {
                quantizer_params.push(param.path.clone());
            } else {
                missing.push(param.path.as_str());
            }
            continue;
        };
        let kind = if tensor.dtype.is_float() {
            Kind::Float
        } else if tensor.dtype.is_int() || tensor.dtype.is_uint() {
            Kind::Int
        } else {
            Kind::Bool
        };
        if kind != param.kind {
            return Err(QatError::record(
                param.path.as_str(),
                format!(
                    "stored as {:?}, a {:?} parameter of this model",
                    tensor.dtype, param.kind
                ),
            ));
        }
        if tensor.shape.to_vec() != param.shape {
            return Err(QatError::Shape {
                what: format!("`{}`", param.path),
                expected: format!("{:?}", param.shape),
                got: tensor.shape.to_vec(),
            });
        }
    }
    if let Some(path) = missing.first() {
        return Err(QatError::record(
            *path,
            format!(
                "the model has this parameter, the file does not ({} missing in all, \
                 quantizer parameters aside)",
                missing.len()
            ),
        ));
    }
    let known: HashSet<&str> = params.iter().map(|p| p.path.as_str()).collect();
    let unused: Vec<&String> = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    if let Some(path) = unused.first() {
        return Err(QatError::record(
            path.as_str(),
            format!(
                "the file has this tensor, the model does not ({} unused in all)",
                unused.len()
            ),
        ));
    }
    let mut data = HashMap::new();
    for (path, tensor) in tensors {
        let bytes = tensor.to_bytes().map_err(|e| burnpack(e.to_string()))?;
        let values = TensorData::from_bytes(bytes, tensor.shape.clone(), tensor.dtype);
        data.insert(path.clone(), (tensor.param_id.map(ParamId::from), values));
    }
    drop(store);
    let device = model
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(Device::flex);
    // Each parameter through its own load mapper (a `Col`-layout weight is transposed back),
    // whether it is initialized or not: Burn's loaders compare the stored shape with the live
    // one of an initialized parameter and refuse a `Col` weight.
    let model = model.map(&mut Apply {
        path: Vec::new(),
        data,
    });
    let model = float_types(model, &device, FloatTypes::Cast)?;
    let model = restart_steps(model, &quantizer_params)?;
    check_model(&model)?;
    Ok(FloatLoad {
        model,
        quantizer_params,
    })
}

/// The kind of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Bool,
}

/// A parameter as a record stores it.
struct SavedParam {
    path: String,
    kind: Kind,
    /// The shape of its save form.
    shape: Vec<usize>,
    /// Whether it belongs to a quantizer.
    in_quantizer: bool,
}

/// Every parameter of `model` as a record stores it, in traversal order.
fn saved_form(model: &impl Module) -> Vec<SavedParam> {
    #[derive(Default)]
    struct Collect {
        path: Vec<String>,
        containers: Vec<String>,
        params: Vec<SavedParam>,
    }
    impl Collect {
        fn push(&mut self, kind: Kind, shape: Vec<usize>) {
            self.params.push(SavedParam {
                path: self.path.join("."),
                kind,
                shape,
                in_quantizer: self.containers.iter().any(|c| c == QUANTIZER),
            });
        }
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push(name.to_string());
            self.containers.push(container_type.to_string());
        }

        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
            self.containers.pop();
        }

        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // A lazy parameter's shape is that of its initializer, before its init mapper:
            // the saved form (no allocation). An initialized one is mapped for saving.
            let shape = if param.is_initialized() {
                param.transform_for_save().val().dims().to_vec()
            } else {
                param.lazy_shape().to_vec()
            };
            self.push(Kind::Float, shape);
        }

        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
            self.push(Kind::Int, param.lazy_shape().to_vec());
        }

        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
            self.push(Kind::Bool, param.lazy_shape().to_vec());
        }
    }
    let mut collect = Collect::default();
    model.visit(&mut collect);
    collect.params
}

/// [`load_float_checkpoint`] from a file.
///
/// # Errors
/// [`QatError::Io`] for a file that cannot be read; as [`load_float_checkpoint`].
pub fn load_float_checkpoint_file<M: Module>(
    model: M,
    path: impl AsRef<Path>,
) -> Result<FloatLoad<M>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| QatError::io(path, e))?;
    load_float_checkpoint(model, bytes).map_err(|e| e.in_file(path))
}

/// Loads the tensors of a record by path, each through its parameter's load mapper, with the
/// record's parameter id when it has one (shapes and kinds checked before).
struct Apply {
    path: Vec<String>,
    data: HashMap<String, (Option<ParamId>, TensorData)>,
}

impl Apply {
    fn take(&mut self) -> Option<(Option<ParamId>, TensorData)> {
        self.data.remove(&self.path.join("."))
    }
}

macro_rules! apply_kind {
    ($method:ident, $kind:ty) => {
        fn $method<const D: usize>(
            &mut self,
            param: Param<Tensor<D, $kind>>,
        ) -> Param<Tensor<D, $kind>> {
            match self.take() {
                Some((id, values)) => {
                    let dtype = values.dtype();
                    let tensor = Tensor::from_data(values, (&param.lazy_device(), dtype));
                    let id = id.unwrap_or(param.id);
                    param.transform_for_load(tensor, id)
                }
                None => param,
            }
        }
    };
}

impl ModuleMapper for Apply {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    apply_kind!(map_float, burn::tensor::Float);
    apply_kind!(map_int, Int);
    apply_kind!(map_bool, Bool);
}

/// `model` with each learned step among `missing` recomputed from its (loaded) weight.
fn restart_steps<M: Module>(model: M, missing: &[String]) -> Result<M> {
    let mut steps = HashMap::new();
    for found in quantizers(&model) {
        let path = format!("{}.step", found.path);
        if !missing.contains(&path) {
            continue;
        }
        let Some(weight) = found.weight else {
            continue;
        };
        if let Some(step) = found
            .quantizer
            .initial_step_for(weight)
            .map_err(|e| e.at(&path))?
        {
            steps.insert(path, step);
        }
    }
    if steps.is_empty() {
        return Ok(model);
    }
    Ok(model.map(&mut SetSteps {
        path: Vec::new(),
        steps,
    }))
}

/// Replaces the values of the float parameters at the given paths (keeping their ids).
struct SetSteps {
    path: Vec<String>,
    steps: HashMap<String, Tensor<1>>,
}

impl ModuleMapper for SetSteps {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.steps.remove(&self.path.join(".")) {
            Some(step) if D == 1 => {
                let dims = param.shape().dims::<D>();
                param.map(|_| step.reshape(dims))
            }
            _ => param,
        }
    }
}
