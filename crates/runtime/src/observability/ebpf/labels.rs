//! Names for the probe's raw keys: listener port -> listener name, upstream
//! address -> (cluster, endpoint).
//!
//! The kernel aggregates by [`PeerKey`] (a local port, or a remote address and
//! port); this table, rebuilt from the config on start and on every reload, turns
//! those into the labels of the exported metrics. Because names are applied at
//! export time, a reload relabels history instead of resetting it.

use hypergate_ebpf_common::{PeerKey, FAMILY_INET, FAMILY_INET6, SIDE_DOWNSTREAM};
use hypergate_proxy::spec::Config;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Where one upstream address belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointName {
    /// The cluster (the first one in config order that lists the address).
    pub cluster: Arc<str>,
    /// The endpoint's label (its configured address text).
    pub endpoint: Arc<str>,
}

/// What a [`PeerKey`] is called in metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerName {
    /// A connection accepted on a listener.
    Downstream {
        /// Listener name (`admin` for the admin listener).
        listener: Arc<str>,
    },
    /// A connection the gateway opened.
    Upstream(EndpointName),
}

/// The label table for one config.
#[derive(Debug, Clone, Default)]
pub struct PeerLabels {
    /// Local port -> listener name.
    listeners: HashMap<u16, Arc<str>>,
    /// Remote address -> cluster and endpoint.
    endpoints: HashMap<SocketAddr, EndpointName>,
    /// Cluster names in config order, with their endpoints' addresses.
    clusters: Vec<(Arc<str>, Vec<SocketAddr>)>,
}

impl PeerLabels {
    /// Builds the table from a validated config. Listeners configured with port 0
    /// are only known once bound: see [`PeerLabels::set_bound_listeners`].
    pub fn from_config(cfg: &Config) -> PeerLabels {
        let mut labels = PeerLabels::default();
        for l in &cfg.listeners {
            if l.addr.port() != 0 {
                labels.listeners.insert(l.addr.port(), l.name.clone());
            }
        }
        if cfg.admin_addr.port() != 0 {
            labels
                .listeners
                .insert(cfg.admin_addr.port(), Arc::from("admin"));
        }
        for c in &cfg.clusters {
            let mut addrs = Vec::with_capacity(c.endpoints.len());
            for e in &c.endpoints {
                labels
                    .endpoints
                    .entry(e.addr)
                    .or_insert_with(|| EndpointName {
                        cluster: c.name.clone(),
                        endpoint: e.label.clone(),
                    });
                addrs.push(e.addr);
            }
            labels.clusters.push((c.name.clone(), addrs));
        }
        labels
    }

    /// Records the addresses listeners were actually bound to (ports chosen by the
    /// kernel for `:0`); they take precedence over the configured ports.
    pub fn set_bound_listeners(&mut self, bound: &[(Arc<str>, SocketAddr)]) {
        for (name, addr) in bound {
            self.listeners.insert(addr.port(), name.clone());
        }
    }

    /// The name of a key, if the config knows it.
    pub fn name(&self, key: &PeerKey) -> PeerName {
        if key.side == SIDE_DOWNSTREAM {
            let listener = self
                .listeners
                .get(&key.port)
                .cloned()
                .unwrap_or_else(|| Arc::from(format!("unlisted:{}", key.port)));
            return PeerName::Downstream { listener };
        }
        let addr = key_addr(key);
        match addr.and_then(|a| self.endpoints.get(&a)) {
            Some(n) => PeerName::Upstream(n.clone()),
            None => PeerName::Upstream(EndpointName {
                cluster: Arc::from("unlisted"),
                endpoint: Arc::from(
                    addr.map_or_else(|| format!("?:{}", key.port), |a| a.to_string()),
                ),
            }),
        }
    }

    /// Clusters in config order with the addresses of their endpoints (an address
    /// listed by two clusters appears under both here).
    pub fn clusters(&self) -> &[(Arc<str>, Vec<SocketAddr>)] {
        &self.clusters
    }
}

/// The socket address of an upstream key (`None` for an unknown family).
pub fn key_addr(key: &PeerKey) -> Option<SocketAddr> {
    let ip = match key.family {
        FAMILY_INET => IpAddr::V4(Ipv4Addr::from(key.addr[0].to_ne_bytes())),
        FAMILY_INET6 => {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(key.addr) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(octets);
            // A v4 endpoint reached through a dual-stack socket shows as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, key.port))
}

/// The key the kernel uses for an upstream address (the inverse of [`key_addr`]).
pub fn upstream_key(addr: SocketAddr) -> PeerKey {
    let (family, words) = match addr.ip() {
        IpAddr::V4(v4) => (FAMILY_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut words = [0u32; 4];
            for (w, chunk) in words.iter_mut().zip(o.chunks_exact(4)) {
                *w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
            (FAMILY_INET6, words)
        }
    };
    PeerKey {
        side: hypergate_ebpf_common::SIDE_UPSTREAM,
        family,
        port: addr.port(),
        _pad: 0,
        addr: words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_keys() {
        for a in ["127.0.0.1:8080", "[::1]:9000", "[2001:db8::7]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(key_addr(&upstream_key(addr)), Some(addr));
        }
    }

    #[test]
    fn ipv4_key_matches_kernel_layout() {
        // The kernel stores 127.0.0.1 in network byte order: bytes 7f 00 00 01.
        let key = upstream_key("127.0.0.1:80".parse().unwrap());
        assert_eq!(key.addr[0].to_ne_bytes(), [127, 0, 0, 1]);
    }

    #[test]
    fn names_from_config() {
        let cfg = crate::config::load_str(
            r#"
[admin]
listen = "127.0.0.1:9901"
[[listeners]]
name = "web"
address = "127.0.0.1:0"
[[clusters]]
name = "api"
endpoints = [{ address = "127.0.0.1:7001" }, { address = "127.0.0.1:7002" }]
[[clusters]]
name = "shadow"
endpoints = [{ address = "127.0.0.1:7002" }]
[[routes]]
name = "all"
cluster = "api"
"#,
            "test",
        )
        .unwrap();
        let mut labels = PeerLabels::from_config(&cfg);
        labels.set_bound_listeners(&[(Arc::from("web"), "127.0.0.1:4321".parse().unwrap())]);
        let down = |port| PeerKey {
            side: SIDE_DOWNSTREAM,
            family: FAMILY_INET,
            port,
            ..PeerKey::default()
        };
        assert_eq!(
            labels.name(&down(4321)),
            PeerName::Downstream {
                listener: Arc::from("web")
            }
        );
        assert_eq!(
            labels.name(&down(9901)),
            PeerName::Downstream {
                listener: Arc::from("admin")
            }
        );
        assert_eq!(
            labels.name(&down(5)),
            PeerName::Downstream {
                listener: Arc::from("unlisted:5")
            }
        );
        let up = |a: &str| labels.name(&upstream_key(a.parse().unwrap()));
        let PeerName::Upstream(n) = up("127.0.0.1:7002") else {
            panic!("upstream")
        };
        assert_eq!((&*n.cluster, &*n.endpoint), ("api", "127.0.0.1:7002"));
        let PeerName::Upstream(n) = up("127.0.0.1:9") else {
            panic!("upstream")
        };
        assert_eq!((&*n.cluster, &*n.endpoint), ("unlisted", "127.0.0.1:9"));
        assert_eq!(labels.clusters().len(), 2);
    }
}
