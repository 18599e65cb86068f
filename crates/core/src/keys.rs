//! Where a hash, sticky or split key comes from in a request: a header, a
//! cookie or the client's address (`"header:NAME"`, `"cookie:NAME"`, `"client_ip"`).

use crate::config::ConfigIssue;

/// Where a hash or sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

impl KeySource {
    /// Parses `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`; an issue at `path` otherwise.
    pub fn parse(text: &str, path: &str, issues: &mut Vec<ConfigIssue>) -> Option<KeySource> {
        if text == "client_ip" {
            return Some(KeySource::ClientIp);
        }
        match text.split_once(':') {
            Some(("header", name)) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                Some(KeySource::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if !name.is_empty() => Some(KeySource::Cookie(name.to_string())),
            _ => {
                issues.push(ConfigIssue {
                    path: path.to_string(),
                    reason: format!(
                        "{text:?}: expected \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
                    ),
                });
                None
            }
        }
    }
}
