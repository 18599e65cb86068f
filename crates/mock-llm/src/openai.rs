//! The OpenAI wire format: Chat Completions (JSON and SSE), embeddings, models, errors.
//!
//! Shapes follow the API reference:
//! - a `chat.completion` object (`id` `chatcmpl-…`, `created`, `model`,
//!   `system_fingerprint`, one choice, `usage` with token details);
//! - a stream of `chat.completion.chunk` objects: the first delta carries
//!   `role: "assistant"` (and, for a tool call, the call's id, type and name with
//!   empty arguments), then one chunk per text piece or argument piece, then a chunk
//!   with an empty delta and the `finish_reason`, then, when the request set
//!   `stream_options.include_usage` (and usage is on), a chunk with `choices: []`
//!   and the usage (every earlier chunk then has `usage: null`), then `data: [DONE]`;
//! - errors as `{"error": {"message", "type", "param", "code"}}`.

use crate::content::{
    base64, cap_words, count_words, embedding, json_pieces, random_id, reply_text, text_pieces,
    tool_arguments, unix_time,
};
use crate::http::{Body, Response, SseEvent};
use crate::MockConfig;
use serde_json::{json, Value};

/// The `system_fingerprint` the mock reports.
const SYSTEM_FINGERPRINT: &str = "fp_mock0llm01";

/// The answer a chat completion carries.
enum Answer {
    /// Assistant text; `finish_reason` is `stop` or `length`.
    Text {
        text: String,
        finish_reason: &'static str,
    },
    /// One call to a tool, with its arguments as a JSON string.
    ToolCall { name: String, arguments: String },
}

impl Answer {
    /// Completion tokens: words of the text, or of the tool name and arguments.
    fn tokens(&self) -> u64 {
        match self {
            Answer::Text { text, .. } => count_words(text),
            Answer::ToolCall { name, arguments } => count_words(name) + count_words(arguments),
        }
    }
}

/// `POST …/chat/completions`.
pub(crate) fn chat_completions(json: Option<&Value>, config: &MockConfig) -> Response {
    let Some(body) = json.filter(|body| body.is_object()) else {
        return invalid_json();
    };
    let Some(messages) = body["messages"].as_array() else {
        return missing_parameter("messages");
    };
    let Some(model) = body["model"].as_str() else {
        return missing_parameter("model");
    };
    let model = config.model_label.as_deref().unwrap_or(model);
    let prompt_tokens: u64 = messages
        .iter()
        .map(|message| 3 + count_words(&message_text(&message["content"])))
        .sum();
    let answer = decide_answer(body, messages, config);
    // `n` choices, each the same answer, billed `n` times as OpenAI bills them.
    let n = body["n"].as_u64().unwrap_or(1).clamp(1, 16);
    let completion_tokens = answer.tokens() * n;
    let usage = usage_object(prompt_tokens, completion_tokens);
    let id = random_id("chatcmpl-", 29);
    let created = unix_time();
    if body["stream"].as_bool() != Some(true) {
        let (message, finish_reason) = match &answer {
            Answer::Text {
                text,
                finish_reason,
            } => (
                json!({"role": "assistant", "content": text, "refusal": null, "annotations": []}),
                *finish_reason,
            ),
            Answer::ToolCall { name, arguments } => (
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": random_id("call_", 24),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments}
                    }],
                    "refusal": null,
                    "annotations": []
                }),
                "tool_calls",
            ),
        };
        let mut completion = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": (0..n).map(|index| json!({
                "index": index,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason
            })).collect::<Vec<_>>(),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT
        });
        if config.usage {
            completion["usage"] = usage;
        }
        return Response::json(200, request_id_header(), &completion);
    }

    let include_usage =
        config.usage && body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish_reason: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason
            }]
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk.to_string()
    };
    let event = |data: String, content: bool| SseEvent {
        name: None,
        data,
        content,
    };
    let mut events = Vec::new();
    let finish_reason = match &answer {
        Answer::Text {
            text,
            finish_reason,
        } => {
            let first = json!({"role": "assistant", "content": "", "refusal": null});
            events.push(event(chunk(first, None), false));
            for piece in text_pieces(text, config.chunk_chars) {
                events.push(event(chunk(json!({"content": piece}), None), true));
            }
            *finish_reason
        }
        Answer::ToolCall { name, arguments } => {
            let first = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "index": 0,
                    "id": random_id("call_", 24),
                    "type": "function",
                    "function": {"name": name, "arguments": ""}
                }],
                "refusal": null
            });
            events.push(event(chunk(first, None), false));
            for piece in json_pieces(arguments, config.chunk_chars) {
                let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                events.push(event(chunk(delta, None), true));
            }
            "tool_calls"
        }
    };
    events.push(event(chunk(json!({}), Some(finish_reason)), false));
    if include_usage {
        let last = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": usage
        });
        events.push(event(last.to_string(), false));
    }
    events.push(event("[DONE]".to_owned(), false));
    Response {
        status: 200,
        headers: request_id_header(),
        body: Body::Events(events),
    }
}

