//! Text generation with a [`BitNetLm`]: the prompt once through the model, then one token at a
//! time through its [`KvCache`], greedy or sampled.

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::kv_cache::KvCache;
use super::model::BitNetLm;
use crate::error::{QatError, Result};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first of equals).
    Greedy,
    /// A token drawn from the `k` most likely, with probabilities `softmax(logits / temperature)`
    /// renormalised over them.
    TopK {
        /// How many of the most likely tokens may be drawn (≥ 1).
        k: usize,
        /// Softmax temperature (finite, > 0).
        temperature: f64,
    },
}

impl Sampling {
    /// Checks `k` and the temperature.
    ///
    /// # Errors
    /// [`QatError::Config`] for `k == 0` (`Sampling.k`) or a temperature that is not finite
    /// and > 0 (`Sampling.temperature`).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Sampling::Greedy => Ok(()),
            Sampling::TopK { k, temperature } => {
                if k == 0 {
                    return Err(QatError::config("Sampling.k", k, ">= 1"));
                }
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(QatError::config(
                        "Sampling.temperature",
                        temperature,
                        "finite and > 0",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The token chosen from `logits` (one row), drawing from `rng` when sampling.
    fn pick(&self, logits: &[f32], rng: &mut StdRng) -> usize {
        let by_logit = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        match *self {
            Sampling::Greedy => logits
                .iter()
                .copied()
                .enumerate()
                .min_by(by_logit)
                .map_or(0, |(i, _)| i),
            Sampling::TopK { k, temperature } => {
                let mut ranked: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
                ranked.sort_by(by_logit);
                ranked.truncate(k.min(ranked.len()));
                let top = ranked.first().map_or(0.0, |r| r.1 as f64);
                let weights: Vec<f64> = ranked
                    .iter()
                    .map(|r| ((r.1 as f64 - top) / temperature).exp())
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut u = rng.random::<f64>() * total;
                for (r, w) in ranked.iter().zip(&weights) {
                    if u < *w {
                        return r.0;
                    }
                    u -= w;
                }
                ranked.last().map_or(0, |r| r.0)
            }
        }
    }
}

/// Continues `prompt` (token ids) by `new_tokens` tokens and returns them (not the prompt).
/// The prompt runs through the model once, then each token alone with the cache; `seed` makes
/// sampling reproducible.
///
/// # Errors
/// [`QatError::SequenceLength`] for an empty prompt (`len` 0) or a prompt and continuation
/// longer than the model's `max_seq_len`; [`QatError::Token`] for a prompt token outside the
/// vocabulary; [`QatError::Config`] for invalid [`Sampling`] settings;
/// [`QatError::NonFinite`] for NaN or infinite logits (a diverged model);
/// [`QatError::Device`] when the logits cannot be read back.
///
/// # Example
/// ```
/// use bitnet_qat::lm::{BitNetLmConfig, Sampling, generate};
/// use burn::tensor::Device;
///
/// let lm = BitNetLmConfig::new(32, 32, 1, 2, 64).init(&Device::flex()).unwrap();
/// let greedy = generate(&lm, &[1, 2, 3], 5, Sampling::Greedy, 0).unwrap();
/// assert_eq!(greedy.len(), 5);
/// // The same seed draws the same tokens.
/// let top_k = Sampling::TopK { k: 8, temperature: 0.8 };
/// assert_eq!(
///     generate(&lm, &[1, 2, 3], 5, top_k, 7).unwrap(),
///     generate(&lm, &[1, 2, 3], 5, top_k, 7).unwrap()
/// );
/// ```
pub fn generate(
    model: &BitNetLm,
    prompt: &[usize],
    new_tokens: usize,
    sampling: Sampling,
    seed: u64,
) -> Result<Vec<usize>> {
    sampling.validate()?;
    // The positions asked for (saturating: a count past `usize::MAX` is too long anyway).
    let total = prompt.len().saturating_add(new_tokens);
    if prompt.is_empty() || total > model.max_seq_len {
        return Err(QatError::SequenceLength {
            len: if prompt.is_empty() { 0 } else { total },
            max: model.max_seq_len,
        });
    }
    let device = model.embedding.weight.device();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cache = KvCache::new();
    let mut out = Vec::with_capacity(new_tokens);
    let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    // The prompt's ids are checked here; every later id is picked from the logits, so within
    // the vocabulary, and none is read back from the device.
    model.check_ids(&input)?;
    for _ in 0..new_tokens {
        let n = input.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(input, [1, n]), &device);
        let logits = model.forward_cached_ids_checked(tokens, &mut cache)?;
        let vocab = logits.dims()[2];
        let last = logits
            .narrow(1, n - 1, 1)
            .reshape([vocab])
            .into_data()
            .try_cast_as::<f32>()
            .and_then(|d| d.try_into_vec::<f32>())
            .map_err(|e| QatError::device("BitNetLm logits during generation", e))?;
        let nan = last.iter().filter(|v| v.is_nan()).count();
        let inf = last.iter().filter(|v| v.is_infinite()).count();
        if nan + inf > 0 {
            return Err(QatError::NonFinite {
                what: "BitNetLm logits during generation".into(),
                nan,
                inf,
            });
        }
        let next = sampling.pick(&last, &mut rng);
        out.push(next);
        input = vec![next as i64];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_and_top_k_stays_in_the_top_k() {
        let mut rng = StdRng::seed_from_u64(1);
        let logits = [0.5, 3.0, -1.0, 3.0, 2.9, f32::MIN];
        assert_eq!(Sampling::Greedy.pick(&logits, &mut rng), 1);
        let top2 = Sampling::TopK {
            k: 2,
            temperature: 1.0,
        };
        let mut seen = [0usize; 6];
        for _ in 0..2000 {
            seen[top2.pick(&logits, &mut rng)] += 1;
        }
        // Two equal logits: about half each, nothing else.
        assert_eq!(seen[0] + seen[2] + seen[4] + seen[5], 0);
        assert!((800..1200).contains(&seen[1]), "{seen:?}");
        // A low temperature is nearly greedy.
        let cold = Sampling::TopK {
            k: 6,
            temperature: 0.01,
        };
        let logits = [0.0, 1.0, 0.5];
        assert!((0..100).all(|_| cold.pick(&logits, &mut rng) == 1));
    }

    #[test]
    fn lengths_past_the_model_are_typed_errors() {
        let lm = crate::lm::BitNetLmConfig::new(8, 16, 1, 2, 32)
            .with_max_seq_len(8)
            .init(&burn::tensor::Device::flex())
            .unwrap();
        for (prompt, n, len) in [(vec![1, 2], 7, 9), (vec![1], usize::MAX, usize::MAX)] {
            assert_eq!(
                generate(&lm, &prompt, n, Sampling::Greedy, 0),
                Err(QatError::SequenceLength { len, max: 8 })
            );
        }
        assert_eq!(
            generate(&lm, &[], 1, Sampling::Greedy, 0),
            Err(QatError::SequenceLength { len: 0, max: 8 })
        );
        assert_eq!(
            generate(&lm, &[9], 1, Sampling::Greedy, 0),
            Err(QatError::Token {
                id: 9,
                vocab_size: 8
            })
        );
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let zero = Sampling::TopK {
            k: 0,
            temperature: 1.0,
        };
        assert!(matches!(
            zero.validate(),
            Err(QatError::Config { name, value, allowed })
                if name == "Sampling.k" && value == "0" && allowed == ">= 1"
        ));
        let hot = Sampling::TopK {
            k: 3,
            temperature: f64::NAN,
        };
        assert!(matches!(
            hot.validate(),
            Err(QatError::Config { name, value, .. })
                if name == "Sampling.temperature" && value == "NaN"
        ));
    }
}
