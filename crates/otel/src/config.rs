//! The `[observability.otlp]` table, the standard `OTEL_*` environment
//! variables on top of it, and validation into [`OtlpSettings`].
//!
//! 1. [`OtlpConfig`] mirrors the table (serde, every field documented, the
//!    defaults explicit, unknown keys rejected).
//! 2. [`OtlpEnv::from_vars`] picks the `OTEL_*` variables out of an iterator
//!    of `(name, value)` pairs (`std::env::vars()` in the binary, a literal list
//!    in tests); an empty value counts as unset, as the spec says.
//! 3. [`OtlpConfig::validate`] merges the two (a variable wins over the key it
//!    stands for) and returns every problem at once, each with the path it came
//!    from: `observability.otlp.<key>` or the variable's name.
//!
//! Endpoints: a signal's own URL (`traces_endpoint`, `logs_endpoint`) is used
//! as written; otherwise the signal path (`/v1/traces`, `/v1/logs`) is appended
//! to the base `endpoint`. Precedence, highest first: the signal's variable,
//! the base variable, the signal's key, the base key. Only `http://` is
//! supported: for TLS, run a collector beside the gateway and let it forward.
//!
//! Depends on: [`crate::sampler`] (the policy names).

use crate::sampler::{Sampler, SamplerPolicy, SamplerPolicyError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Where the table sits in the config file, for issue paths.
const TABLE: &str = "observability.otlp";
/// Headers the exporter writes itself; the config may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "connection",
    "transfer-encoding",
];

/// The `[observability.otlp]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Base URL of the collector's OTLP/HTTP receiver; traces go to
    /// `{endpoint}/v1/traces`, logs to `{endpoint}/v1/logs`. Default
    /// `http://127.0.0.1:4318`. Only `http://`.
    pub endpoint: String,
    /// Full URL for traces, overriding `endpoint`.
    pub traces_endpoint: Option<String>,
    /// Full URL for logs, overriding `endpoint`.
    pub logs_endpoint: Option<String>,
    /// The resource's `service.name`. Default `hypergate`.
    pub service_name: String,
    /// More resource attributes (e.g. `deployment.environment.name`); not
    /// `service.name`, which is `service_name`.
    pub resource_attributes: BTreeMap<String, String>,
    /// The head sampler, as `OTEL_TRACES_SAMPLER` names it. Default
    /// `parentbased_always_on`.
    pub sampler: String,
    /// The ratio of the `*traceidratio` samplers, 0 to 1. Default 1.
    pub sampler_arg: Option<f64>,
    /// Keep the spans of a failed request even when the head decision was not
    /// to sample. Default true.
    pub always_sample_errors: bool,
    /// Keep the spans of a request a canary served even when the head decision
    /// was not to sample. Default true.
    pub always_sample_canary: bool,
    /// Export call records as OTLP log records too. Default false.
    pub export_logs: bool,
    /// Spans (or log records) per export request; a shard hands a batch over
    /// when it is full. Default 512.
    pub batch_size: usize,
    /// Batches that may wait for the exporter; beyond that a shard drops the
    /// batch and counts it. Default 64.
    pub queue_batches: usize,
    /// How often a shard hands over a partial batch (from its periodic tick).
    /// Default 1s.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Connect, write and read timeout of one export request. Default 10s.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Headers sent with every export request (e.g. the collector's auth);
    /// values are never printed or serialised.
    pub headers: BTreeMap<String, SecretValue>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: "http://127.0.0.1:4318".into(),
            traces_endpoint: None,
            logs_endpoint: None,
            service_name: "hypergate".into(),
            resource_attributes: BTreeMap::new(),
            sampler: "parentbased_always_on".into(),
            sampler_arg: None,
            always_sample_errors: true,
            always_sample_canary: true,
            export_logs: false,
            batch_size: 512,
            queue_batches: 64,
            flush_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
        }
    }
}

/// A header value that may carry a credential: shown as `<redacted>` by
/// `Debug`, `Display` and `Serialize`; [`SecretValue::expose`] reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    /// The value, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretValue)
    }
}

