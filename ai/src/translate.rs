//! Translation between the OpenAI Chat Completions and Anthropic Messages wire
//! formats, on `serde_json::Value`s, for requests, responses, errors, usage and streams.
//!
//! The gateway's canonical format is OpenAI Chat Completions: a request from an
//! Anthropic client is turned into an OpenAI request, and an OpenAI request bound for
//! an Anthropic provider is turned into an Anthropic one; responses go the other way.
//!
//! Key components:
//! 1. Requests: [`anthropic_request_to_openai`], [`openai_request_to_anthropic`]. Both
//!    validate what they translate and fail with a [`TranslateError`] that names the
//!    JSON path, e.g. `messages[2].content[0]: unsupported block type "audio"`.
//! 2. Responses: [`anthropic_response_to_openai`], [`openai_response_to_anthropic`];
//!    a provider's response is trusted, so these are infallible and lenient.
//! 3. Errors: [`provider_error_message`] reads a provider's error body (the
//!    gateway's own error bodies are written by `hypergate-core`'s `error`).
//! 4. Usage: [`Usage`], read from either format, written as OpenAI or Anthropic.
//! 5. Streams, translated chunk by chunk by push-style state machines:
//!    [`AnthropicStreamToOpenAi`] (SSE events in, `chat.completion.chunk`s out) and
//!    [`OpenAiStreamToAnthropic`] (chunks in, named Anthropic events out), plus
//!    accessors the gateway uses to read usage and rewrite text in place.
//!
//! Lossy spots are documented on each function: features one side lacks are dropped
//! (never invented), and anything that would change meaning is an error instead.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::sse::SseEvent;

/// Why a request (or a provider's stream) could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A required field is absent or null.
    #[error("{path}: missing")]
    Missing {
        /// JSON path of the field, e.g. `messages[0].role`.
        path: String,
    },
    /// A field has the wrong JSON type or shape.
    #[error("{path}: expected {expected}")]
    WrongType {
        /// JSON path of the field.
        path: String,
        /// What was expected, e.g. "a string".
        expected: &'static str,
    },
    /// A value the other format cannot express.
    #[error("{path}: unsupported {what} {value:?}")]
    Unsupported {
        /// JSON path of the value.
        path: String,
        /// What kind of value, e.g. "block type".
        what: &'static str,
        /// The value itself.
        value: String,
    },
    /// Tool call arguments that are not a JSON object.
    #[error("{path}: tool call arguments are not a JSON object: {reason}")]
    InvalidArguments {
        /// JSON path of the arguments.
        path: String,
        /// The parser's complaint.
        reason: String,
    },
    /// `n` > 1: Anthropic returns one message per request.
    #[error("n: only one choice per request is supported, got {n}")]
    MultipleChoices {
        /// The requested number of choices.
        n: u64,
    },
    /// A stream event that is not the JSON it should be.
    #[error("stream event {event:?}: {reason}")]
    MalformedEvent {
        /// The event's name (or "message" when unnamed).
        event: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The provider reported an error in the middle of a stream.
    #[error("provider stream error ({kind}): {message}")]
    ProviderError {
        /// The provider's error type, e.g. "overloaded_error".
        kind: String,
        /// The provider's message.
        message: String,
    },
}

impl TranslateError {
    /// The request field at fault (OpenAI's `error.param`): the JSON path's
    /// first segment, e.g. `messages` for `messages[2].content`; empty when the
    /// error is not about a request field.
    pub fn path(&self) -> &str {
        let path = match self {
            TranslateError::Missing { path }
            | TranslateError::WrongType { path, .. }
            | TranslateError::Unsupported { path, .. }
            | TranslateError::InvalidArguments { path, .. } => path.as_str(),
            TranslateError::MultipleChoices { .. } => "n",
            TranslateError::MalformedEvent { .. } | TranslateError::ProviderError { .. } => "",
        };
        path.split(['.', '[']).next().unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Field access with paths.

/// `parent.key`, or `key` at the top level.
pub(crate) fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A required string field.
pub(crate) fn required_str<'a>(
    object: &'a Value,
    key: &str,
    path: &str,
) -> Result<&'a str, TranslateError> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(TranslateError::Missing {
            path: field_path(path, key),
        }),
        Some(_) => Err(TranslateError::WrongType {
            path: field_path(path, key),
            expected: "a string",
        }),
    }
}

/// A required array field.
pub(crate) fn required_array<'a>(
    object: &'a Value,
    key: &str,
    path: &str,
) -> Result<&'a [Value], TranslateError> {
    optional_array(object, key, path)?.ok_or_else(|| TranslateError::Missing {
        path: field_path(path, key),
    })
}

/// An optional array field; null counts as absent.
pub(crate) fn optional_array<'a>(
    object: &'a Value,
    key: &str,
    path: &str,
) -> Result<Option<&'a [Value]>, TranslateError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(TranslateError::WrongType {
            path: field_path(path, key),
            expected: "an array",
        }),
    }
}

/// Copies `from` of `source` to `to` of `target` when present and not null.
pub(crate) fn copy_field(source: &Value, from: &str, target: &mut Map<String, Value>, to: &str) {
    if let Some(value) = source.get(from).filter(|v| !v.is_null()) {
        target.insert(to.to_owned(), value.clone());
    }
}

/// Fails unless the request is a JSON object.
pub(crate) fn ensure_object(request: &Value) -> Result<(), TranslateError> {
    if request.is_object() {
        Ok(())
    } else {
        Err(TranslateError::WrongType {
            path: "request".to_owned(),
            expected: "a JSON object",
        })
    }
}

/// The texts of an array of text blocks or text parts (`{"type":"text","text":...}`).
pub(crate) fn text_parts<'a>(
    parts: &'a [Value],
    path: &str,
) -> Result<Vec<&'a str>, TranslateError> {
    parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            let path = format!("{path}[{index}]");
            match required_str(part, "type", &path)? {
                "text" => required_str(part, "text", &path),
                other => Err(TranslateError::Unsupported {
                    path,
                    what: "block type",
                    value: other.to_owned(),
                }),
            }
        })
        .collect()
}

/// Text from a string or an array of text parts, parts joined with `separator`.
pub(crate) fn text_content(
    content: Option<&Value>,
    path: &str,
    separator: &str,
) -> Result<String, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => Ok(text_parts(parts, path)?.join(separator)),
        Some(_) => Err(TranslateError::WrongType {
            path: path.to_owned(),
            expected: "a string or an array of text parts",
        }),
    }
}

// ---------------------------------------------------------------------------
// Requests: Anthropic -> OpenAI.

/// Translates an Anthropic Messages request into an OpenAI Chat Completions request.
///
/// - `system` (a string, or text blocks joined with a blank line) becomes a leading
///   system message.
/// - User content blocks: `text`; `image` with a base64 source (as a `data:` URL) or a
///   url source, as `image_url` parts; `tool_result` blocks become separate `tool`
///   messages (before the rest of that user turn, where OpenAI wants them), their text
///   blocks joined with `\n`. A string content stays a string.
/// - Assistant content blocks: `text` (joined) and `tool_use` (as `tool_calls`, the
///   input serialized as the `arguments` string); `thinking` and `redacted_thinking`
///   are dropped, as OpenAI has no place for them.
/// - `tools` become function tools; `tool_choice` auto/any/tool/none becomes
///   "auto"/"required"/named function/"none"; `disable_parallel_tool_use` becomes
///   `parallel_tool_calls: false`.
/// - `max_tokens`, `temperature`, `top_p` are copied; `stop_sequences` becomes `stop`;
///   `metadata.user_id` becomes `user`; `model` is kept as is.
/// - `stream: true` also asks for `stream_options.include_usage`, so the final usage
///   reaches the client's `message_delta`.
///
/// Dropped: `top_k`, `thinking`, `cache_control` markers, citations, and `is_error` on
/// tool results. Errors: unknown roles, block types, image sources and server tools.
pub fn anthropic_request_to_openai(request: &Value) -> Result<Value, TranslateError> {
    ensure_object(request)?;
    let mut out = Map::new();
    copy_field(request, "model", &mut out, "model");

    let mut messages = Vec::new();
    let system = match request.get("system") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => text_parts(blocks, "system")?.join("\n\n"),
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: "system".to_owned(),
                expected: "a string or an array of text blocks",
            })
        }
    };
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for (index, message) in required_array(request, "messages", "")?.iter().enumerate() {
        anthropic_message_to_openai(message, &format!("messages[{index}]"), &mut messages)?;
    }
    out.insert("messages".to_owned(), Value::Array(messages));

    copy_field(request, "max_tokens", &mut out, "max_tokens");
    copy_field(request, "temperature", &mut out, "temperature");
    copy_field(request, "top_p", &mut out, "top_p");
    copy_field(request, "stop_sequences", &mut out, "stop");
    copy_field(request, "stream", &mut out, "stream");
    if request.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream_options".to_owned(), json!({"include_usage": true}));
    }
    if let Some(user) = request
        .pointer("/metadata/user_id")
        .filter(|u| !u.is_null())
    {
        out.insert("user".to_owned(), user.clone());
    }
    if let Some(tools) = optional_array(request, "tools", "")? {
        let tools = tools
            .iter()
            .enumerate()
            .map(|(index, tool)| anthropic_tool_to_openai(tool, &format!("tools[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".to_owned(), Value::Array(tools));
    }
    if let Some(choice) = request.get("tool_choice").filter(|c| !c.is_null()) {
        let (choice, parallel) = anthropic_tool_choice_to_openai(choice)?;
        out.insert("tool_choice".to_owned(), choice);
        if !parallel {
            out.insert("parallel_tool_calls".to_owned(), Value::Bool(false));
        }
    }
    Ok(Value::Object(out))
}

/// Appends the OpenAI messages for one Anthropic message.
fn anthropic_message_to_openai(
    message: &Value,
    path: &str,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let role = required_str(message, "role", path)?;
    if role != "user" && role != "assistant" {
        return Err(TranslateError::Unsupported {
            path: field_path(path, "role"),
            what: "role",
            value: role.to_owned(),
        });
    }
    let content_path = field_path(path, "content");
    let blocks = match message.get("content") {
        Some(Value::String(text)) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        None | Some(Value::Null) => return Err(TranslateError::Missing { path: content_path }),
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: content_path,
                expected: "a string or an array of content blocks",
            })
        }
    };
    if role == "user" {
        let mut parts = Vec::new();
        for (index, block) in blocks.iter().enumerate() {
            let path = format!("{content_path}[{index}]");
            match required_str(block, "type", &path)? {
                "text" => {
                    parts.push(json!({"type": "text", "text": required_str(block, "text", &path)?}))
                }
                "image" => parts.push(anthropic_image_to_openai(block, &path)?),
                "tool_result" => out.push(anthropic_tool_result_to_openai(block, &path)?),
                other => return Err(unsupported_block(path, other)),
            }
        }
        if !parts.is_empty() {
            out.push(json!({"role": "user", "content": parts}));
        }
        return Ok(());
    }
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let path = format!("{content_path}[{index}]");
        match required_str(block, "type", &path)? {
            "text" => text.push_str(required_str(block, "text", &path)?),
            "tool_use" => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": required_str(block, "id", &path)?,
                    "type": "function",
                    "function": {
                        "name": required_str(block, "name", &path)?,
                        "arguments": input.to_string(),
                    },
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => return Err(unsupported_block(path, other)),
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
    out.push(Value::Object(message));
    Ok(())
}

