//! Hypercare windows: a route or release under watch until its exit criteria
//! have held without a break for the `sustain` time.
//!
//! On every engine tick each window's criteria are checked over the last
//! `lookback` of traffic (error rate, p99 latency, enough requests) and against
//! the alerts (no critical alert firing). Criteria met start (or continue) a
//! streak; any miss resets it. The verdict is `exit` once the streak reaches
//! `sustain`, `roll_back` while the error rate is above `roll_back_error_rate`,
//! `extend` when `deadline` passed without an exit, else `in_progress`.
//! Windows come from the config or from `POST /hypercare/windows`. Their
//! progress (when opened, since when the criteria hold) is saved in the call
//! store (`hypercare::state`) and restored after a restart, admin-opened
//! windows included. The engine's traffic history starts empty after a
//! restart, so for one `lookback` a restored streak is not broken by too few
//! requests (only by criteria that fail on the traffic there is).

use super::alerts::{AlertState, AlertStatus};
use super::series::{Scope, Series};
use hypergate_core::config::hypercare::{Severity, WindowConfig};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A window being tracked.
pub struct WindowRun {
    /// Its definition.
    pub config: WindowConfig,
    /// Opened by the admin API (not from the config file).
    pub dynamic: bool,
    opened: Instant,
    opened_unix_ms: u64,
    met_since: Option<Instant>,
    met_since_unix_ms: Option<u64>,
    /// Restored after a restart: until then, too few requests do not break the streak.
    warming_up_until: Option<Instant>,
    last: Value,
}

/// The instant `ms` (Unix milliseconds) was, given that `now` is `now_ms`.
fn instant_at(now: Instant, now_ms: u64, ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(now_ms.saturating_sub(ms)))
        .unwrap_or(now)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec} s"),
        (0, m, _) => format!("{m} min"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

impl WindowRun {
    /// Opens a window now.
    pub fn new(config: WindowConfig, dynamic: bool) -> WindowRun {
        WindowRun {
            config,
            dynamic,
            opened: Instant::now(),
            opened_unix_ms: super::unix_ms(),
            met_since: None,
            met_since_unix_ms: None,
            warming_up_until: None,
            last: Value::Null,
        }
    }

    /// A window as a previous process saved it ([`WindowRun::saved`]).
    pub fn restore(config: WindowConfig, saved: &Value) -> WindowRun {
        let (now, now_ms) = (Instant::now(), super::unix_ms());
        let opened_ms = saved["opened_ms"].as_u64().unwrap_or(now_ms);
        let met_ms = saved["met_since_ms"].as_u64();
        WindowRun {
            dynamic: saved["dynamic"].as_bool().unwrap_or(false),
            opened: instant_at(now, now_ms, opened_ms),
            opened_unix_ms: opened_ms,
            met_since: met_ms.map(|ms| instant_at(now, now_ms, ms)),
            met_since_unix_ms: met_ms,
            warming_up_until: Some(now + config.lookback),
            config,
            last: Value::Null,
        }
    }

    /// What to save so that a restart can [`restore`](WindowRun::restore) it.
    pub fn saved(&self) -> Value {
        json!({
            "opened_ms": self.opened_unix_ms,
            "met_since_ms": self.met_since_unix_ms,
            "dynamic": self.dynamic,
        })
    }

    /// Re-evaluates the criteria.
    pub fn tick(&mut self, series: &Series, alerts: &[AlertStatus], now: Instant) {
        let c = &self.config;
        let f = series.figures(
            &Scope {
                route: c.route.clone(),
                version: c.version.clone(),
                cluster: None,
            },
            c.lookback,
        );
        let rate = (f.requests > 0).then(|| f.errors as f64 / f.requests as f64);
        let p99 = f
            .latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0);
        let mut criteria = vec![json!({
            "description": format!("at least {} requests in the last {}", c.min_requests, human(c.lookback)),
            "met": f.requests >= c.min_requests,
            "value": f.requests,
        })];
        if let Some(max) = c.max_error_rate {
            criteria.push(json!({
                "description": format!("error rate below {:.3}%", max * 100.0),
                "met": rate.is_some_and(|r| r < max),
                "value": rate,
            }));
        }
        if let Some(max) = c.max_p99_ms {
            criteria.push(json!({
                "description": format!("p99 below {max} ms"),
                "met": p99.is_some_and(|p| p < max),
                "value": p99,
            }));
        }
        if c.no_critical_alerts {
            let firing: Vec<&str> = alerts
                .iter()
                .filter(|a| a.state == AlertState::Firing && a.rule.severity == Severity::Critical)
                .filter(|a| c.route.is_none() || a.rule.route.is_none() || a.rule.route == c.route)
                .map(|a| a.rule.name.as_str())
                .collect();
            criteria.push(json!({
                "description": "no critical alert firing",
                "met": firing.is_empty(),
                "value": firing,
            }));
        }
        let all_met = criteria.iter().all(|x| x["met"] == true);
        // Right after a restart the history holds less than `lookback`: a
        // restored streak survives a shortage of requests, not a failure.
        let warming_up = self.warming_up_until.is_some_and(|t| now < t);
        let short_only = criteria
            .iter()
            .skip(1)
            .all(|x| x["met"] == true || x["value"].is_null());
        if all_met {
            if self.met_since.is_none() {
                self.met_since = Some(now);
                self.met_since_unix_ms = Some(super::unix_ms());
            }
        } else if !(warming_up && short_only && f.requests < c.min_requests) {
            self.met_since = None;
            self.met_since_unix_ms = None;
        }
        let met_for = self
            .met_since
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        let verdict = if met_for >= c.sustain {
            "exit"
        } else if c
            .roll_back_error_rate
            .is_some_and(|max| rate.is_some_and(|r| r > max))
        {
            "roll_back"
        } else if now.duration_since(self.opened) >= c.deadline {
            "extend"
        } else {
            "in_progress"
        };
        let failing: Vec<&str> = criteria
            .iter()
            .filter(|x| x["met"] != true)
            .filter_map(|x| x["description"].as_str())
            .collect();
        self.last = json!({
            "name": c.name,
            "route": c.route,
            "version": c.version,
            "dynamic": self.dynamic,
            "opened_ms": self.opened_unix_ms,
            "verdict": verdict,
            "criteria": criteria,
            "met_for_s": met_for.as_secs(),
            "required_s": c.sustain.as_secs(),
            "progress": format!(
                "criteria met for {} of {}{}",
                human(met_for.min(c.sustain)),
                human(c.sustain),
                if warming_up { " (restored after a restart; gathering traffic)" } else { "" }
            ),
            "failing_now": failing,
        });
    }

    /// Whether it was evaluated at least once.
    pub fn evaluated(&self) -> bool {
        !self.last.is_null()
    }

    /// The current verdict.
    pub fn verdict(&self) -> &str {
        self.last["verdict"].as_str().unwrap_or("in_progress")
    }

    /// The last evaluation (`/hypercare/windows` entry).
    pub fn json(&self) -> Value {
        if self.last.is_null() {
            json!({"name": self.config.name, "verdict": "in_progress", "progress": "not evaluated yet"})
        } else {
            self.last.clone()
        }
    }
}

