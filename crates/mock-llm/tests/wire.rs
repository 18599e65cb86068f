//! The mock over real sockets: wire formats, streams, faults and knobs.
//!
//! A small raw HTTP/1.1 client (std `TcpStream` + `httparse`) sends requests and
//! reads responses, keeping the chunks of a chunked body apart so the tests can
//! check that each SSE event is one chunk and whether the stream really ended.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "tests of the mock provider, not part of the gateway"
)]

use hypergate_mock_llm::{MockConfig, MockLlm};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A response as the client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body, chunks joined.
    body: Vec<u8>,
    /// Each chunk of a chunked body.
    chunks: Vec<Vec<u8>>,
    /// Whether a chunked body ended with its terminating chunk.
    terminated: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The SSE events: (event name, data).
    fn events(&self) -> Vec<(Option<String>, String)> {
        let text = String::from_utf8(self.body.clone()).expect("UTF-8 stream");
        text.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let mut name = None;
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// The data of each SSE event parsed as JSON (`[DONE]` left out).
    fn json_events(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter(|(_, data)| data != "[DONE]")
            .map(|(_, data)| serde_json::from_str(data).expect("JSON event"))
            .collect()
    }
}

/// A keep-alive connection to the mock.
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    fn connect(mock: &MockLlm) -> Client {
        let stream = TcpStream::connect(mock.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.stream.write_all(request.as_bytes()).unwrap();
    }

    fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.send(method, path, headers, body);
        self.read_reply()
    }

    /// Reads more bytes; false at end of stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let read = self.stream.read(&mut chunk).unwrap_or(0);
        self.buffer.extend_from_slice(&chunk[..read]);
        read > 0
    }

    fn read_reply(&mut self) -> Reply {
        let (head_len, status, headers) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = response.parse(&self.buffer).unwrap() {
                let headers = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (len, response.code.unwrap(), headers);
            }
            assert!(self.fill(), "connection closed before a response head");
        };
        self.buffer.drain(..head_len);
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
            terminated: false,
        };
        if let Some(length) = reply.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buffer.len() < length {
                assert!(self.fill(), "connection closed inside a body");
            }
            reply.body = self.buffer.drain(..length).collect();
            return reply;
        }
        assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
        loop {
            let line_end = loop {
                if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                    break Some(end);
                }
                if !self.fill() {
                    break None;
                }
            };
            let Some(line_end) = line_end else {
                return reply;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.buffer[..line_end]).unwrap(), 16)
                    .unwrap();
            while self.buffer.len() < line_end + 2 + size + 2 {
                if !self.fill() {
                    return reply;
                }
            }
            let chunk: Vec<u8> = self.buffer[line_end + 2..line_end + 2 + size].to_vec();
            self.buffer.drain(..line_end + 2 + size + 2);
            if size == 0 {
                reply.terminated = true;
                return reply;
            }
            reply.body.extend_from_slice(&chunk);
            reply.chunks.push(chunk);
        }
    }

    /// Whether the server has closed the connection (EOF on read).
    fn closed(&mut self) -> bool {
        self.buffer.is_empty() && !self.fill()
    }
}

const OPENAI_AUTH: (&str, &str) = ("authorization", "Bearer sk-test");
const ANTHROPIC_HEADERS: [(&str, &str); 2] = [
    ("x-api-key", "sk-ant-test"),
    ("anthropic-version", "2023-06-01"),
];

fn start(config: MockConfig) -> MockLlm {
    MockLlm::start("127.0.0.1:0", config).expect("start mock")
}

fn chat(mock: &MockLlm, body: &Value) -> Reply {
    Client::connect(mock).request(
        "POST",
        "/v1/chat/completions",
        &[OPENAI_AUTH],
        &body.to_string(),
    )
}

fn messages(mock: &MockLlm, body: &Value) -> Reply {
    Client::connect(mock).request(
        "POST",
        "/v1/messages",
        &ANTHROPIC_HEADERS,
        &body.to_string(),
    )
}

fn weather_tool_openai() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"]
            }
        }
    }])
}

#[test]
fn openai_completion_has_the_reference_fields_and_usage() {
    let mock = start(MockConfig::default());
    let request = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}
        ]
    });
    let reply = chat(&mock, &request);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply
        .header("x-request-id")
        .is_some_and(|id| id.starts_with("req_")));
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["system_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("fp_"));
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Mock reply to: Hello there");
    // Prompt: (2 words + 3) + (2 words + 3); completion: 5 words.
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
            }
        })
    );
    assert_eq!(mock.requests(), 1);
    assert_eq!(mock.last_request(), Some(request.clone()));
    let log = mock.requests_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].0, "/v1/chat/completions");
    assert!(log[0]
        .1
        .contains(&("authorization".to_owned(), "Bearer sk-test".to_owned())));
    assert_eq!(log[0].2, request);
}

