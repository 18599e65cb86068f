//! The hypercare engine: one control thread that, every `evaluation_interval`,
//! takes a merged stats snapshot from the shards (the same one `/metrics` uses,
//! so nothing new runs on the request path), adds it to the history, and
//! evaluates alert rules. Its view is what `/hypercare/alerts` shows.
//!
//! Canary and window progress is saved in the call store when it changes and
//! restored on the first tick (`hypercare::state`), with the recent canary
//! decisions, so a restart resumes rollouts and windows where they were.
//!
//! In a fleet (`[fleet]`, [`super::fleet`]) the history holds the fleet's
//! totals instead of this instance's, the leader alone evaluates (its weight
//! changes become fleet decisions, its webhooks the only ones) and publishes
//! its state; followers show the leader's views, and a new leader resumes
//! canaries and windows from the state its predecessor published.
//!
//! The thread ends when the gateway drains.

use super::alerts::{self, AlertEvent, AlertState, AlertStatus, Notifier};
use super::canary::CanaryRun;
use super::fleet::{Fleet, FleetControl, LeaderState};
use super::series::{total_retransmits, Point, Series};
use super::state::{self, definition, Entry, Saved};
use super::windows::WindowRun;
use hypergate_core::config::hypercare::{Severity, WindowConfig};
use hypergate_runtime::control::Control;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// In a fleet, how long the engine waits for the fleet's next merge when the
/// last one was already judged.
const FLEET_WAIT: Duration = Duration::from_millis(20);

/// Alert events kept for `/hypercare/alerts` and reports.
const EVENTS_KEPT: usize = 1000;

/// What the engine shows to the admin API.
#[derive(Default)]
pub struct EngineView {
    /// Every rule with its state.
    pub alerts: Vec<AlertStatus>,
    /// Recent firing/resolved events, oldest first.
    pub events: VecDeque<AlertEvent>,
    /// Canary runs.
    pub canaries: Vec<CanaryRun>,
    /// Canary decisions other than repeated holds, oldest first.
    pub decisions: VecDeque<Value>,
    /// Hypercare windows (from the config, and opened through the admin API).
    pub windows: Vec<WindowRun>,
    /// On a fleet follower: the leader's state, shown instead of the above.
    pub remote: Option<super::fleet::LeaderState>,
}

impl EngineView {
    /// `/hypercare/canary`.
    pub fn canary_json(&self) -> Value {
        if let Some(r) = &self.remote {
            return r.views["canary"].clone();
        }
        json!({
            "canaries": self.canaries.iter().map(CanaryRun::json).collect::<Vec<_>>(),
            "decisions": self.decisions,
        })
    }

    /// `/hypercare/windows`.
    pub fn windows_json(&self) -> Value {
        if let Some(r) = &self.remote {
            return r.views["windows"].clone();
        }
        json!({"windows": self.windows.iter().map(WindowRun::json).collect::<Vec<_>>()})
    }

    /// Hypercare's state as Prometheus text: each canary's weight, step, phase
    /// and decisions, each alert rule's state, each window's verdict and
    /// progress (gauges, except the decision counts).
    pub fn prometheus(&self, out: &mut String) {
        if let Some(r) = &self.remote {
            out.push_str(&r.prometheus);
            return;
        }
        self.local_prometheus(out);
    }

