//! Every client API over every provider format, over real sockets: OpenAI
//! chat, Anthropic messages, OpenAI Responses and legacy completions, each
//! complete and streamed, through an OpenAI-format, an Anthropic, a Gemini
//! (native `generateContent`) and a Bedrock (Converse, SigV4-signed,
//! binary event stream) provider, all played by the mock, which checks the
//! signature. Each pair must give the mock's answer with the provider's own
//! usage (never an estimate), and the provider must get its own format.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::{preamble, wait_until, Request, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;

const QUESTION: &str = "What is the capital of France?";
const ANSWER: &str = "Mock reply to: What is the capital of France?";
const ANSWER_TOKENS: u64 = 9;

/// The `[[ai.providers]]` section of `kind` on the mock `m`.
fn provider(kind: &str, m: &MockLlm) -> String {
    let addr = m.addr();
    match kind {
        "gemini" => format!(
            "[[ai.providers]]\nname = \"p\"\nkind = \"gemini\"\nbase_url = \"http://{addr}/v1beta\"\napi_key = \"g-key\"\n"
        ),
        "bedrock" => format!(
            "[[ai.providers]]\nname = \"p\"\nkind = \"bedrock\"\nbase_url = \"http://{addr}\"\n\
             [ai.providers.aws]\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            hypergate_mock_llm::DEFAULT_AWS_REGION,
            hypergate_mock_llm::DEFAULT_AWS_ACCESS_KEY_ID,
            hypergate_mock_llm::DEFAULT_AWS_SECRET_ACCESS_KEY,
        ),
        kind => format!(
            "[[ai.providers]]\nname = \"p\"\nkind = \"{kind}\"\nbase_url = \"http://{addr}/v1\"\napi_key = \"k\"\n"
        ),
    }
}

fn gateway(kind: &str, m: &MockLlm) -> TestGateway {
    TestGateway::start(&format!(
        "{}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n\n{}\n\
         [[ai.models]]\nalias = \"demo\"\ntargets = [{{ provider = \"p\", model = \"model-1:0\" }}]\n",
        preamble(1),
        provider(kind, m)
    ))
}

/// `(event name, data)` of every SSE event (`data: [DONE]` left out).
fn events(body: &[u8]) -> Vec<(Option<String>, Value)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| {
            let name = ev
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_string);
            let data: String = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty() && data != "[DONE]").then(|| {
                (
                    name,
                    serde_json::from_str(&data).expect("event data is JSON"),
                )
            })
        })
        .collect()
}

/// The request body, path and a reader of (text, completion tokens) for `api`.
fn call(api: &str, stream: bool) -> (&'static str, Value) {
    let user = json!([{"role": "user", "content": QUESTION}]);
    match api {
        "chat" => (
            "/v1/chat/completions",
            json!({"model": "demo", "messages": user, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }}),
        ),
        "messages" => (
            "/v1/messages",
            json!({"model": "demo", "max_tokens": 100, "messages": user, "stream": stream}),
        ),
        "responses" => (
            "/v1/responses",
            json!({"model": "demo", "input": QUESTION, "stream": stream}),
        ),
        _ => (
            "/v1/completions",
            json!({"model": "demo", "prompt": QUESTION, "max_tokens": 50, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }}),
        ),
    }
}

