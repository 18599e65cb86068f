//! The Anthropic wire format: Messages (JSON and SSE), models, errors.
//!
//! Shapes follow the API reference:
//! - a `message` object (`id` `msg_01…`, `content` blocks `text` or `tool_use`,
//!   `stop_reason` `end_turn` / `max_tokens` / `tool_use`, `stop_sequence: null`,
//!   `usage` with input, output and cache token counts);
//! - a stream of named events: `message_start` (the message with empty content and
//!   `output_tokens: 1`), `content_block_start`, `ping`, one `content_block_delta`
//!   per piece (`text_delta` or `input_json_delta`), `content_block_stop`,
//!   `message_delta` (stop reason and output tokens), `message_stop`;
//! - errors as `{"type": "error", "error": {"type", "message"}}`.
//!
//! Usage is always part of this format, so with `MockConfig::usage` off every
//! count is reported as 0 rather than left out.

use crate::content::{
    cap_words, count_words, json_pieces, random_id, reply_text, text_pieces, tool_arguments,
};
use crate::http::{Body, Response, SseEvent};
use crate::MockConfig;
use serde_json::{json, Value};

/// The answer a message carries.
enum Answer {
    /// Assistant text; `stop_reason` is `end_turn` or `max_tokens`.
    Text {
        text: String,
        stop_reason: &'static str,
    },
    /// One `tool_use` block.
    ToolUse { name: String, input: Value },
}

/// `POST …/messages`.
pub(crate) fn messages(json: Option<&Value>, config: &MockConfig) -> Response {
    let Some(body) = json.filter(|body| body.is_object()) else {
        return error(400, "The request body is not valid JSON.");
    };
    let Some(model) = body["model"].as_str() else {
        return error(400, "model: Field required");
    };
    let Some(max_tokens) = body["max_tokens"].as_u64() else {
        return error(400, "max_tokens: Field required");
    };
    let Some(messages) = body["messages"].as_array() else {
        return error(400, "messages: Field required");
    };
    let model = config.model_label.as_deref().unwrap_or(model);
    let input_tokens = count_words(&content_text(&body["system"]))
        + messages
            .iter()
            .map(|message| 3 + count_words(&content_text(&message["content"])))
            .sum::<u64>();
    let answer = decide_answer(body, messages, config, max_tokens);
    let output_tokens = match &answer {
        Answer::Text { text, .. } => count_words(text),
        Answer::ToolUse { name, input } => count_words(name) + count_words(&input.to_string()),
    };
    let (input_tokens, output_tokens) = if config.usage {
        (input_tokens, output_tokens)
    } else {
        (0, 0)
    };
    let id = random_id("msg_01", 22);
    let tool_use_id = random_id("toolu_01", 22);

    if body["stream"].as_bool() != Some(true) {
        let (content, stop_reason) = match &answer {
            Answer::Text { text, stop_reason } => {
                (json!({"type": "text", "text": text}), *stop_reason)
            }
            Answer::ToolUse { name, input } => (
                json!({"type": "tool_use", "id": tool_use_id, "name": name, "input": input}),
                "tool_use",
            ),
        };
        let message = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [content],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage_object(input_tokens, output_tokens)
        });
        return Response::json(200, request_id_header(), &message);
    }

    let event = |name: &'static str, data: Value, content: bool| SseEvent {
        name: Some(name),
        data: data.to_string(),
        content,
    };
    let start_output_tokens = u64::from(config.usage);
    let mut events = vec![event(
        "message_start",
        json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage_object(input_tokens, start_output_tokens)
            }
        }),
        false,
    )];
    let (block, deltas, stop_reason) = match &answer {
        Answer::Text { text, stop_reason } => (
            json!({"type": "text", "text": ""}),
            text_pieces(text, config.chunk_chars)
                .into_iter()
                .map(|piece| json!({"type": "text_delta", "text": piece}))
                .collect::<Vec<_>>(),
            *stop_reason,
        ),
        Answer::ToolUse { name, input } => (
            json!({"type": "tool_use", "id": tool_use_id, "name": name, "input": {}}),
            json_pieces(&input.to_string(), config.chunk_chars)
                .into_iter()
                .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                .collect(),
            "tool_use",
        ),
    };
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": block}),
        false,
    ));
    events.push(event("ping", json!({"type": "ping"}), false));
    for delta in deltas {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
            true,
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
        false,
    ));
    events.push(event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}
        }),
        false,
    ));
    events.push(event(
        "message_stop",
        json!({"type": "message_stop"}),
        false,
    ));
    Response {
        status: 200,
        headers: request_id_header(),
        body: Body::Events(events),
    }
}

