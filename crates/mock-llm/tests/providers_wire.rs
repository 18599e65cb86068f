//! The mock's Gemini and Bedrock formats over real sockets, and round trips through
//! `hypergate-ai`'s translators: a canonical (OpenAI) request is translated, sent to
//! the mock, and its answer (JSON, SSE or AWS event stream) translated back.
//!
//! Bedrock requests are signed with `hypergate_ai::bedrock::sign` (the gateway's
//! signer, `aws-sigv4`) and checked by the mock's own SigV4 implementation.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "tests of the mock provider, not part of the gateway"
)]

use hypergate_ai::bedrock::{
    converse_response_to_openai, openai_request_to_converse, sign, ConverseStreamToOpenAi,
    EventStreamDecoder, SignInput,
};
use hypergate_ai::gemini::{
    gemini_response_to_openai, openai_request_to_gemini, GeminiStreamToOpenAi,
};
use hypergate_ai::sse::SseParser;
use hypergate_ai::translate::{provider_error_message, Usage};
use hypergate_mock_llm::{MockConfig, MockLlm};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

/// A response as the client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
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
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Sends one request on a new connection (`connection: close`) and reads the reply.
fn send(
    mock: &MockLlm,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(mock.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(head_len) = response.parse(raw).unwrap() else {
        panic!("incomplete response head");
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut reply = Reply {
        status: response.code.unwrap(),
        headers,
        body: Vec::new(),
        chunks: Vec::new(),
        terminated: false,
    };
    let mut rest = &raw[head_len..];
    if reply.header("transfer-encoding") != Some("chunked") {
        reply.body = rest.to_vec();
        return reply;
    }
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            reply.terminated = true;
            break;
        }
        if rest.len() < line_end + 2 + size + 2 {
            break;
        }
        let chunk = rest[line_end + 2..line_end + 2 + size].to_vec();
        reply.body.extend_from_slice(&chunk);
        reply.chunks.push(chunk);
        rest = &rest[line_end + 2 + size + 2..];
    }
    reply
}

fn start(config: MockConfig) -> MockLlm {
    MockLlm::start("127.0.0.1:0", config).expect("start mock")
}

fn canonical_request() -> Value {
    json!({
        "model": "ignored-the-url-names-it",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"}
        ]
    })
}

fn weather_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": false
            }
        }
    }])
}

// ---------------------------------------------------------------------------
// Gemini.

const GEMINI_JSON: &str = "/v1beta/models/gemini-2.0-flash:generateContent";
const GEMINI_SSE: &str = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse";
const GEMINI_KEY: (&str, &str) = ("x-goog-api-key", "test-key");

fn gemini(mock: &MockLlm, target: &str, canonical: &Value) -> Reply {
    let body = openai_request_to_gemini(canonical).expect("translatable");
    send(
        mock,
        "POST",
        target,
        &[GEMINI_KEY, ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Translates a Gemini SSE body chunk by chunk: (chunks, translator).
fn gemini_stream(reply: &Reply) -> (Vec<Value>, GeminiStreamToOpenAi) {
    let mut parser = SseParser::new(1 << 20);
    let mut translator = GeminiStreamToOpenAi::new("gen-1", 1, "gemini-2.0-flash");
    let mut chunks = Vec::new();
    for chunk in &reply.chunks {
        parser.push(chunk);
        while let Some(event) = parser.next_event().unwrap() {
            chunks.extend(translator.push(&event).unwrap());
        }
    }
    assert!(!parser.finish(), "the stream ended between events");
    (chunks, translator)
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn finish_reasons(chunks: &[Value]) -> Vec<&str> {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["finish_reason"].as_str())
        .collect()
}

#[test]
fn gemini_json_round_trip() {
    let mock = start(MockConfig::default());
    let reply = gemini(&mock, GEMINI_JSON, &canonical_request());
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["candidates"][0]["content"]["role"], "model");
    assert_eq!(body["modelVersion"], "gemini-2.0-flash");
    // System "Be brief." (2 words) + one content of 2 words + 3.
    assert_eq!(body["usageMetadata"]["promptTokenCount"], 7);
    let completion = gemini_response_to_openai(&body, "gen-1", 1, "gemini-2.0-flash");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "Mock reply to: Hello there"
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["prompt_tokens"], 7);
    assert_eq!(completion["usage"]["completion_tokens"], 5);
    assert_eq!(completion["usage"]["total_tokens"], 12);
    let logged = &mock.requests_log()[0];
    assert_eq!(
        logged.2["systemInstruction"]["parts"][0]["text"],
        "Be brief."
    );
}

#[test]
fn gemini_stream_translates_to_the_same_text_and_usage() {
    let mock = start(MockConfig::default());
    let json = gemini(&mock, GEMINI_JSON, &canonical_request()).json();
    let reply = gemini(&mock, GEMINI_SSE, &canonical_request());
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.terminated);
    let (chunks, translator) = gemini_stream(&reply);
    assert_eq!(
        streamed_text(&chunks),
        json["candidates"][0]["content"]["parts"][0]["text"]
    );
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    assert!(translator.finished());
    assert_eq!(
        translator.usage(),
        Usage::from_gemini(&json["usageMetadata"])
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        Usage::from_openai(&usage_chunk["usage"]),
        translator.usage()
    );
    // One SSE event per chunk: "Mock ", "reply ", "to: ", "Hello ", "there", finish.
    assert_eq!(reply.chunks.len(), 6);
}

