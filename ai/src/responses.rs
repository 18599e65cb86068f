//! OpenAI's Responses API (`POST /v1/responses`) over the gateway's canonical
//! format (Chat Completions), on `serde_json::Value`s: requests, complete
//! answers and streams.
//!
//! The gateway translates a Responses call to a chat call, so every provider
//! (and every step of the gateway: guardrails, budgets, cache, records) sees one
//! format; the answer comes back as a `response` object or as the Responses
//! stream's named events. Depends on [`crate::translate`] (errors, usage) only.
//!
//! 1. [`request_to_chat`]: `instructions` and `input` (a string or items:
//!    messages, `function_call`, `function_call_output`; `reasoning` items are
//!    dropped) become `messages`; function `tools`, `tool_choice`,
//!    `text.format` (structured output), `max_output_tokens`,
//!    `reasoning.effort` and the sampling fields map one to one. Built-in tools,
//!    `background`, stored prompts and item references have no chat equivalent
//!    and are a [`TranslateError`] naming the field; state the gateway does not
//!    keep (`previous_response_id`, `conversation`) is refused by the caller.
//! 2. [`chat_to_response`]: a `chat.completion` becomes a `response` object:
//!    a `message` item with `output_text` (or `refusal`) and one
//!    `function_call` item per tool call; `length` and `content_filter`
//!    finishes make the response `incomplete` with the reason.
//! 3. [`ChatStreamToResponses`]: `chat.completion.chunk`s in, the Responses
//!    events out (`response.created`, `response.in_progress`,
//!    `response.output_item.added`, `response.content_part.added`,
//!    `response.output_text.delta`, `response.function_call_arguments.delta`,
//!    the matching `.done` events, then `response.completed`,
//!    `response.incomplete` or `response.failed`), each with its
//!    `sequence_number`, in the order the official SDKs' stream accumulators
//!    check.

use serde_json::{json, Map, Value};

use crate::translate::{TranslateError, Usage};

/// Request fields a `response` object echoes back (as OpenAI's does).
const ECHOED: [&str; 11] = [
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
];

/// Chat fields that keep their name and meaning in the Responses API.
const SAME: [&str; 11] = [
    "model",
    "stream",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "top_logprobs",
];

/// Fields with no chat equivalent: refused rather than silently dropped.
const UNSUPPORTED: [&str; 3] = ["background", "prompt", "stream_options"];

fn unsupported(path: impl Into<String>, what: &'static str, value: &Value) -> TranslateError {
    TranslateError::Unsupported {
        path: path.into(),
        what,
        value: value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned),
    }
}

fn wrong(path: impl Into<String>, expected: &'static str) -> TranslateError {
    TranslateError::WrongType {
        path: path.into(),
        expected,
    }
}

/// The request fields a `response` object echoes, taken from a client's request.
pub fn echo_of(req: &Value) -> Value {
    let mut echo = Map::new();
    for key in ECHOED {
        if let Some(v) = req.get(key) {
            echo.insert(key.to_owned(), v.clone());
        }
    }
    Value::Object(echo)
}

