//! Upgraded connections: once the upstream accepted an upgrade the route
//! allows, bytes go both ways until either side is done, nothing moves for
//! `tunnel_idle_timeout`, or the shard drains. The request that opened it was
//! admitted by every phase; its record is written when the tunnel ends.
//!
//! Depends on `exchange` and `state` (the connection registry a drain uses).

use crate::exchange::ClientStream;
use crate::state::{shutdown_both, ShardCtx};
use crate::stats::TunnelEnd;
use bytes::BytesMut;
use hypergate_upstream::UpstreamConn;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::cell::Cell;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Copies bytes both ways after a successful upgrade. Each direction ends at its
/// source's EOF (passed on as a half-close); the tunnel ends when both have, when
/// no byte moved either way for `idle`, or when the shard drains (it shuts both
/// sockets down through the connection registry). Reads are never cancelled by
/// a timeout (a cancelled read may lose bytes): a watchdog shuts the sockets down
/// instead. Returns how it ended and the bytes carried up and down.
pub async fn tunnel<S: ClientStream>(
    ctx: &ShardCtx,
    slot: usize,
    client_fd: RawFd,
    client: S,
    client_leftover: BytesMut,
    mut up: UpstreamConn,
    idle: Duration,
) -> (TunnelEnd, u64, u64) {
    let up_fd = up.fd();
    ctx.conns.borrow_mut().set_tunnel(slot, up_fd);
    let active = &ctx.stats.tunnels_active;
    active.set(active.get() + 1);
    let (sent_up, sent_down) = (Cell::new(0u64), Cell::new(0u64));
    let last = Cell::new(Instant::now());
    let failed = Cell::new(false);
    let timed_out = Cell::new(false);
    let mut leftover_ok = true;
    if !client_leftover.is_empty() {
        sent_up.set(client_leftover.len() as u64);
        let written = monoio::time::timeout(idle, up.stream.write_all(client_leftover)).await;
        leftover_ok = matches!(written, Ok((Ok(_), _)));
    }
    if leftover_ok {
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = up.stream.into_split();
        let copies = async {
            monoio::join!(
                copy_half(&mut cr, &mut uw, &sent_up, &last, &failed),
                copy_half(&mut ur, &mut cw, &sent_down, &last, &failed)
            )
        };
        let watchdog = async {
            loop {
                let quiet = last.get().elapsed();
                if quiet >= idle {
                    timed_out.set(true);
                    shutdown_both(client_fd, up_fd);
                    // The copies now end with errors or EOF; let them.
                    std::future::pending::<()>().await;
                }
                monoio::time::sleep(idle - quiet).await;
            }
        };
        monoio::select! {
            _ = copies => {}
            _ = watchdog => {}
        }
    } else {
        failed.set(true);
    }
    active.set(active.get() - 1);
    let end = if ctx.draining.get() && ctx.conns.borrow().was_shut(slot) {
        TunnelEnd::Drain
    } else if timed_out.get() {
        TunnelEnd::IdleTimeout
    } else if failed.get() {
        TunnelEnd::Error
    } else {
        TunnelEnd::Closed
    };
    (end, sent_up.get(), sent_down.get())
}

/// One direction of a tunnel: read, write all, until EOF (then half-close the
/// destination). A failure is noted in `failed`; `last` is the latest activity.
async fn copy_half<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut R,
    dst: &mut W,
    bytes: &Cell<u64>,
    last: &Cell<Instant>,
    failed: &Cell<bool>,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let (res, b) = src.read(buf).await;
        buf = b;
        match res {
            Ok(0) => break,
            Ok(n) => {
                bytes.set(bytes.get() + n as u64);
                last.set(Instant::now());
            }
            Err(_) => {
                failed.set(true);
                break;
            }
        }
        let (res, b) = dst.write_all(buf).await;
        buf = b;
        buf.clear();
        if res.is_err() {
            failed.set(true);
            break;
        }
    }
    let _ = dst.shutdown().await;
}
