//! The Google Gemini wire format: `generateContent` (JSON) and
//! `streamGenerateContent?alt=sse` (SSE), errors.
//!
//! Shapes follow the API reference:
//! - a `GenerateContentResponse`: `candidates` (one, `index` 0) with `content`
//!   (`role: "model"`, `parts` of `text` or one `functionCall {name, args}`),
//!   `finishReason` `STOP` / `MAX_TOKENS` / `SAFETY`, and for `SAFETY` the blocking
//!   `safetyRatings` without content; `usageMetadata` (`promptTokenCount`,
//!   `candidatesTokenCount`, `totalTokenCount`); `modelVersion`; `responseId`;
//! - a stream of such responses, one per SSE `data:` event (no event names): one per
//!   text piece (or one with the whole `functionCall`, as Gemini never splits a call),
//!   each with `usageMetadata` holding the prompt count so far, then a last one with
//!   an empty text part, the `finishReason` and the full usage;
//! - errors as `{"error": {"code", "message", "status"}}`.
//!
//! The model comes from the path (`…/models/{model}:generateContent`). With
//! `MockConfig::usage` off, `usageMetadata` is left out.

use crate::content::{cap_words, count_words, random_id, reply_text, text_pieces, tool_arguments};
use crate::http::{Body, Response, SseEvent};
use crate::MockConfig;
use serde_json::{json, Value};

/// The word that makes the mock answer with a SAFETY block.
pub(crate) const UNSAFE_WORD: &str = "unsafe-content";

/// The answer a response carries.
enum Answer {
    /// Model text; `finish_reason` is `STOP` or `MAX_TOKENS`.
    Text {
        text: String,
        finish_reason: &'static str,
    },
    /// One function call.
    FunctionCall { name: String, args: Value },
    /// Blocked by the safety filter.
    Blocked,
}

/// The model named in a `…/models/{model}:{method}` path.
pub(crate) fn model_in_path(path: &str) -> &str {
    let after = path.rsplit_once("/models/").map_or(path, |(_, rest)| rest);
    after.split_once(':').map_or(after, |(model, _)| model)
}

/// `POST …/models/{model}:generateContent` (`stream` false) or
/// `…:streamGenerateContent` (`stream` true; `alt=sse` required).
pub(crate) fn generate_content(
    path: &str,
    query: &str,
    json: Option<&Value>,
    config: &MockConfig,
    stream: bool,
) -> Response {
    if stream && !query.split('&').any(|pair| pair == "alt=sse") {
        return error(
            400,
            "The mock streams only as server-sent events: add ?alt=sse (a JSON array stream is not supported).",
        );
    }
    let Some(body) = json.filter(|body| body.is_object()) else {
        return error(400, "Invalid JSON payload received.");
    };
    let Some(contents) = body["contents"].as_array() else {
        return error(
            400,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    };
    let model = config
        .model_label
        .as_deref()
        .unwrap_or_else(|| model_in_path(path));
    let prompt_tokens = count_words(&parts_text(&body["systemInstruction"]["parts"]))
        + contents
            .iter()
            .map(|content| 3 + count_words(&parts_text(&content["parts"])))
            .sum::<u64>();
    let answer = decide_answer(body, contents, config);
    let completion_tokens = match &answer {
        Answer::Text { text, .. } => count_words(text),
        Answer::FunctionCall { name, args } => count_words(name) + count_words(&args.to_string()),
        Answer::Blocked => 0,
    };
    let usage = |completion: Option<u64>| {
        let mut usage = json!({
            "promptTokenCount": prompt_tokens,
            "totalTokenCount": prompt_tokens + completion.unwrap_or(0),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}]
        });
        if let Some(completion) = completion {
            usage["candidatesTokenCount"] = json!(completion);
        }
        usage
    };
    let response_id = random_id("", 22);
    let response = |candidate: Value, usage: Value| {
        let mut response = json!({
            "candidates": [candidate],
            "modelVersion": model,
            "responseId": response_id
        });
        if config.usage {
            response["usageMetadata"] = usage;
        }
        response
    };
    let finish_reason = match &answer {
        Answer::Text { finish_reason, .. } => *finish_reason,
        Answer::FunctionCall { .. } => "STOP",
        Answer::Blocked => "SAFETY",
    };
    let final_candidate = |parts: Value| match &answer {
        Answer::Blocked => json!({
            "finishReason": "SAFETY",
            "index": 0,
            "safetyRatings": safety_ratings()
        }),
        _ => json!({
            "content": {"parts": parts, "role": "model"},
            "finishReason": finish_reason,
            "index": 0
        }),
    };

    if !stream {
        let parts = match &answer {
            Answer::Text { text, .. } => json!([{ "text": text }]),
            Answer::FunctionCall { name, args } => {
                json!([{"functionCall": {"name": name, "args": args}}])
            }
            Answer::Blocked => json!([]),
        };
        let body = response(final_candidate(parts), usage(Some(completion_tokens)));
        return Response::json(200, Vec::new(), &body);
    }

    let mut events = Vec::new();
    let content_event = |parts: Value| SseEvent {
        name: None,
        data: response(
            json!({"content": {"parts": parts, "role": "model"}, "index": 0}),
            usage(None),
        )
        .to_string(),
        content: true,
    };
    match &answer {
        Answer::Text { text, .. } => {
            for piece in text_pieces(text, config.chunk_chars) {
                events.push(content_event(json!([{ "text": piece }])));
            }
        }
        Answer::FunctionCall { name, args } => {
            events.push(content_event(
                json!([{"functionCall": {"name": name, "args": args}}]),
            ));
        }
        Answer::Blocked => {}
    }
    events.push(SseEvent {
        name: None,
        data: response(
            final_candidate(json!([{"text": ""}])),
            usage(Some(completion_tokens)),
        )
        .to_string(),
        content: false,
    });
    Response {
        status: 200,
        headers: Vec::new(),
        body: Body::Events(events),
    }
}

