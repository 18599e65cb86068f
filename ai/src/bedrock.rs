//! Translation between OpenAI Chat Completions (the gateway's canonical format) and
//! Amazon Bedrock's Converse API, plus what talking to Bedrock needs besides JSON:
//! the event-stream framing of `converse-stream` and SigV4 request signing.
//!
//! Depends on `serde_json`, this crate's [`crate::translate`] (its [`TranslateError`],
//! [`Usage`] and path-naming field helpers), `crc32fast` (in [`event_stream`]) and the
//! official `aws-sigv4` / `aws-credential-types` (in [`sigv4`]).
//!
//! Key components:
//! 1. [`openai_request_to_converse`]: the body of `POST {base}/model/{modelId}/converse`
//!    and `/converse-stream` (the model and streaming are in the URL).
//! 2. [`converse_response_to_openai`]: a Converse response as a `chat.completion`.
//! 3. [`ConverseStreamToOpenAi`]: decoded stream events as `chat.completion.chunk`s.
//! 4. [`EventStreamDecoder`] / [`encode_message`]: the binary framing.
//! 5. [`sign`]: SigV4 headers for a request.
//! 6. [`Usage::from_converse`]: Converse `usage` in OpenAI's terms.
//!
//! Bedrock's error bodies are `{"message": "..."}` (read by
//! [`crate::translate::provider_error_message`]) with the error's name in the
//! `x-amzn-errortype` header (`ThrottlingException`, possibly followed by `:` and a URL).

pub mod event_stream;
pub mod sigv4;

use std::collections::HashMap;

use serde_json::{json, Map, Value};

pub use event_stream::{encode_message, EventStreamDecoder, Message, MAX_MESSAGE_BYTES};
pub use sigv4::{sign, SignInput};

use crate::translate::{
    copy_field, ensure_object, field_path, optional_array, read_assistant, read_function_tool,
    read_image, read_user_content, required_array, required_str, text_content, unsupported_part,
    ImageSource, TranslateError, Usage, UserContent, UserPart,
};

// ---------------------------------------------------------------------------
// Requests.