#[test]
fn openai_knobs_change_model_reply_and_usage() {
    let mock = start(MockConfig {
        usage: false,
        reply: Some("Fixed answer".to_owned()),
        model_label: Some("mock-model".to_owned()),
        ..MockConfig::default()
    });
    // No `/v1` in the base path.
    let body = Client::connect(&mock)
        .request(
            "POST",
            "/chat/completions",
            &[OPENAI_AUTH],
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .json();
    assert_eq!(body["model"], "mock-model");
    assert_eq!(body["choices"][0]["message"]["content"], "Fixed answer");
    assert!(body.get("usage").is_none());
}

#[test]
fn openai_stream_with_include_usage_ends_with_a_usage_chunk_then_done() {
    let mock = start(MockConfig::default());
    let reply = chat(
        &mock,
        &json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Hi"}]
        }),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.terminated);
    let events = reply.events();
    assert_eq!(reply.chunks.len(), events.len(), "one chunk per event");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(events.iter().all(|(name, _)| name.is_none()));
    let chunks = reply.json_events();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], "gpt-4o-mini");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    assert_eq!(chunks[0]["usage"], Value::Null);
    assert!(
        chunks[0].get("usage").is_some(),
        "usage: null on every chunk"
    );
    let content: String = chunks[1..]
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Mock reply to: Hi");
    // One word per content chunk: "Mock ", "reply ", "to: ", "Hi".
    assert_eq!(chunks.len(), 1 + 4 + 1 + 1);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 4);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["total_tokens"], 8);
}

#[test]
fn openai_stream_without_include_usage_has_no_usage() {
    let mock = start(MockConfig {
        chunk_chars: 3,
        ..MockConfig::default()
    });
    let request = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": "Hi"}]
    });
    let reply = chat(&mock, &request);
    assert_eq!(reply.events().last().unwrap().1, "[DONE]");
    let chunks = reply.json_events();
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .filter(|piece| !piece.is_empty())
        .collect();
    assert_eq!(pieces.concat(), "Mock reply to: Hi");
    assert!(pieces.iter().all(|piece| piece.chars().count() <= 3));

    // include_usage asked for, but usage is off: no usage chunk either.
    mock.set_config(MockConfig {
        usage: false,
        ..MockConfig::default()
    });
    let mut request = request;
    request["stream_options"] = json!({"include_usage": true});
    let chunks = chat(&mock, &request).json_events();
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert!(chunks.iter().all(|chunk| chunk["choices"] != json!([])));
}

#[test]
fn max_tokens_cuts_the_reply_with_finish_reason_length() {
    let mock = start(MockConfig::default());
    let body = chat(
        &mock,
        &json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "Hello"}]}),
    )
    .json();
    assert_eq!(body["choices"][0]["message"]["content"], "Mock reply");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 2);

    let chunks = chat(
        &mock,
        &json!({
            "model": "m", "stream": true, "max_completion_tokens": 3,
            "messages": [{"role": "user", "content": "Hello"}]
        }),
    )
    .json_events();
    let content: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Mock reply to:");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    let body = messages(
        &mock,
        &json!({"model": "claude", "max_tokens": 1, "messages": [{"role": "user", "content": "Hello"}]}),
    )
    .json();
    assert_eq!(body["content"][0]["text"], "Mock");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["output_tokens"], 1);
}

#[test]
fn openai_tool_calls_and_tool_results() {
    let mock = start(MockConfig::default());
    let mut request = json!({
        "model": "gpt-4o",
        "tools": weather_tool_openai(),
        "messages": [{"role": "user", "content": "Weather in Paris?"}]
    });
    let body = chat(&mock, &request).json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));

    request["stream"] = json!(true);
    let chunks = chat(&mock, &request).json_events();
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["tool_calls"][0]["index"], 0);
    assert!(first["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    assert_eq!(first["tool_calls"][0]["type"], "function");
    assert_eq!(first["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(first["tool_calls"][0]["function"]["arguments"], "");
    let pieces: Vec<&str> = chunks[1..]
        .iter()
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        })
        .collect();
    assert!(pieces.len() >= 2, "arguments in several pieces: {pieces:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&pieces.concat()).unwrap(),
        arguments
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // The tool's result comes back: the mock answers with text.
    let body = chat(
        &mock,
        &json!({
            "model": "gpt-4o",
            "tools": weather_tool_openai(),
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}
            ]
        }),
    )
    .json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Tool said: 18C and sunny"
    );
}

