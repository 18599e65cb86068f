//! Validated AI configuration: providers (each backed by a hidden cluster so calls
//! use the data plane's pools, timeouts and TLS), model aliases with weighted
//! targets and fallbacks, prices, budgets, compiled guardrails and prompt templates.
//!
//! Built from [`AiConfig`] by [`build`], which reports every problem with its path
//! (`ai.models[1].targets[0].provider: unknown provider "azure"`). `${VAR}` in
//! provider URLs, keys and headers is expanded from the environment here, once.

use hypergate_ai::guard::{Guardrail, PiiKind};
use hypergate_core::config::ai::{
    AiConfig, AiRouteConfig, BudgetBackend, BudgetFailureMode, BudgetScope, GuardrailStage,
    PromptOutput, ProviderKind,
};
use hypergate_core::config::raw::{ClusterConfig, EndpointConfig};
use hypergate_core::config::{expand_env, ConfigIssue};
use hypergate_core::secret::Secret;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Prefix of the hidden cluster that carries a provider's connections.
pub const PROVIDER_CLUSTER_PREFIX: &str = "ai:";

/// The LLM layer's spec in a validated config (an empty one when the config
/// carries none, which validation never builds).
pub fn of(config: &hypergate_proxy::spec::Config) -> &AiSpec {
    static EMPTY: std::sync::OnceLock<AiSpec> = std::sync::OnceLock::new();
    config
        .ext
        .downcast_ref::<AiSpec>()
        .unwrap_or_else(|| EMPTY.get_or_init(AiSpec::default))
}

impl AiSpec {
    /// The targets of alias `name` (`provider/model`) with their file weights,
    /// and the alias's index; or why there are none.
    pub fn alias_sides(&self, name: &str) -> Result<(usize, Vec<(String, u32)>), String> {
        let i = *self
            .alias_index
            .get(name)
            .ok_or_else(|| format!("no LLM alias named {name:?}"))?;
        let sides = self.aliases[i]
            .targets
            .iter()
            .map(|t| (t.label.to_string(), t.weight))
            .collect();
        Ok((i, sides))
    }
}

/// Validated `[ai]` section.
#[derive(Debug, Default)]
pub struct AiSpec {
    /// Each route's AI settings, parallel to the config's routes (`None` for
    /// routes that are not AI routes).
    pub routes: Vec<Option<RouteAi>>,
    /// Providers.
    pub providers: Vec<Provider>,
    /// Model aliases.
    pub aliases: Vec<Alias>,
    /// Alias name -> index.
    pub alias_index: HashMap<String, usize>,
    /// Budgets.
    pub budgets: Vec<Arc<BudgetSpec>>,
    /// Guardrails with where they apply.
    pub guardrails: Vec<(Arc<Guardrail>, GuardrailStage)>,
    /// Prompt templates.
    pub prompts: Vec<Prompt>,
    /// Cache memory over all shards, and TTL.
    pub cache_bytes: usize,
    /// Cache TTL.
    pub cache_ttl: Duration,
    /// Most provider attempts per call.
    pub max_attempts: u32,
    /// Retry after a provider timed out (off: the provider may still bill the call).
    pub retry_on_timeout: bool,
    /// Retry backoff base.
    pub backoff: Duration,
    /// Longest `Retry-After` honoured.
    pub max_backoff: Duration,
    /// Consecutive failures that open a target's breaker.
    pub breaker_failures: u32,
    /// How long a breaker stays open.
    pub breaker_open_for: Duration,
    /// Calls remembered for feedback.
    pub feedback_memory: usize,
}

/// A provider. `Debug` leaves out `headers` and `api_key` (they hold the key).
pub struct Provider {
    /// Name.
    pub name: Arc<str>,
    /// Wire format.
    pub kind: ProviderKind,
    /// Index of its hidden cluster in `Config::clusters`.
    pub cluster: usize,
    /// Path prefix from the base URL (no trailing slash), e.g. `/v1`.
    pub base_path: String,
    /// `Host` header value.
    pub host: String,
    /// Headers added to every call (authentication included), pre-rendered
    /// as `name: value\r\n` lines: the wire form of the key.
    pub headers: Vec<u8>,
    /// The API key (`${VAR}` expanded), kept to scrub it from provider error
    /// messages before they are forwarded ([`Provider::redact`]).
    pub api_key: Option<Secret>,
    /// Query string appended to every call (with its leading `?`), or empty.
    pub query: String,
    /// Response-head and between-chunks timeout.
    pub timeout: Duration,
    /// Ask for usage on OpenAI-format streams.
    pub stream_usage: bool,
    /// Bedrock: the credentials every call is signed with (SigV4).
    pub aws: Option<Aws>,
    /// Serves the Responses API itself: Responses calls pass through.
    pub responses_api: bool,
}