fn unsupported_block(path: String, kind: &str) -> TranslateError {
    TranslateError::Unsupported {
        path,
        what: "block type",
        value: kind.to_owned(),
    }
}

/// An Anthropic image block as an OpenAI `image_url` part.
fn anthropic_image_to_openai(block: &Value, path: &str) -> Result<Value, TranslateError> {
    let source_path = field_path(path, "source");
    let source = block
        .get("source")
        .filter(|s| s.is_object())
        .ok_or_else(|| TranslateError::Missing {
            path: source_path.clone(),
        })?;
    let url = match required_str(source, "type", &source_path)? {
        "base64" => format!(
            "data:{};base64,{}",
            required_str(source, "media_type", &source_path)?,
            required_str(source, "data", &source_path)?
        ),
        "url" => required_str(source, "url", &source_path)?.to_owned(),
        other => {
            return Err(TranslateError::Unsupported {
                path: field_path(&source_path, "type"),
                what: "image source type",
                value: other.to_owned(),
            })
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// An Anthropic `tool_result` block as an OpenAI `tool` message.
fn anthropic_tool_result_to_openai(block: &Value, path: &str) -> Result<Value, TranslateError> {
    let id = required_str(block, "tool_use_id", path)?;
    let content = text_content(block.get("content"), &field_path(path, "content"), "\n")?;
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

/// An Anthropic client tool as an OpenAI function tool.
fn anthropic_tool_to_openai(tool: &Value, path: &str) -> Result<Value, TranslateError> {
    if let Some(kind) = tool.get("type").and_then(Value::as_str) {
        if kind != "custom" {
            return Err(TranslateError::Unsupported {
                path: field_path(path, "type"),
                what: "tool type",
                value: kind.to_owned(),
            });
        }
    }
    let mut function = Map::new();
    function.insert("name".to_owned(), json!(required_str(tool, "name", path)?));
    copy_field(tool, "description", &mut function, "description");
    let schema = tool
        .get("input_schema")
        .filter(|s| s.is_object())
        .ok_or_else(|| TranslateError::Missing {
            path: field_path(path, "input_schema"),
        })?;
    function.insert("parameters".to_owned(), schema.clone());
    Ok(json!({"type": "function", "function": function}))
}

/// An Anthropic `tool_choice` as OpenAI's, and whether parallel tool calls stay allowed.
fn anthropic_tool_choice_to_openai(choice: &Value) -> Result<(Value, bool), TranslateError> {
    let openai = match required_str(choice, "type", "tool_choice")? {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => json!({
            "type": "function",
            "function": {"name": required_str(choice, "name", "tool_choice")?},
        }),
        other => {
            return Err(TranslateError::Unsupported {
                path: "tool_choice.type".to_owned(),
                what: "tool choice",
                value: other.to_owned(),
            })
        }
    };
    let parallel = choice.get("disable_parallel_tool_use") != Some(&Value::Bool(true));
    Ok((openai, parallel))
}

// ---------------------------------------------------------------------------
// Requests: OpenAI -> Anthropic.

/// Anthropic message content under construction.
enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    fn is_empty(&self) -> bool {
        match self {
            Content::Text(text) => text.is_empty(),
            Content::Blocks(blocks) => blocks.is_empty(),
        }
    }

    fn into_blocks(self) -> Vec<Value> {
        match self {
            Content::Text(text) => vec![json!({"type": "text", "text": text})],
            Content::Blocks(blocks) => blocks,
        }
    }

    fn into_value(self) -> Value {
        match self {
            Content::Text(text) => Value::String(text),
            Content::Blocks(blocks) => Value::Array(blocks),
        }
    }
}

/// Appends a message, merging it into the previous one when the role repeats
/// (Anthropic requires alternating roles). Empty content is skipped: Anthropic
/// rejects empty messages and empty text blocks.
fn push_merged(messages: &mut Vec<(&'static str, Content)>, role: &'static str, content: Content) {
    if content.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some((last_role, last)) if *last_role == role => {
            let previous = std::mem::replace(last, Content::Blocks(Vec::new()));
            let mut blocks = previous.into_blocks();
            blocks.extend(content.into_blocks());
            *last = Content::Blocks(blocks);
        }
        _ => messages.push((role, content)),
    }
}

/// Translates an OpenAI Chat Completions request into an Anthropic Messages request.
///
/// - `system` and `developer` messages, wherever they are, are joined with a blank line
///   into `system` (their text parts joined with `\n`).
/// - Consecutive messages of the same role are merged into one, as Anthropic requires
///   alternation; `tool` messages become `tool_result` blocks of a user message (text
///   parts as text blocks). Empty messages are dropped.
/// - User content: a string stays a string; parts `text` and `image_url` (a `data:`
///   URL becomes a base64 source, an http(s) URL a url source).
/// - Assistant content (string, or text/refusal parts) becomes text blocks; `tool_calls`
///   become `tool_use` blocks with the parsed `arguments` (empty means `{}`).
/// - `tools` and `tool_choice` are mapped back ("required" is `any`);
///   `parallel_tool_calls: false` becomes `disable_parallel_tool_use`.
/// - `max_completion_tokens`, else `max_tokens`, else `default_max_tokens` (Anthropic
///   requires it); `stop` (string or array) becomes `stop_sequences`; `temperature`,
///   `top_p` (not rescaled), `stream` are copied; `user` becomes `metadata.user_id`.
///
/// Dropped, as Anthropic has no equivalent: `response_format` (JSON mode is left to the
/// prompt), `stream_options` (Anthropic always reports usage), `frequency_penalty`,
/// `presence_penalty`, `logit_bias`, `logprobs`, `seed`, `reasoning_effort`, message
/// `name`s. Errors: `n` > 1, invalid tool call arguments, unknown roles and part types.
pub fn openai_request_to_anthropic(
    request: &Value,
    default_max_tokens: u64,
) -> Result<Value, TranslateError> {
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
    let mut out = Map::new();
    copy_field(request, "model", &mut out, "model");

    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (index, message) in required_array(request, "messages", "")?.iter().enumerate() {
        let path = format!("messages[{index}]");
        let content_path = field_path(&path, "content");
        match required_str(message, "role", &path)? {
            "system" | "developer" => {
                let text = text_content(message.get("content"), &content_path, "\n")?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => push_merged(
                &mut messages,
                "user",
                openai_user_content(message, &content_path)?,
            ),
            "assistant" => push_merged(
                &mut messages,
                "assistant",
                openai_assistant_content(message, &path)?,
            ),
            "tool" => {
                let result = openai_tool_message_to_anthropic(message, &path)?;
                push_merged(&mut messages, "user", Content::Blocks(vec![result]));
            }
            other => {
                return Err(TranslateError::Unsupported {
                    path: field_path(&path, "role"),
                    what: "role",
                    value: other.to_owned(),
                })
            }
        }
    }
    if !system.is_empty() {
        out.insert("system".to_owned(), Value::String(system.join("\n\n")));
    }
    let messages = messages
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content.into_value()}))
        .collect();
    out.insert("messages".to_owned(), Value::Array(messages));

    let max_tokens = match ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|key| request.get(key).filter(|v| !v.is_null()).map(|v| (key, v)))
    {
        None => default_max_tokens,
        Some((key, value)) => value.as_u64().ok_or_else(|| TranslateError::WrongType {
            path: key.to_owned(),
            expected: "a non-negative integer",
        })?,
    };
    out.insert("max_tokens".to_owned(), json!(max_tokens));
    copy_field(request, "temperature", &mut out, "temperature");
    copy_field(request, "top_p", &mut out, "top_p");
    match request.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".to_owned(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            out.insert("stop_sequences".to_owned(), Value::Array(stops.clone()));
        }
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: "stop".to_owned(),
                expected: "a string or an array of strings",
            })
        }
    }
    copy_field(request, "stream", &mut out, "stream");
    if let Some(user) = request.get("user").filter(|u| !u.is_null()) {
        out.insert("metadata".to_owned(), json!({"user_id": user}));
    }
    if let Some(tools) = optional_array(request, "tools", "")? {
        let tools = tools
            .iter()
            .enumerate()
            .map(|(index, tool)| openai_tool_to_anthropic(tool, &format!("tools[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".to_owned(), Value::Array(tools));
    }
    let choice = match request.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(choice) => Some(openai_tool_choice_to_anthropic(choice)?),
    };
    let choice = if request.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        match choice.unwrap_or_else(|| json!({"type": "auto"})) {
            Value::Object(mut choice) if choice.get("type") != Some(&json!("none")) => {
                choice.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
                Some(Value::Object(choice))
            }
            choice => Some(choice),
        }
    } else {
        choice
    };
    if let Some(choice) = choice {
        out.insert("tool_choice".to_owned(), choice);
    }
    Ok(Value::Object(out))
}

/// A user message's content as Anthropic content.
fn openai_user_content(message: &Value, path: &str) -> Result<Content, TranslateError> {
    let parts = match read_user_content(message.get("content"), path)? {
        UserContent::Plain(text) => return Ok(Content::Text(text.to_owned())),
        UserContent::Parts(parts) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        blocks.push(match part {
            UserPart::Text(text) => json!({"type": "text", "text": text}),
            UserPart::Image(part, path) => openai_image_to_anthropic(part, &path)?,
            UserPart::Audio(_, path) => return Err(unsupported_part(path, "input_audio")),
        });
    }
    Ok(Content::Blocks(blocks))
}

