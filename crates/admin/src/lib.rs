//! `hypergate-admin`: the admin listener: metrics, health, readiness, config,
//! stats, reload, runtime overrides, the hypercare views and the dashboard.
//!
//! It runs on its own thread with blocking std sockets (a thread per admin
//! connection), never on a shard and never on a data-plane port. Endpoints:
//! `GET /metrics` (Prometheus text), `GET /stats` (JSON with exact quantiles),
//! `GET /config` (the running config as JSON: the file's, runtime overrides applied
//! and listed in an overlay; secrets shown as `<redacted>`), `GET /healthz`,
//! `GET /readyz` (503 while draining), `POST /reload` (re-read the config file),
//! `GET`/`POST`/`DELETE /overrides` (the runtime overrides layer),
//! `GET /hypercare/calls`, `GET /hypercare/calls/<id>`, `GET /hypercare/summary`
//! (the call store) and `GET /hypercare/alerts`, `GET /hypercare/canary`,
//! `GET /hypercare/windows` and `POST /hypercare/windows` (the hypercare engine;
//! the fleet leader's on a follower), `GET /hypercare/fleet` (the fleet's members),
//! and the dashboard at `/ui`.
//!
//! Every connection passes, in order ([`serve`], then [`check_access`]):
//! 1. A bound on the listener's own resources: at most [`MAX_CONNECTIONS`] at
//!    once (more are answered 503 and closed), [`REQUEST_DEADLINE`] in total to
//!    receive the request head and body (408 and closed after), and as long for
//!    each write of the answer.
//! 2. `Host` must name this admin: a loopback address, `localhost`, the address
//!    the client connected to, or one of `admin.allowed_hosts` (port ignored);
//!    without `Host` only a loopback peer is served. A web page on another name
//!    that resolves to 127.0.0.1 (DNS rebinding) gets 403.
//! 3. A mutating request (any method but GET, HEAD and OPTIONS, on any path) is
//!    refused with 403 when `Sec-Fetch-Site` is present and not `same-origin` or
//!    `none`, or when `Origin` is present and names a host that rule 2 does not
//!    allow (`Origin: null` included): no cross-site form or fetch can reload.
//! 4. With `admin.token` set, every request except `GET /healthz`, `GET /readyz`
//!    and the static dashboard files under `/ui` (which hold no data; the page asks
//!    for the token) needs `Authorization: Bearer <token>` (401 otherwise).

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the admin listener runs on its own thread, off the data plane"
)]

//!
//! Allowed dependencies: `hypergate-core`, `hypergate-runtime` (the
//! controller) and `hypergate-hypercare` (its views and the call store).
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

use hypergate_core::config::raw::AdminConfig;
use hypergate_core::secret::Secret;
use hypergate_runtime::gateway::Controller;
use hypergate_runtime::observability::export;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod ui;

/// Admin connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// Time allowed to receive a whole request (head and body) once connected.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Largest request head, and largest request body read.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// `WWW-Authenticate` of a 401.
const CHALLENGE: &str = "www-authenticate: Bearer realm=\"hypergate-admin\"\r\n";

/// What the admin API shows of hypercare besides the controller's figures.
pub struct Hypercare {
    /// The engine's view: alerts, canaries, windows.
    pub view: hypergate_hypercare::engine::SharedView,
    /// The call store's counters, when the store is enabled (for `/metrics`).
    pub store_counters: Option<Arc<hypergate_hypercare::store::StoreCounters>>,
    /// The fleet membership, when `[fleet]` is on.
    pub fleet: Option<Arc<hypergate_hypercare::fleet::Fleet>>,
}

/// Starts the admin thread on an already bound listener.
pub fn start(
    listener: TcpListener,
    controller: Arc<Controller>,
    hypercare: Hypercare,
) -> std::io::Result<()> {
    let hypercare = Arc::new(hypercare);
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming().flatten() {
                // Only this thread adds, so the count cannot pass the bound.
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    refuse_busy(stream);
                    continue;
                }
                let slot = Slot::take(&active);
                let c = controller.clone();
                let hc = hypercare.clone();
                // If the thread cannot start, the closure (and the slot) is dropped.
                let _ = std::thread::Builder::new()
                    .name("admin-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        serve(stream, &c, &hc);
                    });
            }
        })?;
    Ok(())
}

