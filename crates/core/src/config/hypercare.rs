//! Raw (serde) types of the `[hypercare]` section: the call-record store, alert
//! rules and webhooks.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `[hypercare]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypercareConfig {
    /// Call records in SQLite.
    pub store: CallStoreConfig,
    /// How often alerts, canaries and hypercare windows are evaluated.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// Alert rules.
    pub alerts: Vec<AlertRuleConfig>,
    /// Webhooks told about alerts firing and resolving.
    pub webhooks: Vec<WebhookConfig>,
    /// Canary analyses of weighted splits.
    pub canaries: Vec<CanaryConfig>,
    /// Hypercare windows with exit criteria.
    pub windows: Vec<WindowConfig>,
}

impl Default for HypercareConfig {
    fn default() -> Self {
        Self {
            store: CallStoreConfig::default(),
            evaluation_interval: Duration::from_secs(5),
            alerts: Vec::new(),
            webhooks: Vec::new(),
            canaries: Vec::new(),
            windows: Vec::new(),
        }
    }
}

/// The `[fleet]` section: several gateways judged and steered as one through
/// Redis (docs/fleet.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Turns the fleet on.
    pub enabled: bool,
    /// The fleet's name: instances with the same name (on the same Redis) are
    /// one fleet; every key it writes starts with `hypergate:fleet:<name>:`.
    pub name: String,
    /// This instance's id; empty: the host name and the admin port
    /// (`host:9901`). Two running instances must not share one.
    pub instance_id: String,
    /// The Redis the fleet uses; absent: the one in `[redis]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<super::edge::RedisConfig>,
    /// How often an instance publishes its aggregates, reads the others' and
    /// renews or seeks the leader's lease.
    #[serde(with = "humantime_serde")]
    pub publish_interval: Duration,
    /// How often an instance looks for a newer fleet decision (so every
    /// instance applies one within this time, plus a Redis round trip).
    #[serde(with = "humantime_serde")]
    pub decision_poll: Duration,
    /// The leader's lease: another instance takes over at most this long (plus
    /// one `publish_interval`) after the leader stops renewing it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            name: "default".into(),
            instance_id: String::new(),
            redis: None,
            publish_interval: Duration::from_secs(1),
            decision_poll: Duration::from_millis(250),
            lease: Duration::from_secs(6),
        }
    }
}

/// The call-record store (`[hypercare.store]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallStoreConfig {
    /// Record every request (on by default).
    pub enabled: bool,
    /// SQLite database file; a relative path is relative to the config file's
    /// directory (the working directory for the embedded config).
    pub path: String,
    /// Raw call records older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most raw call records kept (the oldest go first).
    pub max_calls: u64,
    /// Most bytes of encoded calls kept (the oldest blocks go first; 0: no limit).
    pub max_bytes: u64,
    /// Per-minute rollups older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub rollup_retention: Duration,
    /// Records are written in one transaction at most this often.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rollups of the current minutes are merged into the database this often.
    #[serde(with = "humantime_serde")]
    pub rollup_interval: Duration,
    /// Share of LLM calls (0.0 to 1.0) whose prompt and answer are stored with the
    /// call, PII redacted (e-mail, phone, card, API keys).
    pub capture_llm_bodies: f64,
    /// Share of other proxied calls (0.0 to 1.0) whose request and response
    /// bodies (their first `capture_max_bytes`, de-chunked) are stored with
    /// the call, PII redacted the same way.
    pub capture_api_bodies: f64,
    /// Longest captured body, in bytes (cut beyond).
    pub capture_max_bytes: usize,
    /// Share (0.0 to 1.0) of the calls the rules below do not keep whose row
    /// is stored. Totals (rollups, summary, report, diff) count every call
    /// whatever this says; rows are the detail.
    pub sample_ratio: f64,
    /// Keep the row of every call whose outcome is not `ok`.
    pub keep_errors: bool,
    /// Keep the row of every LLM call.
    pub keep_llm: bool,
    /// Keep the row of every call on a route with a traffic split (canaries,
    /// blue-green).
    pub keep_splits: bool,
}

impl Default for CallStoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "hypercare.db".into(),
            retention: Duration::from_secs(7 * 86_400),
            max_calls: 5_000_000,
            max_bytes: 1 << 30,
            rollup_retention: Duration::from_secs(90 * 86_400),
            flush_interval: Duration::from_millis(200),
            rollup_interval: Duration::from_secs(10),
            capture_llm_bodies: 0.0,
            capture_api_bodies: 0.0,
            capture_max_bytes: 16 * 1024,
            sample_ratio: 1.0,
            keep_errors: true,
            keep_llm: true,
            keep_splits: true,
        }
    }
}

/// What an alert rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Share of answers that are 5xx (threshold: 0.0 to 1.0).
    ErrorRate,
    /// A latency quantile in milliseconds (route latency; upstream latency when a version is given).
    Latency,
    /// A latency quantile over the window divided by the same quantile of the
    /// scope's baseline (`baseline_window` from the call store; threshold: ratio, e.g. 1.5).
    LatencyVsBaseline,
    /// LLM spend in US dollars per hour.
    LlmCost,
    /// LLM tokens (prompt + completion) per minute.
    LlmTokens,
    /// Requests refused by rate limits, per second.
    RateLimited,
    /// Kernel TCP retransmits per second (needs the eBPF probe).
    TcpRetransmits,
}

/// Alert severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    #[default]
    Warning,
    /// Blocks the end of a hypercare window.
    Critical,
}

