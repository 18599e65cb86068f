//! The Amazon Bedrock Converse wire format: `converse` (JSON) and `converse-stream`
//! (a binary AWS event stream), errors.
//!
//! Shapes follow the API reference:
//! - a Converse response: `output.message` (`role: "assistant"`, `content` blocks
//!   `text` or `toolUse {toolUseId, name, input}`), `stopReason` `end_turn` /
//!   `max_tokens` / `tool_use`, `usage` (`inputTokens`, `outputTokens`,
//!   `totalTokens`), `metrics.latencyMs`;
//! - a stream of event-stream messages (headers `:event-type`, `:content-type:
//!   application/json`, `:message-type: event`, a JSON payload): `messageStart`,
//!   `contentBlockStart` (tool use only), one `contentBlockDelta` per piece (`text`,
//!   or `toolUse.input` partial JSON), `contentBlockStop`, `messageStop`, `metadata`;
//! - errors as `{"message": "..."}` with the error's name in `x-amzn-errortype`.
//!
//! Converse answers do not name the model, so the path's model id is not read.
//! Usage is always part of this format, so with `MockConfig::usage` off every count is 0.

use crate::content::{
    cap_words, count_words, json_pieces, random_id, reply_text, text_pieces, tool_arguments,
};
use crate::http::{BinaryEvent, Body, Response};
use crate::MockConfig;
use serde_json::{json, Value};

/// The answer a response carries.
enum Answer {
    /// Assistant text; `stop_reason` is `end_turn` or `max_tokens`.
    Text {
        text: String,
        stop_reason: &'static str,
    },
    /// One `toolUse` block.
    ToolUse { name: String, input: Value },
}

/// `POST …/model/{modelId}/converse` (`stream` false) or `…/converse-stream`.
pub(crate) fn converse(json: Option<&Value>, config: &MockConfig, stream: bool) -> Response {
    let Some(body) = json.filter(|body| body.is_object()) else {
        return error(
            400,
            "Malformed input request, please reformat your input and try again.",
        );
    };
    let Some(messages) = body["messages"].as_array() else {
        return error(
            400,
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null",
        );
    };
    let input_tokens = count_words(&blocks_text(&body["system"]))
        + messages
            .iter()
            .map(|message| 3 + count_words(&blocks_text(&message["content"])))
            .sum::<u64>();
    let answer = decide_answer(body, messages, config);
    let output_tokens = match &answer {
        Answer::Text { text, .. } => count_words(text),
        Answer::ToolUse { name, input } => count_words(name) + count_words(&input.to_string()),
    };
    let (input_tokens, output_tokens) = if config.usage {
        (input_tokens, output_tokens)
    } else {
        (0, 0)
    };
    let usage = json!({
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens
    });
    let tool_use_id = random_id("tooluse_", 22);
    let stop_reason = match &answer {
        Answer::Text { stop_reason, .. } => *stop_reason,
        Answer::ToolUse { .. } => "tool_use",
    };

    if !stream {
        let block = match &answer {
            Answer::Text { text, .. } => json!({ "text": text }),
            Answer::ToolUse { name, input } => {
                json!({"toolUse": {"toolUseId": tool_use_id, "name": name, "input": input}})
            }
        };
        let response = json!({
            "output": {"message": {"role": "assistant", "content": [block]}},
            "stopReason": stop_reason,
            "usage": usage,
            "metrics": {"latencyMs": 1}
        });
        return Response::json(200, request_id_header(), &response);
    }

    let event = |event_type: &str, payload: Value, content: bool| BinaryEvent {
        bytes: encode_message(
            &[
                (":event-type", event_type),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        ),
        content,
    };
    let mut events = vec![event("messageStart", json!({"role": "assistant"}), false)];
    match &answer {
        Answer::Text { text, .. } => {
            for piece in text_pieces(text, config.chunk_chars) {
                events.push(event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
                    true,
                ));
            }
        }
        Answer::ToolUse { name, input } => {
            events.push(event(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": tool_use_id, "name": name}}}),
                false,
            ));
            for piece in json_pieces(&input.to_string(), config.chunk_chars) {
                events.push(event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}),
                    true,
                ));
            }
        }
    }
    events.push(event(
        "contentBlockStop",
        json!({"contentBlockIndex": 0}),
        false,
    ));
    events.push(event(
        "messageStop",
        json!({ "stopReason": stop_reason }),
        false,
    ));
    events.push(event(
        "metadata",
        json!({"usage": usage, "metrics": {"latencyMs": 1}}),
        false,
    ));
    Response {
        status: 200,
        headers: request_id_header(),
        body: Body::EventStream(events),
    }
}

