//! The official OpenAI and Anthropic Python SDKs as real clients of the AI gateway.
//!
//! Each test starts its own mock providers (`hypergate-mock-llm`, speaking the
//! real OpenAI or Anthropic wire format on an ephemeral port) and its own
//! in-process gateway whose AI route calls them, then runs one client script
//! from `tests/python/` with the official SDK. The script prints one JSON line
//! with what the SDK observed; the test asserts on it, on what reached the
//! provider (the mock's request log) and, where it matters, on the gateway's
//! `/stats` and `/metrics`.
//!
//! The interpreter is `$HYPERGATE_PYTHON` (set by `.ci/run`), else the venv
//! `.ci/run` creates at `~/.cache/hypergate/pyenv`; without either the tests
//! fail and say to run `bash .ci/run`. Every script runs under a deadline and
//! its SDK clients never retry and time out after 20 s.
//!
//! The mock answers deterministically: `"Mock reply to: <last user text>"`, a
//! call to the first tool (with `"Paris"` for every required string argument)
//! when tools are offered and the conversation ends with the user's text, and
//! `"Tool said: <result>"` after a tool result. It counts a token per word.

use hypergate_mock_llm::{LoggedRequest, MockConfig, MockLlm};
use hypergate_tests::gateway::metric_value;
use hypergate_tests::{preamble, wait_until, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;

/// The question every chat script asks, and the mock's answer to it.
const QUESTION: &str = "What is the capital of France?";
const ANSWER: &str = "Mock reply to: What is the capital of France?";
/// Words (the mock's tokens) in [`ANSWER`].
const ANSWER_TOKENS: u64 = 9;
/// The tool result the tool scripts send back, and the mock's final answer.
const TOOL_RESULT: &str = "18 degrees and sunny";
const TOOL_ANSWER: &str = "Tool said: 18 degrees and sunny";

// ---------------------------------------------------------------------------
// Harness: running a script (`hypergate_tests::python`), the gateway config.

fn run_script(script: &str, gateway: &TestGateway, args: &[&str]) -> Value {
    hypergate_tests::python::run_script(script, gateway.addr, args)
}

/// A mock provider with the default configuration (prompt, correct, with usage).
fn mock() -> MockLlm {
    mock_with(MockConfig::default())
}

fn mock_with(config: MockConfig) -> MockLlm {
    MockLlm::start("127.0.0.1:0", config).expect("start the mock provider")
}

/// A mock that answers every request with `status` and the provider's error JSON.
fn failing_mock(status: u16) -> MockLlm {
    mock_with(MockConfig {
        error_status: Some(status),
        ..MockConfig::default()
    })
}

/// An `[[ai.providers]]` section for `mock` speaking `kind` (`openai` or `anthropic`).
fn provider(name: &str, kind: &str, mock: &MockLlm) -> String {
    format!(
        "\n[[ai.providers]]\nname = \"{name}\"\nkind = \"{kind}\"\n\
         base_url = \"http://{}/v1\"\napi_key = \"provider-key\"\n",
        mock.addr()
    )
}

/// An `[[ai.models]]` section: `alias` balanced over `(provider, model)` targets.
fn model(alias: &str, targets: &[(&str, &str)]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(p, m)| format!("{{ provider = \"{p}\", model = \"{m}\" }}"))
        .collect();
    format!(
        "\n[[ai.models]]\nalias = \"{alias}\"\ntargets = [{}]\n",
        targets.join(", ")
    )
}

/// A one-shard gateway with `ai` (providers, models, prices) and the AI route
/// `llm` on `/v1`, where both SDKs send their calls.
fn ai_gateway(ai: &str) -> TestGateway {
    TestGateway::start(&format!(
        "{}{ai}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n",
        preamble(1)
    ))
}