/// Decides between text, a function call and a safety block (see the crate docs).
fn decide_answer(body: &Value, contents: &[Value], config: &MockConfig) -> Answer {
    let last = contents.last().unwrap_or(&Value::Null);
    let fixed = config.reply.as_deref();
    let function_responses: Vec<String> = last["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("functionResponse"))
        .map(|response| match &response["response"]["content"] {
            Value::String(text) => text.clone(),
            _ => response["response"].to_string(),
        })
        .collect();
    let text = if last["role"] == "user" && !function_responses.is_empty() {
        reply_text(
            fixed,
            format!("Tool said: {}", function_responses.join(" ")),
        )
    } else {
        let user_text = contents
            .iter()
            .rev()
            .find(|content| content["role"] == "user")
            .map(|content| parts_text(&content["parts"]))
            .unwrap_or_default();
        if user_text.contains(UNSAFE_WORD) {
            return Answer::Blocked;
        }
        let last_is_user_text = last["role"] == "user" && !parts_text(&last["parts"]).is_empty();
        if let Some(declaration) = chosen_function(body).filter(|_| last_is_user_text) {
            return Answer::FunctionCall {
                name: declaration["name"].as_str().unwrap_or_default().to_owned(),
                args: Value::Object(tool_arguments(&declaration["parameters"])),
            };
        }
        reply_text(fixed, format!("Mock reply to: {user_text}"))
    };
    let max_tokens = body["generationConfig"]["maxOutputTokens"].as_u64();
    match max_tokens.and_then(|max| cap_words(&text, max)) {
        Some(capped) => Answer::Text {
            text: capped.to_owned(),
            finish_reason: "MAX_TOKENS",
        },
        None => Answer::Text {
            text,
            finish_reason: "STOP",
        },
    }
}

/// The function to call: the first of `allowedFunctionNames`, else the first
/// declared; none without declarations or with mode `NONE`.
fn chosen_function(body: &Value) -> Option<&Value> {
    let declarations: Vec<&Value> = body["tools"]
        .as_array()?
        .iter()
        .filter_map(|tool| tool["functionDeclarations"].as_array())
        .flatten()
        .collect();
    let config = &body["toolConfig"]["functionCallingConfig"];
    if config["mode"] == "NONE" {
        return None;
    }
    match config["allowedFunctionNames"].get(0) {
        Some(name) => declarations
            .into_iter()
            .find(|declaration| declaration["name"] == *name),
        None => declarations.into_iter().next(),
    }
}

/// The text parts of `parts`, joined with spaces.
fn parts_text(parts: &Value) -> String {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|part| part["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The ratings of a candidate blocked for safety.
fn safety_ratings() -> Value {
    json!([
        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}
    ])
}

/// Google's canonical status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// A Google error response.
pub(crate) fn error(status: u16, message: &str) -> Response {
    let body = json!({
        "error": {"code": status, "message": message, "status": status_name(status)}
    });
    Response::json(status, Vec::new(), &body)
}

/// An injected error with the message Gemini sends for `status`.
pub(crate) fn injected_error(status: u16) -> Response {
    let message = match status {
        429 => "Resource has been exhausted (e.g. check quota).".to_owned(),
        500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting".to_owned(),
        503 => "The model is overloaded. Please try again later.".to_owned(),
        _ => format!("Mock error with status {status}."),
    };
    error(status, &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_read_from_the_path() {
        assert_eq!(
            model_in_path("/v1beta/models/gemini-2.0-flash:generateContent"),
            "gemini-2.0-flash"
        );
        assert_eq!(
            model_in_path("/models/gemini-2.5-pro:streamGenerateContent"),
            "gemini-2.5-pro"
        );
    }
}
