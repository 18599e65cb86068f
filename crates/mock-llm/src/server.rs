//! The server: accept loop, per-connection loop, and the one function that
//! decides each answer.
//!
//! Each accepted connection gets its own thread, which loops: read a request,
//! [`dispatch`] it, sleep the latency, write the response, and go on while the
//! connection is kept alive. [`dispatch`] reads the request top to bottom:
//! 1. count and log it (path, headers, JSON body);
//! 2. route on the path suffix (404 for anything else) and check the method (405);
//! 3. check the provider's auth (401, and 400 without `anthropic-version`; Gemini
//!    403 without a key; Bedrock's SigV4 signature, 403 when missing or wrong);
//! 4. inject an error if `x-mock-status` or `MockConfig::error_status` asks for one;
//! 5. hand the request to the provider module that builds the answer.
//!
//! [`Shared`] is what the connection threads and the [`crate::MockLlm`] handle
//! share: the configuration, the counters, the request log, and the open
//! connections (so that dropping the handle closes them).

use crate::http::{read_request, write_response, ReadError, Request, Response, Written};
use crate::sigv4::{self, Expected};
use crate::{anthropic, bedrock, gemini, openai, LoggedRequest, MockConfig, REQUEST_LOG_CAPACITY};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::Duration;

/// State shared by the connection threads and the [`crate::MockLlm`] handle.
pub(crate) struct Shared {
    /// The current configuration; each request takes a snapshot.
    config: RwLock<Arc<MockConfig>>,
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests failed on purpose since the last configuration change (for `fail_first`).
    injected_failures: AtomicU32,
    /// The request log and the last JSON body.
    log: Mutex<RequestLog>,
    /// Open connections, by number, so that shutting down can close them.
    connections: Mutex<HashMap<u64, TcpStream>>,
    /// Set when the handle is dropped.
    pub shutdown: AtomicBool,
    /// Stored Responses API answers (the OpenAI API keeps them): the
    /// `response` object and the chat messages of its conversation, newest
    /// last, at most [`openai::STORED_RESPONSES`].
    pub stored: Mutex<VecDeque<(String, Value, Vec<Value>)>>,
}

/// The bounded request log.
#[derive(Default)]
struct RequestLog {
    entries: VecDeque<LoggedRequest>,
    last_json: Option<Value>,
}

impl Shared {
    /// State for a server starting with `config`.
    pub fn new(config: MockConfig) -> Shared {
        Shared {
            config: RwLock::new(Arc::new(config)),
            requests: AtomicU64::new(0),
            stored: Mutex::new(VecDeque::new()),
            injected_failures: AtomicU32::new(0),
            log: Mutex::new(RequestLog::default()),
            connections: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
        }
    }

    /// Replaces the configuration and restarts the `fail_first` count.
    pub fn set_config(&self, config: MockConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        self.injected_failures.store(0, Ordering::SeqCst);
    }

    /// The last JSON request body.
    pub fn last_json(&self) -> Option<Value> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_json
            .clone()
    }

    /// A copy of the request log, oldest first.
    pub fn log(&self) -> Vec<LoggedRequest> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.entries.iter().cloned().collect()
    }

    /// Closes every open connection.
    pub fn close_connections(&self) {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for stream in connections.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn config(&self) -> Arc<MockConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn record(&self, request: &Request, json: Option<&Value>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.entries.len() == REQUEST_LOG_CAPACITY {
            log.entries.pop_front();
        }
        let body = json.cloned().unwrap_or(Value::Null);
        log.entries
            .push_back((request.path.clone(), request.headers.clone(), body));
        if let Some(json) = json {
            log.last_json = Some(json.clone());
        }
    }

    /// The error status to inject into this request, if any.
    fn injected_status(&self, request: &Request, config: &MockConfig) -> Option<u16> {
        let is_error = |status: u16| (400..=599).contains(&status);
        if let Some(status) = request
            .header("x-mock-status")
            .and_then(|value| value.trim().parse::<u16>().ok())
        {
            return is_error(status).then_some(status);
        }
        let status = config.error_status.filter(|&status| is_error(status))?;
        if config.fail_first == 0 {
            return Some(status);
        }
        self.injected_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |failed| {
                (failed < config.fail_first).then_some(failed + 1)
            })
            .ok()
            .map(|_| status)
    }
}

/// Accepts connections until [`Shared::shutdown`] is set, one thread each.
pub(crate) fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_connection = 0u64;
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // Out of descriptors or similar: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = next_connection;
        next_connection += 1;
        if let Ok(registered) = stream.try_clone() {
            let mut connections = shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            connections.insert(id, registered);
        }
        let connection_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("mock-llm-conn".to_owned())
            .spawn(move || {
                let shared = connection_shared;
                serve_connection(stream, &shared);
                let mut connections = shared
                    .connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                connections.remove(&id);
            });
        if spawned.is_err() {
            let mut connections = shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            connections.remove(&id);
        }
    }
}

