//! [`KvCache`]: the keys and values of the tokens a [`BitNetLm`](super::BitNetLm) has seen.

use burn::tensor::Tensor;

/// One block's cached keys and values `[batch, n_kv_heads, len, head_dim]`, `None` before the
/// first token.
pub(crate) type LayerKv = Option<(Tensor<4>, Tensor<4>)>;

/// The rotated keys and the values of every block for the tokens seen so far, so that
/// generation runs one new token through the model instead of the whole sequence
/// ([`BitNetLm::forward_cached`](super::BitNetLm::forward_cached)).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Per block: keys and values `[batch, n_kv_heads, len, head_dim]`.
    pub(crate) layers: Vec<LayerKv>,
    pub(crate) len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of tokens in the cache: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token was seen yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token.
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
    }
}
