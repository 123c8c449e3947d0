//! The character vocabulary of a Hugging Face `tokenizer.json`, read without building the
//! JSON document: only `model.vocab` is kept, as `(id, character)` pairs, and reading stops
//! being a character vocabulary at the first token of more than one character (other than the
//! unknown token).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::UNKNOWN_TEXT;
use crate::lm::CharTokenizer;

/// The character tokenizer a `tokenizer.json` holds: `None` when the file is not JSON, its
/// vocabulary is not one of single characters with [`UNKNOWN_TEXT`] at id 0, or its ids are not
/// `0..n` exactly once each.
pub(super) fn tokenizer_of(bytes: &[u8]) -> Option<CharTokenizer> {
    let file: TokenizerFile = serde_json::from_slice(bytes).ok()?;
    let vocab = file.model.vocab.0?;
    let mut by_id: Vec<Option<Option<char>>> = vec![None; vocab.len()];
    for (id, token) in vocab {
        let slot = by_id.get_mut(usize::try_from(id).ok()?)?;
        if slot.replace(token).is_some() {
            return None;
        }
    }
    let (unknown, chars) = by_id.split_first()?;
    if *unknown != Some(None) {
        return None;
    }
    let chars = chars
        .iter()
        .map(|t| t.flatten())
        .collect::<Option<Vec<char>>>()?;
    CharTokenizer::from_chars(chars).ok()
}

/// The parts of `tokenizer.json` this reader needs (serde skips the others without keeping
/// them).
#[derive(Deserialize)]
struct TokenizerFile {
    model: TokenizerModel,
}

#[derive(Deserialize)]
struct TokenizerModel {
    vocab: CharVocab,
}

/// `(id, token)` pairs, the token `None` for [`UNKNOWN_TEXT`]; `None` as a whole once a token
/// of several characters is met.
struct CharVocab(Option<Vec<(u64, Option<char>)>>);

impl<'de> Deserialize<'de> for CharVocab {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CharVocabVisitor)
    }
}

struct CharVocabVisitor;

impl<'de> Visitor<'de> for CharVocabVisitor {
    type Value = CharVocab;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of tokens to ids")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CharVocab, A::Error> {
        let mut entries = Some(Vec::new());
        while let Some(token) = map.next_key::<Cow<'de, str>>()? {
            let id: u64 = map.next_value()?;
            let Some(list) = entries.as_mut() else {
                continue;
            };
            let mut chars = token.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => list.push((id, Some(c))),
                _ if token == UNKNOWN_TEXT => list.push((id, None)),
                // Not a character vocabulary: keep reading (the JSON must be valid), keep
                // nothing.
                _ => entries = None,
            }
        }
        Ok(CharVocab(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_vocabularies_are_read_and_others_refused() {
        let read = |vocab: &str| {
            let json =
                format!(r#"{{"version":"1.0","model":{{"type":"WordLevel","vocab":{vocab}}}}}"#);
            tokenizer_of(json.as_bytes())
        };
        let t = read(r#"{"<unk>":0,"a":1,"b":2}"#).unwrap();
        assert_eq!(t.chars(), ['a', 'b']);
        // Ids in another order are fine; a gap, a repeat, a word or no unknown token are not.
        assert_eq!(read(r#"{"b":2,"<unk>":0,"a":1}"#), Some(t));
        assert_eq!(read(r#"{"<unk>":0,"a":1,"b":3}"#), None);
        assert_eq!(read(r#"{"<unk>":0,"a":1,"b":1}"#), None);
        assert_eq!(read(r#"{"<unk>":0,"ab":1}"#), None);
        assert_eq!(read(r#"{"x":0,"a":1}"#), None);
        assert_eq!(tokenizer_of(b"{not json"), None);
    }
}
