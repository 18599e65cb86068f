//! Hypercare: what the gateway records and concludes about the releases behind it.
//!
//! - [`store`]: every call as a row in SQLite, with per-minute rollups, written by
//!   the record writer thread off the hot path.
//! - [`query`]: read-side queries over the store, shared by the admin API and the CLI.

pub mod query;
pub mod store;