#[test]
fn anthropic_message_has_the_reference_fields() {
    let mock = start(MockConfig::default());
    let reply = messages(
        &mock,
        &json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 100,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
        }),
    );
    assert_eq!(reply.status, 200);
    assert!(reply.header("request-id").is_some());
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4-20250514");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "Mock reply to: Hello there"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    // Input: 2 system words + (2 words + 3); output: 5 words.
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 7, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    );

    mock.set_config(MockConfig {
        usage: false,
        ..MockConfig::default()
    });
    let body = messages(
        &mock,
        &json!({"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .json();
    assert_eq!(body["usage"]["input_tokens"], 0);
    assert_eq!(body["usage"]["output_tokens"], 0);
}

#[test]
fn anthropic_checks_headers_and_max_tokens() {
    let mock = start(MockConfig::default());
    let body = json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let mut client = Client::connect(&mock);
    let reply = client.request("POST", "/v1/messages", &[("x-api-key", "k")], &body);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic-version"));

    let reply = client.request(
        "POST",
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        &body,
    );
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["type"], "authentication_error");

    let no_max_tokens =
        json!({"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let reply = client.request("POST", "/v1/messages", &ANTHROPIC_HEADERS, &no_max_tokens);
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["error"]["message"],
        "max_tokens: Field required"
    );

    // Without require_auth the key may be missing; the version is still required.
    mock.set_config(MockConfig {
        require_auth: false,
        ..MockConfig::default()
    });
    let reply = client.request(
        "POST",
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        &body,
    );
    assert_eq!(reply.status, 200);
}

#[test]
fn anthropic_stream_sends_the_events_in_order() {
    let mock = start(MockConfig::default());
    let reply = messages(
        &mock,
        &json!({
            "model": "claude", "max_tokens": 100, "stream": true,
            "messages": [{"role": "user", "content": "Hi"}]
        }),
    );
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.terminated);
    let events = reply.events();
    assert_eq!(reply.chunks.len(), events.len(), "one chunk per event");
    let names: Vec<&str> = events
        .iter()
        .map(|(name, _)| name.as_deref().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data = reply.json_events();
    for ((name, _), data) in events.iter().zip(&data) {
        assert_eq!(data["type"], name.as_deref().unwrap());
    }
    let message = &data[0]["message"];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["content"], json!([]));
    assert_eq!(message["usage"]["input_tokens"], 4);
    assert_eq!(message["usage"]["output_tokens"], 1);
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = data[3..7]
        .iter()
        .map(|event| {
            assert_eq!(event["delta"]["type"], "text_delta");
            event["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "Mock reply to: Hi");
    assert_eq!(
        data[8],
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 4}
        })
    );
}

#[test]
fn anthropic_tool_use_and_tool_results() {
    let mock = start(MockConfig::default());
    let tools = json!([{
        "name": "get_weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }]);
    let mut request = json!({
        "model": "claude", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Paris?"}]
    });
    let body = messages(&mock, &request).json();
    assert_eq!(body["stop_reason"], "tool_use");
    let block = &body["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({"city": "Paris"}));

    request["stream"] = json!(true);
    let data = messages(&mock, &request).json_events();
    assert_eq!(data[1]["content_block"]["type"], "tool_use");
    assert_eq!(data[1]["content_block"]["name"], "get_weather");
    assert_eq!(data[1]["content_block"]["input"], json!({}));
    let pieces: Vec<&str> = data
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .map(|event| {
            assert_eq!(event["delta"]["type"], "input_json_delta");
            event["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(pieces.len() >= 2);
    assert_eq!(
        serde_json::from_str::<Value>(&pieces.concat()).unwrap(),
        json!({"city": "Paris"})
    );
    let delta = data
        .iter()
        .find(|event| event["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    let body = messages(
        &mock,
        &json!({
            "model": "claude", "max_tokens": 100, "tools": tools,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [block]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": "18C"}]}
            ]
        }),
    )
    .json();
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["content"][0]["text"], "Tool said: 18C");
}

#[test]
fn error_status_answers_with_provider_errors_and_retry_after() {
    let mock = start(MockConfig {
        error_status: Some(429),
        retry_after_secs: Some(7),
        ..MockConfig::default()
    });
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let reply = chat(&mock, &request);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "requests");
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["param"], Value::Null);
    assert!(error["message"].is_string());

    let anthropic_request = json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]});
    let reply = messages(&mock, &anthropic_request);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");

    mock.set_config(MockConfig {
        error_status: Some(529),
        retry_after_secs: Some(3),
        ..MockConfig::default()
    });
    let reply = messages(&mock, &anthropic_request);
    assert_eq!(reply.status, 529);
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");

    mock.set_config(MockConfig {
        error_status: Some(500),
        retry_after_secs: Some(3),
        ..MockConfig::default()
    });
    let reply = chat(&mock, &request);
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("retry-after"), None);
    assert_eq!(reply.json()["error"]["type"], "server_error");
}

#[test]
fn fail_first_fails_only_the_first_requests() {
    let mock = start(MockConfig {
        error_status: Some(503),
        fail_first: 2,
        ..MockConfig::default()
    });
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let statuses: Vec<u16> = (0..4).map(|_| chat(&mock, &request).status).collect();
    assert_eq!(statuses, [503, 503, 200, 200]);
    // A new configuration counts again from zero.
    mock.set_config(MockConfig {
        error_status: Some(500),
        fail_first: 1,
        ..MockConfig::default()
    });
    let statuses: Vec<u16> = (0..2).map(|_| chat(&mock, &request).status).collect();
    assert_eq!(statuses, [500, 200]);
    assert_eq!(mock.requests(), 6);
}

#[test]
fn truncate_after_closes_the_stream_without_its_end() {
    let mock = start(MockConfig {
        truncate_after: Some(2),
        ..MockConfig::default()
    });
    let mut client = Client::connect(&mock);
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "one two three"}]});
    let reply = client.request(
        "POST",
        "/v1/chat/completions",
        &[OPENAI_AUTH],
        &body.to_string(),
    );
    assert_eq!(reply.status, 200);
    assert!(!reply.terminated, "no terminating chunk");
    assert!(client.closed());
    let events = reply.events();
    assert_eq!(
        events.len(),
        3,
        "the role chunk and two content chunks: {events:?}"
    );
    assert!(events.iter().all(|(_, data)| data != "[DONE]"));
    let content: String = reply
        .json_events()
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Mock reply ");

    let body = json!({"model": "claude", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let reply = messages(&mock, &body);
    assert!(!reply.terminated);
    let names: Vec<String> = reply
        .events()
        .into_iter()
        .filter_map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta"
        ]
    );
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let mock = start(MockConfig::default());
    let mut client = Client::connect(&mock);
    let plain =
        json!({"model": "m", "messages": [{"role": "user", "content": "first"}]}).to_string();
    let streamed =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "second"}]})
            .to_string();
    let first = client.request("POST", "/v1/chat/completions", &[OPENAI_AUTH], &plain);
    assert_eq!(
        first.json()["choices"][0]["message"]["content"],
        "Mock reply to: first"
    );
    let second = client.request("POST", "/v1/chat/completions", &[OPENAI_AUTH], &streamed);
    assert!(second.terminated);
    // Two pipelined requests, the second with a chunked body.
    client.send("GET", "/v1/models", &[OPENAI_AUTH], "");
    let chunked_body =
        json!({"model": "m", "messages": [{"role": "user", "content": "third"}]}).to_string();
    let (head, tail) = chunked_body.split_at(10);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nauthorization: Bearer k\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{head}\r\n{:x}\r\n{tail}\r\n0\r\n\r\n",
        head.len(),
        tail.len()
    );
    client.stream.write_all(request.as_bytes()).unwrap();
    let models = client.read_reply().json();
    assert_eq!(models["object"], "list");
    assert!(models["data"].as_array().unwrap().len() >= 2);
    let third = client.read_reply();
    assert_eq!(
        third.json()["choices"][0]["message"]["content"],
        "Mock reply to: third"
    );
    assert_eq!(mock.requests(), 4);
    // `connection: close` is honoured.
    let reply = client.request(
        "POST",
        "/v1/chat/completions",
        &[OPENAI_AUTH, ("connection", "close")],
        &plain,
    );
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn request_headers_override_the_configuration() {
    let mock = start(MockConfig {
        error_status: Some(429),
        ..MockConfig::default()
    });
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let mut client = Client::connect(&mock);
    let path = "/v1/chat/completions";
    assert_eq!(
        client.request("POST", path, &[OPENAI_AUTH], &body).status,
        429
    );
    assert_eq!(
        client
            .request(
                "POST",
                path,
                &[OPENAI_AUTH, ("x-mock-status", "200")],
                &body
            )
            .status,
        200
    );
    let reply = client.request(
        "POST",
        path,
        &[OPENAI_AUTH, ("x-mock-status", "502")],
        &body,
    );
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["type"], "server_error");

    mock.set_config(MockConfig::default());
    let started = Instant::now();
    let reply = client.request(
        "POST",
        path,
        &[OPENAI_AUTH, ("x-mock-latency-ms", "150")],
        &body,
    );
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Six events ("", "Mock ", "reply ", "to: ", "Hi", finish) and [DONE]: six gaps.
    let streamed =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Hi"}]})
            .to_string();
    let started = Instant::now();
    let reply = client.request(
        "POST",
        path,
        &[OPENAI_AUTH, ("x-mock-chunk-delay-ms", "40")],
        &streamed,
    );
    assert!(reply.terminated);
    assert_eq!(reply.events().len(), 7);
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );

    // The configured latency applies when no header overrides it.
    mock.set_config(MockConfig {
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    });
    let started = Instant::now();
    client.request("POST", path, &[OPENAI_AUTH], &body);
    assert!(started.elapsed() >= Duration::from_millis(100));
    let started = Instant::now();
    client.request(
        "POST",
        path,
        &[OPENAI_AUTH, ("x-mock-latency-ms", "0")],
        &body,
    );
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn openai_auth_unknown_paths_and_methods() {
    let mock = start(MockConfig::default());
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let mut client = Client::connect(&mock);
    let reply = client.request("POST", "/v1/chat/completions", &[], &body);
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let reply = client.request("POST", "/v1/nothing", &[OPENAI_AUTH], &body);
    assert_eq!(reply.status, 404);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing"));
    assert_eq!(
        client
            .request("GET", "/v1/chat/completions", &[OPENAI_AUTH], "")
            .status,
        405
    );
    let reply = client.request("POST", "/v1/chat/completions", &[OPENAI_AUTH], "{not json");
    assert_eq!(reply.status, 400);
    let reply = client.request(
        "POST",
        "/v1/chat/completions",
        &[OPENAI_AUTH],
        r#"{"model": "m"}"#,
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "messages");
    assert_eq!(mock.requests(), 5);
    assert_eq!(mock.last_request(), Some(json!({"model": "m"})));

    mock.set_config(MockConfig {
        require_auth: false,
        ..MockConfig::default()
    });
    assert_eq!(
        client
            .request("POST", "/v1/chat/completions", &[], &body)
            .status,
        200
    );
}

