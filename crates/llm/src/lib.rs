//! `hypergate-llm`: the AI / LLM gateway: one OpenAI-compatible API (and the
//! Anthropic Messages API) over several providers, run as the data plane's
//! [`Handler`](hypergate_proxy::Handler) on AI routes.
//!
//! Allowed dependencies: `hypergate-core`, `hypergate-upstream`,
//! `hypergate-edge`, `hypergate-proxy`, and the pure `hypergate-ai` (wire
//! formats, translation, guardrails, tokens).
//!
//! A call goes through these steps, in [`serve`] and [`Chat::run`]:
//! 1. Endpoint by path: chat completions, messages, embeddings, models, feedback,
//!    or a published prompt template.
//! 2. Body read (bounded) and parsed; Anthropic-format requests are translated
//!    to the canonical OpenAI format (`hypergate_ai::translate`).
//! 3. Alias lookup, request guardrails (deny patterns, PII redaction), prompt
//!    size limit in tokens.
//! 4. Cache lookup for requests that opt in; a hit is answered (or replayed as a
//!    stream) without calling a provider.
//! 5. Budget admission: an estimate (prompt tokens plus `max_tokens`) is reserved
//!    on every budget of the route before any provider is called.
//! 6. Attempts along the alias's targets (weighted first pick, then the others,
//!    then the fallback aliases), skipping targets whose breaker is open, moving
//!    on after 429, 5xx, timeouts and connect errors; retries wait with backoff
//!    and jitter (or the provider's `Retry-After`, capped).
//! 7. The answer is translated back to the client's format: whole, or event by
//!    event as the provider streams it (never buffered), with response redaction
//!    that holds back only a possible partial match, and the usage chunk the
//!    gateway asked for removed unless the client asked too.
//! 8. Usage from the provider (or counted with the tokenizer and marked
//!    estimated), cost from the price table, budgets settled with the real
//!    figures (also for streams the client aborted), metrics, the call record in
//!    the access log, and the call remembered for feedback.

#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod budget;
pub mod budget_redis;
pub mod cache;
mod decode;
pub mod feedback;
pub mod provider;
pub mod spec;
pub mod stats;

use budget::{BudgetBook, Clock, Reservation};
use bytes::BytesMut;
use hypergate_ai::guard::StreamRedactor;
use hypergate_ai::tokens;
use hypergate_ai::translate::{self, Usage};
use hypergate_ai::{completions, responses};
use hypergate_core::config::ai::{GuardrailStage, PromptOutput, ProviderKind};
use hypergate_core::config::edge::RedisConfig;
use hypergate_core::error::{ErrorKind, ErrorShape, GatewayError, Outcome as CallOutcome};
use hypergate_core::http::codec::BodyFraming;
use hypergate_core::http::codec::ResponseHead;
use hypergate_core::http::write_header;
use hypergate_core::io::{read_body, write_out};
use hypergate_proxy::respond::{Length, LocalHead};
use hypergate_proxy::state::{Installed, ShardCtx};
use hypergate_upstream::breaker::{Breaker, Trip};
use hypergate_upstream::client::{
    self, retry_safe, AttemptLimits, Failure, Next, Outcome, Retries, RetryPolicy, RetryStatuses,
};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use provider::ProviderCall;
use serde_json::{json, Value};
use spec::{AiSpec, RouteAi};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body an AI route reads (unless the route's limit is lower).
const MAX_AI_BODY: u64 = 16 << 20;
/// Largest non-streamed provider answer read.
const MAX_PROVIDER_BODY: usize = 64 << 20;
/// Completion tokens reserved for Anthropic providers when the client gives no cap.
const DEFAULT_ANTHROPIC_MAX_TOKENS: u64 = 4096;

/// State shared by all shards.
pub struct AiShared {
    /// Budget accounts.
    pub budgets: Arc<BudgetBook>,
    /// Feedback memory and scores.
    pub feedback: feedback::FeedbackStore,
    /// The Redis worker of `backend = "redis"` budgets, with the settings it uses.
    redis: arc_swap::ArcSwapOption<(RedisConfig, budget_redis::BudgetRedis)>,
}

impl AiShared {
    /// Fresh shared state for `config`.
    pub fn new(config: &hypergate_proxy::spec::Config) -> Arc<AiShared> {
        let shared = Arc::new(AiShared {
            budgets: BudgetBook::new(),
            feedback: feedback::FeedbackStore::default(),
            redis: arc_swap::ArcSwapOption::empty(),
        });
        shared.install(config);
        shared
    }

    /// Starts (or restarts, when its address changed) the budget Redis worker if
    /// `config` has Redis budgets. Runs on the control thread at start and reload.
    pub fn install(&self, config: &hypergate_proxy::spec::Config) {
        let wants = spec::of(config)
            .budgets
            .iter()
            .any(|b| b.backend == hypergate_core::config::ai::BudgetBackend::Redis);
        match (&config.raw.redis, wants) {
            (Some(r), true) => {
                let current = self.redis.load();
                if current.as_ref().is_none_or(|c| c.0 != *r) {
                    let worker = budget_redis::BudgetRedis::start(r);
                    self.redis.store(Some(Arc::new((r.clone(), worker))));
                }
            }
            _ => self.redis.store(None),
        }
    }
}

/// The budget Redis worker with the server settings it talks to.
type RedisWorker = Arc<(RedisConfig, budget_redis::BudgetRedis)>;

/// A call's budget reservations, settled when it ends.
struct Held {
    local: Option<Reservation>,
    /// Redis windows reserved (with the amounts reserved), and their worker.
    redis: Option<(RedisWorker, Vec<budget_redis::RedisWindow>)>,
    tokens: u64,
    cost: u64,
}

impl Held {
    /// Replaces the reservations by the real figures.
    fn settle(self, shared: &AiShared, tokens: u64, cost: u64) {
        if let Some(r) = self.local {
            shared.budgets.settle(r, tokens, cost);
        }
        if let Some((worker, mut windows)) = self.redis {
            for w in &mut windows {
                let (reserved, actual) = if w.tokens {
                    (self.tokens, tokens)
                } else {
                    (self.cost, cost)
                };
                w.amount = actual as i64 - reserved as i64;
            }
            worker.1.settle(windows);
        }
    }
}

/// A shard's AI state.
pub struct AiShard {
    /// Metrics.
    pub stats: stats::AiStats,
    cache: RefCell<cache::ResponseCache>,
    /// Each target's breaker (keyed by `provider/model`).
    breakers: RefCell<HashMap<Arc<str>, Breaker>>,
    remembered: feedback::Remembered,
    /// The consumer label of anonymous calls (shared, so a call allocates none).
    pub anonymous: Arc<str>,
    shared: Arc<AiShared>,
    shards: usize,
}

impl AiShard {
    /// A shard's state under `spec` (one of `shards`).
    pub fn new(spec: &AiSpec, shared: Arc<AiShared>, shards: usize) -> Self {
        Self {
            stats: stats::AiStats::default(),
            cache: RefCell::new(cache::ResponseCache::new(
                spec.cache_bytes / shards.max(1),
                spec.cache_ttl,
            )),
            breakers: RefCell::default(),
            remembered: feedback::Remembered::default(),
            anonymous: Arc::from(""),
            shared,
            shards: shards.max(1),
        }
    }

    /// Applies a new config's cache bounds.
    pub fn install(&self, spec: &AiSpec) {
        self.cache
            .borrow_mut()
            .resize(spec.cache_bytes / self.shards, spec.cache_ttl);
    }

    fn available(&self, label: &Arc<str>, now: Instant) -> bool {
        self.breakers
            .borrow()
            .get(label)
            .is_none_or(|b| !b.is_open(now))
    }

    fn failed(&self, spec: &AiSpec, label: &Arc<str>) {
        let trip = Trip {
            threshold: spec.breaker_failures,
            base: spec.breaker_open_for,
            max: spec.breaker_open_for,
        };
        let mut map = self.breakers.borrow_mut();
        let b = map.entry(label.clone()).or_default();
        if b.failure(trip, Instant::now(), || true).is_some() {
            self.stats.breaker_opened(label);
            tracing::warn!(target_model = %label, open_for = ?spec.breaker_open_for, "LLM target ejected after consecutive failures");
        }
    }

    fn succeeded(&self, label: &Arc<str>) {
        if let Some(b) = self.breakers.borrow().get(label) {
            b.success();
        }
    }
}

pub use hypergate_core::record::{cut_text, FeedbackRecord, LlmRecord, CAPTURE_SLACK};

/// Redacts every PII kind and cuts to `max` bytes: what the record writer
/// does to captured bodies before they are stored or logged.
pub fn capture_text(text: &str, max: usize) -> String {
    static GUARD: std::sync::OnceLock<Option<hypergate_ai::guard::Guardrail>> =
        std::sync::OnceLock::new();
    let guard = GUARD.get_or_init(|| {
        hypergate_ai::guard::Guardrail::new("capture", &[], &hypergate_ai::guard::PiiKind::ALL).ok()
    });
    let mut out = guard
        .as_ref()
        .and_then(|g| g.redact(text).map(|(t, _)| t))
        .unwrap_or_else(|| text.to_string());
    let kept = cut_text(&out, max).len();
    out.truncate(kept);
    out
}

/// Everything the AI phase needs from the proxy.
pub struct AiRequest<'a> {
    /// This shard's LLM state.
    pub ai: &'a AiShard,
    /// Shard.
    pub ctx: &'a ShardCtx,
    /// Installed config.
    pub inst: &'a Installed,
    /// Route name.
    pub route: &'a Arc<str>,
    /// The route's AI settings.
    pub route_ai: &'a RouteAi,
    /// Method.
    pub method: &'a str,
    /// Path (no query).
    pub path: &'a str,
    /// Request body framing.
    pub body: BodyFraming,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// Request id.
    pub request_id: &'a str,
    /// Consumer name (empty when anonymous).
    pub consumer: Arc<str>,
    /// Header lines the edge phase adds (CORS, rate limits).
    pub extra: &'a [u8],
    /// Keep the connection after this request.
    pub keep_alive: bool,
    /// Body limit of the route (0 = default).
    pub max_body: u64,
    /// `x-hypergate-cache` header value.
    pub cache_header: Option<&'a [u8]>,
    /// `x-hypergate-prompt-version` header value.
    pub prompt_version_header: Option<&'a [u8]>,
    /// When the request head was complete: the body's total upload time and the
    /// call's deadline (`route.timeout`, across retries and fallbacks) count from it.
    pub started: Instant,
    /// The route's `timeout`: the call's one deadline until a provider answers.
    pub deadline: Duration,
}

/// What the AI phase did, for the proxy's metrics and log.
pub type AiOutcome = hypergate_proxy::HandlerOutcome;

/// Which API format the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// OpenAI Chat Completions (and the other OpenAI endpoints).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Responses.
    Responses,
    /// OpenAI's legacy Completions.
    Completions,
}

impl Format {
    /// The API a request at `path` speaks: Anthropic's Messages API at
    /// `.../messages` (and `.../messages/count_tokens`), OpenAI's Responses at
    /// `.../responses`, OpenAI's legacy Completions at `.../completions`
    /// (not `.../chat/completions`), OpenAI's everywhere else.
    fn of(path: &str) -> Self {
        if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
            Format::Anthropic
        } else if path.ends_with("/responses") {
            Format::Responses
        } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
            Format::Completions
        } else {
            Format::OpenAi
        }
    }
}

/// The LLM layer's per-shard state for one installed config (kept in the
/// proxy's `Installed::ext`, so a request sees one config throughout).
#[derive(Debug, Default)]
pub struct AiInstalled {
    /// Each alias's targets' effective weights: the file's, or a runtime
    /// override's (an alias canary's), parallel to `AiSpec::aliases`.
    pub alias_weights: Vec<Vec<u32>>,
}

/// The LLM layer's state for `config` with `overrides`, for a shard's `Installed`.
pub fn installed(
    config: &hypergate_proxy::spec::Config,
    overrides: &hypergate_core::config::overrides::Overrides,
) -> Rc<dyn std::any::Any> {
    use hypergate_core::config::overrides::OverrideSubject;
    let spec = spec::of(config);
    let alias_weights = spec
        .aliases
        .iter()
        .map(|a| {
            overrides
                .weights
                .get(&OverrideSubject::Alias(a.name.to_string()))
                .and_then(|o| o.effective(&spec.alias_sides(&a.name).ok()?.1))
                .unwrap_or_else(|| a.targets.iter().map(|t| t.weight).collect())
        })
        .collect();
    Rc::new(AiInstalled { alias_weights })
}