/// Translates an OpenAI Chat Completions request into a Converse request body.
///
/// - `system` / `developer` messages become `system` text blocks, in order.
/// - `user` / `assistant` messages become `messages` with content blocks; consecutive
///   messages of one role are merged (Converse wants alternation), so the `toolResult`
///   blocks of consecutive `tool` messages share one user message. Empty text is
///   dropped (Converse rejects blank text blocks).
/// - User parts: `text`; `image_url` with a base64 `data:` URL as an `image` block
///   (`png`, `jpeg`, `gif`, `webp`); an http(s) image URL is an error, as Converse
///   takes image bytes (or S3 locations) only.
/// - Assistant `tool_calls` become `toolUse` blocks (arguments parsed, invalid JSON is
///   an error naming its path); a `tool` message becomes a `toolResult` block whose
///   content is `[{"json": …}]` when the text is a JSON object, else `[{"text": …}]`.
/// - `inferenceConfig`: `max_completion_tokens` (else `max_tokens`) as `maxTokens`,
///   `temperature`, `top_p` as `topP`, `stop` as `stopSequences`.
/// - `toolConfig`: `tools` as `toolSpec`s (`inputSchema.json`, an empty object schema
///   when there are no parameters); `tool_choice` auto / required / a named function
///   as `{"auto": {}}` / `{"any": {}}` / `{"tool": {"name"}}`; `none` omits
///   `toolConfig` (Converse has no "none"; note Bedrock then refuses a conversation
///   that already holds tool calls).
///
/// Dropped: `model` and `stream` (in the URL), `stream_options`, `response_format`
/// `json_object` (JSON mode is left to the prompt, as for Anthropic), `seed`,
/// `presence_penalty`, `frequency_penalty`, `logit_bias`, `logprobs`,
/// `reasoning_effort`, `parallel_tool_calls`, `user`, message `name`s. Errors: `n` > 1,
/// `response_format` `json_schema`, unknown roles and part types.
pub fn openai_request_to_converse(request: &Value) -> Result<Value, TranslateError> {
    ensure_object(request)?;
    match request.get("n") {
        None | Some(Value::Null) => {}
        Some(n) => match n.as_u64() {
            Some(1) => {}
            Some(n) if n > 1 => return Err(TranslateError::MultipleChoices { n }),
            _ => {
                return Err(TranslateError::WrongType {
                    path: "n".to_owned(),
                    expected: "a positive integer",
                })
            }
        },
    }
    if let Some(format) = request.get("response_format").filter(|f| !f.is_null()) {
        match required_str(format, "type", "response_format")? {
            "text" | "json_object" => {}
            other => {
                return Err(TranslateError::Unsupported {
                    path: "response_format.type".to_owned(),
                    what: "response format",
                    value: other.to_owned(),
                })
            }
        }
    }
    let mut system = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (index, message) in required_array(request, "messages", "")?.iter().enumerate() {
        let path = format!("messages[{index}]");
        let content_path = field_path(&path, "content");
        let (role, blocks) = match required_str(message, "role", &path)? {
            "system" | "developer" => {
                let text = text_content(message.get("content"), &content_path, "\n")?;
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            "user" => ("user", user_blocks(message.get("content"), &content_path)?),
            "assistant" => ("assistant", assistant_blocks(message, &path)?),
            "tool" => ("user", vec![tool_result_block(message, &path)?]),
            other => {
                return Err(TranslateError::Unsupported {
                    path: field_path(&path, "role"),
                    what: "role",
                    value: other.to_owned(),
                })
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((last_role, last)) if *last_role == role => last.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let mut out = Map::new();
    let messages = messages
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    out.insert("messages".to_owned(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".to_owned(), Value::Array(system));
    }
    let config = inference_config(request)?;
    if !config.is_empty() {
        out.insert("inferenceConfig".to_owned(), Value::Object(config));
    }
    if let Some(tool_config) = tool_config(request)? {
        out.insert("toolConfig".to_owned(), tool_config);
    }
    Ok(Value::Object(out))
}

/// A user message's content as Converse content blocks.
fn user_blocks(content: Option<&Value>, path: &str) -> Result<Vec<Value>, TranslateError> {
    let parts = match read_user_content(content, path)? {
        UserContent::Plain("") => return Ok(Vec::new()),
        UserContent::Plain(text) => return Ok(vec![json!({"text": text})]),
        UserContent::Parts(parts) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        blocks.push(match part {
            UserPart::Text(text) => json!({"text": text}),
            UserPart::Image(part, path) => image_block(part, &path)?,
            UserPart::Audio(_, path) => return Err(unsupported_part(path, "input_audio")),
        });
    }
    Ok(blocks)
}

/// An OpenAI `image_url` part with a base64 data URL as a Converse `image` block.
fn image_block(part: &Value, path: &str) -> Result<Value, TranslateError> {
    let (media_type, data, url_path) = match read_image(part, path)? {
        (ImageSource::Base64 { media_type, data }, url_path) => (media_type, data, url_path),
        (ImageSource::Url(url), url_path) => {
            let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
            return Err(TranslateError::Unsupported {
                path: url_path,
                what: "image URL scheme (Bedrock takes the image's bytes: use a data URL)",
                value: scheme.to_owned(),
            });
        }
    };
    let format = match media_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(TranslateError::Unsupported {
                path: url_path,
                what: "image media type",
                value: other.to_owned(),
            })
        }
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// An assistant message's text and tool calls as Converse content blocks.
fn assistant_blocks(message: &Value, path: &str) -> Result<Vec<Value>, TranslateError> {
    let turn = read_assistant(message, path)?;
    let texts = turn.texts.iter().map(|text| json!({"text": text}));
    let calls = turn.calls.into_iter().map(
        |call| json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.input}}),
    );
    Ok(texts.chain(calls).collect())
}

/// A `tool` message as a `toolResult` block.
fn tool_result_block(message: &Value, path: &str) -> Result<Value, TranslateError> {
    let id = required_str(message, "tool_call_id", path)?;
    let text = text_content(message.get("content"), &field_path(path, "content"), "\n")?;
    let content = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => json!([{ "json": object }]),
        _ => json!([{ "text": text }]),
    };
    Ok(json!({"toolResult": {"toolUseId": id, "content": content}}))
}

/// `inferenceConfig` from the request's sampling options.
fn inference_config(request: &Value) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    if let Some((key, value)) = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|key| request.get(key).filter(|v| !v.is_null()).map(|v| (key, v)))
    {
        let tokens = value.as_u64().ok_or_else(|| TranslateError::WrongType {
            path: key.to_owned(),
            expected: "a non-negative integer",
        })?;
        config.insert("maxTokens".to_owned(), json!(tokens));
    }
    copy_field(request, "temperature", &mut config, "temperature");
    copy_field(request, "top_p", &mut config, "topP");
    match request.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(stop)) => {
            config.insert("stopSequences".to_owned(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            config.insert("stopSequences".to_owned(), Value::Array(stops.clone()));
        }
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: "stop".to_owned(),
                expected: "a string or an array of strings",
            })
        }
    }
    Ok(config)
}

