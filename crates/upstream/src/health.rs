//! Active HTTP health checks, run off the data plane on one thread per checked cluster.
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
            let spawned = std::thread::Builder::new()
                .name(format!("health-{name}"))
                .spawn(move || run_checker(&thread_name, &hc, &targets, &thread_stop));
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
    targets: &[(SocketAddr, Arc<AtomicBool>)],
    stop: &AtomicBool,
) {
    let mut streaks = vec![(0u32, 0u32); targets.len()];
    while !stop.load(Ordering::Relaxed) {
        let round_start = Instant::now();
        for (i, (addr, flag)) in targets.iter().enumerate() {
            let ok = check_once(*addr, hc).is_ok();
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
