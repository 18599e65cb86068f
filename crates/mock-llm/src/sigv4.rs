//! The mock's SigV4 check: recomputes the signature of a received request from its
//! method, raw path, query, signed headers and body, with the configured secret.
//!
//! Written from the SigV4 specification with `hmac` and `sha2`, apart from the
//! gateway's signer (`hypergate-ai`, which uses `aws-sigv4`), so that each checks the
//! other. Like AWS for every service but S3, the canonical URI is the path as received
//! encoded once more (`%3A` becomes `%253A`), and the payload hash is the body's.
//! Not checked: the clock skew between `x-amz-date` and now.

use crate::http::Request;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Why a request's signature is refused: the `x-amzn-errortype` and the message AWS sends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The `x-amzn-errortype`, e.g. `InvalidSignatureException`.
    pub error_type: &'static str,
    /// The `message` of the error body.
    pub message: String,
}

/// What the signature must match.
pub(crate) struct Expected<'a> {
    /// The access key id the credential must name.
    pub access_key_id: &'a str,
    /// The secret the signature is recomputed with.
    pub secret_access_key: &'a str,
    /// The region the credential scope must name.
    pub region: &'a str,
    /// The service the credential scope must name (`bedrock`).
    pub service: &'a str,
}

/// The message AWS sends when the signature does not match.
pub(crate) const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

fn refuse(error_type: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        error_type,
        message: message.into(),
    }
}

/// Checks the request's `Authorization: AWS4-HMAC-SHA256 …` header.
pub(crate) fn verify(request: &Request, expected: &Expected<'_>) -> Result<(), Refusal> {
    let Some(authorization) = request.header("authorization") else {
        return Err(refuse(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let Some(fields) = authorization.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(refuse(
            "IncompleteSignatureException",
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm.",
        ));
    };
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
    };
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    ) else {
        return Err(refuse(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'.",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(refuse(
            "IncompleteSignatureException",
            format!("Credential is malformed: {credential}"),
        ));
    };
    if *access_key_id != expected.access_key_id {
        return Err(refuse(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if *region != expected.region {
        return Err(refuse(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region. (expected {})",
                expected.region
            ),
        ));
    }
    if *service != expected.service {
        return Err(refuse(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: '{}'.",
                expected.service
            ),
        ));
    }
    let Some(amz_date) = request.header("x-amz-date") else {
        return Err(refuse(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") || !amz_date.starts_with(date) {
        return Err(refuse("InvalidSignatureException", MISMATCH));
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = request
            .headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        uri_encode(&request.path, false),
        canonical_query(&request.query),
        hex(&Sha256::digest(&request.body)),
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = format!("AWS4{}", expected.secret_access_key).into_bytes();
    for part in [*date, *region, *service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    if hex(&hmac(&key, string_to_sign.as_bytes())) == signature {
        Ok(())
    } else {
        Err(refuse("InvalidSignatureException", MISMATCH))
    }
}

/// HMAC-SHA256.
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// SigV4's URI encoding: unreserved characters stay, `/` stays unless
/// `encode_slash`, every other byte becomes `%XX`.
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (byte == b'/' && !encode_slash)
        {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Percent-decodes a query component (`+` stays a plus, as SigV4 wants).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex_value = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], hex_value) {
            (b'%', Some(value)) => {
                decoded.push(value);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The canonical query string: pairs decoded, re-encoded strictly, sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(name), true),
                uri_encode(&percent_decode(value), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: &str) -> Request {
        Request {
            method: "GET".to_owned(),
            path: "/".to_owned(),
            query: String::new(),
            headers: vec![
                ("host".to_owned(), "example.amazonaws.com".to_owned()),
                ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
                ("authorization".to_owned(), authorization.to_owned()),
            ],
            body: Vec::new(),
            keep_alive: true,
        }
    }

    const EXPECTED: Expected<'static> = Expected {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "service",
    };

    #[test]
    fn accepts_the_aws_test_suite_get_vanilla() {
        let authorization = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        assert_eq!(verify(&request(authorization), &EXPECTED), Ok(()));
        let tampered = authorization.replace("5fa00", "5fa01");
        assert_eq!(
            verify(&request(&tampered), &EXPECTED).unwrap_err().message,
            MISMATCH
        );
        let other_region = authorization.replace("us-east-1", "eu-west-1");
        assert!(verify(&request(&other_region), &EXPECTED)
            .unwrap_err()
            .message
            .contains("region"));
        let mut missing = request("");
        missing.headers.retain(|(name, _)| name != "authorization");
        assert_eq!(
            verify(&missing, &EXPECTED).unwrap_err().error_type,
            "MissingAuthenticationTokenException"
        );
    }

    #[test]
    fn encodes_paths_twice_and_sorts_queries() {
        assert_eq!(
            uri_encode("/model/a.b-v1%3A0/converse", false),
            "/model/a.b-v1%253A0/converse"
        );
        assert_eq!(uri_encode("/model/a:0", false), "/model/a%3A0");
        assert_eq!(canonical_query("b=2&a=x%20y&c"), "a=x%20y&b=2&c=");
    }
}