/// Decides between text and a tool call (see the crate docs).
fn decide_answer(body: &Value, messages: &[Value], config: &MockConfig) -> Answer {
    let last = messages.last().unwrap_or(&Value::Null);
    let fixed = config.reply.as_deref();
    let results: Vec<String> = last["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block.get("toolResult"))
        .flat_map(|result| result["content"].as_array().cloned().unwrap_or_default())
        .map(|content| match content["text"].as_str() {
            Some(text) => text.to_owned(),
            None => content["json"].to_string(),
        })
        .collect();
    let text = if last["role"] == "user" && !results.is_empty() {
        reply_text(fixed, format!("Tool said: {}", results.join(" ")))
    } else {
        let user_text = messages
            .iter()
            .rev()
            .find(|message| message["role"] == "user")
            .map(|message| blocks_text(&message["content"]))
            .unwrap_or_default();
        let last_is_user_text = last["role"] == "user" && !blocks_text(&last["content"]).is_empty();
        if let Some(spec) = chosen_tool(body).filter(|_| last_is_user_text) {
            return Answer::ToolUse {
                name: spec["name"].as_str().unwrap_or_default().to_owned(),
                input: Value::Object(tool_arguments(&spec["inputSchema"]["json"])),
            };
        }
        reply_text(fixed, format!("Mock reply to: {user_text}"))
    };
    let max_tokens = body["inferenceConfig"]["maxTokens"].as_u64();
    match max_tokens.and_then(|max| cap_words(&text, max)) {
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

/// The `toolSpec` to call: the one `toolChoice.tool` names, else the first.
fn chosen_tool(body: &Value) -> Option<&Value> {
    let config = &body["toolConfig"];
    let mut specs = config["tools"]
        .as_array()?
        .iter()
        .filter_map(|tool| tool.get("toolSpec"));
    match config["toolChoice"]["tool"]["name"].as_str() {
        Some(name) => specs.find(|spec| spec["name"] == name),
        None => specs.next(),
    }
}

/// The text of content (or system) blocks, joined with spaces.
fn blocks_text(blocks: &Value) -> String {
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Encodes one AWS event-stream message with string headers.
fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(name.len() as u8);
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(7);
        encoded_headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = 16 + encoded_headers.len() + payload.len();
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_be_bytes());
    message.extend_from_slice(&(encoded_headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(&encoded_headers);
    message.extend_from_slice(payload);
    let crc = crc32fast::hash(&message);
    message.extend_from_slice(&crc.to_be_bytes());
    message
}

/// The `x-amzn-errortype` Bedrock uses for `status`.
fn error_type(status: u16) -> &'static str {
    match status {
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        500..=599 => "InternalServerException",
        _ => "ValidationException",
    }
}

/// A Bedrock error response of the type for `status`.
pub(crate) fn error(status: u16, message: &str) -> Response {
    typed_error(status, error_type(status), message)
}

/// A Bedrock error response with an explicit `x-amzn-errortype`.
pub(crate) fn typed_error(status: u16, error_type: &str, message: &str) -> Response {
    let mut headers = request_id_header();
    headers.push((
        "x-amzn-errortype",
        format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    ));
    Response::json(status, headers, &json!({ "message": message }))
}

/// An injected error with the message Bedrock sends for `status`.
pub(crate) fn injected_error(status: u16) -> Response {
    let message = match status {
        429 => "Too many requests, please wait before trying again.".to_owned(),
        500 => "The server encountered an error processing your request.".to_owned(),
        503 => "Bedrock is unable to process your request.".to_owned(),
        _ => format!("Mock error with status {status}."),
    };
    error(status, &message)
}

/// The `x-amzn-requestid` header Bedrock puts on every response.
fn request_id_header() -> Vec<(&'static str, String)> {
    vec![("x-amzn-requestid", random_id("", 32))]
}