/// Serves requests on one connection until it closes or must be closed.
fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(8 * 1024);
    loop {
        let request = match read_request(&mut stream, &mut buffer) {
            Ok(request) => request,
            Err(ReadError::Closed) => return,
            Err(ReadError::Malformed(why)) => {
                let response = openai::error(400, why, "invalid_request_error", None);
                let _ = write_response(&mut stream, &response, false, Duration::ZERO, None);
                return;
            }
            Err(ReadError::TooLarge) => {
                let response =
                    openai::error(413, "request too large", "invalid_request_error", None);
                let _ = write_response(&mut stream, &response, false, Duration::ZERO, None);
                return;
            }
        };
        let answer = dispatch(&request, shared);
        if !answer.latency.is_zero() {
            thread::sleep(answer.latency);
        }
        let written = write_response(
            &mut stream,
            &answer.response,
            request.keep_alive,
            answer.chunk_delay,
            answer.truncate_after,
        );
        match written {
            Ok(Written::Complete) if request.keep_alive => {}
            Ok(Written::Truncated) => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            _ => return,
        }
    }
}

/// A response and how to send it.
struct Answer {
    response: Response,
    latency: Duration,
    chunk_delay: Duration,
    truncate_after: Option<usize>,
}

/// The endpoints the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    ChatCompletions,
    Embeddings,
    Models,
    Messages,
    /// Anthropic `…/messages/count_tokens`.
    CountTokens,
    /// OpenAI `…/responses`.
    Responses,
    /// OpenAI `GET` / `DELETE …/responses/{id}`.
    StoredResponse,
    /// Gemini `…/models/{model}:generateContent`.
    GenerateContent,
    /// Gemini `…/models/{model}:streamGenerateContent`.
    StreamGenerateContent,
    /// Bedrock `…/model/{modelId}/converse`.
    Converse,
    /// Bedrock `…/model/{modelId}/converse-stream`.
    ConverseStream,
}

impl Endpoint {
    /// The endpoint a path ends with.
    fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.trim_end_matches('/');
        if path.contains("/responses/") {
            return Some(Endpoint::StoredResponse);
        }
        if path.contains("/models/") {
            if path.ends_with(":generateContent") {
                return Some(Endpoint::GenerateContent);
            }
            if path.ends_with(":streamGenerateContent") {
                return Some(Endpoint::StreamGenerateContent);
            }
        }
        if path.contains("/model/") {
            if path.ends_with("/converse") {
                return Some(Endpoint::Converse);
            }
            if path.ends_with("/converse-stream") {
                return Some(Endpoint::ConverseStream);
            }
        }
        [
            ("/chat/completions", Endpoint::ChatCompletions),
            ("/messages/count_tokens", Endpoint::CountTokens),
            ("/responses", Endpoint::Responses),
            ("/embeddings", Endpoint::Embeddings),
            ("/models", Endpoint::Models),
            ("/messages", Endpoint::Messages),
        ]
        .into_iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, endpoint)| endpoint)
    }

    fn allows(self, method: &str) -> bool {
        match self {
            Endpoint::Models => method == "GET",
            Endpoint::StoredResponse => matches!(method, "GET" | "DELETE"),
            _ => method == "POST",
        }
    }

    /// Whose wire format the endpoint speaks; `None` for the shared `…/models`.
    fn provider(self) -> Option<Provider> {
        match self {
            Endpoint::ChatCompletions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::StoredResponse => Some(Provider::OpenAi),
            Endpoint::Models => None,
            Endpoint::Messages | Endpoint::CountTokens => Some(Provider::Anthropic),
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => Some(Provider::Gemini),
            Endpoint::Converse | Endpoint::ConverseStream => Some(Provider::Bedrock),
        }
    }
}

/// Whose wire format an answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

impl Provider {
    fn error(self, status: u16, message: &str) -> Response {
        match self {
            Provider::OpenAi => openai::error(status, message, openai::error_type(status), None),
            Provider::Anthropic => anthropic::error(status, message),
            Provider::Gemini => gemini::error(status, message),
            Provider::Bedrock => bedrock::error(status, message),
        }
    }

    fn injected_error(self, status: u16) -> Response {
        match self {
            Provider::OpenAi => openai::injected_error(status),
            Provider::Anthropic => anthropic::injected_error(status),
            Provider::Gemini => gemini::injected_error(status),
            Provider::Bedrock => bedrock::injected_error(status),
        }
    }
}