/// One of the [`MAX_CONNECTIONS`] connection slots, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Slot {
        active.fetch_add(1, Ordering::AcqRel);
        Slot(active.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers 503 on a connection beyond the bound, from the accept thread without
/// ever blocking it, and closes it.
fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    // Whatever request already arrived is read, so closing sends FIN, not RST.
    let _ = stream.read(&mut [0u8; 4096]);
    let reply = json(
        503,
        serde_json::json!({"error": "too many admin connections; try again"}),
    );
    write_reply(&mut stream, &reply);
}

struct Reply {
    status: u16,
    content_type: &'static str,
    /// Extra header lines, each ending in CRLF.
    headers: &'static str,
    body: String,
}

fn json(status: u16, v: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        headers: "",
        body: v.to_string() + "\n",
    }
}

fn error(status: u16, message: &str) -> Reply {
    json(status, serde_json::json!({ "error": message }))
}

fn write_reply(stream: &mut TcpStream, reply: &Reply) {
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n",
        reply.status,
        hypergate_core::http::reason(reply.status),
        reply.content_type,
        reply.body.len(),
        reply.headers,
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(reply.body.as_bytes());
}

/// A request as read, with the headers the access rules look at.
#[derive(Debug, Default)]
struct AdminRequest {
    method: String,
    target: String,
    /// Every `Host` header (more than one is refused).
    hosts: Vec<String>,
    origin: Option<String>,
    fetch_site: Option<String>,
    authorization: Option<String>,
    content_length: usize,
    body: Vec<u8>,
}

/// Why no request could be read.
enum ReadFailure {
    /// [`REQUEST_DEADLINE`] passed with part of a request received.
    Deadline,
    /// The peer closed, reset, sent nothing by the deadline, or sent a malformed
    /// or oversized head: the connection is dropped without an answer.
    Dropped,
}

/// Reads one request, head and body, by `deadline` (each read waits only for what
/// is left of it, so trickling bytes cannot stretch it).
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Result<AdminRequest, ReadFailure> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let mut read = |stream: &mut TcpStream, received: usize| -> Result<Vec<u8>, ReadFailure> {
        let left = deadline.saturating_duration_since(Instant::now());
        let late = if received > 0 {
            ReadFailure::Deadline
        } else {
            ReadFailure::Dropped
        };
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(late);
        }
        match stream.read(&mut chunk) {
            Ok(0) => Err(ReadFailure::Dropped),
            Ok(n) => Ok(chunk[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(late),
            Err(_) => Err(ReadFailure::Dropped),
        }
    };
    let (mut request, head_len) = loop {
        let piece = read(stream, buf.len())?;
        buf.extend_from_slice(&piece);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => break (AdminRequest::from_head(&req), n),
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_BYTES => {}
            _ => return Err(ReadFailure::Dropped),
        }
    };
    // Request bodies (small JSON documents) are read whole, up to 64 KiB.
    let want = request.content_length.min(MAX_REQUEST_BYTES);
    let mut body = buf.split_off(head_len.min(buf.len()));
    while body.len() < want {
        match read(stream, head_len + body.len()) {
            Ok(piece) => body.extend_from_slice(&piece),
            Err(ReadFailure::Deadline) => return Err(ReadFailure::Deadline),
            Err(ReadFailure::Dropped) => break,
        }
    }
    request.body = body;
    Ok(request)
}

impl AdminRequest {
    fn from_head(req: &httparse::Request<'_, '_>) -> AdminRequest {
        let mut out = AdminRequest {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            ..AdminRequest::default()
        };
        for h in req.headers.iter() {
            let value = || String::from_utf8_lossy(h.value).trim().to_string();
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                out.hosts.push(value());
            } else if name.eq_ignore_ascii_case("origin") {
                out.origin = Some(value());
            } else if name.eq_ignore_ascii_case("sec-fetch-site") {
                out.fetch_site = Some(value());
            } else if name.eq_ignore_ascii_case("authorization") {
                out.authorization = Some(value());
            } else if name.eq_ignore_ascii_case("content-length") {
                out.content_length = value().parse().unwrap_or(0);
            }
        }
        out
    }
}