    fn local_prometheus(&self, out: &mut String) {
        use hypergate_core::metrics::{escape, header};
        use std::fmt::Write;
        let str_of = |v: &Value| escape(v.as_str().unwrap_or(""));
        let canaries: Vec<Value> = self.canaries.iter().map(CanaryRun::json).collect();
        header(
            out,
            "hypergate_canary_weight",
            "gauge",
            "The canary's share of its route's (or alias's) traffic, percent.",
        );
        for c in &canaries {
            let _ = writeln!(
                out,
                "hypergate_canary_weight{{route=\"{}\",stable=\"{}\",canary=\"{}\"}} {}",
                str_of(&c["route"]),
                str_of(&c["stable"]),
                str_of(&c["canary"]),
                c["weight"].as_u64().unwrap_or(0)
            );
        }
        header(
            out,
            "hypergate_canary_step",
            "gauge",
            "The canary's current step (0-based).",
        );
        for c in &canaries {
            let _ = writeln!(
                out,
                "hypergate_canary_step{{route=\"{}\",canary=\"{}\"}} {}",
                str_of(&c["route"]),
                str_of(&c["canary"]),
                c["status"]["step"].as_u64().unwrap_or(0)
            );
        }
        header(
            out,
            "hypergate_canary_phase",
            "gauge",
            "1 for the canary's phase (running, rolled_back, completed), 0 for the others.",
        );
        for c in &canaries {
            for phase in ["running", "rolled_back", "completed"] {
                let _ = writeln!(
                    out,
                    "hypergate_canary_phase{{route=\"{}\",canary=\"{}\",phase=\"{phase}\"}} {}",
                    str_of(&c["route"]),
                    str_of(&c["canary"]),
                    u8::from(c["status"]["phase"] == phase)
                );
            }
        }
        header(
            out,
            "hypergate_canary_decisions_total",
            "counter",
            "Decisions of the canary's current run, by action (hold, promote, complete, rollback).",
        );
        for c in &canaries {
            let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
            for d in c["status"]["history"].as_array().into_iter().flatten() {
                if let Some(a) = d["decision"]["action"].as_str() {
                    *counts.entry(a.to_string()).or_default() += 1;
                }
            }
            for (action, n) in counts {
                let _ = writeln!(
                    out,
                    "hypergate_canary_decisions_total{{route=\"{}\",canary=\"{}\",action=\"{}\"}} {n}",
                    str_of(&c["route"]),
                    str_of(&c["canary"]),
                    escape(&action)
                );
            }
        }
        header(
            out,
            "hypergate_alert_state",
            "gauge",
            "1 for the alert rule's state (inactive, pending, firing, resolved), 0 for the others.",
        );
        for a in &self.alerts {
            for (state, name) in [
                (AlertState::Inactive, "inactive"),
                (AlertState::Pending, "pending"),
                (AlertState::Firing, "firing"),
                (AlertState::Resolved, "resolved"),
            ] {
                let _ = writeln!(
                    out,
                    "hypergate_alert_state{{alert=\"{}\",severity=\"{}\",state=\"{name}\"}} {}",
                    escape(&a.rule.name),
                    match a.rule.severity {
                        Severity::Warning => "warning",
                        Severity::Critical => "critical",
                    },
                    u8::from(a.state == state)
                );
            }
        }
        let firing = self.firing();
        for rollback in firing.iter().filter(|f| f.starts_with("canary-rollback:")) {
            for state in ["inactive", "pending", "firing", "resolved"] {
                let _ = writeln!(
                    out,
                    "hypergate_alert_state{{alert=\"{}\",severity=\"critical\",state=\"{state}\"}} {}",
                    escape(rollback),
                    u8::from(state == "firing")
                );
            }
        }
        header(
            out,
            "hypergate_alerts_firing",
            "gauge",
            "Alerts firing now: rules, and rolled-back canaries (as /hypercare/alerts lists them).",
        );
        let _ = writeln!(out, "hypergate_alerts_firing {}", firing.len());
        let windows: Vec<Value> = self.windows.iter().map(WindowRun::json).collect();
        header(
            out,
            "hypergate_window_verdict",
            "gauge",
            "1 for the hypercare window's verdict (in_progress, exit, roll_back, extend), 0 for the others.",
        );
        for w in &windows {
            for verdict in ["in_progress", "exit", "roll_back", "extend"] {
                let _ = writeln!(
                    out,
                    "hypergate_window_verdict{{window=\"{}\",verdict=\"{verdict}\"}} {}",
                    str_of(&w["name"]),
                    u8::from(w["verdict"] == verdict)
                );
            }
        }
        header(
            out,
            "hypergate_window_criteria_met_seconds",
            "gauge",
            "How long the window's exit criteria have held without a break.",
        );
        header(
            out,
            "hypergate_window_required_seconds",
            "gauge",
            "How long they must hold for the window to exit (its sustain time).",
        );
        for w in windows.iter().filter(|w| w.get("required_s").is_some()) {
            let name = str_of(&w["name"]);
            let _ = writeln!(
                out,
                "hypergate_window_criteria_met_seconds{{window=\"{name}\"}} {}\nhypergate_window_required_seconds{{window=\"{name}\"}} {}",
                w["met_for_s"].as_u64().unwrap_or(0),
                w["required_s"].as_u64().unwrap_or(0)
            );
        }
    }

