//! The APIs clients call today, through the gateway with the official SDKs:
//! OpenAI's Responses API (complete, streamed, the `stream()` helper, tools),
//! legacy completions, `n`, Anthropic's `count_tokens`, and the error fields
//! each SDK reads (`code`, `type`, `param`, the exception class).
//!
//! Like `ai_sdk.rs`, each test runs a mock provider speaking the real wire
//! format, an in-process gateway, and one script from `tests/python/` that
//! prints what the SDK observed.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::{preamble, wait_until, TestGateway};
use serde_json::Value;
use std::time::Duration;

const ANSWER: &str = "Mock reply to: What is the capital of France?";

fn mock_with(config: MockConfig) -> MockLlm {
    MockLlm::start("127.0.0.1:0", config).expect("start the mock provider")
}

fn mock() -> MockLlm {
    mock_with(MockConfig::default())
}

fn provider(name: &str, kind: &str, addr: &str) -> String {
    format!(
        "\n[[ai.providers]]\nname = \"{name}\"\nkind = \"{kind}\"\n\
         base_url = \"http://{addr}/v1\"\napi_key = \"provider-key\"\n"
    )
}

fn model(alias: &str, provider: &str, extra: &str) -> String {
    format!(
        "\n[[ai.models]]\nalias = \"{alias}\"\ntargets = [{{ provider = \"{provider}\", model = \"m\" }}]\n{extra}\n"
    )
}

fn gateway(ai: &str, route_ai: &str) -> TestGateway {
    TestGateway::start(&format!(
        "{}{ai}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n{route_ai}\n",
        preamble(1)
    ))
}

fn run(script: &str, gw: &TestGateway, args: &[&str]) -> Value {
    hypergate_tests::python::run_script(script, gw.addr, args)
}

fn bodies(mock: &MockLlm, suffix: &str) -> Vec<Value> {
    mock.requests_log()
        .into_iter()
        .filter(|(path, _, _)| path.ends_with(suffix))
        .map(|(_, _, body)| body)
        .collect()
}