/// `toolConfig` from `tools` and `tool_choice`; `None` without tools or with
/// `tool_choice: "none"`.
fn tool_config(request: &Value) -> Result<Option<Value>, TranslateError> {
    let Some(tools) = optional_array(request, "tools", "")?.filter(|tools| !tools.is_empty())
    else {
        return Ok(None);
    };
    let unsupported = |value: &str| TranslateError::Unsupported {
        path: "tool_choice".to_owned(),
        what: "tool choice",
        value: value.to_owned(),
    };
    let choice = match request.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => return Ok(None),
            "auto" => Some(json!({"auto": {}})),
            "required" => Some(json!({"any": {}})),
            other => return Err(unsupported(other)),
        },
        Some(choice @ Value::Object(_)) => match required_str(choice, "type", "tool_choice")? {
            "function" => {
                let function = choice.get("function").unwrap_or(&Value::Null);
                let name = required_str(function, "name", "tool_choice.function")?;
                Some(json!({"tool": {"name": name}}))
            }
            other => return Err(unsupported(other)),
        },
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: "tool_choice".to_owned(),
                expected: "a string or an object",
            })
        }
    };
    let mut specs = Vec::new();
    for (index, tool) in tools.iter().enumerate() {
        let tool = read_function_tool(tool, &format!("tools[{index}]"))?;
        let mut spec = Map::new();
        spec.insert("name".to_owned(), json!(tool.name));
        if let Some(d) = tool.description {
            spec.insert("description".to_owned(), d.clone());
        }
        let schema = tool
            .parameters
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        spec.insert("inputSchema".to_owned(), json!({ "json": schema }));
        specs.push(json!({ "toolSpec": spec }));
    }
    let mut config = Map::new();
    config.insert("tools".to_owned(), Value::Array(specs));
    if let Some(choice) = choice {
        config.insert("toolChoice".to_owned(), choice);
    }
    Ok(Some(Value::Object(config)))
}

// ---------------------------------------------------------------------------
// Responses.

/// Converse `stopReason` as OpenAI `finish_reason`.
fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence and anything new.
        _ => "stop",
    }
}

/// Translates a Converse response into an OpenAI `chat.completion`.
///
/// `output.message.content`: `text` blocks are concatenated into `content` (null when
/// there is none and there are tool calls), `toolUse` blocks become `tool_calls`
/// (their `toolUseId` as the id, `input` serialized as `arguments`), reasoning and
/// other blocks are dropped. `stopReason` maps end_turn / stop_sequence to `stop`,
/// tool_use to `tool_calls`, max_tokens to `length`, guardrail_intervened /
/// content_filtered to `content_filter`. Usage as in [`Usage::from_converse`].
pub fn converse_response_to_openai(response: &Value, id: &str, created: u64, model: &str) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let blocks = response.pointer("/output/message/content");
    for block in blocks.and_then(Value::as_array).into_iter().flatten() {
        if let Some(piece) = block["text"].as_str() {
            text.push_str(piece);
        }
        if let Some(tool_use) = block.get("toolUse") {
            tool_calls.push(json!({
                "id": tool_use["toolUseId"],
                "type": "function",
                "function": {
                    "name": tool_use["name"],
                    "arguments": tool_use.get("input").filter(|i| !i.is_null()).map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            }));
        }
    }
    let mut message = Map::new();
    message.insert("role".to_owned(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".to_owned(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }
    let finish = response["stopReason"]
        .as_str()
        .map_or(Value::Null, |reason| json!(finish_reason(reason)));
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": Usage::from_converse(&response["usage"]).unwrap_or_default().to_openai(),
    })
}

impl Usage {
    /// Reads a Converse `usage` object; `None` unless it has `inputTokens` or
    /// `outputTokens`. Bedrock's `inputTokens` excludes cache reads and writes, so the
    /// prompt is `inputTokens + cacheReadInputTokens + cacheWriteInputTokens` and
    /// `cached` is `cacheReadInputTokens`.
    pub fn from_converse(usage: &Value) -> Option<Usage> {
        if usage.get("inputTokens").is_none() && usage.get("outputTokens").is_none() {
            return None;
        }
        let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        Some(Usage {
            prompt: count("inputTokens")
                + count("cacheReadInputTokens")
                + count("cacheWriteInputTokens"),
            completion: count("outputTokens"),
            cached: count("cacheReadInputTokens"),
            reasoning: 0,
        })
    }
}

