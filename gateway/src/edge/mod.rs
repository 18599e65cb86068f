//! Edge policy building blocks that the request pipeline calls: rate limiting.
pub mod ratelimit;