#[test]
fn gemini_streams_only_as_sse_and_wants_a_key() {
    let mock = start(MockConfig::default());
    let reply = gemini(
        &mock,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        &canonical_request(),
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["status"], "INVALID_ARGUMENT");
    assert!(provider_error_message(&reply.json())
        .unwrap()
        .contains("alt=sse"));

    let body = openai_request_to_gemini(&canonical_request())
        .unwrap()
        .to_string();
    let no_key = send(&mock, "POST", GEMINI_JSON, &[], body.as_bytes());
    assert_eq!(no_key.status, 403);
    assert_eq!(no_key.json()["error"]["code"], 403);
    assert_eq!(no_key.json()["error"]["status"], "PERMISSION_DENIED");
    let query_key = send(
        &mock,
        "POST",
        &format!("{GEMINI_SSE}&key=test-key"),
        &[],
        body.as_bytes(),
    );
    assert_eq!(query_key.status, 200);

    let injected = send(
        &mock,
        "POST",
        GEMINI_JSON,
        &[GEMINI_KEY, ("x-mock-status", "429")],
        body.as_bytes(),
    );
    assert_eq!(injected.status, 429);
    assert_eq!(injected.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        provider_error_message(&injected.json()).as_deref(),
        Some("Resource has been exhausted (e.g. check quota).")
    );
}

#[test]
fn gemini_tool_calls_round_trip() {
    let mock = start(MockConfig::default());
    let mut canonical = canonical_request();
    canonical["tools"] = weather_tools();
    let reply = gemini(&mock, GEMINI_JSON, &canonical);
    let logged = &mock.requests_log()[0].2;
    assert!(logged["tools"][0]["functionDeclarations"][0]["parameters"]
        .get("additionalProperties")
        .is_none());
    let completion = gemini_response_to_openai(&reply.json(), "gen-7", 1, "gemini-2.0-flash");
    let message = &completion["choices"][0]["message"];
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "call_gen-7_0", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );

    let (chunks, _) = gemini_stream(&gemini(&mock, GEMINI_SSE, &canonical));
    let call = chunks
        .iter()
        .find_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].get(0))
        .unwrap();
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(finish_reasons(&chunks), ["tool_calls"]);

    // The tool's answer goes back as a functionResponse named after the call.
    let messages = canonical["messages"].as_array_mut().unwrap();
    messages.push(message.clone());
    messages.push(json!({"role": "tool", "tool_call_id": "call_gen-7_0", "content": "21 degrees"}));
    let reply = gemini(&mock, GEMINI_JSON, &canonical);
    let completion = gemini_response_to_openai(&reply.json(), "gen-8", 1, "gemini-2.0-flash");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "Tool said: 21 degrees"
    );
    let logged = &mock.requests_log()[2].2;
    assert_eq!(
        logged["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"content": "21 degrees"}})
    );
}

