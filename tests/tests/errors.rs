//! One error type, one responder: every error the gateway answers itself is
//! written by the same function, in the client's API shape (JSON on API
//! routes, OpenAI's or Anthropic's on AI routes, edge refusals included), and
//! counted by type and side (`hypergate_errors_total`).

use hypergate_tests::util::closed_port;
use hypergate_tests::{cluster, preamble, Request, TestGateway};
use serde_json::Value;

#[test]
fn errors_are_answered_in_one_shape_and_counted_by_side() {
    let gw = TestGateway::start(&format!(
        "{}{}\n[[routes]]\nname = \"down\"\ncluster = \"backend\"\n[routes.match]\npath_prefix = \"/down\"\n",
        preamble(1),
        cluster("backend", &[closed_port()], "")
    ));
    // The request's fault: no route, and a head the codec refuses.
    let r = gw.get("/nowhere");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "no_route");
    let mut c = gw.conn();
    c.send(b"GET /down HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 400, "{}", r.text());
    let bad = r.json()["error"]["type"].as_str().unwrap().to_string();
    // The upstream's fault: nothing listens.
    let r = gw.get("/down/x");
    assert_eq!(r.status, 502);
    let v = r.json();
    assert_eq!(v["error"]["type"], "connect_failed");
    assert_eq!(v["error"]["request_id"], r.header("x-request-id").unwrap());
    assert!(v["error"]["message"].as_str().unwrap().contains("connect"));
    for (kind, side) in [
        ("no_route", "downstream"),
        (bad.as_str(), "downstream"),
        ("connect_failed", "upstream"),
    ] {
        let series = format!("hypergate_errors_total{{type=\"{kind}\",side=\"{side}\"}}");
        assert_eq!(gw.metric(&series), 1.0, "{series}");
    }
    let stats = gw.stats();
    assert_eq!(stats["errors"]["upstream/connect_failed"], 1, "{stats}");
}

/// An AI route that needs an API key, in front of a provider that is never
/// reached (the edge refuses first).
fn ai_gateway() -> TestGateway {
    TestGateway::start(&format!(
        r#"{preamble}
[[consumers]]
name = "alice"
api_keys = ["{key}"]

[[routes]]
name = "llm"
[routes.match]
path_prefix = "/v1"
[routes.policy]
auth = ["api_key"]
[routes.ai]

[[ai.providers]]
name = "p"
kind = "openai"
base_url = "http://{provider}/v1"
api_key = "sk-test"

[[ai.models]]
alias = "a"
targets = [{{ provider = "p", model = "m1" }}]
"#,
        preamble = preamble(1),
        key = hypergate::auth::hash_key("sk-alice"),
        provider = closed_port(),
    ))
}

fn post(gw: &TestGateway, path: &str) -> hypergate_tests::Response {
    let body = r#"{"model":"a","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    gw.send(&Request::post(path, body).header("content-type", "application/json"))
}

#[test]
fn edge_refusals_on_ai_routes_speak_the_clients_api() {
    let gw = ai_gateway();
    // OpenAI's shape: the SDKs read error.type, error.code and error.param.
    let r = post(&gw, "/v1/chat/completions");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some());
    let v: Value = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], "missing_credentials", "{v}");
    assert!(v["error"].get("param").is_some(), "{v}");
    assert_eq!(v["error"]["request_id"], r.header("x-request-id").unwrap());
    // Anthropic's shape: a type Anthropic clients branch on.
    let r = post(&gw, "/v1/messages");
    assert_eq!(r.status, 401, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    assert_eq!(v["error"]["message"], "credentials are required", "{v}");
    assert_eq!(v["request_id"], r.header("x-request-id").unwrap(), "{v}");
    // With the key, the provider is down: an upstream error, in the same shape.
    let r = gw.send(
        &Request::post(
            "/v1/chat/completions",
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-alice"),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert_eq!(r.json()["error"]["code"], "provider_unreachable");
    assert_eq!(
        gw.metric("hypergate_errors_total{type=\"missing_credentials\",side=\"downstream\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("hypergate_errors_total{type=\"provider_unreachable\",side=\"upstream\"}"),
        1.0
    );
}
