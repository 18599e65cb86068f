//! The hypercare report (`hypergate report --since 24h --format md|html`), built
//! from the call store alone, so it can be run anywhere the database is:
//! traffic and errors with the top failing routes, latency per route and
//! version against its baseline (the 7 days before the period), canary decisions, alerts,
//! LLM usage and cost, feedback scores, and the last verdict of every
//! hypercare window.

use super::query::{aggregate, Aggregate, QueryError};
use hypergate_core::error::Outcome;
use rusqlite::Connection;
use serde_json::Value;
use std::fmt::Write;
use std::time::Duration;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Markdown.
    Markdown,
    /// A standalone HTML page.
    Html,
}

/// A report section: a title, lines of text, and an optional table.
struct Section {
    title: String,
    lines: Vec<String>,
    table: Option<(Vec<String>, Vec<Vec<String>>)>,
}

/// Unix milliseconds as an RFC 3339 time, to the second.
fn when(t: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(t as u64))
        .to_string()
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// Builds the report over the last `since`.
pub fn report(
    conn: &Connection,
    since: Duration,
    now_ms: i64,
    format: Format,
) -> Result<String, QueryError> {
    let until_min = now_ms / 60_000 + 1;
    let since_ms = now_ms - since.as_millis() as i64;
    let since_min = since_ms / 60_000;
    let groups = aggregate(conn, since_min, until_min)?;
    // The baseline is the week before the period, so the period is judged against its past.
    let baseline = aggregate(conn, (since_ms - 7 * 86_400_000) / 60_000, since_min)?;
    let mut sections = Vec::new();

    // Traffic and errors.
    let mut total = Aggregate::default();
    let mut by_route: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for ((route, _, _, _), a) in &groups {
        total.absorb(a);
        let e = by_route.entry(route.as_str()).or_default();
        e.0 += a.requests;
        e.1 += a.errors;
    }
    let mut failing: Vec<(&str, u64, u64)> = by_route
        .iter()
        .map(|(r, (n, e))| (*r, *n, *e))
        .filter(|x| x.2 > 0)
        .collect();
    failing.sort_by_key(|x| std::cmp::Reverse(x.2));
    sections.push(Section {
        title: "Traffic and errors".into(),
        lines: [
            format!(
                "{} requests, {} errors ({}: upstream errors, gateway errors and timeouts), \
                 {} answered 5xx, {} left by their client, {} refused by the gateway, on {} routes.",
                total.requests,
                total.errors,
                pct(total.error_rate()),
                total.by_class[4],
                total.by_outcome[Outcome::ClientAborted.index()],
                total.by_outcome[Outcome::Rejected.index()],
                by_route.len()
            ),
            format!(
                "Totals are exact (counted by the shards). {}",
                total.rows_note().unwrap_or_else(|| format!(
                    "Every one of the {} calls has its stored row.",
                    total.requests
                ))
            ),
        ]
        .into(),
        table: (!failing.is_empty()).then(|| {
            (
                vec![
                    "Top failing route".into(),
                    "Requests".into(),
                    "Errors".into(),
                    "Error rate".into(),
                ],
                failing
                    .iter()
                    .take(10)
                    .map(|(r, n, e)| {
                        vec![
                            r.to_string(),
                            n.to_string(),
                            e.to_string(),
                            pct(*e as f64 / *n as f64),
                        ]
                    })
                    .collect(),
            )
        }),
    });

    // Latency against baselines.
    let mut rows = Vec::new();
    for ((route, cluster, version, model), a) in &groups {
        let key = (
            route.clone(),
            cluster.clone(),
            version.clone(),
            model.clone(),
        );
        let base = baseline.get(&key);
        let p99 = a.quantile_us(0.99);
        let base_p99 = base.map_or(0, |b| b.quantile_us(0.99));
        let change = if base_p99 > 0 {
            format!("{:+.0}%", (p99 as f64 / base_p99 as f64 - 1.0) * 100.0)
        } else {
            "n/a".into()
        };
        rows.push(vec![
            route.clone(),
            if version.is_empty() {
                "-".into()
            } else {
                version.clone()
            },
            a.requests.to_string(),
            ms(a.quantile_us(0.5)),
            ms(p99),
            ms(base_p99),
            change,
        ]);
    }
    sections.push(Section {
        title: "Latency against baselines".into(),
        lines: vec![
            "p99 of the period against the same route and version over the last 7 days.".into(),
        ],
        table: (!rows.is_empty()).then(|| {
            (
                [
                    "Route",
                    "Version",
                    "Requests",
                    "p50 ms",
                    "p99 ms",
                    "Baseline p99 ms",
                    "Change",
                ]
                .map(String::from)
                .to_vec(),
                rows,
            )
        }),
    });

    // Canary decisions and alerts, from the events table.
    let mut events = conn.prepare(
        "SELECT ts_ms, kind, subject, body FROM events WHERE ts_ms >= ?1 ORDER BY ts_ms",
    )?;
    let events: Vec<(i64, String, String, String)> = events
        .query_map([since_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut canary_rows = Vec::new();
    let mut alert_rows = Vec::new();
    let mut window_state: std::collections::BTreeMap<String, Value> = Default::default();
    for (t, kind, subject, body) in &events {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        match kind.as_str() {
            "canary" => {
                let d = &v["decision"];
                let e = &d["evidence"];
                let evidence = format!(
                    "errors {}/{} vs {}/{} (z {:.2}, threshold {:.2}); p{} {} vs {} µs",
                    e["error_rate"]["canary"]["errors"],
                    e["error_rate"]["canary"]["requests"],
                    e["error_rate"]["stable"]["errors"],
                    e["error_rate"]["stable"]["requests"],
                    e["error_rate"]["statistic"].as_f64().unwrap_or(0.0),
                    e["error_rate"]["threshold"].as_f64().unwrap_or(0.0),
                    e["latency"]["quantile"].as_f64().unwrap_or(0.99) * 100.0,
                    e["latency"]["canary_quantile"],
                    e["latency"]["stable_quantile"],
                );
                canary_rows.push(vec![
                    when(*t),
                    subject.clone(),
                    format!(
                        "{} -> {}",
                        v["stable"].as_str().unwrap_or(""),
                        v["canary"].as_str().unwrap_or("")
                    ),
                    d["action"].as_str().unwrap_or("").to_string(),
                    d["reason"]["kind"]
                        .as_str()
                        .map_or_else(|| e["weight"].to_string() + "%", str::to_string),
                    evidence,
                ]);
            }
            "alert" => alert_rows.push(vec![
                when(*t),
                subject.clone(),
                v["state"].as_str().unwrap_or("").to_string(),
                v["severity"].as_str().unwrap_or("").to_string(),
                v["summary"].as_str().unwrap_or("").to_string(),
            ]),
            "window" => {
                window_state.insert(subject.clone(), v);
            }
            _ => {}
        }
    }
    sections.push(Section {
        title: "Canary decisions".into(),
        lines: vec![format!("{} decisions.", canary_rows.len())],
        table: (!canary_rows.is_empty()).then(|| {
            (
                [
                    "Time",
                    "Route",
                    "Stable -> canary",
                    "Decision",
                    "Reason / weight",
                    "Evidence",
                ]
                .map(String::from)
                .to_vec(),
                canary_rows,
            )
        }),
    });
    sections.push(Section {
        title: "Alerts".into(),
        lines: vec![format!("{} alert events.", alert_rows.len())],
        table: (!alert_rows.is_empty()).then(|| {
            (
                ["Time", "Alert", "State", "Severity", "Summary"]
                    .map(String::from)
                    .to_vec(),
                alert_rows,
            )
        }),
    });

    // LLM usage and cost (exact, from rollups), and feedback (from stored rows).
    let mut scores: std::collections::HashMap<String, (f64, i64)> = Default::default();
    {
        let mut fb = conn.prepare(
            "SELECT model, AVG(f.score), COUNT(f.score)
             FROM calls c JOIN feedback f ON f.request_id = c.request_id
             WHERE c.ts_ms >= ?1 AND model IS NOT NULL GROUP BY 1",
        )?;
        let mut rows = fb.query([since_ms])?;
        while let Some(r) = rows.next()? {
            scores.insert(r.get(0)?, (r.get(1)?, r.get(2)?));
        }
    }
    let mut llm: std::collections::BTreeMap<(&str, &str), Aggregate> = Default::default();
    for ((route, _, _, model), a) in &groups {
        if !model.is_empty() {
            llm.entry((route.as_str(), model.as_str()))
                .or_default()
                .absorb(a);
        }
    }
    let mut llm_rows: Vec<(u64, Vec<String>)> = llm
        .iter()
        .map(|((route, model), a)| {
            (
                a.cost_nanos,
                vec![
                    route.to_string(),
                    model.to_string(),
                    a.requests.to_string(),
                    a.prompt_tokens.to_string(),
                    a.completion_tokens.to_string(),
                    format!("${:.6}", a.cost_usd()),
                    a.estimated.to_string(),
                    if a.ttft.1 > 0 {
                        format!("{:.1}", a.ttft.0 as f64 / a.ttft.1 as f64 / 1000.0)
                    } else {
                        "-".into()
                    },
                    match scores.get(*model) {
                        Some((s, n)) => format!("{s:.2} ({n})"),
                        None => "-".into(),
                    },
                ],
            )
        })
        .collect();
    llm_rows.sort_by_key(|(cost, _)| std::cmp::Reverse(*cost));
    let llm_rows: Vec<Vec<String>> = llm_rows.into_iter().map(|(_, r)| r).collect();
    sections.push(Section {
        title: "LLM usage, cost and feedback".into(),
        lines: vec![
            "Calls, tokens, cost and TTFT are exact (rollups); feedback scores are those \
             of the stored rows (every LLM call's row is kept unless keep_llm is off)."
                .into(),
        ],
        table: (!llm_rows.is_empty()).then(|| {
            (
                [
                    "Route",
                    "Model",
                    "Calls",
                    "Prompt tokens",
                    "Completion tokens",
                    "Cost",
                    "Estimated",
                    "Avg TTFT ms",
                    "Feedback (n)",
                ]
                .map(String::from)
                .to_vec(),
                llm_rows,
            )
        }),
    });
    let mut prompts = conn.prepare(
        "SELECT prompt, prompt_version, COUNT(*), AVG(f.score), COUNT(f.score)
         FROM calls c LEFT JOIN feedback f ON f.request_id = c.request_id
         WHERE c.ts_ms >= ?1 AND prompt IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let prompt_rows: Vec<Vec<String>> = prompts
        .query_map([since_ms], |r| {
            Ok(vec![
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                r.get::<_, i64>(2)?.to_string(),
                r.get::<_, Option<f64>>(3)?
                    .map_or("-".into(), |s| format!("{s:.2}")),
                r.get::<_, i64>(4)?.to_string(),
            ])
        })?
        .collect::<Result<_, _>>()?;
    if !prompt_rows.is_empty() {
        sections.push(Section {
            title: "Prompt versions by feedback".into(),
            lines: vec!["From the stored rows.".into()],
            table: Some((
                ["Prompt", "Version", "Calls", "Avg score", "Scores"]
                    .map(String::from)
                    .to_vec(),
                prompt_rows,
            )),
        });
    }

    // Exit criteria.
    let window_rows: Vec<Vec<String>> = window_state
        .iter()
        .map(|(name, v)| {
            vec![
                name.clone(),
                v["verdict"].as_str().unwrap_or("").to_string(),
                v["progress"].as_str().unwrap_or("").to_string(),
                v["failing_now"].as_array().map_or(String::new(), |f| {
                    f.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
            ]
        })
        .collect();
    sections.push(Section {
        title: "Hypercare windows".into(),
        lines: vec![if window_rows.is_empty() {
            "No hypercare window reported a verdict in this period.".into()
        } else {
            "Last verdict of each window in the period.".into()
        }],
        table: (!window_rows.is_empty()).then(|| {
            (
                ["Window", "Verdict", "Progress", "Failing"]
                    .map(String::from)
                    .to_vec(),
                window_rows,
            )
        }),
    });

    let title = format!("Hypercare report: {} to {}", when(since_ms), when(now_ms));
    Ok(render(&title, &sections, format))
}

fn render(title: &str, sections: &[Section], format: Format) -> String {
    match format {
        Format::Markdown => markdown(title, sections),
        Format::Html => html(title, sections),
    }
}

/// `hypergate report --fleet`: the fleet's members, its exact traffic by
/// route, cluster and version (every member's counts since it started), and
/// the leader's canary decisions, read from the fleet's Redis.
pub fn fleet_report(f: &super::fleet::FleetSnapshot, now_ms: i64, format: Format) -> String {
    let mut sections = Vec::new();
    let leader = f.leader.as_ref().map_or(
        "none (no instance holds the lease)".to_string(),
        |(id, t)| format!("{id} (fencing token {t})"),
    );
    sections.push(Section {
        title: format!("Fleet {}", f.name),
        lines: vec![
            format!("Leader: {leader}. Decision epoch: {}.", f.epoch),
            format!(
                "{} instance(s) publishing; a member that stopped publishing is left out here.",
                f.members.len()
            ),
        ],
        table: Some((
            [
                "Instance",
                "Role",
                "Last seen",
                "Config",
                "Epoch",
                "Requests",
                "Errors",
            ]
            .map(String::from)
            .to_vec(),
            f.members
                .iter()
                .map(|m| {
                    vec![
                        m.id.clone(),
                        if m.leader { "leader" } else { "follower" }.into(),
                        when(m.last_seen_ms as i64),
                        m.config_hash.clone(),
                        m.applied_epoch.to_string(),
                        m.requests.to_string(),
                        m.errors.to_string(),
                    ]
                })
                .collect(),
        )),
    });
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    sections.push(Section {
        title: "Fleet traffic".into(),
        lines: vec![
            "Exact for the members publishing now: their counters since each started, summed \
             (not sampled rows). Calls of members that stopped publishing are not in these \
             figures; upstream latency is the cluster version's, over all its routes."
                .into(),
        ],
        table: Some((
            [
                "Route",
                "Cluster",
                "Version",
                "Requests",
                "Errors",
                "Error rate",
                "Upstream p50 ms",
                "Upstream p99 ms",
            ]
            .map(String::from)
            .to_vec(),
            f.totals
                .iter()
                .map(|t| {
                    let (r, e) = (num(&t["requests"]), num(&t["errors"]));
                    let q = |k: &str| {
                        t["upstream_latency"][k]
                            .as_u64()
                            .map_or("–".to_string(), ms)
                    };
                    vec![
                        t["route"].as_str().unwrap_or("").to_string(),
                        t["cluster"].as_str().unwrap_or("").to_string(),
                        t["version"].as_str().unwrap_or("").to_string(),
                        r.to_string(),
                        e.to_string(),
                        if r > 0 {
                            pct(e as f64 / r as f64)
                        } else {
                            "–".into()
                        },
                        q("p50_us"),
                        q("p99_us"),
                    ]
                })
                .collect(),
        )),
    });
    sections.push(Section {
        title: "Fleet canary decisions".into(),
        lines: if f.decisions.is_empty() {
            vec!["None besides holds (or no leader has published yet).".into()]
        } else {
            Vec::new()
        },
        table: (!f.decisions.is_empty()).then(|| {
            (
                ["Route", "Stable", "Canary", "Decision", "Weight"]
                    .map(String::from)
                    .to_vec(),
                f.decisions
                    .iter()
                    .map(|d| {
                        vec![
                            d["route"].as_str().unwrap_or("").to_string(),
                            d["stable"].as_str().unwrap_or("").to_string(),
                            d["canary"].as_str().unwrap_or("").to_string(),
                            d["decision"]["action"].as_str().unwrap_or("").to_string(),
                            d["decision"]["evidence"]["weight"].to_string(),
                        ]
                    })
                    .collect(),
            )
        }),
    });
    render(
        &format!("Fleet report: {}", when(now_ms)),
        &sections,
        format,
    )
}

fn markdown(title: &str, sections: &[Section]) -> String {
    let mut out = format!("# {title}\n");
    for s in sections {
        let _ = write!(out, "\n## {}\n\n", s.title);
        for l in &s.lines {
            let _ = writeln!(out, "{l}\n");
        }
        if let Some((head, rows)) = &s.table {
            let cell = |c: &str| c.replace('|', "\\|");
            let _ = writeln!(
                out,
                "| {} |",
                head.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | ")
            );
            let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
            for r in rows {
                let _ = writeln!(
                    out,
                    "| {} |",
                    r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                );
            }
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(title: &str, sections: &[Section]) -> String {
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1d2433}}table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}th,td{{border:1px solid #d5dae3;padding:.3rem .6rem;text-align:left;font-size:.9rem}}th{{background:#f1f4f9}}h2{{margin-top:2rem}}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    for s in sections {
        let _ = writeln!(out, "<h2>{}</h2>", escape(&s.title));
        for l in &s.lines {
            let _ = writeln!(out, "<p>{}</p>", escape(l));
        }
        if let Some((head, rows)) = &s.table {
            out.push_str("<table><thead><tr>");
            for h in head {
                let _ = write!(out, "<th>{}</th>", escape(h));
            }
            out.push_str("</tr></thead><tbody>\n");
            for r in rows {
                out.push_str("<tr>");
                for c in r {
                    let _ = write!(out, "<td>{}</td>", escape(c));
                }
                out.push_str("</tr>\n");
            }
            out.push_str("</tbody></table>\n");
        }
    }
    out.push_str("</body></html>\n");
    out
}
