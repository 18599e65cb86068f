//! Assembling the validated config from the raw file: each feature's build
//! step (clusters, consumers and rate limits, routes, the LLM spec, TLS
//! certificates, listeners), every error with its path; and resolving the
//! runtime-overrides layer against it.

pub mod resolve;
pub mod validate;

use hypergate_core::config::{parse_raw, ConfigError};
use hypergate_proxy::spec::Config;

pub use validate::validate;

/// Parses and validates configuration text with the runtime's checks only
/// (no layer above); `source_name` names it in errors.
pub fn load_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let fail = |issues| ConfigError {
        source_name: source_name.to_string(),
        issues,
    };
    let raw = parse_raw(text).map_err(fail)?;
    validate(raw, &|_, _| {}).map_err(fail)
}