/// The answer's text and completion tokens, as a client of `api` reads them.
fn read(api: &str, stream: bool, body: &[u8]) -> (String, Option<u64>) {
    if !stream {
        let v: Value = serde_json::from_slice(body).expect("JSON answer");
        return match api {
            "chat" => (
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                v["usage"]["completion_tokens"].as_u64(),
            ),
            "messages" => (
                v["content"][0]["text"].as_str().unwrap_or_default().into(),
                v["usage"]["output_tokens"].as_u64(),
            ),
            "responses" => (
                v["output"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                v["usage"]["output_tokens"].as_u64(),
            ),
            _ => (
                v["choices"][0]["text"].as_str().unwrap_or_default().into(),
                v["usage"]["completion_tokens"].as_u64(),
            ),
        };
    }
    let mut text = String::new();
    let mut usage = None;
    for (name, d) in events(body) {
        match api {
            "chat" => {
                text.push_str(
                    d["choices"][0]["delta"]["content"]
                        .as_str()
                        .unwrap_or_default(),
                );
                usage = usage.or(d["usage"]["completion_tokens"].as_u64());
            }
            "messages" => {
                text.push_str(d["delta"]["text"].as_str().unwrap_or_default());
                if name.as_deref() == Some("message_delta") {
                    usage = d["usage"]["output_tokens"].as_u64();
                }
            }
            "responses" => {
                if name.as_deref() == Some("response.output_text.delta") {
                    text.push_str(d["delta"].as_str().unwrap_or_default());
                }
                if name.as_deref() == Some("response.completed") {
                    usage = d["response"]["usage"]["output_tokens"].as_u64();
                }
            }
            _ => {
                text.push_str(d["choices"][0]["text"].as_str().unwrap_or_default());
                usage = usage.or(d["usage"]["completion_tokens"].as_u64());
            }
        }
    }
    (text, usage)
}

#[test]
fn every_client_api_over_every_provider_format() {
    for kind in ["openai", "anthropic", "gemini", "bedrock"] {
        let m = MockLlm::start("127.0.0.1:0", MockConfig::default()).expect("mock starts");
        let gw = gateway(kind, &m);
        let mut calls = 0;
        for api in ["chat", "messages", "responses", "completions"] {
            for stream in [false, true] {
                let (path, body) = call(api, stream);
                let r = gw.send(
                    &Request::post(path, body.to_string())
                        .header("content-type", "application/json")
                        .header("anthropic-version", "2023-06-01"),
                );
                let what = format!("{api} (stream: {stream}) over {kind}");
                assert_eq!(r.status, 200, "{what}: {}", r.text());
                let (text, usage) = read(api, stream, &r.body);
                assert_eq!(text, ANSWER, "{what}: {}", r.text());
                assert_eq!(usage, Some(ANSWER_TOKENS), "{what}: {}", r.text());
                calls += 1;
            }
        }
        // The provider got its own format at its own path, every time.
        let paths: Vec<String> = m.requests_log().into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(paths.len(), calls, "{kind}: {paths:?}");
        let expected: &[&str] = match kind {
            "openai" => &["/v1/chat/completions"],
            "anthropic" => &["/v1/messages"],
            "gemini" => &[
                "/v1beta/models/model-1%3A0:generateContent",
                "/v1beta/models/model-1%3A0:streamGenerateContent",
            ],
            _ => &[
                "/model/model-1%3A0/converse",
                "/model/model-1%3A0/converse-stream",
            ],
        };
        for p in &paths {
            assert!(expected.contains(&p.as_str()), "{kind}: {p}");
        }
        let key = "route=\"llm\",alias=\"demo\",target=\"p/model-1:0\",consumer=\"\"";
        wait_until("every call counted", Duration::from_secs(5), || {
            gw.metric(&format!(
                "hypergate_llm_requests_total{{{key},outcome=\"ok\"}}"
            )) == calls as f64
        });
        assert_eq!(
            gw.metric(&format!(
                "hypergate_llm_tokens_total{{{key},kind=\"completion\"}}"
            )),
            (calls as u64 * ANSWER_TOKENS) as f64,
            "{kind}"
        );
        assert_eq!(
            gw.metric(&format!("hypergate_llm_estimated_usage_total{{{key}}}")),
            0.0,
            "{kind}: the provider's usage, never an estimate"
        );
    }
}

#[test]
fn tools_safety_and_refusals_through_gemini_and_bedrock() {
    for kind in ["gemini", "bedrock"] {
        let m = MockLlm::start("127.0.0.1:0", MockConfig::default()).expect("mock starts");
        let gw = gateway(kind, &m);
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
        let post = |body: Value| {
            gw.send(
                &Request::post("/v1/chat/completions", body.to_string())
                    .header("content-type", "application/json"),
            )
        };
        let r = post(
            json!({"model": "demo", "tools": tools, "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
        );
        assert_eq!(r.status, 200, "{kind}: {}", r.text());
        let v = r.json();
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{kind}: {v}");
        assert_eq!(
            call["function"]["arguments"], r#"{"city":"Paris"}"#,
            "{kind}: {v}"
        );
        assert_eq!(
            v["choices"][0]["finish_reason"], "tool_calls",
            "{kind}: {v}"
        );
        let r = post(json!({"model": "demo", "tools": tools, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees and sunny"},
        ]}));
        assert_eq!(r.status, 200, "{kind}: {}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "Tool said: 18 degrees and sunny",
            "{kind}"
        );
        if kind == "gemini" {
            // Gemini's safety stop is a content_filter finish for the client.
            let r = post(
                json!({"model": "demo", "messages": [{"role": "user", "content": "say unsafe-content"}]}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(
                r.json()["choices"][0]["finish_reason"],
                "content_filter",
                "{}",
                r.text()
            );
        }
    }
    // A Bedrock provider signing with the wrong secret is refused by the
    // provider (the mock checks SigV4), and the client is told so.
    let m = MockLlm::start("127.0.0.1:0", MockConfig::default()).expect("mock starts");
    let config = format!(
        "{}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n\n\
         [[ai.providers]]\nname = \"p\"\nkind = \"bedrock\"\nbase_url = \"http://{}\"\n\
         [ai.providers.aws]\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"wrong\"\n\
         [[ai.models]]\nalias = \"demo\"\ntargets = [{{ provider = \"p\", model = \"m\" }}]\n",
        preamble(1),
        m.addr(),
        hypergate_mock_llm::DEFAULT_AWS_ACCESS_KEY_ID,
    );
    let gw = TestGateway::start(&config);
    let r = gw.send(
        &Request::post(
            "/v1/chat/completions",
            json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .header("content-type", "application/json"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("signature"), "{}", r.text());
}

#[test]
fn bedrock_and_gemini_config_errors_are_listed() {
    let dir = hypergate_tests::TempDir::new();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[[ai.providers]]\nname = \"b\"\nkind = \"bedrock\"\nbase_url = \"https://bedrock.example.com\"\n\
             [[ai.providers]]\nname = \"c\"\nkind = \"bedrock\"\nbase_url = \"https://example.com\"\n\
             [ai.providers.aws]\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\n\
             [[ai.providers]]\nname = \"g\"\nkind = \"gemini\"\nbase_url = \"https://generativelanguage.googleapis.com/v1beta\"\n\
             responses_api = true\n\
             [ai.providers.aws]\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\n",
            preamble(1)
        ),
    )
    .unwrap();
    let (status, stdout, stderr) =
        hypergate_tests::process::run_cli(&["check", "--config", path.to_str().unwrap()]);
    let text = format!("{stdout}{stderr}");
    assert!(!status.success(), "{text}");
    for needle in [
        "ai.providers[0].aws: a Bedrock provider needs AWS credentials",
        "ai.providers[1].aws.region: required",
        "ai.providers[2].aws: AWS credentials are for kind = \"bedrock\" providers",
        "ai.providers[2].responses_api: only OpenAI-format providers",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}