/// Decides between text and a tool call (see the crate docs).
fn decide_answer(body: &Value, messages: &[Value], config: &MockConfig) -> Answer {
    let last = messages.last().unwrap_or(&Value::Null);
    let fixed = config.reply.as_deref();
    let text = match last["role"].as_str() {
        Some("tool") => reply_text(
            fixed,
            format!("Tool said: {}", message_text(&last["content"])),
        ),
        role => {
            if let Some(function) = chosen_tool(body).filter(|_| role == Some("user")) {
                let arguments = Value::Object(tool_arguments(&function["parameters"]));
                return Answer::ToolCall {
                    name: function["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: arguments.to_string(),
                };
            }
            let user_text = messages
                .iter()
                .rev()
                .find(|message| message["role"] == "user")
                .map(|message| message_text(&message["content"]))
                .unwrap_or_default();
            reply_text(fixed, format!("Mock reply to: {user_text}"))
        }
    };
    let max_words = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64());
    match max_words.and_then(|max_words| cap_words(&text, max_words)) {
        Some(capped) => Answer::Text {
            text: capped.to_owned(),
            finish_reason: "length",
        },
        None => Answer::Text {
            text,
            finish_reason: "stop",
        },
    }
}

/// The `function` object of the tool to call: the one `tool_choice` names, else
/// the first; none when no tools are offered or `tool_choice` is `"none"`.
fn chosen_tool(body: &Value) -> Option<&Value> {
    let tools = body["tools"].as_array()?;
    let tool = match &body["tool_choice"] {
        Value::String(choice) if choice == "none" => None,
        Value::Object(choice) => {
            let name = &choice["function"]["name"];
            tools.iter().find(|tool| &tool["function"]["name"] == name)
        }
        _ => tools.first(),
    };
    tool.map(|tool| &tool["function"])
}

/// The text of a message's `content`: a string, or its text parts joined by spaces.
fn message_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The `usage` object of a completion.
fn usage_object(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// `POST …/embeddings`: 8 floats per input, derived from a hash of the input.
/// The Responses API's stream event names, as [`SseEvent`] names them.
const RESPONSES_EVENTS: [&str; 15] = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
    "response.queued",
];

/// How many Responses API answers the mock keeps for `previous_response_id`
/// and `GET …/responses/{id}`.
pub(crate) const STORED_RESPONSES: usize = 256;

/// The Responses API answers the mock keeps: (id, `response`, conversation).
pub(crate) type Stored = std::sync::Mutex<std::collections::VecDeque<(String, Value, Vec<Value>)>>;