/// A Bedrock provider's AWS credentials (`${VAR}`s expanded). `Debug` shows
/// the region and service only.
pub struct Aws {
    /// Region.
    pub region: String,
    /// Signing service name.
    pub service: String,
    /// Access key id.
    pub access_key_id: Secret,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Session token of temporary credentials.
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("cluster", &self.cluster)
            .field("base_path", &self.base_path)
            .field("host", &self.host)
            .field("query", &self.query)
            .field("timeout", &self.timeout)
            .field("stream_usage", &self.stream_usage)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// `text` (a provider's error message, on its way to a client or a log) with
    /// every occurrence of this provider's API key replaced by `<redacted>`.
    pub fn redact(&self, text: String) -> String {
        match &self.api_key {
            // The key is read here only to be searched for.
            Some(key) if !key.expose().is_empty() && text.contains(key.expose()) => {
                text.replace(key.expose(), hypergate_core::secret::REDACTED)
            }
            _ => text,
        }
    }
}

/// One deployment of an alias.
#[derive(Debug)]
pub struct Target {
    /// Provider index.
    pub provider: usize,
    /// Model name at the provider.
    pub model: Arc<str>,
    /// Weight.
    pub weight: u32,
    /// `provider/model`, for metrics, logs and breaker state.
    pub label: Arc<str>,
    /// Price, when configured.
    pub price: Option<Price>,
}

/// Prices, kept exactly as integer pico-dollars per token (a price in dollars
/// per million tokens times 10^6: `$0.15` per million is 150,000 p$ per token),
/// so any price with up to six decimals is exact and a call's cost is exact to
/// the nano-dollar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
    /// Cached prompt tokens.
    pub cached_input: u64,
}

/// The largest cost-per-day budget, in dollars (what a day window's 48 bits
/// of nano-dollars hold).
pub const MAX_COST_PER_DAY: f64 = 281_000.0;
/// The largest cost-per-month budget, in dollars (a month window's 52 bits).
pub const MAX_COST_PER_MONTH: f64 = 4_500_000.0;

/// Pico-dollars per token in one dollar per million tokens.
const PICO_PER_DOLLAR_PER_MILLION: f64 = 1e6;

impl Price {
    /// A price from dollars per million tokens (validated: 0 to 1,000,000, at
    /// most six decimals).
    pub fn from_dollars_per_million(input: f64, output: f64, cached_input: f64) -> Price {
        let pico = |v: f64| (v * PICO_PER_DOLLAR_PER_MILLION).round() as u64;
        Price {
            input: pico(input),
            output: pico(output),
            cached_input: pico(cached_input),
        }
    }

    /// Cost of a call in nano-dollars (rounded half up from pico-dollars).
    pub fn cost_nanos(&self, u: &hypergate_ai::translate::Usage) -> u64 {
        let cached = u.cached.min(u.prompt);
        let pico = u128::from(u.prompt - cached) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(u.completion) * u128::from(self.output);
        u64::try_from((pico + 500) / 1000).unwrap_or(u64::MAX)
    }
}

/// A model alias.
#[derive(Debug)]
pub struct Alias {
    /// Name clients use.
    pub name: Arc<str>,
    /// Deployments.
    pub targets: Vec<Target>,
    /// Sum of target weights.
    pub total_weight: u32,
    /// Fallback aliases (indices), in order.
    pub fallbacks: Vec<usize>,
    /// Prompt size limit.
    pub max_input_tokens: Option<u64>,
    /// Guardrails (indices into `AiSpec::guardrails`).
    pub guardrails: Vec<usize>,
}

