//! Alert rules: evaluated by the hypercare engine on every tick, with states
//! pending -> firing -> resolved, notifications to webhooks and the log, and the
//! same rules exported as Prometheus alerting rules.
//!
//! A rule's value is computed over its window from the engine's snapshot
//! history ([`super::series`]); `latency_vs_baseline` also reads the scope's
//! baseline from the call store's rollups. A rule whose condition holds becomes
//! `pending`, and `firing` once it held for its `for` duration; when it stops
//! holding, a firing rule is `resolved` (and `inactive` again on the next tick).
//! Firing and resolving are notified: a log line, and a JSON POST to every
//! webhook from a notifier thread with a bounded queue and retries with
//! exponential backoff, so a slow webhook delays nothing else.

use super::series::{Scope, Series};
use hypergate_core::config::hypercare::{AlertKind, AlertRuleConfig, Severity, WebhookConfig};
use hypergate_core::secret::Secret;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition does not hold.
    Inactive,
    /// It holds, for less than `for`.
    Pending,
    /// It has held for `for`.
    Firing,
    /// It was firing and stopped holding (shown for one tick, and in events).
    Resolved,
}

/// A rule and its state.
#[derive(Debug, Clone, Serialize)]
pub struct AlertStatus {
    /// The rule.
    pub rule: AlertRuleConfig,
    /// State.
    pub state: AlertState,
    /// Last value computed (None: not enough data).
    pub value: Option<f64>,
    /// Unix ms the current state began.
    pub since_ms: u64,
    #[serde(skip)]
    pending_since: Option<Instant>,
}

/// A state change, for `/hypercare/alerts`, webhooks and reports.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    /// Rule name.
    pub alert: String,
    /// `firing` or `resolved`.
    pub state: AlertState,
    /// Severity.
    pub severity: Severity,
    /// Value that caused it.
    pub value: Option<f64>,
    /// Threshold.
    pub threshold: f64,
    /// What it means.
    pub summary: String,
    /// Unix ms.
    pub at_ms: u64,
}

impl AlertStatus {
    /// A rule, not yet evaluated.
    pub fn new(rule: AlertRuleConfig) -> Self {
        Self {
            rule,
            state: AlertState::Inactive,
            value: None,
            since_ms: super::unix_ms(),
            pending_since: None,
        }
    }
}

/// A rule's current value from the history (and the store, for baselines).
pub fn value(
    rule: &AlertRuleConfig,
    series: &Series,
    store: Option<&rusqlite::Connection>,
) -> Option<f64> {
    let scope = Scope {
        route: rule.route.clone(),
        version: rule.version.clone(),
        cluster: None,
    };
    let per_second =
        |n: f64, span: Duration| (span.as_secs_f64() > 0.0).then(|| n / span.as_secs_f64());
    match rule.kind {
        AlertKind::ErrorRate => {
            let f = series.figures(&scope, rule.window);
            (f.requests >= rule.min_requests.max(1)).then(|| f.errors as f64 / f.requests as f64)
        }
        AlertKind::Latency => {
            let f = series.figures(&scope, rule.window);
            let h = f.latency.filter(|h| h.len() >= rule.min_requests.max(1))?;
            Some(h.value_at_quantile(rule.quantile) as f64 / 1000.0)
        }
        AlertKind::LatencyVsBaseline => {
            let f = series.figures(&scope, rule.window);
            let now = f.latency.filter(|h| h.len() >= rule.min_requests.max(1))?;
            let baseline = baseline_quantile(store?, rule)?;
            Some(now.value_at_quantile(rule.quantile) as f64 / baseline.max(1.0))
        }
        AlertKind::LlmCost => {
            let (_, cost, span) =
                series.llm(rule.route.as_deref(), rule.alias.as_deref(), rule.window);
            per_second(cost, span).map(|c| c * 3600.0)
        }
        AlertKind::LlmTokens => {
            let (tokens, _, span) =
                series.llm(rule.route.as_deref(), rule.alias.as_deref(), rule.window);
            per_second(tokens as f64, span).map(|t| t * 60.0)
        }
        AlertKind::RateLimited => {
            let (n, span) = series.rate_limited(rule.window);
            per_second(n as f64, span)
        }
        AlertKind::TcpRetransmits => {
            let (n, span) = series.retransmits(rule.window)?;
            per_second(n as f64, span)
        }
    }
}

