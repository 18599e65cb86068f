//! Verified TLS from the gateway to upstreams (clusters, LLM providers,
//! webhooks): rustls client configs built from a PEM CA bundle.

use hypergate_core::config::raw::UpstreamTlsConfig;
use hypergate_core::config::ConfigIssue;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

/// The certificates of a PEM file (an error naming the file when there is none).
#[allow(
    clippy::disallowed_methods,
    reason = "certificates are read while a config is built, off the shards"
)]
pub fn read_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("{file}: invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file}: no certificate found"));
    }
    Ok(certs)
}

/// A cluster's TLS client settings.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// rustls client config with the configured CA bundle.
    pub config: Arc<rustls::ClientConfig>,
    /// Name verified and sent as SNI.
    pub server_name: ServerName<'static>,
}

/// Builds a cluster's TLS client config; `h2`: offer (only) HTTP/2 by ALPN.
pub fn client_config(
    t: &UpstreamTlsConfig,
    path: &str,
    h2: bool,
    issues: &mut Vec<ConfigIssue>,
) -> Option<UpstreamTls> {
    let config = match verifying_client_config(&t.ca_file) {
        Ok(c) if h2 => {
            let mut c = Arc::unwrap_or_clone(c);
            c.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(c)
        }
        Ok(c) => c,
        Err(reason) => {
            issues.push(ConfigIssue {
                path: format!("{path}.ca_file"),
                reason,
            });
            return None;
        }
    };
    let server_name = match ServerName::try_from(t.server_name.clone()) {
        Ok(n) => n,
        Err(_) => {
            issues.push(ConfigIssue {
                path: format!("{path}.server_name"),
                reason: format!("invalid name {:?}", t.server_name),
            });
            return None;
        }
    };
    Some(UpstreamTls {
        config,
        server_name,
    })
}

/// A TLS client config (HTTP/1.1) that verifies servers against the PEM CA
/// bundle `ca_file`; the error says what is wrong with the file.
pub fn verifying_client_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca_file)? {
        roots
            .add(c)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