    /// The alerts firing now: rules in the firing state, and each rolled-back
    /// canary's `canary-rollback:<route>` alert (critical; it fires with the
    /// rollback and stays until the canary's configuration changes).
    pub fn firing(&self) -> Vec<String> {
        if let Some(r) = &self.remote {
            return r.firing.clone();
        }
        let rules = self
            .alerts
            .iter()
            .filter(|a| a.state == AlertState::Firing)
            .map(|a| a.rule.name.clone());
        let rollbacks = self
            .canaries
            .iter()
            .filter(|c| c.rolled_back())
            .map(|c| format!("canary-rollback:{}", c.config.subject()));
        rules.chain(rollbacks).collect()
    }

    /// `/hypercare/alerts`.
    pub fn alerts_json(&self) -> Value {
        if let Some(r) = &self.remote {
            return r.views["alerts"].clone();
        }
        json!({
            "alerts": self.alerts,
            "firing": self.firing(),
            "events": self.events,
        })
    }
}

/// The engine's shared view.
pub type SharedView = Arc<Mutex<EngineView>>;

/// Starts the engine thread for `controller`, judging `fleet`'s totals when
/// this instance is a fleet member.
pub fn start(
    controller: Weak<dyn Control>,
    view: SharedView,
    fleet: Option<Arc<Fleet>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("hypercare".into())
        .spawn(move || run(&controller, &view, fleet.as_deref()))?;
    Ok(())
}

