//! The `[observability.otlp]` table, the `OTEL_*` variables over it, and
//! validation that reports every problem with its path.

use hypergate_otel::config::SecretValue;
use hypergate_otel::{OtlpConfig, OtlpEnv, Sampler, SamplerPolicy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Deserialize)]
struct File {
    observability: Observability,
}

#[derive(Deserialize)]
struct Observability {
    otlp: OtlpConfig,
}

fn parse(text: &str) -> Result<OtlpConfig, toml::de::Error> {
    toml::from_str::<File>(text).map(|f| f.observability.otlp)
}

fn env(vars: &[(&str, &str)]) -> OtlpEnv {
    OtlpEnv::from_vars(vars.iter().map(|(k, v)| (*k, *v)))
}

fn paths(config: &OtlpConfig, env: &OtlpEnv) -> Vec<String> {
    config
        .validate(env)
        .expect_err("invalid")
        .into_iter()
        .map(|i| i.path)
        .collect()
}

#[test]
fn an_empty_table_takes_the_defaults() {
    let config = parse("[observability.otlp]\n").expect("parses");
    assert_eq!(config, OtlpConfig::default());
    let s = config.validate(&OtlpEnv::default()).expect("valid");
    assert_eq!(s.traces_endpoint.url(), "http://127.0.0.1:4318/v1/traces");
    assert_eq!(s.logs_endpoint.url(), "http://127.0.0.1:4318/v1/logs");
    assert_eq!(s.service_name, "hypergate");
    assert_eq!(s.batch_size, 512);
    assert_eq!(s.queue_batches, 64);
    assert_eq!(s.export_timeout, Duration::from_secs(10));
    assert!(!s.export_logs);
    assert_eq!(
        s.sampler,
        Sampler::new(SamplerPolicy::ParentBasedAlwaysOn, true, true)
    );
}

#[test]
fn every_key_parses() {
    let config = parse(
        r#"
        [observability.otlp]
        endpoint = "http://collector:4318/"
        traces_endpoint = "http://tempo:4318/otlp/v1/traces"
        service_name = "gw"
        resource_attributes = { "deployment.environment.name" = "prod" }
        sampler = "parentbased_traceidratio"
        sampler_arg = 0.1
        always_sample_errors = false
        always_sample_canary = false
        export_logs = true
        batch_size = 100
        queue_batches = 8
        flush_interval = "250ms"
        export_timeout = "3s"
        headers = { Authorization = "Bearer secret-token" }
        "#,
    )
    .expect("parses");
    let s = config.validate(&OtlpEnv::default()).expect("valid");
    assert_eq!(s.traces_endpoint.url(), "http://tempo:4318/otlp/v1/traces");
    assert_eq!(s.traces_endpoint.path(), "/otlp/v1/traces");
    assert_eq!(s.logs_endpoint.url(), "http://collector:4318/v1/logs");
    assert_eq!(s.service_name, "gw");
    assert_eq!(
        s.sampler,
        Sampler::new(SamplerPolicy::ParentBasedTraceIdRatio(0.1), false, false)
    );
    assert_eq!((s.batch_size, s.queue_batches), (100, 8));
    assert_eq!(s.flush_interval, Duration::from_millis(250));
    assert_eq!(s.export_timeout, Duration::from_secs(3));
    assert_eq!(s.headers.len(), 1);
    assert_eq!(s.headers[0].0, "authorization");
    assert_eq!(s.headers[0].1.expose(), "Bearer secret-token");
    // Header values never show.
    let shown = format!(
        "{config:?} {s:?} {}",
        toml::to_string(&config).expect("serialise")
    );
    assert!(!shown.contains("secret-token"), "{shown}");
}

#[test]
fn unknown_keys_are_rejected() {
    let err = parse("[observability.otlp]\nendpont = \"http://x\"\n").expect_err("unknown key");
    assert!(err.to_string().contains("endpont"), "{err}");
}

