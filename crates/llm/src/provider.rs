//! A provider call as the upstream client writes it: a provider is a hidden
//! cluster (see `spec`), so a call goes through the same client as proxied
//! requests (pool, lease, attempt, retry rule, budget, breaker); only the
//! request differs: one head with the provider's host, credentials and path,
//! and a JSON body that leaves with it (so it can always be written again).
//! Bedrock calls signed with AWS credentials carry a SigV4 signature, made
//! per attempt by [`sign`].
//!
//! Depends on `spec`, `hypergate-ai`'s signer and `hypergate-upstream`'s client.

use crate::spec::Provider;
use hypergate_upstream::client::Outgoing;
use std::time::{Duration, Instant, SystemTime};

/// One request to a provider.
pub struct ProviderCall<'a> {
    /// The provider.
    pub provider: &'a Provider,
    /// `POST` (or `GET` without a body).
    pub method: &'static str,
    /// Path after the provider's base path (with its own query, if any).
    pub suffix: &'a str,
    /// The JSON body.
    pub body: &'a [u8],
    /// Ask for an event stream.
    pub accept_stream: bool,
    /// The call's request id (sent as `X-Request-Id`).
    pub request_id: &'a str,
    /// Signature header lines ([`sign`]), or empty.
    pub signed: &'a [u8],
}

/// The content type of every provider call's body (signed as sent).
const CONTENT_TYPE: &str = "application/json";

/// Appends the path and query a call to `suffix` goes to: the provider's base
/// path, the suffix, and the provider's query joined to the suffix's own.
fn put_path_and_query(out: &mut Vec<u8>, p: &Provider, suffix: &str) {
    out.extend_from_slice(p.base_path.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    match p.query.strip_prefix('?') {
        Some(q) if suffix.contains('?') => {
            out.push(b'&');
            out.extend_from_slice(q.as_bytes());
        }
        _ => out.extend_from_slice(p.query.as_bytes()),
    }
}

/// The SigV4 header lines for a `POST` of `body` to `suffix`, for a provider
/// with AWS credentials (Bedrock); empty for the others. Signed at the time
/// of the attempt (AWS refuses signatures older than 5 minutes).
pub fn sign(p: &Provider, suffix: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let Some(aws) = &p.aws else {
        return Ok(Vec::new());
    };
    let mut path = Vec::new();
    put_path_and_query(&mut path, p, suffix);
    let path = String::from_utf8_lossy(&path);
    // The credentials are read here only to sign.
    let headers = hypergate_ai::bedrock::sigv4::sign(hypergate_ai::bedrock::sigv4::SignInput {
        method: "POST",
        host: &p.host,
        path_and_query: &path,
        headers: &[("content-type", CONTENT_TYPE)],
        body,
        region: &aws.region,
        service: &aws.service,
        access_key_id: aws.access_key_id.expose(),
        secret_access_key: aws.secret_access_key.expose(),
        session_token: aws.session_token.as_ref().map(|t| t.expose()),
        // The shard's cached clock: SigV4 allows minutes of skew.
        time: SystemTime::UNIX_EPOCH
            + Duration::from_millis(hypergate_core::clock::unix_ms_at(Instant::now())),
    })?;
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

impl Outgoing for ProviderCall<'_> {
    fn write_head(&mut self, out: &mut Vec<u8>, _endpoint: &str) {
        let p = self.provider;
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        put_path_and_query(out, p, self.suffix);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(p.host.as_bytes());
        out.extend_from_slice(b"\r\nuser-agent: hypergate\r\nx-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.headers);
        out.extend_from_slice(self.signed);
        out.extend_from_slice(if self.accept_stream {
            b"accept: text/event-stream\r\n".as_slice()
        } else {
            b"accept: application/json\r\n".as_slice()
        });
        if self.method == "POST" {
            out.extend_from_slice(b"content-type: ");
            out.extend_from_slice(CONTENT_TYPE.as_bytes());
            out.extend_from_slice(b"\r\ncontent-length: ");
            hypergate_core::http::write_u64(out, self.body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
    }

    fn resendable(&self) -> bool {
        true
    }
}
