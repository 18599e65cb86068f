//! Shared pieces of Hypergate's benchmark tools.
//!
//! The package ships two binaries that `cargo xtask bench` drives:
//! - `mock-upstream`: a fast keep-alive HTTP/1.1 origin (one monoio runtime per
//!   thread, SO_REUSEPORT listeners) that answers every request with a fixed body.
//! - `loadgen`: an open-loop, fixed-rate load generator that measures latency from
//!   each request's intended send time, so a stalled server cannot hide its stalls
//!   (no coordinated omission).
//!
//! Both are built from the modules here:
//! - [`http1`]: just enough HTTP/1.1 framing to find where each message ends
//!   (heads via `httparse`, Content-Length and chunked bodies).
//! - [`cpu`]: CPU-list parsing and thread pinning.
//! - [`runtime`]: the one way these tools build a monoio runtime.

pub mod cpu;
pub mod http1;
pub mod runtime;
