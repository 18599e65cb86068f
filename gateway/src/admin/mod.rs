//! The admin listener: metrics, health, readiness, config, stats and reload.
//!
//! It runs on its own thread with blocking std sockets (a thread per admin
//! connection), never on a shard and never on a data-plane port. Endpoints:
//! `GET /metrics` (Prometheus text), `GET /stats` (JSON with exact quantiles),
//! `GET /config` (running config as JSON, secrets redacted), `GET /healthz`,
//! `GET /readyz` (503 while draining), `POST /reload` (re-read the config file),
//! `GET /hypercare/calls`, `GET /hypercare/summary` (the call store) and
//! `GET /hypercare/alerts` and `GET /hypercare/canary` (the hypercare engine).

use crate::gateway::Controller;
use crate::observability::export;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Starts the admin thread on an already bound listener.
pub fn start(listener: TcpListener, controller: Arc<Controller>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let c = controller.clone();
                let _ = std::thread::Builder::new()
                    .name("admin-conn".into())
                    .spawn(move || serve(stream, &c));
            }
        })?;
    Ok(())
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn json(status: u16, v: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: v.to_string() + "\n",
    }
}

fn serve(mut stream: TcpStream, controller: &Controller) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let (method, path) = loop {
        let Ok(n) = stream.read(&mut chunk) else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return,
        }
    };
    let (path_only, query) = path.split_once('?').unwrap_or((&path, ""));
    let reply = match path_only.strip_prefix("/hypercare/") {
        Some(what) if method == "GET" => hypercare(what, query, controller),
        _ => route(&method, path_only, controller),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reply.status,
        crate::http::reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(reply.body.as_bytes());
}

/// Adds the probe's figures to `/stats`: the whole view under `tcp`, and each
/// cluster's kernel RTT and handshake under `clusters.<name>.tcp`, next to its L7
/// `upstream_latency`, so network time and application time sit side by side.
fn add_tcp_stats(stats: &mut serde_json::Value, tcp: serde_json::Value) {
    if let (Some(clusters), Some(upstream)) = (
        stats.get_mut("clusters").and_then(|v| v.as_object_mut()),
        tcp.get("upstream").and_then(|v| v.as_object()),
    ) {
        for (name, cluster) in clusters.iter_mut() {
            if let Some(t) = upstream.get(name) {
                cluster["tcp"] = serde_json::json!({
                    "srtt": t["srtt_all"],
                    "handshake": t["handshake"],
                    "retransmits": t["retransmits"],
                    "resets_received": t["resets_received"],
                });
            }
        }
    }
    stats["tcp"] = tcp;
}

/// `GET /hypercare/calls` and `GET /hypercare/summary`, read from the call store.
fn hypercare(what: &str, query: &str, c: &Controller) -> Reply {
    use crate::hypercare::query;
    if what == "alerts" || what == "canary" {
        let view = c.hypercare().lock().unwrap_or_else(|e| e.into_inner());
        return json(
            200,
            if what == "alerts" {
                view.alerts_json()
            } else {
                view.canary_json()
            },
        );
    }
    let Some(path) = c.store_path() else {
        return json(
            404,
            serde_json::json!({"error": "the call store is disabled ([hypercare.store] enabled = false)"}),
        );
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let result = crate::hypercare::store::open_for_reading(path)
        .map_err(query::QueryError::from)
        .and_then(|conn| match what {
            "calls" => {
                query::CallFilter::from_query(query, now_ms).and_then(|f| query::calls(&conn, &f))
            }
            "summary" | "series" => {
                let window = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("window="))
                    .unwrap_or("1h");
                humantime::parse_duration(window)
                    .map_err(|_| {
                        query::QueryError::BadFilter(format!(
                            "window: {window:?} is not a duration like 1h"
                        ))
                    })
                    .and_then(|w| {
                        if what == "summary" {
                            query::summary(&conn, w, now_ms)
                        } else {
                            query::series(&conn, w, now_ms)
                        }
                    })
            }
            other => Err(query::QueryError::BadFilter(format!(
                "unknown endpoint /hypercare/{other}"
            ))),
        });
    match result {
        Ok(v) => json(200, v),
        Err(e @ query::QueryError::BadFilter(_)) => {
            json(400, serde_json::json!({"error": e.to_string()}))
        }
        Err(e) => json(500, serde_json::json!({"error": e.to_string()})),
    }
}

fn route(method: &str, path: &str, c: &Controller) -> Reply {
    match (method, path) {
        ("GET", "/metrics") => {
            let mut body = export::prometheus(&c.snapshot(), &c.process_info());
            c.edge_metrics(&mut body);
            if let Some(probe) = c.tcp_probe() {
                probe.prometheus(&mut body);
            }
            Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body,
            }
        }
        ("GET", "/stats") => {
            let mut stats = export::stats_json(&c.snapshot());
            stats["llm"]["budgets"] = serde_json::to_value(c.budgets()).unwrap_or_default();
            if let Some(probe) = c.tcp_probe() {
                add_tcp_stats(&mut stats, probe.stats_json());
            }
            json(200, stats)
        }
        ("GET", "/healthz") => json(200, serde_json::json!({"status": "ok"})),
        ("GET", "/readyz") if c.is_draining() => {
            json(503, serde_json::json!({"status": "draining"}))
        }
        ("GET", "/readyz") => json(200, serde_json::json!({"status": "ready"})),
        ("GET", "/config") => json(
            200,
            serde_json::to_value(&c.config().raw).unwrap_or_default(),
        ),
        ("POST", "/reload") => match c.reload_from_file() {
            Ok(d) => json(200, serde_json::json!({"status": "reloaded", "diff": d})),
            Err(e) => json(
                400,
                serde_json::json!({"status": "refused", "error": e.to_string(), "running_config": "unchanged"}),
            ),
        },
        (_, "/metrics" | "/stats" | "/healthz" | "/readyz" | "/config" | "/reload") => {
            json(405, serde_json::json!({"error": "method not allowed"}))
        }
        _ => json(404, serde_json::json!({"error": "not found"})),
    }
}