/// The standard OpenTelemetry variables this exporter reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtlpEnv {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL.
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the traces URL, as written.
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`: the logs URL, as written.
    pub logs_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: must be `http/protobuf` when set.
    pub protocol: Option<String>,
    /// `OTEL_SERVICE_NAME`: wins over `service.name` in the resource attributes.
    pub service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER`.
    pub sampler: Option<String>,
    /// `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler_arg: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`: `k=v,k2=v2`, values percent-encoded.
    pub resource_attributes: Option<String>,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`, values percent-encoded.
    pub headers: Option<SecretValue>,
}

const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENV_LOGS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT";
const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const ENV_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const ENV_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";

impl OtlpEnv {
    /// Picks the variables out of `vars` (e.g. `std::env::vars()`); others are
    /// ignored, and so is a variable set to an empty value.
    pub fn from_vars<I, K, V>(vars: I) -> OtlpEnv
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut env = OtlpEnv::default();
        for (name, value) in vars {
            let value: String = value.into();
            if value.trim().is_empty() {
                continue;
            }
            let slot = match name.as_ref() {
                ENV_ENDPOINT => &mut env.endpoint,
                ENV_TRACES_ENDPOINT => &mut env.traces_endpoint,
                ENV_LOGS_ENDPOINT => &mut env.logs_endpoint,
                ENV_PROTOCOL => &mut env.protocol,
                ENV_SERVICE_NAME => &mut env.service_name,
                ENV_SAMPLER => &mut env.sampler,
                ENV_SAMPLER_ARG => &mut env.sampler_arg,
                ENV_RESOURCE_ATTRIBUTES => &mut env.resource_attributes,
                ENV_HEADERS => {
                    env.headers = Some(SecretValue(value));
                    continue;
                }
                _ => continue,
            };
            *slot = Some(value.trim().to_string());
        }
        env
    }

    /// Whether a variable names a collector endpoint: the binary may take that
    /// as a request to export even without an `[observability.otlp]` table.
    pub fn names_an_endpoint(&self) -> bool {
        self.endpoint.is_some() || self.traces_endpoint.is_some() || self.logs_endpoint.is_some()
    }
}

/// One problem, with the path of the key or the name of the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfigIssue {
    /// `observability.otlp.<key>` or an `OTEL_*` variable name.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for OtlpConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    url: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl HttpEndpoint {
    /// Parses `url`; only `http://`, no user info, no fragment.
    pub fn parse(url: &str) -> Result<HttpEndpoint, String> {
        let scheme_end = url.find("://");
        let scheme = scheme_end.map(|i| url[..i].to_ascii_lowercase());
        let rest = match (scheme.as_deref(), scheme_end) {
            (Some("http"), Some(i)) => &url[i + 3..],
            (Some("https"), _) => {
                return Err(format!(
                    "{url:?}: https:// is not supported, only http:// (for TLS, run a collector \
                     sidecar on this host and let it forward)"
                ))
            }
            _ => return Err(format!("{url:?}: expected an http:// URL")),
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains('#') {
            return Err(format!(
                "{url:?}: a URL may not hold whitespace, control characters or a fragment"
            ));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: credentials in the URL are not supported (use headers)"
            ));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            format!("{url:?}: expected a host and an optional port, e.g. http://collector:4318")
        })?;
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(HttpEndpoint {
            url: url.to_string(),
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            path,
        })
    }

    /// The URL as written.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The host to resolve (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (80 when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header: the URL's authority as written.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target: path and query.
    pub fn path(&self) -> &str {
        &self.path
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']')?;
        let after = &v6[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        let host = &v6[..end];
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        (host, port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
    };
    Some((host, port))
}

/// The validated exporter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// Where traces go.
    pub traces_endpoint: HttpEndpoint,
    /// Where logs go.
    pub logs_endpoint: HttpEndpoint,
    /// The resource's `service.name`.
    pub service_name: String,
    /// More resource attributes (file and `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: BTreeMap<String, String>,
    /// The sampler.
    pub sampler: Sampler,
    /// Whether call records are exported as logs.
    pub export_logs: bool,
    /// Spans or records per export request.
    pub batch_size: usize,
    /// Batches that may wait for the exporter.
    pub queue_batches: usize,
    /// How long a partial batch may wait in a shard.
    pub flush_interval: Duration,
    /// Connect, write and read timeout of one export request.
    pub export_timeout: Duration,
    /// Extra request headers (file and `OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, SecretValue)>,
}