/// Decides between text and a tool call (see the crate docs).
fn decide_answer(body: &Value, messages: &[Value], config: &MockConfig, max_tokens: u64) -> Answer {
    let last = messages.last().unwrap_or(&Value::Null);
    let fixed = config.reply.as_deref();
    let text = if let Some(result) = tool_result_text(last) {
        reply_text(fixed, format!("Tool said: {result}"))
    } else {
        let user_text = messages
            .iter()
            .rev()
            .find(|message| message["role"] == "user")
            .map(|message| text_blocks(&message["content"]))
            .unwrap_or_default();
        let last_is_user_text = last["role"] == "user" && !text_blocks(&last["content"]).is_empty();
        if let Some(tool) = chosen_tool(body).filter(|_| last_is_user_text) {
            return Answer::ToolUse {
                name: tool["name"].as_str().unwrap_or_default().to_owned(),
                input: Value::Object(tool_arguments(&tool["input_schema"])),
            };
        }
        reply_text(fixed, format!("Mock reply to: {user_text}"))
    };
    match cap_words(&text, max_tokens) {
        Some(capped) => Answer::Text {
            text: capped.to_owned(),
            stop_reason: "max_tokens",
        },
        None => Answer::Text {
            text,
            stop_reason: "end_turn",
        },
    }
}

/// The tool to call: the one `tool_choice` names, else the first; none when no
/// tools are offered or `tool_choice` is `{"type": "none"}`.
fn chosen_tool(body: &Value) -> Option<&Value> {
    let tools = body["tools"].as_array()?;
    let choice = &body["tool_choice"];
    match choice["type"].as_str() {
        Some("none") => None,
        Some("tool") => tools.iter().find(|tool| tool["name"] == choice["name"]),
        _ => tools.first(),
    }
}

/// The text of a user message's `tool_result` blocks, if it has any.
fn tool_result_text(message: &Value) -> Option<String> {
    if message["role"] != "user" {
        return None;
    }
    let results: Vec<String> = message["content"]
        .as_array()?
        .iter()
        .filter(|block| block["type"] == "tool_result")
        .map(|block| content_text(&block["content"]))
        .collect();
    (!results.is_empty()).then(|| results.join(" "))
}

/// The text of `content` (a string or `text` blocks), tool results left out.
fn text_blocks(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// All the text in `content` (a string or blocks), tool results included, for counting tokens.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|block| match block["type"].as_str() {
                Some("tool_result") => content_text(&block["content"]),
                _ => block["text"].as_str().unwrap_or_default().to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A `usage` object.
fn usage_object(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0
    })
}

/// `GET …/models` with `anthropic-version`.
/// `POST …/messages/count_tokens`: the prompt tokens `messages` would count
/// (words of the system prompt and of every message, plus 3 per message).
pub(crate) fn count_tokens(json: Option<&Value>) -> Response {
    let Some(body) = json.filter(|body| body.is_object()) else {
        return error(400, "The request body is not valid JSON.");
    };
    if body["model"].as_str().is_none() {
        return error(400, "model: Field required");
    }
    let Some(messages) = body["messages"].as_array() else {
        return error(400, "messages: Field required");
    };
    let input_tokens = count_words(&content_text(&body["system"]))
        + messages
            .iter()
            .map(|message| 3 + count_words(&content_text(&message["content"])))
            .sum::<u64>();
    Response::json(
        200,
        request_id_header(),
        &json!({"input_tokens": input_tokens}),
    )
}

pub(crate) fn models() -> Response {
    let model = |id: &str, display_name: &str, created_at: &str| json!({"type": "model", "id": id, "display_name": display_name, "created_at": created_at});
    let list = json!({
        "data": [
            model("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z"),
            model("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z")
        ],
        "has_more": false,
        "first_id": "claude-sonnet-4-20250514",
        "last_id": "claude-3-5-haiku-20241022"
    });
    Response::json(200, request_id_header(), &list)
}

/// The error `type` Anthropic uses for `status`.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic error response.
pub(crate) fn error(status: u16, message: &str) -> Response {
    let body = json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message}
    });
    Response::json(status, request_id_header(), &body)
}

/// An injected error with the message Anthropic sends for `status`.
pub(crate) fn injected_error(status: u16) -> Response {
    let message = match status {
        401 => "invalid x-api-key".to_owned(),
        429 => {
            "Number of requests has exceeded your per-minute rate limit. Please try again later."
                .to_owned()
        }
        500 => "Internal server error".to_owned(),
        503 | 529 => "Overloaded".to_owned(),
        _ => format!("Mock error with status {status}."),
    };
    error(status, &message)
}

/// The `request-id` header Anthropic puts on every response.
fn request_id_header() -> Vec<(&'static str, String)> {
    vec![("request-id", random_id("req_01", 22))]
}
