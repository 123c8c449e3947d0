//! [`BitNetLm`]: the BitNet b1.58 decoder-only language model.

use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{Int, Tensor};

use super::block::DecoderBlock;
use super::kv_cache::{KvCache, LayerKv};
use super::rope::rope_tables;
use crate::error::{QatError, Result};
use crate::nn::BitLinear;

/// The BitNet b1.58 language model of a [`BitNetLmConfig`](super::BitNetLmConfig): token
/// embedding, decoder blocks, final RMSNorm and output head. [`crate::infer::pack`] packs its
/// ternary projections like those of any model; [`BitNetLm::forward_cached`] runs generation.
#[derive(Module, Debug)]
pub struct BitNetLm {
    /// Token embedding `[vocab_size, d_model]` (full precision).
    pub embedding: Embedding,
    /// The decoder blocks.
    pub blocks: Vec<DecoderBlock>,
    /// The final RMSNorm.
    pub norm: RmsNorm,
    /// The output head `[d_model, vocab_size]` (full precision), or `None` when the head is the
    /// transposed embedding.
    pub head: Option<Linear>,
    /// The longest sequence the model accepts.
    pub max_seq_len: usize,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
}

impl BitNetLm {
    /// The logits `[batch, len, vocab_size]` of every position of `tokens` `[batch, len]`
    /// (causal: position `t` sees tokens `0..=t`).
    ///
    /// # Panics
    /// For a sequence longer than `max_seq_len`, token ids outside the vocabulary (Burn's
    /// embedding lookup), or projections whose recorded settings do not fit them (a corrupted
    /// record); [`BitNetLm::try_forward`] checks all three.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let len = tokens.dims()[1];
        match self
            .check_len(0, len)
            .and_then(|()| self.run(tokens, 0, None))
        {
            Ok(logits) => logits,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`BitNetLm::forward`] with its input checked (the token check reads `tokens` back).
    ///
    /// # Errors
    /// [`QatError::SequenceLength`] for an empty sequence or one longer than `max_seq_len`;
    /// [`QatError::Token`] for a token id outside the vocabulary; [`QatError::Device`] when the
    /// token ids cannot be read back.
    pub fn try_forward(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.check_len(0, tokens.dims()[1])?;
        self.check_tokens(&tokens)?;
        self.run(tokens, 0, None)
    }

    /// The logits of `tokens` `[batch, len]` at positions `cache.len()..cache.len() + len`,
    /// attending to the tokens of `cache` too, which it then holds as well. Feeding a sequence
    /// in pieces gives the logits of feeding it whole.
    ///
    /// # Errors
    /// [`QatError::SequenceLength`] for an empty `tokens` or when the sequence grows past
    /// `max_seq_len`; [`QatError::Token`] for a token id outside the vocabulary;
    /// [`QatError::Mismatch`] for a cache of another model, another batch size or another
    /// device; [`QatError::Device`] when the token ids cannot be read back.
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<3>> {
        self.check_tokens(&tokens)?;
        self.forward_cached_ids_checked(tokens, cache)
    }