impl OtlpConfig {
    /// Merges `env` over the table and checks everything, returning every
    /// problem found.
    pub fn validate(&self, env: &OtlpEnv) -> Result<OtlpSettings, Vec<OtlpConfigIssue>> {
        let mut issues = Vec::new();
        let mut issue = |path: &str, reason: String| {
            issues.push(OtlpConfigIssue {
                path: path.to_string(),
                reason,
            })
        };
        let key = |name: &str| format!("{TABLE}.{name}");

        // Endpoints.
        let base = match &env.endpoint {
            Some(url) => (ENV_ENDPOINT.to_string(), url.clone()),
            None => (key("endpoint"), self.endpoint.clone()),
        };
        let signal_url = |env_value: &Option<String>,
                          env_name: &str,
                          file_value: &Option<String>,
                          file_key: &str,
                          signal: &str| {
            match (env_value, &env.endpoint, file_value) {
                (Some(url), _, _) => (env_name.to_string(), url.clone()),
                (None, None, Some(url)) => (key(file_key), url.clone()),
                _ => (
                    base.0.clone(),
                    format!("{}/v1/{signal}", base.1.trim_end_matches('/')),
                ),
            }
        };
        let (traces_path, traces_url) = signal_url(
            &env.traces_endpoint,
            ENV_TRACES_ENDPOINT,
            &self.traces_endpoint,
            "traces_endpoint",
            "traces",
        );
        let (logs_path, logs_url) = signal_url(
            &env.logs_endpoint,
            ENV_LOGS_ENDPOINT,
            &self.logs_endpoint,
            "logs_endpoint",
            "logs",
        );
        let traces_endpoint = HttpEndpoint::parse(&traces_url)
            .map_err(|e| issue(&traces_path, e))
            .ok();
        // The same base URL fails once, not once per signal.
        let logs_endpoint = match HttpEndpoint::parse(&logs_url) {
            Ok(e) => Some(e),
            Err(e) => {
                if logs_path != traces_path || traces_endpoint.is_some() {
                    issue(&logs_path, e);
                }
                None
            }
        };
        if let Some(protocol) = env.protocol.as_deref().filter(|p| *p != "http/protobuf") {
            issue(
                ENV_PROTOCOL,
                format!("{protocol:?} is not supported: this exporter speaks http/protobuf only"),
            );
        }

        // Resource.
        let mut resource_attributes = BTreeMap::new();
        let mut env_service_name = None;
        if self.resource_attributes.contains_key("service.name") {
            issue(
                &key("resource_attributes"),
                "set service.name with service_name".into(),
            );
        }
        for (k, v) in &self.resource_attributes {
            resource_attributes.insert(k.clone(), v.clone());
        }
        if let Some(list) = &env.resource_attributes {
            match parse_key_values(list) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        if k == "service.name" {
                            env_service_name = Some(v);
                        } else {
                            resource_attributes.insert(k, v);
                        }
                    }
                }
                Err(e) => issue(ENV_RESOURCE_ATTRIBUTES, e),
            }
        }
        let (service_path, service_name) = match (&env.service_name, env_service_name) {
            (Some(name), _) => (ENV_SERVICE_NAME.to_string(), name.clone()),
            (None, Some(name)) => (ENV_RESOURCE_ATTRIBUTES.to_string(), name),
            (None, None) => (key("service_name"), self.service_name.clone()),
        };
        if service_name.trim().is_empty() {
            issue(&service_path, "the service name may not be empty".into());
        }

        // Sampler.
        let (sampler_path, sampler_name) = match &env.sampler {
            Some(name) => (ENV_SAMPLER.to_string(), name.clone()),
            None => (key("sampler"), self.sampler.clone()),
        };
        let (arg_path, arg) = match &env.sampler_arg {
            Some(text) => match text.parse::<f64>() {
                Ok(v) => (ENV_SAMPLER_ARG.to_string(), Some(v)),
                Err(_) => {
                    issue(ENV_SAMPLER_ARG, format!("{text:?} is not a number"));
                    (ENV_SAMPLER_ARG.to_string(), None)
                }
            },
            None => (key("sampler_arg"), self.sampler_arg),
        };
        let policy = match SamplerPolicy::parse(&sampler_name, arg) {
            Ok(p) => Some(p),
            Err(e @ SamplerPolicyError::Unknown(_)) => {
                issue(&sampler_path, e.to_string());
                None
            }
            Err(e @ SamplerPolicyError::RatioOutOfRange(_)) => {
                issue(&arg_path, e.to_string());
                None
            }
        };

        // Batching and timeouts.
        if self.batch_size == 0 {
            issue(&key("batch_size"), "must be at least 1".into());
        }
        if self.queue_batches == 0 {
            issue(&key("queue_batches"), "must be at least 1".into());
        }
        if self.flush_interval.is_zero() {
            issue(&key("flush_interval"), "must be more than zero".into());
        }
        if self.export_timeout.is_zero() {
            issue(&key("export_timeout"), "must be more than zero".into());
        }

        // Headers: the file's, then the variable's over them.
        let mut headers: BTreeMap<String, SecretValue> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        for (name, value) in &self.headers {
            if let Err(e) = check_header(name, value.expose()) {
                issue(&format!("{}.{name}", key("headers")), e);
            }
        }
        if let Some(list) = &env.headers {
            match parse_key_values(list.expose()) {
                Ok(pairs) => {
                    for (name, value) in pairs {
                        match check_header(&name, &value) {
                            Ok(()) => {
                                headers.insert(name.to_ascii_lowercase(), SecretValue(value));
                            }
                            Err(e) => issue(ENV_HEADERS, e),
                        }
                    }
                }
                Err(e) => issue(ENV_HEADERS, e),
            }
        }

        match (traces_endpoint, logs_endpoint, policy) {
            (Some(traces_endpoint), Some(logs_endpoint), Some(policy)) if issues.is_empty() => {
                Ok(OtlpSettings {
                    traces_endpoint,
                    logs_endpoint,
                    service_name,
                    resource_attributes,
                    sampler: Sampler::new(
                        policy,
                        self.always_sample_errors,
                        self.always_sample_canary,
                    ),
                    export_logs: self.export_logs,
                    batch_size: self.batch_size,
                    queue_batches: self.queue_batches,
                    flush_interval: self.flush_interval,
                    export_timeout: self.export_timeout,
                    headers: headers.into_iter().collect(),
                })
            }
            _ => Err(issues),
        }
    }
}

