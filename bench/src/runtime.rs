//! Builds the monoio runtime every benchmark thread runs on.
//!
//! Each thread owns one runtime with the fusion driver: io_uring where the kernel
//! offers it, epoll otherwise, with the timer enabled for delays and timeouts.

use std::future::Future;
use std::io;

/// Runs `future` to completion on a fresh single-threaded monoio runtime.
pub fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    Ok(runtime.block_on(future))
}
