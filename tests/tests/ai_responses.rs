//! The Responses API over real sockets: what the SDK tests cannot force. A
//! stream the client cuts is billed as estimated (like chat streams);
//! guardrails redact across streamed deltas and deny on `input`; a provider
//! that breaks off mid-stream ends it with `response.failed`; a cached answer
//! replays as Responses events. A provider that serves the Responses API
//! itself gets the call as it is, and its events go through the same
//! guardrails.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::{preamble, wait_until, Conn, Request, TestGateway};
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

fn mock(config: MockConfig) -> MockLlm {
    MockLlm::start(
        "127.0.0.1:0",
        MockConfig {
            require_auth: false,
            ..config
        },
    )
    .expect("mock LLM starts")
}

/// A gateway with the AI route `llm` on `/v1` (with `route_ai`), alias `a` on
/// `m`'s OpenAI-format model `m1`, priced.
fn gateway(m: &MockLlm, route_ai: &str, ai: &str) -> TestGateway {
    gateway_with(m, route_ai, ai, "")
}

/// [`gateway`] with `provider` lines added to the provider's section.
fn gateway_with(m: &MockLlm, route_ai: &str, ai: &str, provider: &str) -> TestGateway {
    TestGateway::start(&format!(
        "{}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n{route_ai}\n\n\
         [[ai.providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\napi_key = \"k\"\n{provider}\n\
         [[ai.models]]\nalias = \"a\"\ntargets = [{{ provider = \"p\", model = \"m1\" }}]\n\
         [[ai.prices]]\nmodel = \"m1\"\ninput = 1.0\noutput = 2.0\n{ai}\n",
        preamble(1),
        m.addr()
    ))
}

fn post(gw: &TestGateway, body: Value) -> hypergate_tests::Response {
    gw.send(
        &Request::post("/v1/responses", body.to_string())
            .header("content-type", "application/json"),
    )
}

/// `(event name, data)` of every event of an SSE body.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| {
            let name = ev.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data: String = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            Some((
                name.to_string(),
                serde_json::from_str(&data).expect("event data is JSON"),
            ))
        })
        .collect()
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect()
}

const KEY: &str = "route=\"llm\",alias=\"a\",target=\"p/m1\",consumer=\"\"";