fn lock(
    stored: &Stored,
) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(String, Value, Vec<Value>)>> {
    stored
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `GET` / `DELETE …/responses/{id}`: a stored answer, or its deletion.
pub(crate) fn stored_response(method: &str, path: &str, stored: &Stored) -> Response {
    let id = path.rsplit('/').next().unwrap_or_default();
    let mut kept = lock(stored);
    let Some(at) = kept.iter().position(|(i, _, _)| i == id) else {
        return error(
            404,
            &format!("Response with id '{id}' not found."),
            "invalid_request_error",
            None,
        );
    };
    if method == "DELETE" {
        kept.remove(at);
        let deleted = json!({"id": id, "object": "response.deleted", "deleted": true});
        return Response::json(200, request_id_header(), &deleted);
    }
    Response::json(200, request_id_header(), &kept[at].1)
}

/// `POST …/responses`: OpenAI's Responses API. The request is read through
/// `hypergate-ai`'s translation to chat, answered as [`chat_completions`]
/// would, and written back as a `response` object or the API's named events.
/// It keeps what it answered, as OpenAI does (unless `store` is false):
/// `previous_response_id` continues a stored conversation, and
/// [`stored_response`] reads or deletes one.
pub(crate) fn responses(json: Option<&Value>, config: &MockConfig, stored: &Stored) -> Response {
    let Some(body) = json.filter(|body| body.is_object()) else {
        return invalid_json();
    };
    if body["model"].as_str().is_none() {
        return missing_parameter("model");
    }
    let mut chat = match hypergate_ai::responses::request_to_chat(body) {
        Ok(chat) => chat,
        Err(e) => return error_with_param(400, &e.to_string(), e.path(), None),
    };
    chat["stream"] = false.into();
    if let Some(previous) = body["previous_response_id"].as_str() {
        let found = lock(stored)
            .iter()
            .find(|(id, _, _)| id == previous)
            .map(|(_, _, messages)| messages.clone());
        let Some(mut messages) = found else {
            let message = format!("Previous response with id '{previous}' not found.");
            return error_with_param(
                400,
                &message,
                "previous_response_id",
                Some("previous_response_not_found"),
            );
        };
        messages.extend(chat["messages"].as_array().cloned().unwrap_or_default());
        chat["messages"] = Value::Array(messages);
    }
    let answer = chat_completions(Some(&chat), config);
    let Body::Json(bytes) = &answer.body else {
        return answer;
    };
    let Ok(canon) = serde_json::from_slice::<Value>(bytes) else {
        return answer;
    };
    if answer.status != 200 {
        return answer;
    }
    let id = random_id("resp_", 24);
    let echo = hypergate_ai::responses::echo_of(body);
    let store = |response: &Value| {
        if body["store"].as_bool() == Some(false) {
            return;
        }
        let mut messages = chat["messages"].as_array().cloned().unwrap_or_default();
        messages.push(canon["choices"][0]["message"].clone());
        let mut kept = lock(stored);
        if kept.len() == STORED_RESPONSES {
            kept.pop_front();
        }
        kept.push_back((id.clone(), response.clone(), messages));
    };
    let mut whole = hypergate_ai::responses::chat_to_response(&canon, &id, unix_time(), &echo);
    whole["previous_response_id"] = body["previous_response_id"].clone();
    whole["store"] = (body["store"].as_bool() != Some(false)).into();
    store(&whole);
    if body["stream"].as_bool() != Some(true) {
        return Response::json(200, request_id_header(), &whole);
    }
    let mut tr = hypergate_ai::responses::ChatStreamToResponses::new(
        &id,
        unix_time(),
        canon["model"].as_str().unwrap_or_default(),
        echo,
    );
    let mut events = tr.start();
    let message = &canon["choices"][0]["message"];
    let chunk = |delta: Value, finish: Option<&Value>| json!({"model": canon["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    if let Some(text) = message["content"].as_str() {
        for piece in text_pieces(text, config.chunk_chars) {
            events.extend(tr.push(&chunk(json!({"content": piece}), None)));
        }
    }
    for (index, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let delta = json!({"tool_calls": [{"index": index, "id": call["id"], "function": call["function"]}]});
        events.extend(tr.push(&chunk(delta, None)));
    }
    events.extend(tr.push(&chunk(
        json!({}),
        Some(&canon["choices"][0]["finish_reason"]),
    )));
    events.extend(tr.finish(hypergate_ai::translate::Usage::from_openai(&canon["usage"])));
    let events = events
        .into_iter()
        .map(|(name, data)| SseEvent {
            content: name.ends_with(".delta"),
            name: RESPONSES_EVENTS.iter().copied().find(|n| *n == name),
            data: data.to_string(),
        })
        .collect();
    Response {
        status: 200,
        headers: request_id_header(),
        body: Body::Events(events),
    }
}

pub(crate) fn embeddings(json: Option<&Value>, config: &MockConfig) -> Response {
    let Some(body) = json.filter(|body| body.is_object()) else {
        return invalid_json();
    };
    let Some(model) = body["model"].as_str() else {
        return missing_parameter("model");
    };
    let inputs = match &body["input"] {
        Value::Array(items) if items.first().is_some_and(Value::is_number) => {
            input_text(&body["input"]).into_iter().collect::<Vec<_>>()
        }
        Value::Array(items) => items
            .iter()
            .map(input_text)
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default(),
        input => input_text(input).into_iter().collect(),
    };
    if inputs.is_empty() {
        return error_with_param(
            400,
            "'input' must be a string, an array of strings, or an array of token arrays.",
            "input",
            None,
        );
    }
    let base64_encoded = body["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding(input);
            let encoded = if base64_encoded {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect();
                Value::from(base64(&bytes))
            } else {
                Value::from(vector.to_vec())
            };
            json!({"object": "embedding", "index": index, "embedding": encoded})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|input| count_words(input)).sum();
    let response = json!({
        "object": "list",
        "data": data,
        "model": config.model_label.as_deref().unwrap_or(model),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    });
    Response::json(200, request_id_header(), &response)
}

/// One embeddings input as text: a string, or token ids joined by spaces.
fn input_text(input: &Value) -> Option<String> {
    match input {
        Value::String(text) => Some(text.clone()),
        Value::Array(tokens) if !tokens.is_empty() && tokens.iter().all(Value::is_u64) => Some(
            tokens
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

/// `GET …/models`.
pub(crate) fn models() -> Response {
    let model = |id: &str, created: u64| json!({"id": id, "object": "model", "created": created, "owned_by": "system"});
    let list = json!({
        "object": "list",
        "data": [
            model("gpt-4o-mini", 1_721_172_741),
            model("gpt-4o", 1_715_367_049),
            model("text-embedding-3-small", 1_705_948_997)
        ]
    });
    Response::json(200, request_id_header(), &list)
}

/// The error `type` OpenAI uses for a status without a more specific one.
pub(crate) fn error_type(status: u16) -> &'static str {
    if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    }
}

/// An OpenAI error response.
pub(crate) fn error(status: u16, message: &str, error_type: &str, code: Option<&str>) -> Response {
    let body = json!({
        "error": {"message": message, "type": error_type, "param": null, "code": code}
    });
    Response::json(status, request_id_header(), &body)
}

/// The 401 for a request without `Authorization: Bearer …`.
pub(crate) fn missing_api_key() -> Response {
    error(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password \
         field (with blank username) if you're accessing the API from your browser and are \
         prompted for a username and password. You can obtain an API key from \
         https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
    )
}

/// An injected error with the message, type and code OpenAI sends for `status`.
pub(crate) fn injected_error(status: u16) -> Response {
    let generic = format!("Mock error with status {status}.");
    let (message, error_type, code) = match status {
        401 => (
            "Incorrect API key provided: sk-mock. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        404 => (
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        429 => (
            "Rate limit reached for requests. Please try again later.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        500 => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        503 => (
            "The server is overloaded or not ready yet.",
            "server_error",
            None,
        ),
        _ => (generic.as_str(), error_type(status), None),
    };
    error(status, message, error_type, code)
}

/// The 400 for a body that is not a JSON object.
fn invalid_json() -> Response {
    error(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
         sent was not valid JSON.)",
        "invalid_request_error",
        None,
    )
}

/// The 400 for a missing required parameter.
fn missing_parameter(param: &str) -> Response {
    let message = format!("Missing required parameter: '{param}'.");
    error_with_param(400, &message, param, Some("missing_required_parameter"))
}

/// A 4xx `invalid_request_error` naming the parameter at fault.
fn error_with_param(status: u16, message: &str, param: &str, code: Option<&str>) -> Response {
    let body = json!({
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    });
    Response::json(status, request_id_header(), &body)
}

/// The `x-request-id` header OpenAI puts on every response.
fn request_id_header() -> Vec<(&'static str, String)> {
    vec![("x-request-id", random_id("req_", 32))]
}