/// A validated budget.
#[derive(Debug)]
pub struct BudgetSpec {
    /// Name.
    pub name: Arc<str>,
    /// Per consumer or per route.
    pub scope: BudgetScope,
    /// Tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Nano-dollars per UTC day.
    pub cost_per_day: Option<u64>,
    /// Nano-dollars per UTC month.
    pub cost_per_month: Option<u64>,
    /// Completion tokens reserved when a request names no `max_tokens`.
    pub default_max_tokens: u64,
    /// Local or Redis.
    pub backend: BudgetBackend,
    /// Redis unreachable: admit or refuse.
    pub failure_mode: BudgetFailureMode,
}

/// A prompt template.
#[derive(Debug)]
pub struct Prompt {
    /// Name.
    pub name: Arc<str>,
    /// Path it answers on.
    pub path: String,
    /// Versions.
    pub versions: Vec<PromptVersion>,
    /// Sum of version weights.
    pub total_weight: u32,
}

/// One version of a prompt.
#[derive(Debug)]
pub struct PromptVersion {
    /// Label.
    pub version: Arc<str>,
    /// Weight.
    pub weight: u32,
    /// Alias index.
    pub alias: usize,
    /// System template.
    pub system: Option<String>,
    /// User template.
    pub template: String,
    /// Variables the templates use.
    pub variables: Vec<String>,
    /// Temperature.
    pub temperature: Option<f64>,
    /// Completion cap.
    pub max_tokens: Option<u64>,
    /// Output handling.
    pub output: PromptOutput,
}

/// A route's validated `[routes.ai]`.
#[derive(Debug, Default)]
pub struct RouteAi {
    /// Aliases allowed (indices); empty = all.
    pub models: Vec<usize>,
    /// Budgets (indices).
    pub budgets: Vec<usize>,
    /// Guardrails (indices).
    pub guardrails: Vec<usize>,
    /// Prompt size limit.
    pub max_input_tokens: Option<u64>,
    /// Cache temperature-0 answers unasked.
    pub cache_deterministic: bool,
}

fn issue(issues: &mut Vec<ConfigIssue>, path: impl Into<String>, reason: impl Into<String>) {
    issues.push(ConfigIssue {
        path: path.into(),
        reason: reason.into(),
    });
}

/// Finds the `{{name}}` variables of a template.
fn template_variables(t: &str) -> Result<Vec<String>, String> {
    let mut vars = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unterminated `{{` placeholder".to_string())?;
        let name = after[..end].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "invalid placeholder name {name:?} (letters, digits, `_`)"
            ));
        }
        if !vars.iter().any(|v| v == name) {
            vars.push(name.to_string());
        }
        rest = &after[end + 2..];
    }
    Ok(vars)
}

