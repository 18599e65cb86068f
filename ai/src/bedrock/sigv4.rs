//! AWS Signature Version 4 for Bedrock requests, through the official `aws-sigv4`
//! crate (with only its `sign-http` feature) and `aws-credential-types`.
//!
//! [`sign`] takes everything that goes into the signature (method, host, path and
//! query, the headers that will be sent, the body, region, service, credentials and
//! the time) and returns the headers to add: `authorization`, `x-amz-date` and, with
//! temporary credentials, `x-amz-security-token`. The body is hashed into the
//! signature (no `x-amz-content-sha256` header: Bedrock does not need one). The path
//! must be sent exactly as given (already percent-encoded, e.g. a model id's `:` as
//! `%3A`); the signer encodes it once more, as SigV4 does for every service but S3.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign as sign_request, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;

/// What a request's signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    /// The HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// The `Host` header's value (with a port if it is not the scheme's default).
    pub host: &'a str,
    /// The path and query as sent, e.g. `/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse`.
    pub path_and_query: &'a str,
    /// The headers that will be sent and should be signed (names in any case),
    /// e.g. `content-type`; `host` is added from [`SignInput::host`] when absent.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body bytes exactly as sent.
    pub body: &'a [u8],
    /// The AWS region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The signing service name: `bedrock` for Bedrock's runtime API.
    pub service: &'a str,
    /// The access key id.
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a str,
    /// The session token of temporary credentials.
    pub session_token: Option<&'a str>,
    /// The signing time (`x-amz-date`).
    pub time: SystemTime,
}

/// Signs a request: the headers to add, names lowercase (`authorization`,
/// `x-amz-date`, and `x-amz-security-token` when there is a session token). Fails
/// (with the signer's message) when the path or a header cannot be signed.
pub fn sign(input: SignInput<'_>) -> Result<Vec<(String, String)>, String> {
    let identity = Credentials::new(
        input.access_key_id,
        input.secret_access_key,
        input.session_token.map(str::to_owned),
        None,
        "hypergate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(input.region)
        .name(input.service)
        .time(input.time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|error| error.to_string())?
        .into();
    let has_host = input
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"));
    let host = (!has_host).then_some(("host", input.host));
    let headers = host.into_iter().chain(input.headers.iter().copied());
    let uri = format!("https://{}{}", input.host, input.path_and_query);
    let request = SignableRequest::new(input.method, uri, headers, SignableBody::Bytes(input.body))
        .map_err(|error| error.to_string())?;
    let (instructions, _signature) = sign_request(request, &params)
        .map_err(|error| error.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2015-08-30T12:36:00Z, the time of the AWS SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn matches_the_aws_test_suite_get_vanilla() {
        // "get-vanilla" from the AWS Signature Version 4 test suite.
        let headers = sign(SignInput {
            method: "GET",
            host: "example.amazonaws.com",
            path_and_query: "/",
            headers: &[],
            body: b"",
            region: "us-east-1",
            service: "service",
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
            time: suite_time(),
        })
        .unwrap();
        assert_eq!(header(&headers, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&headers, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
        assert_eq!(header(&headers, "x-amz-security-token"), None);
    }

    #[test]
    fn signs_the_body_headers_and_session_token() {
        let input = SignInput {
            method: "POST",
            host: "bedrock-runtime.us-east-1.amazonaws.com",
            path_and_query: "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            headers: &[("Content-Type", "application/json")],
            body: br#"{"messages":[]}"#,
            region: "us-east-1",
            service: "bedrock",
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "secret",
            session_token: Some("token"),
            time: suite_time(),
        };
        let signed = sign(input).unwrap();
        let authorization = header(&signed, "authorization").unwrap();
        assert!(
            authorization.contains(
                "/20150830/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"
            ),
            "{authorization}"
        );
        assert_eq!(header(&signed, "x-amz-security-token"), Some("token"));
        let other_body = sign(SignInput {
            body: br#"{"messages":[1]}"#,
            ..input
        })
        .unwrap();
        assert_ne!(header(&other_body, "authorization"), Some(authorization));
    }
}
