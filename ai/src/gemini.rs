//! Translation between OpenAI Chat Completions (the gateway's canonical format) and
//! Google Gemini's native `generateContent` API, for requests, responses, usage and
//! SSE streams (`:streamGenerateContent?alt=sse`).
//!
//! Depends only on `serde_json` and this crate's [`crate::translate`] (its
//! [`TranslateError`], [`Usage`] and path-naming field helpers) and [`crate::sse`].
//!
//! Key components:
//! 1. [`openai_request_to_gemini`]: the body of `POST {base}/models/{model}:generateContent`
//!    (the model and streaming are in the URL, so `model` and `stream` are not copied).
//! 2. [`gemini_response_to_openai`]: a `GenerateContentResponse` as a `chat.completion`.
//! 3. [`GeminiStreamToOpenAi`]: each SSE `data:` (one `GenerateContentResponse`) as
//!    `chat.completion.chunk`s.
//! 4. [`Usage::from_gemini`]: `usageMetadata` in OpenAI's terms.
//!
//! Gemini has no tool call ids: calls get `call_<id>_<n>` (the completion's id, then a
//! counter), and a `tool` message's `functionResponse` gets its function name from the
//! earlier assistant tool call with the same id.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::sse::SseEvent;
use crate::translate::{
    copy_field, ensure_object, field_path, optional_array, read_assistant, read_function_tool,
    read_image, read_user_content, required_array, required_str, text_content, ImageSource,
    TranslateError, Usage, UserContent, UserPart,
};

// ---------------------------------------------------------------------------
// Requests.

