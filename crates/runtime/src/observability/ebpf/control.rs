//! The probe's control thread: drains the kernel maps on an interval into
//! [`Aggregates`], and answers the admin thread's requests over a channel.
//!
//! It is the only owner of the aggregates (single writer). A scrape drains first,
//! so `/metrics` and `/stats` are never older than the request. When the
//! [`super::TcpProbe`] is dropped the channel closes, the thread returns, and
//! dropping the kernel source detaches the programs.

use super::aggregate::Aggregates;
use super::labels::PeerLabels;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the figures come from: the kernel maps (feature `ebpf`) or a test double.
pub(crate) trait KernelSource: Send + 'static {
    /// Moves new events into `agg` and refreshes its counters.
    fn drain(&mut self, agg: &mut Aggregates);
}

/// What the rest of the gateway asks the control thread.
pub(crate) enum ControlRequest {
    /// A reloaded config's names.
    Labels(PeerLabels),
    /// The addresses listeners were bound to.
    BoundListeners(Vec<(Arc<str>, SocketAddr)>),
    /// Render the Prometheus families.
    Prometheus(Sender<String>),
    /// Render the `/stats` JSON.
    Json(Sender<Value>),
}

/// Runs until every sender is gone.
pub(crate) fn run(
    mut source: impl KernelSource,
    interval: Duration,
    mut labels: PeerLabels,
    requests: Receiver<ControlRequest>,
) {
    let mut agg = Aggregates::default();
    let mut bound: Vec<(Arc<str>, SocketAddr)> = Vec::new();
    let mut next = Instant::now() + interval;
    loop {
        match requests.recv_deadline(next) {
            Ok(ControlRequest::Labels(new)) => {
                labels = new;
                labels.set_bound_listeners(&bound);
            }
            Ok(ControlRequest::BoundListeners(addrs)) => {
                bound = addrs;
                labels.set_bound_listeners(&bound);
            }
            Ok(ControlRequest::Prometheus(reply)) => {
                source.drain(&mut agg);
                let mut out = String::with_capacity(16 * 1024);
                agg.prometheus(&labels, &mut out);
                let _ = reply.send(out);
            }
            Ok(ControlRequest::Json(reply)) => {
                source.drain(&mut agg);
                let _ = reply.send(agg.stats_json(&labels));
            }
            Err(RecvTimeoutError::Timeout) => {
                source.drain(&mut agg);
                next = Instant::now() + interval;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