/// Translates a Responses request into a Chat Completions request (see the
/// module docs for what maps and what is refused).
pub fn request_to_chat(req: &Value) -> Result<Value, TranslateError> {
    let obj = req.as_object().ok_or_else(|| wrong("", "a JSON object"))?;
    for key in UNSUPPORTED {
        if let Some(v) = obj
            .get(key)
            .filter(|v| !v.is_null() && **v != Value::Bool(false))
        {
            return Err(unsupported(key, "field", v));
        }
    }
    let mut chat = Map::new();
    for key in SAME {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            chat.insert(key.to_owned(), v.clone());
        }
    }
    let mut messages = Vec::new();
    match obj.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(wrong("instructions", "a string")),
    }
    match obj.get("input") {
        None | Some(Value::Null) => {
            return Err(TranslateError::Missing {
                path: "input".into(),
            })
        }
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &format!("input[{i}]"), &mut messages)?;
            }
        }
        Some(_) => return Err(wrong("input", "a string or an array of items")),
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        let tools = tools.as_array().ok_or_else(|| wrong("tools", "an array"))?;
        if !tools.is_empty() {
            let mut out = Vec::with_capacity(tools.len());
            for (i, tool) in tools.iter().enumerate() {
                out.push(function_tool(tool, i)?);
            }
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        chat.insert("tool_choice".into(), tool_choice(choice)?);
    }
    if let Some(format) = obj.get("text").and_then(|t| t.get("format")) {
        if let Some(rf) = response_format(format)? {
            chat.insert("response_format".into(), rf);
        }
    }
    if let Some(v) = obj.get("text").and_then(|t| t.get("verbosity")) {
        if !v.is_null() {
            chat.insert("verbosity".into(), v.clone());
        }
    }
    if let Some(n) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        let n = n
            .as_u64()
            .ok_or_else(|| wrong("max_output_tokens", "a positive integer"))?;
        chat.insert("max_completion_tokens".into(), n.into());
    }
    if let Some(effort) = obj.get("reasoning").and_then(|r| r.get("effort")) {
        if !effort.is_null() {
            chat.insert("reasoning_effort".into(), effort.clone());
        }
    }
    Ok(Value::Object(chat))
}

