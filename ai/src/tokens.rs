//! Token counting with OpenAI's `o200k_base` byte-pair encoding, for budgets and
//! usage estimates made before a provider reports real numbers.
//!
//! `o200k_base` is the encoding of GPT-4o, GPT-4.1 and the o-series models, the
//! models most traffic goes to; for older `cl100k_base` models (GPT-4, GPT-3.5)
//! and for other vendors' tokenizers the counts are close but not exact, which is
//! fine for what they are used for: limits and estimates, not billing.
//!
//! How it works:
//! 1. The tokenizer (about 200k ranks, decoded from data embedded in
//!    `tiktoken-rs` and packed into 3.4 MiB by the crate's `bpe` module) is
//!    built once, on first use, in a [`OnceLock`]; call [`warm_up`] at startup
//!    so no request pays for that. Building it briefly needs tiktoken's own
//!    tokenizer (33 MiB of heap), freed once the compact one is made.
//! 2. [`count`] encodes without special-token handling (tiktoken's
//!    `encode_ordinary`, with identical counts), the cheapest path: special
//!    tokens in user text count as plain text. The tokenizer is immutable and
//!    `Sync`, so shard threads count concurrently without a lock.
//! 3. [`count_chat_request`] applies OpenAI's documented per-message overheads
//!    to the text of an OpenAI Chat Completions request; it is an estimate.

use std::sync::OnceLock;
use std::thread::JoinHandle;

use serde_json::Value;

use crate::bpe::O200kCounter;

/// Tokens OpenAI adds around every chat message (`<|start|>role ... <|end|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra token when a message carries a `name`.
const TOKENS_PER_NAME: u64 = 1;
/// Tokens that prime the assistant's reply (`<|start|>assistant<|message|>`).
const REPLY_PRIMING_TOKENS: u64 = 3;

static TOKENIZER: OnceLock<O200kCounter> = OnceLock::new();

fn tokenizer() -> &'static O200kCounter {
    TOKENIZER.get_or_init(O200kCounter::build)
}

/// Builds the tokenizer on a background thread, so the first request that
/// counts tokens does not wait for it (it takes a few hundred milliseconds),
/// then runs `after` on that thread: the building freed tens of megabytes
/// (the temporary table the ranks come from), which the caller's allocator
/// may keep until told to hand them back. Joining the handle is optional.
pub fn warm_up(after: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hypergate-tokenizer-warm-up".to_owned())
        .spawn(|| {
            tokenizer();
            after();
        })
}

/// Number of `o200k_base` tokens in `text` (special tokens such as
/// `<|endoftext|>` are counted as ordinary text).
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    tokenizer().count(text) as u64
}

/// Estimated prompt tokens of an OpenAI Chat Completions request body.
///
/// Counted: per message, [`TOKENS_PER_MESSAGE`] plus the role, the `name` (and
/// one more token for it), string content or the `text` of text parts, the
/// function name and arguments of each tool call, and `tool_call_id`; per tool
/// definition (`tools[].function` or legacy `functions[]`), its name,
/// description and parameters schema as compact JSON; plus
/// [`REPLY_PRIMING_TOKENS`] once. Not counted: images, audio and files (their
/// cost depends on the model and resolution), and the hidden formatting OpenAI
/// wraps tool definitions in, so requests with tools come out a little low.
/// A body that is not a chat request yields just the priming tokens.
pub fn count_chat_request(request: &Value) -> u64 {
    let mut total = REPLY_PRIMING_TOKENS;
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        total += messages.iter().map(count_message).sum::<u64>();
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        total += tools
            .iter()
            .filter_map(|tool| tool.get("function"))
            .map(count_function_definition)
            .sum::<u64>();
    }
    if let Some(functions) = request.get("functions").and_then(Value::as_array) {
        total += functions.iter().map(count_function_definition).sum::<u64>();
    }
    total
}