/// The gateway's `/stats` entry for calls of `alias` answered by `target`, once
/// `calls` of them are counted (the counters are updated after the response
/// is written, so this polls).
fn llm_stats(gw: &TestGateway, alias: &str, target: &str, calls: u64) -> Value {
    let mut found = Value::Null;
    wait_until(
        &format!("/stats counts {calls} calls of {alias} via {target}"),
        Duration::from_secs(5),
        || {
            let stats = gw.stats();
            let entry = stats["llm"]["calls"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["alias"] == alias && c["target"] == target)
                .cloned();
            match entry {
                Some(e)
                    if e["ok"].as_u64().unwrap_or(0) + e["errors"].as_u64().unwrap_or(0)
                        >= calls =>
                {
                    found = e;
                    true
                }
                _ => false,
            }
        },
    );
    found
}

/// The requests the mock got on a path ending in `suffix`, bodies only, oldest first.
fn bodies(mock: &MockLlm, suffix: &str) -> Vec<Value> {
    mock.requests_log()
        .into_iter()
        .filter(|(path, _, _): &LoggedRequest| path.ends_with(suffix))
        .map(|(_, _, body)| body)
        .collect()
}

fn header<'a>(request: &'a LoggedRequest, name: &str) -> Option<&'a str> {
    request
        .1
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A message of an OpenAI-format request body with `role`.
fn openai_messages_with_role<'a>(body: &'a Value, role: &str) -> Vec<&'a Value> {
    body["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .filter(|m| m["role"] == role)
        .collect()
}

// ---------------------------------------------------------------------------
// OpenAI SDK against an OpenAI-format provider.

#[test]
fn openai_sdk_chat_complete_and_streamed_with_usage() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}",
        provider("oai", "openai", &provider_mock),
        model("gpt", &[("oai", "mock-gpt")])
    ));
    let out = run_script(
        "openai_chat.py",
        &gw,
        &["gpt", "complete", "stream_with_usage"],
    );

    let complete = &out["complete"];
    assert_eq!(complete["object"], "chat.completion", "{out}");
    assert_eq!(complete["role"], "assistant", "{out}");
    assert_eq!(complete["content"], ANSWER, "{out}");
    assert_eq!(complete["finish_reason"], "stop", "{out}");
    let usage = &complete["usage"];
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(prompt > 0, "{out}");
    assert_eq!(usage["completion_tokens"], ANSWER_TOKENS, "{out}");
    assert_eq!(usage["total_tokens"], prompt + ANSWER_TOKENS, "{out}");

    let streamed = &out["stream_with_usage"];
    assert_eq!(streamed["text"], ANSWER, "reassembled stream: {out}");
    assert_eq!(streamed["finish_reason"], "stop", "{out}");
    assert_eq!(streamed["chunks_with_usage"], 1, "one usage chunk: {out}");
    assert_eq!(
        streamed["empty_choice_chunks"], 1,
        "the usage chunk has no choices: {out}"
    );
    assert_eq!(streamed["usage"], complete["usage"], "{out}");
    assert!(
        streamed["chunks"].as_u64().unwrap() > 3,
        "streamed in pieces: {out}"
    );

    // The provider got its own key (not the client's), the provider model, and
    // for the stream a request for usage.
    let log = provider_mock.requests_log();
    assert_eq!(log.len(), 2, "{log:?}");
    for request in &log {
        assert!(request.0.ends_with("/v1/chat/completions"), "{request:?}");
        assert_eq!(
            header(request, "authorization"),
            Some("Bearer provider-key")
        );
        assert_eq!(request.2["model"], "mock-gpt");
    }
    assert!(log[0].2.get("stream").is_none(), "{:?}", log[0].2);
    assert_eq!(log[1].2["stream"], true);
    assert_eq!(log[1].2["stream_options"]["include_usage"], true);

    let stats = llm_stats(&gw, "gpt", "oai/mock-gpt", 2);
    assert_eq!(stats["ok"], 2, "{stats}");
    assert_eq!(stats["streamed"], 1, "{stats}");
    assert_eq!(stats["completion"], 2 * ANSWER_TOKENS, "{stats}");
    assert_eq!(stats["estimated"], 0, "provider usage was used: {stats}");
}