/// A user message's content, read for every translation.
pub(crate) enum UserContent<'a> {
    /// One string (empty when the content is null).
    Plain(&'a str),
    /// Content parts, in order (empty texts left out).
    Parts(Vec<UserPart<'a>>),
}

/// One part of a user message.
pub(crate) enum UserPart<'a> {
    /// Text.
    Text(&'a str),
    /// An `image_url` part and its JSON path (read it with [`read_image`]).
    Image(&'a Value, String),
    /// An `input_audio` part and its JSON path (formats that carry audio
    /// read its `data` and `format`).
    Audio(&'a Value, String),
}

/// The error for a part type a format cannot carry.
pub(crate) fn unsupported_part(path: String, kind: &str) -> TranslateError {
    TranslateError::Unsupported {
        path,
        what: "part type",
        value: kind.to_owned(),
    }
}

/// Reads a user message's `content` at `path`; unknown part types are errors.
pub(crate) fn read_user_content<'a>(
    content: Option<&'a Value>,
    path: &str,
) -> Result<UserContent<'a>, TranslateError> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(UserContent::Plain("")),
        Some(Value::String(text)) => return Ok(UserContent::Plain(text)),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: path.to_owned(),
                expected: "a string or an array of content parts",
            })
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        let path = format!("{path}[{index}]");
        match required_str(part, "type", &path)? {
            "text" => {
                let text = required_str(part, "text", &path)?;
                if !text.is_empty() {
                    out.push(UserPart::Text(text));
                }
            }
            "image_url" => out.push(UserPart::Image(part, path)),
            "input_audio" => out.push(UserPart::Audio(part, path)),
            other => return Err(unsupported_part(path, other)),
        }
    }
    Ok(UserContent::Parts(out))
}

/// Where an OpenAI `image_url` part's image is.
pub(crate) enum ImageSource<'a> {
    /// A base64 `data:` URL: its media type and data.
    Base64 {
        /// E.g. `image/png`.
        media_type: &'a str,
        /// The base64 payload.
        data: &'a str,
    },
    /// An `http(s)` URL.
    Url(&'a str),
}

/// Reads an OpenAI `image_url` part at `path`: the image's source and the
/// JSON path of its URL (for a format's own errors about it). Other URL
/// schemes and non-base64 data URLs are errors.
pub(crate) fn read_image<'a>(
    part: &'a Value,
    path: &str,
) -> Result<(ImageSource<'a>, String), TranslateError> {
    let image_path = field_path(path, "image_url");
    let url = match part.get("image_url") {
        Some(Value::String(url)) => url.as_str(),
        Some(image @ Value::Object(_)) => required_str(image, "url", &image_path)?,
        None | Some(Value::Null) => return Err(TranslateError::Missing { path: image_path }),
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: image_path,
                expected: "an object with a url",
            })
        }
    };
    let url_path = field_path(&image_path, "url");
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or(TranslateError::WrongType {
            path: url_path.clone(),
            expected: "a data URL",
        })?;
        let media_type =
            meta.strip_suffix(";base64")
                .ok_or_else(|| TranslateError::Unsupported {
                    path: url_path.clone(),
                    what: "data URL encoding (only base64)",
                    value: meta.to_owned(),
                })?;
        return Ok((ImageSource::Base64 { media_type, data }, url_path));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok((ImageSource::Url(url), url_path));
    }
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    Err(TranslateError::Unsupported {
        path: url_path,
        what: "image URL scheme",
        value: scheme.to_owned(),
    })
}

/// An OpenAI `image_url` part as an Anthropic image block.
fn openai_image_to_anthropic(part: &Value, path: &str) -> Result<Value, TranslateError> {
    Ok(match read_image(part, path)?.0 {
        ImageSource::Base64 { media_type, data } => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }),
        ImageSource::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
    })
}

/// An OpenAI function tool, read for every translation.
pub(crate) struct FunctionTool<'a> {
    /// The function's name.
    pub name: &'a str,
    /// Its description, when it has one.
    pub description: Option<&'a Value>,
    /// Its JSON-schema parameters, when given.
    pub parameters: Option<&'a Value>,
    /// The JSON path of the parameters.
    pub parameters_path: String,
}

/// Reads `tools[i]` at `path`: only function tools translate.
pub(crate) fn read_function_tool<'a>(
    tool: &'a Value,
    path: &str,
) -> Result<FunctionTool<'a>, TranslateError> {
    if let Some(kind) = tool.get("type").and_then(Value::as_str) {
        if kind != "function" {
            return Err(TranslateError::Unsupported {
                path: field_path(path, "type"),
                what: "tool type",
                value: kind.to_owned(),
            });
        }
    }
    let function_path = field_path(path, "function");
    let function = tool
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| TranslateError::Missing {
            path: function_path.clone(),
        })?;
    Ok(FunctionTool {
        name: required_str(function, "name", &function_path)?,
        description: function.get("description").filter(|d| !d.is_null()),
        parameters: function.get("parameters").filter(|p| !p.is_null()),
        parameters_path: field_path(&function_path, "parameters"),
    })
}

/// An assistant message's content and tool calls as Anthropic content.
/// An assistant message of a chat request, read once for every translation:
/// its texts in order (text and refusal parts; empty ones left out), whether
/// its content was one string, and its tool calls with parsed arguments.
pub(crate) struct AssistantTurn<'a> {
    /// The content when it is one string (possibly empty).
    pub plain: Option<&'a str>,
    /// Non-empty texts, in order.
    pub texts: Vec<&'a str>,
    /// Tool calls, in order.
    pub calls: Vec<ToolCallIn<'a>>,
}

/// One tool call of an assistant message.
pub(crate) struct ToolCallIn<'a> {
    /// The call's id.
    pub id: &'a str,
    /// The function's name.
    pub name: &'a str,
    /// The arguments, parsed into a JSON object.
    pub input: Value,
}

/// Reads an assistant `message` at `path` (see [`AssistantTurn`]); errors
/// name the JSON path.
pub(crate) fn read_assistant<'a>(
    message: &'a Value,
    path: &str,
) -> Result<AssistantTurn<'a>, TranslateError> {
    let content_path = field_path(path, "content");
    let mut turn = AssistantTurn {
        plain: None,
        texts: Vec::new(),
        calls: Vec::new(),
    };
    match message.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            turn.plain = Some(text);
            if !text.is_empty() {
                turn.texts.push(text);
            }
        }
        Some(Value::Array(parts)) => {
            for (index, part) in parts.iter().enumerate() {
                let path = format!("{content_path}[{index}]");
                let text = match required_str(part, "type", &path)? {
                    "text" => required_str(part, "text", &path)?,
                    "refusal" => required_str(part, "refusal", &path)?,
                    other => {
                        return Err(TranslateError::Unsupported {
                            path,
                            what: "part type",
                            value: other.to_owned(),
                        })
                    }
                };
                if !text.is_empty() {
                    turn.texts.push(text);
                }
            }
        }
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: content_path,
                expected: "a string, an array of content parts or null",
            })
        }
    }
    for (index, call) in optional_array(message, "tool_calls", path)?
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let path = format!("{path}.tool_calls[{index}]");
        if let Some(kind) = call.get("type").and_then(Value::as_str) {
            if kind != "function" {
                return Err(TranslateError::Unsupported {
                    path: field_path(&path, "type"),
                    what: "tool call type",
                    value: kind.to_owned(),
                });
            }
        }
        let function_path = field_path(&path, "function");
        let function = call
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| TranslateError::Missing {
                path: function_path.clone(),
            })?;
        let input = parse_arguments(
            function.get("arguments"),
            &field_path(&function_path, "arguments"),
        )?;
        turn.calls.push(ToolCallIn {
            id: required_str(call, "id", &path)?,
            name: required_str(function, "name", &function_path)?,
            input,
        });
    }
    Ok(turn)
}

fn openai_assistant_content(message: &Value, path: &str) -> Result<Content, TranslateError> {
    let turn = read_assistant(message, path)?;
    if let (Some(text), true) = (turn.plain, turn.calls.is_empty()) {
        return Ok(Content::Text(text.to_owned()));
    }
    let texts = turn
        .texts
        .iter()
        .map(|text| json!({"type": "text", "text": text}));
    let calls = turn.calls.into_iter().map(
        |call| json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}),
    );
    Ok(Content::Blocks(texts.chain(calls).collect()))
}

/// Tool call arguments (a JSON string, or an object some clients send) as an object.
pub(crate) fn parse_arguments(
    arguments: Option<&Value>,
    path: &str,
) -> Result<Value, TranslateError> {
    let invalid = |reason: String| TranslateError::InvalidArguments {
        path: path.to_owned(),
        reason,
    };
    let parsed = match arguments {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(json!({})),
        Some(Value::String(text)) => {
            serde_json::from_str(text).map_err(|error| invalid(error.to_string()))?
        }
        Some(other) => other.clone(),
    };
    if parsed.is_object() {
        Ok(parsed)
    } else {
        Err(invalid(format!("got {parsed}")))
    }
}

/// An OpenAI `tool` message as an Anthropic `tool_result` block.
fn openai_tool_message_to_anthropic(message: &Value, path: &str) -> Result<Value, TranslateError> {
    let id = required_str(message, "tool_call_id", path)?;
    let content_path = field_path(path, "content");
    let content = match message.get("content") {
        None | Some(Value::Null) => Value::String(String::new()),
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(parts)) => Value::Array(
            text_parts(parts, &content_path)?
                .into_iter()
                .map(|text| json!({"type": "text", "text": text}))
                .collect(),
        ),
        Some(_) => {
            return Err(TranslateError::WrongType {
                path: content_path,
                expected: "a string or an array of text parts",
            })
        }
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// An OpenAI function tool as an Anthropic client tool.
fn openai_tool_to_anthropic(tool: &Value, path: &str) -> Result<Value, TranslateError> {
    let tool = read_function_tool(tool, path)?;
    let mut out = Map::new();
    out.insert("name".to_owned(), json!(tool.name));
    if let Some(d) = tool.description {
        out.insert("description".to_owned(), d.clone());
    }
    let schema = tool
        .parameters
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    out.insert("input_schema".to_owned(), schema);
    Ok(Value::Object(out))
}

/// An OpenAI `tool_choice` as Anthropic's.
fn openai_tool_choice_to_anthropic(choice: &Value) -> Result<Value, TranslateError> {
    let unsupported = |value: &str| TranslateError::Unsupported {
        path: "tool_choice".to_owned(),
        what: "tool choice",
        value: value.to_owned(),
    };
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            other => Err(unsupported(other)),
        },
        Value::Object(_) => match required_str(choice, "type", "tool_choice")? {
            "function" => {
                let function = choice.get("function").unwrap_or(&Value::Null);
                let name = required_str(function, "name", "tool_choice.function")?;
                Ok(json!({"type": "tool", "name": name}))
            }
            other => Err(unsupported(other)),
        },
        _ => Err(TranslateError::WrongType {
            path: "tool_choice".to_owned(),
            expected: "a string or an object",
        }),
    }
}