// ---------------------------------------------------------------------------
// Streams.

/// Translates a `converse-stream` event stream into OpenAI `chat.completion.chunk`s,
/// one decoded event at a time ([`push_message`](Self::push_message) for a decoded
/// [`Message`], or [`push`](Self::push) with its `:event-type` and JSON payload).
///
/// - `messageStart`: the first chunk, delta `{"role": "assistant", "content": ""}`.
/// - `contentBlockStart` with `start.toolUse`: a chunk opening a tool call (`index`
///   counts tool calls, `id` is the `toolUseId`, `arguments` "").
/// - `contentBlockDelta`: `delta.text` as `delta.content`, `delta.toolUse.input`
///   (partial JSON) as the tool call's arguments; reasoning deltas are dropped.
/// - `contentBlockStop`: nothing.
/// - `messageStop`: a chunk with an empty delta and the mapped `finish_reason`.
/// - `metadata`: a usage-only chunk (`choices: []`, `usage`); [`finished`](Self::finished)
///   is true once `metadata` follows `messageStop`, which is how Bedrock ends a stream.
/// - Exceptions (`internalServerException`, `modelStreamErrorException`,
///   `throttlingException`, `validationException`, `serviceUnavailableException`, any
///   `…Exception`): `Err(TranslateError::ProviderError)` with the event name and the
///   payload's `message`.
#[derive(Debug)]
pub struct ConverseStreamToOpenAi {
    id: String,
    created: u64,
    model: String,
    /// Converse content block index -> OpenAI tool call index.
    tool_indices: HashMap<u64, usize>,
    stopped: bool,
    usage: Option<Usage>,
    finished: bool,
}

impl ConverseStreamToOpenAi {
    /// A translator whose chunks carry `id`, `created` and `model`.
    pub fn new(id: &str, created: u64, model: &str) -> Self {
        ConverseStreamToOpenAi {
            id: id.to_owned(),
            created,
            model: model.to_owned(),
            tool_indices: HashMap::new(),
            stopped: false,
            usage: None,
            finished: false,
        }
    }

    /// Translates one decoded event-stream message: `:message-type` `event` by its
    /// `:event-type`, `exception` by its `:exception-type`, `error` (`:error-code`,
    /// `:error-message` headers) as a provider error.
    pub fn push_message(&mut self, message: &Message) -> Result<Vec<Value>, TranslateError> {
        let message_type = message.header(":message-type").unwrap_or("event");
        if message_type == "error" {
            return Err(TranslateError::ProviderError {
                kind: message.header(":error-code").unwrap_or("error").to_owned(),
                message: message
                    .header(":error-message")
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        let event_type = match message_type {
            "exception" => message
                .header(":exception-type")
                .unwrap_or("unknownException"),
            _ => message.header(":event-type").unwrap_or_default(),
        };
        let payload: Value = if message.payload.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&message.payload).map_err(|error| {
                TranslateError::MalformedEvent {
                    event: event_type.to_owned(),
                    reason: error.to_string(),
                }
            })?
        };
        self.push(event_type, &payload)
    }

    /// Translates one event, by its type, into zero or more chunks.
    pub fn push(
        &mut self,
        event_type: &str,
        payload: &Value,
    ) -> Result<Vec<Value>, TranslateError> {
        let malformed = |reason: &str| TranslateError::MalformedEvent {
            event: event_type.to_owned(),
            reason: reason.to_owned(),
        };
        let chunks = match event_type {
            "messageStart" => vec![self.chunk(json!({"role": "assistant", "content": ""}), None)],
            "contentBlockStart" => match payload.pointer("/start/toolUse") {
                Some(tool_use) => {
                    let block = payload["contentBlockIndex"]
                        .as_u64()
                        .ok_or_else(|| malformed("no contentBlockIndex"))?;
                    let tool_index = self.tool_indices.len();
                    self.tool_indices.insert(block, tool_index);
                    let delta = json!({"tool_calls": [{
                        "index": tool_index,
                        "id": tool_use["toolUseId"],
                        "type": "function",
                        "function": {"name": tool_use["name"], "arguments": ""},
                    }]});
                    vec![self.chunk(delta, None)]
                }
                None => Vec::new(),
            },
            "contentBlockDelta" => {
                let delta = &payload["delta"];
                if let Some(text) = delta["text"].as_str() {
                    if text.is_empty() {
                        Vec::new()
                    } else {
                        vec![self.chunk(json!({"content": text}), None)]
                    }
                } else if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str)
                {
                    let block = payload["contentBlockIndex"]
                        .as_u64()
                        .ok_or_else(|| malformed("no contentBlockIndex"))?;
                    let tool_index = *self
                        .tool_indices
                        .get(&block)
                        .ok_or_else(|| malformed("tool input for a block that is not a toolUse"))?;
                    if input.is_empty() {
                        Vec::new()
                    } else {
                        let delta = json!({"tool_calls": [{
                            "index": tool_index,
                            "function": {"arguments": input},
                        }]});
                        vec![self.chunk(delta, None)]
                    }
                } else {
                    Vec::new()
                }
            }
            "messageStop" => {
                self.stopped = true;
                let finish = finish_reason(payload["stopReason"].as_str().unwrap_or("end_turn"));
                vec![self.chunk(json!({}), Some(finish))]
            }
            "metadata" => {
                let usage = Usage::from_converse(&payload["usage"]).unwrap_or_default();
                self.usage = Some(usage);
                self.finished = self.stopped;
                vec![json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage.to_openai(),
                })]
            }
            exception if exception.ends_with("Exception") => {
                return Err(TranslateError::ProviderError {
                    kind: exception.to_owned(),
                    message: payload["message"]
                        .as_str()
                        .or_else(|| payload["Message"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                })
            }
            _ => Vec::new(),
        };
        Ok(chunks)
    }