#[test]
fn openai_sdk_stream_without_include_usage_gets_no_usage_chunk_but_is_metered() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}\n[[ai.prices]]\nmodel = \"mock-gpt\"\ninput = 1000.0\noutput = 2000.0\n",
        provider("oai", "openai", &provider_mock),
        model("gpt", &[("oai", "mock-gpt")])
    ));
    let out = run_script("openai_chat.py", &gw, &["gpt", "stream_without_usage"]);

    let streamed = &out["stream_without_usage"];
    assert_eq!(streamed["text"], ANSWER, "{out}");
    assert_eq!(streamed["finish_reason"], "stop", "{out}");
    assert_eq!(
        streamed["chunks_with_usage"], 0,
        "no usage reached the client: {out}"
    );
    assert_eq!(streamed["empty_choice_chunks"], 0, "{out}");

    // The gateway asked the provider for usage all the same.
    let sent = provider_mock
        .last_request()
        .expect("the provider got the call");
    assert_eq!(sent["stream"], true, "{sent}");
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");

    // ... and metered the call with the provider's figures: the mock counts
    // "You are terse." (3 words) and the question (6) plus 3 per message.
    llm_stats(&gw, "gpt", "oai/mock-gpt", 1);
    let metrics = gw.metrics();
    let labels = r#"route="llm",alias="gpt",target="oai/mock-gpt",consumer="""#;
    let series =
        |name: &str, extra: &str| metric_value(&metrics, &format!("{name}{{{labels}{extra}}}"));
    let (prompt, completion) = (15.0, ANSWER_TOKENS as f64);
    assert_eq!(
        series("hypergate_llm_streamed_requests_total", ""),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series("hypergate_llm_tokens_total", r#",kind="completion""#),
        completion,
        "{metrics}"
    );
    assert_eq!(
        series("hypergate_llm_tokens_total", r#",kind="prompt""#),
        prompt,
        "{metrics}"
    );
    assert_eq!(
        series("hypergate_llm_estimated_usage_total", ""),
        0.0,
        "the provider's usage was used, not an estimate: {metrics}"
    );
    // $1000 and $2000 per million tokens: a thousandth and two thousandths of a dollar each.
    let cost = series("hypergate_llm_cost_usd_total", "");
    let want = prompt * 0.001 + completion * 0.002;
    assert!(
        cost > 0.0 && (cost - want).abs() < 1e-9,
        "cost {cost}, want {want}: {metrics}"
    );
}

#[test]
fn openai_sdk_tool_calls_complete_and_streamed() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}",
        provider("oai", "openai", &provider_mock),
        model("gpt", &[("oai", "mock-gpt")])
    ));
    let out = run_script("openai_tools.py", &gw, &["gpt"]);
    assert_tool_round_trips(&out);
    assert!(
        out["stream"]["tool_call_deltas"].as_u64().unwrap() >= 2,
        "the arguments arrived in pieces: {out}"
    );

    // Both follow-ups carried the tool call and its result, in OpenAI's format.
    let calls = bodies(&provider_mock, "/chat/completions");
    assert_eq!(calls.len(), 4, "{calls:?}");
    for (follow_up, flow) in [(&calls[1], "complete"), (&calls[3], "stream")] {
        let id = &out[flow]["tool_calls"][0]["id"];
        let assistant = openai_messages_with_role(follow_up, "assistant");
        assert_eq!(assistant[0]["tool_calls"][0]["id"], *id, "{follow_up}");
        assert_eq!(
            assistant[0]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        let tool = openai_messages_with_role(follow_up, "tool");
        assert_eq!(tool.len(), 1, "{follow_up}");
        assert_eq!(tool[0]["tool_call_id"], *id, "{follow_up}");
        assert_eq!(tool[0]["content"], TOOL_RESULT, "{follow_up}");
        assert_eq!(follow_up["tools"][0]["function"]["name"], "get_weather");
    }
}

