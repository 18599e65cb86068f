//! A provider call as the upstream client writes it: a provider is a hidden
//! cluster (see `spec`), so a call goes through the same client as proxied
//! requests (pool, lease, attempt, retry rule, budget, breaker); only the
//! request differs: one head with the provider's host, credentials and path,
//! and a JSON body that leaves with it (so it can always be written again).
//!
//! Depends on `spec` and on `hypergate-upstream`'s client.

use crate::spec::Provider;
use hypergate_upstream::client::Outgoing;

/// One request to a provider.
pub struct ProviderCall<'a> {
    /// The provider.
    pub provider: &'a Provider,
    /// `POST` (or `GET` without a body).
    pub method: &'static str,
    /// Path after the provider's base path.
    pub suffix: &'a str,
    /// The JSON body.
    pub body: &'a [u8],
    /// Ask for an event stream.
    pub accept_stream: bool,
    /// The call's request id (sent as `X-Request-Id`).
    pub request_id: &'a str,
}

impl Outgoing for ProviderCall<'_> {
    fn write_head(&mut self, out: &mut Vec<u8>, _endpoint: &str) {
        let p = self.provider;
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(p.base_path.as_bytes());
        out.extend_from_slice(self.suffix.as_bytes());
        out.extend_from_slice(p.query.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(p.host.as_bytes());
        out.extend_from_slice(b"\r\nuser-agent: hypergate\r\nx-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.headers);
        out.extend_from_slice(if self.accept_stream {
            b"accept: text/event-stream\r\n".as_slice()
        } else {
            b"accept: application/json\r\n".as_slice()
        });
        if self.method == "POST" {
            out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
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