fn serve(mut stream: TcpStream, controller: &Controller, hc: &Hypercare) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    // A client that stops reading its answer cannot hold a slot for long either.
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let request = match read_request(&mut stream, deadline) {
        Ok(r) => r,
        Err(ReadFailure::Deadline) => {
            let reply = error(408, "the request did not arrive in time");
            write_reply(&mut stream, &reply);
            return;
        }
        Err(ReadFailure::Dropped) => return,
    };
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let config = controller.config();
    if let Some(refusal) = check_access(&request, path, peer.ip(), local.ip(), &config.raw.admin) {
        tracing::debug!(%peer, method = %request.method, path, status = refusal.status, "admin request refused");
        write_reply(&mut stream, &refusal);
        return;
    }
    drop(config);
    let method = request.method.as_str();
    if path.starts_with("/ui") {
        ui::serve(&mut stream, method, path);
        return;
    }
    let reply = match path.strip_prefix("/hypercare/") {
        Some(what) if method == "GET" => hypercare(what, query, controller, hc),
        Some("windows") if method == "POST" => open_window(&request.body, controller, hc),
        None if path == "/overrides" => overrides(method, query, &request.body, controller),
        _ => route(method, path, controller, hc),
    };
    write_reply(&mut stream, &reply);
}

/// The access rules of the [module docs](self), in order; `Some` is the refusal.
fn check_access(
    req: &AdminRequest,
    path: &str,
    peer: IpAddr,
    local: IpAddr,
    admin: &AdminConfig,
) -> Option<Reply> {
    match req.hosts.as_slice() {
        [] if peer.to_canonical().is_loopback() => {}
        [] => {
            return Some(error(
                403,
                "a request without Host is served to loopback clients only",
            ))
        }
        [host] if split_authority(host).is_some_and(|h| host_allowed(h, local, admin)) => {}
        [_] => {
            return Some(error(
                403,
                "Host does not name this admin listener (a loopback address, localhost, \
                 its own address, or a name in admin.allowed_hosts)",
            ))
        }
        _ => return Some(error(400, "more than one Host header")),
    }
    if !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        if let Some(site) = &req.fetch_site {
            if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
                return Some(error(
                    403,
                    "cross-site request refused (Sec-Fetch-Site); the admin API only \
                     takes changes from its own pages or from non-browser clients",
                ));
            }
        }
        if let Some(origin) = &req.origin {
            if !origin_allowed(origin, local, admin) {
                return Some(error(
                    403,
                    "cross-origin request refused: Origin does not name this admin listener",
                ));
            }
        }
    }
    let open = req.method == "GET" && matches!(path, "/healthz" | "/readyz");
    let static_page = path == "/ui" || path.starts_with("/ui/");
    if let Some(token) = &admin.token {
        if !open && !static_page && !bearer_matches(req.authorization.as_deref(), token) {
            return Some(Reply {
                headers: CHALLENGE,
                ..error(
                    401,
                    "the admin API needs a token: send Authorization: Bearer <admin.token>",
                )
            });
        }
    }
    None
}

/// Whether `Authorization` carries `Bearer <token>` with the configured token
/// (compared in constant time).
fn bearer_matches(authorization: Option<&str>, token: &Secret) -> bool {
    let Some((scheme, presented)) = authorization.and_then(|a| a.split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && Secret::new(presented.trim()) == *token
}

/// The host of a `Host` value or an origin's authority: `name`, `name:port`,
/// `[v6]` or `[v6]:port` (brackets removed); `None` when it is none of those.
fn split_authority(authority: &str) -> Option<&str> {
    let port_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(port_ok) {
            return None;
        }
        ip
    } else {
        match authority.split_once(':') {
            None => authority,
            Some((host, port)) if port_ok(port) => host,
            Some(_) => return None,
        }
    };
    (!host.is_empty()).then_some(host)
}

/// Whether a host (from `split_authority`) names this admin listener: a loopback
/// address, `localhost`, the address the client connected to (`local`), or a
/// name in `admin.allowed_hosts`, compared without case and trailing dot.
fn host_allowed(host: &str, local: IpAddr, admin: &AdminConfig) -> bool {
    let host = host.trim_end_matches('.');
    if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip == local.to_canonical() {
            return true;
        }
    }
    host.eq_ignore_ascii_case("localhost")
        || admin.allowed_hosts.iter().any(|allowed| {
            allowed
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_end_matches('.')
                .eq_ignore_ascii_case(host)
        })
}