/// The LLM layer's state in a shard's `Installed` (empty if it holds none,
/// which the shard never does).
fn installed_of(inst: &Installed) -> &AiInstalled {
    static EMPTY: AiInstalled = AiInstalled {
        alias_weights: Vec::new(),
    };
    inst.ext.downcast_ref::<AiInstalled>().unwrap_or(&EMPTY)
}

impl hypergate_proxy::Handler for AiShard {
    async fn serve<S: hypergate_proxy::ClientStream>(
        &self,
        req: &hypergate_proxy::HandlerRequest<'_>,
        stream: &mut S,
        rbuf: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> AiOutcome {
        let config = &req.inst.config;
        let route = &config.routes[req.route];
        let Some(route_ai) = spec::of(config)
            .routes
            .get(req.route)
            .and_then(Option::as_ref)
        else {
            // Validation gives every AI route its settings; a route without them is refused whole.
            return AiOutcome {
                result: Ok(hypergate_proxy::Answered::default()),
                bytes_in: 0,
                body_read: false,
                upstream_us: None,
                llm: None,
            };
        };
        let consumer = match req.consumer {
            Some(c) => config.auth.consumers[c].name.clone(),
            None => self.anonymous.clone(),
        };
        let ai_req = AiRequest {
            ai: self,
            ctx: req.ctx,
            inst: req.inst,
            route: &route.name,
            route_ai,
            method: req.request.method(),
            path: req.request.path(),
            body: req.body,
            http10: req.http10,
            request_id: req.request_id,
            consumer,
            extra: req.extra,
            keep_alive: req.keep_alive,
            max_body: req.max_body,
            cache_header: req.request.header("x-hypergate-cache"),
            prompt_version_header: req.request.header("x-hypergate-prompt-version"),
            started: req.started,
            deadline: req.deadline,
        };
        serve(&ai_req, stream, rbuf, out).await
    }

    fn error_shape(&self, path: &str) -> ErrorShape {
        match Format::of(path) {
            Format::OpenAi | Format::Responses | Format::Completions => ErrorShape::OpenAi,
            Format::Anthropic => ErrorShape::Anthropic,
        }
    }
}

/// Serves one request on an AI route; an error is returned for the
/// pipeline's responder to answer in the client's API shape.
pub async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    req: &AiRequest<'_>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
) -> AiOutcome {
    let spec = spec::of(&req.inst.config);
    let mut outcome = AiOutcome {
        result: Ok(hypergate_proxy::Answered::default()),
        bytes_in: 0,
        body_read: false,
        upstream_us: None,
        llm: None,
    };
    let suffix_is = |s: &str| req.path.ends_with(s);
    let format = Format::of(req.path);
    // Read the body first, so an error answered afterwards leaves the connection usable.
    let limit = if req.max_body > 0 {
        req.max_body.min(MAX_AI_BODY)
    } else {
        MAX_AI_BODY
    };
    let limits = &req.inst.config.raw.limits;
    let body = read_body(
        stream,
        rbuf,
        req.body,
        limit,
        limits.body_idle_timeout,
        req.started + limits.body_timeout,
    )
    .await;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            outcome.result = Err(GatewayError::request_body(e));
            return outcome;
        }
    };
    outcome.body_read = true;
    outcome.bytes_in = body.len() as u64;
    let prompt = spec.prompts.iter().position(|p| p.path == req.path);
    let result = match (req.method, prompt) {
        ("POST", Some(p)) => {
            let mut chat = Chat::new(req, Format::OpenAi);
            let r = chat.prompt(p, &body, stream, out).await;
            outcome.llm = Some(Box::new(chat.rec));
            outcome.upstream_us = chat.upstream_us;
            r
        }
        ("POST", None)
            if suffix_is("/chat/completions")
                || suffix_is("/messages")
                || suffix_is("/responses")
                || suffix_is("/completions") =>
        {
            let mut chat = Chat::new(req, format);
            let r = match parse_json(&body) {
                Ok(v) => chat.run(v, stream, out, None).await,
                Err(e) => Err(e),
            };
            outcome.llm = Some(Box::new(chat.rec));
            outcome.upstream_us = chat.upstream_us;
            r
        }
        ("POST", None) if suffix_is("/messages/count_tokens") => {
            let mut chat = Chat::new(req, Format::Anthropic);
            let r = chat.count_tokens(&body, stream, out).await;
            outcome.llm = Some(Box::new(chat.rec));
            outcome.upstream_us = chat.upstream_us;
            r
        }
        ("GET" | "DELETE", None) if req.path.contains("/responses/") => {
            let mut chat = Chat::new(req, Format::Responses);
            let r = chat.stored_response(stream, out).await;
            outcome.llm = Some(Box::new(chat.rec));
            outcome.upstream_us = chat.upstream_us;
            r
        }
        ("POST", None) if suffix_is("/embeddings") => {
            let mut chat = Chat::new(req, Format::OpenAi);
            let r = chat.embeddings(&body, stream, out).await;
            outcome.llm = Some(Box::new(chat.rec));
            outcome.upstream_us = chat.upstream_us;
            r
        }
        ("POST", None) if suffix_is("/feedback") => {
            let (r, f) = feedback(req, &body, stream, out).await;
            outcome.llm = f.map(|f| {
                Box::new(LlmRecord {
                    feedback: Some(f),
                    ..LlmRecord::default()
                })
            });
            r
        }
        ("GET", None) if suffix_is("/models") => {
            let allowed =
                |i: usize| req.route_ai.models.is_empty() || req.route_ai.models.contains(&i);
            let data: Vec<Value> = spec
                .aliases
                .iter()
                .enumerate()
                .filter(|(i, _)| allowed(*i))
                .map(|(_, a)| json!({"id": &*a.name, "object": "model", "created": 0, "owned_by": "hypergate"}))
                .collect();
            let body = json!({"object": "list", "data": data});
            respond_json(req, stream, out, 200, &body).await
        }
        ("GET", None) if req.path.contains("/models/") => {
            // `GET /v1/models/{id}` (the SDKs' `models.retrieve`): one alias
            // this route serves, or 404 as for a model it does not know.
            let id = req.path.split_once("/models/").map_or("", |(_, id)| id);
            let found = spec
                .alias_index
                .get(id)
                .copied()
                .filter(|i| req.route_ai.models.is_empty() || req.route_ai.models.contains(i));
            match found {
                Some(i) => {
                    let body = json!({"id": &*spec.aliases[i].name, "object": "model", "created": 0, "owned_by": "hypergate"});
                    respond_json(req, stream, out, 200, &body).await
                }
                None => Err(GatewayError::new(
                    ErrorKind::ModelNotFound,
                    format!(
                        "the model {id:?} does not exist on this route; GET /v1/models lists them"
                    ),
                )),
            }
        }
        _ => Err(GatewayError::new(
            ErrorKind::NotFound,
            format!(
                "{} {} is not an AI endpoint of this gateway",
                req.method, req.path
            ),
        )),
    };
    outcome.result = result.map(|sent| hypergate_proxy::Answered {
        status: sent.status,
        bytes_out: sent.bytes,
        keep_alive: req.keep_alive && sent.keep_alive,
    });
    outcome
}

/// `value` as compact JSON, as `Value::to_string` writes it, serialized
/// straight into bytes (`to_string` goes through `fmt`, several times slower).
fn json_bytes(value: &Value) -> Vec<u8> {
    // Serializing a `Value` into a `Vec` cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// [`json_bytes`] as a `String`.
fn json_text(value: &Value) -> String {
    // Serializing a `Value` cannot fail, and what it writes is UTF-8.
    serde_json::to_string(value).unwrap_or_default()
}

/// What was sent to the client.
struct Sent {
    status: u16,
    bytes: u64,
    keep_alive: bool,
}

/// Writes the head of an answer of ours through the responder's
/// [`LocalHead`]. `length`: `Some` for a sized body, `None` for a stream
/// (chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0).
fn write_head(
    out: &mut Vec<u8>,
    req: &AiRequest<'_>,
    status: u16,
    content_type: &str,
    length: Option<usize>,
    close: bool,
) {
    let head = LocalHead {
        status,
        length: length.map_or(Length::Stream, |n| Length::Sized(n as u64)),
        close,
        http10: req.http10,
        request_id: req.request_id,
        extra: req.extra,
    };
    head.write(out, |out| {
        write_header(out, b"content-type", content_type.as_bytes());
        if length.is_none() {
            write_header(out, b"cache-control", b"no-cache");
        }
    });
}

async fn respond_json<S: AsyncWriteRent>(
    req: &AiRequest<'_>,
    stream: &mut S,
    out: &mut Vec<u8>,
    status: u16,
    body: &Value,
) -> Result<Sent, GatewayError> {
    let text = json_bytes(body);
    out.clear();
    write_head(
        out,
        req,
        status,
        "application/json",
        Some(text.len()),
        !req.keep_alive,
    );
    out.extend_from_slice(&text);
    let ok = write_out(stream, out, req.inst.config.raw.limits.send_timeout)
        .await
        .is_ok();
    Ok(Sent {
        status,
        bytes: text.len() as u64,
        keep_alive: ok,
    })
}

fn parse_json(body: &[u8]) -> Result<Value, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "request body must be a JSON object",
        ));
    }
    Ok(v)
}

async fn feedback<S: AsyncWriteRent>(
    req: &AiRequest<'_>,
    body: &[u8],
    stream: &mut S,
    out: &mut Vec<u8>,
) -> (Result<Sent, GatewayError>, Option<FeedbackRecord>) {
    let v = match parse_json(body) {
        Ok(v) => v,
        Err(e) => return (Err(e), None),
    };
    let bad = |m: &'static str| (Err(GatewayError::new(ErrorKind::InvalidRequest, m)), None);
    let Some(id) = v["request_id"].as_str() else {
        return bad("request_id (string) is required");
    };
    let Some(score) = v["score"].as_f64() else {
        return bad("score (number) is required");
    };
    if !(-1000.0..=1000.0).contains(&score) {
        return bad("score must be between -1000 and 1000");
    }
    let comment = v["comment"].as_str().unwrap_or("");
    let ai = &req.ai;
    match ai.shared.feedback.record(id, score, comment) {
        Ok(meta) => {
            ai.stats.feedback.set(ai.stats.feedback.get() + 1);
            let body = json!({
                "status": "recorded", "request_id": id, "alias": &*meta.alias,
                "target": &*meta.target, "prompt": &*meta.prompt, "prompt_version": &*meta.version,
            });
            let record = FeedbackRecord {
                request_id: id.to_string(),
                score,
                comment: comment.to_string(),
            };
            (
                respond_json(req, stream, out, 200, &body).await,
                Some(record),
            )
        }
        Err(feedback::FeedbackError::UnknownCall) => (
            Err(GatewayError::new(
                ErrorKind::NotFound,
                format!("no recent LLM call with request_id {id:?}"),
            )),
            None,
        ),
    }
}

