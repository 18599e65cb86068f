//! Active health checks, run off the data plane on one thread per checked
//! cluster: an HTTP `GET` of `path`, or for gRPC services (`grpc_service`
//! set) the standard `grpc.health.v1.Health/Check` over the cluster's HTTP/2
//! (and TLS), healthy when it answers `SERVING`.
//!
//! The verdict for each endpoint is an `Arc<AtomicBool>` in the [`HealthRegistry`]:
//! checker threads store it, shards load it (relaxed) when balancing. Checks use
//! blocking std sockets with timeouts; they never touch a shard. On reload,
//! checkers of unchanged clusters keep running (and keep their verdicts), changed
//! ones are restarted, removed ones stop.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "health checks run on their own threads with blocking sockets, never on a shard"
)]

use crate::tls::UpstreamTls;
use crate::Cluster;
use hypergate_core::config::raw::HealthCheckConfig;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type FlagKey = (String, SocketAddr);

struct Checker {
    fingerprint: String,
    stop: Arc<AtomicBool>,
}

/// Health verdicts shared by shards and checker threads.
#[derive(Default)]
pub struct HealthRegistry {
    flags: Mutex<HashMap<FlagKey, Arc<AtomicBool>>>,
    checkers: Mutex<HashMap<String, Checker>>,
}

impl HealthRegistry {
    /// The verdict flag of an endpoint (created healthy).
    pub fn flag(&self, cluster: &str, addr: SocketAddr) -> Arc<AtomicBool> {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags
            .entry((cluster.to_string(), addr))
            .or_insert_with(|| Arc::new(AtomicBool::new(true)))
            .clone()
    }

    /// Starts, restarts and stops checker threads to match `clusters`.
    pub fn sync(self: &Arc<Self>, clusters: &[Arc<Cluster>]) {
        let mut checkers = self.checkers.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted = HashMap::new();
        for c in clusters {
            if let Some(hc) = &c.raw.health_check {
                let fp = serde_json::to_string(&c.raw).unwrap_or_default();
                wanted.insert(c.name.to_string(), (fp, hc.clone(), c.clone()));
            }
        }
        checkers.retain(|name, checker| {
            let keep = wanted
                .get(name)
                .is_some_and(|(fp, _, _)| *fp == checker.fingerprint);
            if !keep {
                checker.stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for (name, (fp, hc, cluster)) in wanted {
            if checkers.contains_key(&name) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let targets: Vec<(SocketAddr, Arc<AtomicBool>)> = cluster
                .endpoints
                .iter()
                .map(|e| (e.addr, self.flag(&name, e.addr)))
                .collect();
            let thread_stop = stop.clone();
            let thread_name = name.clone();
            let tls = cluster.tls.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("health-{name}"))
                .spawn(move || run_checker(&thread_name, &hc, tls, &targets, &thread_stop));
            if let Err(e) = spawned {
                tracing::error!(cluster = %name, error = %e, "cannot start health checker");
                continue;
            }
            checkers.insert(
                name,
                Checker {
                    fingerprint: fp,
                    stop,
                },
            );
        }
    }

    /// Stops every checker thread.
    pub fn stop_all(&self) {
        let mut checkers = self.checkers.lock().unwrap_or_else(|e| e.into_inner());
        for c in checkers.values() {
            c.stop.store(true, Ordering::Relaxed);
        }
        checkers.clear();
    }
}

fn run_checker(
    cluster: &str,
    hc: &HealthCheckConfig,
    tls: Option<UpstreamTls>,
    targets: &[(SocketAddr, Arc<AtomicBool>)],
    stop: &AtomicBool,
) {
    // gRPC checks speak HTTP/2 through the `h2` crate, on a runtime of
    // their own on this thread.
    let mut runtime = match hc.grpc_service {
        Some(_) => match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::error!(cluster, error = %e, "cannot start the gRPC health checker");
                return;
            }
        },
        None => None,
    };
    let mut streaks = vec![(0u32, 0u32); targets.len()];
    while !stop.load(Ordering::Relaxed) {
        let round_start = Instant::now();
        for (i, (addr, flag)) in targets.iter().enumerate() {
            let result = match (&mut runtime, &hc.grpc_service) {
                (Some(rt), Some(service)) => {
                    rt.block_on(grpc::check(*addr, service, hc.timeout, tls.as_ref()))
                }
                _ => check_once(*addr, hc),
            };
            if let Err(e) = &result {
                tracing::debug!(cluster, endpoint = %addr, error = %e, "health check failed");
            }
            let ok = result.is_ok();
            let (succ, fail) = &mut streaks[i];
            if ok {
                *succ += 1;
                *fail = 0;
            } else {
                *fail += 1;
                *succ = 0;
            }
            let healthy = flag.load(Ordering::Relaxed);
            if healthy && *fail >= hc.unhealthy_threshold {
                flag.store(false, Ordering::Relaxed);
                tracing::warn!(cluster, endpoint = %addr, "health check: endpoint unhealthy");
            } else if !healthy && *succ >= hc.healthy_threshold {
                flag.store(true, Ordering::Relaxed);
                tracing::info!(cluster, endpoint = %addr, "health check: endpoint healthy again");
            }
        }
        while round_start.elapsed() < hc.interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(hc.interval));
        }
    }
}

