//! [`LmWeights`]: a [`BitNetLm`]'s weights on the host, as the export formats write them and
//! their readers give them back, and the models built from them.

use std::collections::HashMap;

use bitnet_kernels::packed::PackedTernary;
use burn::config::Config;
use burn::module::Param;
use burn::nn::RmsNorm;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{QatError, Result};
use crate::infer::{PackedWeight, attach, pack};
use crate::lm::{BitNetLm, BitNetLmConfig, Projection};

/// The names of a block's seven projections (q, k, v, o, gate, up, down) in llama.cpp's GGUF
/// (`blk.N.<name>`) and in Hugging Face's `BitNetForCausalLM` (`model.layers.N.<name>`).
pub(crate) const PROJECTION_NAMES: [(&str, &str); 7] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The names of a block's four norms (pre-attention, attention SubLN, pre-FFN, FFN SubLN) in
/// llama.cpp's GGUF (`blk.N.<name>.weight`) and in Hugging Face's `BitNetForCausalLM`
/// (`model.layers.N.<name>.weight`).
pub(crate) const NORM_NAMES: [(&str, &str); 4] = [
    ("attn_norm", "input_layernorm"),
    ("attn_sub_norm", "self_attn.attn_sub_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_sub_norm", "mlp.ffn_sub_norm"),
];

/// The float encodings the readers take.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FloatBytes {
    /// Little-endian f32.
    F32,
    /// Little-endian IEEE half.
    F16,
    /// Little-endian bfloat16.
    Bf16,
}

/// The values of `data` in `kind`, checked finite.
///
/// # Errors
/// The index of the first non-finite value.
pub(crate) fn decode_floats(kind: FloatBytes, data: &[u8]) -> std::result::Result<Vec<f32>, usize> {
    let values: Vec<f32> = match kind {
        FloatBytes::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        FloatBytes::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        FloatBytes::Bf16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(i),
        None => Ok(values),
    }
}

/// This crate's configuration stored in an exported file as JSON, checked against the sizes
/// the file's own keys give, `keys` (vocabulary, width, blocks, FFN, heads, key/value heads).
pub(crate) fn stored_config(
    json: &str,
    keys: [usize; 6],
) -> std::result::Result<BitNetLmConfig, String> {
    let config = BitNetLmConfig::load_binary(json.as_bytes()).map_err(|e| e.to_string())?;
    let ours = [
        config.vocab_size,
        config.d_model,
        config.n_layers,
        config.d_ff,
        config.n_heads,
        config.kv_heads(),
    ];
    if ours == keys {
        Ok(config)
    } else {
        Err(format!(
            "the stored configuration's (vocabulary, width, blocks, FFN, heads, kv heads) \
             {ours:?} disagree with the file's {keys:?}"
        ))
    }
}

/// One projection's weight, rows are outputs: packed ternary values with their scales
/// (`w = value / s`), or f32 values `[d_output][d_input]`.
#[derive(Debug, Clone)]
pub(crate) enum ProjectionWeights {
    /// Ternary (or binary) values and scales.
    Ternary(PackedTernary),
    /// Full-precision values, row-major `[d_output, d_input]`.
    Float(Vec<f32>),
}

/// The norms and projections of one decoder block.
#[derive(Debug, Clone)]
pub(crate) struct BlockWeights {
    /// The pre-attention norm `[d_model]`.
    pub attention_norm: Vec<f32>,
    /// The attention SubLN `[d_model]`.
    pub attention_sub_norm: Vec<f32>,
    /// The pre-FFN norm `[d_model]`.
    pub ffn_norm: Vec<f32>,
    /// The FFN SubLN `[d_ff]`.
    pub ffn_sub_norm: Vec<f32>,
    /// q, k, v, o, gate, up, down.
    pub projections: Vec<ProjectionWeights>,
}

/// A language model's configuration and weights on the host.
#[derive(Debug, Clone)]
pub(crate) struct LmWeights {
    /// The configuration.
    pub config: BitNetLmConfig,
    /// The token embedding `[vocab_size][d_model]`.
    pub embedding: Vec<f32>,
    /// The separate output head `[vocab_size][d_model]`, `None` when tied to the embedding.
    pub head: Option<Vec<f32>>,
    /// The final norm `[d_model]`.
    pub norm: Vec<f32>,
    /// The blocks.
    pub blocks: Vec<BlockWeights>,
}

fn host<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_cast_as::<f32>()
        .and_then(|d| d.try_into_vec::<f32>())
        .map_err(|e| QatError::device(what, e))
}

fn gamma(norm: &RmsNorm, what: &str) -> Result<Vec<f32>> {
    host(norm.gamma.val(), what)
}

impl BlockWeights {
    /// The four norms in the order of [`NORM_NAMES`].
    pub fn norms(&self) -> [&Vec<f32>; 4] {
        [
            &self.attention_norm,
            &self.attention_sub_norm,
            &self.ffn_norm,
            &self.ffn_sub_norm,
        ]
    }

