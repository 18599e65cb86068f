//! Raw (serde) types of the `[ai]` section and of a route's `[routes.ai]`:
//! LLM providers, model aliases, prices, budgets, guardrails, prompt templates
//! and the response cache. Validation lives in the `llm` crate (`spec`).

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `[ai]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiConfig {
    /// LLM providers (`[[ai.providers]]`).
    pub providers: Vec<ProviderConfig>,
    /// Model aliases clients ask for (`[[ai.models]]`).
    pub models: Vec<ModelConfig>,
    /// Prices per provider model (`[[ai.prices]]`), in US dollars per million tokens.
    pub prices: Vec<PriceConfig>,
    /// Token and cost budgets (`[[ai.budgets]]`), referenced by routes.
    pub budgets: Vec<BudgetConfig>,
    /// Guardrails (`[[ai.guardrails]]`), referenced by routes and aliases.
    pub guardrails: Vec<GuardrailConfig>,
    /// Prompt templates published as REST endpoints (`[[ai.prompts]]`).
    pub prompts: Vec<PromptConfig>,
    /// Exact-match response cache.
    pub cache: CacheConfig,
    /// Retries and fallbacks.
    pub retry: AiRetryConfig,
    /// Circuit breaker for failing targets.
    pub breaker: BreakerConfig,
    /// Recent calls remembered so `POST /v1/feedback` can attach a score to them.
    pub feedback_memory: usize,
}

impl Default for AiConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            models: Vec::new(),
            prices: Vec::new(),
            budgets: Vec::new(),
            guardrails: Vec::new(),
            prompts: Vec::new(),
            cache: CacheConfig::default(),
            retry: AiRetryConfig::default(),
            breaker: BreakerConfig::default(),
            feedback_memory: 100_000,
        }
    }
}

/// Wire format a provider speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, and every OpenAI-compatible server (vLLM, Ollama, llama.cpp, Azure).
    #[default]
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Google's native Gemini API (`generateContent`, `streamGenerateContent`).
    Gemini,
    /// Amazon Bedrock's Converse API (`converse`, `converse-stream`), signed
    /// with SigV4 (`[ai.providers.aws]`) or with a Bedrock API key (`api_key`).
    Bedrock,
}

/// AWS credentials of a Bedrock provider: every request is signed with SigV4.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region, e.g. `us-east-1`; by default the one in the base URL's host
    /// (`bedrock-runtime.<region>.amazonaws.com`).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id; may be `${AWS_ACCESS_KEY_ID}`.
    pub access_key_id: Secret,
    /// Secret access key; may be `${AWS_SECRET_ACCESS_KEY}`.
    pub secret_access_key: Secret,
    /// Session token of temporary credentials; may be `${AWS_SESSION_TOKEN}`.
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Signing service name.
    #[serde(default = "default_aws_service")]
    pub service: String,
}

fn default_aws_service() -> String {
    "bedrock".into()
}

/// One LLM provider endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name, referenced by model targets.
    pub name: String,
    /// Wire format.
    #[serde(default)]
    pub kind: ProviderKind,
    /// Base URL up to and including the API version, e.g. `https://api.openai.com/v1`,
    /// `http://127.0.0.1:11434/v1`, `https://api.anthropic.com/v1`. May name `${ENV_VARS}`.
    pub base_url: String,
    /// API key; may be `${ENV_VAR}`. A secret: shown as `<redacted>`, and replaced
    /// by `<redacted>` in provider error messages forwarded to clients.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// File holding the API key (trailing whitespace trimmed); instead of `api_key`.
    #[serde(default)]
    pub api_key_file: Option<String>,
    /// Header carrying the key: `authorization` (Bearer, OpenAI and Bedrock
    /// default), `api-key` (Azure OpenAI), `x-api-key` (Anthropic default) or
    /// `x-goog-api-key` (Gemini default).
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Extra request headers (e.g. `anthropic-version`, Azure's query-less deployments); values may name `${ENV_VARS}`.
    /// The values are secrets (they often carry credentials): shown as `<redacted>`.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Query string appended to every call (e.g. Azure's `api-version=2024-06-01`).
    #[serde(default)]
    pub query: Option<String>,
    /// Time allowed for the provider's response head (and between streamed chunks).
    #[serde(default = "default_provider_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_provider_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PEM CA bundle for `https` base URLs.
    #[serde(default = "default_ca_file")]
    pub ca_file: String,
    /// Ask streaming OpenAI-format providers for usage (`stream_options.include_usage`).
    #[serde(default = "default_true")]
    pub stream_usage: bool,
    /// Bedrock: AWS credentials to sign every call with (SigV4).
    #[serde(default)]
    pub aws: Option<AwsConfig>,
    /// OpenAI-format providers that serve the Responses API themselves
    /// (OpenAI, Azure OpenAI): Responses calls go to their `/responses` as
    /// they are (built-in tools and stored state included) instead of being
    /// translated to chat.
    #[serde(default)]
    pub responses_api: bool,
}

fn default_provider_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_provider_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_ca_file() -> String {
    "/etc/ssl/certs/ca-certificates.crt".into()
}
fn default_true() -> bool {
    true
}

/// A model alias and where it sends calls.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients put in `model`.
    pub alias: String,
    /// Deployments balanced by weight.
    pub targets: Vec<TargetConfig>,
    /// Aliases tried in order when every target of this one failed before a byte was sent.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Largest prompt accepted, in tokens (400 beyond it).
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    /// Guardrails applied to calls of this alias (by name), after the route's.
    #[serde(default)]
    pub guardrails: Vec<String>,
}

/// One deployment of a model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Provider name.
    pub provider: String,
    /// Model name at the provider.
    pub model: String,
    /// Relative weight (0 = only as a fallback within the alias).
    #[serde(default = "default_target_weight")]
    pub weight: u32,
}

