//! TLS with rustls: listener termination with SNI certificate selection, and
//! verified TLS to upstream clusters.
//!
//! Certificates and keys are read from PEM files when the config is loaded, so a
//! reload picks up renewed files. A listener serves the certificate whose names
//! match the client's SNI, or its first certificate. Only TLS 1.2 and 1.3 are
//! offered, with ALPN `http/1.1`. Handshake failures are counted by reason.

use hypergate_core::config::raw::ListenerTlsConfig;
use hypergate_core::config::ConfigIssue;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Picks a certificate by SNI, falling back to the first one.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.by_name.get(&name) {
            return Some(k.clone());
        }
        for (suffix, k) in &self.wildcard {
            if name.len() > suffix.len()
                && name.ends_with(suffix.as_str())
                && !name[..name.len() - suffix.len()].contains('.')
            {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

use hypergate_upstream::tls::read_certs;

#[allow(
    clippy::disallowed_methods,
    reason = "keys are read while a config is built, off the shards"
)]
fn read_key(file: &str) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| format!("{file}: invalid PEM: {e}"))?
        .ok_or_else(|| format!("{file}: no private key found"))
}

/// Builds a listener's rustls config, reporting every problem.
pub fn server_config(
    t: &ListenerTlsConfig,
    alpn: &[&[u8]],
    path: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Arc<rustls::ServerConfig>> {
    let before = issues.len();
    let push = |issues: &mut Vec<ConfigIssue>, p: String, r: String| {
        issues.push(ConfigIssue { path: p, reason: r })
    };
    let mut keys = Vec::new();
    for (i, c) in t.certificates.iter().enumerate() {
        let cpath = format!("{path}.certificates[{i}]");
        let certs =
            read_certs(&c.cert_file).map_err(|e| push(issues, format!("{cpath}.cert_file"), e));
        let key = read_key(&c.key_file).map_err(|e| push(issues, format!("{cpath}.key_file"), e));
        let (Ok(certs), Ok(key)) = (certs, key) else {
            continue;
        };
        match any_supported_type(&key) {
            Ok(signing) => {
                let ck = Arc::new(CertifiedKey::new(certs, signing));
                if ck.keys_match().is_err() {
                    push(
                        issues,
                        format!("{cpath}.key_file"),
                        "the key does not match the certificate".into(),
                    );
                    continue;
                }
                keys.push((c.server_names.clone(), ck));
            }
            Err(e) => push(
                issues,
                format!("{cpath}.key_file"),
                format!("unsupported key: {e}"),
            ),
        }
    }
    if t.certificates.is_empty() {
        push(
            issues,
            format!("{path}.certificates"),
            "at least one certificate is required".into(),
        );
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_str() {
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        other => {
            push(
                issues,
                format!("{path}.min_version"),
                format!("{other:?}: expected \"1.2\" or \"1.3\""),
            );
            &[]
        }
    };
    if issues.len() > before {
        return None;
    }
    let mut resolver = SniResolver {
        by_name: HashMap::new(),
        wildcard: Vec::new(),
        default: keys[0].1.clone(),
    };
    for (names, ck) in &keys {
        for n in names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix('*') {
                Some(suffix) => resolver.wildcard.push((suffix.to_string(), ck.clone())),
                None => {
                    resolver.by_name.insert(n, ck.clone());
                }
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // The listener's protocols, in the server's order of preference.
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Some(Arc::new(cfg))
}

pub use hypergate_upstream::tls::{client_config, verifying_client_config, UpstreamTls};

pub use hypergate_proxy::stats::{classify_handshake_error, HANDSHAKE_FAILURES};