    /// [`BitNetLm::forward_cached`] for tokens whose ids are known to be in the vocabulary
    /// (generation checks the prompt once and then feeds the ids it picked from the logits), so
    /// they are not read back.
    pub(crate) fn forward_cached_ids_checked(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>> {
        let [batch, len] = tokens.dims();
        self.check_len(cache.len, len)?;
        self.check_cache(cache, batch)?;
        cache.layers.resize(self.blocks.len(), None);
        let offset = cache.len;
        let logits = self.run(tokens, offset, Some(&mut cache.layers))?;
        cache.len += len;
        Ok(logits)
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.embedding.weight.shape().dims::<2>()[0]
    }

    /// Whether the model runs packed weights: it has ternary (or binary) projections and
    /// every one of them is packed ([`crate::infer::pack`], [`crate::infer::load_packed`]).
    pub fn is_packed(&self) -> bool {
        let mut layers = self.bit_linears().peekable();
        layers.peek().is_some() && layers.all(|l| l.packed_weight().is_some())
    }

    /// The `BitLinear` projections of every block.
    pub(crate) fn bit_linears(&self) -> impl Iterator<Item = &BitLinear> {
        self.blocks
            .iter()
            .flat_map(|b| b.projections())
            .filter_map(|p| p.bit_linear())
    }

    fn check_len(&self, offset: usize, len: usize) -> Result<()> {
        if len == 0 || offset + len > self.max_seq_len {
            return Err(QatError::SequenceLength {
                len: if len == 0 { 0 } else { offset + len },
                max: self.max_seq_len,
            });
        }
        Ok(())
    }

    /// An empty cache, or one this model filled for `batch` sequences: every block's keys and
    /// values `[batch, n_kv_heads, cache.len(), head_dim]` on the model's device.
    fn check_cache(&self, cache: &KvCache, batch: usize) -> Result<()> {
        if cache.len == 0 {
            if cache.layers.iter().any(Option::is_some) {
                return Err(QatError::mismatch(
                    "KV cache of 0 tokens",
                    "no keys and values",
                    "keys and values without tokens",
                ));
            }
            return Ok(());
        }
        if cache.layers.len() != self.blocks.len() {
            return Err(QatError::mismatch(
                "KV cache blocks",
                format!("{} (the model's)", self.blocks.len()),
                format!("{} (a cache of another model)", cache.layers.len()),
            ));
        }
        let device = self.embedding.weight.device();
        for (i, (layer, block)) in cache.layers.iter().zip(&self.blocks).enumerate() {
            let att = &block.attention;
            let expected = [batch, att.n_kv_heads, cache.len, att.head_dim];
            match layer {
                Some((k, v)) if k.dims() == expected && v.dims() == expected => {
                    for (what, t) in [("keys", k), ("values", v)] {
                        if t.device() != device {
                            return Err(QatError::mismatch(
                                format!("KV cache block {i} {what} device"),
                                format!("{device:?} (the model's)"),
                                format!("{:?}", t.device()),
                            ));
                        }
                    }
                }
                Some((k, v)) => {
                    let (what, dims) = if k.dims() != expected {
                        ("keys", k.dims())
                    } else {
                        ("values", v.dims())
                    };
                    return Err(QatError::mismatch(
                        format!("KV cache block {i} {what} shape"),
                        format!("{expected:?}"),
                        format!("{dims:?} (another batch size or model)"),
                    ));
                }
                None => {
                    return Err(QatError::mismatch(
                        format!("KV cache block {i}"),
                        format!("keys and values for {} tokens", cache.len),
                        "nothing",
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: &Tensor<2, Int>) -> Result<()> {
        let values = crate::recorded::int_values(&tokens.clone().into_data())
            .map_err(|e| QatError::device("BitNetLm token ids", e))?;
        self.check_ids(&values)
    }

    /// Every id in the vocabulary.
    pub(crate) fn check_ids(&self, ids: &[i64]) -> Result<()> {
        let vocab_size = self.vocab_size();
        let vocab = vocab_size as i64;
        match ids.iter().find(|&&v| !(0..vocab).contains(&v)) {
            Some(&id) => Err(QatError::Token { id, vocab_size }),
            None => Ok(()),
        }
    }

    fn run(
        &self,
        tokens: Tensor<2, Int>,
        offset: usize,
        mut cache: Option<&mut Vec<LayerKv>>,
    ) -> Result<Tensor<3>> {
        let [b, t] = tokens.dims();
        let mut x = self.embedding.forward(tokens);
        let device = x.device();
        let head_dim = self.blocks.first().map_or(2, |blk| blk.attention.head_dim);
        let (cos, sin) = rope_tables(head_dim, self.rope_theta, offset, t, &device);
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|layers| &mut layers[i]);
            x = block.forward(x, &cos, &sin, offset, slot)?;
        }
        let x = self.norm.forward(x);
        Ok(match &self.head {
            Some(head) => head.forward(x),
            None => {
                let d = x.dims()[2];
                let table = self.embedding.weight.val();
                let v = table.dims()[0];
                x.reshape([b * t, d])
                    .matmul(table.transpose())
                    .reshape([b, t, v])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::{BitNetLmConfig, FfnActivation, Projection};
    use burn::tensor::{Device, TensorData};

    fn tokens(ids: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
    }

    fn tiny(device: &Device) -> BitNetLm {
        BitNetLmConfig::new(11, 32, 2, 4, 48)
            .with_n_kv_heads(Some(2))
            .with_max_seq_len(16)
            .init(device)
            .unwrap()
    }

    #[test]
    fn sizes_that_cannot_exist_are_typed_errors() {
        let device = Device::flex();
        for (config, field) in [
            (
                BitNetLmConfig::new(usize::MAX / 2, 1 << 20, 1, 2, 64),
                "BitNetLmConfig.vocab_size",
            ),
            (
                BitNetLmConfig::new(85, 1 << 20, 1, 2, 1 << 20),
                "BitNetLmConfig.d_ff",
            ),
        ] {
            assert!(matches!(
                config.init(&device),
                Err(QatError::Config { name, allowed, .. })
                    if name == field && allowed.contains("elements")
            ));
        }
        assert!(matches!(
            BitNetLmConfig::new(85, 64, 1, 3, 64).init(&device),
            Err(QatError::Config { name, value, .. })
                if name == "BitNetLmConfig.d_model" && value == "64"
        ));
    }

    #[test]
    fn a_later_token_does_not_change_earlier_logits() {
        let device = Device::flex();
        let lm = tiny(&device);
        let a = lm.forward(tokens(&[1, 2, 3, 4, 5, 6], &device));
        let b = lm.forward(tokens(&[1, 2, 3, 9, 5, 6], &device));
        let head = |t: Tensor<3>, n| values(t.narrow(1, 0, n));
        assert_eq!(head(a.clone(), 3), head(b.clone(), 3));
        // Position 3 and later do change.
        assert_ne!(values(a.narrow(1, 3, 1)), values(b.narrow(1, 3, 1)));
    }

    #[test]
    fn cached_pieces_give_the_full_sequence_logits() {
        let device = Device::flex();
        let lm = tiny(&device);
        let ids = [3, 1, 4, 1, 5, 9, 2, 6];
        let full = values(lm.forward(tokens(&ids, &device)));
        let mut cache = KvCache::new();
        let mut pieces = Vec::new();
        for part in [&ids[..3], &ids[3..4], &ids[4..]] {
            pieces.extend(values(
                lm.forward_cached(tokens(part, &device), &mut cache)
                    .unwrap(),
            ));
        }
        assert_eq!(cache.len(), 8);
        // Per-token activation scales and the same reductions: equal up to float reordering.
        assert!(close(&pieces, &full, 1e-5));
        // Past max_seq_len (16): a typed error, the cache unchanged.
        let long = tokens(&[1; 9], &device);
        assert!(matches!(
            lm.forward_cached(long, &mut cache),
            Err(QatError::SequenceLength { len: 17, max: 16 })
        ));
        assert_eq!(cache.len(), 8);
        assert_eq!(
            lm.check_len(0, 0),
            Err(QatError::SequenceLength { len: 0, max: 16 })
        );
        // A cache of another batch size or of another model: typed errors.
        let two = Tensor::<2, Int>::from_data([[1], [2]], &device);
        assert!(matches!(
            lm.forward_cached(two, &mut cache),
            Err(QatError::Mismatch { what, expected, found })
                if what == "KV cache block 0 keys shape"
                    && expected == "[2, 2, 8, 8]"
                    && found.starts_with("[1, 2, 8, 8]")
        ));
        let other = BitNetLmConfig::new(11, 32, 1, 4, 48)
            .with_max_seq_len(16)
            .init(&device)
            .unwrap();
        assert!(matches!(
            other.forward_cached(tokens(&[1], &device), &mut cache),
            Err(QatError::Mismatch { what, expected, found })
                if what == "KV cache blocks"
                    && expected.starts_with("1 ")
                    && found.starts_with("2 ")
        ));
        assert!(matches!(
            lm.try_forward(tokens(&[1, 11], &device)),
            Err(QatError::Token {
                id: 11,
                vocab_size: 11
            })
        ));
    }

    #[test]
    fn grouped_query_heads_equal_full_heads_with_repeated_keys() {
        let device = Device::flex();
        // Full precision, so that repeating key/value columns changes nothing else.
        let config = BitNetLmConfig::new(9, 16, 1, 4, 24)
            .with_weight_quant(None)
            .with_activation_quant(None);
        let gqa = config
            .clone()
            .with_n_kv_heads(Some(2))
            .init(&device)
            .unwrap();
        let mut mha = config.init(&device).unwrap();
        mha.embedding = gqa.embedding.clone();
        let (src, dst) = (&gqa.blocks[0], &mut mha.blocks[0]);
        dst.attention_norm = src.attention_norm.clone();
        dst.ffn_norm = src.ffn_norm.clone();
        dst.ffn = src.ffn.clone();
        dst.attention.q_proj = src.attention.q_proj.clone();
        dst.attention.o_proj = src.attention.o_proj.clone();
        // Query heads 0, 1 use key/value head 0; heads 2, 3 head 1 (head width 4).
        let repeat = |p: &Projection| match p {
            Projection::Full(l) => {
                let w = l.weight.val();
                let cols = [0, 0, 1, 1].map(|h| w.clone().narrow(1, 4 * h, 4));
                let mut l = l.clone();
                l.weight = burn::module::Param::from_tensor(Tensor::cat(cols.to_vec(), 1));
                Projection::Full(l)
            }
            Projection::Bit(_) => unreachable!("full precision"),
        };
        dst.attention.k_proj = repeat(&src.attention.k_proj);
        dst.attention.v_proj = repeat(&src.attention.v_proj);
        mha.norm = gqa.norm.clone();
        let ids = tokens(&[1, 2, 3, 4, 5], &device);
        assert!(close(
            &values(gqa.forward(ids.clone())),
            &values(mha.forward(ids)),
            1e-6
        ));
    }

    #[test]
    fn the_tied_head_is_the_embedding() {
        let device = Device::flex().autodiff();
        let lm = tiny(&device);
        assert!(lm.head.is_none());
        let separate = BitNetLmConfig::new(11, 32, 2, 4, 48)
            .with_n_kv_heads(Some(2))
            .with_tied_head(false)
            .init(&device)
            .unwrap();
        assert_eq!(separate.num_params() - lm.num_params(), 11 * 32);
        // Token 7 is not in the input: its embedding row gets a gradient through the head only.
        let loss = lm
            .forward(tokens(&[1, 2, 3], &device))
            .narrow(2, 7, 1)
            .sum();
        let grads = loss.backward();
        let g = lm.embedding.weight.grad(&grads).unwrap();
        let row = values(g.narrow(0, 7, 1));
        assert!(row.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn a_packed_model_loads_into_a_skeleton_without_f32_projections() {
        let device = Device::flex();
        let config = BitNetLmConfig::new(11, 256, 1, 4, 512).with_n_kv_heads(Some(2));
        let packed = crate::infer::pack(&config.init(&device).unwrap()).unwrap();
        let skeleton = config.init_packed_skeleton(&device).unwrap();
        let q = skeleton.blocks[0].attention.q_proj.bit_linear().unwrap();
        assert!(!q.weight.is_initialized());
        assert!(q.weight_quantizer().is_none());
        let path = std::env::temp_dir().join(format!("bitnet-qat-lm-{}.bpk", std::process::id()));
        crate::infer::save(packed.clone(), &path).unwrap();
        let loaded = crate::infer::load_packed(skeleton, &path);
        std::fs::remove_file(&path).unwrap();
        let loaded = loaded.unwrap();
        assert!(loaded.is_packed());
        let ids = tokens(&[1, 5, 2, 7], &device);
        assert_eq!(
            values(loaded.forward(ids.clone())),
            values(packed.forward(ids))
        );
    }

    /// The whole forward pass of a full-precision model in plain Rust: RMSNorm, rotary
    /// grouped-query attention with SubLN, the squared-ReLU gated FFN with SubLN, the tied head.
    #[test]
    fn forward_matches_a_plain_rust_reference() {
        let device = Device::flex();
        let (vocab, d, h, kv, hd, ff, eps) = (7, 8, 2, 1, 4, 6, 1e-5f32);
        let mut lm = BitNetLmConfig::new(vocab, d, 1, h, ff)
            .with_n_kv_heads(Some(kv))
            .with_weight_quant(None)
            .with_activation_quant(None)
            .with_activation(FfnActivation::ReluSquared)
            .with_rope_theta(100.0)
            .init(&device)
            .unwrap();
        // Norm gains other than 1, so the reference checks that they are used.
        let gain = |n: usize, k: f32| {
            Tensor::<1>::from_data(
                TensorData::new((0..n).map(|i| 1.0 + k * i as f32).collect(), [n]),
                &device,
            )
        };
        let blk = &mut lm.blocks[0];
        blk.attention_norm.gamma = burn::module::Param::from_tensor(gain(d, 0.1));
        blk.attention.sub_norm.gamma = burn::module::Param::from_tensor(gain(d, -0.05));
        blk.ffn_norm.gamma = burn::module::Param::from_tensor(gain(d, 0.07));
        blk.ffn.sub_norm.gamma = burn::module::Param::from_tensor(gain(ff, 0.03));
        lm.norm.gamma = burn::module::Param::from_tensor(gain(d, -0.02));
        let ids = [3usize, 0, 6, 2, 5];
        let got = values(lm.forward(tokens(&ids.map(|i| i as i64), &device)));

        let v1 = |t: Tensor<1>| values(t);
        let w = |p: &Projection| match p {
            Projection::Full(l) => values(l.weight.val()),
            Projection::Bit(_) => unreachable!(),
        };
        let blk = &lm.blocks[0];
        let table = values(lm.embedding.weight.val());
        let matmul = |x: &[f32], d_in: usize, w: &[f32], d_out: usize| -> Vec<f32> {
            x.chunks(d_in)
                .flat_map(|row| {
                    (0..d_out)
                        .map(|o| (0..d_in).map(|i| row[i] * w[i * d_out + o]).sum::<f32>())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let rms = |x: &[f32], d: usize, g: &[f32]| -> Vec<f32> {
            x.chunks(d)
                .flat_map(|row| {
                    let r = (row.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
                    row.iter()
                        .zip(g)
                        .map(|(v, g)| v / r * g)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let rope = |x: &mut [f32], width: usize| {
            for (t, row) in x.chunks_mut(width).enumerate() {
                for head in row.chunks_mut(hd) {
                    for i in 0..hd / 2 {
                        let a = t as f64 * 100f64.powf(-2.0 * i as f64 / hd as f64);
                        let (c, s) = (a.cos() as f32, a.sin() as f32);
                        let (lo, hi) = (head[i], head[i + hd / 2]);
                        head[i] = lo * c - hi * s;
                        head[i + hd / 2] = hi * c + lo * s;
                    }
                }
            }
        };
        let n = ids.len();
        let x: Vec<f32> = ids
            .iter()
            .flat_map(|&i| table[i * d..(i + 1) * d].to_vec())
            .collect();
        let a_in = rms(&x, d, &v1(blk.attention_norm.gamma.val()));
        let mut q = matmul(&a_in, d, &w(&blk.attention.q_proj), h * hd);
        let mut k = matmul(&a_in, d, &w(&blk.attention.k_proj), kv * hd);
        let v = matmul(&a_in, d, &w(&blk.attention.v_proj), kv * hd);
        rope(&mut q, h * hd);
        rope(&mut k, kv * hd);
        let mut att = vec![0.0f32; n * h * hd];
        for head in 0..h {
            let g = head / (h / kv);
            for t in 0..n {
                let scores: Vec<f32> = (0..=t)
                    .map(|s| {
                        (0..hd)
                            .map(|j| q[t * h * hd + head * hd + j] * k[s * kv * hd + g * hd + j])
                            .sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for j in 0..hd {
                    att[t * h * hd + head * hd + j] = (0..=t)
                        .map(|s| e[s] / z * v[s * kv * hd + g * hd + j])
                        .sum();
                }
            }
        }
        let att = rms(&att, d, &v1(blk.attention.sub_norm.gamma.val()));
        let o = matmul(&att, d, &w(&blk.attention.o_proj), d);
        let h1: Vec<f32> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
        let f_in = rms(&h1, d, &v1(blk.ffn_norm.gamma.val()));
        let gate = matmul(&f_in, d, &w(&blk.ffn.gate_proj), ff);
        let up = matmul(&f_in, d, &w(&blk.ffn.up_proj), ff);
        let hidden: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g.max(0.0).powi(2) * u)
            .collect();
        let hidden = rms(&hidden, ff, &v1(blk.ffn.sub_norm.gamma.val()));
        let down = matmul(&hidden, ff, &w(&blk.ffn.down_proj), d);
        let h2: Vec<f32> = h1.iter().zip(&down).map(|(a, b)| a + b).collect();
        let out = rms(&h2, d, &v1(lm.norm.gamma.val()));
        let expected: Vec<f32> = out
            .chunks(d)
            .flat_map(|row| {
                (0..vocab)
                    .map(|t| (0..d).map(|j| row[j] * table[t * d + j]).sum::<f32>())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(close(&got, &expected, 1e-4), "{got:?}\n{expected:?}");
    }
}