/// Checks `[[hypercare.windows]]`.
pub fn validate(
    windows: &[WindowConfig],
    routes: &[String],
    issues: &mut Vec<hypergate_core::config::ConfigIssue>,
) {
    let mut names = std::collections::HashSet::new();
    for (i, w) in windows.iter().enumerate() {
        for (field, reason) in check(w, routes) {
            issues.push(hypergate_core::config::ConfigIssue {
                path: format!("hypercare.windows[{i}].{field}"),
                reason,
            });
        }
        if !names.insert(w.name.as_str()) {
            issues.push(hypergate_core::config::ConfigIssue {
                path: format!("hypercare.windows[{i}].name"),
                reason: format!("duplicate window {:?}", w.name),
            });
        }
    }
}

/// Problems of one window definition, as (field, reason).
pub fn check(w: &WindowConfig, routes: &[String]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if w.name.is_empty() {
        out.push(("name", "must not be empty".to_string()));
    }
    if w.sustain.is_zero() {
        out.push(("sustain", "must be greater than zero".into()));
    }
    if w.lookback.is_zero() {
        out.push(("lookback", "must be greater than zero".into()));
    }
    for (field, v) in [
        ("max_error_rate", w.max_error_rate),
        ("roll_back_error_rate", w.roll_back_error_rate),
    ] {
        if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            out.push((field, "a share between 0 and 1".into()));
        }
    }
    if let Some(r) = &w.route {
        if !routes.contains(r) {
            out.push(("route", format!("unknown route {r:?}")));
        }
    }
    out
}