fn default_target_weight() -> u32 {
    1
}

/// Price of one provider model, US dollars per million tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Model name at the provider (as in targets).
    pub model: String,
    /// Limit the price to one provider (any when absent).
    #[serde(default)]
    pub provider: Option<String>,
    /// Input (prompt) tokens.
    pub input: f64,
    /// Output (completion, including reasoning) tokens.
    pub output: f64,
    /// Cached input tokens (defaults to `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
}

/// What a budget is counted per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// One budget per authenticated consumer (anonymous calls share one).
    #[default]
    Consumer,
    /// One budget for the whole route.
    Route,
}

/// A token and cost budget.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Per consumer or per route.
    #[serde(default)]
    pub scope: BudgetScope,
    /// Tokens (prompt + completion) per minute.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// US dollars per UTC day.
    #[serde(default)]
    pub cost_per_day: Option<f64>,
    /// US dollars per UTC calendar month.
    #[serde(default)]
    pub cost_per_month: Option<f64>,
    /// Completion tokens reserved when a request gives no `max_tokens`.
    #[serde(default = "default_reserve_tokens")]
    pub default_max_tokens: u64,
    /// `local` (this process, exact across its shards) or `redis` (shared by every
    /// gateway using the `[redis]` server).
    #[serde(default)]
    pub backend: BudgetBackend,
    /// With Redis unreachable: `open` admits the call unbudgeted, `closed` refuses it (503).
    #[serde(default)]
    pub failure_mode: BudgetFailureMode,
}

/// Where budget accounts live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetBackend {
    /// In this process.
    #[default]
    Local,
    /// In the `[redis]` server.
    Redis,
}

/// What a Redis budget does when Redis cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetFailureMode {
    /// Admit the call without a reservation.
    #[default]
    Open,
    /// Refuse it with 503.
    Closed,
}

fn default_reserve_tokens() -> u64 {
    1024
}

/// Where a guardrail applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailStage {
    /// Prompts only (before they leave).
    #[default]
    Request,
    /// Model answers only.
    Response,
    /// Both.
    Both,
}

/// A guardrail: deny patterns and PII redaction.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailConfig {
    /// Unique name, reported when it blocks or redacts.
    pub name: String,
    /// Regular expressions; a prompt matching any is refused with 400.
    #[serde(default)]
    pub deny: Vec<String>,
    /// PII kinds to redact: `email`, `phone`, `card`, `api_key`.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Where it applies (deny patterns always apply to requests only).
    #[serde(default)]
    pub apply_to: GuardrailStage,
}

/// A prompt template published as `POST <path>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// Unique name; served at `/prompts/<name>` unless `path` says otherwise.
    pub name: String,
    /// Path it is served on (must be matched by a route with `[routes.ai]`).
    #[serde(default)]
    pub path: Option<String>,
    /// Versions, split by weight.
    pub versions: Vec<PromptVersionConfig>,
}

/// One version of a prompt template.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptVersionConfig {
    /// Version label, recorded on every call.
    pub version: String,
    /// Traffic weight.
    #[serde(default = "default_target_weight")]
    pub weight: u32,
    /// Model alias.
    pub model: String,
    /// System message template (optional).
    #[serde(default)]
    pub system: Option<String>,
    /// User message template with `{{variable}}` placeholders.
    pub template: String,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Completion token cap.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Parse the answer as JSON (`"json"`) or return it as text (`"text"`).
    #[serde(default)]
    pub output: PromptOutput,
}

/// How a prompt's answer is returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptOutput {
    /// `{"output": "<text>"}`.
    #[default]
    Text,
    /// `{"output": <parsed JSON>}` (502 when the model's answer is not JSON).
    Json,
}

/// Exact-match response cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory for cached answers, over all shards (split evenly).
    pub max_bytes: usize,
    /// How long an answer stays.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(300),
        }
    }
}

/// Retries and fallbacks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiRetryConfig {
    /// Most provider attempts per call, over all targets and fallbacks.
    pub max_attempts: u32,
    /// Base delay before retrying a target already tried (doubles, with full jitter).
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest wait for a provider's `Retry-After` before retrying the same target.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Retry (or fall back) after a provider timed out. Off by default: the
    /// provider may still be working on, and billing, the call. Connect errors
    /// and 429/5xx answers before the first byte are always retried.
    pub on_timeout: bool,
    /// Retries allowed as a fraction of calls, per shard (the retry budget,
    /// drawn on the first target's provider): a failing provider cannot turn
    /// every call into `max_attempts` calls.
    pub budget_ratio: f64,
    /// Retries always allowed per second and shard, whatever the ratio.
    pub budget_min_per_second: u32,
}

impl Default for AiRetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            on_timeout: false,
            budget_ratio: 1.0,
            budget_min_per_second: 10,
        }
    }
}

/// Ejects a target after consecutive failures.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures (429, 5xx, timeout, connect error) that open the breaker.
    pub failures: u32,
    /// How long an open breaker keeps the target out.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// `[routes.ai]`: the route serves the AI API (`/v1/chat/completions`,
/// `/v1/messages`, `/v1/embeddings`, `/v1/models`, `/v1/feedback`, prompts).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiRouteConfig {
    /// Aliases allowed on this route (all when empty).
    pub models: Vec<String>,
    /// Budgets enforced (by name).
    pub budgets: Vec<String>,
    /// Guardrails applied (by name), before the alias's.
    pub guardrails: Vec<String>,
    /// Largest prompt accepted, in tokens (the alias's limit applies too).
    pub max_input_tokens: Option<u64>,
    /// Cache answers of `temperature: 0` requests without the client asking
    /// (clients can always opt in with `x-hypergate-cache: on`).
    pub cache_deterministic: bool,
}