/// One `input` item, appended to `messages` (merging a function call into the
/// assistant message before it, as chat requires).
fn input_item(item: &Value, path: &str, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let kind = item["type"].as_str().unwrap_or("message");
    match kind {
        "message" => {
            let role = item["role"]
                .as_str()
                .ok_or_else(|| TranslateError::Missing {
                    path: format!("{path}.role"),
                })?;
            let role = match role {
                "user" | "assistant" | "system" => role,
                "developer" => "developer",
                other => return Err(unsupported(format!("{path}.role"), "role", &other.into())),
            };
            let content = message_content(&item["content"], &format!("{path}.content"))?;
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let field = |name: &str| {
                item[name].as_str().ok_or_else(|| TranslateError::Missing {
                    path: format!("{path}.{name}"),
                })
            };
            let call = json!({
                "id": field("call_id")?,
                "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?},
            });
            let merge = messages.last_mut().filter(|m| {
                m["role"] == "assistant" && m.get("tool_calls").is_none_or(Value::is_array)
            });
            match merge {
                Some(last) => match last["tool_calls"].as_array_mut() {
                    Some(calls) => calls.push(call),
                    None => last["tool_calls"] = json!([call]),
                },
                None => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = item["call_id"]
                .as_str()
                .ok_or_else(|| TranslateError::Missing {
                    path: format!("{path}.call_id"),
                })?;
            let output = match &item["output"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                Value::Null => {
                    return Err(TranslateError::Missing {
                        path: format!("{path}.output"),
                    })
                }
                other => other.to_string(),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // The model's reasoning from an earlier turn: chat has no place for it.
        "reasoning" => {}
        other => {
            return Err(unsupported(
                format!("{path}.type"),
                "input item type",
                &other.into(),
            ))
        }
    }
    Ok(())
}

/// A message's content: a string, or input/output parts as chat content parts.
fn message_content(content: &Value, path: &str) -> Result<Value, TranslateError> {
    let parts = match content {
        Value::String(_) => return Ok(content.clone()),
        Value::Array(parts) => parts,
        Value::Null => return Err(TranslateError::Missing { path: path.into() }),
        _ => return Err(wrong(path, "a string or an array of content parts")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match part["type"].as_str().unwrap_or_default() {
            "input_text" | "output_text" | "text" => {
                let text = part["text"]
                    .as_str()
                    .ok_or_else(|| TranslateError::Missing {
                        path: format!("{p}.text"),
                    })?;
                out.push(json!({"type": "text", "text": text}));
            }
            "refusal" => {
                let text = part["refusal"].as_str().unwrap_or_default();
                out.push(json!({"type": "text", "text": text}));
            }
            "input_image" => {
                let url = part["image_url"].as_str().ok_or_else(|| {
                    unsupported(
                        format!("{p}.file_id"),
                        "image without an image_url",
                        &part["file_id"],
                    )
                })?;
                let mut image = json!({"url": url});
                if let Some(d) = part["detail"].as_str() {
                    image["detail"] = d.into();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            other => {
                return Err(unsupported(
                    format!("{p}.type"),
                    "content part type",
                    &other.into(),
                ))
            }
        }
    }
    // A text-only message as one string: every provider takes that.
    if out.iter().all(|p| p["type"] == "text") {
        let text: String = out.iter().filter_map(|p| p["text"].as_str()).collect();
        return Ok(Value::String(text));
    }
    Ok(Value::Array(out))
}

fn function_tool(tool: &Value, i: usize) -> Result<Value, TranslateError> {
    let path = format!("tools[{i}]");
    match tool["type"].as_str() {
        Some("function") => {}
        _ => {
            return Err(unsupported(
                format!("{path}.type"),
                "tool type (only function tools translate)",
                &tool["type"],
            ))
        }
    }
    let name = tool["name"]
        .as_str()
        .ok_or_else(|| TranslateError::Missing {
            path: format!("{path}.name"),
        })?;
    let mut function = json!({"name": name});
    for key in ["description", "parameters", "strict"] {
        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
            function[key] = v.clone();
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

fn tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name =
                o.get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::Missing {
                        path: "tool_choice.name".into(),
                    })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        other => Err(unsupported("tool_choice", "tool choice", other)),
    }
}

fn response_format(format: &Value) -> Result<Option<Value>, TranslateError> {
    match format["type"].as_str() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = json!({
                "name": format["name"].as_str().unwrap_or("response"),
                "schema": format["schema"],
            });
            for key in ["strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema[key] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(_) => Err(unsupported(
            "text.format.type",
            "text format",
            &format["type"],
        )),
    }
}

/// Calls `f` on every text of a Responses request a guardrail reads:
/// `instructions`, a string `input`, the text parts (or string content) of
/// input messages, and function call outputs.
pub fn for_each_input_text(req: &mut Value, mut f: impl FnMut(&mut String)) {
    if let Some(Value::String(s)) = req.get_mut("instructions") {
        f(s);
    }
    match req.get_mut("input") {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(items)) => {
            for item in items {
                match item.get_mut("content") {
                    Some(Value::String(s)) => f(s),
                    Some(Value::Array(parts)) => {
                        for part in parts {
                            if let Some(Value::String(s)) = part.get_mut("text") {
                                f(s);
                            }
                        }
                    }
                    _ => {}
                }
                if let Some(Value::String(s)) = item.get_mut("output") {
                    f(s);
                }
            }
        }
        _ => {}
    }
}

/// Calls `f` on the `text` of every `output_text` part anywhere in `v` (a
/// `response`, an output item, a content part, a stream event).
pub fn for_each_output_text(v: &mut Value, f: &mut impl FnMut(&mut String)) {
    match v {
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("output_text") {
                if let Some(Value::String(s)) = o.get_mut("text") {
                    f(s);
                }
            }
            for (_, child) in o.iter_mut() {
                if child.is_object() || child.is_array() {
                    for_each_output_text(child, f);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                for_each_output_text(child, f);
            }
        }
        _ => {}
    }
}

/// A Responses `usage` object read back; `None` unless it has token counts.
pub fn usage_of(u: &Value) -> Option<Usage> {
    if u.get("input_tokens").is_none() && u.get("output_tokens").is_none() {
        return None;
    }
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt: n("/input_tokens"),
        completion: n("/output_tokens"),
        cached: n("/input_tokens_details/cached_tokens"),
        reasoning: n("/output_tokens_details/reasoning_tokens"),
    })
}

