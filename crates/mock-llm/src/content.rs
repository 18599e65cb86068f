//! Deterministic content shared by both providers: reply text, token counts,
//! tool-call arguments, stream pieces, ids and embeddings.
//!
//! Nothing here knows a wire format. The provider modules ask for
//! - the reply text ([`reply_text`]) and cap it to `max_tokens` words ([`cap_words`]);
//! - token counts, which are whitespace-separated words ([`count_words`]);
//! - arguments for a tool call built from the tool's JSON schema ([`tool_arguments`]);
//! - the pieces a streamed text or JSON string is cut into ([`text_pieces`],
//!   [`json_pieces`]);
//! - fresh ids in the providers' shapes ([`random_id`]) and the Unix time;
//! - an 8-dimensional unit embedding derived from a hash of the input ([`embedding`]).

use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The word put into every required string property of a generated tool call.
pub(crate) const TOOL_ARGUMENT_WORD: &str = "Paris";

/// The number of tokens the mock charges for `text`: its whitespace-separated words.
pub(crate) fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The text of a plain answer: the fixed reply if one is configured, otherwise
/// `fallback` (`"Mock reply to: <last user text>"` or `"Tool said: <result>"`).
pub(crate) fn reply_text(fixed: Option<&str>, fallback: String) -> String {
    fixed.map_or(fallback, str::to_owned)
}

/// Cuts `text` after its first `max_words` words (trailing whitespace dropped).
///
/// Returns `None` when the text has no more than `max_words` words.
pub(crate) fn cap_words(text: &str, max_words: u64) -> Option<&str> {
    let mut words = 0;
    let mut in_word = false;
    for (index, character) in text.char_indices() {
        if character.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            if words == max_words {
                return Some(text[..index].trim_end());
            }
            words += 1;
        }
    }
    None
}

/// Cuts a reply into stream pieces: `chunk_chars` characters each, or with
/// `chunk_chars == 0` one word and the whitespace after it each.
pub(crate) fn text_pieces(text: &str, chunk_chars: usize) -> Vec<&str> {
    if chunk_chars == 0 {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut after_word = false;
        for (index, character) in text.char_indices() {
            if character.is_whitespace() {
                after_word = true;
            } else if after_word {
                pieces.push(&text[start..index]);
                start = index;
                after_word = false;
            }
        }
        if start < text.len() {
            pieces.push(&text[start..]);
        }
        pieces
    } else {
        char_pieces(text, chunk_chars)
    }
}

/// Cuts a JSON string (tool-call arguments) into at least two pieces when it has
/// two characters or more: `chunk_chars` characters each, or 8 with `chunk_chars == 0`.
pub(crate) fn json_pieces(json: &str, chunk_chars: usize) -> Vec<&str> {
    let characters = json.chars().count();
    let size = if chunk_chars == 0 { 8 } else { chunk_chars };
    let size = size.min(characters.div_ceil(2)).max(1);
    char_pieces(json, size)
}