/// The scope's latency quantile (µs) over its baseline window, from rollups.
fn baseline_quantile(conn: &rusqlite::Connection, rule: &AlertRuleConfig) -> Option<f64> {
    let now_min = (super::unix_ms() / 60_000) as i64;
    let since = now_min - (rule.baseline_window.as_secs() / 60) as i64;
    let groups = super::query::aggregate(conn, since, now_min + 1).ok()?;
    let mut h = hypergate_core::metrics::new_histogram();
    for ((route, _, version, _), a) in &groups {
        let matches = rule.route.as_deref().is_none_or(|r| r == route)
            && rule.version.as_deref().is_none_or(|v| v == version);
        if let (true, Some(l)) = (matches, &a.latency) {
            let _ = h.add(l);
        }
    }
    (h.len() >= rule.min_requests.max(1)).then(|| h.value_at_quantile(rule.quantile) as f64)
}

/// Moves a rule's state along with its new value; returns the event to notify, if any.
pub fn step(status: &mut AlertStatus, value: Option<f64>, now: Instant) -> Option<AlertEvent> {
    status.value = value;
    let holds = value.is_some_and(|v| v > status.rule.threshold);
    let before = status.state;
    status.state = match (before, holds) {
        (AlertState::Firing, true) => AlertState::Firing,
        (AlertState::Firing, false) => AlertState::Resolved,
        (_, false) => AlertState::Inactive,
        (AlertState::Pending, true)
            if status
                .pending_since
                .is_some_and(|t| now.duration_since(t) >= status.rule.for_duration) =>
        {
            AlertState::Firing
        }
        (AlertState::Pending, true) => AlertState::Pending,
        (_, true) if status.rule.for_duration.is_zero() => AlertState::Firing,
        (_, true) => AlertState::Pending,
    };
    if status.state == AlertState::Pending && before != AlertState::Pending {
        status.pending_since = Some(now);
    }
    if status.state != AlertState::Pending {
        status.pending_since = None;
    }
    if status.state != before {
        status.since_ms = super::unix_ms();
    }
    let notify = matches!(
        (before, status.state),
        (
            AlertState::Pending | AlertState::Inactive | AlertState::Resolved,
            AlertState::Firing
        ) | (AlertState::Firing, AlertState::Resolved)
    );
    notify.then(|| AlertEvent {
        alert: status.rule.name.clone(),
        state: status.state,
        severity: status.rule.severity,
        value,
        threshold: status.rule.threshold,
        summary: describe(&status.rule, value),
        at_ms: super::unix_ms(),
    })
}

/// One line saying what a rule measures and where it stands.
pub fn describe(rule: &AlertRuleConfig, value: Option<f64>) -> String {
    let scope = match (&rule.route, &rule.version) {
        (Some(r), Some(v)) => format!("route {r} version {v}"),
        (Some(r), None) => format!("route {r}"),
        (None, Some(v)) => format!("version {v}"),
        (None, None) => "all routes".into(),
    };
    let v = value.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let window = humantime::format_duration(rule.window);
    match rule.kind {
        AlertKind::ErrorRate => format!(
            "error share (upstream errors, gateway errors, timeouts) of {scope} over {window}: {v} (threshold {})",
            rule.threshold
        ),
        AlertKind::Latency => format!(
            "p{} latency of {scope} over {window}: {v} ms (threshold {} ms)",
            rule.quantile * 100.0,
            rule.threshold
        ),
        AlertKind::LatencyVsBaseline => format!(
            "p{} latency of {scope} over {window} vs its baseline: x{v} (threshold x{})",
            rule.quantile * 100.0,
            rule.threshold
        ),
        AlertKind::LlmCost => format!(
            "LLM spend of {scope}: ${v}/h (threshold ${}/h)",
            rule.threshold
        ),
        AlertKind::LlmTokens => format!(
            "LLM tokens of {scope}: {v}/min (threshold {}/min)",
            rule.threshold
        ),
        AlertKind::RateLimited => format!(
            "rate-limited requests: {v}/s (threshold {}/s)",
            rule.threshold
        ),
        AlertKind::TcpRetransmits => format!(
            "kernel TCP retransmits: {v}/s (threshold {}/s)",
            rule.threshold
        ),
    }
}

