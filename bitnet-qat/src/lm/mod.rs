//! The BitNet b1.58 language model — a model, not a layer: a decoder-only transformer in the
//! layout of Microsoft's
//! BitNet b1.58 2B4T (Ma et al., "BitNet b1.58 2B4T Technical Report", 2025) — pre-norm blocks
//! with rotary grouped-query attention and a gated feed-forward network, SubLN norms before the
//! output and down projections, ternary projections with 8-bit activations — built from
//! [`BitLinear`](crate::nn::BitLinear) layers, so the quantizers, schedules, statistics and
//! [`crate::infer::pack`] work on it as on any model.
//!
//! With it: its text data (the Shakespeare corpus, [`TextCorpus`], [`TokenWindows`],
//! [`TokenBatcher`]) and its [`CharTokenizer`]. See [`BitNetLmConfig`] and `docs/lm.md`.

mod attention;
mod block;
mod config;
mod ffn;
mod generate;
mod kv_cache;
mod model;
mod projection;
mod rope;
mod saved;
mod text;
mod tokenizer;

pub use attention::Attention;
pub use block::DecoderBlock;
pub use config::{
    BitNetLmConfig, FfnActivation, MAX_LAYERS, MAX_MODEL_ELEMENTS, MAX_PARAM_ELEMENTS, ParamCounts,
};
pub use ffn::GatedFfn;
pub use generate::{Sampling, generate};
pub use kv_cache::KvCache;
pub use model::BitNetLm;
pub use projection::Projection;
pub use saved::SavedLm;
pub use text::{
    SHAKESPEARE_VALID_WORKS, SHAKESPEARE_WORKS, TextCorpus, TokenBatch, TokenBatcher, TokenWindow,
    TokenWindows, shakespeare_dir,
};
pub use tokenizer::{CharTokenizer, UNKNOWN_TOKEN};