/// Cuts `text` into pieces of `size` characters (the last one may be shorter).
fn char_pieces(text: &str, size: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (count, (index, _)) in text.char_indices().enumerate() {
        if count > 0 && count % size == 0 {
            pieces.push(&text[start..index]);
            start = index;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Arguments for a call to a tool whose parameters are described by `schema`
/// (a JSON schema object): every required property gets a fixed value by type:
/// a string gets its first `enum` value or [`TOOL_ARGUMENT_WORD`], an integer or
/// number `1`, a boolean `true`; properties of other types and optional ones are
/// left out, so a tool without required parameters is called with `{}`.
pub(crate) fn tool_arguments(schema: &Value) -> Map<String, Value> {
    let mut arguments = Map::new();
    let required = schema["required"].as_array().map_or(&[][..], Vec::as_slice);
    for name in required.iter().filter_map(Value::as_str) {
        let property = &schema["properties"][name];
        let value = match property["type"].as_str() {
            Some("string") => property["enum"]
                .get(0)
                .cloned()
                .unwrap_or_else(|| Value::from(TOOL_ARGUMENT_WORD)),
            Some("integer" | "number") => Value::from(1),
            Some("boolean") => Value::Bool(true),
            _ => continue,
        };
        arguments.insert(name.to_owned(), value);
    }
    arguments
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `prefix` followed by `len` random base62 characters (`chatcmpl-…`, `msg_01…`).
pub(crate) fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let mut state = nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32);
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        let random = splitmix64(&mut state);
        id.push(char::from(ALPHABET[(random % 62) as usize]));
    }
    id
}

/// One step of the SplitMix64 generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An 8-dimensional unit vector derived from the FNV-1a hash of `input`: the
/// same input always gets the same embedding.
pub(crate) fn embedding(input: &str) -> [f32; 8] {
    let mut state = input.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
    });
    let mut vector = [0.0_f32; 8];
    for value in &mut vector {
        // The top 24 bits as a fraction in [0, 1), moved to [-1, 1).
        *value = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    }
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|value| *value /= norm);
    }
    vector
}

/// Standard base64 (with padding), as OpenAI sends `encoding_format: "base64"` embeddings.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let word = group.iter().enumerate().fold(0u32, |word, (i, &byte)| {
            word | u32::from(byte) << (16 - 8 * i)
        });
        for position in 0..4 {
            if position <= group.len() {
                let index = (word >> (18 - 6 * position)) & 0x3F;
                encoded.push(char::from(ALPHABET[index as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn caps_after_the_given_number_of_words() {
        assert_eq!(
            cap_words("Mock reply to:  hello there", 2),
            Some("Mock reply")
        );
        assert_eq!(cap_words("one two", 0), Some(""));
        assert_eq!(cap_words("one two", 2), None);
        assert_eq!(cap_words("one two ", 5), None);
    }

    #[test]
    fn word_pieces_reassemble_the_text() {
        let text = "Mock reply  to: héllo wörld";
        let pieces = text_pieces(text, 0);
        assert_eq!(pieces, ["Mock ", "reply  ", "to: ", "héllo ", "wörld"]);
        assert_eq!(pieces.concat(), text);
        let pieces = text_pieces(text, 4);
        assert_eq!(pieces[0], "Mock");
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|piece| piece.chars().count() <= 4));
    }

    #[test]
    fn json_is_cut_into_at_least_two_pieces() {
        assert_eq!(json_pieces("{}", 0), ["{", "}"]);
        let json = r#"{"city":"Paris"}"#;
        let pieces = json_pieces(json, 0);
        assert_eq!(pieces, [r#"{"city":"#, r#""Paris"}"#]);
        assert_eq!(json_pieces(json, 100).len(), 2);
        assert_eq!(json_pieces(json, 3).concat(), json);
    }

    #[test]
    fn tool_arguments_fill_required_properties_by_type() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "verbose": {"type": "boolean"},
                "note": {"type": "string"}
            },
            "required": ["city", "unit", "days", "verbose"]
        });
        assert_eq!(
            Value::Object(tool_arguments(&schema)),
            json!({"city": "Paris", "unit": "celsius", "days": 1, "verbose": true})
        );
        assert!(tool_arguments(&json!({"type": "object"})).is_empty());
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let first = embedding("hello");
        assert_eq!(first, embedding("hello"));
        assert_ne!(first, embedding("hello!"));
        let norm: f32 = first.iter().map(|value| value * value).sum();
        assert!((norm - 1.0).abs() < 1e-5, "norm² {norm}");
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xFF, 0xEF]), "/+8=");
    }

    #[test]
    fn ids_have_the_prefix_and_length() {
        let first = random_id("chatcmpl-", 29);
        assert!(first.starts_with("chatcmpl-"));
        assert_eq!(first.len(), 9 + 29);
        assert!(first[9..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(first, random_id("chatcmpl-", 29));
    }
}