/// Calls every text of a canonical request's messages.
fn for_each_text(req: &mut Value, mut f: impl FnMut(&mut String)) {
    let Some(messages) = req.get_mut("messages").and_then(Value::as_array_mut) else {
        return;
    };
    for m in messages {
        match m.get_mut("content") {
            Some(Value::String(s)) => f(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(Value::String(s)) = p.get_mut("text") {
                        f(s);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    hypergate_core::clock::unix_secs_at(Instant::now())
}

/// One LLM call in progress.
struct Chat<'r, 'a> {
    req: &'r AiRequest<'a>,
    format: Format,
    /// A Responses API call.
    responses: Option<ResponsesCall>,
    /// The call only counts tokens (`messages/count_tokens`).
    count_only: bool,
    rec: LlmRecord,
    upstream_us: Option<u64>,
    started: Instant,
}

/// A Responses API call: the response id, and the client's request (with the
/// request guardrails' redactions): what the answer echoes, and what
/// providers that serve the API get as it is.
struct ResponsesCall {
    id: String,
    body: Value,
}

/// A successful provider answer, its body still to read.
struct ProviderAnswer<'c> {
    resp: client::Body<'c>,
    /// The body is an event stream.
    event_stream: bool,
    alias: usize,
    target: usize,
}

impl<'r, 'a> Chat<'r, 'a> {
    fn new(req: &'r AiRequest<'a>, format: Format) -> Self {
        Self {
            req,
            format,
            responses: None,
            count_only: false,
            rec: LlmRecord::default(),
            upstream_us: None,
            started: Instant::now(),
        }
    }

    fn spec(&self) -> &'r AiSpec {
        spec::of(&self.req.inst.config)
    }

    fn alias_of(&self, req: &Value) -> Result<usize, GatewayError> {
        let model = req["model"].as_str().ok_or_else(|| {
            GatewayError::new(ErrorKind::InvalidRequest, "model (string) is required")
                .param("model")
        })?;
        let spec = self.spec();
        let i = *spec.alias_index.get(model).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::ModelNotFound,
                format!("unknown model {model:?}; GET /v1/models lists the models of this gateway"),
            )
        })?;
        let allowed = &self.req.route_ai.models;
        if !allowed.is_empty() && !allowed.contains(&i) {
            return Err(GatewayError::new(
                ErrorKind::ModelNotAllowed,
                format!("model {model:?} is not available on this route"),
            ));
        }
        Ok(i)
    }

    /// Guardrails of the route then of the alias, at `stage`.
    fn guards(&self, alias: usize, response: bool) -> Vec<usize> {
        let spec = self.spec();
        self.req
            .route_ai
            .guardrails
            .iter()
            .chain(&spec.aliases[alias].guardrails)
            .copied()
            .filter(|&g| {
                let stage = spec.guardrails[g].1;
                stage == GuardrailStage::Both || (stage == GuardrailStage::Response) == response
            })
            .collect()
    }

    fn note_guard(&mut self, g: usize, action: &'static str) {
        let name: Arc<str> = self.spec().guardrails[g].0.name().into();
        self.req.ai.stats.guardrail(&name, action);
        let tag = format!("{name}:{action}");
        if !self.rec.guardrails.contains(&tag) {
            self.rec.guardrails.push(tag);
        }
    }

    /// Counts the stream redactors that redacted anything, once per call (as for
    /// complete answers).
    fn note_redactions(&mut self, redactors: &[(usize, StreamRedactor)]) {
        for (g, r) in redactors {
            if r.counts().total() > 0 {
                self.note_guard(*g, "redact_response");
            }
        }
    }

    /// Deny patterns and PII redaction on the prompt.
    fn guard_request(&mut self, alias: usize, req: &mut Value) -> Result<(), GatewayError> {
        for g in self.guards(alias, false) {
            let (guard, stage) = &self.spec().guardrails[g];
            let mut denied = None;
            if *stage != GuardrailStage::Response {
                for_each_text(req, |s| {
                    if denied.is_none() && guard.check_deny(s).is_some() {
                        denied = Some(());
                    }
                });
            }
            if denied.is_some() {
                self.note_guard(g, "deny");
                return Err(GatewayError::new(
                    ErrorKind::GuardrailDenied,
                    format!("the request was blocked by guardrail {:?}", guard.name()),
                ));
            }
            let mut redacted = false;
            let mut redact = |s: &mut String| {
                if let Some((clean, _)) = guard.redact(s) {
                    *s = clean;
                    redacted = true;
                }
            };
            for_each_text(req, &mut redact);
            // What a Responses provider gets as it is: the same redactions.
            if let Some(call) = &mut self.responses {
                responses::for_each_input_text(&mut call.body, &mut redact);
            }
            if redacted {
                self.note_guard(g, "redact_request");
            }
        }
        Ok(())
    }

    /// Every target `alias` (and its fallbacks) can reach serves the Responses
    /// API itself.
    fn native_only(&self, alias: usize) -> bool {
        let spec = self.spec();
        std::iter::once(alias)
            .chain(spec.aliases[alias].fallbacks.iter().copied())
            .flat_map(|a| spec.aliases[a].targets.iter())
            .all(|t| spec.providers[t.provider].responses_api)
    }

    /// Runs a chat call from a client request body.
    async fn run<S: AsyncWriteRent>(
        &mut self,
        body: Value,
        stream: &mut S,
        out: &mut Vec<u8>,
        prompt_output: Option<PromptOutput>,
    ) -> Result<Sent, GatewayError> {
        let spec = self.spec();
        let invalid = |e: translate::TranslateError| {
            let param = e.path().to_string();
            let e = GatewayError::new(ErrorKind::InvalidRequest, e.to_string());
            if param.is_empty() {
                e
            } else {
                e.param(param)
            }
        };
        let mut canonical = match self.format {
            Format::OpenAi => body,
            Format::Anthropic => translate::anthropic_request_to_openai(&body).map_err(invalid)?,
            Format::Completions => completions::request_to_chat(&body).map_err(invalid)?,
            Format::Responses => {
                // Providers that serve the API themselves get the call as it
                // is; the others get it translated, which needs no state.
                let native = self.alias_of(&body).is_ok_and(|a| self.native_only(a));
                for key in ["previous_response_id", "conversation"] {
                    if !native && body.get(key).is_some_and(|v| !v.is_null()) {
                        return Err(GatewayError::new(
                            ErrorKind::InvalidRequest,
                            format!(
                                "{key} is not supported for this model: it is answered by \
                                 translating the call to its providers' chat APIs, which keep \
                                 no conversation state (only providers with responses_api = true \
                                 do); send the whole conversation as `input`"
                            ),
                        )
                        .param(key));
                    }
                }
                let id = format!("resp_{}", self.req.request_id.replace('-', ""));
                let chat = match responses::request_to_chat(&body) {
                    Ok(chat) => chat,
                    // What chat cannot express, the provider itself reads.
                    Err(_) if native => responses::estimate_chat(&body),
                    Err(e) => return Err(invalid(e)),
                };
                self.responses = Some(ResponsesCall { id, body });
                chat
            }
        };
        if !canonical["messages"].is_array() {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "messages (array) is required",
            )
            .param("messages"));
        }
        let alias = self.alias_of(&canonical)?;
        // Every API refuses an empty conversation; no provider is asked. (A
        // call passed through to a Responses provider is the provider's to judge.)
        let passed_whole = self.responses.is_some() && self.native_only(alias);
        if !passed_whole && canonical["messages"].as_array().is_some_and(Vec::is_empty) {
            let (message, param) = match self.format {
                Format::Responses => ("input must hold at least one item", "input"),
                Format::Completions => ("prompt must not be empty", "prompt"),
                _ => ("messages must hold at least one message", "messages"),
            };
            return Err(GatewayError::new(ErrorKind::InvalidRequest, message).param(param));
        }
        self.rec.alias = spec.aliases[alias].name.to_string();
        let streamed = canonical["stream"].as_bool().unwrap_or(false) && prompt_output.is_none();
        if streamed && canonical["n"].as_u64().is_some_and(|n| n > 1) {
            // Guardrails, the usage estimate and the stream translations follow
            // one choice per stream; a client asks for several without `stream`.
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "n > 1 is supported without stream only: this gateway checks streamed \
                 answers one choice at a time",
            )
            .param("n"));
        }
        self.rec.stream = streamed;
        let client_usage = canonical["stream_options"]["include_usage"].as_bool() == Some(true);
        self.guard_request(alias, &mut canonical)?;

        let limit = [
            self.req.route_ai.max_input_tokens,
            spec.aliases[alias].max_input_tokens,
        ]
        .into_iter()
        .flatten()
        .min();
        let mut prompt_estimate = None;
        if let Some(limit) = limit {
            let n = tokens::count_chat_request(&canonical);
            prompt_estimate = Some(n);
            if n > limit {
                return Err(GatewayError::new(
                    ErrorKind::ContextLengthExceeded,format!("the prompt has {n} tokens; this gateway accepts at most {limit} for model {:?}", &*spec.aliases[alias].name),
                ));
            }
        }

        let store = &self.req.inst.config.raw.hypercare.store;
        if store.enabled && hypergate_upstream::sampled(&self.req.ctx.rng, store.capture_llm_bodies)
        {
            let text = json_text(&canonical);
            let max = store.capture_max_bytes + CAPTURE_SLACK;
            self.rec.request_body = Some(cut_text(&text, max).to_string());
        }
        // A call passed through whole to Responses providers is not cached:
        // its canonical form holds only its texts, not its tools or state.
        let cache_key = if passed_whole {
            None
        } else {
            self.cache_key(alias, &canonical)
        };
        if let Some(key) = cache_key {
            let hit = self.req.ai.cache.borrow_mut().get(key);
            let ai = &self.req.ai.stats;
            match hit {
                Some(resp) => {
                    ai.cache_hits.set(ai.cache_hits.get() + 1);
                    self.rec.cache_hit = true;
                    self.rec.target = "cache".into();
                    self.remember(alias, "cache".into());
                    let sent = if streamed {
                        self.replay_stream(&resp, stream, out, client_usage).await
                    } else {
                        self.respond_complete((*resp).clone(), stream, out, prompt_output)
                            .await
                    };
                    self.finish_stats(
                        alias,
                        None,
                        &Usage::default(),
                        0,
                        false,
                        sent.as_ref().map(|s| s.status).map_err(|e| e.kind),
                    );
                    return sent;
                }
                None => ai.cache_misses.set(ai.cache_misses.get() + 1),
            }
        }

        let reservation = self.admit(alias, &canonical, &mut prompt_estimate).await?;
        let answered = match self.attempts(alias, &canonical, streamed, out).await {
            Ok(a) => a,
            Err(e) => {
                if let Some(r) = reservation {
                    r.settle(&self.req.ai.shared, 0, 0);
                }
                self.finish_stats(alias, None, &Usage::default(), 0, false, Err(e.kind));
                return Err(e);
            }
        };
        let (a_alias, target) = (answered.alias, answered.target);
        let t = &spec.aliases[a_alias].targets[target];
        self.rec.target = t.label.to_string();
        self.rec.provider = spec.providers[t.provider].name.to_string();
        self.rec.model = t.model.to_string();
        self.remember(alias, t.label.clone());
        let native = self.responses.is_some() && spec.providers[t.provider].responses_api;
        let result = if native && streamed && answered.event_stream {
            self.native_stream(answered, &canonical, stream, out).await
        } else if native {
            self.native_complete(answered, &canonical, stream, out)
                .await
        } else if streamed && answered.event_stream {
            self.stream_answer(answered, &canonical, stream, out, client_usage, cache_key)
                .await
        } else {
            self.complete_answer(
                answered,
                &canonical,
                stream,
                out,
                streamed,
                client_usage,
                prompt_output,
                cache_key,
            )
            .await
        };
        // Settle and count with what was produced, whether the answer went out or not.
        let (usage, estimated, end) = match &result {
            Ok((sent, usage, estimated)) => (*usage, *estimated, Ok(sent.status)),
            Err((e, usage, estimated)) => (*usage, *estimated, Err(e.kind)),
        };
        let cost = self.cost(a_alias, target, &usage);
        if let Some(r) = reservation {
            r.settle(&self.req.ai.shared, usage.prompt + usage.completion, cost);
        }
        self.finish_stats(alias, Some((a_alias, target)), &usage, cost, estimated, end);
        result.map(|(sent, ..)| sent).map_err(|(e, ..)| e)
    }

    fn cache_key(&self, alias: usize, canonical: &Value) -> Option<u64> {
        let asked = match self.req.cache_header {
            Some(v)
                if v.eq_ignore_ascii_case(b"on")
                    || v == b"1"
                    || v.eq_ignore_ascii_case(b"true") =>
            {
                true
            }
            Some(_) => false,
            None => {
                self.req.route_ai.cache_deterministic
                    && canonical["temperature"].as_f64() == Some(0.0)
            }
        };
        asked.then(|| cache::ResponseCache::key(&self.spec().aliases[alias].name, canonical))
    }

    fn cost(&self, alias: usize, target: usize, usage: &Usage) -> u64 {
        self.spec().aliases[alias].targets[target]
            .price
            .map_or(0, |p| p.cost_nanos(usage))
    }

    /// Reserves the estimate on the route's budgets (local ones in this process,
    /// Redis ones on the server).
    async fn admit(
        &mut self,
        alias: usize,
        canonical: &Value,
        prompt_estimate: &mut Option<u64>,
    ) -> Result<Option<Held>, GatewayError> {
        use hypergate_core::config::ai::{BudgetBackend, BudgetFailureMode};
        let spec = self.spec();
        let budgets: Vec<_> = self
            .req
            .route_ai
            .budgets
            .iter()
            .map(|&b| spec.budgets[b].clone())
            .collect();
        if budgets.is_empty() {
            return Ok(None);
        }
        let prompt = *prompt_estimate.get_or_insert_with(|| tokens::count_chat_request(canonical));
        let default_max = budgets
            .iter()
            .map(|b| b.default_max_tokens)
            .max()
            .unwrap_or(0);
        // Each of `n` choices may use the whole cap.
        let choices = canonical["n"].as_u64().unwrap_or(1).max(1);
        let completion = canonical["max_tokens"]
            .as_u64()
            .or_else(|| canonical["max_completion_tokens"].as_u64())
            .unwrap_or(default_max)
            .saturating_mul(choices);
        // Cost estimate at the most expensive target the call could reach.
        let estimate = Usage {
            prompt,
            completion,
            ..Usage::default()
        };
        let mut chain = vec![alias];
        chain.extend(&spec.aliases[alias].fallbacks);
        let cost = chain
            .iter()
            .flat_map(|&a| spec.aliases[a].targets.iter())
            .filter_map(|t| t.price.map(|p| p.cost_nanos(&estimate)))
            .max()
            .unwrap_or(0);
        let tokens = prompt + completion;
        // A call larger than a whole window can never be admitted: waiting
        // would not help, so it is the request's fault (400), not a 429.
        for b in &budgets {
            let too_big = [
                (b.tokens_per_minute, tokens, "tokens per minute"),
                (b.cost_per_day, cost, "nano-dollars per day"),
                (b.cost_per_month, cost, "nano-dollars per month"),
            ]
            .into_iter()
            .find_map(|(limit, need, unit)| limit.filter(|l| need > *l).map(|l| (l, need, unit)));
            if let Some((limit, need, unit)) = too_big {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "budget {:?} allows {limit} {unit}; this call alone needs an estimated \
                         {need} ({prompt} prompt tokens + {completion} max_tokens): lower \
                         max_tokens or shorten the prompt",
                        &*b.name
                    ),
                )
                .param("max_tokens"));
            }
        }
        let clock = Clock::now();
        let route: Arc<str> = self.req.route.clone();
        let refused = |budget: &Arc<str>, window: budget::Window, retry_after: u64| {
            self.req.ai.stats.budget_refused(budget, window.label());
            GatewayError::new(
                ErrorKind::BudgetExceeded,
                format!(
                    "budget {:?} is exhausted ({}); this call needs an estimated {tokens} tokens",
                    &**budget,
                    window.label(),
                ),
            )
            .retry_after(Some(retry_after))
        };
        let (local, shared): (Vec<_>, Vec<_>) = budgets
            .into_iter()
            .partition(|b| b.backend == BudgetBackend::Local);
        let shared_state = &self.req.ai.shared;
        let local = if local.is_empty() {
            None
        } else {
            Some(
                shared_state
                    .budgets
                    .admit(&local, &self.req.consumer, &route, tokens, cost, clock)
                    .map_err(|r| refused(&r.budget, r.window, r.retry_after))?,
            )
        };
        let mut held = Held {
            local,
            redis: None,
            tokens,
            cost,
        };
        if shared.is_empty() {
            return Ok(Some(held));
        }
        let worker = shared_state.redis.load_full();
        let mut windows = Vec::new();
        let mut owners = Vec::new();
        for b in &shared {
            let key = match b.scope {
                hypergate_core::config::ai::BudgetScope::Consumer => &self.req.consumer,
                hypergate_core::config::ai::BudgetScope::Route => &route,
            };
            let base = format!("hypergate:budget:{}:{}", b.name, key);
            for (window, limit, amount, id, tag, ttl) in [
                (
                    budget::Window::Minute,
                    b.tokens_per_minute,
                    tokens,
                    clock.minute(),
                    "m",
                    120,
                ),
                (
                    budget::Window::Day,
                    b.cost_per_day,
                    cost,
                    clock.day(),
                    // "n": nano-dollars (keys in micro-dollars were "d" and "M").
                    "dn",
                    2 * 86_400,
                ),
                (
                    budget::Window::Month,
                    b.cost_per_month,
                    cost,
                    clock.month(),
                    "Mn",
                    32 * 86_400,
                ),
            ] {
                if limit.is_some() {
                    windows.push(budget_redis::RedisWindow {
                        key: format!("{base}:{tag}:{id}"),
                        limit,
                        amount: amount as i64,
                        ttl_s: ttl,
                        tokens: window == budget::Window::Minute,
                    });
                    owners.push((b.clone(), window));
                }
            }
        }
        let answer = match &worker {
            Some(w) => w.1.reserve(windows.clone()).await,
            None => budget_redis::RedisAnswer::Unavailable,
        };
        match answer {
            budget_redis::RedisAnswer::Reserved => {
                held.redis = worker.map(|w| (w, windows));
                Ok(Some(held))
            }
            budget_redis::RedisAnswer::Full(i) => {
                held.settle(shared_state, 0, 0);
                let (b, window) = &owners[i.min(owners.len() - 1)];
                let retry_after = match window {
                    budget::Window::Minute => clock.minute_left,
                    _ => clock.day_left(),
                };
                Err(refused(&b.name, *window, retry_after))
            }
            budget_redis::RedisAnswer::Unavailable => {
                self.req
                    .ai
                    .stats
                    .budget_refused(&Arc::from("redis"), "unavailable");
                if shared
                    .iter()
                    .any(|b| b.failure_mode == BudgetFailureMode::Closed)
                {
                    held.settle(shared_state, 0, 0);
                    Err(GatewayError::new(
                        ErrorKind::BudgetUnavailable,
                        "the budget store (Redis) cannot be reached and this budget fails closed",
                    ))
                } else {
                    Ok(Some(held))
                }
            }
        }
    }

    /// The order in which targets are tried: a weighted pick first, then the
    /// alias's other targets by weight, then each fallback alias the same way;
    /// targets with an open breaker go last.
    fn plan(&self, alias: usize) -> Vec<(usize, usize)> {
        let spec = self.spec();
        let ai = &self.req.ai;
        let now = Instant::now();
        let mut chain = vec![alias];
        chain.extend(&spec.aliases[alias].fallbacks);
        let mut open = Vec::new();
        let mut plan = Vec::new();
        for a in chain {
            let al = &spec.aliases[a];
            // Effective weights: the file's, or a runtime override's (a canary's).
            let weight = &installed_of(self.req.inst).alias_weights[a];
            let mut order: Vec<usize> = (0..al.targets.len()).collect();
            order.sort_by_key(|&t| std::cmp::Reverse(weight[t]));
            let live: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&t| weight[t] > 0 && ai.available(&al.targets[t].label, now))
                .collect();
            let total: u64 = live.iter().map(|&t| u64::from(weight[t])).sum();
            if total > 0 {
                let mut x = hypergate_upstream::next_random(&self.req.ctx.rng) % total;
                let first = live
                    .iter()
                    .copied()
                    .find(|&t| {
                        let w = u64::from(weight[t]);
                        if x < w {
                            true
                        } else {
                            x -= w;
                            false
                        }
                    })
                    .unwrap_or(live[0]);
                plan.push((a, first));
            }
            for t in order {
                if plan.contains(&(a, t)) {
                    continue;
                }
                if ai.available(&al.targets[t].label, now) {
                    plan.push((a, t));
                } else {
                    open.push((a, t));
                }
            }
        }
        plan.extend(open);
        plan
    }

    /// Tries targets until one answers 2xx (or a client error ends the call),
    /// through the upstream client: each attempt leases from the provider's
    /// pool; the one retry rule, the retry budget (of the first target's
    /// provider), backoff with jitter or `Retry-After`, and the route's
    /// deadline decide whether another target is tried; each target's breaker
    /// keeps failing ones at the end of the plan.
    async fn attempts<'c>(
        &mut self,
        alias: usize,
        canonical: &Value,
        streamed: bool,
        out: &mut Vec<u8>,
    ) -> Result<ProviderAnswer<'c>, GatewayError>
    where
        'r: 'c,
    {
        let spec = self.spec();
        let plan = self.plan(alias);
        let ai = &self.req.ai;
        let inst = self.req.inst;
        // One deadline for the whole call: every attempt, backoff and fallback.
        let deadline = self.req.started + self.req.deadline;
        let out_of_time = |attempts: u32| {
            GatewayError::new(
                ErrorKind::ProviderTimeout,
                format!(
                    "no provider answered within the route's {} deadline ({attempts} attempts)",
                    humantime::format_duration(self.req.deadline)
                ),
            )
        };
        let policy = RetryPolicy {
            // The plan (the alias's targets, then its fallbacks) is always gone
            // through once; `max_attempts` bounds the passes that start over.
            attempts: spec.max_attempts.max(plan.len() as u32),
            statuses: RetryStatuses::Overload,
            on_timeout: spec.retry_on_timeout,
            free: plan.len() as u32,
            backoff: spec.backoff,
            max_backoff: spec.max_backoff,
        };
        let cluster_of = |(a, t): (usize, usize)| {
            &inst.clusters[spec.providers[spec.aliases[a].targets[t].provider].cluster]
        };
        let mut retries = Retries::new(policy, cluster_of(plan[0]), Some(deadline));
        let mut wait = Duration::ZERO;
        loop {
            if !wait.is_zero() {
                monoio::time::sleep(wait).await;
            }
            if retries.out_of_time() {
                return Err(out_of_time(self.rec.attempts));
            }
            let (a, t) = plan[retries.made() as usize % plan.len()];
            retries.attempt();
            self.rec.attempts += 1;
            let target = &spec.aliases[a].targets[t];
            let provider = &spec.providers[target.provider];
            let cluster = cluster_of((a, t));
            let native = self
                .responses
                .as_ref()
                .map(|c| &c.body)
                .filter(|_| provider.responses_api);
            let (suffix, body) = provider_request(
                provider,
                canonical,
                native,
                &target.model,
                streamed,
                self.count_only,
            )
            .map_err(|e| GatewayError::new(ErrorKind::InvalidRequest, e))?;
            let signed = provider::sign(provider, &suffix, body.as_bytes()).map_err(|e| {
                GatewayError::new(
                    ErrorKind::ProviderAuth(500),
                    format!(
                        "provider {:?}: signing the call failed: {e}",
                        &*provider.name
                    ),
                )
            })?;
            let mut call = ProviderCall {
                provider,
                method: "POST",
                suffix: &suffix,
                body: body.as_bytes(),
                accept_stream: streamed,
                request_id: self.req.request_id,
                signed: &signed,
            };
            let limits = AttemptLimits {
                write_timeout: provider.timeout,
                response_timeout: provider.timeout,
                deadline: Some(deadline),
                max_head: inst.config.raw.limits.max_response_header_bytes,
                head_request: false,
                verify_open: true,
            };
            let mut head = ResponseHead::default();
            let result = client::attempt(cluster, 0, &mut call, &mut head, out, limits).await;
            let outcome = match &result {
                Ok(_) => Outcome::Answered(head.status),
                Err(f) => Outcome::Failed(*f),
            };
            client::record_outcome(cluster, 0, outcome);
            let (error, retry_after, reason) = match result {
                Ok(mut resp) => {
                    self.upstream_us = Some(resp.upstream_us);
                    let buf = &resp.conn().rbuf;
                    let retry_after = client::header(buf, &head, "retry-after")
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
                    let event_stream =
                        client::header(buf, &head, "content-type").is_some_and(|v| {
                            let has =
                                |t: &[u8]| v.windows(t.len()).any(|w| w.eq_ignore_ascii_case(t));
                            has(b"text/event-stream") || has(b"application/vnd.amazon.eventstream")
                        });
                    let mut resp = resp.into_body(&head, provider.timeout);
                    let status = head.status;
                    if (200..300).contains(&status) {
                        ai.succeeded(&target.label);
                        return Ok(ProviderAnswer {
                            resp,
                            event_stream,
                            alias: a,
                            target: t,
                        });
                    }
                    let body = resp.read_all(1 << 20).await.unwrap_or_default();
                    resp.finish();
                    let provider_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    // Providers echo a rejected key in their message: never forward it.
                    let message = provider.redact(
                        translate::provider_error_message(&provider_body).unwrap_or_else(|| {
                            format!("provider {:?} answered {status}", &*provider.name)
                        }),
                    );
                    if !retry_safe(&policy, outcome, true) {
                        // The request itself is wrong: no other target would take it.
                        ai.succeeded(&target.label);
                        let kind = if status == 401 || status == 403 {
                            ErrorKind::ProviderAuth(status)
                        } else {
                            ErrorKind::ProviderRejected(status)
                        };
                        let message = format!("provider {:?}: {message}", &*provider.name);
                        return Err(GatewayError::new(kind, message));
                    }
                    let (kind, reason) = if status == 429 {
                        (ErrorKind::ProviderRateLimited, "rate_limited")
                    } else {
                        (ErrorKind::ProviderError, "server_error")
                    };
                    let message = format!(
                        "provider {:?} answered {status}: {message}",
                        &*provider.name
                    );
                    let error = GatewayError::new(kind, message).retry_after(retry_after);
                    (error, retry_after, reason)
                }
                Err(f) => {
                    let kind = match f {
                        Failure::Timeout => ErrorKind::ProviderTimeout,
                        Failure::PoolFull => ErrorKind::ProviderUnavailable,
                        _ => ErrorKind::ProviderUnreachable,
                    };
                    let message = format!("provider {:?}: {}", &*provider.name, f.label());
                    (GatewayError::new(kind, message), None, f.label())
                }
            };
            ai.failed(spec, &target.label);
            ai.stats.fallback(&spec.aliases[alias].name, reason);
            tracing::debug!(target_model = %target.label, reason, attempt = retries.made(), "LLM attempt failed");
            let error = error.retryable(retry_safe(&policy, outcome, true));
            match retries.next(outcome, true, retry_after, &self.req.ctx.rng) {
                Next::Again(w) => wait = w,
                Next::OutOfTime => return Err(out_of_time(self.rec.attempts)),
                // A timeout is not retried unless configured: the provider may
                // still be working on (and billing) the call.
                Next::Stop if !error.retryable => return Err(error),
                Next::Stop => {
                    let mut e = error;
                    e.message = format!(
                        "all {} attempts failed; last: {}",
                        self.rec.attempts, e.message
                    )
                    .into();
                    return Err(e);
                }
            }
        }
    }

    /// Non-streamed answer (also used when a provider answered a stream request with JSON).
    #[allow(clippy::too_many_arguments)]
    async fn complete_answer<S: AsyncWriteRent>(
        &mut self,
        mut answered: ProviderAnswer<'_>,
        canonical: &Value,
        stream: &mut S,
        out: &mut Vec<u8>,
        streamed: bool,
        client_usage: bool,
        prompt_output: Option<PromptOutput>,
        cache_key: Option<u64>,
    ) -> Result<(Sent, Usage, bool), (GatewayError, Usage, bool)> {
        let spec = self.spec();
        let provider =
            &spec.providers[spec.aliases[answered.alias].targets[answered.target].provider];
        let body = answered.resp.read_all(MAX_PROVIDER_BODY).await;
        answered.resp.finish();
        let fail = |m: String| {
            (
                GatewayError::new(ErrorKind::ProviderError, m),
                Usage::default(),
                false,
            )
        };
        let body = body.map_err(|e| {
            fail(format!(
                "reading the provider's answer failed: the provider {e}"
            ))
        })?;
        let parsed: Value = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("the provider's answer is not JSON: {e}")))?;
        let model = &spec.aliases[answered.alias].targets[answered.target].model;
        let mut canon = match provider.kind {
            ProviderKind::Openai => parsed,
            ProviderKind::Anthropic => translate::anthropic_response_to_openai(&parsed, unix_now()),
            ProviderKind::Gemini => hypergate_ai::gemini::gemini_response_to_openai(
                &parsed,
                &chat_id(self.req.request_id),
                unix_now(),
                model,
            ),
            ProviderKind::Bedrock => hypergate_ai::bedrock::converse_response_to_openai(
                &parsed,
                &chat_id(self.req.request_id),
                unix_now(),
                model,
            ),
        };
        let (usage, estimated) = match translate::Usage::from_openai(&canon["usage"]) {
            Some(u) => (u, false),
            None => {
                let prompt = tokens::count_chat_request(canonical);
                let completion = response_tokens(&canon);
                let u = Usage {
                    prompt,
                    completion,
                    ..Usage::default()
                };
                canon["usage"] = u.to_openai();
                (u, true)
            }
        };
        self.redact_response(answered.alias, &mut canon);
        if self.rec.request_body.is_some() {
            let max = self.req.inst.config.raw.hypercare.store.capture_max_bytes + CAPTURE_SLACK;
            let text = json_text(&canon["choices"]);
            self.rec.response_body = Some(cut_text(&text, max).to_string());
        }
        if let Some(key) = cache_key {
            self.req.ai.cache.borrow_mut().put(key, canon.clone());
        }
        let sent = if streamed {
            self.replay_stream(&canon, stream, out, client_usage).await
        } else {
            self.respond_complete(canon, stream, out, prompt_output)
                .await
        };
        sent.map(|s| (s, usage, estimated))
            .map_err(|e| (e, usage, estimated))
    }

    fn redact_response(&mut self, alias: usize, canon: &mut Value) {
        for g in self.guards(alias, true) {
            let guard = self.spec().guardrails[g].0.clone();
            let mut redacted = false;
            if let Some(choices) = canon["choices"].as_array_mut() {
                for c in choices {
                    if let Some(Value::String(s)) =
                        c.get_mut("message").and_then(|m| m.get_mut("content"))
                    {
                        if let Some((clean, _)) = guard.redact(s) {
                            *s = clean;
                            redacted = true;
                        }
                    }
                }
            }
            if redacted {
                self.note_guard(g, "redact_response");
            }
        }
    }

    /// Sends a complete canonical answer in the client's format.
    async fn respond_complete<S: AsyncWriteRent>(
        &mut self,
        canon: Value,
        stream: &mut S,
        out: &mut Vec<u8>,
        prompt_output: Option<PromptOutput>,
    ) -> Result<Sent, GatewayError> {
        let body = match (prompt_output, self.format) {
            (Some(output), _) => {
                let text = canon["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or("");
                let value = match output {
                    PromptOutput::Text => Value::String(text.to_string()),
                    PromptOutput::Json => {
                        serde_json::from_str(strip_fences(text)).map_err(|e| {
                            GatewayError::new(
                                ErrorKind::InvalidModelOutput,
                                format!("the model's answer is not JSON ({e}): {text:?}"),
                            )
                        })?
                    }
                };
                json!({
                    "output": value,
                    "prompt": &self.rec.prompt,
                    "version": &self.rec.prompt_version,
                    "model": &self.rec.alias,
                    "usage": canon["usage"],
                    "request_id": self.req.request_id,
                })
            }
            (None, Format::OpenAi) => canon,
            (None, Format::Anthropic) => translate::openai_response_to_anthropic(&canon),
            (None, Format::Completions) => completions::chat_to_completion(&canon),
            (None, Format::Responses) => {
                let (id, echo) = self.responses.as_ref().map_or(("", Value::Null), |c| {
                    (c.id.as_str(), responses::echo_of(&c.body))
                });
                responses::chat_to_response(&canon, id, unix_now(), &echo)
            }
        };
        respond_json(self.req, stream, out, 200, &body).await
    }

    /// Sends a complete canonical answer as a stream of chunks.
    async fn replay_stream<S: AsyncWriteRent>(
        &mut self,
        canon: &Value,
        stream: &mut S,
        out: &mut Vec<u8>,
        client_usage: bool,
    ) -> Result<Sent, GatewayError> {
        let mut em = self.emitter(canon["model"].as_str().unwrap_or(""), client_usage);
        em.input_tokens =
            Usage::from_openai(&canon["usage"]).map(|u| u.prompt.saturating_sub(u.cached));
        self.event_stream_head(out);
        let mut events = Vec::new();
        for chunk in response_to_chunks(canon) {
            em.chunk(chunk, &mut events);
        }
        em.end(translate::Usage::from_openai(&canon["usage"]), &mut events);
        let bytes = events.len() as u64;
        frame(out, &events, self.req.http10);
        end_stream(out, self.req.http10);
        self.rec.ttft_us = Some(self.started.elapsed().as_micros() as u64);
        let ok = write_out(stream, out, self.req.inst.config.raw.limits.send_timeout)
            .await
            .is_ok();
        Ok(Sent {
            status: 200,
            bytes,
            keep_alive: ok && !self.req.http10,
        })
    }

    /// Streams a provider's event stream to the client as it arrives.
    async fn stream_answer<S: AsyncWriteRent>(
        &mut self,
        mut answered: ProviderAnswer<'_>,
        canonical: &Value,
        stream: &mut S,
        out: &mut Vec<u8>,
        client_usage: bool,
        cache_key: Option<u64>,
    ) -> Result<(Sent, Usage, bool), (GatewayError, Usage, bool)> {
        let spec = self.spec();
        let target = &spec.aliases[answered.alias].targets[answered.target];
        let provider = &spec.providers[target.provider];
        let kind = provider.kind;
        let idle = self.req.inst.config.raw.limits.send_timeout;
        let guards: Vec<_> = self
            .guards(answered.alias, true)
            .into_iter()
            .map(|g| (g, spec.guardrails[g].0.clone()))
            .collect();
        let mut redactors: Vec<(usize, StreamRedactor)> = guards
            .iter()
            .map(|(g, guard)| (*g, StreamRedactor::new(guard.clone())))
            .collect();
        let mut decoder =
            decode::StreamDecoder::new(kind, self.req.request_id, unix_now(), &target.model);
        let mut em = self.emitter(&target.model, client_usage);
        let mut usage: Option<Usage> = None;
        let mut text = String::new();
        let mut assembled = Assembler::default();
        let mut clock = TokenClock::default();
        let stats = self.call_stats(answered.alias, answered.target);
        let mut done = false;
        let mut failure: Option<String> = None;
        let mut aborted = false;
        let mut sent_bytes = 0u64;
        let mut piece = Vec::with_capacity(16 * 1024);
        let mut events = Vec::with_capacity(16 * 1024);

        if !self.open_event_stream(stream, out).await {
            aborted = true;
        }
        while !aborted && !done {
            piece.clear();
            match answered.resp.next(&mut piece).await {
                Ok(true) => {}
                // Gemini's stream ends with the body, after its finish reason.
                Ok(false) if decoder.complete_at_end() => break,
                Ok(false) => {
                    failure = Some("the provider ended the stream before its last event".into());
                    break;
                }
                Err(e) => {
                    failure = Some(format!("the provider {e}"));
                    break;
                }
            }
            decoder.push(&piece);
            events.clear();
            loop {
                let chunks = match decoder.next() {
                    Ok(Some(chunks)) => chunks,
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                if em.input_tokens.is_none() && self.format == Format::Anthropic {
                    // Anthropic clients read the prompt size from `message_start`:
                    // the provider's figure when it gave one up front, else the estimate.
                    em.input_tokens = Some(
                        decoder
                            .upfront_prompt()
                            .unwrap_or_else(|| tokens::count_chat_request(canonical)),
                    );
                }
                for mut chunk in chunks {
                    if let Some(u) = translate::openai_chunk_usage(&chunk) {
                        usage = Some(u);
                    }
                    if translate::is_usage_only_chunk(&chunk) {
                        continue;
                    }
                    if let Some(obj) = chunk.as_object_mut() {
                        obj.remove("usage");
                    }
                    let has_token = chunk_has_token(&chunk);
                    if has_token {
                        clock.token(self.started, &mut self.rec, &stats);
                    }
                    let finishing = chunk["choices"][0]["finish_reason"].is_string();
                    if let Some(t) = translate::chunk_text_mut(&mut chunk) {
                        text.push_str(t);
                        for (_, r) in &mut redactors {
                            *t = r.push(t);
                        }
                    }
                    if finishing {
                        let tail = flush_redactors(&mut redactors);
                        if !tail.is_empty() {
                            let mut extra = chunk.clone();
                            extra["choices"][0]["finish_reason"] = Value::Null;
                            extra["choices"][0]["delta"] = json!({"content": tail});
                            assembled.add(&extra);
                            em.chunk(extra, &mut events);
                        }
                    }
                    assembled.add(&chunk);
                    em.chunk(chunk, &mut events);
                }
                if decoder.done() {
                    done = true;
                }
            }
            if failure.is_some() {
                break;
            }
            if !events.is_empty() {
                out.clear();
                frame(out, &events, self.req.http10);
                sent_bytes += events.len() as u64;
                if write_out(stream, out, idle).await.is_err() {
                    aborted = true;
                }
            }
        }
        if usage.is_none() {
            usage = decoder.usage();
        }
        // Usage the provider did not report is counted from what it produced.
        let estimated = usage.is_none() || aborted;
        let usage = match usage {
            Some(u) if !aborted => u,
            _ => Usage {
                prompt: tokens::count_chat_request(canonical),
                completion: tokens::count(&text) + assembled.tool_tokens(),
                ..Usage::default()
            },
        };
        if self.rec.request_body.is_some() {
            let max = self.req.inst.config.raw.hypercare.store.capture_max_bytes + CAPTURE_SLACK;
            self.rec.response_body = Some(cut_text(&text, max).to_string());
        }
        clock.finish(usage.completion, &stats);
        if aborted {
            self.note_redactions(&redactors);
            self.rec.client_aborted = true;
            // Dropping the response closes the provider connection: generation stops.
            drop(answered);
            let sent = Sent {
                status: 200,
                bytes: sent_bytes,
                keep_alive: false,
            };
            return Ok((sent, usage, true));
        }
        events.clear();
        let tail = flush_redactors(&mut redactors);
        if !tail.is_empty() {
            em.text(&tail, &mut events);
        }
        self.note_redactions(&redactors);
        // A provider's in-stream error may echo its key, like an error response.
        let failure = failure.map(|f| provider.redact(f));
        match &failure {
            Some(f) => em.error(f, self.req.request_id, &mut events),
            None => em.end(Some(usage), &mut events),
        }
        out.clear();
        frame(out, &events, self.req.http10);
        end_stream(out, self.req.http10);
        sent_bytes += events.len() as u64;
        let ok = write_out(stream, out, idle).await.is_ok();
        if failure.is_none() {
            // The last event came before the body's end (the terminating chunk):
            // read it, so the provider connection goes back to the pool instead of
            // a new connection for every streamed call.
            answered.resp.drain(64 * 1024).await;
            answered.resp.finish();
            if let Some(key) = cache_key {
                if let Some(resp) = assembled.response(&target.model, usage) {
                    self.req.ai.cache.borrow_mut().put(key, resp);
                }
            }
        }
        let sent = Sent {
            status: 200,
            bytes: sent_bytes,
            keep_alive: ok && !self.req.http10 && failure.is_none(),
        };
        // After the status line, a failure can only be reported in the stream (done above).
        self.rec.error = failure;
        Ok((sent, usage, estimated))
    }

    /// The guardrails' redactions on every `output_text` of a Responses
    /// provider's `response` (or event); counted once per call when `note`.
    fn redact_native(&mut self, alias: usize, v: &mut Value, note: bool) {
        for g in self.guards(alias, true) {
            let guard = self.spec().guardrails[g].0.clone();
            let mut redacted = false;
            let mut redact = |s: &mut String| {
                if let Some((clean, _)) = guard.redact(s) {
                    *s = clean;
                    redacted = true;
                }
            };
            responses::for_each_output_text(v, &mut redact);
            // `response.output_text.done` carries the whole text at the top.
            if v["type"] == "response.output_text.done" {
                if let Some(Value::String(s)) = v.get_mut("text") {
                    redact(s);
                }
            }
            if redacted && note {
                self.note_guard(g, "redact_response");
            }
        }
    }

    /// A complete answer of a provider that serves the Responses API, passed
    /// on with the response guardrails' redactions; usage from its `usage`
    /// (else counted with the tokenizer and marked estimated).
    async fn native_complete<S: AsyncWriteRent>(
        &mut self,
        mut answered: ProviderAnswer<'_>,
        canonical: &Value,
        stream: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<(Sent, Usage, bool), (GatewayError, Usage, bool)> {
        let body = answered.resp.read_all(MAX_PROVIDER_BODY).await;
        answered.resp.finish();
        let fail = |m: String| {
            (
                GatewayError::new(ErrorKind::ProviderError, m),
                Usage::default(),
                false,
            )
        };
        let body = body.map_err(|e| {
            fail(format!(
                "reading the provider's answer failed: the provider {e}"
            ))
        })?;
        let mut v: Value = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("the provider's answer is not JSON: {e}")))?;
        let mut text = String::new();
        responses::for_each_output_text(&mut v, &mut |s: &mut String| text.push_str(s));
        let (usage, estimated) = match responses::usage_of(&v["usage"]) {
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt: tokens::count_chat_request(canonical),
                    completion: tokens::count(&text),
                    ..Usage::default()
                },
                true,
            ),
        };
        self.redact_native(answered.alias, &mut v, true);
        if self.rec.request_body.is_some() {
            let max = self.req.inst.config.raw.hypercare.store.capture_max_bytes + CAPTURE_SLACK;
            let mut shown = String::new();
            responses::for_each_output_text(&mut v, &mut |s: &mut String| shown.push_str(s));
            self.rec.response_body = Some(cut_text(&shown, max).to_string());
        }
        respond_json(self.req, stream, out, 200, &v)
            .await
            .map(|s| (s, usage, estimated))
            .map_err(|e| (e, usage, estimated))
    }

    /// The event stream of a provider that serves the Responses API, passed
    /// on event by event as it arrives: text deltas through the response
    /// guardrails' stream redactors (what they hold back goes out before the
    /// text's `.done` event), whole texts in later events redacted the same
    /// way, sequence numbers renumbered (an event may be added), usage from
    /// `response.completed` (else counted and marked estimated).
    async fn native_stream<S: AsyncWriteRent>(
        &mut self,
        mut answered: ProviderAnswer<'_>,
        canonical: &Value,
        stream: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<(Sent, Usage, bool), (GatewayError, Usage, bool)> {
        let spec = self.spec();
        let target = &spec.aliases[answered.alias].targets[answered.target];
        let provider = &spec.providers[target.provider];
        let idle = self.req.inst.config.raw.limits.send_timeout;
        let mut redactors: Vec<(usize, StreamRedactor)> = self
            .guards(answered.alias, true)
            .into_iter()
            .map(|g| (g, StreamRedactor::new(spec.guardrails[g].0.clone())))
            .collect();
        let mut parser = hypergate_ai::sse::SseParser::new(decode::MAX_EVENT);
        let stats = self.call_stats(answered.alias, answered.target);
        let mut usage: Option<Usage> = None;
        let mut text = String::new();
        let mut clock = TokenClock::default();
        let mut seq = 0u64;
        let (mut done, mut aborted) = (false, false);
        let mut failure: Option<String> = None;
        let mut sent_bytes = 0u64;
        let mut piece = Vec::with_capacity(16 * 1024);
        let mut events = Vec::with_capacity(16 * 1024);
        let mut write_event = |events: &mut Vec<u8>, name: &str, mut data: Value| {
            data["sequence_number"] = seq.into();
            seq += 1;
            hypergate_ai::sse::write_json_event(events, Some(name), &data);
        };
        if !self.open_event_stream(stream, out).await {
            aborted = true;
        }
        while !aborted && !done {
            piece.clear();
            match answered.resp.next(&mut piece).await {
                Ok(true) => {}
                Ok(false) => {
                    failure = Some("the provider ended the stream before its last event".into());
                    break;
                }
                Err(e) => {
                    failure = Some(format!("the provider {e}"));
                    break;
                }
            }
            parser.push(&piece);
            events.clear();
            loop {
                let ev = match parser.next_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(format!("invalid event stream from the provider: {e}"));
                        break;
                    }
                };
                let mut data: Value = match serde_json::from_str(&ev.data) {
                    Ok(v) => v,
                    Err(e) => {
                        failure = Some(format!("invalid event from the provider: {e}"));
                        break;
                    }
                };
                let name = data["type"]
                    .as_str()
                    .or(ev.event.as_deref())
                    .unwrap_or("message")
                    .to_string();
                match name.as_str() {
                    "response.output_text.delta" => {
                        clock.token(self.started, &mut self.rec, &stats);
                        if let Some(Value::String(d)) = data.get_mut("delta") {
                            text.push_str(d);
                            for (_, r) in &mut redactors {
                                *d = r.push(d);
                            }
                        }
                    }
                    "response.output_text.done" => {
                        let tail = flush_redactors(&mut redactors);
                        if !tail.is_empty() {
                            let extra = json!({
                                "type": "response.output_text.delta",
                                "item_id": data["item_id"],
                                "output_index": data["output_index"],
                                "content_index": data["content_index"],
                                "delta": tail,
                                "logprobs": [],
                            });
                            write_event(&mut events, "response.output_text.delta", extra);
                        }
                    }
                    "response.completed" | "response.incomplete" | "response.failed" | "error" => {
                        usage = responses::usage_of(&data["response"]["usage"]).or(usage);
                        if name == "response.failed" || name == "error" {
                            let message = data["response"]["error"]["message"]
                                .as_str()
                                .or(data["message"].as_str())
                                .unwrap_or("the provider's response failed");
                            self.rec.error = Some(provider.redact(message.to_string()));
                        }
                        done = true;
                    }
                    _ => {}
                }
                self.redact_native(answered.alias, &mut data, false);
                write_event(&mut events, &name, data);
            }
            if failure.is_some() {
                break;
            }
            if !events.is_empty() {
                out.clear();
                frame(out, &events, self.req.http10);
                sent_bytes += events.len() as u64;
                if write_out(stream, out, idle).await.is_err() {
                    aborted = true;
                }
            }
        }
        let estimated = usage.is_none() || aborted;
        let usage = match usage {
            Some(u) if !aborted => u,
            _ => Usage {
                prompt: tokens::count_chat_request(canonical),
                completion: tokens::count(&text),
                ..Usage::default()
            },
        };
        clock.finish(usage.completion, &stats);
        if self.rec.request_body.is_some() {
            let max = self.req.inst.config.raw.hypercare.store.capture_max_bytes + CAPTURE_SLACK;
            self.rec.response_body = Some(cut_text(&text, max).to_string());
        }
        self.note_redactions(&redactors);
        if aborted {
            self.rec.client_aborted = true;
            drop(answered);
            let sent = Sent {
                status: 200,
                bytes: sent_bytes,
                keep_alive: false,
            };
            return Ok((sent, usage, true));
        }
        events.clear();
        if let Some(f) = &failure {
            let f = provider.redact(f.clone());
            let e = json!({"type": "error", "code": "server_error", "message": f, "param": null});
            write_event(&mut events, "error", e);
            self.rec.error = Some(f);
        }
        out.clear();
        frame(out, &events, self.req.http10);
        end_stream(out, self.req.http10);
        sent_bytes += events.len() as u64;
        let ok = write_out(stream, out, idle).await.is_ok();
        if failure.is_none() {
            answered.resp.drain(64 * 1024).await;
            answered.resp.finish();
        }
        let sent = Sent {
            status: 200,
            bytes: sent_bytes,
            keep_alive: ok && !self.req.http10 && failure.is_none(),
        };
        Ok((sent, usage, estimated))
    }

    /// The head of an event stream answer, into an emptied `out`.
    fn event_stream_head(&self, out: &mut Vec<u8>) {
        out.clear();
        write_head(
            out,
            self.req,
            200,
            "text/event-stream",
            None,
            !self.req.keep_alive,
        );
    }

    /// Writes the head of an event stream answer; `false` when the client is gone.
    async fn open_event_stream<S: AsyncWriteRent>(
        &self,
        stream: &mut S,
        out: &mut Vec<u8>,
    ) -> bool {
        self.event_stream_head(out);
        write_out(stream, out, self.req.inst.config.raw.limits.send_timeout)
            .await
            .is_ok()
    }

    /// The writer of this call's event stream, in the client's format.
    fn emitter(&self, model: &str, client_usage: bool) -> Emitter {
        let mut em = Emitter::new(self.format, model, client_usage);
        if let Some(call) = &self.responses {
            em.to_responses = Some(responses::ChatStreamToResponses::new(
                &call.id,
                unix_now(),
                model,
                responses::echo_of(&call.body),
            ));
        }
        em
    }

    fn call_stats(&self, alias: usize, target: usize) -> Rc<stats::CallStats> {
        let spec = self.spec();
        self.req.ai.stats.call((
            self.req.route.clone(),
            spec.aliases[alias].name.clone(),
            spec.aliases[alias].targets[target].label.clone(),
            self.req.consumer.clone(),
        ))
    }

    /// Counts the call, fills the record and remembers it for feedback.
    fn finish_stats(
        &mut self,
        alias: usize,
        answered: Option<(usize, usize)>,
        usage: &Usage,
        cost: u64,
        estimated: bool,
        end: Result<u16, ErrorKind>,
    ) {
        let spec = self.spec();
        let target_label: Arc<str> = match answered {
            Some((a, t)) => spec.aliases[a].targets[t].label.clone(),
            None if self.rec.cache_hit => "cache".into(),
            None => "none".into(),
        };
        let stats = self.req.ai.stats.call((
            self.req.route.clone(),
            spec.aliases[alias].name.clone(),
            target_label.clone(),
            self.req.consumer.clone(),
        ));
        // The same rule as the call record's (the record phase decides it again
        // from the same facts).
        let (status, error) = match end {
            Ok(status) => (status, None),
            Err(kind) => (kind.status(), Some(kind)),
        };
        stats.outcome(CallOutcome::of(
            status,
            error,
            self.rec.client_aborted,
            self.rec.error.is_some(),
        ));
        if self.rec.stream {
            stats.streamed.set(stats.streamed.get() + 1);
        }
        stats.usage(usage, cost, estimated);
        stats
            .total
            .record(self.started.elapsed().as_micros() as u64);
        self.rec.prompt_tokens = usage.prompt;
        self.rec.completion_tokens = usage.completion;
        self.rec.cached_tokens = usage.cached;
        self.rec.reasoning_tokens = usage.reasoning;
        self.rec.cost_nanos = cost;
        self.rec.estimated = estimated;
    }

    /// Remembers the call for `POST /v1/feedback`, before its answer is sent (a
    /// client may send feedback the moment it has the answer).
    fn remember(&self, alias: usize, target: Arc<str>) {
        let spec = self.spec();
        let ai = &self.req.ai;
        ai.shared.feedback.remember(
            &ai.remembered,
            self.req.request_id,
            feedback::CallMeta {
                alias: spec.aliases[alias].name.clone(),
                target,
                prompt: self.rec.prompt.as_str().into(),
                version: self.rec.prompt_version.as_str().into(),
                route: self.req.route.clone(),
                consumer: self.req.consumer.clone(),
            },
            spec.feedback_memory / ai.shards,
        );
    }

    /// `POST /prompts/<name>`: fills the template with the body's variables.
    async fn prompt<S: AsyncWriteRent>(
        &mut self,
        p: usize,
        body: &[u8],
        stream: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Sent, GatewayError> {
        let spec = self.spec();
        let prompt = &spec.prompts[p];
        let vars = if body.is_empty() {
            json!({})
        } else {
            parse_json(body)?
        };
        let forced = self.req.prompt_version_header.and_then(|v| {
            prompt
                .versions
                .iter()
                .position(|x| x.version.as_bytes() == v)
        });
        let vi = match forced {
            Some(i) => i,
            None => {
                let mut x = hypergate_upstream::next_random(&self.req.ctx.rng)
                    % u64::from(prompt.total_weight.max(1));
                prompt
                    .versions
                    .iter()
                    .position(|v| {
                        let w = u64::from(v.weight);
                        if x < w {
                            true
                        } else {
                            x -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            }
        };
        let v = &prompt.versions[vi];
        self.rec.prompt = prompt.name.to_string();
        self.rec.prompt_version = v.version.to_string();
        let missing: Vec<&str> = v
            .variables
            .iter()
            .filter(|name| vars.get(name.as_str()).is_none())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "prompt {:?} needs variables: {}",
                    &*prompt.name,
                    missing.join(", ")
                ),
            ));
        }
        let render = |t: &str| {
            let mut s = t.to_string();
            for name in &v.variables {
                let value = match &vars[name.as_str()] {
                    Value::String(x) => x.clone(),
                    other => other.to_string(),
                };
                for pattern in [format!("{{{{{name}}}}}"), format!("{{{{ {name} }}}}")] {
                    s = s.replace(&pattern, &value);
                }
            }
            s
        };
        let mut messages = Vec::new();
        if let Some(sys) = &v.system {
            messages.push(json!({"role": "system", "content": render(sys)}));
        }
        messages.push(json!({"role": "user", "content": render(&v.template)}));
        let mut req = json!({"model": &*spec.aliases[v.alias].name, "messages": messages});
        if let Some(t) = v.temperature {
            req["temperature"] = t.into();
        }
        if let Some(m) = v.max_tokens {
            req["max_tokens"] = m.into();
        }
        self.run(req, stream, out, Some(v.output)).await
    }

    /// `POST /v1/embeddings`: forwarded to an OpenAI-format target of the alias.
    /// `GET` / `DELETE /v1/responses/{id}`: asked of the providers of this
    /// route's models that keep responses (`responses_api = true`), in turn,
    /// until one knows the id; the answer's texts go through the route's
    /// response guardrails. Without such a provider: 400, nothing is stored.
    async fn stored_response<S: AsyncWriteRent>(
        &mut self,
        stream: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Sent, GatewayError> {
        let spec = self.spec();
        let id = self
            .req
            .path
            .split_once("/responses/")
            .map_or("", |(_, id)| id);
        let allowed =
            |i: usize| self.req.route_ai.models.is_empty() || self.req.route_ai.models.contains(&i);
        let mut keepers: Vec<usize> = spec
            .aliases
            .iter()
            .enumerate()
            .filter(|(i, _)| allowed(*i))
            .flat_map(|(_, a)| a.targets.iter().map(|t| t.provider))
            .filter(|&p| spec.providers[p].responses_api)
            .collect();
        keepers.sort_unstable();
        keepers.dedup();
        if keepers.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "no provider of this route keeps responses: the gateway answers the Responses \
                 API by translating each call to its providers' chat APIs, which keep no state, \
                 and stores none itself; keep the response you received",
            )
            .param("response_id"));
        }
        let method = if self.req.method == "DELETE" {
            "DELETE"
        } else {
            "GET"
        };
        let suffix = format!("/responses/{}", path_segment(id));
        let deadline = self.req.started + self.req.deadline;
        let mut last = None;
        for p in keepers {
            let provider = &spec.providers[p];
            let cluster = &self.req.inst.clusters[provider.cluster];
            self.rec.provider = provider.name.to_string();
            self.rec.attempts += 1;
            let mut call = ProviderCall {
                provider,
                method,
                suffix: &suffix,
                body: b"",
                accept_stream: false,
                request_id: self.req.request_id,
                signed: b"",
            };
            let limits = AttemptLimits {
                write_timeout: provider.timeout,
                response_timeout: provider.timeout,
                deadline: Some(deadline),
                max_head: self.req.inst.config.raw.limits.max_response_header_bytes,
                head_request: false,
                verify_open: true,
            };
            let mut head = ResponseHead::default();
            let result = client::attempt(cluster, 0, &mut call, &mut head, out, limits).await;
            let outcome = match &result {
                Ok(_) => Outcome::Answered(head.status),
                Err(f) => Outcome::Failed(*f),
            };
            client::record_outcome(cluster, 0, outcome);
            let resp = match result {
                Ok(resp) => resp,
                Err(f) => {
                    last = Some(GatewayError::new(
                        ErrorKind::ProviderUnreachable,
                        format!("provider {:?}: {}", &*provider.name, f.label()),
                    ));
                    continue;
                }
            };
            self.upstream_us = Some(resp.upstream_us);
            let mut body = resp.into_body(&head, provider.timeout);
            let bytes = body.read_all(MAX_PROVIDER_BODY).await.unwrap_or_default();
            body.finish();
            let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            match head.status {
                200..=299 => {
                    let guards: Vec<usize> = self
                        .req
                        .route_ai
                        .guardrails
                        .iter()
                        .copied()
                        .filter(|&g| spec.guardrails[g].1 != GuardrailStage::Request)
                        .collect();
                    for g in guards {
                        let guard = spec.guardrails[g].0.clone();
                        let mut redacted = false;
                        responses::for_each_output_text(&mut v, &mut |s: &mut String| {
                            if let Some((clean, _)) = guard.redact(s) {
                                *s = clean;
                                redacted = true;
                            }
                        });
                        if redacted {
                            self.note_guard(g, "redact_response");
                        }
                    }
                    return respond_json(self.req, stream, out, head.status, &v).await;
                }
                // Another provider may have stored it.
                404 => {
                    last = Some(
                        GatewayError::new(
                            ErrorKind::NotFound,
                            format!("no response with id {id:?} on this route"),
                        )
                        .param("response_id"),
                    );
                }
                status => {
                    let message =
                        provider.redact(translate::provider_error_message(&v).unwrap_or_else(
                            || format!("provider {:?} answered {status}", &*provider.name),
                        ));
                    let kind = if status >= 500 {
                        ErrorKind::ProviderError
                    } else {
                        ErrorKind::ProviderRejected(status)
                    };
                    return Err(GatewayError::new(
                        kind,
                        format!("provider {:?}: {message}", &*provider.name),
                    ));
                }
            }
        }
        Err(last.unwrap_or_else(|| GatewayError::new(ErrorKind::NotFound, "no such response")))
    }

    /// `POST /v1/messages/count_tokens`: Anthropic's count of a Messages
    /// request, passed through when every target the call could reach is an
    /// Anthropic provider (the count is then exact for whichever answers),
    /// otherwise the gateway tokenizer's estimate, marked `"estimated": true`.
    async fn count_tokens<S: AsyncWriteRent>(
        &mut self,
        body: &[u8],
        stream: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Sent, GatewayError> {
        let spec = self.spec();
        let mut req = parse_json(body)?;
        // Counting takes a Messages request without `max_tokens`.
        let mut full = req.clone();
        if full.get("max_tokens").is_none() {
            full["max_tokens"] = 1.into();
        }
        let canonical = translate::anthropic_request_to_openai(&full).map_err(|e| {
            GatewayError::new(ErrorKind::InvalidRequest, e.to_string()).param(e.path().to_string())
        })?;
        let alias = self.alias_of(&canonical)?;
        self.rec.alias = spec.aliases[alias].name.to_string();
        let plan = self.plan(alias);
        let anthropic_only = !plan.is_empty()
            && plan.iter().all(|&(a, t)| {
                spec.providers[spec.aliases[a].targets[t].provider].kind == ProviderKind::Anthropic
            });
        if !anthropic_only {
            self.rec.estimated = true;
            let n = tokens::count_chat_request(&canonical);
            let answer = json!({"input_tokens": n, "estimated": true});
            return respond_json(self.req, stream, out, 200, &answer).await;
        }
        if let Some(o) = req.as_object_mut() {
            o.remove("max_tokens");
            o.remove("stream");
        }
        self.count_only = true;
        let mut answered = self.attempts(alias, &req, false, out).await?;
        let t = &spec.aliases[answered.alias].targets[answered.target];
        self.rec.target = t.label.to_string();
        self.rec.provider = spec.providers[t.provider].name.to_string();
        self.rec.model = t.model.to_string();
        let body = answered.resp.read_all(MAX_PROVIDER_BODY).await;
        answered.resp.finish();
        let v: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|v: &Value| v["input_tokens"].is_u64())
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::ProviderError,
                    "the provider's token count is not a JSON object with input_tokens",
                )
            })?;
        respond_json(self.req, stream, out, 200, &v).await
    }

    async fn embeddings<S: AsyncWriteRent>(
        &mut self,
        body: &[u8],
        stream: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Sent, GatewayError> {
        let spec = self.spec();
        let req = parse_json(body)?;
        let alias = self.alias_of(&req)?;
        self.rec.alias = spec.aliases[alias].name.to_string();
        let mut answered = self.attempts(alias, &req, false, out).await?;
        let t = &spec.aliases[answered.alias].targets[answered.target];
        self.rec.target = t.label.to_string();
        self.rec.provider = spec.providers[t.provider].name.to_string();
        self.rec.model = t.model.to_string();
        self.remember(alias, t.label.clone());
        let body = answered.resp.read_all(MAX_PROVIDER_BODY).await;
        answered.resp.finish();
        let v: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::ProviderError,
                    "the provider's answer is not JSON",
                )
            })?;
        let usage = Usage {
            prompt: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            ..Usage::default()
        };
        let cost = self.cost(answered.alias, answered.target, &usage);
        self.finish_stats(
            alias,
            Some((answered.alias, answered.target)),
            &usage,
            cost,
            false,
            Ok(200),
        );
        respond_json(self.req, stream, out, 200, &v).await
    }
}