/// A chat request with a Responses request's model and texts only, for what
/// the gateway estimates and checks (guardrails, size, budgets) when the call
/// goes to a provider that speaks the Responses API itself, whatever the
/// request holds that chat could not express (built-in tools, references).
pub fn estimate_chat(req: &Value) -> Value {
    let mut texts = Vec::new();
    let mut copy = req.clone();
    for_each_input_text(&mut copy, |s| texts.push(s.clone()));
    let messages: Vec<Value> = texts
        .into_iter()
        .map(|t| json!({"role": "user", "content": t}))
        .collect();
    let mut chat = json!({"model": req["model"], "messages": messages});
    if let Some(n) = req["max_output_tokens"].as_u64() {
        chat["max_completion_tokens"] = n.into();
    }
    if let Some(s) = req["stream"].as_bool() {
        chat["stream"] = s.into();
    }
    chat
}

/// Usage in the Responses API's terms.
pub fn usage_object(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.prompt + u.completion,
    })
}

/// The `incomplete_details.reason` for a chat finish reason, if it cut the answer short.
fn incomplete_reason(finish: Option<&str>) -> Option<&'static str> {
    match finish {
        Some("length") => Some("max_output_tokens"),
        Some("content_filter") => Some("content_filter"),
        _ => None,
    }
}

/// A `response` object.
fn response_object(
    id: &str,
    created: u64,
    model: &str,
    echo: &Value,
    status: &str,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let mut r = json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "error": null,
        "incomplete_details": null,
        "previous_response_id": null,
        "store": false,
        "usage": usage.map(usage_object),
        "instructions": null,
        "max_output_tokens": null,
        "metadata": {},
        "parallel_tool_calls": true,
        "reasoning": null,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "user": null,
    });
    if let Some(e) = echo.as_object() {
        for (k, v) in e {
            r[k.as_str()] = v.clone();
        }
    }
    r
}

fn message_item(id: &str, text: &str, refusal: Option<&str>, status: &str) -> Value {
    let part = match refusal {
        Some(r) => json!({"type": "refusal", "refusal": r}),
        None => json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []}),
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": [part]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    })
}

/// The item id of the function call with chat id `call_id`.
fn call_item_id(call_id: &str) -> String {
    format!("fc_{}", call_id.strip_prefix("call_").unwrap_or(call_id))
}

/// The status and incomplete details of a response that finished with `finish`.
fn finish_status(r: &mut Value, finish: Option<&str>) {
    if let Some(reason) = incomplete_reason(finish) {
        r["status"] = "incomplete".into();
        r["incomplete_details"] = json!({"reason": reason});
    }
}

/// Turns a canonical `chat.completion` into a `response` object with id `id`;
/// `echo` holds the request fields to echo ([`echo_of`]).
pub fn chat_to_response(canon: &Value, id: &str, created: u64, echo: &Value) -> Value {
    let choice = &canon["choices"][0];
    let message = &choice["message"];
    let text = message["content"].as_str().unwrap_or_default();
    let refusal = message["refusal"].as_str();
    let calls = message["tool_calls"].as_array();
    let mut output = Vec::new();
    if !text.is_empty() || refusal.is_some() || calls.is_none_or(Vec::is_empty) {
        output.push(message_item(
            &format!("msg_{}", bare(id)),
            text,
            refusal,
            "completed",
        ));
    }
    for call in calls.into_iter().flatten() {
        let call_id = call["id"].as_str().unwrap_or_default();
        output.push(call_item(
            &call_item_id(call_id),
            call_id,
            call["function"]["name"].as_str().unwrap_or_default(),
            call["function"]["arguments"].as_str().unwrap_or_default(),
            "completed",
        ));
    }
    let usage = Usage::from_openai(&canon["usage"]);
    let model = canon["model"].as_str().unwrap_or_default();
    let mut r = response_object(
        id,
        created,
        model,
        echo,
        "completed",
        output,
        usage.as_ref(),
    );
    finish_status(&mut r, choice["finish_reason"].as_str());
    r
}

/// `id` without its `resp_` prefix, to derive item ids from.
fn bare(id: &str) -> &str {
    id.strip_prefix("resp_").unwrap_or(id)
}