/// The tool call the mock makes and the answer after the result, for both
/// flows of `openai_tools.py`.
fn assert_tool_round_trips(out: &Value) {
    for flow in ["complete", "stream"] {
        let o = &out[flow];
        let calls = o["tool_calls"].as_array().expect("tool_calls");
        assert_eq!(calls.len(), 1, "{flow}: {out}");
        assert_eq!(calls[0]["name"], "get_weather", "{flow}: {out}");
        assert_eq!(
            calls[0]["arguments"],
            json!({"city": "Paris"}),
            "{flow}: {out}"
        );
        assert!(
            calls[0]["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{flow}: {out}"
        );
        assert_eq!(o["finish_reason"], "tool_calls", "{flow}: {out}");
        assert_eq!(o["final"]["content"], TOOL_ANSWER, "{flow}: {out}");
        assert_eq!(o["final"]["finish_reason"], "stop", "{flow}: {out}");
    }
    assert_eq!(
        out["complete"]["tool_calls"][0]["type"], "function",
        "{out}"
    );
}

#[test]
fn openai_sdk_errors_map_to_sdk_exceptions() {
    let bad = failing_mock(400);
    let down_a = failing_mock(500);
    let down_b = failing_mock(500);
    let limited = failing_mock(429);
    let gw = ai_gateway(&format!(
        "{}{}{}{}{}{}{}\n[ai.retry]\nmax_attempts = 2\nbackoff = \"1ms\"\n",
        provider("bad", "openai", &bad),
        provider("down-a", "openai", &down_a),
        provider("down-b", "anthropic", &down_b),
        provider("limited", "openai", &limited),
        model("bad-request", &[("bad", "m")]),
        model("all-fail", &[("down-a", "m"), ("down-b", "m")]),
        model("rate-limited", &[("limited", "m")]),
    ));
    let out = run_script("openai_errors.py", &gw, &[]);

    let unknown = &out["no-such-model"];
    assert_eq!(unknown["class"], "NotFoundError", "{out}");
    assert_eq!(unknown["status"], 404, "{out}");
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("no-such-model"),
        "{out}"
    );

    let bad_request = &out["bad-request"];
    assert_eq!(bad_request["class"], "BadRequestError", "{out}");
    assert_eq!(bad_request["status"], 400, "{out}");
    assert_eq!(bad.requests(), 1, "a 400 is not retried");

    let all_fail = &out["all-fail"];
    assert_eq!(all_fail["is_api_status_error"], true, "{out}");
    assert_eq!(all_fail["status"], 502, "{out}");
    assert_eq!(
        (down_a.requests(), down_b.requests()),
        (1, 1),
        "each target tried once"
    );

    let rate_limited = &out["rate-limited"];
    assert_eq!(rate_limited["class"], "RateLimitError", "{out}");
    assert_eq!(rate_limited["status"], 429, "{out}");
    assert_eq!(
        limited.requests(),
        2,
        "the one target was retried up to max_attempts"
    );
}

#[test]
fn openai_sdk_embeddings_and_model_list() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}{}",
        provider("oai", "openai", &provider_mock),
        model("embed", &[("oai", "mock-embed")]),
        model("gpt", &[("oai", "mock-gpt")])
    ));
    let out = run_script("openai_embeddings.py", &gw, &["embed"]);

    let b64 = &out["base64"];
    assert_eq!(b64["indexes"], json!([0, 1]), "{out}");
    assert_eq!(b64["prompt_tokens"], 4, "two two-word inputs: {out}");
    let vectors: Vec<Vec<f64>> = serde_json::from_value(b64["vectors"].clone()).expect("vectors");
    for v in &vectors {
        assert_eq!(v.len(), 8, "{out}");
        let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit vector, norm {norm}: {out}");
    }
    assert_ne!(vectors[0], vectors[1], "different inputs: {out}");
    // The base64 answer the SDK decoded is the float answer for the same input.
    let floats: Vec<f64> = serde_json::from_value(out["float"]["vector"].clone()).expect("floats");
    for (a, b) in vectors[0].iter().zip(&floats) {
        assert!(
            (a - b).abs() < 1e-6,
            "base64 {:?} vs float {floats:?}",
            vectors[0]
        );
    }
    assert_eq!(out["models"], json!(["embed", "gpt"]), "{out}");
    assert_eq!(
        out["retrieved"],
        json!({"id": "embed", "object": "model"}),
        "models.retrieve: {out}"
    );
    assert_eq!(out["missing"]["raised"], "NotFoundError", "{out}");
    assert_eq!(out["missing"]["status"], 404, "{out}");
    assert_eq!(out["model_objects"], json!(["model"]), "{out}");

    // Two embedding calls reached the provider, in the encodings asked for;
    // the model list is the gateway's own.
    let calls = bodies(&provider_mock, "/embeddings");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["encoding_format"], "base64");
    assert_eq!(calls[0]["model"], "mock-embed");
    assert_eq!(calls[0]["input"], json!(["first text", "second text"]));
    assert_eq!(calls[1]["encoding_format"], "float");
    assert_eq!(
        provider_mock.requests(),
        2,
        "GET /v1/models is not forwarded"
    );
}