/// The request a provider gets: the path suffix and the JSON body.
fn provider_request(
    provider: &spec::Provider,
    canonical: &Value,
    native: Option<&Value>,
    model: &str,
    streamed: bool,
    count_only: bool,
) -> Result<(String, String), String> {
    if count_only {
        // An Anthropic `count_tokens` body, passed through with the target's model.
        if provider.kind != ProviderKind::Anthropic {
            return Err("token counts pass through to Anthropic providers only".into());
        }
        let mut body = canonical.clone();
        body["model"] = model.into();
        return Ok(("/messages/count_tokens".into(), json_text(&body)));
    }
    if let Some(request) = native {
        // A Responses call to a provider that serves the API: as it is.
        let mut body = request.clone();
        body["model"] = model.into();
        body["stream"] = streamed.into();
        return Ok(("/responses".into(), json_text(&body)));
    }
    let is_embedding = canonical.get("input").is_some() && canonical.get("messages").is_none();
    if is_embedding {
        if provider.kind != ProviderKind::Openai {
            return Err("embeddings need an OpenAI-format provider".into());
        }
        let mut body = canonical.clone();
        body["model"] = model.into();
        return Ok(("/embeddings".into(), json_text(&body)));
    }
    match provider.kind {
        ProviderKind::Openai => {
            let mut body = canonical.clone();
            body["model"] = model.into();
            if streamed {
                body["stream"] = true.into();
                if provider.stream_usage {
                    body["stream_options"] = json!({"include_usage": true});
                }
            } else if let Some(o) = body.as_object_mut() {
                o.remove("stream");
                o.remove("stream_options");
            }
            Ok(("/chat/completions".into(), json_text(&body)))
        }
        ProviderKind::Anthropic => {
            let mut body =
                translate::openai_request_to_anthropic(canonical, DEFAULT_ANTHROPIC_MAX_TOKENS)
                    .map_err(|e| e.to_string())?;
            body["model"] = model.into();
            body["stream"] = streamed.into();
            Ok(("/messages".into(), json_text(&body)))
        }
        ProviderKind::Gemini => {
            let body = hypergate_ai::gemini::openai_request_to_gemini(canonical)
                .map_err(|e| e.to_string())?;
            let model = path_segment(model);
            let suffix = if streamed {
                format!("/models/{model}:streamGenerateContent?alt=sse")
            } else {
                format!("/models/{model}:generateContent")
            };
            Ok((suffix, json_text(&body)))
        }
        ProviderKind::Bedrock => {
            let body = hypergate_ai::bedrock::openai_request_to_converse(canonical)
                .map_err(|e| e.to_string())?;
            let action = if streamed {
                "converse-stream"
            } else {
                "converse"
            };
            Ok((
                format!("/model/{}/{action}", path_segment(model)),
                json_text(&body),
            ))
        }
    }
}

