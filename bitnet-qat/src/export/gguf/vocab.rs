//! A [`CharTokenizer`] as a GGUF `gpt2` (byte-level BPE) vocabulary without merges: each
//! character is one token whose text is its UTF-8 bytes in GPT-2's byte-to-unicode alphabet
//! (Radford et al. 2019, `bytes_to_unicode` of openai/gpt-2 `encoder.py`), so llama.cpp's
//! tokenizer splits text into single characters and its detokenizer gives them back.

use crate::lm::CharTokenizer;

use std::sync::LazyLock;

/// ggml's token types.
pub(crate) const NORMAL: i32 = 1;
pub(crate) const CONTROL: i32 = 3;
use super::super::UNKNOWN_TEXT;

/// GPT-2's printable stand-in for each byte: the byte itself for the printable Latin-1 bytes,
/// otherwise `U+0100 + n`, `n` counting the other bytes in order.
static BYTE_CHARS: LazyLock<[char; 256]> = LazyLock::new(|| {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut chars = ['\0'; 256];
    let mut n = 0;
    for b in 0..=255u8 {
        chars[b as usize] = if printable(b) {
            b as char
        } else {
            n += 1;
            char::from_u32(0x100 + n - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    chars
});

fn byte_char(b: u8) -> char {
    BYTE_CHARS[b as usize]
}

/// The byte GPT-2's alphabet maps to `c`, if any.
fn char_byte(c: char) -> Option<u8> {
    static BYTES: LazyLock<std::collections::HashMap<char, u8>> =
        LazyLock::new(|| (0..=255u8).map(|b| (byte_char(b), b)).collect());
    BYTES.get(&c).copied()
}

/// The token text of `c`.
pub(crate) fn token_text(c: char) -> String {
    let mut buf = [0u8; 4];
    c.encode_utf8(&mut buf).bytes().map(byte_char).collect()
}

/// The tokens and token types of `tokenizer` (id order).
pub(crate) fn tokens_of(tokenizer: &CharTokenizer) -> (Vec<String>, Vec<i32>) {
    let tokens = std::iter::once(UNKNOWN_TEXT.to_string())
        .chain(tokenizer.chars().iter().map(|&c| token_text(c)))
        .collect();
    let types = std::iter::once(CONTROL)
        .chain(tokenizer.chars().iter().map(|_| NORMAL))
        .collect();
    (tokens, types)
}

/// The character tokenizer a vocabulary written by [`tokens_of`] is, or `None` for any other
/// vocabulary (one of multi-character tokens, for example).
pub(crate) fn tokenizer_of(tokens: &[&str], types: &[i32]) -> Option<CharTokenizer> {
    if types.len() != tokens.len() || types.first() != Some(&CONTROL) {
        return None;
    }
    let chars = tokens[1..]
        .iter()
        .zip(&types[1..])
        .map(|(t, &ty)| {
            // One character is at most 4 UTF-8 bytes, each one stand-in.
            if t.len() > 4 * 2 {
                return None;
            }
            let bytes: Option<Vec<u8>> = t.chars().map(char_byte).collect();
            let text = String::from_utf8(bytes?).ok()?;
            let mut chars = text.chars();
            match (chars.next(), chars.next(), ty) {
                (Some(c), None, NORMAL) => Some(c),
                _ => None,
            }
        })
        .collect::<Option<Vec<char>>>()?;
    CharTokenizer::from_chars(chars).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_alphabet_golden_values() {
        // openai/gpt-2: space is Ġ (U+0120), newline Ċ (U+010A), 'a' itself, 0xAD is U+0143.
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(0xAD), '\u{143}');
        assert_eq!(token_text('é'), "Ã©");
        let all: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn vocabularies_round_trip() {
        let tokenizer = CharTokenizer::from_text("To be, or not\n to bé?");
        let (tokens, types) = tokens_of(&tokenizer);
        assert_eq!(tokens[0], "<unk>");
        assert_eq!(tokens[1], "Ċ");
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        assert_eq!(tokenizer_of(&tokens, &types), Some(tokenizer));
        let mut merged = tokens.clone();
        merged[2] = "ab";
        assert_eq!(tokenizer_of(&merged, &types), None);
    }
}
