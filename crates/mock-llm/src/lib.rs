//! A mock LLM provider that speaks the real OpenAI, Anthropic, Google Gemini and
//! Amazon Bedrock (Converse) wire formats.
//!
//! Hypergate's integration tests and quickstart demo run it in-process
//! ([`MockLlm::start`] on port 0), and the benchmark runs it as the `mock-llm`
//! binary. It answers deterministically, so tests can assert on what comes back,
//! and it has knobs ([`MockConfig`]) for latency, slow streams, injected errors
//! and streams cut short.
//!
//! Endpoints (matched on the path suffix, so a base URL with or without `/v1` works):
//! - `POST …/chat/completions`: OpenAI Chat Completions, JSON (`chat.completion`)
//!   or SSE (`chat.completion.chunk` events, then `data: [DONE]`), with tool calls.
//! - `POST …/embeddings`: OpenAI embeddings (floats or `encoding_format: "base64"`).
//! - `GET …/models`: a model list, in Anthropic's shape when the request carries
//!   `anthropic-version`, OpenAI's otherwise.
//! - `POST …/messages`: Anthropic Messages, JSON (`message`) or SSE (named events
//!   `message_start` … `message_stop`), with tool use.
//! - `POST …/messages/count_tokens`: Anthropic's token count (`input_tokens`).
//! - `POST …/responses`: OpenAI Responses, JSON (`response`) or its named SSE
//!   events, read and written through `hypergate-ai`'s Responses translation;
//!   answers are kept (the last 256, unless `store: false`) for
//!   `previous_response_id` and `GET` / `DELETE …/responses/{id}`.
//! - `POST …/models/{model}:generateContent` and `…:streamGenerateContent?alt=sse`:
//!   Gemini, JSON or SSE (one `GenerateContentResponse` per event; without `alt=sse`
//!   the stream answers 400), with function calls. Auth: `x-goog-api-key` or the `key`
//!   query parameter. A last user text containing `unsafe-content` is answered with
//!   `finishReason: SAFETY` and blocking `safetyRatings`.
//! - `POST …/model/{modelId}/converse` and `…/converse-stream`: Bedrock Converse, JSON
//!   or a binary AWS event stream (`application/vnd.amazon.eventstream`), with tool
//!   use. Auth: a SigV4 `Authorization` header, which the mock recomputes from the
//!   request it received with `MockConfig::aws_*` (service `bedrock`); a mismatch is
//!   answered 403 `InvalidSignatureException`, as AWS does.
//!
//! How it answers:
//! 1. The reply is `MockConfig::reply` if set, else `"Mock reply to: <last user
//!    text>"`, or `"Tool said: <result>"` when the conversation ends with a tool
//!    result. When the request offers tools and ends with a user's text, the answer
//!    is instead one call to the first tool (or the one `tool_choice` names), with
//!    arguments built from its schema (every required string property gets `"Paris"`).
//! 2. Tokens are whitespace-separated words: the prompt costs the words of every
//!    message text (and Anthropic's `system`) plus 3 per message; the completion
//!    costs the words of the reply (of the tool name and arguments for a tool call).
//!    `max_tokens` / `max_completion_tokens` cap the reply to that many words and
//!    the answer ends with `length` / `max_tokens`.
//! 3. Streams are cut into one piece per word (or `chunk_chars` characters); tool
//!    arguments are streamed in two or more pieces.
//!
//! Request headers override the configuration for one request:
//! `x-mock-latency-ms`, `x-mock-chunk-delay-ms` and `x-mock-status` (a status of
//! 400-599 answers with that error; anything else answers normally, ignoring the
//! configured error).
//!
//! The server is a plain demo server: an accept thread and one thread per
//! connection, blocking sockets with `TCP_NODELAY`, HTTP/1.1 keep-alive. Modules:
//! - `http`: request reading and response writing (JSON and chunked SSE).
//! - `server`: the accept loop, per-connection loop, routing, auth and fault injection.
//! - `openai`, `anthropic`, `gemini`, `bedrock`: the wire formats.
//! - `sigv4`: the mock's own SigV4 verification (written apart from the gateway's
//!   signer, so that a mistake in one is not hidden by the same mistake in the other).
//! - `content`: the deterministic text, token counts, ids and embeddings they all use.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "a mock provider for tests and the demo, not part of the gateway"
)]

mod anthropic;
mod bedrock;
mod content;
mod gemini;
mod http;
mod openai;
mod server;
mod sigv4;

use serde_json::Value;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use server::Shared;

/// A request as the mock logged it: path (without the query), headers (names
/// lowercased, in order) and body (`Value::Null` when it is empty or not JSON).
pub type LoggedRequest = (String, Vec<(String, String)>, Value);

/// How many requests [`MockLlm::requests_log`] keeps.
pub const REQUEST_LOG_CAPACITY: usize = 256;