fn run(controller: &Weak<dyn Control>, view: &SharedView, fleet: Option<&Fleet>) {
    // Whether this instance judged on the last tick (always, outside a fleet).
    let mut leading = fleet.is_none();
    // The fleet's merge the last point came from.
    let mut last_merge = 0;
    let mut series = Series::new(Duration::from_secs(3600));
    let mut notifier: Option<(
        Vec<hypergate_core::config::hypercare::WebhookConfig>,
        Notifier,
    )> = None;
    // Progress saved by an earlier process: read on the first tick.
    let mut saved: Option<Saved> = None;
    let mut last_saved: [Vec<(String, Entry)>; 2] = Default::default();
    loop {
        let Some(c) = controller.upgrade() else {
            return;
        };
        if c.is_draining() {
            return;
        }
        let config = c.config();
        let hc = &config.raw.hypercare;
        let interval = hc.evaluation_interval;
        if notifier
            .as_ref()
            .is_none_or(|(hooks, _)| *hooks != hc.webhooks)
        {
            notifier = (!hc.webhooks.is_empty())
                .then(|| (hc.webhooks.clone(), Notifier::start(hc.webhooks.clone())));
        }
        let keep = hc
            .alerts
            .iter()
            .map(|a| a.window)
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(600))
            + interval * 2;
        series.set_keep(keep);
        let stats = match fleet {
            None => super::series::Compact::of(&c.snapshot(), &c.feedback_scores()),
            Some(f) => match f.merged() {
                Some((merges, m)) if merges != last_merge => {
                    last_merge = merges;
                    m
                }
                // Not read yet, or not read again since the last tick: a
                // point would repeat the last one (an empty step).
                _ => {
                    drop(c);
                    std::thread::sleep(FLEET_WAIT.min(interval));
                    continue;
                }
            },
        };
        series.push(Point {
            at: Instant::now(),
            stats,
            retransmits: c.tcp_stats().map(|s| total_retransmits(&s)),
        });
        if let Some(f) = fleet {
            let now_leading = f.is_leader();
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            if !now_leading {
                // A follower shows the leader's views and judges nothing.
                v.remote = f.leader_state();
                v.canaries.clear();
                v.windows.clear();
                v.alerts.clear();
                leading = false;
                drop(v);
                drop(c);
                std::thread::sleep(interval);
                continue;
            }
            if !leading {
                // Just took over: resume from what the last leader published.
                let last = v.remote.take().or_else(|| f.leader_state());
                if let Some(state) = last {
                    tracing::info!(previous = %state.leader, token = state.token, "fleet: resuming canaries and windows from the last leader's state");
                    let from_leader = state.saved();
                    restore_dynamic_windows(&mut v, &from_leader);
                    saved = Some(from_leader);
                    v.decisions = state.views["canary"]["decisions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into();
                }
                leading = true;
            }
        }
        let fleet_control = fleet.map(|f| FleetControl {
            inner: &*c,
            fleet: f,
        });
        let control: &dyn Control = match &fleet_control {
            Some(fc) => fc,
            None => &*c,
        };
        let store = c
            .store_path()
            .and_then(|p| super::store::open_for_reading(p).ok());
        let saved = saved.get_or_insert_with(|| {
            let Some(conn) = store.as_ref() else {
                return Saved::default();
            };
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            v.decisions = state::recent_events(conn, "canary", EVENTS_KEPT).into();
            let saved = Saved::load(conn);
            restore_dynamic_windows(&mut v, &saved);
            saved
        });
        let mut events = Vec::new();
        let mut decisions = Vec::new();
        let mut window_changes = Vec::new();
        {
            // Canaries: keep runs whose configuration did not change. The view
            // stays locked while they act (weight changes take milliseconds), so
            // readers never see a run missing.
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            let mut old = std::mem::take(&mut v.canaries);
            v.canaries = hc
                .canaries
                .iter()
                .filter_map(|cfg| match old.iter().position(|r| r.config == *cfg) {
                    Some(i) => Some(old.swap_remove(i)),
                    None => {
                        let progress = saved
                            .get("canary", &cfg.subject(), &definition(cfg))
                            .and_then(|p| serde_json::from_value(p.clone()).ok());
                        match progress {
                            Some(p) => CanaryRun::resume(cfg.clone(), &p),
                            None => CanaryRun::new(cfg.clone()),
                        }
                    }
                })
                .collect();
            for run in &mut v.canaries {
                let outcome = run.tick(&series, control);
                if let Some(record) = outcome.record {
                    decisions.push(record);
                }
                if outcome.rolled_back {
                    events.push(AlertEvent {
                        alert: format!("canary-rollback:{}", run.config.subject()),
                        state: AlertState::Firing,
                        severity: hypergate_core::config::hypercare::Severity::Critical,
                        value: None,
                        threshold: 0.0,
                        summary: format!(
                            "canary {} of {} was rolled back to 0% (stable {} takes all traffic)",
                            run.config.canary,
                            run.config.subject(),
                            run.config.stable
                        ),
                        at_ms: super::unix_ms(),
                    });
                }
            }
        }
        {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            // Keep the state of rules that are still configured (by name and definition).
            let mut next: Vec<AlertStatus> = Vec::with_capacity(hc.alerts.len());
            for rule in &hc.alerts {
                let status = v
                    .alerts
                    .iter()
                    .find(|s| s.rule == *rule)
                    .cloned()
                    .unwrap_or_else(|| AlertStatus::new(rule.clone()));
                next.push(status);
            }
            let now = Instant::now();
            for status in &mut next {
                let value = alerts::value(&status.rule, &series, store.as_ref());
                if let Some(e) = alerts::step(status, value, now) {
                    events.push(e);
                }
            }
            v.alerts = next;
            // Windows: config ones follow the config (keeping progress when unchanged),
            // admin-opened ones stay.
            let mut old = std::mem::take(&mut v.windows);
            let mut windows: Vec<WindowRun> = hc
                .windows
                .iter()
                .map(
                    |cfg| match old.iter().position(|w| !w.dynamic && w.config == *cfg) {
                        Some(i) => old.swap_remove(i),
                        None => match saved.get("window", &cfg.name, &definition(cfg)) {
                            Some(state) => WindowRun::restore(cfg.clone(), state),
                            None => WindowRun::new(cfg.clone(), false),
                        },
                    },
                )
                .collect();
            windows.extend(old.into_iter().filter(|w| w.dynamic));
            for w in &mut windows {
                let before = w.evaluated().then(|| w.verdict().to_string());
                w.tick(&series, &v.alerts, now);
                if before.as_deref() != Some(w.verdict()) {
                    tracing::info!(window = %w.config.name, verdict = w.verdict(), "hypercare window verdict");
                    window_changes.push(w.json());
                }
            }
            v.windows = windows;
            for e in &events {
                v.events.push_back(e.clone());
                if v.events.len() > EVENTS_KEPT {
                    v.events.pop_front();
                }
            }
            for d in &decisions {
                v.decisions.push_back(d.clone());
                if v.decisions.len() > EVENTS_KEPT {
                    v.decisions.pop_front();
                }
            }
            let canaries: Vec<(String, Entry)> = v
                .canaries
                .iter()
                .map(|r| {
                    let state = serde_json::to_value(r.progress()).unwrap_or_default();
                    (r.config.subject(), entry(&r.config, state))
                })
                .collect();
            let windows: Vec<(String, Entry)> = v
                .windows
                .iter()
                .map(|w| (w.config.name.clone(), entry(&w.config, w.saved())))
                .collect();
            if let Some(f) = fleet {
                let mut prometheus = String::new();
                v.local_prometheus(&mut prometheus);
                f.publish_state(LeaderState {
                    canaries: canaries.clone(),
                    windows: windows.clone(),
                    views: json!({
                        "canary": v.canary_json(),
                        "alerts": v.alerts_json(),
                        "windows": v.windows_json(),
                    }),
                    firing: v.firing(),
                    prometheus,
                    ..Default::default()
                });
            }
            if let Some(path) = c.store_path() {
                for (i, (kind, now)) in [("canary", canaries), ("window", windows)]
                    .into_iter()
                    .enumerate()
                {
                    if last_saved[i] != now {
                        state::save(path, kind, &now);
                        last_saved[i] = now;
                    }
                }
            }
        }
        if !events.is_empty() || !decisions.is_empty() || !window_changes.is_empty() {
            if let Some(path) = c.store_path() {
                record_events(path, &events, &decisions, &window_changes);
            }
        }
        for e in events {
            match e.state {
                AlertState::Firing => {
                    tracing::warn!(alert = %e.alert, severity = ?e.severity, value = ?e.value, threshold = e.threshold, "alert firing: {}", e.summary)
                }
                _ => tracing::info!(alert = %e.alert, "alert resolved: {}", e.summary),
            }
            if let Some((_, n)) = &notifier {
                n.send(alerts::webhook_payload(&e));
            }
        }
        drop(store);
        drop(c);
        std::thread::sleep(interval);
    }
}