/// An alert rule (`[[hypercare.alerts]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    /// Unique name.
    pub name: String,
    /// What it watches.
    pub kind: AlertKind,
    /// Limit to one route (all routes when absent).
    #[serde(default)]
    pub route: Option<String>,
    /// Limit to one version label (all when absent).
    #[serde(default)]
    pub version: Option<String>,
    /// Limit LLM rules to one model alias.
    #[serde(default)]
    pub alias: Option<String>,
    /// The look-back window the value is computed over.
    #[serde(default = "default_alert_window", with = "humantime_serde")]
    pub window: Duration,
    /// Fires when the value is above this.
    pub threshold: f64,
    /// Quantile for latency kinds.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// How long the condition must hold before firing.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_duration: Duration,
    /// Severity.
    #[serde(default)]
    pub severity: Severity,
    /// Requests needed in the window before error and latency rules judge.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// `latency_vs_baseline`: how far back the baseline reaches.
    #[serde(default = "default_baseline_window", with = "humantime_serde")]
    pub baseline_window: Duration,
}

fn default_alert_window() -> Duration {
    Duration::from_secs(60)
}
fn default_quantile() -> f64 {
    0.99
}
fn default_min_requests() -> u64 {
    20
}
fn default_baseline_window() -> Duration {
    Duration::from_secs(86_400)
}

/// A webhook notified of alert changes (`[[hypercare.webhooks]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path` or `https://host:port/path`. A secret (webhook URLs
    /// usually carry a token in their path or query): shown as `<redacted>`, and
    /// logs and errors name the hook `hypercare.webhooks[i]` instead.
    pub url: Secret,
    /// PEM CA bundle an `https` webhook's certificate must chain to.
    #[serde(default = "default_webhook_ca_file")]
    pub ca_file: String,
    /// Time allowed for one delivery.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Deliveries retried with exponential backoff, at most this many times.
    #[serde(default = "default_webhook_retries")]
    pub max_retries: u32,
    /// First retry delay (doubles each time).
    #[serde(default = "default_webhook_backoff", with = "humantime_serde")]
    pub backoff: Duration,
}

fn default_webhook_ca_file() -> String {
    "/etc/ssl/certs/ca-certificates.crt".into()
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_webhook_retries() -> u32 {
    5
}
fn default_webhook_backoff() -> Duration {
    Duration::from_millis(500)
}

/// Automated canary analysis of a weighted split (`[[hypercare.canaries]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// A route with a `split` that has both clusters (empty for an alias canary).
    #[serde(default)]
    pub route: String,
    /// An LLM alias (`[[ai.models]]`) whose two targets are compared instead
    /// of a route's clusters; `stable` and `canary` are then `provider/model`.
    #[serde(default)]
    pub alias: Option<String>,
    /// The cluster (or alias target) of the release in production.
    pub stable: String,
    /// The cluster (or alias target) of the new release.
    pub canary: String,
    /// Steps of canary weight (percent, 1-99, increasing); after the last, 100%.
    pub steps: Vec<CanaryStepConfig>,
    /// Error-rate excess the canary may have (0.005 = half a point).
    #[serde(default = "hypergate_analysis::default_error_margin")]
    pub error_margin: f64,
    /// Latency quantile compared.
    #[serde(default = "hypergate_analysis::default_latency_quantile")]
    pub latency_quantile: f64,
    /// Relative slowdown of that quantile still acceptable (0.1 = 10%).
    #[serde(default = "hypergate_analysis::default_latency_tolerance")]
    pub latency_tolerance: f64,
    /// Chance of rolling back an acceptable canary over the whole rollout.
    #[serde(default = "hypergate_analysis::default_alpha")]
    pub alpha: f64,
    /// Alias canaries: relative rise of the mean time to first token still
    /// acceptable (0.2 = 20%); not judged when absent.
    #[serde(default)]
    pub ttft_tolerance: Option<f64>,
    /// Alias canaries: relative rise of the mean cost per call still acceptable.
    #[serde(default)]
    pub cost_tolerance: Option<f64>,
    /// Alias canaries: relative fall of the mean feedback score still acceptable.
    #[serde(default)]
    pub feedback_tolerance: Option<f64>,
}

impl CanaryConfig {
    /// What the canary is named by in views, events and saved progress: the
    /// route, or `alias:<name>`.
    pub fn subject(&self) -> String {
        match &self.alias {
            Some(alias) => format!("alias:{alias}"),
            None => self.route.clone(),
        }
    }
}

/// One step of a canary plan.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStepConfig {
    /// Percent of the route's traffic to the canary.
    pub weight: u32,
    /// Least time at this weight before promotion.
    #[serde(with = "humantime_serde")]
    pub bake: Duration,
    /// Requests each side must serve in this step before promotion.
    #[serde(default = "default_step_requests")]
    pub min_requests: u64,
}

fn default_step_requests() -> u64 {
    1000
}

/// A hypercare window with exit criteria (`[[hypercare.windows]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Unique name.
    pub name: String,
    /// Route watched (all when absent).
    #[serde(default)]
    pub route: Option<String>,
    /// Release (version label) watched (all when absent).
    #[serde(default)]
    pub version: Option<String>,
    /// How long the criteria must hold without a break to exit hypercare.
    #[serde(with = "humantime_serde")]
    pub sustain: Duration,
    /// After this long without meeting the criteria, the verdict is `extend`.
    #[serde(default = "default_window_deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Each evaluation looks at this much recent traffic.
    #[serde(default = "default_window_lookback", with = "humantime_serde")]
    pub lookback: Duration,
    /// Criterion: 5xx share below this.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Criterion: p99 latency below this many milliseconds.
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
    /// Criterion: no critical alert firing.
    #[serde(default = "default_true")]
    pub no_critical_alerts: bool,
    /// Verdict `roll_back` when the error rate goes above this.
    #[serde(default)]
    pub roll_back_error_rate: Option<f64>,
    /// Requests needed in the lookback before the criteria count as met.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_window_deadline() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_window_lookback() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}