/// Validates `[ai]`. Returns the spec and one hidden cluster per provider (to be
/// appended to the config's clusters at `first_cluster`, in order).
pub fn build(
    ai: &AiConfig,
    has_redis: bool,
    first_cluster: usize,
    issues: &mut Vec<ConfigIssue>,
) -> (AiSpec, Vec<ClusterConfig>) {
    let mut spec = AiSpec {
        cache_bytes: ai.cache.max_bytes,
        cache_ttl: ai.cache.ttl,
        max_attempts: ai.retry.max_attempts,
        retry_on_timeout: ai.retry.on_timeout,
        backoff: ai.retry.backoff,
        max_backoff: ai.retry.max_backoff,
        breaker_failures: ai.breaker.failures,
        breaker_open_for: ai.breaker.open_for,
        feedback_memory: ai.feedback_memory,
        ..Default::default()
    };
    if !(0.0..=100.0).contains(&ai.retry.budget_ratio) {
        issue(issues, "ai.retry.budget_ratio", "must be between 0 and 100");
    }
    if ai.retry.max_attempts == 0 {
        issue(issues, "ai.retry.max_attempts", "must be at least 1");
    }
    if ai.breaker.failures == 0 {
        issue(issues, "ai.breaker.failures", "must be at least 1");
    }
    if ai.cache.ttl.is_zero() {
        issue(issues, "ai.cache.ttl", "must be greater than zero");
    }
    let mut clusters = Vec::new();
    for (i, p) in ai.providers.iter().enumerate() {
        let path = format!("ai.providers[{i}]");
        if spec.providers.iter().any(|q| *q.name == *p.name) {
            issue(
                issues,
                format!("{path}.name"),
                format!("duplicate provider {:?}", p.name),
            );
        }
        if let Some((provider, mut cluster)) =
            provider(p, &path, first_cluster + clusters.len(), issues)
        {
            // LLM retries draw on the provider cluster's retry budget (their
            // count and rules are `ai.retry`'s, not the cluster's).
            cluster.retry.budget_ratio = ai.retry.budget_ratio;
            cluster.retry.budget_min_per_second = ai.retry.budget_min_per_second;
            spec.providers.push(provider);
            clusters.push(cluster);
        }
    }
    let provider_index = |name: &str| spec.providers.iter().position(|p| &*p.name == name);

    for (i, g) in ai.guardrails.iter().enumerate() {
        let path = format!("ai.guardrails[{i}]");
        if spec.guardrails.iter().any(|(q, _)| q.name() == g.name) {
            issue(
                issues,
                format!("{path}.name"),
                format!("duplicate guardrail {:?}", g.name),
            );
        }
        let mut kinds = Vec::new();
        for (j, r) in g.redact.iter().enumerate() {
            match r.parse::<PiiKind>().ok() {
                Some(k) => kinds.push(k),
                None => issue(
                    issues,
                    format!("{path}.redact[{j}]"),
                    format!("unknown PII kind {r:?} (expected email, phone, card, api_key)"),
                ),
            }
        }
        if g.deny.is_empty() && g.redact.is_empty() {
            issue(issues, path.clone(), "needs deny patterns or redact kinds");
        }
        match Guardrail::new(&g.name, &g.deny, &kinds) {
            Ok(guard) => spec.guardrails.push((Arc::new(guard), g.apply_to)),
            Err(e) => issue(issues, format!("{path}.deny"), e.to_string()),
        }
    }
    let guard_index =
        |name: &str, spec: &AiSpec| spec.guardrails.iter().position(|(g, _)| g.name() == name);

    let mut prices: HashMap<(Option<String>, String), Price> = HashMap::new();
    for (i, p) in ai.prices.iter().enumerate() {
        let path = format!("ai.prices[{i}]");
        for (field, v) in [
            ("input", Some(p.input)),
            ("output", Some(p.output)),
            ("cached_input", p.cached_input),
        ] {
            if let Some(v) = v {
                if !(0.0..=1_000_000.0).contains(&v) {
                    issue(
                        issues,
                        format!("{path}.{field}"),
                        "must be between 0 and 1000000 (dollars per million tokens)",
                    );
                } else if ((v * PICO_PER_DOLLAR_PER_MILLION).round()
                    - v * PICO_PER_DOLLAR_PER_MILLION)
                    .abs()
                    > 1e-3
                {
                    issue(
                        issues,
                        format!("{path}.{field}"),
                        format!(
                            "{v} has more than six decimals: prices are kept exactly, \
                             as pico-dollars per token"
                        ),
                    );
                }
            }
        }
        if let Some(pr) = &p.provider {
            if provider_index(pr).is_none() {
                issue(
                    issues,
                    format!("{path}.provider"),
                    format!("unknown provider {pr:?}"),
                );
            }
        }
        prices.insert(
            (p.provider.clone(), p.model.clone()),
            Price::from_dollars_per_million(p.input, p.output, p.cached_input.unwrap_or(p.input)),
        );
    }

    for (i, m) in ai.models.iter().enumerate() {
        let path = format!("ai.models[{i}]");
        if spec.alias_index.insert(m.alias.clone(), i).is_some() {
            issue(
                issues,
                format!("{path}.alias"),
                format!("duplicate alias {:?}", m.alias),
            );
        }
    }
    for (i, m) in ai.models.iter().enumerate() {
        let path = format!("ai.models[{i}]");
        let mut targets = Vec::new();
        if m.targets.is_empty() {
            issue(
                issues,
                format!("{path}.targets"),
                "at least one target is required",
            );
        }
        for (j, t) in m.targets.iter().enumerate() {
            let Some(pi) = provider_index(&t.provider) else {
                issue(
                    issues,
                    format!("{path}.targets[{j}].provider"),
                    format!("unknown provider {:?}", t.provider),
                );
                continue;
            };
            if t.weight > 1_000_000 {
                issue(
                    issues,
                    format!("{path}.targets[{j}].weight"),
                    "must be at most 1000000",
                );
            }
            let price = prices
                .get(&(Some(t.provider.clone()), t.model.clone()))
                .or_else(|| prices.get(&(None, t.model.clone())))
                .copied();
            targets.push(Target {
                provider: pi,
                model: t.model.as_str().into(),
                weight: t.weight,
                label: format!("{}/{}", t.provider, t.model).into(),
                price,
            });
        }
        let total_weight = targets.iter().map(|t| t.weight.min(1_000_000)).sum();
        if !targets.is_empty() && total_weight == 0 {
            issue(
                issues,
                format!("{path}.targets"),
                "weights must not all be 0",
            );
        }
        let mut fallbacks = Vec::new();
        for (j, f) in m.fallbacks.iter().enumerate() {
            match ai.models.iter().position(|x| x.alias == *f) {
                Some(k) if k == i => issue(
                    issues,
                    format!("{path}.fallbacks[{j}]"),
                    "an alias cannot fall back to itself",
                ),
                Some(k) => fallbacks.push(k),
                None => issue(
                    issues,
                    format!("{path}.fallbacks[{j}]"),
                    format!("unknown alias {f:?}"),
                ),
            }
        }
        let mut guardrails = Vec::new();
        for (j, g) in m.guardrails.iter().enumerate() {
            match guard_index(g, &spec) {
                Some(k) => guardrails.push(k),
                None => issue(
                    issues,
                    format!("{path}.guardrails[{j}]"),
                    format!("unknown guardrail {g:?}"),
                ),
            }
        }
        spec.aliases.push(Alias {
            name: m.alias.as_str().into(),
            targets,
            total_weight,
            fallbacks,
            max_input_tokens: m.max_input_tokens,
            guardrails,
        });
    }

    for (i, b) in ai.budgets.iter().enumerate() {
        let path = format!("ai.budgets[{i}]");
        if spec.budgets.iter().any(|q| *q.name == *b.name) {
            issue(
                issues,
                format!("{path}.name"),
                format!("duplicate budget {:?}", b.name),
            );
        }
        if b.tokens_per_minute.is_none() && b.cost_per_day.is_none() && b.cost_per_month.is_none() {
            issue(
                issues,
                path.clone(),
                "set at least one of tokens_per_minute, cost_per_day, cost_per_month",
            );
        }
        // Limits in nano-dollars, as the budget windows count.
        let nanos = |v: Option<f64>, max: f64, field: &str, issues: &mut Vec<ConfigIssue>| {
            v.and_then(|d| {
                if (0.0..=max).contains(&d) {
                    Some((d * 1e9).round() as u64)
                } else {
                    issue(
                        issues,
                        format!("{path}.{field}"),
                        format!("must be between 0 and {} dollars", max.floor()),
                    );
                    None
                }
            })
        };
        let cost_per_day = nanos(b.cost_per_day, MAX_COST_PER_DAY, "cost_per_day", issues);
        let cost_per_month = nanos(
            b.cost_per_month,
            MAX_COST_PER_MONTH,
            "cost_per_month",
            issues,
        );
        if b.backend == BudgetBackend::Redis && !has_redis {
            issue(
                issues,
                format!("{path}.backend"),
                "\"redis\" needs a [redis] section",
            );
        }
        if b.tokens_per_minute.is_some_and(|t| t >= 1 << 40) {
            issue(
                issues,
                format!("{path}.tokens_per_minute"),
                "must be below 2^40",
            );
        }
        spec.budgets.push(Arc::new(BudgetSpec {
            name: b.name.as_str().into(),
            scope: b.scope,
            tokens_per_minute: b.tokens_per_minute,
            cost_per_day,
            cost_per_month,
            default_max_tokens: b.default_max_tokens,
            backend: b.backend,
            failure_mode: b.failure_mode,
        }));
    }

    for (i, p) in ai.prompts.iter().enumerate() {
        let path = format!("ai.prompts[{i}]");
        let route_path = p
            .path
            .clone()
            .unwrap_or_else(|| format!("/prompts/{}", p.name));
        if !route_path.starts_with('/') {
            issue(issues, format!("{path}.path"), "must start with '/'");
        }
        if spec.prompts.iter().any(|q| q.path == route_path) {
            issue(
                issues,
                format!("{path}.path"),
                format!("another prompt is served on {route_path:?}"),
            );
        }
        if p.versions.is_empty() {
            issue(
                issues,
                format!("{path}.versions"),
                "at least one version is required",
            );
        }
        let mut versions = Vec::new();
        for (j, v) in p.versions.iter().enumerate() {
            let vpath = format!("{path}.versions[{j}]");
            let Some(&alias) = spec.alias_index.get(&v.model) else {
                issue(
                    issues,
                    format!("{vpath}.model"),
                    format!("unknown alias {:?}", v.model),
                );
                continue;
            };
            let mut variables = Vec::new();
            for (field, t) in [
                ("template", Some(&v.template)),
                ("system", v.system.as_ref()),
            ] {
                if let Some(t) = t {
                    match template_variables(t) {
                        Ok(vs) => {
                            for x in vs {
                                if !variables.contains(&x) {
                                    variables.push(x);
                                }
                            }
                        }
                        Err(e) => issue(issues, format!("{vpath}.{field}"), e),
                    }
                }
            }
            versions.push(PromptVersion {
                version: v.version.as_str().into(),
                weight: v.weight,
                alias,
                system: v.system.clone(),
                template: v.template.clone(),
                variables,
                temperature: v.temperature,
                max_tokens: v.max_tokens,
                output: v.output,
            });
        }
        let total_weight = versions.iter().map(|v| v.weight.min(1_000_000)).sum();
        if !versions.is_empty() && total_weight == 0 {
            issue(
                issues,
                format!("{path}.versions"),
                "weights must not all be 0",
            );
        }
        spec.prompts.push(Prompt {
            name: p.name.as_str().into(),
            path: route_path,
            versions,
            total_weight,
        });
    }
    (spec, clusters)
}