// ---------------------------------------------------------------------------
// Stop reasons.

/// Anthropic `stop_reason` as OpenAI `finish_reason`.
fn anthropic_stop_to_openai(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

/// An Anthropic message id for an OpenAI completion's id: Anthropic clients
/// and logs expect `msg_…`, so `chatcmpl-abc` becomes `msg_abc` (the same
/// call stays recognisable) and any other id is prefixed.
fn anthropic_message_id(openai_id: &str) -> String {
    match openai_id.strip_prefix("chatcmpl-") {
        Some(rest) => format!("msg_{rest}"),
        None if openai_id.starts_with("msg_") => openai_id.to_owned(),
        None if openai_id.is_empty() => "msg_gateway".to_owned(),
        None => format!("msg_{openai_id}"),
    }
}

/// OpenAI `finish_reason` as Anthropic `stop_reason`.
fn openai_stop_to_anthropic(reason: &str) -> &'static str {
    match reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        // stop and anything new.
        _ => "end_turn",
    }
}

// ---------------------------------------------------------------------------
// Responses.

/// Translates an Anthropic message into an OpenAI `chat.completion`.
///
/// Text blocks are concatenated into `content` (null when there is no text and there
/// are tool calls); `tool_use` blocks become `tool_calls` with the input serialized as
/// `arguments`; thinking blocks are dropped. `stop_reason` maps end_turn/stop_sequence
/// to "stop", max_tokens to "length", tool_use to "tool_calls", refusal to
/// "content_filter". Usage as in [`Usage::from_anthropic`]. Other blocks (thinking,
/// server tool use and results) are dropped.
pub fn anthropic_response_to_openai(response: &Value, created_unix: u64) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in response["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {
                    "name": block["name"],
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            _ => {}
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
    let finish_reason = response["stop_reason"]
        .as_str()
        .map_or(Value::Null, |reason| {
            json!(anthropic_stop_to_openai(reason))
        });
    json!({
        "id": response["id"],
        "object": "chat.completion",
        "created": created_unix,
        "model": response["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": Usage::from_anthropic(&response["usage"]).unwrap_or_default().to_openai(),
    })
}

/// Translates an OpenAI `chat.completion` (its first choice) into an Anthropic message.
///
/// `content` (a string, or text parts; `refusal` when there is no content) becomes one
/// text block; `tool_calls` become `tool_use` blocks, with arguments that are not a
/// JSON object (a model cut off by `max_tokens` can leave them unfinished) as `{}`.
/// `finish_reason` maps stop to end_turn, length to max_tokens, tool_calls to tool_use,
/// content_filter to refusal; `stop_sequence` is null, as OpenAI does not say which
/// one matched. Usage as in [`Usage::to_anthropic`].
pub fn openai_response_to_anthropic(response: &Value) -> Value {
    let choice = &response["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    let mut text = match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    };
    if text.is_empty() {
        text = message["refusal"].as_str().unwrap_or_default().to_owned();
    }
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let input =
            parse_arguments(call["function"].get("arguments"), "").unwrap_or_else(|_| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": call["function"]["name"],
            "input": input,
        }));
    }
    let stop_reason = choice["finish_reason"]
        .as_str()
        .map_or(Value::Null, |reason| {
            json!(openai_stop_to_anthropic(reason))
        });
    json!({
        "id": anthropic_message_id(response["id"].as_str().unwrap_or("")),
        "type": "message",
        "role": "assistant",
        "model": response["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": Usage::from_openai(&response["usage"]).unwrap_or_default().to_anthropic(),
    })
}

/// Mutable access to the text of every choice of a non-streaming OpenAI response
/// (`choices[*].message.content` when it is a string), for rewriting in place.
pub fn response_text_mut(response: &mut Value) -> impl Iterator<Item = &mut String> {
    response
        .get_mut("choices")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|choice| match choice.pointer_mut("/message/content") {
            Some(Value::String(text)) => Some(text),
            _ => None,
        })
}

