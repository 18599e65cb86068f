//! The split phase: which side of a route's split (canary, blue/green) takes
//! a request. A header or cookie can force a side by cluster name or version;
//! a sticky key hashes onto the weights; otherwise smooth weighted round robin
//! over the effective weights (the file's, or a runtime override's).
//!
//! Depends on `exchange`, `spec` and `state`.

use crate::exchange::View;
use crate::routing::RequestInfo;
use crate::spec::{Route, RouteAction};
use std::net::SocketAddr;

/// Picks the split side (index into the route's targets), by the split's
/// effective weights (the file's, or a runtime override's).
pub fn choose_target(
    route: &Route,
    rr: &crate::state::RouteRuntime,
    clusters: &[std::sync::Arc<crate::spec::Cluster>],
    view: &View<'_>,
    peer: SocketAddr,
) -> usize {
    let RouteAction::Split(split) = &route.action else {
        return 0;
    };
    let forced = |v: &[u8]| {
        split.targets.iter().position(|(c, _)| {
            let c = &clusters[*c];
            c.name.as_bytes() == v || (!c.version.is_empty() && c.version.as_bytes() == v)
        })
    };
    if let Some(i) = split
        .override_header
        .as_deref()
        .and_then(|h| view.header(h))
        .and_then(forced)
    {
        return i;
    }
    if let Some(i) = split
        .override_cookie
        .as_deref()
        .and_then(|c| view.cookie(c))
        .and_then(forced)
    {
        return i;
    }
    let (weights, total) = (&rr.weights, rr.total_weight);
    if let Some(h) = split
        .sticky_on
        .as_ref()
        .and_then(|k| view.key_hash(k, peer))
    {
        let mut point = (h % u64::from(total)) as u32;
        for (i, w) in weights.iter().enumerate() {
            if point < *w {
                return i;
            }
            point -= w;
        }
    }
    // Smooth weighted round robin: exact proportions per shard, no randomness.
    let current = &rr.split_current;
    let mut best = 0;
    for (i, w) in weights.iter().enumerate() {
        current[i].set(current[i].get() + i64::from(*w));
        if current[i].get() > current[best].get() {
            best = i;
        }
    }
    current[best].set(current[best].get() - i64::from(total));
    best
}