/// Whether an `Origin` (`scheme://authority`) names a host `host_allowed`
/// accepts; `null` and anything else never do.
fn origin_allowed(origin: &str, local: IpAddr, admin: &AdminConfig) -> bool {
    match origin.split_once("://") {
        Some((scheme, authority))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            split_authority(authority).is_some_and(|h| host_allowed(h, local, admin))
        }
        _ => false,
    }
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

/// `/overrides`: the runtime overrides layer. `GET` shows it (the overlay of
/// `/config`); `POST` sets the weights of a route's split or an LLM alias's
/// targets (`{"route": "checkout", "weights": {"v1": 100, "v2": 0}, "reason":
/// "..."}`, or `"alias"` instead of `"route"`), recorded as set by `admin`;
/// `DELETE` clears one (`?route=NAME` or `?alias=NAME`) or, without a query, all.
fn overrides(method: &str, query: &str, body: &[u8], c: &Controller) -> Reply {
    use hypergate_core::config::overrides::{OverrideSubject, WeightOverride};
    let subject_of = |route: Option<String>, alias: Option<String>| match (route, alias) {
        (Some(r), None) => Ok(OverrideSubject::Route(r)),
        (None, Some(a)) => Ok(OverrideSubject::Alias(a)),
        _ => Err(error(400, "name exactly one of route or alias")),
    };
    match method {
        "GET" => json(
            200,
            hypergate_runtime::config::resolve::overlay(&c.overrides(), &c.config()),
        ),
        "POST" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                route: Option<String>,
                alias: Option<String>,
                weights: std::collections::BTreeMap<String, u32>,
                #[serde(default)]
                reason: String,
            }
            let b: Body = match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => return error(400, &format!("invalid override: {e}")),
            };
            let subject = match subject_of(b.route, b.alias) {
                Ok(s) => s,
                Err(reply) => return reply,
            };
            let o = WeightOverride {
                weights: b.weights,
                set_by: "admin".into(),
                reason: if b.reason.is_empty() {
                    "set through the admin API".into()
                } else {
                    b.reason
                },
                at_ms: hypergate_hypercare::unix_ms(),
            };
            match c.set_override(subject, o) {
                Ok(()) => json(
                    200,
                    serde_json::json!({"status": "set", "overrides": hypergate_runtime::config::resolve::overlay(&c.overrides(), &c.config())}),
                ),
                Err(e @ hypergate_runtime::gateway::OverrideError::Invalid(_)) => {
                    error(400, &e.to_string())
                }
                Err(e) => error(503, &e.to_string()),
            }
        }
        "DELETE" => {
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_string)
            };
            let subject = if query.is_empty() {
                None
            } else {
                match subject_of(param("route"), param("alias")) {
                    Ok(s) => Some(s),
                    Err(reply) => return reply,
                }
            };
            match c.clear_overrides(subject.as_ref()) {
                Ok(cleared) => json(
                    200,
                    serde_json::json!({"status": "cleared", "cleared": cleared}),
                ),
                Err(e) => error(503, &e.to_string()),
            }
        }
        _ => error(405, "method not allowed"),
    }
}