// ---------------------------------------------------------------------------
// OpenAI SDK against an Anthropic-format provider.

#[test]
fn openai_sdk_chat_through_anthropic_provider() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}",
        provider("ant", "anthropic", &provider_mock),
        model("claude", &[("ant", "mock-claude")])
    ));
    let out = run_script(
        "openai_chat.py",
        &gw,
        &[
            "claude",
            "complete",
            "stream_with_usage",
            "stream_without_usage",
        ],
    );

    let complete = &out["complete"];
    assert_eq!(complete["content"], ANSWER, "{out}");
    assert_eq!(
        complete["finish_reason"], "stop",
        "end_turn becomes stop: {out}"
    );
    assert!(
        complete["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert_eq!(
        complete["usage"]["completion_tokens"], ANSWER_TOKENS,
        "{out}"
    );
    let with_usage = &out["stream_with_usage"];
    assert_eq!(with_usage["text"], ANSWER, "{out}");
    assert_eq!(with_usage["finish_reason"], "stop", "{out}");
    assert_eq!(with_usage["chunks_with_usage"], 1, "{out}");
    assert_eq!(with_usage["usage"], complete["usage"], "{out}");
    let without = &out["stream_without_usage"];
    assert_eq!(without["text"], ANSWER, "{out}");
    assert_eq!(without["chunks_with_usage"], 0, "{out}");

    // The provider got Anthropic requests: the system prompt top level, a
    // max_tokens (Anthropic requires one), no system message.
    let calls = bodies(&provider_mock, "/messages");
    assert_eq!(calls.len(), 3, "{calls:?}");
    for (call, stream) in calls.iter().zip([false, true, true]) {
        assert_eq!(call["model"], "mock-claude", "{call}");
        assert_eq!(call["system"], "You are terse.", "{call}");
        assert!(call["max_tokens"].as_u64().is_some_and(|n| n > 0), "{call}");
        assert_eq!(call["messages"].as_array().unwrap().len(), 1, "{call}");
        assert_eq!(call["messages"][0]["role"], "user", "{call}");
        assert_eq!(call["stream"], stream, "{call}");
        assert!(call.get("stream_options").is_none(), "{call}");
    }
    let first = &provider_mock.requests_log()[0];
    assert_eq!(header(first, "x-api-key"), Some("provider-key"));
    assert!(header(first, "anthropic-version").is_some(), "{first:?}");
}

#[test]
fn openai_sdk_tool_calls_through_anthropic_provider() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}",
        provider("ant", "anthropic", &provider_mock),
        model("claude", &[("ant", "mock-claude")])
    ));
    let out = run_script("openai_tools.py", &gw, &["claude"]);
    assert_tool_round_trips(&out);

    // The follow-ups reached the provider as Anthropic messages: the tool call
    // as a tool_use block, the result as a tool_result block of a user message.
    let calls = bodies(&provider_mock, "/messages");
    assert_eq!(calls.len(), 4, "{calls:?}");
    for (follow_up, flow) in [(&calls[1], "complete"), (&calls[3], "stream")] {
        let id = &out[flow]["tool_calls"][0]["id"];
        assert_eq!(
            follow_up["system"], "Use tools when they help.",
            "{follow_up}"
        );
        assert!(follow_up["max_tokens"].as_u64().is_some(), "{follow_up}");
        assert_eq!(follow_up["tools"][0]["name"], "get_weather", "{follow_up}");
        assert_eq!(
            follow_up["tools"][0]["input_schema"]["required"],
            json!(["city"])
        );
        let messages = follow_up["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 3, "{follow_up}");
        let tool_use = messages[1]["content"]
            .as_array()
            .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use"))
            .unwrap_or_else(|| panic!("assistant tool_use block: {follow_up}"));
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(tool_use["id"], *id, "{follow_up}");
        assert_eq!(tool_use["input"], json!({"city": "Paris"}), "{follow_up}");
        assert_eq!(messages[2]["role"], "user", "{follow_up}");
        let result = &messages[2]["content"][0];
        assert_eq!(result["type"], "tool_result", "{follow_up}");
        assert_eq!(result["tool_use_id"], *id, "{follow_up}");
        assert_eq!(tool_result_text(result), TOOL_RESULT, "{follow_up}");
    }
}

