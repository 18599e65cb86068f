//! [`Secret`]: a configuration value (key, password, token, credential-bearing URL
//! or header value) that must never be shown.
//!
//! A `Secret` prints as `Secret(<redacted>)` with `{:?}`, as `<redacted>` with
//! `{}`, and serialises as the string `"<redacted>"`, so `GET /config`, a
//! `tracing` field holding a config struct, an error message or a metric label
//! cannot carry its value, whatever struct it is nested in and whichever fields
//! are added around it later. It deserialises from a plain string. The only way
//! to read the value is [`Secret::expose`]: every call of it is a place where the
//! secret leaves (onto the wire, into a hash, into a connection), and should be
//! read as such in review. Equality runs in constant time over SHA-256 digests,
//! so comparing a presented token with a configured one leaks neither the
//! position of the first difference nor the configured length.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// What a secret shows instead of its value, wherever it is printed.
pub const REDACTED: &str = "<redacted>";

/// A string that is never printed, logged or serialised; see the [module docs](self).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself. Every use is a place where the secret leaves the type:
    /// call it only to send the secret on the wire, to hash or compare it, or to
    /// hand it to the client that opens a connection with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for Secret {
    /// Constant time: compares the SHA-256 digests of both values.
    fn eq(&self, other: &Secret) -> bool {
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(other.0.as_bytes());
        a[..].ct_eq(&b[..]).into()
    }
}

impl Eq for Secret {}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Holder {
        name: String,
        key: Secret,
        keys: Vec<Secret>,
    }

    #[test]
    fn never_printed_or_serialised() {
        let h: Holder =
            toml::from_str("name = \"n\"\nkey = \"marker-aaa\"\nkeys = [\"marker-bbb\"]\n")
                .unwrap();
        assert_eq!(h.key.expose(), "marker-aaa");
        assert_eq!(h.keys[0].expose(), "marker-bbb");
        for shown in [
            format!("{h:?}"),
            format!("{h:#?}"),
            format!("{}", h.key),
            serde_json::to_string(&h).unwrap(),
            toml::to_string(&h).unwrap(),
        ] {
            assert!(!shown.contains("marker"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        assert_eq!(format!("{:?}", h.key), "Secret(<redacted>)");
        assert_eq!(serde_json::to_value(&h.key).unwrap(), "<redacted>");
    }

    #[test]
    fn equality_compares_the_values() {
        assert_eq!(Secret::new("abc"), Secret::new("abc"));
        assert_ne!(Secret::new("abc"), Secret::new("abd"));
        assert_ne!(Secret::new("abc"), Secret::new("abcd"));
        assert_ne!(Secret::new(""), Secret::new("a"));
    }

    #[test]
    fn deserialises_only_from_strings() {
        assert!(serde_json::from_str::<Secret>("\"x\"").is_ok());
        assert!(serde_json::from_str::<Secret>("12").is_err());
    }
}