/// One output item of a response under way.
#[derive(Debug)]
enum Item {
    Message {
        id: String,
        text: String,
        open: bool,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        open: bool,
    },
}

/// Chat chunks in, Responses stream events out (see the module docs). Each
/// event is `(name, data)`; the data carries the same name as its `type`.
#[derive(Debug)]
pub struct ChatStreamToResponses {
    id: String,
    created: u64,
    model: String,
    echo: Value,
    seq: u64,
    items: Vec<Item>,
    /// Chat tool-call index -> item index.
    calls: Vec<(u64, usize)>,
    /// The open message item, if any.
    message: Option<usize>,
    finish: Option<String>,
}

impl ChatStreamToResponses {
    /// A translator for the response `id` of `model`, echoing `echo` ([`echo_of`]).
    pub fn new(id: &str, created: u64, model: &str, echo: Value) -> Self {
        Self {
            id: id.to_owned(),
            created,
            model: model.to_owned(),
            echo,
            seq: 0,
            items: Vec::new(),
            calls: Vec::new(),
            message: None,
            finish: None,
        }
    }

    fn event(&mut self, name: &str, mut data: Value, out: &mut Vec<(String, Value)>) {
        data["type"] = name.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        out.push((name.to_owned(), data));
    }

    fn snapshot(&self, status: &str, usage: Option<&Usage>, with_output: bool) -> Value {
        let output = if with_output {
            (0..self.items.len())
                .map(|i| self.item_value(i, "completed"))
                .collect()
        } else {
            Vec::new()
        };
        response_object(
            &self.id,
            self.created,
            &self.model,
            &self.echo,
            status,
            output,
            usage,
        )
    }

    fn item_value(&self, i: usize, status: &str) -> Value {
        match &self.items[i] {
            Item::Message { id, text, .. } => message_item(id, text, None, status),
            Item::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => call_item(id, call_id, name, arguments, status),
        }
    }

    /// The events that open the stream: `response.created`, `response.in_progress`.
    pub fn start(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let r = self.snapshot("in_progress", None, false);
        self.event("response.created", json!({"response": r}), &mut out);
        let r = self.snapshot("in_progress", None, false);
        self.event("response.in_progress", json!({"response": r}), &mut out);
        out
    }