fn check_once(addr: SocketAddr, hc: &HealthCheckConfig) -> std::io::Result<()> {
    let deadline = Instant::now() + hc.timeout;
    let mut s = TcpStream::connect_timeout(&addr, hc.timeout)?;
    let host = hc.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hypergate-health-check\r\nConnection: close\r\n\r\n",
        hc.path
    );
    s.set_write_timeout(Some(hc.timeout))?;
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let code = res.code.unwrap_or(0);
                let [lo, hi] = hc.expected_status;
                return if (lo..=hi).contains(&code) {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!("status {code}")))
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
}

/// The gRPC health check (`grpc.health.v1`), one call on a new connection.
mod grpc {
    use crate::tls::UpstreamTls;
    use bytes::Bytes;
    use monoio::io::{AsyncReadRent, AsyncWriteRent};
    use std::io;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Calls `Health/Check` for `service` on `addr` within `timeout`:
    /// `Ok` when the answer is `SERVING`, else why not.
    pub async fn check(
        addr: SocketAddr,
        service: &str,
        timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> io::Result<()> {
        let call = async {
            let tcp = monoio::net::TcpStream::connect_addr(addr).await?;
            let _ = tcp.set_nodelay(true);
            match tls {
                None => call(tcp, "http", addr, service).await,
                Some(t) => {
                    let connector = monoio_rustls::TlsConnector::from(t.config.clone());
                    let stream = connector
                        .connect(t.server_name.clone(), tcp)
                        .await
                        .map_err(io::Error::from)?;
                    call(stream, "https", addr, service).await
                }
            }
        };
        monoio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    async fn call<S>(io: S, scheme: &str, addr: SocketAddr, service: &str) -> io::Result<()>
    where
        S: AsyncReadRent + AsyncWriteRent + Unpin + 'static,
    {
        let (send, connection) = h2::client::handshake(monoio_compat::StreamWrapper::new(io))
            .await
            .map_err(io::Error::other)?;
        // The connection runs beside the call and ends when `send` is dropped.
        monoio::spawn(async move {
            let _ = connection.await;
        });
        let mut send = send.ready().await.map_err(io::Error::other)?;
        let request = http::Request::post(format!("{scheme}://{addr}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "hypergate-health-check")
            .body(())
            .map_err(io::Error::other)?;
        let (response, mut body) = send
            .send_request(request, false)
            .map_err(io::Error::other)?;
        body.send_data(request_message(service), true)
            .map_err(io::Error::other)?;
        let response = response.await.map_err(io::Error::other)?;
        if response.status() != 200 {
            return Err(io::Error::other(format!(
                "HTTP status {}",
                response.status()
            )));
        }
        let (parts, mut stream) = response.into_parts();
        let mut message = Vec::new();
        while let Some(data) = stream.data().await {
            let data = data.map_err(io::Error::other)?;
            let _ = stream.flow_control().release_capacity(data.len());
            message.extend_from_slice(&data);
            if message.len() > 64 * 1024 {
                return Err(io::Error::other("answer too large"));
            }
        }
        let trailers = stream.trailers().await.map_err(io::Error::other)?;
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if status != "0" {
            return Err(io::Error::other(format!("grpc-status {status:?}")));
        }
        match serving_status(&message) {
            Some(1) => Ok(()),
            other => Err(io::Error::other(format!(
                "serving status {other:?}, not SERVING"
            ))),
        }
    }

    /// `HealthCheckRequest { string service = 1; }`, length-prefixed. The
    /// message is one field: hand-encoded rather than a protobuf crate.
    fn request_message(service: &str) -> Bytes {
        let name = &service.as_bytes()[..service.len().min(127)];
        let mut proto = Vec::with_capacity(name.len() + 2);
        if !name.is_empty() {
            proto.push(0x0a); // field 1, length-delimited
            proto.push(name.len() as u8); // one-byte varint (< 128)
            proto.extend_from_slice(name);
        }
        let mut framed = Vec::with_capacity(proto.len() + 5);
        framed.push(0); // not compressed
        framed.extend_from_slice(&(proto.len() as u32).to_be_bytes());
        framed.extend_from_slice(&proto);
        Bytes::from(framed)
    }

    /// The `status` (field 1, a varint) of a length-prefixed
    /// `HealthCheckResponse`; other fields are skipped.
    fn serving_status(framed: &[u8]) -> Option<u64> {
        let (&[0, a, b, c, d], rest) = framed.split_first_chunk::<5>()? else {
            return None;
        };
        let proto = rest.get(..u32::from_be_bytes([a, b, c, d]) as usize)?;
        let mut i = 0;
        let mut status = 0; // proto3: an absent field is its zero (UNKNOWN)
        while i < proto.len() {
            let key = varint(proto, &mut i)?;
            match key & 7 {
                0 => {
                    let v = varint(proto, &mut i)?;
                    if key >> 3 == 1 {
                        status = v;
                    }
                }
                2 => {
                    let len = varint(proto, &mut i)? as usize;
                    i = i.checked_add(len)?;
                }
                1 => i += 8,
                5 => i += 4,
                _ => return None,
            }
        }
        (i == proto.len()).then_some(status)
    }

    fn varint(bytes: &[u8], i: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*i)?;
            *i += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn health_messages() {
            assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
            assert_eq!(
                &request_message("ab")[..],
                &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
            );
            assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
            assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
            assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
            assert_eq!(serving_status(&[0, 0, 0, 0, 3, 0x08, 1]), None, "short");
            assert_eq!(
                serving_status(&[1, 0, 0, 0, 2, 0x08, 1]),
                None,
                "compressed"
            );
        }
    }
}