fn count_message(message: &Value) -> u64 {
    let mut total = TOKENS_PER_MESSAGE;
    total += count_str_field(message, "role");
    if let Some(name) = message.get("name").and_then(Value::as_str) {
        total += TOKENS_PER_NAME + count(name);
    }
    match message.get("content") {
        Some(Value::String(text)) => total += count(text),
        Some(Value::Array(parts)) => {
            total += parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .map(count)
                .sum::<u64>();
        }
        _ => {}
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for function in calls.iter().filter_map(|call| call.get("function")) {
            total += count_str_field(function, "name") + count_str_field(function, "arguments");
        }
    }
    total + count_str_field(message, "tool_call_id")
}

fn count_function_definition(function: &Value) -> u64 {
    let mut total = count_str_field(function, "name") + count_str_field(function, "description");
    if let Some(parameters) = function.get("parameters") {
        total += count(&parameters.to_string());
    }
    total
}

fn count_str_field(object: &Value, field: &str) -> u64 {
    object.get(field).and_then(Value::as_str).map_or(0, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_counts() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        assert_eq!(count("Hello, world!"), 4);
        // Special tokens are ordinary text here: several tokens, not one.
        assert!(count("<|endoftext|>") > 1);
        // Multi-byte text is counted, not rejected.
        assert!(count("こんにちは世界") >= 2);
    }

    #[test]
    fn counts_are_consistent_across_threads() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        let expected = count(&text);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let text = text.clone();
                std::thread::spawn(move || count(&text))
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), expected);
        }
    }

    #[test]
    fn warm_up_builds_the_tokenizer() {
        warm_up(|| ()).unwrap().join().unwrap();
        assert!(TOKENIZER.get().is_some());
    }

    #[test]
    fn empty_or_foreign_request_counts_reply_priming_only() {
        assert_eq!(count_chat_request(&json!({})), REPLY_PRIMING_TOKENS);
        assert_eq!(
            count_chat_request(&json!({"prompt": "hi"})),
            REPLY_PRIMING_TOKENS
        );
    }

    #[test]
    fn single_message_matches_openai_formula() {
        let request =
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]});
        // 3 (message) + 1 ("user") + 2 ("hello world") + 3 (priming).
        assert_eq!(count_chat_request(&request), 3 + count("user") + 2 + 3);
        assert_eq!(count("user"), 1);
    }

    #[test]
    fn request_estimate_grows_with_content() {
        let short = json!({"messages": [{"role": "user", "content": "hi"}]});
        let long = json!({"messages": [{"role": "user", "content": "hi ".repeat(100)}]});
        let two = json!({"messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"}
        ]});
        let parts = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "text", "text": "describe this picture in detail"}
        ]}]});
        let named = json!({"messages": [{"role": "user", "name": "alice", "content": "hi"}]});
        let base = count_chat_request(&short);
        assert!(count_chat_request(&long) > base + 90);
        assert!(count_chat_request(&two) > base + TOKENS_PER_MESSAGE);
        assert_eq!(
            count_chat_request(&parts),
            base + count("describe this picture in detail")
        );
        assert_eq!(
            count_chat_request(&named),
            base + TOKENS_PER_NAME + count("alice")
        );
    }

    #[test]
    fn tool_calls_and_definitions_are_counted() {
        let plain = json!({"messages": [{"role": "user", "content": "weather in Paris?"}]});
        let with_tools = json!({
            "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
                }]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
            }}]
        });
        let base = count_chat_request(&plain);
        let assistant = TOKENS_PER_MESSAGE
            + count("assistant")
            + count("get_weather")
            + count("{\"city\":\"Paris\"}");
        let tool = TOKENS_PER_MESSAGE + count("tool") + count("call_1") + count("18C, sunny");
        let definition = count("get_weather")
            + count("Current weather for a city")
            + count(&with_tools["tools"][0]["function"]["parameters"].to_string());
        assert_eq!(
            count_chat_request(&with_tools),
            base + assistant + tool + definition
        );
    }

    #[test]
    fn legacy_functions_are_counted() {
        let request = json!({
            "messages": [],
            "functions": [{"name": "lookup", "description": "Find a record", "parameters": {}}]
        });
        assert_eq!(
            count_chat_request(&request),
            REPLY_PRIMING_TOKENS + count("lookup") + count("Find a record") + count("{}")
        );
    }
}