/// Mutable access to the text delta of a streamed chunk (`choices[0].delta.content`
/// when it is a string), for rewriting in place.
pub fn chunk_text_mut(chunk: &mut Value) -> Option<&mut String> {
    // Step by step rather than `pointer_mut`, which allocates for every segment
    // (this runs on every chunk); a `0` step reads an object's "0" as a pointer does.
    let choice = match chunk.get_mut("choices")? {
        Value::Array(choices) => choices.first_mut()?,
        Value::Object(choices) => choices.get_mut("0")?,
        _ => return None,
    };
    match choice.get_mut("delta")?.get_mut("content")? {
        Value::String(text) => Some(text),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// The message of a provider's error body: `error.message` (OpenAI, Anthropic and
/// Google Gemini's `{"error": {"code", "message", "status"}}`), `error` as a string,
/// or a top-level `message` / `Message` (Amazon Bedrock, other OpenAI-compatible servers).
pub fn provider_error_message(body: &Value) -> Option<String> {
    [
        body.pointer("/error/message"),
        body.get("error"),
        body.get("message"),
        body.get("Message"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str)
    .map(str::to_owned)
}

// ---------------------------------------------------------------------------
// Usage.

/// Token usage of one completion, in OpenAI's terms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cached or not (Anthropic: input + cache read + cache creation).
    pub prompt: u64,
    /// Output tokens, reasoning included.
    pub completion: u64,
    /// Input tokens read from the provider's prompt cache (part of `prompt`).
    pub cached: u64,
    /// Output tokens spent on reasoning (part of `completion`; OpenAI only).
    pub reasoning: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object; `None` unless it is an object with
    /// `prompt_tokens` or `completion_tokens`.
    pub fn from_openai(usage: &Value) -> Option<Usage> {
        if usage.get("prompt_tokens").is_none() && usage.get("completion_tokens").is_none() {
            return None;
        }
        let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let detail = |object: &str, field: &str| usage.get(object).and_then(|d| d.get(field));
        Some(Usage {
            prompt: count(usage.get("prompt_tokens")),
            completion: count(usage.get("completion_tokens")),
            cached: count(detail("prompt_tokens_details", "cached_tokens")),
            reasoning: count(detail("completion_tokens_details", "reasoning_tokens")),
        })
    }

    /// Reads an Anthropic `usage` object; `None` unless it is an object with
    /// `input_tokens` or `output_tokens`. Cache reads and writes count as prompt.
    pub fn from_anthropic(usage: &Value) -> Option<Usage> {
        if usage.get("input_tokens").is_none() && usage.get("output_tokens").is_none() {
            return None;
        }
        let mut counts = AnthropicUsage::default();
        counts.merge(usage);
        Some(counts.usage())
    }

    /// As an OpenAI `usage` object.
    pub fn to_openai(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }

    /// As an Anthropic `usage` object: `input_tokens` excludes the cached tokens, which
    /// are `cache_read_input_tokens` (OpenAI does not report cache writes).
    pub fn to_anthropic(&self) -> Value {
        json!({
            "input_tokens": self.prompt.saturating_sub(self.cached),
            "output_tokens": self.completion,
            "cache_read_input_tokens": self.cached,
        })
    }
}

/// Anthropic's usage counters, which a stream reports in pieces.
#[derive(Debug, Default, Clone, Copy)]
struct AnthropicUsage {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl AnthropicUsage {
    /// Overwrites the counters present in `usage` (stream counts are cumulative).
    fn merge(&mut self, usage: &Value) {
        for (key, counter) in [
            ("input_tokens", &mut self.input),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("output_tokens", &mut self.output),
        ] {
            if let Some(count) = usage.get(key).and_then(Value::as_u64) {
                *counter = count;
            }
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt: self.input + self.cache_creation + self.cache_read,
            completion: self.output,
            cached: self.cache_read,
            reasoning: 0,
        }
    }
}

/// The usage of a streamed OpenAI chunk, if it carries one (`usage` is null on the
/// other chunks of a stream with `include_usage`).
pub fn openai_chunk_usage(chunk: &Value) -> Option<Usage> {
    chunk.get("usage").and_then(Usage::from_openai)
}

/// Whether a chunk is the usage-only chunk OpenAI sends last with `include_usage`
/// (empty `choices`, a `usage` object).
pub fn is_usage_only_chunk(chunk: &Value) -> bool {
    chunk["choices"].as_array().is_some_and(Vec::is_empty) && chunk["usage"].is_object()
}

// ---------------------------------------------------------------------------
// Streams: Anthropic events -> OpenAI chunks.

/// Translates an Anthropic Messages event stream into OpenAI `chat.completion.chunk`s,
/// one event at a time.
///
/// - `message_start`: the first chunk, delta `{"role": "assistant", "content": ""}`.
/// - `content_block_start`: for `tool_use`, a chunk opening the tool call (`index`
///   counts tool calls, not blocks; `arguments` ""); for text, nothing.
/// - `content_block_delta`: `text_delta` as `delta.content`, `input_json_delta` as
///   the tool call's `function.arguments`; thinking and citation deltas are dropped.
/// - `message_delta`: a chunk with an empty delta and the mapped `finish_reason`.
/// - `message_stop`: a usage-only chunk (`choices: []`, `usage`), as OpenAI sends with
///   `stream_options.include_usage`; the gateway forwards it only if the client asked.
/// - `ping`, `content_block_stop` and unknown events: nothing.
/// - `error`: `Err(TranslateError::ProviderError)`; the gateway should send the client
///   an error in its format and end the stream.
#[derive(Debug)]
pub struct AnthropicStreamToOpenAi {
    id: String,
    model: String,
    created: u64,
    /// Anthropic block index -> OpenAI tool call index.
    tool_indices: HashMap<u64, usize>,
    usage: Option<AnthropicUsage>,
    finished: bool,
}

impl AnthropicStreamToOpenAi {
    /// A translator whose chunks carry `created`, and `id_fallback` as the id until
    /// `message_start` gives the message's id.
    pub fn new(id_fallback: &str, created: u64) -> Self {
        AnthropicStreamToOpenAi {
            id: id_fallback.to_owned(),
            model: String::new(),
            created,
            tool_indices: HashMap::new(),
            usage: None,
            finished: false,
        }
    }

    /// Translates one SSE event into zero or more chunks.
    pub fn push(&mut self, event: &SseEvent) -> Result<Vec<Value>, TranslateError> {
        let name = event.event.as_deref().unwrap_or("message");
        let malformed = |reason: String| TranslateError::MalformedEvent {
            event: name.to_owned(),
            reason,
        };
        let data: Value =
            serde_json::from_str(&event.data).map_err(|error| malformed(error.to_string()))?;
        let block_index = || {
            data["index"]
                .as_u64()
                .ok_or_else(|| malformed("no block index".to_owned()))
        };
        let chunks = match data["type"].as_str().unwrap_or(name) {
            "message_start" => {
                let message = &data["message"];
                if let Some(id) = message["id"].as_str() {
                    self.id = id.to_owned();
                }
                if let Some(model) = message["model"].as_str() {
                    self.model = model.to_owned();
                }
                let mut usage = AnthropicUsage::default();
                usage.merge(&message["usage"]);
                self.usage = Some(usage);
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "content_block_start" => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let tool_index = self.tool_indices.len();
                        self.tool_indices.insert(block_index()?, tool_index);
                        let delta = json!({"tool_calls": [{
                            "index": tool_index,
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        }]});
                        vec![self.chunk(delta, None)]
                    }
                    Some("text") => self.text_chunk(block["text"].as_str()),
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => self.text_chunk(delta["text"].as_str()),
                    Some("input_json_delta") => {
                        let partial = delta["partial_json"].as_str().unwrap_or_default();
                        let index = block_index()?;
                        let tool_index = *self.tool_indices.get(&index).ok_or_else(|| {
                            malformed(format!("block {index} is not a tool_use block"))
                        })?;
                        if partial.is_empty() {
                            Vec::new()
                        } else {
                            let delta = json!({"tool_calls": [{
                                "index": tool_index,
                                "function": {"arguments": partial},
                            }]});
                            vec![self.chunk(delta, None)]
                        }
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    self.usage
                        .get_or_insert_with(AnthropicUsage::default)
                        .merge(usage);
                }
                let finish = data["delta"]["stop_reason"]
                    .as_str()
                    .map(anthropic_stop_to_openai);
                vec![self.chunk(json!({}), finish)]
            }
            "message_stop" => {
                self.finished = true;
                let usage = self.usage().unwrap_or_default();
                vec![json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage.to_openai(),
                })]
            }
            "error" => {
                return Err(TranslateError::ProviderError {
                    kind: data["error"]["type"]
                        .as_str()
                        .unwrap_or("api_error")
                        .to_owned(),
                    message: data["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                })
            }
            _ => Vec::new(),
        };
        Ok(chunks)
    }

    /// Usage so far: known from `message_start` on, final after `message_delta`.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().map(AnthropicUsage::usage)
    }

    /// Whether `message_stop` was seen: the stream ended normally.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn text_chunk(&self, text: Option<&str>) -> Vec<Value> {
        match text {
            Some(text) if !text.is_empty() => vec![self.chunk(json!({"content": text}), None)],
            _ => Vec::new(),
        }
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

// ---------------------------------------------------------------------------
// Streams: OpenAI chunks -> Anthropic events.

/// The content block an [`OpenAiStreamToAnthropic`] has open.
#[derive(Debug, Clone, Copy)]
enum OpenBlock {
    Text { index: u64 },
    Tool { index: u64, tool_index: u64 },
}

/// Translates an OpenAI `chat.completion.chunk` stream into Anthropic Messages events,
/// returned as (event name, data) pairs for [`crate::sse::write_event`].
///
/// The first chunk opens the message (`message_start`, input tokens 0 unless the chunk
/// carries usage). Text deltas and tool call deltas open, fill and close content blocks
/// (`text` with `text_delta`; `tool_use` with `input_json_delta`); a change of kind or
/// of tool call index closes the open block. A `finish_reason` closes the open block
/// but `message_delta` waits for the usage, which OpenAI sends in a later chunk with
/// empty `choices` (some servers put it on the finish chunk itself): `message_delta`
/// (stop reason and final usage) and `message_stop` go out with the first usage on or
/// after the finish chunk, or at [`finish`](Self::finish). Choices other than index 0
/// are ignored.
///
/// Limitation: Anthropic blocks cannot be reopened, so a provider that interleaves
/// deltas of several tool calls gets each return to an earlier call as a new block.
#[derive(Debug)]
pub struct OpenAiStreamToAnthropic {
    model: String,
    started: bool,
    open: Option<OpenBlock>,
    next_block: u64,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
    stopped: bool,
}

impl OpenAiStreamToAnthropic {
    /// A translator whose messages report `model` (the model the client asked for).
    pub fn new(model: &str) -> Self {
        OpenAiStreamToAnthropic {
            model: model.to_owned(),
            started: false,
            open: None,
            next_block: 0,
            stop_reason: None,
            usage: None,
            stopped: false,
        }
    }

    /// Translates one chunk (the parsed `data:` of an event other than `[DONE]`).
    /// Chunks after `message_stop` are ignored.
    pub fn push(&mut self, chunk: &Value) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        if self.stopped {
            return events;
        }
        let chunk_usage = openai_chunk_usage(chunk);
        if chunk_usage.is_some() {
            self.usage = chunk_usage;
        }
        if !self.started {
            self.start(chunk["id"].as_str(), &mut events);
        }
        let choice = chunk["choices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|choice| choice["index"].as_u64().unwrap_or(0) == 0);
        if let Some(choice) = choice {
            let delta = &choice["delta"];
            for key in ["content", "refusal"] {
                if let Some(text) = delta[key].as_str().filter(|text| !text.is_empty()) {
                    self.text(text, &mut events);
                }
            }
            for (position, call) in delta["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                self.tool_call(call, position as u64, &mut events);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.close_block(&mut events);
                self.stop_reason = Some(openai_stop_to_anthropic(reason));
            }
        }
        // Usage seen before the finish_reason may be partial; only usage on the finish
        // chunk or after it is final.
        if self.stop_reason.is_some() && chunk_usage.is_some() {
            self.stop(&mut events);
        }
        events
    }

    /// Ends the message at the end of the stream (`[DONE]` or end of body): opens it if
    /// no chunk came, closes the open block, and sends `message_delta` (stop reason
    /// "end_turn" if none came; `usage` if given, else the last seen) and
    /// `message_stop`, unless they already went out.
    pub fn finish(&mut self, usage: Option<Usage>) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        if self.stopped {
            return events;
        }
        if usage.is_some() {
            self.usage = usage;
        }
        if !self.started {
            self.start(None, &mut events);
        }
        self.stop(&mut events);
        events
    }

    /// Usage as last reported by the stream (or given to [`finish`](Self::finish)).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `message_stop` went out.
    pub fn finished(&self) -> bool {
        self.stopped
    }

    fn start(&mut self, id: Option<&str>, events: &mut Vec<(String, Value)>) {
        self.started = true;
        let input_tokens = self.usage.map_or(0, |u| u.prompt.saturating_sub(u.cached));
        let cached = self.usage.map_or(0, |u| u.cached);
        events.push((
            "message_start".to_owned(),
            json!({
                "type": "message_start",
                "message": {
                    "id": anthropic_message_id(id.unwrap_or("")),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": 0,
                        "cache_read_input_tokens": cached,
                    },
                },
            }),
        ));
    }

    fn text(&mut self, text: &str, events: &mut Vec<(String, Value)>) {
        let index = match self.open {
            Some(OpenBlock::Text { index }) => index,
            _ => {
                let index = self.open_block(json!({"type": "text", "text": ""}), events);
                self.open = Some(OpenBlock::Text { index });
                index
            }
        };
        events.push((
            "content_block_delta".to_owned(),
            json!({
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": text},
            }),
        ));
    }

    fn tool_call(&mut self, call: &Value, position: u64, events: &mut Vec<(String, Value)>) {
        let tool_index = call["index"].as_u64().unwrap_or(position);
        let function = &call["function"];
        let index = match self.open {
            Some(OpenBlock::Tool {
                index,
                tool_index: open,
            }) if open == tool_index => index,
            _ => {
                let id = call["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{tool_index}"), str::to_owned);
                let block = json!({
                    "type": "tool_use",
                    "id": id,
                    "name": function["name"].as_str().unwrap_or_default(),
                    "input": {},
                });
                let index = self.open_block(block, events);
                self.open = Some(OpenBlock::Tool { index, tool_index });
                index
            }
        };
        if let Some(arguments) = function["arguments"].as_str().filter(|a| !a.is_empty()) {
            events.push((
                "content_block_delta".to_owned(),
                json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }),
            ));
        }
    }

    /// Closes the open block and opens `block`; returns its index.
    fn open_block(&mut self, block: Value, events: &mut Vec<(String, Value)>) -> u64 {
        self.close_block(events);
        let index = self.next_block;
        self.next_block += 1;
        events.push((
            "content_block_start".to_owned(),
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn close_block(&mut self, events: &mut Vec<(String, Value)>) {
        if let Some(OpenBlock::Text { index } | OpenBlock::Tool { index, .. }) = self.open.take() {
            events.push((
                "content_block_stop".to_owned(),
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn stop(&mut self, events: &mut Vec<(String, Value)>) {
        self.close_block(events);
        self.stopped = true;
        events.push((
            "message_delta".to_owned(),
            json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": self.stop_reason.unwrap_or("end_turn"),
                    "stop_sequence": null,
                },
                "usage": self.usage.unwrap_or_default().to_anthropic(),
            }),
        ));
        events.push(("message_stop".to_owned(), json!({"type": "message_stop"})));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // -- Requests ----------------------------------------------------------

    fn anthropic_request() -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [
                {"type": "text", "text": "You are terse."},
                {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}},
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather in Paris?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "need weather", "signature": "sig"},
                    {"type": "text", "text": "A cat. Checking the weather."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C, cloudy"},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": [
                        {"type": "text", "text": "14:02"},
                        {"type": "text", "text": "CEST"},
                    ], "is_error": false},
                    {"type": "text", "text": "Thanks!"},
                ]},
            ],
            "tools": [{
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": {"user_id": "user-42"},
        })
    }

    #[test]
    fn anthropic_request_becomes_openai_request() {
        let openai = anthropic_request_to_openai(&anthropic_request()).unwrap();
        assert_eq!(
            openai,
            json!({
                "model": "claude-sonnet-4-5",
                "messages": [
                    {"role": "system", "content": "You are terse.\n\nAnswer in English."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this image, and the weather in Paris?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    ]},
                    {"role": "assistant", "content": "A cat. Checking the weather.", "tool_calls": [
                        {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_01", "content": "18C, cloudy"},
                    {"role": "tool", "tool_call_id": "toolu_02", "content": "14:02\nCEST"},
                    {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]},
                ],
                "max_tokens": 1024,
                "temperature": 0.2,
                "top_p": 0.9,
                "stop": ["END"],
                "stream": true,
                "stream_options": {"include_usage": true},
                "user": "user-42",
                "tools": [{"type": "function", "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                }}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
            })
        );
    }

    #[test]
    fn anthropic_tool_choices_map_to_openai() {
        for (anthropic, openai) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "any"}), json!("required")),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "get_weather"}),
                json!({"type": "function", "function": {"name": "get_weather"}}),
            ),
        ] {
            let request =
                json!({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": anthropic});
            let translated = anthropic_request_to_openai(&request).unwrap();
            assert_eq!(translated["tool_choice"], openai);
            assert_eq!(translated.get("parallel_tool_calls"), None);
            assert_eq!(
                openai_request_to_anthropic(&translated, 1).unwrap()["tool_choice"],
                request["tool_choice"],
                "and back"
            );
        }
    }

    #[test]
    fn anthropic_request_round_trips_through_openai() {
        // What survives a trip is everything but the documented losses: thinking
        // blocks, top_k, cache_control, is_error, and the system block boundaries
        // (joined into one string).
        let original = anthropic_request();
        let back = openai_request_to_anthropic(&anthropic_request_to_openai(&original).unwrap(), 1)
            .unwrap();

        let mut expected = original.clone();
        expected["system"] = json!("You are terse.\n\nAnswer in English.");
        expected.as_object_mut().unwrap().remove("top_k");
        expected["messages"][1]["content"]
            .as_array_mut()
            .unwrap()
            .remove(0);
        expected["messages"][2]["content"][1] = json!({
            "type": "tool_result", "tool_use_id": "toolu_02", "content": "14:02\nCEST",
        });
        assert_eq!(back, expected);
    }

    fn openai_request() -> Value {
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric"}, {"type": "text", "text": "units."}]},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "user", "content": [
                    {"type": "text", "text": "Also this:"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
                    {"id": "call_3", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "25C"}]},
                {"role": "tool", "tool_call_id": "call_3", "content": "12:00"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "And tomorrow?", "name": "ann"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "get_time"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "max_tokens": 100,
            "max_completion_tokens": 200,
            "stop": "STOP",
            "stream": false,
            "n": 1,
            "user": "u1",
            "response_format": {"type": "json_object"},
            "seed": 7,
        })
    }

    #[test]
    fn openai_request_becomes_anthropic_request() {
        let anthropic = openai_request_to_anthropic(&openai_request(), 4096).unwrap();
        assert_eq!(
            anthropic,
            json!({
                "model": "gpt-4o",
                "system": "Be brief.\n\nUse metric\nunits.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather in Paris and Rome?"},
                        {"type": "text", "text": "Also this:"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                        {"type": "image", "source": {"type": "url", "url": "http://example.com/a.png"}},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                        {"type": "tool_use", "id": "call_3", "name": "get_time", "input": {}},
                    ]},
                    // The three tool results, then (the empty assistant turn dropped) the
                    // next user turn: one user message, results first.
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "25C"}]},
                        {"type": "tool_result", "tool_use_id": "call_3", "content": "12:00"},
                        {"type": "text", "text": "And tomorrow?"},
                    ]},
                ],
                "max_tokens": 200,
                "stop_sequences": ["STOP"],
                "stream": false,
                "metadata": {"user_id": "u1"},
                "tools": [
                    {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
                ],
                "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            })
        );
    }

    #[test]
    fn openai_request_defaults_and_stop_arrays() {
        let request = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}],
            "stop": ["a", "b"],
            "parallel_tool_calls": false,
            "temperature": 1.5,
        });
        let anthropic = openai_request_to_anthropic(&request, 4096).unwrap();
        assert_eq!(
            anthropic,
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}],
                "max_tokens": 4096,
                "temperature": 1.5,
                "stop_sequences": ["a", "b"],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            })
        );
        let request = json!({"model": "m", "messages": [], "max_tokens": 5, "tool_choice": "none", "parallel_tool_calls": false});
        let anthropic = openai_request_to_anthropic(&request, 4096).unwrap();
        assert_eq!(anthropic["max_tokens"], 5);
        assert_eq!(
            anthropic["tool_choice"],
            json!({"type": "none"}),
            "none takes no parallel flag"
        );
    }

    #[test]
    fn openai_request_round_trips_through_anthropic() {
        let original = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "assistant", "content": "18C in Paris."},
            ],
            "max_tokens": 100,
            "temperature": 0.5,
            "stop": ["END"],
            "stream": true,
            "user": "u1",
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
        });
        let back = anthropic_request_to_openai(&openai_request_to_anthropic(&original, 1).unwrap())
            .unwrap();
        let mut expected = original.clone();
        expected["stream_options"] = json!({"include_usage": true});
        assert_eq!(back, expected);
    }

    #[test]
    fn request_errors_name_the_path() {
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                r#"messages[2].content[0]: unsupported part type "input_audio""#,
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": "}}]}]}),
                "messages[0].tool_calls[0].function.arguments: tool call arguments are not a JSON object: EOF while parsing a value at line 1 column 6",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "messages[0].tool_calls[0].function.arguments: tool call arguments are not a JSON object: got [1]",
            ),
            (json!({"messages": [], "n": 2}), "n: only one choice per request is supported, got 2"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}),
                r#"messages[0].content[0].image_url.url: unsupported image URL scheme "file""#,
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}),
                r#"messages[0].content[0].image_url.url: unsupported data URL encoding (only base64) "image/png""#,
            ),
            (json!({"messages": [{"role": "function", "content": "x"}]}), r#"messages[0].role: unsupported role "function""#),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role: missing"),
            (json!({"model": "m"}), "messages: missing"),
            (json!({"messages": [], "stop": 3}), "stop: expected a string or an array of strings"),
            (
                json!({"messages": [], "tools": [{"type": "web_search", "web_search": {}}]}),
                r#"tools[0].type: unsupported tool type "web_search""#,
            ),
        ];
        for (request, message) in cases {
            let error = openai_request_to_anthropic(&request, 1).unwrap_err();
            assert_eq!(error.to_string(), message);
        }

        let cases = [
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                r#"messages[0].content[0]: unsupported block type "document""#,
            ),
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]}),
                r#"messages[0].content[0]: unsupported block type "tool_result""#,
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
                r#"messages[0].content[0].source.type: unsupported image source type "file""#,
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                    "content": [{"type": "image", "source": {}}]}]}]}),
                r#"messages[0].content[0].content[0]: unsupported block type "image""#,
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                r#"messages[0].role: unsupported role "system""#,
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content: missing",
            ),
            (
                json!({"messages": [], "tools": [{"type": "bash_20250124", "name": "bash"}]}),
                r#"tools[0].type: unsupported tool type "bash_20250124""#,
            ),
            (
                json!({"messages": [], "tools": [{"name": "f"}]}),
                "tools[0].input_schema: missing",
            ),
            (
                json!({"messages": [], "system": 5}),
                "system: expected a string or an array of text blocks",
            ),
            (json!([]), "request: expected a JSON object"),
        ];
        for (request, message) in cases {
            let error = anthropic_request_to_openai(&request).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
    }

    // -- Responses ---------------------------------------------------------

    fn anthropic_tool_response() -> Value {
        json!({
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "text", "text": "Let me check "},
                {"type": "text", "text": "the weather."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300, "output_tokens": 42},
        })
    }

    #[test]
    fn anthropic_response_becomes_chat_completion() {
        assert_eq!(
            anthropic_response_to_openai(&anthropic_tool_response(), 1_700_000_000),
            json!({
                "id": "msg_01",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "claude-sonnet-4-5",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Let me check the weather.",
                        "tool_calls": [{"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
                    },
                    "logprobs": null,
                    "finish_reason": "tool_calls",
                }],
                "usage": {
                    "prompt_tokens": 420,
                    "completion_tokens": 42,
                    "total_tokens": 462,
                    "prompt_tokens_details": {"cached_tokens": 300},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
            })
        );
        let tool_only = json!({"id": "m", "model": "c", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}], "stop_reason": "tool_use", "usage": {}});
        assert_eq!(
            anthropic_response_to_openai(&tool_only, 0)["choices"][0]["message"]["content"],
            Value::Null
        );
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for (anthropic, openai, back) in [
            ("end_turn", "stop", "end_turn"),
            ("stop_sequence", "stop", "end_turn"),
            ("max_tokens", "length", "max_tokens"),
            ("tool_use", "tool_calls", "tool_use"),
            ("refusal", "content_filter", "refusal"),
            ("pause_turn", "stop", "end_turn"),
        ] {
            let response = json!({"id": "m", "model": "c", "content": [{"type": "text", "text": "x"}], "stop_reason": anthropic});
            let translated = anthropic_response_to_openai(&response, 0);
            assert_eq!(
                translated["choices"][0]["finish_reason"], openai,
                "{anthropic}"
            );
            assert_eq!(
                openai_response_to_anthropic(&translated)["stop_reason"],
                back,
                "{openai}"
            );
        }
    }

    #[test]
    fn chat_completion_becomes_anthropic_message() {
        let completion = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "refusal": null,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Ro"}},
                    ],
                },
                "logprobs": null,
                "finish_reason": "tool_calls",
            }],
            "usage": {
                "prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        });
        assert_eq!(
            openai_response_to_anthropic(&completion),
            json!({
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4o",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 176, "output_tokens": 80, "cache_read_input_tokens": 1024},
            })
        );
        let refusal = json!({"id": "c", "model": "m", "choices": [{"index": 0, "message": {
            "role": "assistant", "content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}]});
        assert_eq!(
            openai_response_to_anthropic(&refusal)["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
    }

    #[test]
    fn text_accessors_rewrite_in_place() {
        let mut completion = json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "call 555-0100"}},
            {"index": 1, "message": {"role": "assistant", "content": null}},
            {"index": 2, "message": {"role": "assistant", "content": "again 555-0100"}},
        ]});
        for text in response_text_mut(&mut completion) {
            *text = text.replace("555-0100", "[PHONE]");
        }
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            "call [PHONE]"
        );
        assert_eq!(completion["choices"][1]["message"]["content"], Value::Null);
        assert_eq!(
            completion["choices"][2]["message"]["content"],
            "again [PHONE]"
        );
        assert_eq!(response_text_mut(&mut json!({"error": {}})).count(), 0);

        let mut chunk =
            json!({"choices": [{"index": 0, "delta": {"content": "555"}, "finish_reason": null}]});
        chunk_text_mut(&mut chunk).unwrap().push_str("-0100");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "555-0100");
        assert!(chunk_text_mut(&mut json!({"choices": [], "usage": {}})).is_none());
        assert!(
            chunk_text_mut(&mut json!({"choices": [{"delta": {"role": "assistant"}}]})).is_none()
        );
    }

    // -- Errors and usage --------------------------------------------------

    #[test]
    fn provider_error_messages_are_read_from_any_format() {
        let openai = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
        let anthropic = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert_eq!(
            provider_error_message(&openai).as_deref(),
            Some("Incorrect API key provided")
        );
        assert_eq!(
            provider_error_message(&anthropic).as_deref(),
            Some("Overloaded")
        );
        assert_eq!(
            provider_error_message(&json!({"error": "model not loaded"})).as_deref(),
            Some("model not loaded")
        );
        assert_eq!(
            provider_error_message(&json!({"message": "Bad gateway"})).as_deref(),
            Some("Bad gateway")
        );
        let gemini = json!({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}});
        assert_eq!(
            provider_error_message(&gemini).as_deref(),
            Some("API key not valid.")
        );
        assert_eq!(
            provider_error_message(&json!({"Message": "User is not authorized"})).as_deref(),
            Some("User is not authorized")
        );
        assert_eq!(provider_error_message(&json!({"detail": 1})), None);
        assert_eq!(provider_error_message(&json!("text")), None);
    }

    #[test]
    fn usage_is_read_and_written_in_both_formats() {
        let openai = json!({
            "prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 256},
        });
        let usage = Usage::from_openai(&openai).unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt: 1200,
                completion: 300,
                cached: 1024,
                reasoning: 256
            }
        );
        assert_eq!(usage.to_openai(), openai);
        assert_eq!(
            usage.to_anthropic(),
            json!({"input_tokens": 176, "output_tokens": 300, "cache_read_input_tokens": 1024})
        );
        assert_eq!(
            Usage::from_openai(&json!({"prompt_tokens": 3, "completion_tokens": 4})),
            Some(Usage {
                prompt: 3,
                completion: 4,
                cached: 0,
                reasoning: 0
            })
        );
        assert_eq!(Usage::from_openai(&Value::Null), None);
        assert_eq!(Usage::from_openai(&json!({})), None);

        let anthropic = json!({"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 7});
        assert_eq!(
            Usage::from_anthropic(&anthropic),
            Some(Usage {
                prompt: 115,
                completion: 7,
                cached: 100,
                reasoning: 0
            })
        );
        assert_eq!(
            Usage::from_anthropic(&json!({"output_tokens": 7})).map(|u| (u.prompt, u.completion)),
            Some((0, 7))
        );
        assert_eq!(Usage::from_anthropic(&json!({"foo": 1})), None);
    }

    #[test]
    fn usage_chunks_are_recognised() {
        let usage_chunk = json!({"id": "c", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}});
        let content_chunk = json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}], "usage": null});
        assert!(is_usage_only_chunk(&usage_chunk));
        assert!(!is_usage_only_chunk(&content_chunk));
        assert!(!is_usage_only_chunk(&json!({"choices": []})));
        assert_eq!(openai_chunk_usage(&usage_chunk).map(|u| u.prompt), Some(9));
        assert_eq!(openai_chunk_usage(&content_chunk), None);
    }

    // -- Streams -----------------------------------------------------------

    fn sse(event: &str, data: Value) -> SseEvent {
        SseEvent {
            event: Some(event.to_owned()),
            data: data.to_string(),
        }
    }

    /// The documented Anthropic stream for a text answer, with a ping and cache usage.
    fn anthropic_text_stream() -> Vec<SseEvent> {
        vec![
            sse(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant",
                "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10, "output_tokens": 1}}}),
            ),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            sse("ping", json!({"type": "ping"})),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            sse(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
            ),
            sse("message_stop", json!({"type": "message_stop"})),
        ]
    }

    /// The documented Anthropic stream for a tool call: thinking, text, then tool_use
    /// with its input in `input_json_delta` pieces.
    fn anthropic_tool_stream() -> Vec<SseEvent> {
        vec![
            sse(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "stop_sequence": null, "usage": {"input_tokens": 472, "output_tokens": 2}, "content": [], "stop_reason": null}}),
            ),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "The user wants weather."}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Okay, let's check"}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": " \"San Francisco, CA\"}"}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 2}),
            ),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 3}),
            ),
            sse(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
            ),
            sse("message_stop", json!({"type": "message_stop"})),
        ]
    }

    fn translate_anthropic_stream(events: &[SseEvent]) -> (Vec<Value>, AnthropicStreamToOpenAi) {
        let mut translator = AnthropicStreamToOpenAi::new("fallback", 1_700_000_000);
        let chunks = events
            .iter()
            .flat_map(|e| translator.push(e).unwrap())
            .collect();
        (chunks, translator)
    }

    #[test]
    fn anthropic_text_stream_becomes_chunks() {
        let (chunks, translator) = translate_anthropic_stream(&anthropic_text_stream());
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": "claude-sonnet-4-5",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        assert_eq!(
            chunks,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Hello"}), Value::Null),
                chunk(json!({"content": "!"}), Value::Null),
                chunk(json!({}), json!("stop")),
                json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "claude-sonnet-4-5", "choices": [],
                    "usage": {"prompt_tokens": 35, "completion_tokens": 15, "total_tokens": 50,
                        "prompt_tokens_details": {"cached_tokens": 10},
                        "completion_tokens_details": {"reasoning_tokens": 0}}}),
            ]
        );
        assert!(translator.finished());
        assert_eq!(
            translator.usage(),
            Some(Usage {
                prompt: 35,
                completion: 15,
                cached: 10,
                reasoning: 0
            })
        );
        assert!(is_usage_only_chunk(chunks.last().unwrap()));
    }

    #[test]
    fn anthropic_tool_stream_becomes_tool_call_chunks() {
        let (chunks, _) = translate_anthropic_stream(&anthropic_tool_stream());
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(
            deltas,
            vec![
                &json!({"role": "assistant", "content": ""}),
                &json!({"content": "Okay, let's check"}),
                &json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
                &json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisco, CA\"}"}}]}),
                &json!({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function",
                    "function": {"name": "get_time", "arguments": ""}}]}),
                &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
                &json!({}),
                &Value::Null,
            ]
        );
        assert_eq!(chunks[7]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[8]["usage"]["prompt_tokens"], 472);
        assert_eq!(chunks[8]["usage"]["completion_tokens"], 89);
    }

    #[test]
    fn anthropic_stream_errors_and_oddities() {
        let mut translator = AnthropicStreamToOpenAi::new("chatcmpl-gw-1", 5);
        assert_eq!(translator.usage(), None);
        let overloaded = sse(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        );
        let error = translator.push(&overloaded).unwrap_err();
        assert_eq!(
            error,
            TranslateError::ProviderError {
                kind: "overloaded_error".into(),
                message: "Overloaded".into()
            }
        );
        assert_eq!(
            error.to_string(),
            "provider stream error (overloaded_error): Overloaded"
        );

        let garbage = SseEvent {
            event: Some("content_block_delta".into()),
            data: "{not json".into(),
        };
        assert!(
            matches!(translator.push(&garbage), Err(TranslateError::MalformedEvent { event, .. }) if event == "content_block_delta")
        );

        let stray = sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 4,
            "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        );
        assert_eq!(
            translator.push(&stray).unwrap_err().to_string(),
            r#"stream event "content_block_delta": block 4 is not a tool_use block"#
        );

        // Unknown events are skipped; an unnamed event is recognised by its type; the
        // fallback id is used until message_start.
        assert_eq!(
            translator
                .push(&sse("future_event", json!({"type": "future_event"})))
                .unwrap(),
            Vec::<Value>::new()
        );
        let unnamed = SseEvent {
            event: None,
            data: json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "hi"}})
            .to_string(),
        };
        let chunks = translator.push(&unnamed).unwrap();
        assert_eq!(chunks[0]["id"], "chatcmpl-gw-1");
        assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "hi");
        assert!(!translator.finished());
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1_694_268_190,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null})
    }

    fn usage_chunk() -> Value {
        json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1_694_268_190,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb", "choices": [],
            "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}})
    }

    /// OpenAI's documented text stream with `include_usage`: role chunk, content,
    /// finish_reason chunk, then the usage-only chunk (then `[DONE]`).
    fn openai_text_stream() -> Vec<Value> {
        vec![
            chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ),
            chunk(json!({"content": "Hello"}), Value::Null),
            chunk(json!({"content": " there"}), Value::Null),
            chunk(json!({}), json!("stop")),
            usage_chunk(),
        ]
    }

    /// OpenAI's documented parallel tool call stream, after some text.
    fn openai_tool_stream() -> Vec<Value> {
        vec![
            chunk(
                json!({"role": "assistant", "content": "Let me check."}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"Paris\"}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\": \"Rome\"}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            usage_chunk(),
        ]
    }

    fn translate_openai_stream(chunks: &[Value]) -> Vec<(String, Value)> {
        let mut translator = OpenAiStreamToAnthropic::new("gpt-4o-mini");
        let mut events: Vec<_> = chunks.iter().flat_map(|c| translator.push(c)).collect();
        events.extend(translator.finish(None));
        assert!(translator.finished());
        events
    }

    #[test]
    fn openai_text_stream_becomes_anthropic_events_with_final_usage() {
        let mut translator = OpenAiStreamToAnthropic::new("gpt-4o-mini");
        let stream = openai_text_stream();
        let mut per_chunk: Vec<Vec<(String, Value)>> =
            stream.iter().map(|c| translator.push(c)).collect();
        per_chunk.push(translator.finish(None));
        let names = |events: &Vec<(String, Value)>| {
            events.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            names(&per_chunk[0]),
            ["message_start"],
            "the empty role chunk opens no block"
        );
        assert_eq!(
            names(&per_chunk[1]),
            ["content_block_start", "content_block_delta"]
        );
        assert_eq!(names(&per_chunk[2]), ["content_block_delta"]);
        assert_eq!(
            names(&per_chunk[3]),
            ["content_block_stop"],
            "message_delta waits for usage"
        );
        assert_eq!(names(&per_chunk[4]), ["message_delta", "message_stop"]);
        assert!(
            per_chunk[5].is_empty(),
            "[DONE] after message_stop adds nothing"
        );

        let events: Vec<(String, Value)> = per_chunk.into_iter().flatten().collect();
        let data: Vec<&Value> = events.iter().map(|(_, data)| data).collect();
        assert_eq!(
            data,
            vec![
                &json!({"type": "message_start", "message": {"id": "msg_123", "type": "message", "role": "assistant",
                    "model": "gpt-4o-mini", "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0}}}),
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}}),
                &json!({"type": "content_block_stop", "index": 0}),
                &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"input_tokens": 86, "output_tokens": 300, "cache_read_input_tokens": 1920}}),
                &json!({"type": "message_stop"}),
            ]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str());
        }
        assert_eq!(translator.usage().map(|u| u.prompt), Some(2006));
    }

    #[test]
    fn openai_tool_stream_becomes_tool_use_blocks() {
        let events = translate_openai_stream(&openai_tool_stream());
        let data: Vec<&Value> = events.iter().map(|(_, data)| data).collect();
        assert_eq!(
            data[1..],
            [
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
                &json!({"type": "content_block_stop", "index": 0}),
                &json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
                    "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {}}}),
                &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
                &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"Paris\"}"}}),
                &json!({"type": "content_block_stop", "index": 1}),
                &json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use",
                    "id": "call_2", "name": "get_weather", "input": {}}}),
                &json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"location\": \"Rome\"}"}}),
                &json!({"type": "content_block_stop", "index": 2}),
                &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"input_tokens": 86, "output_tokens": 300, "cache_read_input_tokens": 1920}}),
                &json!({"type": "message_stop"}),
            ]
        );
    }

    #[test]
    fn openai_stream_without_usage_or_done_is_closed_by_finish() {
        // No include_usage: message_delta waits for [DONE], where the gateway may pass
        // its own estimate.
        let mut translator = OpenAiStreamToAnthropic::new("m");
        let mut events: Vec<_> = openai_text_stream()[..4]
            .iter()
            .flat_map(|c| translator.push(c))
            .collect();
        assert_eq!(events.last().unwrap().0, "content_block_stop");
        let estimate = Usage {
            prompt: 10,
            completion: 2,
            cached: 0,
            reasoning: 0,
        };
        events.extend(translator.finish(Some(estimate)));
        assert_eq!(
            events[events.len() - 2].1["usage"],
            json!({"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 0})
        );
        assert!(
            translator.push(&usage_chunk()).is_empty(),
            "ignored after message_stop"
        );

        // Cut off mid-block: finish closes the block and defaults the stop reason.
        let mut translator = OpenAiStreamToAnthropic::new("m");
        let mut events = translator.push(&chunk(json!({"content": "Hel"}), Value::Null));
        events.extend(translator.finish(None));
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[4].1["delta"]["stop_reason"], "end_turn");

        // Nothing at all still gives a well-formed message.
        let names: Vec<String> = OpenAiStreamToAnthropic::new("m")
            .finish(None)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
    }

    #[test]
    fn openai_usage_on_the_finish_chunk_ends_the_message_at_once() {
        // Some OpenAI-compatible servers put usage on the finish_reason chunk itself.
        let mut translator = OpenAiStreamToAnthropic::new("m");
        translator.push(&chunk(json!({"content": "Hi"}), Value::Null));
        let mut last = chunk(json!({}), json!("length"));
        last["usage"] = json!({"prompt_tokens": 5, "completion_tokens": 1});
        let events = translator.push(&last);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert_eq!(events[1].1["delta"]["stop_reason"], "max_tokens");
        assert!(translator.finish(None).is_empty());
    }

    #[test]
    fn openai_usage_before_the_finish_chunk_is_not_final() {
        // Servers with continuous usage stats report running totals on every chunk;
        // the message ends with the usage that follows the finish_reason.
        let mut translator = OpenAiStreamToAnthropic::new("m");
        let mut early = chunk(json!({"content": "Hi"}), Value::Null);
        early["usage"] = json!({"prompt_tokens": 5, "completion_tokens": 1});
        translator.push(&early);
        let events = translator.push(&chunk(json!({}), json!("stop")));
        assert_eq!(events.last().unwrap().0, "content_block_stop");
        let events = translator.push(&usage_chunk());
        assert_eq!(events[0].1["usage"]["output_tokens"], 300);
        assert!(translator.finished());

        // Without a later usage, [DONE] ends it with the last one seen.
        let mut translator = OpenAiStreamToAnthropic::new("m");
        translator.push(&early);
        translator.push(&chunk(json!({}), json!("stop")));
        let events = translator.finish(None);
        assert_eq!(events[0].1["usage"]["output_tokens"], 1);
    }

    // -- Streaming equals non-streaming --------------------------------------

    /// Assembles OpenAI chunks the way a client SDK does.
    fn assemble_openai(chunks: &[Value]) -> Value {
        let mut text = String::new();
        let mut tool_calls: Vec<Value> = Vec::new();
        let mut finish = Value::Null;
        let mut usage = Value::Null;
        for chunk in chunks {
            if chunk["usage"].is_object() {
                usage = chunk["usage"].clone();
            }
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let index = call["index"].as_u64().unwrap() as usize;
                if index == tool_calls.len() {
                    tool_calls.push(json!({"id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}));
                }
                let arguments = tool_calls[index]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_owned()
                    + call["function"]["arguments"].as_str().unwrap_or_default();
                tool_calls[index]["function"]["arguments"] = json!(arguments);
            }
            if !choice["finish_reason"].is_null() {
                finish = choice["finish_reason"].clone();
            }
        }
        let mut message = json!({"role": "assistant",
            "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }});
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        json!({"id": chunks[0]["id"], "object": "chat.completion", "created": chunks[0]["created"],
            "model": chunks[0]["model"],
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage})
    }

    /// Assembles Anthropic events the way a client SDK does.
    fn assemble_anthropic(events: &[(String, Value)]) -> Value {
        let mut message = Value::Null;
        let mut partial_json: HashMap<u64, String> = HashMap::new();
        for (_, event) in events {
            match event["type"].as_str().unwrap() {
                "message_start" => message = event["message"].clone(),
                "content_block_start" => message["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(event["content_block"].clone()),
                "content_block_delta" => {
                    let index = event["index"].as_u64().unwrap();
                    let delta = &event["delta"];
                    match delta["type"].as_str().unwrap() {
                        "text_delta" => {
                            let block = &mut message["content"][index as usize];
                            let text = block["text"].as_str().unwrap().to_owned()
                                + delta["text"].as_str().unwrap();
                            block["text"] = json!(text);
                        }
                        "input_json_delta" => partial_json
                            .entry(index)
                            .or_default()
                            .push_str(delta["partial_json"].as_str().unwrap()),
                        // thinking_delta, signature_delta: not compared here.
                        _ => {}
                    }
                }
                "content_block_stop" => {
                    let index = event["index"].as_u64().unwrap();
                    if let Some(json) = partial_json.remove(&index) {
                        message["content"][index as usize]["input"] =
                            serde_json::from_str(&json).unwrap();
                    }
                }
                "message_delta" => {
                    message["stop_reason"] = event["delta"]["stop_reason"].clone();
                    message["stop_sequence"] = event["delta"]["stop_sequence"].clone();
                    // Like the SDKs: the delta's counts update the start's.
                    for (key, count) in event["usage"].as_object().unwrap() {
                        message["usage"][key] = count.clone();
                    }
                }
                _ => {}
            }
        }
        message
    }

    /// A completion with its tool call arguments parsed.
    fn parsed_arguments(mut completion: Value) -> Value {
        let calls = completion["choices"][0]["message"]["tool_calls"].as_array_mut();
        for call in calls.into_iter().flatten() {
            let arguments = &mut call["function"]["arguments"];
            *arguments = serde_json::from_str(arguments.as_str().unwrap()).unwrap();
        }
        completion
    }

    fn anthropic_events(events: &[SseEvent]) -> Vec<(String, Value)> {
        events
            .iter()
            .map(|e| {
                (
                    e.event.clone().unwrap(),
                    serde_json::from_str(&e.data).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn streamed_anthropic_translation_equals_translated_message() {
        for stream in [anthropic_text_stream(), anthropic_tool_stream()] {
            let (chunks, _) = translate_anthropic_stream(&stream);
            let message = assemble_anthropic(&anthropic_events(&stream));
            // Streamed arguments keep the provider's spacing; compare them as JSON.
            assert_eq!(
                parsed_arguments(assemble_openai(&chunks)),
                parsed_arguments(anthropic_response_to_openai(&message, 1_700_000_000))
            );
        }
        // The assembled tool message is what the API would have returned whole.
        let message = assemble_anthropic(&anthropic_events(&anthropic_tool_stream()));
        assert_eq!(
            message["content"][2]["input"],
            json!({"location": "San Francisco, CA"})
        );
        assert_eq!(message["content"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn streamed_openai_translation_equals_translated_completion() {
        for stream in [openai_text_stream(), openai_tool_stream()] {
            let events = translate_openai_stream(&stream);
            assert_eq!(
                assemble_anthropic(&events),
                openai_response_to_anthropic(&assemble_openai(&stream))
            );
        }
    }

    #[test]
    fn streams_survive_a_round_trip_through_the_other_format() {
        // Anthropic events -> OpenAI chunks -> Anthropic events: same message, with the
        // documented losses (thinking dropped; cache writes counted as input).
        let stream = anthropic_tool_stream();
        let (chunks, _) = translate_anthropic_stream(&stream);
        let mut translator = OpenAiStreamToAnthropic::new("claude-sonnet-4-5");
        let mut events: Vec<_> = chunks.iter().flat_map(|c| translator.push(c)).collect();
        events.extend(translator.finish(None));
        let mut expected = assemble_anthropic(&anthropic_events(&stream));
        expected["content"].as_array_mut().unwrap().remove(0);
        expected["usage"] =
            json!({"input_tokens": 472, "output_tokens": 89, "cache_read_input_tokens": 0});
        assert_eq!(assemble_anthropic(&events), expected);
    }
}