/// The Responses API over an OpenAI-format and an Anthropic-format provider:
/// the SDK reads the same answers, events and usage from both.
#[test]
fn openai_sdk_responses_api_over_both_provider_formats() {
    for kind in ["openai", "anthropic"] {
        let m = mock();
        let gw = gateway(
            &format!(
                "{}{}",
                provider("p", kind, &m.addr().to_string()),
                model("demo", "p", "")
            ),
            "",
        );
        let out = run("openai_responses.py", &gw, &["demo"]);
        let c = &out["complete"];
        assert_eq!(c["object"], "response", "{kind}: {out}");
        assert_eq!(c["status"], "completed", "{kind}: {out}");
        assert_eq!(c["output_text"], ANSWER, "{kind}: {out}");
        assert!(c["id"].as_str().unwrap().starts_with("resp_"), "{out}");
        assert_eq!(c["item_types"], serde_json::json!(["message"]), "{out}");
        assert_eq!(c["instructions"], "Be brief.", "{out}");
        assert_eq!(c["max_output_tokens"], 100, "{out}");
        // The mock counts words plus 3 per message; Anthropic's system prompt
        // is not a message.
        let input = if kind == "openai" {
            2 + 3 + 6 + 3
        } else {
            2 + 6 + 3
        };
        assert_eq!(c["usage"]["input_tokens"], input, "{kind}: {out}");
        assert_eq!(c["usage"]["output_tokens"], 9, "{kind}: {out}");
        assert_eq!(c["usage"]["total_tokens"], input + 9, "{kind}: {out}");

        let s = &out["stream"];
        let events: Vec<&str> = s["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(
            events[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ],
            "{out}"
        );
        assert_eq!(
            events[events.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ],
            "{out}"
        );
        assert!(
            events
                .iter()
                .filter(|e| **e == "response.output_text.delta")
                .count()
                >= 5,
            "{out}"
        );
        assert_eq!(s["text"], ANSWER, "{out}");
        assert_eq!(s["final_text"], ANSWER, "{out}");
        assert_eq!(s["final_usage"]["output_tokens"], 9, "{kind}: {out}");
        assert_eq!(out["helper"]["text"], ANSWER, "{out}");
        assert_eq!(out["helper"]["final_text"], ANSWER, "{out}");

        let t = &out["tool"];
        assert_eq!(t["calls"][0]["name"], "get_weather", "{out}");
        assert_eq!(t["calls"][0]["arguments"], r#"{"city":"Paris"}"#, "{out}");
        assert_eq!(t["follow_up"], "Tool said: 18 degrees and sunny", "{out}");
        assert_eq!(t["streamed_calls"][0]["name"], "get_weather", "{out}");
        assert_eq!(
            t["streamed_calls"][0]["arguments"], r#"{"city":"Paris"}"#,
            "{out}"
        );

        for (case, param) in [
            ("previous_response_id", "previous_response_id"),
            ("retrieve", "response_id"),
            ("builtin_tool", "tools"),
        ] {
            let e = &out[case];
            assert_eq!(e["class"], "BadRequestError", "{case}: {out}");
            assert_eq!(e["status"], 400, "{case}: {out}");
            assert_eq!(e["type"], "invalid_request_error", "{case}: {out}");
            assert_eq!(e["param"], param, "{case}: {out}");
        }
        // What reached the provider: its own format, the instructions as the system prompt.
        let suffix = if kind == "openai" {
            "/chat/completions"
        } else {
            "/messages"
        };
        let sent = bodies(&m, suffix);
        assert_eq!(
            sent.len(),
            6,
            "{kind}: the error cases never reach the provider"
        );
        if kind == "openai" {
            assert_eq!(sent[0]["messages"][0]["content"], "Be brief.");
            assert_eq!(sent[0]["max_completion_tokens"], 100);
        } else {
            assert_eq!(sent[0]["system"], "Be brief.");
            assert_eq!(sent[0]["max_tokens"], 100);
        }
        let stats = wait_stats(&gw, 6);
        // Three answers, two tool calls (name and arguments: two words), one follow-up.
        assert_eq!(stats["completion"], 9 * 3 + 2 * 2 + 6, "{kind}: {stats}");
    }
}

/// The `/stats` entry of alias `demo` (answered by a target: refused calls
/// have their own, target `none`) once `calls` calls are counted.
fn wait_stats(gw: &TestGateway, calls: u64) -> Value {
    let mut found = Value::Null;
    wait_until("/stats counts the calls", Duration::from_secs(5), || {
        let stats = gw.stats();
        found = stats["llm"]["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["alias"] == "demo" && c["target"] != "none")
            .cloned()
            .unwrap_or(Value::Null);
        found["ok"].as_u64().unwrap_or(0) >= calls
    });
    found
}

/// Legacy completions, `n`, and every gateway error with the fields the
/// openai SDK exposes.
#[test]
fn openai_sdk_completions_n_and_error_fields() {
    let m = mock();
    let limited = mock_with(MockConfig {
        error_status: Some(429),
        ..MockConfig::default()
    });
    let closed = hypergate_tests::util::closed_port().to_string();
    let gw = gateway(
        &format!(
            "{}{}{}{}{}{}{}\n[[ai.budgets]]\nname = \"team\"\nscope = \"route\"\ntokens_per_minute = 5000\n[ai.retry]\nmax_attempts = 1\n",
            provider("p", "openai", &m.addr().to_string()),
            provider("down", "openai", &closed),
            provider("limited", "openai", &limited.addr().to_string()),
            model("demo", "p", ""),
            model("small", "p", "max_input_tokens = 50"),
            model("down", "down", ""),
            model("limited", "limited", ""),
        ),
        "budgets = [\"team\"]",
    );
    let out = run("openai_legacy.py", &gw, &["demo"]);
    let c = &out["complete"];
    assert_eq!(c["object"], "text_completion", "{out}");
    assert!(c["id"].as_str().unwrap().starts_with("cmpl-"), "{out}");
    assert_eq!(c["text"], "Mock reply to: Say hello", "{out}");
    assert_eq!(c["finish_reason"], "stop", "{out}");
    assert_eq!(c["usage"]["completion_tokens"], 5, "{out}");
    assert_eq!(
        out["stream"]["objects"],
        serde_json::json!(["text_completion"]),
        "{out}"
    );
    assert_eq!(out["stream"]["text"], "Mock reply to: Say hello", "{out}");
    assert_eq!(out["stream"]["usage"]["completion_tokens"], 5, "{out}");
    // The legacy API's default cap of 16 tokens applies.
    assert_eq!(out["default_cap"]["finish_reason"], "length", "{out}");
    assert_eq!(out["default_cap"]["completion_tokens"], 16, "{out}");
    assert_eq!(out["n2"]["choices"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(out["n2"]["completion_tokens"], 10, "{out}");
    let sent = bodies(&m, "/chat/completions");
    assert_eq!(sent[0]["max_tokens"], 50);
    assert_eq!(sent[0]["messages"][0]["content"], "Say hello");
    assert_eq!(sent[2]["max_tokens"], 16);

    let e = &out["errors"];
    for (case, class, status, kind, code, param) in [
        (
            "n2_stream",
            "BadRequestError",
            400,
            "invalid_request_error",
            Value::Null,
            "n",
        ),
        (
            "unknown_model",
            "NotFoundError",
            404,
            "invalid_request_error",
            "model_not_found".into(),
            "model",
        ),
        (
            "empty_messages",
            "BadRequestError",
            400,
            "invalid_request_error",
            Value::Null,
            "messages",
        ),
        (
            "too_long",
            "BadRequestError",
            400,
            "invalid_request_error",
            "context_length_exceeded".into(),
            "messages",
        ),
        (
            "over_window",
            "BadRequestError",
            400,
            "invalid_request_error",
            Value::Null,
            "max_tokens",
        ),
        (
            "suffix",
            "BadRequestError",
            400,
            "invalid_request_error",
            Value::Null,
            "suffix",
        ),
        (
            "provider_down",
            "InternalServerError",
            502,
            "server_error",
            "provider_unreachable".into(),
            "",
        ),
        (
            "rate_limited",
            "RateLimitError",
            429,
            "requests",
            "rate_limit_exceeded".into(),
            "",
        ),
    ] {
        let got = &e[case];
        assert_eq!(got["class"], class, "{case}: {got}");
        assert_eq!(got["status"], status, "{case}: {got}");
        assert_eq!(got["type"], kind, "{case}: {got}");
        assert_eq!(got["code"], code, "{case}: {got}");
        let param = if param.is_empty() {
            Value::Null
        } else {
            param.into()
        };
        assert_eq!(got["param"], param, "{case}: {got}");
    }
}

/// Anthropic's `messages.count_tokens`: the provider's count for an alias
/// served by Anthropic providers only, the tokenizer's (marked) otherwise.
#[test]
fn anthropic_sdk_count_tokens_exact_or_marked_estimated() {
    let anthropic = mock();
    let openai = mock();
    let gw = gateway(
        &format!(
            "{}{}{}{}",
            provider("a", "anthropic", &anthropic.addr().to_string()),
            provider("o", "openai", &openai.addr().to_string()),
            model("claude", "a", ""),
            model("demo", "o", ""),
        ),
        "",
    );
    let out = run(
        "anthropic_count_tokens.py",
        &gw,
        &["claude", "demo", "no-such-model"],
    );
    // The mock's count: "Be brief." (2) + the question (6) + 3 for the message.
    assert_eq!(out["claude"]["input_tokens"], 11, "{out}");
    assert_eq!(out["claude"]["estimated"], false, "{out}");
    let sent = bodies(&anthropic, "/messages/count_tokens");
    assert_eq!(sent.len(), 1, "{out}");
    assert_eq!(sent[0]["model"], "m", "the target's model");
    assert!(sent[0].get("max_tokens").is_none(), "{}", sent[0]);
    let estimate = out["demo"]["input_tokens"].as_u64().unwrap();
    assert!((10..30).contains(&estimate), "{out}");
    assert_eq!(out["demo"]["estimated"], true, "{out}");
    assert_eq!(openai.requests(), 0, "an estimate asks no provider");
    assert_eq!(out["no-such-model"]["class"], "NotFoundError", "{out}");
    assert_eq!(out["no-such-model"]["type"], "not_found_error", "{out}");
}

/// A provider that serves the Responses API itself (`responses_api = true`)
/// gets the calls as they are: state (`previous_response_id`), retrieval and
/// deletion work through the gateway, and the usage is the provider's.
#[test]
fn openai_sdk_responses_passed_through_with_state() {
    let m = mock();
    let gw = gateway(
        &format!(
            "{}responses_api = true\n{}",
            provider("p", "openai", &m.addr().to_string()),
            model("demo", "p", "")
        ),
        "",
    );
    let out = run("openai_responses_native.py", &gw, &["demo"]);
    assert_eq!(out["first"]["text"], ANSWER, "{out}");
    // The mock counts words plus 3 per message; the stored conversation
    // (question, answer) comes before the new question.
    assert_eq!(out["first"]["input_tokens"], 6 + 3, "{out}");
    assert_eq!(
        out["second"]["text"], "Mock reply to: And of Italy?",
        "{out}"
    );
    assert_eq!(out["second"]["input_tokens"], 9 + 9 + 3 + 3 + 3, "{out}");
    assert_eq!(
        out["second"]["previous_response_id"], out["first"]["id"],
        "{out}"
    );
    assert_eq!(
        out["streamed"]["text"], "Mock reply to: And of Spain?",
        "{out}"
    );
    assert_eq!(
        out["streamed"]["final_text"], "Mock reply to: And of Spain?",
        "{out}"
    );
    assert!(
        out["streamed"]["input_tokens"].as_u64().unwrap() > 27,
        "{out}"
    );
    assert_eq!(out["retrieved"]["id"], out["first"]["id"], "{out}");
    assert_eq!(out["retrieved"]["text"], ANSWER, "{out}");
    assert_eq!(out["after_delete"]["class"], "NotFoundError", "{out}");
    assert_eq!(out["unknown_previous"]["class"], "BadRequestError", "{out}");
    assert!(
        out["unknown_previous"]["message"]
            .as_str()
            .unwrap()
            .contains("resp_nope"),
        "{out}"
    );
    // Every call reached the provider's own /responses, never chat.
    let log = m.requests_log();
    assert!(
        log.iter().all(|(p, _, _)| p.contains("/responses")),
        "{log:?}"
    );
    let posts = bodies(&m, "/v1/responses");
    assert_eq!(posts[1]["previous_response_id"], out["first"]["id"]);
    assert_eq!(posts[1]["model"], "m", "the target's model");
    let stats = wait_stats(&gw, 3);
    assert_eq!(stats["estimated"], 0, "{stats}");
    assert_eq!(stats["completion"], 9 + 6 + 6, "{stats}");
}

/// The quickstart itself (`examples/quickstart.toml`, its own mock provider
/// and demo upstreams, on free ports), run as a process: HTTP/2 with prior
/// knowledge on its listener, gRPC health checks through its gRPC route,
/// and every AI endpoint with both SDKs, streamed
/// and not, and the errors each SDK raises.
#[test]
fn both_sdks_against_the_quickstart_every_endpoint() {
    let root = hypergate_tests::process::workspace_root();
    let mut toml = std::fs::read_to_string(root.join("examples/quickstart.toml")).unwrap();
    for fixed in ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"] {
        let free = hypergate_tests::util::closed_port().to_string();
        toml = toml.replace(fixed, &free);
    }
    toml = toml
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.2:0");
    let gw = hypergate_tests::process::GatewayProcess::spawn(&toml);
    // Its listener also speaks HTTP/2 with prior knowledge.
    let curl = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--max-time", "10", "--http2-prior-knowledge"])
        .arg(format!("http://{}/", gw.addr))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200 2");
    // Its gRPC route answers the standard health check, to the grpcio client.
    let grpc = hypergate_tests::python::run_script("grpc_quickstart.py", gw.addr, &[]);
    assert_eq!(grpc["server"], "SERVING", "{grpc}");
    assert_eq!(grpc["echo_service"], "SERVING", "{grpc}");
    assert_eq!(grpc["echo"], "hello over grpc", "{grpc}");
    let out = hypergate_tests::python::run_script("quickstart_apis.py", gw.addr, &[]);
    let answer = "Mock reply to: What is the capital of France?";
    for key in [
        "chat",
        "chat_stream",
        "responses",
        "responses_stream",
        "messages",
        "messages_stream",
    ] {
        assert_eq!(out[key], answer, "{key}: {out}");
    }
    // The legacy API's default cap (16 tokens) holds the whole answer.
    assert_eq!(out["completions"], answer, "{out}");
    assert_eq!(out["completions_stream"], answer, "{out}");
    assert_eq!(out["models"], serde_json::json!(["demo"]), "{out}");
    assert_eq!(out["model"], "demo", "{out}");
    assert!(out["embedding_len"].as_u64().unwrap() > 0, "{out}");
    assert!(
        out["count_tokens"]["input_tokens"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert_eq!(
        out["count_tokens"]["estimated"], true,
        "an OpenAI-format provider: {out}"
    );
    let e = &out["errors"];
    assert_eq!(e["openai_unknown"]["class"], "NotFoundError", "{out}");
    assert_eq!(e["openai_unknown"]["code"], "model_not_found", "{out}");
    assert_eq!(e["openai_empty"]["class"], "BadRequestError", "{out}");
    assert_eq!(e["openai_empty"]["type"], "invalid_request_error", "{out}");
    assert_eq!(e["anthropic_unknown"]["class"], "NotFoundError", "{out}");
    assert_eq!(e["anthropic_unknown"]["type"], "not_found_error", "{out}");
    assert_eq!(e["anthropic_empty"]["class"], "BadRequestError", "{out}");
    assert_eq!(
        e["anthropic_empty"]["type"], "invalid_request_error",
        "{out}"
    );
}