/// The text of an Anthropic `tool_result` block (a string or text blocks).
fn tool_result_text(block: &Value) -> String {
    match &block["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        other => panic!("tool_result content {other}"),
    }
}

// ---------------------------------------------------------------------------
// Anthropic SDK.

/// What `anthropic_messages.py` saw, whichever provider answered.
fn assert_anthropic_messages(out: &Value) {
    let create = &out["create"];
    assert_eq!(create["type"], "message", "{out}");
    assert_eq!(create["role"], "assistant", "{out}");
    assert_eq!(
        create["content"],
        json!([{"type": "text", "text": ANSWER}]),
        "{out}"
    );
    assert_eq!(create["stop_reason"], "end_turn", "{out}");
    assert!(
        create["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert_eq!(create["usage"]["output_tokens"], ANSWER_TOKENS, "{out}");

    let helper = &out["helper_stream"];
    assert_eq!(helper["text"], ANSWER, "{out}");
    assert_eq!(helper["final"]["content"], create["content"], "{out}");
    assert_eq!(helper["final"]["stop_reason"], "end_turn", "{out}");
    assert_eq!(
        helper["final"]["usage"]["output_tokens"], ANSWER_TOKENS,
        "{out}"
    );

    let raw = &out["raw_stream"];
    assert_eq!(raw["text"], ANSWER, "{out}");
    assert_eq!(raw["stop_reason"], "end_turn", "{out}");
    assert_eq!(raw["output_tokens"], ANSWER_TOKENS, "{out}");
    // The final usage (message_delta) has the prompt's tokens; whether
    // message_start has them too depends on the provider (see the tests).
    assert_eq!(
        raw["delta_input_tokens"], create["usage"]["input_tokens"],
        "{out}"
    );
    let events: Vec<&str> = raw["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(events.first(), Some(&"message_start"), "{out}");
    assert_eq!(events.get(1), Some(&"content_block_start"), "{out}");
    assert!(
        events
            .iter()
            .filter(|e| **e == "content_block_delta")
            .count()
            > 1,
        "{out}"
    );
    assert_eq!(
        &events[events.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{out}"
    );

    for flow in ["tools", "tools_stream"] {
        let first = &out[flow]["first"];
        assert_eq!(first["stop_reason"], "tool_use", "{flow}: {out}");
        let tool_use: Vec<&Value> = first["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .collect();
        assert_eq!(tool_use.len(), 1, "{flow}: {out}");
        assert_eq!(tool_use[0]["name"], "get_weather", "{flow}: {out}");
        assert_eq!(
            tool_use[0]["input"],
            json!({"city": "Paris"}),
            "{flow}: {out}"
        );
        assert!(
            first["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{flow}: {out}"
        );
        assert_eq!(out[flow]["final"]["text"], TOOL_ANSWER, "{flow}: {out}");
        assert_eq!(
            out[flow]["final"]["stop_reason"], "end_turn",
            "{flow}: {out}"
        );
    }
}

#[test]
fn anthropic_sdk_through_openai_provider() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}",
        provider("oai", "openai", &provider_mock),
        model("gpt", &[("oai", "mock-gpt")])
    ));
    let out = run_script("anthropic_messages.py", &gw, &["gpt"]);
    assert_anthropic_messages(&out);

    // The provider got OpenAI requests: the system prompt as a system message,
    // tools as functions, the tool result as a tool message.
    let calls = bodies(&provider_mock, "/chat/completions");
    assert_eq!(calls.len(), 7, "{calls:?}");
    let first = &calls[0];
    assert!(first.get("system").is_none(), "{first}");
    assert_eq!(
        first["messages"],
        json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": QUESTION}]),
        "{first}"
    );
    assert_eq!(first["max_tokens"], 256, "{first}");
    assert_eq!(first["model"], "mock-gpt", "{first}");
    assert_eq!(calls[1]["stream"], true, "helper stream: {}", calls[1]);
    for (follow_up, flow) in [(&calls[4], "tools"), (&calls[6], "tools_stream")] {
        let id = out[flow]["first"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "tool_use")
            .map(|b| b["id"].clone())
            .unwrap();
        assert_eq!(follow_up["tools"][0]["type"], "function", "{follow_up}");
        assert_eq!(follow_up["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(
            follow_up["tools"][0]["function"]["parameters"]["required"],
            json!(["city"])
        );
        let assistant = openai_messages_with_role(follow_up, "assistant");
        assert_eq!(assistant[0]["tool_calls"][0]["id"], id, "{follow_up}");
        let arguments: Value = serde_json::from_str(
            assistant[0]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .expect("arguments string"),
        )
        .expect("arguments JSON");
        assert_eq!(arguments, json!({"city": "Paris"}));
        let tool = openai_messages_with_role(follow_up, "tool");
        assert_eq!(tool.len(), 1, "{follow_up}");
        assert_eq!(tool[0]["tool_call_id"], id, "{follow_up}");
        assert_eq!(tool[0]["content"], TOOL_RESULT, "{follow_up}");
    }
}

#[test]
fn anthropic_sdk_through_anthropic_provider() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}",
        provider("ant", "anthropic", &provider_mock),
        model("claude", &[("ant", "mock-claude")])
    ));
    let out = run_script("anthropic_messages.py", &gw, &["claude"]);
    assert_anthropic_messages(&out);

    let calls = bodies(&provider_mock, "/messages");
    assert_eq!(calls.len(), 7, "{calls:?}");
    let first = &calls[0];
    assert_eq!(first["system"], "You are terse.", "{first}");
    assert_eq!(first["max_tokens"], 256, "{first}");
    assert_eq!(first["model"], "mock-claude", "{first}");
    assert_eq!(
        first["messages"],
        json!([{"role": "user", "content": QUESTION}]),
        "{first}"
    );
    for follow_up in [&calls[4], &calls[6]] {
        assert_eq!(
            follow_up["tools"][0]["input_schema"]["required"],
            json!(["city"])
        );
        let last = follow_up["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["role"], "user", "{follow_up}");
        assert_eq!(last["content"][0]["type"], "tool_result", "{follow_up}");
        assert_eq!(
            tool_result_text(&last["content"][0]),
            TOOL_RESULT,
            "{follow_up}"
        );
    }

    // An Anthropic provider reports the prompt's tokens in message_start (as
    // the real API does, and clients reading the raw stream take them from
    // there); the gateway must pass them on, not zero them.
    assert_eq!(
        out["raw_stream"]["start_input_tokens"], out["create"]["usage"]["input_tokens"],
        "message_start usage.input_tokens: {out}"
    );
}

#[test]
fn anthropic_sdk_unknown_model_is_not_found() {
    let provider_mock = mock();
    let gw = ai_gateway(&format!(
        "{}{}",
        provider("ant", "anthropic", &provider_mock),
        model("claude", &[("ant", "mock-claude")])
    ));
    let out = run_script("anthropic_errors.py", &gw, &[]);
    for call in ["create", "stream"] {
        let e = &out[call];
        assert_eq!(e["class"], "NotFoundError", "{call}: {out}");
        assert_eq!(e["status"], 404, "{call}: {out}");
        assert_eq!(e["body"]["type"], "error", "Anthropic's error shape: {out}");
        assert!(
            e["body"]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no-such-model")),
            "{call}: {out}"
        );
    }
    assert_eq!(provider_mock.requests(), 0, "nothing reached the provider");
}
