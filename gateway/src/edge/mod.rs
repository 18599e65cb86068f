//! Edge policy building blocks that the request pipeline calls (the
//! `hypergate-edge` crate): rate limiting.
pub use hypergate_edge::ratelimit;
