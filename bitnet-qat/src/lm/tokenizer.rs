//! [`CharTokenizer`]: a character-level tokenizer, saved beside a model.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{QatError, Result};

/// The id of every character outside the vocabulary; it decodes to U+FFFD.
pub const UNKNOWN_TOKEN: usize = 0;

/// The tag of a saved tokenizer.
const FORMAT: &str = "bitnet-qat char tokenizer";
/// The file format's name in errors.
const FILE: &str = "tokenizer.json";

/// A [`QatError::File`] of a tokenizer read from memory.
fn file_error(field: &str, reason: String) -> QatError {
    QatError::File {
        format: FILE,
        path: String::new(),
        field: field.into(),
        offset: None,
        reason,
    }
}
const VERSION: u32 = 1;
/// The largest vocabulary a saved tokenizer may hold (Unicode has fewer scalar values).
const MAX_CHARS: usize = 0x11_0000;

/// Character-level tokenization: one id per character of a vocabulary built from a text, id 0
/// ([`UNKNOWN_TOKEN`]) for every other character.
///
/// # Example
/// ```
/// use bitnet_qat::lm::{CharTokenizer, UNKNOWN_TOKEN};
///
/// let tokenizer = CharTokenizer::from_text("to be, or not to be");
/// let ids = tokenizer.encode("not to be");
/// assert_eq!(tokenizer.decode(&ids), "not to be");
/// // 'q' is not in the vocabulary.
/// assert_eq!(tokenizer.encode("q")[0], UNKNOWN_TOKEN);
/// assert_eq!(tokenizer.decode(&[UNKNOWN_TOKEN]), "\u{FFFD}");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    ids: HashMap<char, usize>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    format: String,
    version: u32,
    chars: String,
}