/// Decides the answer to `request` (see the module docs for the steps).
fn dispatch(request: &Request, shared: &Shared) -> Answer {
    let config = shared.config();
    let json = if request.body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Value>(&request.body).ok()
    };
    shared.record(request, json.as_ref());
    let header_duration = |name: &str| {
        request
            .header(name)
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    let mut response = respond(request, json.as_ref(), &config, shared);
    if matches!(response.status, 429 | 503 | 529) {
        if let Some(seconds) = config.retry_after_secs {
            response.headers.push(("retry-after", seconds.to_string()));
        }
    }
    Answer {
        response,
        latency: header_duration("x-mock-latency-ms").unwrap_or(config.latency),
        chunk_delay: header_duration("x-mock-chunk-delay-ms").unwrap_or(config.chunk_delay),
        truncate_after: config.truncate_after,
    }
}

/// Steps 2 to 5 of [`dispatch`].
fn respond(
    request: &Request,
    json: Option<&Value>,
    config: &MockConfig,
    shared: &Shared,
) -> Response {
    let anthropic_version = request.header("anthropic-version").is_some();
    let endpoint = Endpoint::from_path(&request.path);
    let provider = match endpoint.and_then(Endpoint::provider) {
        Some(provider) => provider,
        None if anthropic_version => Provider::Anthropic,
        None => Provider::OpenAi,
    };
    let Some(endpoint) = endpoint else {
        let message = format!("Invalid URL ({} {})", request.method, request.path);
        return provider.error(404, &message);
    };
    if !endpoint.allows(&request.method) {
        let message = format!("Method {} not allowed for {}", request.method, request.path);
        return provider.error(405, &message);
    }
    match provider {
        Provider::OpenAi => {
            let bearer = request
                .header("authorization")
                .is_some_and(|value| value.trim_start().starts_with("Bearer "));
            if config.require_auth && !bearer {
                return openai::missing_api_key();
            }
        }
        Provider::Anthropic => {
            if config.require_auth && request.header("x-api-key").is_none() {
                return anthropic::error(401, "x-api-key header is required");
            }
            if !anthropic_version {
                return anthropic::error(400, "anthropic-version: header is required");
            }
        }
        Provider::Gemini => {
            let query_key = request
                .query
                .split('&')
                .any(|pair| pair.strip_prefix("key=").is_some_and(|key| !key.is_empty()));
            if config.require_auth && request.header("x-goog-api-key").is_none() && !query_key {
                return gemini::error(
                    403,
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                );
            }
        }
        Provider::Bedrock => {
            let expected = Expected {
                access_key_id: &config.aws_access_key_id,
                secret_access_key: &config.aws_secret_access_key,
                region: &config.aws_region,
                service: "bedrock",
            };
            if config.require_auth {
                if let Err(refusal) = sigv4::verify(request, &expected) {
                    return bedrock::typed_error(403, refusal.error_type, &refusal.message);
                }
            }
        }
    }
    if let Some(status) = shared.injected_status(request, config) {
        return provider.injected_error(status);
    }
    match endpoint {
        Endpoint::ChatCompletions => openai::chat_completions(json, config),
        Endpoint::Embeddings => openai::embeddings(json, config),
        Endpoint::Models if provider == Provider::Anthropic => anthropic::models(),
        Endpoint::Models => openai::models(),
        Endpoint::Messages => anthropic::messages(json, config),
        Endpoint::CountTokens => anthropic::count_tokens(json),
        Endpoint::Responses => openai::responses(json, config, &shared.stored),
        Endpoint::StoredResponse => {
            openai::stored_response(&request.method, &request.path, &shared.stored)
        }
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent => gemini::generate_content(
            &request.path,
            &request.query,
            json,
            config,
            endpoint == Endpoint::StreamGenerateContent,
        ),
        Endpoint::Converse | Endpoint::ConverseStream => {
            bedrock::converse(json, config, endpoint == Endpoint::ConverseStream)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_on_the_path_suffix() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/openai/chat/completions/"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/messages"),
            Some(Endpoint::Messages)
        );
        assert_eq!(
            Endpoint::from_path("/embeddings"),
            Some(Endpoint::Embeddings)
        );
        assert_eq!(Endpoint::from_path("/v1/models"), Some(Endpoint::Models));
        assert_eq!(Endpoint::from_path("/v1/completions"), None);
        assert_eq!(Endpoint::from_path("/v1/models/gpt-4o"), None);
        assert_eq!(
            Endpoint::from_path("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some(Endpoint::GenerateContent)
        );
        assert_eq!(
            Endpoint::from_path("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
            Some(Endpoint::StreamGenerateContent)
        );
        assert_eq!(
            Endpoint::from_path("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
            Some(Endpoint::Converse)
        );
        assert_eq!(
            Endpoint::from_path("/model/anthropic.claude-3-haiku/converse-stream"),
            Some(Endpoint::ConverseStream)
        );
    }
}