/// Translates an OpenAI Chat Completions request into a Gemini `generateContent` body.
///
/// - `system` / `developer` messages are joined with a blank line into
///   `systemInstruction`; `user` and `assistant` turns become `contents` with roles
///   `user` / `model`, consecutive turns of one role merged (Gemini wants alternation).
/// - User parts: `text`; `image_url` (a base64 `data:` URL as `inlineData`, an http(s)
///   URL as `fileData.fileUri`); `input_audio` as `inlineData` (`audio/<format>`).
/// - Assistant `tool_calls` become `functionCall` parts (arguments parsed; invalid JSON
///   is an error naming its path); `tool` messages become `functionResponse` parts of a
///   user turn, named after the earlier call with that id, with `response` the parsed
///   JSON object the tool returned or `{"content": <text>}`.
/// - `tools` become one `functionDeclarations` list; parameters are cleaned of the JSON
///   schema keywords Gemini rejects (see `clean_schema`); `tool_choice` none / auto /
///   required / a named function becomes `functionCallingConfig` NONE / AUTO / ANY /
///   ANY with `allowedFunctionNames`.
/// - `generationConfig`: `temperature`, `top_p`, `max_completion_tokens` (else
///   `max_tokens`), `stop`, `n`, `seed`, `presence_penalty`, `frequency_penalty`, and
///   `response_format` (`json_object` as `responseMimeType: application/json`,
///   `json_schema` also as a cleaned `responseSchema`).
///
/// Dropped, as Gemini has no equivalent or the URL carries it: `model`, `stream`,
/// `stream_options`, `parallel_tool_calls`, `logit_bias`, `logprobs`, `top_logprobs`,
/// `reasoning_effort`, `user`, message `name`s. Errors: unknown roles and part types,
/// a tool message whose id matches no earlier call, a `$ref` in a schema.
pub fn openai_request_to_gemini(request: &Value) -> Result<Value, TranslateError> {
    ensure_object(request)?;
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (index, message) in required_array(request, "messages", "")?.iter().enumerate() {
        let path = format!("messages[{index}]");
        let content_path = field_path(&path, "content");
        let (role, parts) = match required_str(message, "role", &path)? {
            "system" | "developer" => {
                let text = text_content(message.get("content"), &content_path, "\n")?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", user_parts(message.get("content"), &content_path)?),
            "assistant" => ("model", assistant_parts(message, &path, &mut call_names)?),
            "tool" => (
                "user",
                vec![tool_response_part(message, &path, &call_names)?],
            ),
            other => {
                return Err(TranslateError::Unsupported {
                    path: field_path(&path, "role"),
                    what: "role",
                    value: other.to_owned(),
                })
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut out = Map::new();
    if !system.is_empty() {
        out.insert(
            "systemInstruction".to_owned(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    let contents = contents
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    out.insert("contents".to_owned(), Value::Array(contents));

    if let Some(tools) = optional_array(request, "tools", "")? {
        let declarations = tools
            .iter()
            .enumerate()
            .map(|(index, tool)| function_declaration(tool, &format!("tools[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if !declarations.is_empty() {
            out.insert(
                "tools".to_owned(),
                json!([{"functionDeclarations": declarations}]),
            );
        }
    }
    if let Some(choice) = request.get("tool_choice").filter(|c| !c.is_null()) {
        out.insert(
            "toolConfig".to_owned(),
            json!({"functionCallingConfig": function_calling_config(choice)?}),
        );
    }
    let config = generation_config(request)?;
    if !config.is_empty() {
        out.insert("generationConfig".to_owned(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

/// A user message's content as Gemini parts.
fn user_parts(content: Option<&Value>, path: &str) -> Result<Vec<Value>, TranslateError> {
    let parts = match read_user_content(content, path)? {
        UserContent::Plain("") => return Ok(Vec::new()),
        UserContent::Plain(text) => return Ok(vec![json!({"text": text})]),
        UserContent::Parts(parts) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        out.push(match part {
            UserPart::Text(text) => json!({"text": text}),
            UserPart::Image(part, path) => image_part(part, &path)?,
            UserPart::Audio(part, path) => {
                let audio_path = field_path(&path, "input_audio");
                let audio = part.get("input_audio").unwrap_or(&Value::Null);
                let data = required_str(audio, "data", &audio_path)?;
                let format = required_str(audio, "format", &audio_path)?;
                json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}})
            }
        });
    }
    Ok(out)
}

/// An OpenAI `image_url` part as `inlineData` (data URL) or `fileData` (http URL).
fn image_part(part: &Value, path: &str) -> Result<Value, TranslateError> {
    let url = match read_image(part, path)?.0 {
        ImageSource::Base64 { media_type, data } => {
            return Ok(json!({"inlineData": {"mimeType": media_type, "data": data}}))
        }
        ImageSource::Url(url) => url,
    };
    let file_name = url.split(['?', '#']).next().unwrap_or(url);
    let extension = file_name.rsplit_once('.').map(|(_, ext)| ext);
    let mime_type = match extension.map(str::to_ascii_lowercase).as_deref() {
        Some("png") => Some("image/png"),
        Some("jpg" | "jpeg") => Some("image/jpeg"),
        Some("gif") => Some("image/gif"),
        Some("webp") => Some("image/webp"),
        _ => None,
    };
    let mut file = Map::new();
    if let Some(mime_type) = mime_type {
        file.insert("mimeType".to_owned(), json!(mime_type));
    }
    file.insert("fileUri".to_owned(), json!(url));
    Ok(json!({ "fileData": file }))
}

/// An assistant message's text and tool calls as `model` parts; records each call's
/// function name by its id for the `tool` messages that follow.
fn assistant_parts(
    message: &Value,
    path: &str,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, TranslateError> {
    let turn = read_assistant(message, path)?;
    let mut parts: Vec<Value> = turn
        .texts
        .iter()
        .map(|text| json!({"text": text}))
        .collect();
    for call in turn.calls {
        call_names.insert(call.id.to_owned(), call.name.to_owned());
        parts.push(json!({"functionCall": {"name": call.name, "args": call.input}}));
    }
    Ok(parts)
}

/// A `tool` message as a `functionResponse` part.
fn tool_response_part(
    message: &Value,
    path: &str,
    call_names: &HashMap<String, String>,
) -> Result<Value, TranslateError> {
    let id = required_str(message, "tool_call_id", path)?;
    let name = call_names
        .get(id)
        .ok_or_else(|| TranslateError::Unsupported {
            path: field_path(path, "tool_call_id"),
            what: "tool call id (no earlier assistant tool call has it)",
            value: id.to_owned(),
        })?;
    let text = text_content(message.get("content"), &field_path(path, "content"), "\n")?;
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// An OpenAI function tool as a Gemini function declaration.
fn function_declaration(tool: &Value, path: &str) -> Result<Value, TranslateError> {
    let tool = read_function_tool(tool, path)?;
    let mut out = Map::new();
    out.insert("name".to_owned(), json!(tool.name));
    if let Some(d) = tool.description {
        out.insert("description".to_owned(), d.clone());
    }
    if let Some(parameters) = tool.parameters {
        let parameters = clean_schema(parameters, &tool.parameters_path)?;
        // Gemini rejects an OBJECT without properties: a function without parameters
        // is declared without `parameters`.
        let empty_object = parameters["properties"]
            .as_object()
            .is_none_or(Map::is_empty)
            && parameters["type"] == "object";
        if !empty_object {
            out.insert("parameters".to_owned(), parameters);
        }
    }
    Ok(Value::Object(out))
}

/// The JSON schema keywords Gemini's `Schema` accepts, kept as they are.
const SCHEMA_KEYWORDS: &[&str] = &[
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "propertyOrdering",
    "default",
    "minimum",
    "maximum",
];

/// A JSON schema as Gemini's `Schema` (an OpenAPI subset): `properties`, `items` and
/// `anyOf` (also from `oneOf`) are cleaned recursively, a `["T", "null"]` type becomes
/// `T` with `nullable`, `const` becomes a one-value `enum`, the keywords in
/// `SCHEMA_KEYWORDS` are kept and the rest (`additionalProperties`, `$schema`,
/// `strict`, `$defs`, …) dropped. A `$ref` is an error: dropping it would change meaning.
fn clean_schema(schema: &Value, path: &str) -> Result<Value, TranslateError> {
    let Some(object) = schema.as_object() else {
        return Ok(schema.clone());
    };
    let mut out = Map::new();
    for (key, value) in object {
        let key_path = field_path(path, key);
        match key.as_str() {
            "$ref" => {
                return Err(TranslateError::Unsupported {
                    path: key_path,
                    what: "JSON schema reference",
                    value: value.as_str().unwrap_or_default().to_owned(),
                })
            }
            "type" => match value {
                Value::Array(types) => {
                    let non_null: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    match non_null.as_slice() {
                        [single] => {
                            out.insert("type".to_owned(), (*single).clone());
                        }
                        _ => {
                            return Err(TranslateError::Unsupported {
                                path: key_path,
                                what: "JSON schema type union",
                                value: value.to_string(),
                            })
                        }
                    }
                    if non_null.len() < types.len() {
                        out.insert("nullable".to_owned(), Value::Bool(true));
                    }
                }
                _ => {
                    out.insert("type".to_owned(), value.clone());
                }
            },
            "properties" => {
                let mut properties = Map::new();
                for (name, property) in value.as_object().into_iter().flatten() {
                    properties.insert(
                        name.clone(),
                        clean_schema(property, &field_path(&key_path, name))?,
                    );
                }
                out.insert("properties".to_owned(), Value::Object(properties));
            }
            "items" => {
                out.insert("items".to_owned(), clean_schema(value, &key_path)?);
            }
            "anyOf" | "oneOf" => {
                let variants = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(index, variant)| clean_schema(variant, &format!("{key_path}[{index}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert("anyOf".to_owned(), Value::Array(variants));
            }
            "const" => {
                out.insert("enum".to_owned(), json!([value]));
            }
            keyword if SCHEMA_KEYWORDS.contains(&keyword) => {
                out.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// An OpenAI `tool_choice` as Gemini's `functionCallingConfig`.
fn function_calling_config(choice: &Value) -> Result<Value, TranslateError> {
    let unsupported = |value: &str| TranslateError::Unsupported {
        path: "tool_choice".to_owned(),
        what: "tool choice",
        value: value.to_owned(),
    };
    match choice {
        Value::String(mode) => match mode.as_str() {
            "none" => Ok(json!({"mode": "NONE"})),
            "auto" => Ok(json!({"mode": "AUTO"})),
            "required" => Ok(json!({"mode": "ANY"})),
            other => Err(unsupported(other)),
        },
        Value::Object(_) => match required_str(choice, "type", "tool_choice")? {
            "function" => {
                let function = choice.get("function").unwrap_or(&Value::Null);
                let name = required_str(function, "name", "tool_choice.function")?;
                Ok(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
            }
            other => Err(unsupported(other)),
        },
        _ => Err(TranslateError::WrongType {
            path: "tool_choice".to_owned(),
            expected: "a string or an object",
        }),
    }
}

/// The request's sampling and output options as `generationConfig`.
fn generation_config(request: &Value) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    copy_field(request, "temperature", &mut config, "temperature");
    copy_field(request, "top_p", &mut config, "topP");
    copy_field(request, "seed", &mut config, "seed");
    copy_field(request, "presence_penalty", &mut config, "presencePenalty");
    copy_field(
        request,
        "frequency_penalty",
        &mut config,
        "frequencyPenalty",
    );
    if let Some((key, value)) = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|key| request.get(key).filter(|v| !v.is_null()).map(|v| (key, v)))
    {
        let tokens = value.as_u64().ok_or_else(|| TranslateError::WrongType {
            path: key.to_owned(),
            expected: "a non-negative integer",
        })?;
        config.insert("maxOutputTokens".to_owned(), json!(tokens));
    }
    match request.get("n") {
        None | Some(Value::Null) => {}
        Some(n) => {
            let n = n
                .as_u64()
                .filter(|&n| n >= 1)
                .ok_or_else(|| TranslateError::WrongType {
                    path: "n".to_owned(),
                    expected: "a positive integer",
                })?;
            if n > 1 {
                config.insert("candidateCount".to_owned(), json!(n));
            }
        }
    }
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
    if let Some(format) = request.get("response_format").filter(|f| !f.is_null()) {
        match required_str(format, "type", "response_format")? {
            "text" => {}
            "json_object" => {
                config.insert("responseMimeType".to_owned(), json!("application/json"));
            }
            "json_schema" => {
                let schema_path = "response_format.json_schema";
                let schema = format
                    .pointer("/json_schema/schema")
                    .filter(|s| !s.is_null())
                    .ok_or_else(|| TranslateError::Missing {
                        path: field_path(schema_path, "schema"),
                    })?;
                config.insert("responseMimeType".to_owned(), json!("application/json"));
                config.insert(
                    "responseSchema".to_owned(),
                    clean_schema(schema, &field_path(schema_path, "schema"))?,
                );
            }
            other => {
                return Err(TranslateError::Unsupported {
                    path: "response_format.type".to_owned(),
                    what: "response format",
                    value: other.to_owned(),
                })
            }
        }
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// Responses.

/// The finish reasons that mean a safety or policy filter stopped the candidate.
const FILTER_REASONS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

/// Gemini `finishReason` as OpenAI `finish_reason`; `called_function` turns STOP
/// into `tool_calls`.
fn finish_reason(reason: &str, called_function: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        reason if FILTER_REASONS.contains(&reason) => "content_filter",
        _ if called_function => "tool_calls",
        // STOP, OTHER, MALFORMED_FUNCTION_CALL, LANGUAGE and anything new.
        _ => "stop",
    }
}

/// The id given to the `n`th function call (from 0) of completion `id`.
fn call_id(id: &str, n: usize) -> String {
    format!("call_{id}_{n}")
}

/// Translates a Gemini `GenerateContentResponse` into an OpenAI `chat.completion`.
///
/// Each candidate becomes a choice (its `index`): text parts are joined into
/// `content` (null when there is none and there are tool calls), `functionCall`
/// parts become `tool_calls` (ids `call_<id>_<n>`, `n` counted over the response,
/// `args` serialized as `arguments`), parts with `thought: true` are skipped (their
/// tokens are reported as reasoning tokens). `finishReason` maps STOP to `stop` (or
/// `tool_calls` when the candidate called a function), MAX_TOKENS to `length`, the
/// safety and policy reasons to `content_filter`. A prompt blocked by
/// `promptFeedback.blockReason` (no candidates) becomes one empty choice with
/// `content_filter`. Usage as in [`Usage::from_gemini`].
pub fn gemini_response_to_openai(response: &Value, id: &str, created: u64, model: &str) -> Value {
    let mut calls = 0;
    let mut choices = Vec::new();
    for (position, candidate) in response["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for part in candidate["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if part["thought"] == true {
                continue;
            }
            if let Some(piece) = part["text"].as_str() {
                text.push_str(piece);
            }
            if let Some(call) = part.get("functionCall") {
                tool_calls.push(tool_call(call, &call_id(id, calls)));
                calls += 1;
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
        let called = !tool_calls.is_empty();
        if called {
            message.insert("tool_calls".to_owned(), Value::Array(tool_calls));
        }
        let finish = candidate["finishReason"]
            .as_str()
            .map_or(Value::Null, |reason| json!(finish_reason(reason, called)));
        choices.push(json!({
            "index": candidate["index"].as_u64().unwrap_or(position as u64),
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }));
    }
    if choices.is_empty() && response.pointer("/promptFeedback/blockReason").is_some() {
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": Usage::from_gemini(&response["usageMetadata"]).unwrap_or_default().to_openai(),
    })
}

/// A `functionCall` part as a complete OpenAI tool call.
fn tool_call(call: &Value, id: &str) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {
            "name": call["name"],
            "arguments": call.get("args").filter(|a| !a.is_null()).map_or_else(|| "{}".to_owned(), Value::to_string),
        },
    })
}

impl Usage {
    /// Reads Gemini's `usageMetadata`; `None` unless it is an object with
    /// `promptTokenCount`, `candidatesTokenCount` or `totalTokenCount`.
    ///
    /// Prompt: `promptTokenCount` (which includes `cachedContentTokenCount`) plus
    /// `toolUsePromptTokenCount`; completion: `candidatesTokenCount` plus
    /// `thoughtsTokenCount`; cached: `cachedContentTokenCount`; reasoning:
    /// `thoughtsTokenCount`.
    pub fn from_gemini(metadata: &Value) -> Option<Usage> {
        if [
            "promptTokenCount",
            "candidatesTokenCount",
            "totalTokenCount",
        ]
        .iter()
        .all(|key| metadata.get(key).is_none())
        {
            return None;
        }
        let count = |key: &str| metadata.get(key).and_then(Value::as_u64).unwrap_or(0);
        Some(Usage {
            prompt: count("promptTokenCount") + count("toolUsePromptTokenCount"),
            completion: count("candidatesTokenCount") + count("thoughtsTokenCount"),
            cached: count("cachedContentTokenCount"),
            reasoning: count("thoughtsTokenCount"),
        })
    }
}

// ---------------------------------------------------------------------------
// Streams.

/// What a [`GeminiStreamToOpenAi`] knows of one candidate (one OpenAI choice).
#[derive(Debug, Default, Clone, Copy)]
struct CandidateState {
    started: bool,
    tool_calls: usize,
}

/// Translates a Gemini `streamGenerateContent?alt=sse` stream into OpenAI
/// `chat.completion.chunk`s, one SSE event (one `GenerateContentResponse`) at a time.
///
/// - The first appearance of a candidate: a chunk with delta
///   `{"role": "assistant", "content": ""}` for its choice index.
/// - Text parts: `delta.content`; `thought: true` parts are skipped.
/// - `functionCall` parts: Gemini sends each call whole, so each becomes one chunk with
///   the tool call's `index`, `id` (`call_<id>_<n>`), `type`, `name` and complete
///   `arguments`.
/// - `finishReason`: a chunk with an empty delta and the mapped `finish_reason` (as in
///   [`gemini_response_to_openai`]); a prompt blocked by `promptFeedback.blockReason`
///   gives a role chunk and a `content_filter` finish chunk.
/// - Usage: Gemini repeats `usageMetadata` (cumulative) on many events, the final
///   figures usually on the event with the `finishReason`, sometimes on a later one.
///   [`usage`](Self::usage) always has the last seen; a usage-only chunk
///   (`choices: []`, `usage`) is emitted once, with the first `usageMetadata` on or
///   after the first `finishReason`. A gateway that wants the final figures when the
///   provider sends several after the finish should read [`usage`](Self::usage) at
///   the end of the stream.
/// - `{"error": {...}}`: `Err(TranslateError::ProviderError)` with its `status` and
///   `message`.
#[derive(Debug)]
pub struct GeminiStreamToOpenAi {
    id: String,
    created: u64,
    model: String,
    candidates: HashMap<u64, CandidateState>,
    calls: usize,
    usage: Option<Usage>,
    finished: bool,
    usage_sent: bool,
}

impl GeminiStreamToOpenAi {
    /// A translator whose chunks carry `id`, `created` and `model`.
    pub fn new(id: &str, created: u64, model: &str) -> Self {
        GeminiStreamToOpenAi {
            id: id.to_owned(),
            created,
            model: model.to_owned(),
            candidates: HashMap::new(),
            calls: 0,
            usage: None,
            finished: false,
            usage_sent: false,
        }
    }

    /// Translates one SSE event into zero or more chunks.
    pub fn push(&mut self, event: &SseEvent) -> Result<Vec<Value>, TranslateError> {
        let data: Value =
            serde_json::from_str(&event.data).map_err(|error| TranslateError::MalformedEvent {
                event: event.event.clone().unwrap_or_else(|| "message".to_owned()),
                reason: error.to_string(),
            })?;
        if let Some(error) = data.get("error").filter(|e| e.is_object()) {
            return Err(TranslateError::ProviderError {
                kind: error["status"].as_str().unwrap_or("UNKNOWN").to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        if let Some(usage) = Usage::from_gemini(&data["usageMetadata"]) {
            self.usage = Some(usage);
        }
        let mut chunks = Vec::new();
        let candidates = data["candidates"].as_array().map_or(&[][..], Vec::as_slice);
        for (position, candidate) in candidates.iter().enumerate() {
            let index = candidate["index"].as_u64().unwrap_or(position as u64);
            let mut state = self.candidates.get(&index).copied().unwrap_or_default();
            if !state.started {
                state.started = true;
                chunks.push(self.chunk(index, json!({"role": "assistant", "content": ""}), None));
            }
            for part in candidate["content"]["parts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if part["thought"] == true {
                    continue;
                }
                if let Some(text) = part["text"].as_str().filter(|t| !t.is_empty()) {
                    chunks.push(self.chunk(index, json!({"content": text}), None));
                }
                if let Some(call) = part.get("functionCall") {
                    let mut delta = tool_call(call, &call_id(&self.id, self.calls));
                    delta["index"] = json!(state.tool_calls);
                    self.calls += 1;
                    state.tool_calls += 1;
                    chunks.push(self.chunk(index, json!({"tool_calls": [delta]}), None));
                }
            }
            if let Some(reason) = candidate["finishReason"].as_str() {
                self.finished = true;
                let finish = finish_reason(reason, state.tool_calls > 0);
                chunks.push(self.chunk(index, json!({}), Some(finish)));
            }
            self.candidates.insert(index, state);
        }
        if candidates.is_empty() && data.pointer("/promptFeedback/blockReason").is_some() {
            if self.candidates.is_empty() {
                self.candidates.insert(0, CandidateState::default());
                chunks.push(self.chunk(0, json!({"role": "assistant", "content": ""}), None));
            }
            self.finished = true;
            chunks.push(self.chunk(0, json!({}), Some("content_filter")));
        }
        if self.finished && !self.usage_sent && data.get("usageMetadata").is_some() {
            if let Some(usage) = self.usage {
                self.usage_sent = true;
                chunks.push(json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage.to_openai(),
                }));
            }
        }
        Ok(chunks)
    }

    /// The last `usageMetadata` seen, in OpenAI's terms.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether a `finishReason` (or a prompt block) was seen: the answer is complete,
    /// though a later event may still bring usage.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn chunk(&self, index: u64, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": index,
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

    fn sse(data: Value) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn openai_request_becomes_gemini_request() {
        let request = json!({
            "model": "gemini-2.0-flash",
            "stream": true,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {"role": "user", "content": "Weather?"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": "https://example.com/cat.JPG?x=1"}
                ]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
                }]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Weather by city", "strict": true,
                "parameters": {"$schema": "x", "type": "object", "additionalProperties": false,
                    "properties": {"city": {"type": ["string", "null"]}, "unit": {"const": "c"}},
                    "required": ["city"]}
            }}, {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "stop": "END", "n": 2,
            "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": true,
                "schema": {"type": "object", "properties": {"t": {"type": "number"}}, "additionalProperties": false}}}
        });
        let gemini = openai_request_to_gemini(&request).unwrap();
        assert_eq!(
            gemini,
            json!({
                "systemInstruction": {"parts": [{"text": "Be brief.\n\nUse metric."}]},
                "contents": [
                    {"role": "user", "parts": [
                        {"text": "Weather?"},
                        {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?x=1"}}
                    ]},
                    {"role": "model", "parts": [
                        {"text": "Checking."},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                        {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}
                    ]}
                ],
                "tools": [{"functionDeclarations": [
                    {"name": "get_weather", "description": "Weather by city", "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "nullable": true}, "unit": {"enum": ["c"]}},
                        "required": ["city"]
                    }},
                    {"name": "now"}
                ]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
                "generationConfig": {
                    "temperature": 0.2, "topP": 0.9, "seed": 7, "presencePenalty": 0.1,
                    "frequencyPenalty": 0.3, "maxOutputTokens": 100, "candidateCount": 2,
                    "stopSequences": ["END"], "responseMimeType": "application/json",
                    "responseSchema": {"type": "object", "properties": {"t": {"type": "number"}}}
                }
            })
        );
        for (choice, mode) in [("none", "NONE"), ("auto", "AUTO"), ("required", "ANY")] {
            let request = json!({"messages": [], "tool_choice": choice});
            assert_eq!(
                openai_request_to_gemini(&request).unwrap()["toolConfig"]["functionCallingConfig"]
                    ["mode"],
                mode
            );
        }
        let json_mode = json!({"messages": [], "response_format": {"type": "json_object"}});
        assert_eq!(
            openai_request_to_gemini(&json_mode).unwrap()["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
    }

    #[test]
    fn request_errors_name_the_path() {
        let error = |request: Value| openai_request_to_gemini(&request).unwrap_err().to_string();
        let bad_arguments = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]});
        assert!(error(bad_arguments).starts_with("messages[0].tool_calls[0].function.arguments:"));
        let unknown_id =
            json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]});
        assert!(error(unknown_id).starts_with("messages[0].tool_call_id:"));
        let reference = json!({"messages": [], "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}}}}]});
        assert!(error(reference).starts_with("tools[0].function.parameters.properties.a.$ref:"));
        let audio =
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]});
        assert!(error(audio).starts_with("messages[0].content[0]: unsupported part type"));
        let format = json!({"messages": [], "response_format": {"type": "grammar"}});
        assert!(error(format).starts_with("response_format.type:"));
        assert!(error(json!({"messages": [{"role": "function"}]})).starts_with("messages[0].role:"));
    }

    fn usage_metadata() -> Value {
        json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
               "cachedContentTokenCount": 4, "toolUsePromptTokenCount": 2, "totalTokenCount": 20})
    }

    #[test]
    fn gemini_response_becomes_chat_completion() {
        let response = json!({
            "candidates": [
                {"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
                    {"text": "thinking…", "thought": true},
                    {"text": "Let me "}, {"text": "check."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
                ]}},
                {"index": 1, "finishReason": "MAX_TOKENS", "content": {"parts": [{"text": "Cut"}]}},
                {"index": 2, "finishReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": true}]}
            ],
            "usageMetadata": usage_metadata()
        });
        let completion = gemini_response_to_openai(&response, "gen-1", 7, "gemini-2.0-flash");
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["model"], "gemini-2.0-flash");
        let choices = completion["choices"].as_array().unwrap();
        assert_eq!(choices[0]["message"]["content"], "Let me check.");
        assert_eq!(
            choices[0]["message"]["tool_calls"],
            json!([{"id": "call_gen-1_0", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(choices[0]["finish_reason"], "tool_calls");
        assert_eq!(choices[1]["index"], 1);
        assert_eq!(choices[1]["finish_reason"], "length");
        assert_eq!(choices[2]["finish_reason"], "content_filter");
        assert_eq!(choices[2]["message"]["content"], "");
        let usage = &completion["usage"];
        assert_eq!(usage["prompt_tokens"], 12);
        assert_eq!(usage["completion_tokens"], 8);
        assert_eq!(usage["total_tokens"], 20);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 3);
        assert_eq!(
            Usage::from_openai(usage),
            Usage::from_gemini(&usage_metadata())
        );

        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}});
        let completion = gemini_response_to_openai(&blocked, "gen-2", 7, "m");
        assert_eq!(completion["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(completion["choices"][0]["message"]["content"], "");
        assert_eq!(completion["usage"]["prompt_tokens"], 4);
    }

    #[test]
    fn gemini_stream_becomes_chunks() {
        let mut stream = GeminiStreamToOpenAi::new("gen-1", 7, "gemini-2.0-flash");
        let mut chunks = Vec::new();
        for data in [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}}),
            json!({"candidates": [{"content": {"parts": [{"text": "hmm", "thought": true}, {"text": "lo"}]}, "index": 0}]}),
            json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "index": 0}]}),
            json!({"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}]}),
        ] {
            chunks.extend(stream.push(&sse(data)).unwrap());
        }
        assert!(stream.finished());
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(chunks[2]["choices"][0]["delta"]["content"], "lo");
        assert_eq!(
            chunks[3]["choices"][0]["delta"]["tool_calls"],
            json!([{"index": 0, "id": "call_gen-1_0", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}}])
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chunks.len(),
            5,
            "no usage chunk until usage follows the finish"
        );
        let later = stream
            .push(&sse(json!({"usageMetadata": usage_metadata()})))
            .unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0]["choices"], json!([]));
        assert_eq!(later[0]["usage"]["completion_tokens"], 8);
        assert_eq!(stream.usage(), Usage::from_gemini(&usage_metadata()));
        let again = stream
            .push(&sse(json!({"usageMetadata": usage_metadata()})))
            .unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn gemini_stream_errors_and_blocks() {
        let mut stream = GeminiStreamToOpenAi::new("gen-1", 7, "m");
        let error = stream
            .push(&sse(json!({"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}})))
            .unwrap_err();
        assert_eq!(
            error,
            TranslateError::ProviderError {
                kind: "RESOURCE_EXHAUSTED".to_owned(),
                message: "Resource exhausted".to_owned()
            }
        );
        assert!(matches!(
            stream.push(&SseEvent {
                event: None,
                data: "{".to_owned()
            }),
            Err(TranslateError::MalformedEvent { .. })
        ));
        let chunks = stream
            .push(&sse(
                json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                              "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}}),
            ))
            .unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(chunks[2]["usage"]["prompt_tokens"], 3);
        assert!(stream.finished());
    }
}