#[test]
fn embeddings_are_deterministic_in_both_encodings() {
    let mock = start(MockConfig::default());
    let mut client = Client::connect(&mock);
    let request =
        json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"]}).to_string();
    let body = client
        .request("POST", "/v1/embeddings", &[OPENAI_AUTH], &request)
        .json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["object"], "embedding");
    assert_eq!(data[1]["index"], 1);
    let first: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_f64().unwrap())
        .collect();
    assert_eq!(first.len(), 8);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    let single =
        json!({"model": "e", "input": "hello world", "encoding_format": "base64"}).to_string();
    let body = client
        .request("POST", "/v1/embeddings", &[OPENAI_AUTH], &single)
        .json();
    let encoded = body["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(encoded.len(), 44, "32 bytes in base64");
    let again = json!({"model": "e", "input": "hello world"}).to_string();
    let body = client
        .request("POST", "/v1/embeddings", &[OPENAI_AUTH], &again)
        .json();
    let floats: Vec<f64> = body["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_f64().unwrap())
        .collect();
    assert_eq!(floats, first);
}

#[test]
fn models_list_in_each_providers_shape() {
    let mock = start(MockConfig::default());
    let mut client = Client::connect(&mock);
    let openai = client
        .request("GET", "/v1/models", &[OPENAI_AUTH], "")
        .json();
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["object"], "model");
    let anthropic = client
        .request("GET", "/v1/models", &ANTHROPIC_HEADERS, "")
        .json();
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["data"][0]["type"], "model");
    assert!(anthropic["data"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("claude-"));
}

#[test]
fn dropping_the_mock_closes_its_listener_and_connections() {
    let mock = start(MockConfig::default());
    let addr = mock.addr();
    let mut client = Client::connect(&mock);
    assert_eq!(
        client
            .request("GET", "/v1/models", &[OPENAI_AUTH], "")
            .status,
        200
    );
    drop(mock);
    assert!(client.closed());
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn the_binary_reports_its_address_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-llm"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-auth",
            "--reply",
            "From the binary",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock-llm");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("\"content\":\"From the binary\""));
}