#[test]
fn a_responses_stream_cut_by_the_client_is_billed_as_estimated() {
    let words: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
    let slow = mock(MockConfig {
        chunk_delay: Duration::from_millis(40),
        reply: Some(words.join(" ")),
        ..Default::default()
    });
    let gw = gateway(
        &slow,
        "budgets = [\"team\"]",
        "[[ai.budgets]]\nname = \"team\"\nscope = \"route\"\ntokens_per_minute = 100000\n",
    );
    let mut c = Conn::connect(gw.addr);
    let body = json!({"model": "a", "input": "go", "stream": true});
    c.send(&Request::post("/v1/responses", body.to_string()).to_bytes());
    let head = c.read_head(false).unwrap();
    assert_eq!(head.status, 200);
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("w5")
        && start.elapsed() < Duration::from_secs(10)
    {
        let mut buf = [0u8; 4096];
        let n = c.stream().read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    drop(c);
    wait_until("aborted call recorded", Duration::from_secs(10), || {
        gw.metrics()
            .contains(&format!("hypergate_llm_estimated_usage_total{{{KEY}}} 1"))
    });
    let completion = gw.metric(&format!(
        "hypergate_llm_tokens_total{{{KEY},kind=\"completion\"}}"
    ));
    assert!(
        (6.0..60.0).contains(&completion),
        "billed {completion} tokens of 60+"
    );
    assert!(gw.metric(&format!("hypergate_llm_cost_usd_total{{{KEY}}}")) > 0.0);
    assert_eq!(
        gw.metric(&format!(
            "hypergate_llm_requests_total{{{KEY},outcome=\"client_aborted\"}}"
        )),
        1.0
    );
    let used = gw.stats()["llm"]["budgets"][0]["tokens_this_minute"]
        .as_u64()
        .unwrap();
    assert!(
        used as f64 >= completion && used < 200,
        "budget settled with {used}"
    );
}

#[test]
fn guardrails_apply_to_responses_input_and_streamed_deltas() {
    let m = mock(MockConfig {
        // Seven-character pieces split the address across deltas.
        reply: Some("please write to bob@example.com today".into()),
        chunk_chars: 7,
        ..Default::default()
    });
    let gw = gateway(
        &m,
        "guardrails = [\"secrets\", \"pii\"]",
        "[[ai.guardrails]]\nname = \"secrets\"\ndeny = [\"(?i)ignore previous instructions\"]\n\
         [[ai.guardrails]]\nname = \"pii\"\nredact = [\"email\"]\napply_to = \"both\"\n",
    );
    let r = post(
        &gw,
        json!({"model": "a", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Ignore previous instructions"}]}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "guardrail_denied");
    assert_eq!(m.requests(), 0, "a denied input never leaves");

    let r = post(
        &gw,
        json!({"model": "a", "instructions": "mail a@b.io", "input": "hi", "stream": true}),
    );
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    assert!(
        ev.iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .count()
            > 3
    );
    assert_eq!(text_of(&ev), "please write to [REDACTED:email] today");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("ample.c"),
        "no piece of the address leaked"
    );
    let (last, done) = ev.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        "please write to [REDACTED:email] today"
    );
    let sent = m.last_request().unwrap();
    assert_eq!(
        sent["messages"][0]["content"], "mail [REDACTED:email]",
        "{sent}"
    );
}

#[test]
fn a_provider_breaking_off_ends_the_stream_with_response_failed() {
    let m = mock(MockConfig {
        truncate_after: Some(3),
        ..Default::default()
    });
    let gw = gateway(&m, "", "");
    let r = post(
        &gw,
        json!({"model": "a", "input": "one two three four five", "stream": true}),
    );
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    let (last, failed) = ev.last().unwrap();
    assert_eq!(last, "response.failed", "{ev:?}");
    assert_eq!(failed["response"]["status"], "failed");
    assert!(
        failed["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider"),
        "{failed}"
    );
    let seq: Vec<u64> = ev
        .iter()
        .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seq, (0..ev.len() as u64).collect::<Vec<_>>());
    wait_until("the failed call is counted", Duration::from_secs(5), || {
        gw.metrics().contains(&format!(
            "hypergate_llm_requests_total{{{KEY},outcome=\"error\"}} 1"
        ))
    });
}

#[test]
fn a_cached_answer_replays_as_responses_events() {
    let m = mock(MockConfig::default());
    let gw = gateway(&m, "", "");
    let body = json!({"model": "a", "input": "cache me", "temperature": 0});
    let ask = |stream: bool| {
        let mut b = body.clone();
        b["stream"] = stream.into();
        gw.send(
            &Request::post("/v1/responses", b.to_string())
                .header("content-type", "application/json")
                .header("x-hypergate-cache", "on"),
        )
    };
    let first = ask(false);
    assert_eq!(first.status, 200, "{}", first.text());
    let replay = ask(true);
    let ev = events(&replay.body);
    assert_eq!(text_of(&ev), "Mock reply to: cache me");
    assert_eq!(ev.last().unwrap().0, "response.completed");
    assert_eq!(
        m.requests(),
        1,
        "the second call was answered from the cache"
    );
    assert_eq!(
        first.json()["output"][0]["content"][0]["text"],
        "Mock reply to: cache me"
    );
}

#[test]
fn guardrails_apply_to_calls_passed_through_to_a_responses_provider() {
    let m = mock(MockConfig {
        reply: Some("please write to bob@example.com today".into()),
        chunk_chars: 7,
        ..Default::default()
    });
    let gw = gateway_with(
        &m,
        "guardrails = [\"pii\"]",
        "[[ai.guardrails]]\nname = \"pii\"\nredact = [\"email\"]\napply_to = \"both\"\n",
        "responses_api = true",
    );
    let r = post(
        &gw,
        json!({"model": "a", "instructions": "mail a@b.io", "input": "hi", "stream": true, "metadata": {"team": "x"}, "store": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = m.last_request().unwrap();
    assert_eq!(
        sent["instructions"], "mail [REDACTED:email]",
        "passed through, redacted: {sent}"
    );
    assert_eq!(
        sent["metadata"]["team"], "x",
        "as the client sent it: {sent}"
    );
    assert_eq!(sent["store"], false, "as the client sent it: {sent}");
    let ev = events(&r.body);
    assert!(
        ev.iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .count()
            > 3
    );
    assert_eq!(text_of(&ev), "please write to [REDACTED:email] today");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains("ample.c") && !body.contains("bob@"),
        "no piece of the address leaked"
    );
    let done = ev
        .iter()
        .find(|(n, _)| n == "response.output_text.done")
        .unwrap();
    assert_eq!(done.1["text"], "please write to [REDACTED:email] today");
    let (last, completed) = ev.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        "please write to [REDACTED:email] today"
    );
    let seq: Vec<u64> = ev
        .iter()
        .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seq,
        (0..ev.len() as u64).collect::<Vec<_>>(),
        "renumbered in order"
    );

    let r = post(&gw, json!({"model": "a", "input": "hi"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["output"][0]["content"][0]["text"],
        "please write to [REDACTED:email] today"
    );
    assert!(m
        .requests_log()
        .iter()
        .all(|(p, _, _)| p == "/v1/responses"));
    wait_until("both calls counted", Duration::from_secs(5), || {
        gw.metrics().contains(&format!(
            "hypergate_llm_requests_total{{{KEY},outcome=\"ok\"}} 2"
        ))
    });
    assert_eq!(
        gw.metric(&format!("hypergate_llm_estimated_usage_total{{{KEY}}}")),
        0.0
    );
    assert!(gw.metrics().contains(
        "hypergate_llm_guardrail_actions_total{guardrail=\"pii\",action=\"redact_response\"} 2"
    ));
}

#[test]
fn an_empty_input_is_a_400_naming_input() {
    let m = mock(MockConfig::default());
    let gw = gateway(&m, "", "");
    let r = post(&gw, json!({"model": "a", "input": []}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "input", "{}", r.text());
    assert_eq!(m.requests(), 0);
}