#[test]
fn env_vars_apply_over_the_table() {
    let config = OtlpConfig {
        endpoint: "http://file:4318".into(),
        traces_endpoint: Some("http://file-traces:4318/t".into()),
        service_name: "from-file".into(),
        resource_attributes: BTreeMap::from([("team".into(), "file".into())]),
        headers: BTreeMap::from([("x-file".into(), SecretValue::new("1"))]),
        ..OtlpConfig::default()
    };
    let vars = env(&[
        ("PATH", "/usr/bin"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/base/"),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://env-logs:9000/logs",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "from-env"),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=ignored, team=env%20team,region=eu%2Cwest",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization=Bearer%20abc,x-file=2",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
    ]);
    assert!(vars.names_an_endpoint());
    let s = config.validate(&vars).expect("valid");
    // The base variable wins over the file's traces key; an empty variable is unset.
    assert_eq!(s.traces_endpoint.url(), "http://env:4318/base/v1/traces");
    assert_eq!(s.logs_endpoint.url(), "http://env-logs:9000/logs");
    assert_eq!(s.service_name, "from-env");
    assert_eq!(
        s.sampler,
        Sampler::new(SamplerPolicy::TraceIdRatio(0.25), true, true)
    );
    assert_eq!(
        s.resource_attributes,
        BTreeMap::from([
            ("region".to_string(), "eu,west".to_string()),
            ("team".to_string(), "env team".to_string()),
        ])
    );
    let headers: Vec<(&str, &str)> = s
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(headers, [("authorization", "Bearer abc"), ("x-file", "2")]);
    assert!(!format!("{vars:?}").contains("abc"));

    // The traces variable wins over the base variable; service.name in the
    // resource variable names the service when OTEL_SERVICE_NAME is absent.
    let s = OtlpConfig::default()
        .validate(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://only-traces:1/x",
            ),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=svc"),
        ]))
        .expect("valid");
    assert_eq!(s.traces_endpoint.url(), "http://only-traces:1/x");
    assert_eq!(s.logs_endpoint.url(), "http://env:4318/v1/logs");
    assert_eq!(s.service_name, "svc");
    assert!(!OtlpEnv::from_vars([("HOME", "/root")]).names_an_endpoint());
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let config = OtlpConfig {
        endpoint: "https://collector:4318".into(),
        sampler: "parentbased_traceidratio".into(),
        sampler_arg: Some(1.5),
        batch_size: 0,
        queue_batches: 0,
        export_timeout: Duration::ZERO,
        resource_attributes: BTreeMap::from([("service.name".into(), "x".into())]),
        headers: BTreeMap::from([
            ("bad header".into(), SecretValue::new("v")),
            ("content-type".into(), SecretValue::new("v")),
            ("x-ok".into(), SecretValue::new("line\r\nbreak")),
        ]),
        ..OtlpConfig::default()
    };
    let issues = config.validate(&OtlpEnv::default()).expect_err("invalid");
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert_eq!(
        issues.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(),
        [
            "observability.otlp.endpoint",
            "observability.otlp.resource_attributes",
            "observability.otlp.sampler_arg",
            "observability.otlp.batch_size",
            "observability.otlp.queue_batches",
            "observability.otlp.export_timeout",
            "observability.otlp.headers.bad header",
            "observability.otlp.headers.content-type",
            "observability.otlp.headers.x-ok",
        ],
        "{shown:#?}"
    );
    assert!(shown[0].contains("only http://"), "{}", shown[0]);
    assert!(shown[0].contains("sidecar"), "{}", shown[0]);
    assert!(shown[2].contains("outside 0..=1"), "{}", shown[2]);
    assert!(!shown.iter().any(|s| s.contains("line\r\nbreak")));

    let vars = env(&[
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://c:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", " "),
        ("OTEL_RESOURCE_ATTRIBUTES", "a=1,broken"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"),
    ]);
    assert_eq!(
        paths(&OtlpConfig::default(), &vars),
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_TRACES_SAMPLER",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ]
    );
    let vars = env(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c"),
    ]);
    // A bad base URL is reported once, not once per signal.
    assert_eq!(
        paths(&OtlpConfig::default(), &vars),
        ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER_ARG"]
    );
}