#[test]
fn gemini_safety_and_max_tokens() {
    let mock = start(MockConfig::default());
    let unsafe_request =
        json!({"messages": [{"role": "user", "content": "say unsafe-content now"}]});
    let body = gemini(&mock, GEMINI_JSON, &unsafe_request).json();
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["finishReason"], "SAFETY");
    assert!(candidate["safetyRatings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rating| rating["blocked"] == true));
    let completion = gemini_response_to_openai(&body, "gen-1", 1, "m");
    assert_eq!(completion["choices"][0]["finish_reason"], "content_filter");
    let (chunks, translator) = gemini_stream(&gemini(&mock, GEMINI_SSE, &unsafe_request));
    assert_eq!(finish_reasons(&chunks), ["content_filter"]);
    assert_eq!(streamed_text(&chunks), "");
    assert!(translator.finished());

    let mut capped = canonical_request();
    capped["max_tokens"] = json!(2);
    let body = gemini(&mock, GEMINI_JSON, &capped).json();
    let completion = gemini_response_to_openai(&body, "gen-1", 1, "m");
    assert_eq!(completion["choices"][0]["message"]["content"], "Mock reply");
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
}

#[test]
fn gemini_truncated_stream_is_not_finished() {
    let mock = start(MockConfig {
        truncate_after: Some(2),
        ..MockConfig::default()
    });
    let reply = gemini(&mock, GEMINI_SSE, &canonical_request());
    assert!(!reply.terminated);
    let (chunks, translator) = gemini_stream(&reply);
    assert_eq!(streamed_text(&chunks), "Mock reply ");
    assert!(!translator.finished());
}

// ---------------------------------------------------------------------------
// Bedrock.

const CONVERSE: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
const CONVERSE_STREAM: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream";
const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";

/// The credentials the mock expects by default.
fn credentials() -> (&'static str, &'static str, &'static str) {
    ("AKIDMOCK", "mock-secret", "us-east-1")
}

/// Signs a POST of `body` to `path` and returns every header to send.
fn signed_headers(path: &str, body: &[u8], secret: &str) -> Vec<(String, String)> {
    let (access_key_id, _, region) = credentials();
    let mut headers = vec![
        ("host".to_owned(), HOST.to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    let to_sign: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let added = sign(SignInput {
        method: "POST",
        host: HOST,
        path_and_query: path,
        headers: &to_sign,
        body,
        region,
        service: "bedrock",
        access_key_id,
        secret_access_key: secret,
        session_token: Some("session-token"),
        time: SystemTime::now(),
    })
    .expect("signed");
    headers.extend(added);
    headers
}

fn send_signed(mock: &MockLlm, path: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    send(mock, "POST", path, &headers, body)
}

fn converse(mock: &MockLlm, path: &str, canonical: &Value) -> Reply {
    let body = openai_request_to_converse(canonical)
        .expect("translatable")
        .to_string();
    let headers = signed_headers(path, body.as_bytes(), credentials().1);
    send_signed(mock, path, &headers, body.as_bytes())
}

/// Decodes and translates an event-stream body chunk by chunk.
fn converse_stream(reply: &Reply) -> (Vec<Value>, ConverseStreamToOpenAi, bool) {
    let mut decoder = EventStreamDecoder::new();
    let mut translator = ConverseStreamToOpenAi::new("chatcmpl-1", 1, "claude");
    let mut chunks = Vec::new();
    for chunk in &reply.chunks {
        decoder.push(chunk);
        let mut messages = 0;
        while let Some(message) = decoder.next_message().unwrap() {
            chunks.extend(translator.push_message(&message).unwrap());
            messages += 1;
        }
        assert_eq!(messages, 1, "one event-stream message per HTTP chunk");
    }
    let clean_end = !decoder.finish();
    (chunks, translator, clean_end)
}

#[test]
fn bedrock_json_round_trip() {
    let mock = start(MockConfig::default());
    let reply = converse(&mock, CONVERSE, &canonical_request());
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.header("x-amzn-requestid").is_some());
    let body = reply.json();
    assert_eq!(body["stopReason"], "end_turn");
    assert_eq!(body["usage"]["inputTokens"], 7);
    let completion = converse_response_to_openai(&body, "chatcmpl-1", 1, "claude");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "Mock reply to: Hello there"
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["prompt_tokens"], 7);
    assert_eq!(completion["usage"]["completion_tokens"], 5);
    let logged = &mock.requests_log()[0];
    assert_eq!(logged.0, CONVERSE);
    assert_eq!(logged.2["system"], json!([{"text": "Be brief."}]));
}

#[test]
fn bedrock_stream_translates_to_the_same_text_and_usage() {
    let mock = start(MockConfig::default());
    let json = converse(&mock, CONVERSE, &canonical_request()).json();
    let reply = converse(&mock, CONVERSE_STREAM, &canonical_request());
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    assert!(reply.terminated);
    let (chunks, translator, clean_end) = converse_stream(&reply);
    assert!(clean_end);
    assert!(translator.finished());
    assert_eq!(
        streamed_text(&chunks),
        json["output"]["message"]["content"][0]["text"]
    );
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    assert_eq!(translator.usage(), Usage::from_converse(&json["usage"]));
}

#[test]
fn bedrock_tool_use_round_trip() {
    let mock = start(MockConfig::default());
    let mut canonical = canonical_request();
    canonical["tools"] = weather_tools();
    canonical["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let body = converse(&mock, CONVERSE, &canonical).json();
    let completion = converse_response_to_openai(&body, "chatcmpl-1", 1, "claude");
    let message = completion["choices"][0]["message"].clone();
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    let call = &message["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("tooluse_"));
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");

    let (chunks, translator, _) = converse_stream(&converse(&mock, CONVERSE_STREAM, &canonical));
    assert!(translator.finished());
    let arguments: String = chunks
        .iter()
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        })
        .collect();
    assert_eq!(arguments, "{\"city\":\"Paris\"}");
    assert_eq!(finish_reasons(&chunks), ["tool_calls"]);

    let id = call["id"].as_str().unwrap().to_owned();
    let messages = canonical["messages"].as_array_mut().unwrap();
    messages.push(message);
    messages.push(json!({"role": "tool", "tool_call_id": id, "content": "21 degrees"}));
    let body = converse(&mock, CONVERSE, &canonical).json();
    assert_eq!(
        body["output"]["message"]["content"][0]["text"],
        "Tool said: 21 degrees"
    );
}

#[test]
fn bedrock_sigv4_is_checked() {
    let mock = start(MockConfig::default());
    let body = openai_request_to_converse(&canonical_request())
        .unwrap()
        .to_string();
    let headers = signed_headers(CONVERSE, body.as_bytes(), credentials().1);
    assert_eq!(
        send_signed(&mock, CONVERSE, &headers, body.as_bytes()).status,
        200
    );

    let refused = |reply: Reply, error_type: &str| {
        assert_eq!(reply.status, 403);
        assert!(
            reply
                .header("x-amzn-errortype")
                .is_some_and(|value| value.starts_with(error_type)),
            "{:?}",
            reply.header("x-amzn-errortype")
        );
        provider_error_message(&reply.json()).unwrap()
    };
    let changed_body = body.replace("Hello", "Jello");
    let message = refused(
        send_signed(&mock, CONVERSE, &headers, changed_body.as_bytes()),
        "InvalidSignatureException",
    );
    assert!(message.starts_with("The request signature we calculated does not match"));

    let mut changed_header = headers.clone();
    changed_header[1].1 = "application/json; charset=utf-8".to_owned();
    refused(
        send_signed(&mock, CONVERSE, &changed_header, body.as_bytes()),
        "InvalidSignatureException",
    );

    let wrong_secret = signed_headers(CONVERSE, body.as_bytes(), "not-the-secret");
    refused(
        send_signed(&mock, CONVERSE, &wrong_secret, body.as_bytes()),
        "InvalidSignatureException",
    );

    let other_path = signed_headers(CONVERSE_STREAM, body.as_bytes(), credentials().1);
    refused(
        send_signed(&mock, CONVERSE, &other_path, body.as_bytes()),
        "InvalidSignatureException",
    );

    let unsigned = send(
        &mock,
        "POST",
        CONVERSE,
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(
        refused(unsigned, "MissingAuthenticationTokenException"),
        "Missing Authentication Token"
    );

    // Other credentials configured: the default ones no longer pass.
    mock.set_config(MockConfig {
        aws_access_key_id: "AKIDOTHER".to_owned(),
        ..MockConfig::default()
    });
    refused(
        send_signed(&mock, CONVERSE, &headers, body.as_bytes()),
        "UnrecognizedClientException",
    );
    mock.set_config(MockConfig {
        require_auth: false,
        ..MockConfig::default()
    });
    assert_eq!(
        send(&mock, "POST", CONVERSE, &[], body.as_bytes()).status,
        200
    );
}

#[test]
fn bedrock_errors_and_truncation() {
    let mock = start(MockConfig {
        error_status: Some(429),
        fail_first: 1,
        ..MockConfig::default()
    });
    let reply = converse(&mock, CONVERSE, &canonical_request());
    assert_eq!(reply.status, 429);
    assert!(reply
        .header("x-amzn-errortype")
        .is_some_and(|value| value.starts_with("ThrottlingException")));
    assert_eq!(
        provider_error_message(&reply.json()).as_deref(),
        Some("Too many requests, please wait before trying again.")
    );
    assert_eq!(converse(&mock, CONVERSE, &canonical_request()).status, 200);

    let invalid = b"{\"system\": []}";
    let headers = signed_headers(CONVERSE, invalid, credentials().1);
    let reply = send_signed(&mock, CONVERSE, &headers, invalid);
    assert_eq!(reply.status, 400);
    assert!(reply
        .header("x-amzn-errortype")
        .is_some_and(|value| value.starts_with("ValidationException")));

    mock.set_config(MockConfig {
        truncate_after: Some(2),
        ..MockConfig::default()
    });
    let reply = converse(&mock, CONVERSE_STREAM, &canonical_request());
    assert!(!reply.terminated);
    let (chunks, translator, clean_end) = converse_stream(&reply);
    assert!(clean_end, "cut between messages");
    assert_eq!(streamed_text(&chunks), "Mock reply ");
    assert!(!translator.finished());
}