/// `text` as one path segment: every byte outside RFC 3986's unreserved set
/// percent-encoded (a Bedrock model id's `:` becomes `%3A`, which SigV4 signs
/// as sent).
fn path_segment(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    hypergate_core::http::percent_encode(
        &mut out,
        text.as_bytes(),
        hypergate_core::http::unreserved,
    );
    // Only ASCII is written.
    String::from_utf8(out).unwrap_or_default()
}

/// A chat id for answers whose provider gives none (Gemini, Bedrock).
fn chat_id(request_id: &str) -> String {
    format!("chatcmpl-{request_id}")
}

/// Splits a complete canonical answer into the chunks a provider would have
/// streamed: role, content, tool calls, finish reason.
fn response_to_chunks(canon: &Value) -> Vec<Value> {
    let base = |delta: Value, finish: Value| {
        json!({
            "id": canon["id"], "object": "chat.completion.chunk", "created": canon["created"],
            "model": canon["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let message = &canon["choices"][0]["message"];
    let mut chunks = vec![base(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        chunks.push(base(json!({"content": text}), Value::Null));
    }
    for (i, tc) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        chunks.push(base(
            json!({"tool_calls": [{"index": i, "id": tc["id"], "type": "function", "function": tc["function"]}]}),
            Value::Null,
        ));
    }
    let finish = canon["choices"][0]["finish_reason"].clone();
    chunks.push(base(
        json!({}),
        if finish.is_null() {
            "stop".into()
        } else {
            finish
        },
    ));
    chunks
}

/// Whether a canonical chunk carries generated content (text or tool call).
fn chunk_has_token(chunk: &Value) -> bool {
    let delta = &chunk["choices"][0]["delta"];
    delta["content"].as_str().is_some_and(|s| !s.is_empty()) || delta["tool_calls"].is_array()
}

fn flush_redactors(redactors: &mut [(usize, StreamRedactor)]) -> String {
    // Each redactor holds back text the next one has not seen: flush in order,
    // feeding each one's tail through the following ones.
    let mut tail = String::new();
    for (_, r) in redactors.iter_mut() {
        let mut t = r.push(&tail);
        t.push_str(&r.finish());
        tail = t;
    }
    tail
}

/// Completion tokens of a complete answer, counted with the tokenizer.
fn response_tokens(canon: &Value) -> u64 {
    let mut n = 0;
    for c in canon["choices"].as_array().into_iter().flatten() {
        if let Some(s) = c["message"]["content"].as_str() {
            n += tokens::count(s);
        }
        for tc in c["message"]["tool_calls"].as_array().into_iter().flatten() {
            n += tokens::count(tc["function"]["name"].as_str().unwrap_or(""));
            n += tokens::count(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    n
}

/// Strips a Markdown code fence around JSON answers.
fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// Rebuilds a complete answer from streamed chunks (for the cache and for
/// counting tool-call tokens).
#[derive(Default)]
struct Assembler {
    text: String,
    tool_calls: Vec<(String, String, String)>,
    finish_reason: Option<String>,
    id: Option<String>,
}

impl Assembler {
    fn add(&mut self, chunk: &Value) {
        if self.id.is_none() {
            self.id = chunk["id"].as_str().map(str::to_string);
        }
        let c = &chunk["choices"][0];
        if let Some(t) = c["delta"]["content"].as_str() {
            self.text.push_str(t);
        }
        for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap_or(0) as usize;
            while self.tool_calls.len() <= i {
                self.tool_calls.push(Default::default());
            }
            let slot = &mut self.tool_calls[i];
            if let Some(id) = tc["id"].as_str() {
                slot.0 = id.to_string();
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                slot.1.push_str(n);
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                slot.2.push_str(a);
            }
        }
        if let Some(f) = c["finish_reason"].as_str() {
            self.finish_reason = Some(f.to_string());
        }
    }

    fn tool_tokens(&self) -> u64 {
        self.tool_calls
            .iter()
            .map(|(_, n, a)| tokens::count(n) + tokens::count(a))
            .sum()
    }

    /// The complete answer, when the stream finished with text only.
    fn response(&self, model: &str, usage: Usage) -> Option<Value> {
        if !self.tool_calls.is_empty() {
            return None;
        }
        let finish = self.finish_reason.as_deref()?;
        Some(json!({
            "id": self.id.clone().unwrap_or_default(),
            "object": "chat.completion",
            "created": unix_now(),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": finish}],
            "usage": usage.to_openai(),
        }))
    }
}

/// When a stream's tokens arrived: time to the first token and the gaps
/// between tokens as they come, tokens per second at the end.
#[derive(Default)]
struct TokenClock {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl TokenClock {
    /// A token (or a delta of text) arrived now.
    fn token(&mut self, started: Instant, rec: &mut LlmRecord, stats: &stats::CallStats) {
        let now = Instant::now();
        match self.last {
            None => {
                let ttft = now.duration_since(started).as_micros() as u64;
                rec.ttft_us = Some(ttft);
                stats.ttft.record(ttft);
                self.first = Some(now);
            }
            Some(prev) => stats
                .itl
                .record(now.duration_since(prev).as_micros() as u64),
        }
        self.last = Some(now);
    }

    /// The stream ended with `completion` tokens.
    fn finish(&self, completion: u64, stats: &stats::CallStats) {
        if let (Some(first), Some(last)) = (self.first, self.last) {
            let secs = last.duration_since(first).as_secs_f64();
            if secs > 0.0 && completion > 1 {
                stats
                    .tokens_per_second
                    .record(((completion - 1) as f64 / secs) as u64);
            }
        }
    }
}

/// Turns canonical chunks into the client's event stream.
struct Emitter {
    format: Format,
    client_usage: bool,
    to_anthropic: Option<translate::OpenAiStreamToAnthropic>,
    /// Responses API streams: the translator, and whether its opening events went out.
    to_responses: Option<responses::ChatStreamToResponses>,
    started: bool,
    last: Option<Value>,
    /// Prompt tokens for Anthropic's `message_start` (which reports them up front).
    input_tokens: Option<u64>,
}

impl Emitter {
    fn new(format: Format, model: &str, client_usage: bool) -> Self {
        Self {
            format,
            client_usage,
            to_anthropic: (format == Format::Anthropic)
                .then(|| translate::OpenAiStreamToAnthropic::new(model)),
            last: None,
            input_tokens: None,
            to_responses: None,
            started: false,
        }
    }

    /// Writes named events (Anthropic's, the Responses API's).
    fn named(events: &mut Vec<u8>, list: Vec<(String, Value)>) {
        for (name, data) in list {
            hypergate_ai::sse::write_json_event(events, Some(&name), &data);
        }
    }

    /// The Responses translator, after writing its opening events once.
    fn responses(&mut self, events: &mut Vec<u8>) -> Option<&mut responses::ChatStreamToResponses> {
        let tr = self.to_responses.as_mut()?;
        if !self.started {
            self.started = true;
            Self::named(events, tr.start());
        }
        Some(tr)
    }

    /// An OpenAI-format chunk as the client's format writes it.
    fn openai_like(&self, chunk: &Value, events: &mut Vec<u8>) {
        if self.format == Format::Completions {
            if let Some(c) = completions::chunk_to_completion(chunk) {
                hypergate_ai::sse::write_json_event(events, None, &c);
            }
        } else {
            hypergate_ai::sse::write_json_event(events, None, chunk);
        }
    }

    fn chunk(&mut self, chunk: Value, events: &mut Vec<u8>) {
        if let Some(tr) = self.responses(events) {
            let list = tr.push(&chunk);
            Self::named(events, list);
            self.last = Some(chunk);
            return;
        }
        match &mut self.to_anthropic {
            None => self.openai_like(&chunk, events),
            Some(tr) => {
                for (name, mut data) in tr.push(&chunk) {
                    if let (Some(n), "message_start") = (self.input_tokens, name.as_str()) {
                        data["message"]["usage"]["input_tokens"] = n.into();
                    }
                    hypergate_ai::sse::write_json_event(events, Some(&name), &data);
                }
            }
        }
        self.last = Some(chunk);
    }

    /// Text that was held back by redaction, as one more content chunk.
    fn text(&mut self, text: &str, events: &mut Vec<u8>) {
        let mut c = self.last.clone().unwrap_or_else(
            || json!({"object": "chat.completion.chunk", "choices": [{"index": 0}]}),
        );
        c["choices"][0]["delta"] = json!({"content": text});
        c["choices"][0]["finish_reason"] = Value::Null;
        self.chunk(c, events);
    }

    fn end(&mut self, usage: Option<Usage>, events: &mut Vec<u8>) {
        if let Some(tr) = self.responses(events) {
            let list = tr.finish(usage);
            Self::named(events, list);
            return;
        }
        match &mut self.to_anthropic {
            None => {
                if self.client_usage {
                    if let Some(u) = usage {
                        let mut c = self
                            .last
                            .clone()
                            .unwrap_or_else(|| json!({"object": "chat.completion.chunk"}));
                        c["choices"] = json!([]);
                        c["usage"] = u.to_openai();
                        self.openai_like(&c, events);
                    }
                }
                hypergate_ai::sse::write_event(events, None, "[DONE]");
            }
            Some(tr) => {
                for (name, data) in tr.finish(usage) {
                    hypergate_ai::sse::write_json_event(events, Some(&name), &data);
                }
            }
        }
    }

    fn error(&mut self, message: &str, request_id: &str, events: &mut Vec<u8>) {
        if let Some(tr) = self.responses(events) {
            let list = tr.fail(message);
            Self::named(events, list);
            return;
        }
        match self.format {
            Format::OpenAi | Format::Completions | Format::Responses => {
                let mut e = hypergate_core::error::openai_error(
                    "server_error",
                    Some("provider_error"),
                    None,
                    message,
                );
                e["error"]["request_id"] = request_id.into();
                hypergate_ai::sse::write_json_event(events, None, &e);
            }
            Format::Anthropic => {
                let e = hypergate_core::error::anthropic_error(502, "api_error", message);
                hypergate_ai::sse::write_json_event(events, Some("error"), &e);
            }
        }
    }
}

/// Frames stream bytes: one HTTP chunk (HTTP/1.1) or raw (HTTP/1.0, close-delimited).
fn frame(out: &mut Vec<u8>, data: &[u8], http10: bool) {
    if data.is_empty() {
        return;
    }
    if http10 {
        out.extend_from_slice(data);
    } else {
        hypergate_core::http::chunked::write_chunk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

fn end_stream(out: &mut Vec<u8>, http10: bool) {
    if !http10 {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}