impl CharTokenizer {
    /// The vocabulary of the characters of `text`, in code-point order (ids from 1).
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_sorted(chars)
    }

    fn from_sorted(chars: Vec<char>) -> Self {
        let ids = chars.iter().enumerate().map(|(i, &c)| (c, i + 1)).collect();
        Self { chars, ids }
    }

    /// The tokenizer whose ids `1..=chars.len()` are `chars` (an exported vocabulary read
    /// back).
    ///
    /// # Errors
    /// [`QatError::File`] (format `tokenizer.json`, field `chars`) for a vocabulary that is
    /// empty, too long, unsorted or repeats a character.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        Self::from_char_iter(chars.into_iter())
    }

    /// [`CharTokenizer::from_chars`] of characters read one by one, refused at the first that
    /// breaks the order or the limit (a hostile vocabulary is never collected whole).
    fn from_char_iter(chars: impl Iterator<Item = char>) -> Result<Self> {
        let bad = |msg: String| file_error("chars", msg);
        let mut sorted: Vec<char> = Vec::new();
        for c in chars {
            if sorted.len() == MAX_CHARS {
                return Err(bad(format!("more than {MAX_CHARS} characters")));
            }
            if sorted.last().is_some_and(|&last| last >= c) {
                return Err(bad(format!(
                    "characters not strictly increasing (repeated or unsorted) at character {}",
                    sorted.len()
                )));
            }
            sorted.push(c);
        }
        if sorted.is_empty() {
            return Err(bad("0 characters".into()));
        }
        Ok(Self::from_sorted(sorted))
    }

    /// The characters of ids `1..vocab_size()`, in order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Ids in use: the characters and [`UNKNOWN_TOKEN`].
    pub fn vocab_size(&self) -> usize {
        self.chars.len() + 1
    }

    /// The ids of the characters of `text` ([`UNKNOWN_TOKEN`] for characters outside the
    /// vocabulary).
    pub fn encode(&self, text: &str) -> Vec<usize> {
        text.chars()
            .map(|c| self.ids.get(&c).copied().unwrap_or(UNKNOWN_TOKEN))
            .collect()
    }

    /// The text of `ids`; [`UNKNOWN_TOKEN`] and ids outside the vocabulary give U+FFFD.
    pub fn decode(&self, ids: &[usize]) -> String {
        ids.iter()
            .map(|&id| {
                id.checked_sub(1)
                    .and_then(|i| self.chars.get(i))
                    .copied()
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect()
    }

    /// The tokenizer as JSON.
    pub fn to_json(&self) -> String {
        let saved = Saved {
            format: FORMAT.into(),
            version: VERSION,
            chars: self.chars.iter().collect(),
        };
        serde_json::to_string(&saved).unwrap_or_else(|e| unreachable!("plain strings: {e}"))
    }

    /// A tokenizer from the JSON of [`CharTokenizer::to_json`].
    ///
    /// # Errors
    /// [`QatError::File`] (format `tokenizer.json`) naming the field: text that is not such
    /// JSON (with the byte offset), another format or version, or a vocabulary that is empty,
    /// too long, unsorted or repeats a character.
    pub fn from_json(json: &str) -> Result<Self> {
        let saved: Saved = serde_json::from_str(json).map_err(|e| QatError::File {
            format: FILE,
            path: String::new(),
            field: String::new(),
            offset: crate::error::json_offset(json.as_bytes(), e.line(), e.column()),
            reason: e.to_string(),
        })?;
        if saved.format != FORMAT {
            return Err(file_error(
                "format",
                format!(
                    "{:?}: not a tokenizer of this crate ({FORMAT:?})",
                    saved.format
                ),
            ));
        }
        if saved.version != VERSION {
            return Err(file_error(
                "version",
                format!("{}: this build reads version {VERSION}", saved.version),
            ));
        }
        Self::from_char_iter(saved.chars.chars())
    }

    /// Writes the tokenizer to `path` as JSON, atomically.
    ///
    /// # Errors
    /// [`QatError::Io`] for a file that cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        bitnet_kernels::file::write_atomic(path, self.to_json().as_bytes())
            .map_err(|e| QatError::io(path, e))
    }

    /// Reads a tokenizer written by [`CharTokenizer::save`].
    ///
    /// # Errors
    /// [`QatError::Io`] for a file that cannot be read; [`QatError::File`] naming the file for
    /// a malformed one (see [`CharTokenizer::from_json`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| QatError::io(path, e))?;
        Self::from_json(&json).map_err(|e| e.in_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_files() {
        let text = "O Romeo, Romeo! wherefore art thou Romeo?\n";
        let tokenizer = CharTokenizer::from_text(text);
        // 17 distinct characters and the unknown token.
        assert_eq!(tokenizer.vocab_size(), 18);
        let ids = tokenizer.encode(text);
        assert_eq!(ids.len(), text.chars().count());
        assert!(ids.iter().all(|&i| (1..18).contains(&i)));
        assert_eq!(tokenizer.decode(&ids), text);
        // '\n' < ' ' < '!' ...: code-point order.
        assert_eq!(tokenizer.encode("\n !"), vec![1, 2, 3]);
        let path = std::env::temp_dir().join(format!("bitnet-qat-tok-{}.json", std::process::id()));
        tokenizer.save(&path).unwrap();
        let loaded = CharTokenizer::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), tokenizer);
    }

    #[test]
    fn unknown_characters_and_ids() {
        let tokenizer = CharTokenizer::from_text("abc");
        assert_eq!(tokenizer.encode("abz"), vec![1, 2, UNKNOWN_TOKEN]);
        assert_eq!(
            tokenizer.decode(&[3, 0, 4, usize::MAX]),
            "c\u{FFFD}\u{FFFD}\u{FFFD}"
        );
    }

    #[test]
    fn malformed_files_are_record_errors() {
        let good = CharTokenizer::from_text("abc").to_json();
        let cases = [
            (good[..good.len() - 3].to_string(), "", "EOF"),
            (good.replace("\"abc\"", "\"\""), "chars", "0 characters"),
            (
                good.replace("\"abc\"", "\"aab\""),
                "chars",
                "strictly increasing",
            ),
            (
                good.replace("\"abc\"", "\"cba\""),
                "chars",
                "strictly increasing",
            ),
            (
                good.replace("\"version\":1", "\"version\":2"),
                "version",
                "reads version 1",
            ),
            (
                good.replace("char tokenizer", "bpe"),
                "format",
                "not a tokenizer",
            ),
            ("[1, 2]".to_string(), "", "invalid type"),
        ];
        for (json, expected_field, expected) in cases {
            match CharTokenizer::from_json(&json) {
                Err(QatError::File {
                    format: "tokenizer.json",
                    field,
                    reason,
                    ..
                }) => {
                    assert_eq!(field, expected_field, "{json}");
                    assert!(reason.contains(expected), "{json}: {reason}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        // A syntax error is located: the byte of the stray character.
        match CharTokenizer::from_json("{\"format\": x}") {
            Err(QatError::File { offset, .. }) => assert_eq!(offset, Some(11)),
            other => panic!("{other:?}"),
        }
        let missing = std::env::temp_dir().join("bitnet-qat-no-such-tokenizer.json");
        assert!(matches!(
            CharTokenizer::load(&missing),
            Err(QatError::Io { path, .. }) if path.ends_with("bitnet-qat-no-such-tokenizer.json")
        ));
    }
}