/// Sends events to webhooks from its own thread; dropping it stops the thread.
pub struct Notifier {
    tx: crossbeam_channel::Sender<Value>,
}

impl Notifier {
    /// Starts the notifier for `hooks`. Logs name a hook by its place in the
    /// config (`hypercare.webhooks[2]`), never by its URL, which is a secret.
    pub fn start(hooks: Vec<WebhookConfig>) -> Notifier {
        let (tx, rx) = crossbeam_channel::bounded::<Value>(1024);
        let _ = std::thread::Builder::new()
            .name("hypercare-webhooks".into())
            .spawn(move || {
                // Each hook's address and TLS settings, worked out once.
                let hooks: Vec<(String, WebhookConfig, Result<Hook, String>)> = hooks
                    .into_iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let label = format!("hypercare.webhooks[{i}]");
                        let hook = Hook::new(&h);
                        if let Err(e) = &hook {
                            tracing::error!(webhook = %label, error = %e, "webhook unusable");
                        }
                        (label, h, hook)
                    })
                    .collect();
                while let Ok(event) = rx.recv() {
                    let body = event.to_string();
                    for (label, config, hook) in &hooks {
                        if let Ok(hook) = hook {
                            deliver(label, config, hook, &body);
                        }
                    }
                }
            });
        Notifier { tx }
    }

    /// Queues an event (dropped with a log line when the queue is full).
    pub fn send(&self, event: Value) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("webhook queue full: an alert notification was dropped");
        }
    }
}

/// Where a webhook URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `https`.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// Port (80 or 443 when the URL has none).
    pub port: u16,
    /// Path and query: a secret, like the whole URL (tokens live there).
    pub path: Secret,
}