/// `POST /hypercare/windows`: opens a hypercare window (the `[[hypercare.windows]]`
/// fields as JSON), kept until the process restarts.
fn open_window(body: &[u8], c: &Controller, hc: &Hypercare) -> Reply {
    let w: hypergate_core::config::hypercare::WindowConfig = match serde_json::from_slice(body) {
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
    let problems = hypergate_hypercare::windows::check(&w, &routes);
    if !problems.is_empty() {
        let errors: Vec<String> = problems.iter().map(|(f, r)| format!("{f}: {r}")).collect();
        return json(
            400,
            serde_json::json!({"error": "invalid window", "errors": errors}),
        );
    }
    let mut view = hc.view.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(remote) = &view.remote {
        // A follower judges nothing: the window would never be evaluated.
        return json(
            409,
            serde_json::json!({
                "error": "this instance follows the fleet's leader: open the window there",
                "leader": remote.leader,
            }),
        );
    }
    if view.windows.iter().any(|x| x.config.name == w.name) {
        return json(
            409,
            serde_json::json!({"error": format!("a window named {:?} exists", w.name)}),
        );
    }
    let name = w.name.clone();
    view.windows
        .push(hypergate_hypercare::windows::WindowRun::new(w, true));
    json(201, serde_json::json!({"status": "opened", "name": name}))
}

/// `GET /hypercare/calls`, `/hypercare/calls/<id>`, `/hypercare/summary` and the
/// other call-store views; alerts, canaries and windows from the engine's view.
fn hypercare(what: &str, query: &str, c: &Controller, hc: &Hypercare) -> Reply {
    use hypergate_hypercare::query;
    if what == "fleet" {
        return match &hc.fleet {
            Some(fleet) => json(200, fleet.json()),
            // Not an error: the dashboard asks every gateway.
            None => json(200, serde_json::json!({"enabled": false})),
        };
    }
    if matches!(what, "alerts" | "canary" | "windows") {
        let view = hc.view.lock().unwrap_or_else(|e| e.into_inner());
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
    if let Some(id) = what.strip_prefix("calls/") {
        return one_call(path, id);
    }
    let now_ms = hypergate_hypercare::unix_ms() as i64;
    let result = hypergate_hypercare::store::open_for_reading(path)
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
                                hypergate_hypercare::diff::diff(
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

/// `GET /hypercare/calls/<id>`: one call with every column (timings, LLM fields,
/// feedback, the captured bodies as stored, already redacted); 404 when the store
/// does not hold it.
fn one_call(store: &std::path::Path, id: &str) -> Reply {
    use hypergate_hypercare::query;
    let Ok(id) = id.parse::<i64>() else {
        return error(400, &format!("call id: {id:?} is not a number"));
    };
    let found = hypergate_hypercare::store::open_for_reading(store)
        .map_err(query::QueryError::from)
        .and_then(|conn| query::call(&conn, id));
    match found {
        Ok(Some(call)) => json(200, call),
        Ok(None) => error(
            404,
            &format!("no call {id} in the store (never recorded, or removed by retention)"),
        ),
        Err(e) => error(500, &e.to_string()),
    }
}

fn route(method: &str, path: &str, c: &Controller, hc: &Hypercare) -> Reply {
    match (method, path) {
        ("GET", "/metrics") => {
            let mut body = export::prometheus(&c.snapshot(), &c.process_info());
            c.edge_metrics(&mut body);
            if let Some(counters) = &hc.store_counters {
                counters.prometheus(&mut body);
            }
            if let Ok(view) = hc.view.lock() {
                view.prometheus(&mut body);
            }
            if let Some(fleet) = &hc.fleet {
                fleet.prometheus(&mut body);
            }
            if let Some(probe) = c.tcp_probe() {
                probe.prometheus(&mut body);
            }
            Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                headers: "",
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
        ("GET", "/readyz") => match &hc.fleet {
            // A fleet member without Redis still serves: ready, and says why
            // it judges nothing.
            Some(fleet) => json(
                200,
                serde_json::json!({"status": "ready", "fleet": fleet.readiness()}),
            ),
            None => json(200, serde_json::json!({"status": "ready"})),
        },
        ("GET", "/config") => {
            // What runs: the file's config with the runtime overrides applied,
            // and the overlay saying which values differ from the file, who set
            // them and why.
            let config = c.config();
            let overrides = c.overrides();
            let mut body = serde_json::to_value(&config.raw).unwrap_or_default();
            hypergate_runtime::config::resolve::apply_to_json(&overrides, &config, &mut body);
            body["overrides"] = hypergate_runtime::config::resolve::overlay(&overrides, &config);
            json(200, body)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const OWN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));

    fn request(method: &str, host: Option<&str>) -> AdminRequest {
        AdminRequest {
            method: method.into(),
            target: "/config".into(),
            hosts: host.map(String::from).into_iter().collect(),
            ..AdminRequest::default()
        }
    }

    fn status(req: &AdminRequest, path: &str, peer: IpAddr, admin: &AdminConfig) -> u16 {
        check_access(req, path, peer, OWN, admin).map_or(200, |r| r.status)
    }

    #[test]
    fn host_must_name_the_admin() {
        let admin = AdminConfig {
            allowed_hosts: vec!["admin.internal".into(), "[2001:db8::1]".into()],
            ..AdminConfig::default()
        };
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:9901",
            "localhost",
            "LOCALHOST:9901",
            "localhost.",
            "10.0.0.5:9901",
            "admin.internal",
            "Admin.Internal:443",
            "[2001:db8::1]:9901",
        ] {
            assert_eq!(
                status(&request("GET", Some(ok)), "/config", REMOTE, &admin),
                200,
                "{ok}"
            );
        }
        for bad in [
            "attacker.example",
            "attacker.example:9901",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "admin.internal.attacker.example",
            "10.0.0.6",
            "127.1",
            "::1",
            "[::1]x",
            "localhost:http",
            "",
            "user@127.0.0.1",
        ] {
            assert_eq!(
                status(&request("GET", Some(bad)), "/config", REMOTE, &admin),
                403,
                "{bad:?}"
            );
        }
        let mut twice = request("GET", Some("127.0.0.1"));
        twice.hosts.push("attacker.example".into());
        assert_eq!(status(&twice, "/config", LOOPBACK, &admin), 400);
    }

    #[test]
    fn no_host_only_from_loopback() {
        let admin = AdminConfig::default();
        assert_eq!(
            status(&request("GET", None), "/config", LOOPBACK, &admin),
            200
        );
        let mapped = IpAddr::V6(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert_eq!(
            status(&request("GET", None), "/config", mapped, &admin),
            200
        );
        assert_eq!(
            status(&request("GET", None), "/config", REMOTE, &admin),
            403
        );
    }

    #[test]
    fn mutations_must_come_from_the_same_origin() {
        let admin = AdminConfig {
            allowed_hosts: vec!["admin.internal".into()],
            ..AdminConfig::default()
        };
        let with = |method: &str, origin: Option<&str>, site: Option<&str>| {
            let mut r = request(method, Some("127.0.0.1:9901"));
            r.origin = origin.map(String::from);
            r.fetch_site = site.map(String::from);
            status(&r, "/reload", LOOPBACK, &admin)
        };
        assert_eq!(with("POST", None, None), 200);
        assert_eq!(
            with("POST", Some("http://127.0.0.1:9901"), Some("same-origin")),
            200
        );
        assert_eq!(with("POST", Some("https://admin.internal"), None), 200);
        assert_eq!(with("POST", None, Some("none")), 200);
        for method in ["POST", "PUT", "DELETE", "PATCH", "PURGE"] {
            assert_eq!(
                with(method, Some("http://evil.example"), None),
                403,
                "{method}"
            );
            assert_eq!(with(method, None, Some("cross-site")), 403, "{method}");
        }
        assert_eq!(with("POST", None, Some("same-site")), 403);
        assert_eq!(with("POST", Some("null"), None), 403);
        assert_eq!(with("POST", Some("file://"), None), 403);
        assert_eq!(
            with("POST", Some("http://127.0.0.1.evil.example"), None),
            403
        );
        // Reads are left to the Host rule (and the token).
        for method in ["GET", "HEAD", "OPTIONS"] {
            assert_eq!(
                with(method, Some("http://evil.example"), Some("cross-site")),
                200
            );
        }
    }

    #[test]
    fn token_guards_everything_but_health_and_the_static_page() {
        let admin = AdminConfig {
            token: Some(Secret::new("s3cret-token")),
            ..AdminConfig::default()
        };
        let with = |method: &str, path: &str, auth: Option<&str>| {
            let mut r = request(method, Some("localhost"));
            r.authorization = auth.map(String::from);
            check_access(&r, path, LOOPBACK, OWN, &admin)
        };
        for (method, path) in [
            ("GET", "/config"),
            ("GET", "/metrics"),
            ("GET", "/stats"),
            ("POST", "/reload"),
            ("GET", "/hypercare/alerts"),
            ("POST", "/hypercare/windows"),
            ("HEAD", "/healthz"),
            ("GET", "/uix"),
            ("GET", "/nope"),
        ] {
            let refusal = with(method, path, None).expect("refused");
            assert_eq!(refusal.status, 401, "{method} {path}");
            assert!(refusal.headers.contains("Bearer realm=\"hypergate-admin\""));
            assert!(!refusal.body.contains("s3cret"));
            for wrong in [
                "Bearer s3cret",
                "Bearer s3cret-token2",
                "Basic s3cret-token",
                "s3cret-token",
            ] {
                assert_eq!(with(method, path, Some(wrong)).map(|r| r.status), Some(401));
            }
            assert!(with(method, path, Some("Bearer s3cret-token")).is_none());
            assert!(with(method, path, Some("bearer  s3cret-token")).is_none());
        }
        for (method, path) in [
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/ui"),
            ("GET", "/ui/app.js"),
        ] {
            assert!(with(method, path, None).is_none(), "{method} {path}");
        }
    }
}
