//! OpenAI's legacy Completions API (`POST /v1/completions`) over the
//! gateway's canonical format (Chat Completions), on `serde_json::Value`s.
//!
//! A prompt becomes one user message; the answer's message text becomes the
//! completion's `text`, whole or chunk by chunk. What only the legacy API can
//! do (`suffix`, `echo`, `logprobs`, `best_of`, token-id prompts, several
//! prompts in one request) has no chat equivalent and is a [`TranslateError`]
//! naming the field, never silently dropped. Depends on
//! [`crate::translate`]'s error type only.

use serde_json::{json, Map, Value};

use crate::translate::TranslateError;

/// The legacy API's default `max_tokens` (the chat API has none).
pub const DEFAULT_MAX_TOKENS: u64 = 16;

/// Fields that keep their meaning in a chat request.
const SAME: [&str; 12] = [
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "logit_bias",
];

fn unsupported(path: &str, what: &'static str, value: &Value) -> TranslateError {
    TranslateError::Unsupported {
        path: path.to_owned(),
        what,
        value: value.to_string(),
    }
}

/// Translates a Completions request into a Chat Completions request.
pub fn request_to_chat(req: &Value) -> Result<Value, TranslateError> {
    let obj = req.as_object().ok_or_else(|| TranslateError::WrongType {
        path: String::new(),
        expected: "a JSON object",
    })?;
    let set = |key: &str| obj.get(key).filter(|v| !v.is_null());
    if let Some(v) = set("suffix") {
        return Err(unsupported("suffix", "field", v));
    }
    if let Some(v) = set("echo").filter(|v| **v != Value::Bool(false)) {
        return Err(unsupported("echo", "field", v));
    }
    if let Some(v) = set("logprobs") {
        return Err(unsupported("logprobs", "field", v));
    }
    if let Some(v) = set("best_of").filter(|v| v.as_u64() != Some(1)) {
        return Err(unsupported("best_of", "value", v));
    }
    let prompt = match set("prompt") {
        None => {
            return Err(TranslateError::Missing {
                path: "prompt".into(),
            })
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => s.clone(),
            [_] => return Err(unsupported("prompt[0]", "prompt of token ids", &items[0])),
            _ => {
                return Err(TranslateError::WrongType {
                    path: "prompt".into(),
                    expected: "one prompt (send several prompts as several requests)",
                })
            }
        },
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: "prompt".into(),
                expected: "a string",
            })
        }
    };
    let mut chat = Map::new();
    for key in SAME {
        if let Some(v) = set(key) {
            chat.insert(key.to_owned(), v.clone());
        }
    }
    chat.insert(
        "messages".into(),
        json!([{"role": "user", "content": prompt}]),
    );
    let max = set("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    chat.insert("max_tokens".into(), max.into());
    Ok(Value::Object(chat))
}

/// The completion id for a chat id (`chatcmpl-x` -> `cmpl-x`).
fn completion_id(chat_id: &str) -> String {
    match chat_id.strip_prefix("chatcmpl-") {
        Some(rest) => format!("cmpl-{rest}"),
        None => format!("cmpl-{chat_id}"),
    }
}

/// Turns a canonical `chat.completion` into a `text_completion`.
pub fn chat_to_completion(canon: &Value) -> Value {
    let choices: Vec<Value> = canon["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "text": c["message"]["content"].as_str().unwrap_or_default(),
                "index": c["index"].as_u64().unwrap_or(0),
                "logprobs": null,
                "finish_reason": c["finish_reason"],
            })
        })
        .collect();
    let mut out = json!({
        "id": completion_id(canon["id"].as_str().unwrap_or_default()),
        "object": "text_completion",
        "created": canon["created"],
        "model": canon["model"],
        "choices": choices,
    });
    if !canon["usage"].is_null() {
        out["usage"] = canon["usage"].clone();
    }
    out
}

/// Turns a `chat.completion.chunk` into a `text_completion` chunk; `None` for
/// a chunk with neither text nor a finish reason (the role chunk, say). A
/// usage-only chunk keeps its usage and empty choices.
pub fn chunk_to_completion(chunk: &Value) -> Option<Value> {
    let mut choices = Vec::new();
    for c in chunk["choices"].as_array().into_iter().flatten() {
        let text = c["delta"]["content"].as_str().unwrap_or_default();
        if text.is_empty() && c["finish_reason"].is_null() {
            continue;
        }
        choices.push(json!({
            "text": text,
            "index": c["index"].as_u64().unwrap_or(0),
            "logprobs": null,
            "finish_reason": c["finish_reason"],
        }));
    }
    let usage = &chunk["usage"];
    if choices.is_empty() && usage.is_null() {
        return None;
    }
    let mut out = json!({
        "id": completion_id(chunk["id"].as_str().unwrap_or_default()),
        "object": "text_completion",
        "created": chunk["created"],
        "model": chunk["model"],
        "choices": choices,
    });
    if !usage.is_null() {
        out["usage"] = usage.clone();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_becomes_one_user_message_with_the_legacy_default_cap() {
        let chat = request_to_chat(
            &json!({"model": "m", "prompt": ["Say hi"], "stop": "\n", "echo": false}),
        )
        .unwrap();
        assert_eq!(
            chat,
            json!({"model": "m", "stop": "\n", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi"}]})
        );
    }

    #[test]
    fn legacy_only_fields_are_refused() {
        for (body, start) in [
            (
                json!({"model": "m", "prompt": "x", "suffix": "y"}),
                "suffix:",
            ),
            (json!({"model": "m", "prompt": "x", "echo": true}), "echo:"),
            (
                json!({"model": "m", "prompt": "x", "logprobs": 2}),
                "logprobs:",
            ),
            (json!({"model": "m", "prompt": [1, 2]}), "prompt:"),
            (json!({"model": "m", "prompt": [[1, 2]]}), "prompt[0]:"),
            (json!({"model": "m", "prompt": ["a", "b"]}), "prompt:"),
            (json!({"model": "m"}), "prompt:"),
        ] {
            let e = request_to_chat(&body).unwrap_err().to_string();
            assert!(e.starts_with(start), "{body}: {e}");
        }
    }

    #[test]
    fn answers_and_chunks_translate() {
        let canon = json!({"id": "chatcmpl-7", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}});
        let c = chat_to_completion(&canon);
        assert_eq!(c["id"], "cmpl-7");
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["text"], "hi");
        assert_eq!(c["usage"]["total_tokens"], 3);
        let role = json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
        assert_eq!(chunk_to_completion(&role), None);
        let text = json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]});
        assert_eq!(
            chunk_to_completion(&text).unwrap()["choices"][0]["text"],
            "hi"
        );
    }
}