    /// A block from its four norms in the order of [`NORM_NAMES`] and its projections.
    pub fn new(norms: [Vec<f32>; 4], projections: Vec<ProjectionWeights>) -> Self {
        let [attention_norm, attention_sub_norm, ffn_norm, ffn_sub_norm] = norms;
        Self {
            attention_norm,
            attention_sub_norm,
            ffn_norm,
            ffn_sub_norm,
            projections,
        }
    }
}

impl LmWeights {
    /// The weights of `lm` (packed first when a ternary projection is not packed yet).
    ///
    /// # Errors
    /// As [`pack`]; [`QatError::Mismatch`] for a model of another size than `config`;
    /// [`QatError::Device`] for a tensor that cannot be read back.
    pub fn from_lm(lm: &BitNetLm, config: &BitNetLmConfig) -> Result<Self> {
        config.validate()?;
        let unpacked = lm.bit_linears().any(|l| l.packed_weight().is_none());
        let packed;
        let lm = if unpacked {
            packed = pack(lm)?;
            &packed
        } else {
            lm
        };
        if lm.blocks.len() != config.n_layers || lm.vocab_size() != config.vocab_size {
            return Err(QatError::mismatch(
                "the model and its configuration (blocks, tokens)",
                format!("({}, {})", config.n_layers, config.vocab_size),
                format!("({}, {})", lm.blocks.len(), lm.vocab_size()),
            ));
        }
        let blocks = lm
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let projections = b
                    .projections()
                    .iter()
                    .zip(PROJECTION_NAMES)
                    .map(|(p, (name, _))| {
                        let what = format!("blk.{i}.{name}");
                        match p {
                            Projection::Bit(l) => l
                                .packed_weight()
                                .ok_or_else(|| {
                                    QatError::unsupported(&what, "its weight is not packed")
                                })?
                                .to_packed()
                                .map(ProjectionWeights::Ternary),
                            Projection::Full(l) => host(l.weight.val().transpose(), &what)
                                .map(ProjectionWeights::Float),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(BlockWeights {
                    attention_norm: gamma(&b.attention_norm, "attn_norm")?,
                    attention_sub_norm: gamma(&b.attention.sub_norm, "attn_sub_norm")?,
                    ffn_norm: gamma(&b.ffn_norm, "ffn_norm")?,
                    ffn_sub_norm: gamma(&b.ffn.sub_norm, "ffn_sub_norm")?,
                    projections,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let weights = Self {
            config: config.clone(),
            embedding: host(lm.embedding.weight.val(), "the embedding")?,
            head: match &lm.head {
                Some(h) => Some(host(h.weight.val().transpose(), "the output head")?),
                None => None,
            },
            norm: gamma(&lm.norm, "the final norm")?,
            blocks,
        };
        weights.check()?;
        Ok(weights)
    }

    /// Checks every size against the configuration, and that the projections are ternary
    /// exactly when the configuration quantizes weights.
    ///
    /// # Errors
    /// [`QatError::Mismatch`] naming the first tensor that does not fit.
    pub fn check(&self) -> Result<()> {
        let c = &self.config;
        c.validate()?;
        let bad = |what: String, expected: String, found: String| {
            Err(QatError::mismatch(what, expected, found))
        };
        let len = |what: &str, v: &[f32], n: usize| {
            if v.len() == n {
                Ok(())
            } else {
                bad(
                    format!("{what} (values)"),
                    n.to_string(),
                    v.len().to_string(),
                )
            }
        };
        len("the embedding", &self.embedding, c.vocab_size * c.d_model)?;
        if self.head.is_some() == c.tied_head {
            let head = |separate: bool| {
                if separate {
                    "a separate output head"
                } else {
                    "a head tied to the embedding"
                }
            };
            return bad(
                "the output head".into(),
                head(!c.tied_head).into(),
                head(self.head.is_some()).into(),
            );
        }
        if let Some(h) = &self.head {
            len("the output head", h, c.vocab_size * c.d_model)?;
        }
        len("the final norm", &self.norm, c.d_model)?;
        if self.blocks.len() != c.n_layers {
            return bad(
                "blocks".into(),
                c.n_layers.to_string(),
                self.blocks.len().to_string(),
            );
        }
        for (i, b) in self.blocks.iter().enumerate() {
            len(
                &format!("block {i} attn_norm"),
                &b.attention_norm,
                c.d_model,
            )?;
            len(
                &format!("block {i} attn_sub_norm"),
                &b.attention_sub_norm,
                c.d_model,
            )?;
            len(&format!("block {i} ffn_norm"), &b.ffn_norm, c.d_model)?;
            len(&format!("block {i} ffn_sub_norm"), &b.ffn_sub_norm, c.d_ff)?;
            if b.projections.len() != 7 {
                return bad(
                    format!("block {i} projections"),
                    "7".into(),
                    b.projections.len().to_string(),
                );
            }
            for ((p, (d_in, d_out)), (name, _)) in b
                .projections
                .iter()
                .zip(c.projection_dims())
                .zip(PROJECTION_NAMES)
            {
                let what = format!("block {i} {name}");
                match (p, c.weight_quant.is_some()) {
                    (ProjectionWeights::Ternary(t), true) => {
                        if (t.rows(), t.cols()) != (d_out, d_in) {
                            return bad(
                                format!("{what} (outputs x inputs)"),
                                format!("{d_out} x {d_in}"),
                                format!("{} x {}", t.rows(), t.cols()),
                            );
                        }
                    }
                    (ProjectionWeights::Float(v), false) => len(&what, v, d_in * d_out)?,
                    (_, quantized) => {
                        let kind = |ternary: bool| if ternary { "ternary" } else { "float" };
                        return bad(
                            format!("{what} weights"),
                            kind(quantized).into(),
                            kind(!quantized).into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The model for inference on `device`: ternary projections packed (never in f32).
    ///
    /// # Errors
    /// As [`LmWeights::check`].
    pub fn packed_lm(&self, device: &Device) -> Result<BitNetLm> {
        self.check()?;
        let lm = self.config.init_packed_skeleton(device)?;
        self.fill(lm, device, |p, w| match (p, w) {
            (Projection::Bit(layer), ProjectionWeights::Ternary(t)) => {
                let packed = PackedWeight::from_packed(t, false, device)?;
                let layer = attach(layer, HashMap::from([("weight".to_string(), packed)]))?;
                Ok(Projection::Bit(layer))
            }
            (p, w) => float_projection(p, w, device),
        })
    }

    /// The quantization-aware model on `device`, to fine-tune: each ternary projection is a
    /// `BitLinear` whose latent weight is the dequantized weight `value / s`.
    ///
    /// # Errors
    /// As [`LmWeights::check`].
    pub fn qat_lm(&self, device: &Device) -> Result<BitNetLm> {
        self.check()?;
        let lm = self.config.init(device)?;
        self.fill(lm, device, |p, w| match (p, w) {
            (Projection::Bit(layer), ProjectionWeights::Ternary(t)) => {
                let [d_in, d_out] = layer.weight.shape().dims::<2>();
                let weight = PackedWeight::from_packed(t, false, device)?.dequantize()?;
                let config = self
                    .config
                    .projection(d_in, d_out)
                    .ok_or_else(|| QatError::mismatch("projection weights", "float", "ternary"))?;
                Ok(Projection::Bit(config.init_with(weight, None, device)?))
            }
            (p, w) => float_projection(p, w, device),
        })
    }

    /// Sets the embedding, norms and head of `lm`, and each projection to what `projection`
    /// builds from the model's own and the weights'.
    fn fill(
        &self,
        mut lm: BitNetLm,
        device: &Device,
        mut projection: impl FnMut(Projection, &ProjectionWeights) -> Result<Projection>,
    ) -> Result<BitNetLm> {
        let c = &self.config;
        let vector = |v: &[f32]| Param::from_tensor(Tensor::<1>::from_floats(v, device));
        let matrix = |v: &[f32], rows: usize, cols: usize| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
        };
        lm.embedding.weight = Param::from_tensor(matrix(&self.embedding, c.vocab_size, c.d_model));
        lm.norm.gamma = vector(&self.norm);
        if let (Some(head), Some(w)) = (&mut lm.head, &self.head) {
            head.weight = Param::from_tensor(matrix(w, c.vocab_size, c.d_model).transpose());
        }
        for (block, w) in lm.blocks.iter_mut().zip(&self.blocks) {
            block.attention_norm.gamma = vector(&w.attention_norm);
            block.attention.sub_norm.gamma = vector(&w.attention_sub_norm);
            block.ffn_norm.gamma = vector(&w.ffn_norm);
            block.ffn.sub_norm.gamma = vector(&w.ffn_sub_norm);
            for (slot, weights) in block.projections_mut().into_iter().zip(&w.projections) {
                // A placeholder while the projection is rebuilt from the one it replaces.
                let placeholder = Projection::Full(
                    burn::nn::LinearConfig::new(1, 1)
                        .with_bias(false)
                        .init(device),
                );
                let old = std::mem::replace(slot, placeholder);
                *slot = projection(old, weights)?;
            }
        }
        Ok(lm)
    }
}

/// A full-precision projection with `weights` (`[d_output][d_input]`).
fn float_projection(p: Projection, w: &ProjectionWeights, device: &Device) -> Result<Projection> {
    match (p, w) {
        (Projection::Full(mut layer), ProjectionWeights::Float(values)) => {
            let [d_in, d_out] = layer.weight.shape().dims::<2>();
            layer.weight = Param::from_tensor(
                Tensor::<2>::from_data(TensorData::new(values.clone(), [d_out, d_in]), device)
                    .transpose(),
            );
            Ok(Projection::Full(layer))
        }
        _ => Err(QatError::mismatch(
            "projection weights (the configuration's kind)",
            "float",
            "ternary",
        )),
    }
}