/// A header name must be an HTTP token the exporter does not write itself;
/// a value may not hold control characters (no header injection). Errors
/// never quote the value.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("{name:?} is set by the exporter"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("the value of {name:?} holds a control character"));
    }
    Ok(())
}

/// Parses the `k=v,k2=v2` lists of `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS`: members trimmed, empty members skipped, keys
/// and values percent-decoded. Errors name the member's position, never its
/// value (it may be a credential).
fn parse_key_values(list: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, member) in list.split(',').enumerate() {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let n = i + 1;
        let (k, v) = member
            .split_once('=')
            .ok_or_else(|| format!("member {n} is not key=value"))?;
        let k = percent_decode(k.trim())
            .ok_or_else(|| format!("member {n}: bad percent-encoding in the key"))?;
        let v = percent_decode(v.trim())
            .ok_or_else(|| format!("member {n}: bad percent-encoding in the value"))?;
        if k.is_empty() {
            return Err(format!("member {n} has an empty key"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Decodes `%XX` escapes; `None` on a malformed escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = HttpEndpoint::parse("http://collector:4318/v1/traces").expect("valid");
        assert_eq!(
            (e.host(), e.port(), e.authority(), e.path()),
            ("collector", 4318, "collector:4318", "/v1/traces")
        );
        let e = HttpEndpoint::parse("HTTP://[::1]:9/x?y=1").expect("valid");
        assert_eq!((e.host(), e.port(), e.path()), ("::1", 9, "/x?y=1"));
        let e = HttpEndpoint::parse("http://10.0.0.1").expect("valid");
        assert_eq!((e.port(), e.path()), (80, "/"));
        for bad in [
            "https://c:4318",
            "c:4318",
            "http://",
            "http://u:p@c:4318",
            "http://c:0",
            "http://c:99999",
            "http://c:4318/#f",
            "http://c d:4318",
            "http://[zz]:1",
        ] {
            assert!(HttpEndpoint::parse(bad).is_err(), "{bad}");
        }
        assert!(HttpEndpoint::parse("https://c")
            .unwrap_err()
            .contains("only http://"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Cc").as_deref(), Some("a b,c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(
            parse_key_values(" a=1 ,, b = x%3Dy "),
            Ok(vec![("a".into(), "1".into()), ("b".into(), "x=y".into())])
        );
        assert!(parse_key_values("a=1,nope")
            .unwrap_err()
            .contains("member 2"));
    }
}
