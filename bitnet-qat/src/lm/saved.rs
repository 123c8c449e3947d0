//! [`SavedLm`]: a trained language model saved as a folder — its configuration, tokenizer and
//! weights (packed or f32) — and read back by a loader that no file can crash.

use std::path::Path;

use burn::tensor::Device;

use super::{BitNetLm, BitNetLmConfig};
use crate::error::{QatError, Result, json_offset};
use crate::infer::{load_packed_bytes, pack, save};
use crate::lm::CharTokenizer;

/// A trained language model saved as a folder: `lm.json` (the [`BitNetLmConfig`]),
/// `tokenizer.json` and the weights, `packed.bpk` (2-bit packed projections, see
/// [`crate::infer::pack`]) for a ternary or binary model, `model.bpk` (f32) otherwise.
///
/// [`SavedLm::load`] reads such a folder, written by anyone: every size the configuration
/// describes is matched against the bytes of the weights file before the model is built (a
/// configuration that asks for more parameters than the file can hold is an error, not an
/// allocation), the packed model loads into [`BitNetLmConfig::init_packed_skeleton`] (its
/// projections are never allocated in f32), and the loaded model is checked
/// ([`crate::check::check_model`]: codes, scales, finite values, quantizer settings).
///
/// # Example
/// ```
/// use bitnet_qat::lm::CharTokenizer;
/// use bitnet_qat::lm::{BitNetLmConfig, SavedLm};
/// use burn::tensor::{Device, Int, Tensor};
///
/// let device = Device::flex();
/// let tokenizer = CharTokenizer::from_text("abcdefg");
/// let config = BitNetLmConfig::new(tokenizer.vocab_size(), 256, 1, 2, 256).with_max_seq_len(8);
/// let lm = config.init(&device)?;
/// let dir = std::env::temp_dir().join(format!("bitnet-doc-saved-{}", std::process::id()));
/// SavedLm::save(&dir, &config, &tokenizer, &lm, true)?;
/// let (loaded, loaded_config, _) = SavedLm::load(&dir, &device)?;
/// assert_eq!(loaded_config.d_model, 256);
/// let tokens = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
/// assert_eq!(loaded.try_forward(tokens)?.dims(), [1, 3, 8]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), bitnet_qat::QatError>(())
/// ```
pub struct SavedLm;

/// The smallest float element a weights file can hold (f16 and bf16 load as themselves): a
/// configuration may ask for at most `file bytes / FLOAT_BYTES_MIN` float elements.
const FLOAT_BYTES_MIN: usize = 2;

impl SavedLm {
    /// The file of the configuration in a saved folder.
    pub const CONFIG: &'static str = "lm.json";
    /// The file of the tokenizer in a saved folder.
    pub const TOKENIZER: &'static str = "tokenizer.json";
    /// The file of packed weights in a saved folder.
    pub const PACKED: &'static str = "packed.bpk";
    /// The file of f32 weights in a saved folder.
    pub const FULL: &'static str = "model.bpk";

    /// Writes `lm` (packed when `packed`) with its configuration and tokenizer into `dir`, each
    /// file atomically, and removes a weights file of the other kind left by an earlier save.
    ///
    /// # Errors
    /// [`QatError::Io`] for a file that cannot be written; [`QatError::Mismatch`] for a
    /// tokenizer of another vocabulary size than `config`; as [`crate::infer::pack`] for a
    /// model that does not pack.
    pub fn save(
        dir: &Path,
        config: &BitNetLmConfig,
        tokenizer: &CharTokenizer,
        lm: &BitNetLm,
        packed: bool,
    ) -> Result<()> {
        crate::export::check_vocabulary(tokenizer, config)?;
        std::fs::create_dir_all(dir).map_err(|e| QatError::io(dir, e))?;
        let config_path = dir.join(Self::CONFIG);
        bitnet_kernels::file::write_atomic(&config_path, config.to_string().as_bytes())
            .map_err(|e| QatError::io(&config_path, e))?;
        tokenizer.save(dir.join(Self::TOKENIZER))?;
        let (written, other) = if packed {
            save(pack(lm)?, dir.join(Self::PACKED))?;
            (Self::PACKED, Self::FULL)
        } else {
            save(lm.clone(), dir.join(Self::FULL))?;
            (Self::FULL, Self::PACKED)
        };
        // A weights file of the other kind, left by an earlier save, would be loaded instead.
        let stale = dir.join(other);
        match std::fs::remove_file(&stale) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(QatError::io(
                &stale,
                format!("removing it beside the new {written}: {e}"),
            )),
        }
    }

    /// Reads a folder written by [`SavedLm::save`] onto `device`: the model (packed weights
    /// stay packed), its configuration and tokenizer.
    ///
    /// # Errors
    /// [`QatError::Io`] for a missing or unreadable file; [`QatError::File`] naming the file
    /// and field for a malformed `lm.json` or `tokenizer.json`, or a configuration that asks
    /// for more parameters than the weights file holds; [`QatError::Mismatch`] for a tokenizer
    /// of another vocabulary size; as [`crate::infer::load_packed`] for the weights.
    pub fn load(dir: &Path, device: &Device) -> Result<(BitNetLm, BitNetLmConfig, CharTokenizer)> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| QatError::io(&path, e))
        };
        let config = read(Self::CONFIG)?;
        let tokenizer = read(Self::TOKENIZER)?;
        let packed = dir.join(Self::PACKED).exists();
        let weights = read(if packed { Self::PACKED } else { Self::FULL })?;
        let weights_file = if packed { Self::PACKED } else { Self::FULL };
        Self::load_bytes(&config, &tokenizer, weights, packed, device).map_err(|e| {
            // `lm.json` and `tokenizer.json` are named for their files, the weights for their
            // format (burnpack).
            let file = match &e {
                QatError::File { format, .. }
                    if [Self::CONFIG, Self::TOKENIZER].contains(format) =>
                {
                    *format
                }
                _ => weights_file,
            };
            e.in_file(&dir.join(file))
        })
    }

    /// [`SavedLm::load`] from the contents of the three files: `lm.json`, `tokenizer.json` and
    /// the weights (`packed.bpk` when `packed`, else `model.bpk`).
    ///
    /// # Errors
    /// As [`SavedLm::load`] (the files named without a folder).
    pub fn load_bytes(
        config: &[u8],
        tokenizer: &[u8],
        weights: Vec<u8>,
        packed: bool,
        device: &Device,
    ) -> Result<(BitNetLm, BitNetLmConfig, CharTokenizer)> {
        let config = parse_config(config)?;
        let text = std::str::from_utf8(tokenizer).map_err(|e| QatError::File {
            format: Self::TOKENIZER,
            path: String::new(),
            field: String::new(),
            offset: Some(e.valid_up_to() as u64),
            reason: "not UTF-8".into(),
        })?;
        let tokenizer = CharTokenizer::from_json(text)?;
        crate::export::check_vocabulary(&tokenizer, &config)?;
        // Nothing the configuration describes is built before the file is known to hold it.
        let counts = config
            .param_counts()
            .unwrap_or_else(|| unreachable!("validated: the counts do not overflow"));
        let (needed, what) = if packed {
            (counts.dense, "embedding, norms and head")
        } else {
            (counts.total(), "parameters")
        };
        let holds = weights.len() / FLOAT_BYTES_MIN;
        if needed > holds {
            return Err(QatError::File {
                format: Self::CONFIG,
                path: String::new(),
                field: "vocab_size, d_model, n_layers, d_ff".into(),
                offset: None,
                reason: format!(
                    "the configuration's {what} take {needed} elements; the {}-byte {} holds \
                     at most {holds}",
                    weights.len(),
                    if packed { Self::PACKED } else { Self::FULL }
                ),
            });
        }
        let skeleton = if packed {
            config.init_packed_skeleton(device)?
        } else {
            config.init(device)?
        };
        let lm = load_packed_bytes(skeleton, weights)?;
        Ok((lm, config, tokenizer))
    }
}