#[allow(
    clippy::disallowed_methods,
    reason = "key files are read while a config is built, off the shards"
)]
fn provider(
    p: &hypergate_core::config::ai::ProviderConfig,
    path: &str,
    cluster: usize,
    issues: &mut Vec<ConfigIssue>,
) -> Option<(Provider, ClusterConfig)> {
    let before = issues.len();
    let base = expand_env(&p.base_url, &format!("{path}.base_url"), issues);
    let uri: http::Uri = match base.parse() {
        Ok(u) => u,
        Err(e) => {
            issue(
                issues,
                format!("{path}.base_url"),
                format!("invalid URL: {e}"),
            );
            return None;
        }
    };
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            issue(
                issues,
                format!("{path}.base_url"),
                "must start with http:// or https://",
            );
            return None;
        }
    };
    let Some(host) = uri.host() else {
        issue(issues, format!("{path}.base_url"), "has no host");
        return None;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host_header = match uri.port_u16() {
        Some(port) => format!("{}:{port}", uri.host().unwrap_or_default()),
        None => uri.host().unwrap_or_default().to_string(),
    };
    let base_path = uri.path().trim_end_matches('/').to_string();
    let key = match (&p.api_key, &p.api_key_file) {
        (Some(_), Some(_)) => {
            issue(
                issues,
                format!("{path}.api_key"),
                "set api_key or api_key_file, not both",
            );
            None
        }
        (Some(k), None) => Some(Secret::new(expand_env(
            k.expose(),
            &format!("{path}.api_key"),
            issues,
        ))),
        (None, Some(f)) => {
            let f = expand_env(f, &format!("{path}.api_key_file"), issues);
            match std::fs::read_to_string(&f) {
                Ok(k) => Some(Secret::new(k.trim())),
                Err(e) => {
                    issue(
                        issues,
                        format!("{path}.api_key_file"),
                        format!("cannot read {f:?}: {e}"),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    };
    let mut headers = Vec::new();
    let mut add = |name: &str, value: &str, field: String, issues: &mut Vec<ConfigIssue>| {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            issue(issues, field, format!("invalid header name {name:?}"));
        } else if http::HeaderValue::from_str(value).is_err() {
            issue(issues, field, "invalid header value");
        } else {
            headers.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            headers.extend_from_slice(b": ");
            headers.extend_from_slice(value.as_bytes());
            headers.extend_from_slice(b"\r\n");
        }
    };
    if let Some(key) = &key {
        let header = p.auth_header.clone().unwrap_or_else(|| match p.kind {
            ProviderKind::Openai | ProviderKind::Bedrock => "authorization".into(),
            ProviderKind::Anthropic => "x-api-key".into(),
            ProviderKind::Gemini => "x-goog-api-key".into(),
        });
        // The key leaves here, into the pre-rendered headers sent with every call.
        let value = if header.eq_ignore_ascii_case("authorization") {
            format!("Bearer {}", key.expose())
        } else {
            key.expose().to_string()
        };
        add(&header, &value, format!("{path}.api_key"), issues);
    }
    let mut has_version = false;
    for (k, v) in &p.headers {
        // Header values are secrets too: expanded straight into the wire form.
        let v = expand_env(v.expose(), &format!("{path}.headers.{k}"), issues);
        has_version |= k.eq_ignore_ascii_case("anthropic-version");
        add(k, &v, format!("{path}.headers.{k}"), issues);
    }
    if p.kind == ProviderKind::Anthropic && !has_version {
        add(
            "anthropic-version",
            "2023-06-01",
            format!("{path}.headers"),
            issues,
        );
    }
    let query = match &p.query {
        Some(q) if !q.is_empty() => format!("?{}", q.trim_start_matches('?')),
        _ => String::new(),
    };
    let aws = match (&p.aws, p.kind) {
        (Some(_), k) if k != ProviderKind::Bedrock => {
            issue(
                issues,
                format!("{path}.aws"),
                "AWS credentials are for kind = \"bedrock\" providers",
            );
            None
        }
        (Some(a), _) => {
            let region = match &a.region {
                Some(r) => Some(expand_env(r, &format!("{path}.aws.region"), issues)),
                // bedrock-runtime.<region>.amazonaws.com
                None => host
                    .strip_suffix(".amazonaws.com")
                    .and_then(|h| h.split('.').nth(1))
                    .map(str::to_string),
            };
            let secret = |s: &Secret, field: &str, issues: &mut Vec<ConfigIssue>| {
                Secret::new(expand_env(
                    s.expose(),
                    &format!("{path}.aws.{field}"),
                    issues,
                ))
            };
            match region.filter(|r| !r.is_empty()) {
                Some(region) => Some(Aws {
                    region,
                    service: a.service.clone(),
                    access_key_id: secret(&a.access_key_id, "access_key_id", issues),
                    secret_access_key: secret(&a.secret_access_key, "secret_access_key", issues),
                    session_token: a
                        .session_token
                        .as_ref()
                        .map(|t| secret(t, "session_token", issues)),
                }),
                None => {
                    issue(
                        issues,
                        format!("{path}.aws.region"),
                        "required: the base URL's host does not name a region",
                    );
                    None
                }
            }
        }
        (None, ProviderKind::Bedrock) if key.is_none() => {
            issue(
                issues,
                format!("{path}.aws"),
                "a Bedrock provider needs AWS credentials ([aws] access_key_id and \
                 secret_access_key, signed with SigV4) or a Bedrock API key (api_key)",
            );
            None
        }
        (None, _) => None,
    };
    if p.responses_api && p.kind != ProviderKind::Openai {
        issue(
            issues,
            format!("{path}.responses_api"),
            "only OpenAI-format providers (kind = \"openai\") serve the Responses API",
        );
    }
    if p.timeout.is_zero() {
        issue(
            issues,
            format!("{path}.timeout"),
            "must be greater than zero",
        );
    }
    if issues.len() > before {
        return None;
    }
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let cluster_cfg = ClusterConfig {
        name: format!("{PROVIDER_CLUSTER_PREFIX}{}", p.name),
        version: String::new(),
        endpoints: vec![EndpointConfig { address, weight: 1 }],
        lb: Default::default(),
        hash_on: None,
        connect_timeout: p.connect_timeout,
        read_timeout: p.timeout,
        pool: Default::default(),
        health_check: None,
        outlier: Default::default(),
        retry: Default::default(),
        tls: tls.then(|| hypergate_core::config::edge::UpstreamTlsConfig {
            ca_file: p.ca_file.clone(),
            server_name: host.clone(),
        }),
        protocol: Default::default(),
    };
    Some((
        Provider {
            name: p.name.as_str().into(),
            kind: p.kind,
            cluster,
            base_path,
            host: host_header,
            headers,
            api_key: key,
            query,
            timeout: p.timeout,
            stream_usage: p.stream_usage,
            aws,
            responses_api: p.responses_api,
        },
        cluster_cfg,
    ))
}

/// Validates a route's `[routes.ai]` against the spec.
pub fn route(
    r: &AiRouteConfig,
    spec: &AiSpec,
    path: &str,
    issues: &mut Vec<ConfigIssue>,
) -> RouteAi {
    let mut out = RouteAi {
        max_input_tokens: r.max_input_tokens,
        cache_deterministic: r.cache_deterministic,
        ..Default::default()
    };
    for (j, m) in r.models.iter().enumerate() {
        match spec.alias_index.get(m) {
            Some(&k) => out.models.push(k),
            None => issue(
                issues,
                format!("{path}.ai.models[{j}]"),
                format!("unknown alias {m:?}"),
            ),
        }
    }
    for (j, b) in r.budgets.iter().enumerate() {
        match spec.budgets.iter().position(|x| *x.name == **b) {
            Some(k) => out.budgets.push(k),
            None => issue(
                issues,
                format!("{path}.ai.budgets[{j}]"),
                format!("unknown budget {b:?}"),
            ),
        }
    }
    for (j, g) in r.guardrails.iter().enumerate() {
        match spec.guardrails.iter().position(|(x, _)| x.name() == g) {
            Some(k) => out.guardrails.push(k),
            None => issue(
                issues,
                format!("{path}.ai.guardrails[{j}]"),
                format!("unknown guardrail {g:?}"),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_and_missing_variables() {
        let mut issues = Vec::new();
        std::env::set_var("HYPERGATE_TEST_KEY", "sk-test");
        assert_eq!(
            expand_env("a ${HYPERGATE_TEST_KEY} b", "x", &mut issues),
            "a sk-test b"
        );
        assert!(issues.is_empty());
        expand_env("${HYPERGATE_SURELY_UNSET_VAR}", "p.api_key", &mut issues);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "p.api_key");
        assert!(issues[0].reason.contains("HYPERGATE_SURELY_UNSET_VAR"));
    }

    #[test]
    fn template_variables_are_found_once() {
        assert_eq!(
            template_variables("Classify {{text}} in {{ lang }} ({{text}})").unwrap(),
            vec!["text", "lang"]
        );
        assert!(template_variables("oops {{text").is_err());
        assert!(template_variables("{{bad name}}").is_err());
    }

    #[test]
    fn cost_is_exact_to_the_nano_dollar() {
        let p = Price::from_dollars_per_million(2.5, 10.0, 1.25);
        let u = |prompt, completion, cached| hypergate_ai::translate::Usage {
            prompt,
            completion,
            cached,
            reasoning: 0,
        };
        // 800 x 2.5 + 200 x 1.25 + 500 x 10 = 7,250 micro-dollars.
        assert_eq!(p.cost_nanos(&u(1000, 500, 200)), 7_250_000);
        // A 3-token embedding at $0.02 per million: 60 nano-dollars (it was $0).
        let embedding = Price::from_dollars_per_million(0.02, 0.0, 0.02);
        assert_eq!(embedding.cost_nanos(&u(3, 0, 0)), 60);
        // 4.5 micro-dollars stays 4.5 (it was booked as 5).
        let small = Price::from_dollars_per_million(0.15, 0.6, 0.075);
        assert_eq!(small.cost_nanos(&u(10, 5, 0)), 4_500);
        // Prices with six decimals are exact: $0.000001 per million is 1 p$ per token.
        let tiny = Price::from_dollars_per_million(0.000_001, 0.0, 0.0);
        assert_eq!(tiny.input, 1);
        assert_eq!(tiny.cost_nanos(&u(1_000_000, 0, 0)), 1_000);
    }
}
