//! Built-in demo upstreams: tiny servers the gateway starts itself so the
//! examples work on a fresh machine with nothing else running.
//!
//! `kind = "http"` (this file) answers every request with a short text naming
//! itself (`/healthz` answers `ok`), keeps connections alive, reads and
//! discards request bodies, and fails a configurable share of requests with
//! 500 (for canary demos). `kind = "llm"` starts the built-in mock LLM provider
//! (`crates/mock-llm`), `kind = "grpc"` the demo gRPC server (`demo_grpc`).
//! Not a data-plane component: blocking sockets, a thread per connection.
//!
//! Depends on `config` (the demo's settings) and `demo_grpc`.

use crate::config::raw::{DemoKind, DemoUpstreamConfig};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Binds and starts a demo upstream.
pub fn start(cfg: &DemoUpstreamConfig) -> std::io::Result<()> {
    // Fail one request in every `1 / fail_ratio`, spread evenly.
    let fail_every = (cfg.fail_ratio > 0.0).then(|| (1.0 / cfg.fail_ratio).round().max(1.0) as u64);
    match cfg.kind {
        DemoKind::Http => start_http(cfg, fail_every),
        DemoKind::Llm => start_llm(cfg),
        DemoKind::Grpc => crate::demo_grpc::start(cfg, fail_every),
    }
}

fn start_llm(cfg: &DemoUpstreamConfig) -> std::io::Result<()> {
    let mock = hypergate_mock_llm::MockLlm::start(
        &cfg.address,
        hypergate_mock_llm::MockConfig {
            chunk_delay: cfg.chunk_delay,
            require_auth: false,
            ..Default::default()
        },
    )?;
    tracing::info!(name = %cfg.name, address = %mock.addr(), "demo LLM provider listening");
    // Like the HTTP demo's threads, it serves for the life of the process.
    std::mem::forget(mock);
    Ok(())
}

fn start_http(cfg: &DemoUpstreamConfig, fail_every: Option<u64>) -> std::io::Result<()> {
    let listener = TcpListener::bind(&cfg.address)?;
    tracing::info!(name = %cfg.name, address = %cfg.address, "demo upstream listening");
    let name: Arc<str> = cfg.name.as_str().into();
    let counter = Arc::new(AtomicU64::new(0));
    std::thread::Builder::new()
        .name(format!("demo-{}", cfg.name))
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (name, counter) = (name.clone(), counter.clone());
                let _ = std::thread::Builder::new()
                    .name("demo-conn".into())
                    .spawn(move || serve(stream, &name, fail_every, &counter));
            }
        })?;
    Ok(())
}

fn serve(mut s: TcpStream, name: &str, fail_every: Option<u64>, counter: &AtomicU64) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let (head_len, path, body_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let header = |k: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(k))
                            .map(|h| String::from_utf8_lossy(h.value).to_string())
                    };
                    let len = header("content-length")
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    break (n, req.path.unwrap_or("/").to_string(), len, close);
                }
                Ok(httparse::Status::Partial) => match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                Err(_) => return,
            }
        };
        while buf.len() < head_len + body_len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let fail = path != "/healthz" && fail_every.is_some_and(|every| n % every == 0);
        let (status, body) = if path == "/healthz" {
            ("200 OK", "ok\n".to_string())
        } else if fail {
            (
                "500 Internal Server Error",
                format!("{name}: injected failure\n"),
            )
        } else {
            ("200 OK", format!("hello from {name}\n"))
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-demo-upstream: {name}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}