/// Windows opened through the admin API come back with their definition.
fn restore_dynamic_windows(v: &mut EngineView, saved: &Saved) {
    for (name, entry) in saved.of_kind("window") {
        let dynamic = entry.state["dynamic"].as_bool().unwrap_or(false);
        let config = serde_json::from_str::<WindowConfig>(&entry.config);
        if let (true, Ok(config)) = (dynamic, config) {
            if !v.windows.iter().any(|w| w.config.name == name) {
                v.windows.push(WindowRun::restore(config, &entry.state));
            }
        }
    }
}

fn entry(config: &impl serde::Serialize, state: Value) -> Entry {
    Entry {
        config: definition(config),
        state,
    }
}

/// Writes alert events, canary decisions and window verdict changes to the
/// store's `events` table.
fn record_events(
    path: &std::path::Path,
    events: &[AlertEvent],
    decisions: &[Value],
    windows: &[Value],
) {
    let result = (|| -> rusqlite::Result<()> {
        let mut conn = super::store::open_for_writing(path)?;
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO events (ts_ms, kind, subject, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in events {
                let body = serde_json::to_string(e).unwrap_or_default();
                insert.execute(rusqlite::params![e.at_ms as i64, "alert", e.alert, body])?;
            }
            // Canary decisions are named by their route, window verdicts by their name.
            for (kind, items, subject) in
                [("canary", decisions, "route"), ("window", windows, "name")]
            {
                for item in items {
                    insert.execute(rusqlite::params![
                        super::unix_ms() as i64,
                        kind,
                        item[subject].as_str().unwrap_or(""),
                        item.to_string()
                    ])?;
                }
            }
        }
        tx.commit()
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "hypercare: cannot record events in the call store");
    }
}