/// Every knob of the mock. [`MockConfig::default`] answers promptly and correctly,
/// with usage, and requires an API key header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    /// Wait this long before writing each response head (errors included).
    /// Overridden per request by `x-mock-latency-ms`.
    pub latency: Duration,
    /// Wait this long between two SSE events. Overridden per request by
    /// `x-mock-chunk-delay-ms`.
    pub chunk_delay: Duration,
    /// Answer requests with this status and the provider's error JSON
    /// (OpenAI's on OpenAI paths, Anthropic's on `/messages`, Google's on Gemini
    /// paths, Bedrock's with `x-amzn-errortype` on Converse paths). Only 400-599 take
    /// effect. Overridden per request by `x-mock-status`.
    pub error_status: Option<u16>,
    /// Send `Retry-After: <seconds>` with 429, 503 and 529 errors.
    pub retry_after_secs: Option<u64>,
    /// With `error_status` set, fail only the first this many requests (counted
    /// from the last [`MockLlm::set_config`]); 0 fails every request.
    pub fail_first: u32,
    /// Streaming: after this many content events (text or tool-argument deltas),
    /// close the connection without the final events and without the
    /// terminating chunk.
    pub truncate_after: Option<usize>,
    /// Report usage. OpenAI: the `usage` object of non-streaming answers and, when
    /// the request sets `stream_options.include_usage`, the final usage chunk.
    /// Anthropic always has usage in its format, so with this off every count is 0.
    /// Embeddings always report usage.
    pub usage: bool,
    /// A fixed reply text, instead of `"Mock reply to: <last user text>"` and
    /// `"Tool said: <result>"`. Tool calls are still made when tools are offered.
    pub reply: Option<String>,
    /// Streaming: cut the reply into pieces of this many characters; 0 sends one
    /// word and the whitespace after it per event.
    pub chunk_chars: usize,
    /// The `model` reported in answers; by default the requested model.
    pub model_label: Option<String>,
    /// Answer 401 when a request lacks its API key (`Authorization` for OpenAI,
    /// `x-api-key` for Anthropic; Gemini answers 403 without `x-goog-api-key` or
    /// `key`). Any key is accepted. For Bedrock, check the SigV4 signature against
    /// the `aws_*` fields below (403 when it is missing or wrong).
    pub require_auth: bool,
    /// Bedrock: the access key id a SigV4 signature must use.
    pub aws_access_key_id: String,
    /// Bedrock: the secret access key the mock signs with to check a signature.
    pub aws_secret_access_key: String,
    /// Bedrock: the region a signature's credential scope must name.
    pub aws_region: String,
}

/// The default [`MockConfig::aws_access_key_id`].
pub const DEFAULT_AWS_ACCESS_KEY_ID: &str = "AKIDMOCK";
/// The default [`MockConfig::aws_secret_access_key`].
pub const DEFAULT_AWS_SECRET_ACCESS_KEY: &str = "mock-secret";
/// The default [`MockConfig::aws_region`].
pub const DEFAULT_AWS_REGION: &str = "us-east-1";

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            error_status: None,
            retry_after_secs: None,
            fail_first: 0,
            truncate_after: None,
            usage: true,
            reply: None,
            chunk_chars: 0,
            model_label: None,
            require_auth: true,
            aws_access_key_id: DEFAULT_AWS_ACCESS_KEY_ID.to_owned(),
            aws_secret_access_key: DEFAULT_AWS_SECRET_ACCESS_KEY.to_owned(),
            aws_region: DEFAULT_AWS_REGION.to_owned(),
        }
    }
}

/// A running mock provider. Dropping it stops accepting connections and closes
/// the open ones.
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl MockLlm {
    /// Binds `addr` (port 0 picks a free port, see [`MockLlm::addr`]) and starts serving.
    pub fn start(addr: &str, config: MockConfig) -> std::io::Result<MockLlm> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let accept_thread = thread::Builder::new()
            .name("mock-llm-accept".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || server::accept_loop(&listener, &shared)
            })?;
        Ok(MockLlm {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the configuration; requests that arrive from now on use it, and
    /// the `fail_first` count starts again from zero.
    pub fn set_config(&self, config: MockConfig) {
        self.shared.set_config(config);
    }

    /// How many requests have arrived (every path, errors included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The last request body that was valid JSON.
    pub fn last_request(&self) -> Option<Value> {
        self.shared.last_json()
    }

    /// The last [`REQUEST_LOG_CAPACITY`] requests, oldest first.
    pub fn requests_log(&self) -> Vec<LoggedRequest> {
        self.shared.log()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept thread, which sees the flag and returns.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(accept_thread) = self.accept_thread.take() {
                let _ = accept_thread.join();
            }
        }
        self.shared.close_connections();
    }
}
