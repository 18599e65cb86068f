//! The admin listener: metrics, health, readiness, config, stats and reload.
//!
//! It runs on its own thread with blocking std sockets (a thread per admin
//! connection), never on a shard and never on a data-plane port. Endpoints:
//! `GET /metrics` (Prometheus text), `GET /stats` (JSON with exact quantiles),
//! `GET /config` (running config as JSON, secrets redacted), `GET /healthz`,
//! `GET /readyz` (503 while draining), `POST /reload` (re-read the config file),
//! `GET /hypercare/calls`, `GET /hypercare/summary` (the call store) and
//! `GET /hypercare/alerts`, `GET /hypercare/canary`, `GET /hypercare/windows` and
//! `POST /hypercare/windows` (the hypercare engine), and the dashboard at `/ui`.

use crate::gateway::Controller;
use crate::observability::export;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

mod ui;

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
    let (method, path, head_len, content_length) = loop {
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
            Ok(httparse::Status::Complete(n)) => {
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    n,
                    length,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return,
        }
    };
    // Request bodies (small JSON documents) are read whole, up to 64 KiB.
    let mut body = buf.split_off(head_len.min(buf.len()));
    while body.len() < content_length.min(64 * 1024) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let (path_only, query) = path.split_once('?').unwrap_or((&path, ""));
    if path_only.starts_with("/ui") {
        ui::serve(&mut stream, &method, path_only);
        return;
    }
    let reply = match path_only.strip_prefix("/hypercare/") {
        Some(what) if method == "GET" => hypercare(what, query, controller),
        Some("windows") if method == "POST" => open_window(&body, controller),
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

/// `POST /hypercare/windows`: opens a hypercare window (the `[[hypercare.windows]]`
/// fields as JSON), kept until the process restarts.
fn open_window(body: &[u8], c: &Controller) -> Reply {
    let w: crate::config::hypercare::WindowConfig = match serde_json::from_slice(body) {
        Ok(w) => w,
        Err(e) => {
            return json(
                400,
                serde_json::json!({"error": format!("invalid window: {e}")}),
            )
        }
    };
    let routes: Vec<String> = c
        .config()
        .raw
        .routes
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let problems = crate::hypercare::windows::check(&w, &routes);
    if !problems.is_empty() {
        let errors: Vec<String> = problems.iter().map(|(f, r)| format!("{f}: {r}")).collect();
        return json(
            400,
            serde_json::json!({"error": "invalid window", "errors": errors}),
        );
    }
    let mut view = c.hypercare().lock().unwrap_or_else(|e| e.into_inner());
    if view.windows.iter().any(|x| x.config.name == w.name) {
        return json(
            409,
            serde_json::json!({"error": format!("a window named {:?} exists", w.name)}),
        );
    }
    let name = w.name.clone();
    view.windows
        .push(crate::hypercare::windows::WindowRun::new(w, true));
    json(201, serde_json::json!({"status": "opened", "name": name}))
}

/// `GET /hypercare/calls` and `GET /hypercare/summary`, read from the call store.
fn hypercare(what: &str, query: &str, c: &Controller) -> Reply {
    use crate::hypercare::query;
    if matches!(what, "alerts" | "canary" | "windows") {
        let view = c.hypercare().lock().unwrap_or_else(|e| e.into_inner());
        return json(
            200,
            match what {
                "alerts" => view.alerts_json(),
                "canary" => view.canary_json(),
                _ => view.windows_json(),
            },
        );
    }
    let Some(path) = c.store_path() else {
        return json(
            404,
            serde_json::json!({"error": "the call store is disabled ([hypercare.store] enabled = false)"}),
        );
    };
    let now_ms = crate::hypercare::unix_ms() as i64;
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
            "diff" => {
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                };
                match (param("from"), param("to")) {
                    (Some(from), Some(to)) => {
                        humantime::parse_duration(param("window").unwrap_or("24h"))
                            .map_err(|_| {
                                query::QueryError::BadFilter(
                                    "window: expected a duration like 24h".into(),
                                )
                            })
                            .and_then(|w| {
                                crate::hypercare::diff::diff(
                                    &conn,
                                    from,
                                    to,
                                    param("route"),
                                    w,
                                    now_ms,
                                )
                            })
                    }
                    _ => Err(query::QueryError::BadFilter(
                        "from and to (version labels) are required".into(),
                    )),
                }
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