    /// The usage from the `metadata` event, once it arrived.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `metadata` followed `messageStop`: the stream ended normally.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_request_becomes_converse_request() {
        let request = json!({
            "model": "anthropic.claude-3-haiku",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "t2", "type": "function", "function": {"name": "w", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "t1", "content": "{\"temp\":21}"},
                {"role": "tool", "tool_call_id": "t2", "content": "sunny"},
                {"role": "user", "content": ""}
            ],
            "tools": [{"type": "function", "function": {"name": "w", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "max_completion_tokens": 50, "temperature": 0.5, "top_p": 1, "stop": ["END"],
            "seed": 3, "response_format": {"type": "json_object"}
        });
        assert_eq!(
            openai_request_to_converse(&request).unwrap(),
            json!({
                "messages": [
                    {"role": "user", "content": [
                        {"text": "Weather?"},
                        {"image": {"format": "jpeg", "source": {"bytes": "AAAA"}}}
                    ]},
                    {"role": "assistant", "content": [
                        {"toolUse": {"toolUseId": "t1", "name": "w", "input": {"city": "Paris"}}},
                        {"toolUse": {"toolUseId": "t2", "name": "w", "input": {}}}
                    ]},
                    {"role": "user", "content": [
                        {"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": 21}}]}},
                        {"toolResult": {"toolUseId": "t2", "content": [{"text": "sunny"}]}}
                    ]}
                ],
                "system": [{"text": "Be brief."}],
                "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "topP": 1, "stopSequences": ["END"]},
                "toolConfig": {
                    "tools": [{"toolSpec": {"name": "w", "description": "Weather", "inputSchema": {"json":
                        {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
                    "toolChoice": {"any": {}}
                }
            })
        );
        let with_choice = |choice: Value| {
            let request = json!({"messages": [], "tools": [{"type": "function", "function": {"name": "w"}}], "tool_choice": choice});
            openai_request_to_converse(&request).unwrap()
        };
        assert_eq!(
            with_choice(json!("auto"))["toolConfig"]["toolChoice"],
            json!({"auto": {}})
        );
        assert_eq!(
            with_choice(json!({"type": "function", "function": {"name": "w"}}))["toolConfig"]
                ["toolChoice"],
            json!({"tool": {"name": "w"}})
        );
        assert!(with_choice(json!("none")).get("toolConfig").is_none());
    }

    #[test]
    fn request_errors_name_the_path() {
        let error = |request: Value| {
            openai_request_to_converse(&request)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error(json!({"messages": [], "n": 2})),
            "n: only one choice per request is supported, got 2"
        );
        let url_image = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]});
        assert!(error(url_image).starts_with("messages[0].content[0].image_url.url: unsupported"));
        let bad_arguments = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]});
        assert!(error(bad_arguments).starts_with("messages[0].tool_calls[0].function.arguments:"));
        let schema =
            json!({"messages": [], "response_format": {"type": "json_schema", "json_schema": {}}});
        assert!(error(schema).starts_with("response_format.type: unsupported"));
        let svg = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,AA"}}]}]});
        assert!(error(svg).contains("image media type"));
    }

    #[test]
    fn converse_response_becomes_chat_completion() {
        let response = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "hmm"}}},
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "w", "input": {"city": "Paris"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 21,
                      "cacheReadInputTokens": 4, "cacheWriteInputTokens": 2},
            "metrics": {"latencyMs": 100}
        });
        let completion = converse_response_to_openai(&response, "chatcmpl-1", 7, "claude");
        let choice = &completion["choices"][0];
        assert_eq!(choice["message"]["content"], "Checking.");
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "tooluse_1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(completion["usage"]["prompt_tokens"], 16);
        assert_eq!(completion["usage"]["completion_tokens"], 5);
        assert_eq!(completion["usage"]["total_tokens"], 21);
        assert_eq!(
            completion["usage"]["prompt_tokens_details"]["cached_tokens"],
            4
        );
        assert_eq!(
            Usage::from_openai(&completion["usage"]),
            Usage::from_converse(&response["usage"])
        );
        for (reason, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
        ] {
            let response =
                json!({"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": reason});
            assert_eq!(
                converse_response_to_openai(&response, "i", 0, "m")["choices"][0]["finish_reason"],
                finish
            );
        }
    }

    fn event(event_type: &str, payload: Value) -> Vec<u8> {
        encode_message(
            &[
                (":event-type", event_type),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        )
    }

    #[test]
    fn converse_stream_becomes_chunks() {
        let bytes = [
            event("messageStart", json!({"role": "assistant"})),
            event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hi "}})),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event("contentBlockStart", json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu1", "name": "w"}}})),
            event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}})),
            event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}})),
            event("contentBlockStop", json!({"contentBlockIndex": 1})),
            event("messageStop", json!({"stopReason": "tool_use"})),
            event("metadata", json!({"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}, "metrics": {"latencyMs": 1}})),
        ]
        .concat();
        let mut decoder = EventStreamDecoder::new();
        let mut stream = ConverseStreamToOpenAi::new("chatcmpl-1", 7, "claude");
        let mut chunks = Vec::new();
        for piece in bytes.chunks(7) {
            decoder.push(piece);
            while let Some(message) = decoder.next_message().unwrap() {
                assert!(!stream.finished());
                chunks.extend(stream.push_message(&message).unwrap());
            }
        }
        assert!(stream.finished());
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
        assert_eq!(deltas[1]["content"], "Hi ");
        assert_eq!(
            deltas[2]["tool_calls"],
            json!([{"index": 0, "id": "tu1", "type": "function", "function": {"name": "w", "arguments": ""}}])
        );
        assert_eq!(
            deltas[3]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":"
        );
        assert_eq!(
            deltas[4]["tool_calls"][0]["function"]["arguments"],
            "\"Paris\"}"
        );
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(chunks[6]["usage"]["total_tokens"], 7);
        assert_eq!(stream.usage().map(|u| u.completion), Some(4));
    }

    #[test]
    fn converse_stream_exceptions_are_errors() {
        let mut stream = ConverseStreamToOpenAi::new("i", 0, "m");
        let exception = encode_message(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&exception);
        let message = decoder.next_message().unwrap().unwrap();
        assert_eq!(
            stream.push_message(&message).unwrap_err(),
            TranslateError::ProviderError {
                kind: "throttlingException".to_owned(),
                message: "Too many requests, please wait before trying again.".to_owned()
            }
        );
        for kind in [
            "internalServerException",
            "modelStreamErrorException",
            "validationException",
        ] {
            assert!(stream.push(kind, &json!({"message": "x"})).is_err());
        }
        assert!(matches!(
            stream.push(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 5, "delta": {"toolUse": {"input": "{"}}})
            ),
            Err(TranslateError::MalformedEvent { .. })
        ));
        assert!(stream.push("metadata", &json!({"usage": {}})).is_ok());
        assert!(
            !stream.finished(),
            "metadata without messageStop is not a clean end"
        );
    }
}