impl WebhookTarget {
    /// Parses an `http://` or `https://` URL. Errors never repeat the URL.
    pub fn parse(url: &Secret) -> Result<WebhookTarget, String> {
        let uri: http::Uri = url
            .expose()
            .parse()
            .map_err(|e| format!("not a URL ({e})"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("must be an http:// or https:// URL".into()),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "the URL has no host".to_string())?;
        Ok(WebhookTarget {
            tls,
            // `[::1]` in the URL, `::1` to connect and verify.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: Secret::new(uri.path_and_query().map_or("/", |p| p.as_str())),
        })
    }
}

/// A webhook ready to post to.
struct Hook {
    target: WebhookTarget,
    /// For `https`: the client config and the name verified.
    tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Hook {
    fn new(config: &WebhookConfig) -> Result<Hook, String> {
        let target = WebhookTarget::parse(&config.url)?;
        let tls = if target.tls {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|_| format!("invalid server name {:?}", target.host))?;
            Some((
                hypergate_upstream::tls::verifying_client_config(&config.ca_file)?,
                name,
            ))
        } else {
            None
        };
        Ok(Hook { target, tls })
    }
}

/// POSTs `body` to the hook, retrying with exponential backoff; logs name it `label`.
fn deliver(label: &str, config: &WebhookConfig, hook: &Hook, body: &str) {
    let mut delay = config.backoff;
    for attempt in 0..=config.max_retries {
        match post(config, hook, body) {
            Ok(status) if (200..300).contains(&status) => return,
            Ok(status) => {
                tracing::warn!(webhook = %label, status, attempt, "webhook refused an alert")
            }
            Err(e) => tracing::warn!(webhook = %label, error = %e, attempt, "webhook unreachable"),
        }
        if attempt < config.max_retries {
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
    tracing::error!(webhook = %label, "alert notification given up after retries");
}

/// One HTTP/1.1 POST over a fresh connection (TLS for `https`); returns the status code.
fn post(config: &WebhookConfig, hook: &Hook, body: &str) -> std::io::Result<u16> {
    let t = &hook.target;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(t.host.as_str(), t.port))?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, config.timeout)?;
    tcp.set_read_timeout(Some(config.timeout))?;
    tcp.set_write_timeout(Some(config.timeout))?;
    let authority = if (t.tls && t.port == 443) || (!t.tls && t.port == 80) {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    // The URL's path and query (its token) leave here, onto the wire.
    let req = format!(
        "POST {} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nuser-agent: hypergate\r\n\r\n{body}",
        t.path.expose(),
        body.len()
    );
    match &hook.tls {
        None => exchange(tcp, req.as_bytes()),
        Some((tls, name)) => {
            let conn = rustls::ClientConnection::new(tls.clone(), name.clone())
                .map_err(std::io::Error::other)?;
            exchange(rustls::StreamOwned::new(conn, tcp), req.as_bytes())
        }
    }
}

/// Writes the request and reads the response head's status code.
fn exchange(mut s: impl Read + Write, req: &[u8]) -> std::io::Result<u16> {
    s.write_all(req)?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = res.parse(&buf) {
            return Ok(res.code.unwrap_or(0));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("no valid response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The event as sent to webhooks.
pub fn webhook_payload(e: &AlertEvent) -> Value {
    json!({"source": "hypergate", "type": "alert", "event": e})
}

/// Prometheus alerting rules equivalent to `rules` (YAML), for Alertmanager users.
pub fn prometheus_rules(rules: &[AlertRuleConfig]) -> String {
    let mut out = String::from("# Generated by `hypergate export prometheus-rules`.\ngroups:\n  - name: hypergate\n    rules:\n");
    for r in rules {
        let mut sel = Vec::new();
        if let Some(route) = &r.route {
            sel.push(format!("route=\"{route}\""));
        }
        if let Some(v) = &r.version {
            sel.push(format!("version=\"{v}\""));
        }
        let sel_str = sel.join(",");
        let w = humantime::format_duration(r.window)
            .to_string()
            .replace(' ', "");
        let expr = match r.kind {
            AlertKind::ErrorRate => format!(
                "sum(rate(hypergate_requests_total{{{}}}[{w}])) / sum(rate(hypergate_requests_total{{{sel_str}}}[{w}])) > {}",
                if sel_str.is_empty() { "status=~\"5xx|none\"".to_string() } else { format!("{sel_str},status=~\"5xx|none\"") },
                r.threshold
            ),
            AlertKind::Latency | AlertKind::LatencyVsBaseline => {
                let (metric, labels) = if r.version.is_some() {
                    ("hypergate_upstream_duration_seconds", sel_str.clone())
                } else {
                    ("hypergate_request_duration_seconds", r.route.as_ref().map(|x| format!("route=\"{x}\"")).unwrap_or_default())
                };
                let q = format!("histogram_quantile({}, sum by (le) (rate({metric}_bucket{{{labels}}}[{w}])))", r.quantile);
                if r.kind == AlertKind::Latency {
                    format!("{q} * 1000 > {}", r.threshold)
                } else {
                    let b = humantime::format_duration(r.baseline_window).to_string().replace(' ', "");
                    format!("{q} / histogram_quantile({}, sum by (le) (rate({metric}_bucket{{{labels}}}[{b}]))) > {}", r.quantile, r.threshold)
                }
            }
            AlertKind::LlmCost => format!("sum(rate(hypergate_llm_cost_usd_total{{{}}}[{w}])) * 3600 > {}", llm_sel(r), r.threshold),
            AlertKind::LlmTokens => format!("sum(rate(hypergate_llm_tokens_total{{{}}}[{w}])) * 60 > {}", llm_sel_kinds(r), r.threshold),
            AlertKind::RateLimited => format!("sum(rate(hypergate_edge_rejections_total{{reason=\"rate_limited\"}}[{w}])) > {}", r.threshold),
            AlertKind::TcpRetransmits => format!("sum(rate(hypergate_tcp_retransmits_total[{w}])) > {}", r.threshold),
        };
        let severity = match r.severity {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        };
        let f = humantime::format_duration(r.for_duration)
            .to_string()
            .replace(' ', "");
        out.push_str(&format!(
            "      - alert: {}\n        expr: '{}'\n        for: {}\n        labels:\n          severity: {severity}\n        annotations:\n          summary: '{}'\n",
            r.name,
            expr.replace('\'', "''"),
            if r.for_duration.is_zero() { "0s".to_string() } else { f },
            describe(r, None).replace('\'', "''")
        ));
    }
    out
}

fn llm_sel(r: &AlertRuleConfig) -> String {
    let mut sel = Vec::new();
    if let Some(route) = &r.route {
        sel.push(format!("route=\"{route}\""));
    }
    if let Some(a) = &r.alias {
        sel.push(format!("alias=\"{a}\""));
    }
    sel.join(",")
}

fn llm_sel_kinds(r: &AlertRuleConfig) -> String {
    let s = llm_sel(r);
    if s.is_empty() {
        "kind=~\"prompt|completion\"".into()
    } else {
        format!("{s},kind=~\"prompt|completion\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: f64, for_duration: Duration) -> AlertRuleConfig {
        AlertRuleConfig {
            name: "r".into(),
            kind: AlertKind::ErrorRate,
            route: Some("api".into()),
            version: None,
            alias: None,
            window: Duration::from_secs(60),
            threshold,
            quantile: 0.99,
            for_duration,
            severity: Severity::Critical,
            min_requests: 1,
            baseline_window: Duration::from_secs(3600),
        }
    }

    #[test]
    fn pending_then_firing_then_resolved() {
        let t0 = Instant::now();
        let mut s = AlertStatus::new(rule(0.1, Duration::from_secs(10)));
        assert!(step(&mut s, Some(0.5), t0).is_none());
        assert_eq!(s.state, AlertState::Pending);
        assert!(step(&mut s, Some(0.5), t0 + Duration::from_secs(5)).is_none());
        let e = step(&mut s, Some(0.5), t0 + Duration::from_secs(11)).unwrap();
        assert_eq!((e.state, s.state), (AlertState::Firing, AlertState::Firing));
        assert!(step(&mut s, Some(0.4), t0 + Duration::from_secs(12)).is_none());
        let e = step(&mut s, Some(0.01), t0 + Duration::from_secs(13)).unwrap();
        assert_eq!(e.state, AlertState::Resolved);
        assert!(step(&mut s, Some(0.01), t0 + Duration::from_secs(14)).is_none());
        assert_eq!(s.state, AlertState::Inactive);
        // A blip shorter than `for` never fires.
        step(&mut s, Some(0.9), t0 + Duration::from_secs(20));
        assert!(step(&mut s, Some(0.0), t0 + Duration::from_secs(25)).is_none());
        assert_eq!(s.state, AlertState::Inactive);
        // No data is not a violation.
        assert!(step(&mut s, None, t0 + Duration::from_secs(30)).is_none());
    }

    #[test]
    fn prometheus_rules_are_yaml_with_the_same_thresholds() {
        let text = prometheus_rules(&[rule(0.05, Duration::from_secs(30))]);
        assert!(text.contains("- alert: r"));
        assert!(text.contains("route=\"api\",status=~\"5xx|none\""));
        assert!(text.contains("> 0.05"));
        assert!(text.contains("for: 30s"));
        assert!(text.contains("severity: critical"));
    }
}
