//! Leasing an upstream connection for one exchange: from the endpoint's
//! per-shard pool (checked for liveness) or newly connected (with TLS for TLS
//! clusters), bounded by the pool's `max_connections` and the connect timeout;
//! on HTTP/2 clusters, a stream on a multiplexed connection (`h2`).

use crate::{ClusterRuntime, UpstreamConn, UpstreamStream};
use monoio::net::TcpStream;
use std::net::SocketAddr;

/// An upstream connection checked out for one attempt; returned to the pool
/// only through [`Lease::release`], otherwise counted as closed when dropped.
pub struct Lease<'a> {
    /// The cluster it belongs to.
    pub cluster: &'a ClusterRuntime,
    /// Index of the endpoint.
    pub endpoint: usize,
    /// The connection, until released or taken.
    pub conn: Option<UpstreamConn>,
}

impl Lease<'_> {
    /// The connection (held until the lease is released or taken).
    pub fn conn(&mut self) -> &mut UpstreamConn {
        self.conn
            .as_mut()
            .expect("lease holds a connection until released")
    }

    /// Returns the connection to its endpoint's pool (only when the exchange
    /// left it reusable; otherwise drop the lease and it is closed).
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.cluster.checkin(self.endpoint, c);
        }
    }

    /// Takes the connection out of the pool's accounting for good (an upgrade
    /// turns it into a tunnel).
    pub fn take(mut self) -> UpstreamConn {
        let conn = self
            .conn
            .take()
            .expect("lease holds a connection until released");
        if !conn.multiplexed() {
            self.cluster.closed(self.endpoint);
        }
        conn
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let e = &self.cluster.endpoints[self.endpoint];
        e.in_flight.set(e.in_flight.get().saturating_sub(1));
        // An HTTP/2 stream's connection is counted until it closes, not per stream.
        if self.conn.take().is_some_and(|c| !c.multiplexed()) {
            self.cluster.closed(self.endpoint);
        }
    }
}

/// Why no connection could be leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// The endpoint's pool is at `max_connections`.
    PoolFull,
    /// Connecting (or the TLS handshake) failed.
    Connect,
    /// Connecting took longer than the cluster's `connect_timeout`.
    ConnectTimeout,
}

/// A connection to endpoint `ep` for one exchange: from the pool when `pooled`
/// (checked for liveness first when `verify_open`), else newly connected.
pub async fn lease(
    cluster: &ClusterRuntime,
    ep: usize,
    pooled: bool,
    verify_open: bool,
) -> Result<Lease<'_>, LeaseError> {
    let endpoint = &cluster.endpoints[ep];
    let conn = if cluster.spec.raw.protocol.is_h2() {
        lease_h2(cluster, ep, pooled).await?
    } else {
        lease_http1(cluster, ep, pooled, verify_open).await?
    };
    endpoint.in_flight.set(endpoint.in_flight.get() + 1);
    Ok(Lease {
        cluster,
        endpoint: ep,
        conn: Some(conn),
    })
}

/// A stream on an HTTP/2 connection with room (when `pooled`), else on a
/// new one.
async fn lease_h2(
    cluster: &ClusterRuntime,
    ep: usize,
    pooled: bool,
) -> Result<UpstreamConn, LeaseError> {
    if let Some(stream) = pooled
        .then(|| crate::h2::open_stream(cluster, ep))
        .flatten()
    {
        return Ok(stream);
    }
    if !cluster.may_connect(ep) {
        return Err(LeaseError::PoolFull);
    }
    let opening = async {
        let conn = connect(cluster.endpoints[ep].addr, cluster.spec.tls.as_ref()).await?;
        crate::h2::handshake(cluster, ep, conn).await
    };
    // Boxed, as connecting below: see `lease_http1`.
    match monoio::time::timeout(cluster.spec.raw.connect_timeout, Box::pin(opening)).await {
        Ok(Ok(stream)) => {
            cluster.opened(ep);
            Ok(stream)
        }
        Ok(Err(_)) => Err(LeaseError::Connect),
        Err(_) => Err(LeaseError::ConnectTimeout),
    }
}

/// A pooled or new HTTP/1.1 connection.
async fn lease_http1(
    cluster: &ClusterRuntime,
    ep: usize,
    pooled: bool,
    verify_open: bool,
) -> Result<UpstreamConn, LeaseError> {
    let endpoint = &cluster.endpoints[ep];
    let conn = match pooled.then(|| cluster.checkout(ep, verify_open)).flatten() {
        Some(c) => c,
        None => {
            if !cluster.may_connect(ep) {
                return Err(LeaseError::PoolFull);
            }
            // Boxed: a connect's future (the TLS handshake's, HTTP/2's) is
            // kilobytes; inline, it would make every request's future, and
            // each HTTP/2 stream's task, that large. Connects are rare next
            // to requests (pooled connections), so is the allocation.
            match monoio::time::timeout(
                cluster.spec.raw.connect_timeout,
                Box::pin(connect(endpoint.addr, cluster.spec.tls.as_ref())),
            )
            .await
            {
                Ok(Ok(c)) => {
                    cluster.opened(ep);
                    c
                }
                Ok(Err(_)) => return Err(LeaseError::Connect),
                Err(_) => return Err(LeaseError::ConnectTimeout),
            }
        }
    };
    Ok(conn)
}

/// Connects to an endpoint (with a TLS handshake for TLS clusters).
async fn connect(
    addr: SocketAddr,
    tls: Option<&crate::tls::UpstreamTls>,
) -> std::io::Result<UpstreamConn> {
    let tcp = TcpStream::connect_addr(addr).await?;
    let _ = tcp.set_nodelay(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    let stream = match tls {
        None => UpstreamStream::Plain(tcp),
        Some(t) => {
            let connector = monoio_rustls::TlsConnector::from(t.config.clone());
            let s = connector
                .connect(t.server_name.clone(), tcp)
                .await
                .map_err(std::io::Error::from)?;
            UpstreamStream::Tls(Box::new(s))
        }
    };
    Ok(UpstreamConn::new(stream, fd))
}