    fn close(&mut self, i: usize, out: &mut Vec<(String, Value)>) {
        let (id, done) = match &mut self.items[i] {
            Item::Message { id, text, open } if *open => {
                *open = false;
                let (id, text) = (id.clone(), text.clone());
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": []}),
                    out,
                );
                self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "part": part}),
                    out,
                );
                (id, true)
            }
            Item::Call {
                id,
                name,
                arguments,
                open,
                ..
            } if *open => {
                *open = false;
                let (id, name, arguments) = (id.clone(), name.clone(), arguments.clone());
                self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "name": name, "arguments": arguments}),
                    out,
                );
                (id, true)
            }
            _ => (String::new(), false),
        };
        if done {
            let item = self.item_value(i, "completed");
            debug_assert_eq!(item["id"].as_str(), Some(id.as_str()));
            self.event(
                "response.output_item.done",
                json!({"output_index": i, "item": item}),
                out,
            );
        }
        if self.message == Some(i) {
            self.message = None;
        }
    }

    /// Translates one chat chunk.
    pub fn push(&mut self, chunk: &Value) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if let Some(m) = chunk["model"].as_str().filter(|m| !m.is_empty()) {
            m.clone_into(&mut self.model);
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let i = match self.message {
                Some(i) => i,
                None => self.open_message(&mut out),
            };
            if let Item::Message { text: t, id, .. } = &mut self.items[i] {
                t.push_str(text);
                let id = id.clone();
                self.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "delta": text, "logprobs": []}),
                    &mut out,
                );
            }
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap_or(0);
            let item = match self.calls.iter().find(|(c, _)| *c == index) {
                Some(&(_, item)) => item,
                None => {
                    if let Some(m) = self.message {
                        self.close(m, &mut out);
                    }
                    let call_id = call["id"].as_str().unwrap_or_default().to_owned();
                    let name = call["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let i = self.items.len();
                    self.items.push(Item::Call {
                        id: call_item_id(&call_id),
                        call_id,
                        name,
                        arguments: String::new(),
                        open: true,
                    });
                    self.calls.push((index, i));
                    let item = self.item_value(i, "in_progress");
                    self.event(
                        "response.output_item.added",
                        json!({"output_index": i, "item": item}),
                        &mut out,
                    );
                    i
                }
            };
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                if let Item::Call { arguments, id, .. } = &mut self.items[item] {
                    arguments.push_str(args);
                    let id = id.clone();
                    self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": item, "delta": args}),
                        &mut out,
                    );
                }
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
        out
    }

    fn open_message(&mut self, out: &mut Vec<(String, Value)>) -> usize {
        let i = self.items.len();
        let id = if i == 0 {
            format!("msg_{}", bare(&self.id))
        } else {
            format!("msg_{}_{i}", bare(&self.id))
        };
        self.items.push(Item::Message {
            id: id.clone(),
            text: String::new(),
            open: true,
        });
        self.message = Some(i);
        let item = json!({"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
        self.event(
            "response.output_item.added",
            json!({"output_index": i, "item": item}),
            out,
        );
        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
        self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": i, "content_index": 0, "part": part}),
            out,
        );
        i
    }

    /// The events that end a stream that completed: every open item's `.done`
    /// events, then `response.completed` (or `response.incomplete`).
    pub fn finish(&mut self, usage: Option<Usage>) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if self.items.is_empty() {
            // An empty answer is still one (empty) message, as OpenAI sends it.
            self.open_message(&mut out);
        }
        for i in 0..self.items.len() {
            self.close(i, &mut out);
        }
        let mut r = self.snapshot("completed", usage.as_ref(), true);
        finish_status(&mut r, self.finish.as_deref());
        let name = if r["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(name, json!({"response": r}), &mut out);
        out
    }

    /// The event that ends a stream that failed after it began: `response.failed`.
    pub fn fail(&mut self, message: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut r = self.snapshot("failed", None, false);
        r["error"] = json!({"code": "server_error", "message": message});
        self.event("response.failed", json!({"response": r}), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_input_and_instructions() {
        let chat = request_to_chat(&json!({
            "model": "demo", "instructions": "Be brief.", "input": "Hi",
            "max_output_tokens": 50, "temperature": 0.2, "reasoning": {"effort": "low"},
        }))
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "demo", "temperature": 0.2, "max_completion_tokens": 50,
                "reasoning_effort": "low",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
            })
        );
    }

    #[test]
    fn items_with_function_calls_round_trip_into_chat() {
        let chat = request_to_chat(&json!({
            "model": "demo",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Paris?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
            ],
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        }))
        .unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(
            m[0],
            json!({"role": "user", "content": "Weather in Paris?"})
        );
        assert_eq!(m[1]["role"], "assistant");
        assert_eq!(m[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(m[1]["tool_calls"][1]["function"]["name"], "time");
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
        );
        assert_eq!(m[3]["content"], "noon");
        assert_eq!(
            m[4]["content"][0]["image_url"],
            json!({"url": "data:image/png;base64,AAAA", "detail": "low"})
        );
        assert_eq!(chat["tools"][0]["function"]["name"], "weather");
        assert_eq!(chat["tools"][0]["function"]["strict"], true);
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(chat["response_format"]["json_schema"]["name"], "w");
    }

    #[test]
    fn what_chat_cannot_express_is_refused_by_path() {
        let e = request_to_chat(
            &json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "tools[0].type: unsupported tool type (only function tools translate) \"web_search\""
        );
        let e = request_to_chat(
            &json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("input[0].type: unsupported input item type"),
            "{e}"
        );
        let e =
            request_to_chat(&json!({"model": "m", "input": "x", "background": true})).unwrap_err();
        assert!(e.to_string().starts_with("background:"), "{e}");
        let e = request_to_chat(&json!({"model": "m"})).unwrap_err();
        assert_eq!(e.to_string(), "input: missing");
    }

    #[test]
    fn texts_usage_and_estimates_of_native_calls() {
        let mut req = json!({
            "model": "m", "instructions": "be brief", "max_output_tokens": 9,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "a@b.io"}]},
                {"type": "function_call_output", "call_id": "c", "output": "out"},
            ],
            "tools": [{"type": "web_search"}],
        });
        let mut seen = Vec::new();
        for_each_input_text(&mut req, |s| seen.push(s.clone()));
        assert_eq!(seen, ["be brief", "a@b.io", "out"]);
        let chat = estimate_chat(&req);
        assert_eq!(chat["messages"].as_array().unwrap().len(), 3);
        assert_eq!(chat["max_completion_tokens"], 9);
        let mut resp = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "x"}]}], "usage": {"input_tokens": 3, "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 1}}});
        for_each_output_text(&mut resp, &mut |s: &mut String| s.push('!'));
        assert_eq!(resp["output"][0]["content"][0]["text"], "x!");
        let u = usage_of(&resp["usage"]).unwrap();
        assert_eq!((u.prompt, u.completion, u.reasoning), (3, 2, 1));
        assert_eq!(usage_of(&json!({})), None);
    }

    #[test]
    fn complete_answer_becomes_a_response() {
        let canon = json!({
            "id": "chatcmpl-1", "model": "demo",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.",
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        });
        let r = chat_to_response(&canon, "resp_abc", 7, &json!({"temperature": 0.5}));
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["temperature"], 0.5);
        assert_eq!(r["output"][0]["id"], "msg_abc");
        assert_eq!(r["output"][0]["content"][0]["text"], "Let me check.");
        assert_eq!(
            r["output"][1],
            json!({"id": "fc_9", "type": "function_call", "status": "completed", "call_id": "call_9", "name": "weather", "arguments": "{}"})
        );
        assert_eq!(r["usage"]["input_tokens"], 10);
        assert_eq!(r["usage"]["total_tokens"], 14);
        let cut = json!({"model": "demo", "choices": [{"finish_reason": "length", "message": {"content": "a b"}}]});
        let r = chat_to_response(&cut, "resp_x", 7, &Value::Null);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn stream_events_in_order_with_indexes() {
        let mut tr = ChatStreamToResponses::new("resp_1", 0, "m", json!({}));
        let mut events = tr.start();
        for c in [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Hel"}), None),
            chunk(json!({"content": "lo"}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
        ] {
            events.extend(tr.push(&c));
        }
        events.extend(tr.finish(Some(Usage {
            prompt: 3,
            completion: 2,
            ..Usage::default()
        })));
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], i as u64);
        }
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"x\":1}");
        assert_eq!(done["usage"]["output_tokens"], 2);
        assert_eq!(events[10].1["output_index"], 1);
    }

    #[test]
    fn empty_cut_and_failed_streams() {
        let mut tr = ChatStreamToResponses::new("resp_1", 0, "m", json!({}));
        tr.start();
        tr.push(&chunk(json!({"content": "a"}), Some("length")));
        let end = tr.finish(None);
        assert_eq!(end.last().unwrap().0, "response.incomplete");
        let mut tr = ChatStreamToResponses::new("resp_2", 0, "m", json!({}));
        tr.start();
        let end = tr.finish(None);
        assert_eq!(end[0].0, "response.output_item.added");
        assert_eq!(
            end.last().unwrap().1["response"]["output"][0]["type"],
            "message"
        );
        let mut tr = ChatStreamToResponses::new("resp_3", 0, "m", json!({}));
        let failed = tr.fail("provider went away");
        assert_eq!(failed[0].1["response"]["status"], "failed");
        assert_eq!(
            failed[0].1["response"]["error"]["message"],
            "provider went away"
        );
    }
}
