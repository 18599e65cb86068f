//! Integration-test harness for Hypergate's data plane.
//!
//! Everything runs on real sockets on 127.0.0.1 with ephemeral ports, so test
//! binaries and the tests inside them run in parallel:
//! - [`mock`]: `MockUpstream`, a std-thread HTTP/1.1 origin with fault knobs
//!   (latency, chunked and generated bodies, resets, garbage, hangs, close after
//!   N, WebSocket-style echo) that records every request and counts connections.
//! - [`gateway`]: `TestGateway`, the real gateway started in-process from TOML,
//!   with admin helpers (metrics, stats, reload).
//! - [`process`]: `GatewayProcess`, the `hypergate` binary as a child process for
//!   signal, drain and CLI tests.
//! - [`client`]: a raw HTTP/1.1 client that sends exact bytes and reads responses
//!   strictly, with timeouts on every read.
//! - [`python`]: client scripts with the official Python SDKs.
//! - [`redis`]: a real `redis-server` on an ephemeral port.
//! - [`browser`]: headless Chromium over the DevTools protocol, recording
//!   console errors, for tests of the admin dashboard.
//! - [`body`]: generated bodies and fingerprints for streaming gigabytes without
//!   holding them.
//! - [`otlp`]: an in-process OTLP/HTTP receiver that decodes exported spans and
//!   log records.
//! - [`util`]: polling with deadlines, temp dirs, closed ports.
//! - [`tls`]: a throwaway CA, server certificates and signing keys made with the
//!   `openssl` tool, and wrappers around `curl` and `openssl s_client`.
//! - [`h2raw`]: a raw HTTP/2 client that writes frames byte by byte, for attacks.
//!
//! The tests live in `tests/tests/`, one file per area.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod body;
pub mod browser;
pub mod client;
pub mod gateway;
pub mod h2raw;
pub mod mock;
pub mod otlp;
pub mod process;
pub mod python;
pub mod redis;
pub mod tls;
pub mod util;

pub use client::{Conn, Request, Response};
pub use gateway::{cluster, preamble, route_all, TestGateway};
pub use mock::{Action, MockUpstream, Reply};
pub use util::{wait_until, TempDir};