/// The configuration in the bytes of `lm.json`, parsed and validated: a [`QatError::File`]
/// naming the field (and its byte offset) otherwise.
fn parse_config(bytes: &[u8]) -> Result<BitNetLmConfig> {
    let file = |field: String, offset: Option<u64>, reason: String| QatError::File {
        format: SavedLm::CONFIG,
        path: String::new(),
        field,
        offset,
        reason,
    };
    let config: BitNetLmConfig = serde_json::from_slice(bytes).map_err(|e| {
        let offset = json_offset(bytes, e.line(), e.column());
        file(String::new(), offset, e.to_string())
    })?;
    config.validate().map_err(|e| {
        let (field, reason) = crate::export::config_field(e);
        let key = format!("\"{field}\"");
        let offset = bytes
            .windows(key.len())
            .position(|w| !field.is_empty() && w == key.as_bytes())
            .map(|p| p as u64);
        file(field, offset, reason)
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(dir: &Path) -> (BitNetLmConfig, CharTokenizer) {
        let device = Device::flex();
        let tokenizer = CharTokenizer::from_text("abc");
        let config = BitNetLmConfig::new(4, 256, 1, 2, 256).with_max_seq_len(8);
        let lm = config.init(&device).unwrap();
        SavedLm::save(dir, &config, &tokenizer, &lm, true).unwrap();
        (config, tokenizer)
    }

    #[test]
    fn a_configuration_larger_than_its_weights_is_refused_before_it_is_built() {
        let dir = std::env::temp_dir().join(format!("bitnet-saved-big-{}", std::process::id()));
        let (config, _) = saved(&dir);
        let device = Device::flex();
        // 10^12 blocks: refused by the configuration's own range, naming the field.
        let json = config
            .to_string()
            .replace("\"n_layers\": 1", "\"n_layers\": 1000000000000");
        std::fs::write(dir.join(SavedLm::CONFIG), &json).unwrap();
        match SavedLm::load(&dir, &device).map(|_| ()) {
            Err(QatError::File {
                format: "lm.json",
                field,
                offset: Some(offset),
                reason,
                ..
            }) => {
                assert_eq!(field, "n_layers");
                assert_eq!(&json[offset as usize..][..10], "\"n_layers\"");
                assert!(reason.contains("1..=1024"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // 1000 blocks are allowed by the range but need ~1.5 GB the 130 kB file cannot hold.
        let json = config
            .to_string()
            .replace("\"n_layers\": 1", "\"n_layers\": 1000");
        std::fs::write(dir.join(SavedLm::CONFIG), &json).unwrap();
        let packed_len = std::fs::metadata(dir.join(SavedLm::PACKED)).unwrap().len();
        match SavedLm::load(&dir, &device).map(|_| ()) {
            Err(QatError::File {
                format: "lm.json",
                reason,
                ..
            }) => {
                assert!(
                    reason.contains(&format!("{packed_len}-byte packed.bpk")),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A syntax error: its byte offset.
        std::fs::write(dir.join(SavedLm::CONFIG), "{\n  \"d_model\": 3x\n}").unwrap();
        match SavedLm::load(&dir, &device).map(|_| ()) {
            Err(QatError::File {
                format: "lm.json",
                offset: Some(offset),
                ..
            }) => assert_eq!(offset, 16, "the stray `x`"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
