//! Routing: host, path, method, header and query matches in config order,
//! prefix rewrites, header changes both ways, direct answers, redirects, and
//! the JSON 404 when nothing matches.

use hypergate_tests::mock::Request as Seen;
use hypergate_tests::{preamble, MockUpstream, Reply, Request, Response, TestGateway};

/// The upstream answers `route=<x-route header> target=<request target>`.
fn echo_route() -> MockUpstream {
    MockUpstream::start(|req: &Seen| {
        Reply::ok(format!(
            "route={} target={}",
            req.header("x-route").unwrap_or("-"),
            req.target
        ))
        .header("X-Up-Remove", "secret")
        .header("X-Up-Set", "upstream")
        .header("X-Up-Keep", "kept")
        .into()
    })
}

fn route(name: &str, matcher: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\ncluster = \"backend\"\n{extra}\n[routes.request_headers]\nset = {{ \"x-route\" = \"{name}\" }}\n[routes.match]\n{matcher}\n"
    )
}

fn gateway(mock: &MockUpstream) -> TestGateway {
    let mut toml = preamble(1);
    toml += &format!(
        "\n[[clusters]]\nname = \"backend\"\nendpoints = [{{ address = \"{}\" }}]\n",
        mock.addr()
    );
    toml += &route("host-exact", "hosts = [\"api.example.com\"]", "");
    toml += &route("host-wild", "hosts = [\"*.wild.example\"]", "");
    toml += &route("exact", "path_exact = \"/exact\"", "");
    toml += &route(
        "rewrite",
        "path_prefix = \"/pre\"",
        "rewrite = { strip_prefix = \"/pre\", replace_prefix = \"/v2/\" }",
    );
    toml += &route("strip", "path_prefix = \"/strip/\"", "rewrite = {}");
    toml += &route(
        "template",
        "path_template = \"/users/{id}/orders/{*rest}\"",
        "",
    );
    toml += &route(
        "delete-only",
        "path_prefix = \"/m\"\nmethods = [\"DELETE\"]",
        "",
    );
    toml += &route(
        "header",
        "path_prefix = \"/h\"\nheaders = [{ name = \"X-Tenant\", value = \"blue\" }]",
        "",
    );
    toml += &route(
        "header-present",
        "path_prefix = \"/h\"\nheaders = [{ name = \"X-Tenant\" }]",
        "",
    );
    toml += &route(
        "query",
        "path_prefix = \"/q\"\nquery = [{ name = \"debug\", value = \"1\" }]",
        "",
    );
    toml += r#"
[[routes]]
name = "headers"
cluster = "backend"
[routes.match]
path_prefix = "/hdr"
[routes.request_headers]
set = { "x-route" = "headers", "x-set" = "gateway" }
add = { "x-add" = "added" }
remove = ["x-remove"]
[routes.response_headers]
set = { "x-up-set" = "gateway" }
add = { "x-resp-add" = "yes" }
remove = ["x-up-remove"]

[[routes]]
name = "direct"
[routes.match]
path_exact = "/direct"
[routes.direct]
status = 203
body = "answered here"
content_type = "text/x-test"
[routes.response_headers]
add = { "x-direct" = "1" }

[[routes]]
name = "redirect"
[routes.match]
path_prefix = "/old"
[routes.redirect]
location = "https://example.com/new"
status = 301
"#;
    toml += &route("fallback-m", "path_prefix = \"/m\"", "");
    toml += &route("fallback-h", "path_prefix = \"/h\"", "");
    toml += &route("fallback-q", "path_prefix = \"/q\"", "");
    toml += &route("fallback-users", "path_prefix = \"/users\"", "");
    TestGateway::start(&toml)
}

fn go(gw: &TestGateway, req: Request) -> Response {
    gw.send(&req)
}

fn routed(gw: &TestGateway, req: Request) -> String {
    let r = go(gw, req);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[test]
fn hosts_exact_and_wildcard() {
    let mock = echo_route();
    let gw = gateway(&mock);
    assert_eq!(
        routed(&gw, Request::get("/x").header("Host", "api.example.com")),
        "route=host-exact target=/x"
    );
    assert_eq!(
        routed(
            &gw,
            Request::get("/x").header("Host", "API.Example.COM:8080")
        ),
        "route=host-exact target=/x"
    );
    assert_eq!(
        routed(&gw, Request::get("/exact").header("Host", "a.wild.example")),
        "route=host-wild target=/exact"
    );
    assert_eq!(
        routed(
            &gw,
            Request::get("/exact").header("Host", "a.b.wild.example")
        ),
        "route=host-wild target=/exact"
    );
    // The bare domain is not covered by its wildcard.
    assert_eq!(
        routed(&gw, Request::get("/exact").header("Host", "wild.example")),
        "route=exact target=/exact"
    );
    assert_eq!(
        go(&gw, Request::get("/x").header("Host", "other.example")).status,
        404
    );
}

#[test]
fn paths_exact_prefix_and_template() {
    let mock = echo_route();
    let gw = gateway(&mock);
    assert_eq!(
        routed(&gw, Request::get("/exact")),
        "route=exact target=/exact"
    );
    assert_eq!(go(&gw, Request::get("/exact/more")).status, 404);
    assert_eq!(
        routed(&gw, Request::get("/users/42/orders/7/items")),
        "route=template target=/users/42/orders/7/items"
    );
    assert_eq!(
        routed(&gw, Request::get("/users/42/orders")),
        "route=template target=/users/42/orders"
    );
    // The path is canonical before it is matched: `//` merges, so no empty `{id}`.
    assert_eq!(
        routed(&gw, Request::get("/users//orders/1")),
        "route=fallback-users target=/users/orders/1"
    );
    assert_eq!(
        routed(&gw, Request::get("/users/42/carts/1")),
        "route=fallback-users target=/users/42/carts/1"
    );
    // Prefixes match on segment boundaries only.
    assert_eq!(go(&gw, Request::get("/prefix")).status, 404);
}

#[test]
fn prefix_rewrites_are_seen_upstream() {
    let mock = echo_route();
    let gw = gateway(&mock);
    assert_eq!(
        routed(&gw, Request::get("/pre/a/b?x=1&y=2")),
        "route=rewrite target=/v2/a/b?x=1&y=2"
    );
    assert_eq!(
        routed(&gw, Request::get("/pre")),
        "route=rewrite target=/v2/"
    );
    assert_eq!(
        routed(&gw, Request::get("/strip/rest/of/path")),
        "route=strip target=/rest/of/path"
    );
    assert_eq!(routed(&gw, Request::get("/strip")), "route=strip target=/");
    assert_eq!(mock.last().target, "/");
}

#[test]
fn methods_headers_and_query_select_routes() {
    let mock = echo_route();
    let gw = gateway(&mock);
    assert_eq!(
        routed(&gw, Request::new("DELETE", "/m/1")),
        "route=delete-only target=/m/1"
    );
    assert_eq!(
        routed(&gw, Request::get("/m/1")),
        "route=fallback-m target=/m/1"
    );
    assert_eq!(
        routed(&gw, Request::get("/h").header("X-Tenant", "blue")),
        "route=header target=/h"
    );
    assert_eq!(
        routed(&gw, Request::get("/h").header("x-tenant", "green")),
        "route=header-present target=/h"
    );
    assert_eq!(
        routed(&gw, Request::get("/h")),
        "route=fallback-h target=/h"
    );
    assert_eq!(
        routed(&gw, Request::get("/q?a=b&debug=1")),
        "route=query target=/q?a=b&debug=1"
    );
    assert_eq!(
        routed(&gw, Request::get("/q?debug=0")),
        "route=fallback-q target=/q?debug=0"
    );
    assert_eq!(
        routed(&gw, Request::get("/q")),
        "route=fallback-q target=/q"
    );
}

#[test]
fn request_and_response_headers_are_added_set_and_removed() {
    let mock = echo_route();
    let gw = gateway(&mock);
    let r = go(
        &gw,
        Request::get("/hdr")
            .header("X-Set", "client")
            .header("X-Add", "client")
            .header("X-Remove", "gone")
            .header("X-Other", "kept"),
    );
    assert_eq!(r.status, 200);
    let seen = mock.last();
    assert_eq!(seen.headers_named("x-set"), vec!["gateway"]);
    assert_eq!(seen.headers_named("x-add"), vec!["client", "added"]);
    assert!(seen.header("x-remove").is_none());
    assert_eq!(seen.header("x-other"), Some("kept"));
    assert_eq!(seen.headers_named("x-route"), vec!["headers"]);

    assert_eq!(r.headers_named("x-up-set"), vec!["gateway"]);
    assert!(r.header("x-up-remove").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("x-up-keep"), Some("kept"));
    assert_eq!(r.header("x-resp-add"), Some("yes"));
}

#[test]
fn direct_responses_and_redirects_are_answered_by_the_gateway() {
    let mock = echo_route();
    let gw = gateway(&mock);
    let mut conn = gw.conn();
    let r = conn.request(&Request::get("/direct"));
    assert_eq!(r.status, 203);
    assert_eq!(r.body, b"answered here");
    assert_eq!(r.header("content-type"), Some("text/x-test"));
    assert_eq!(r.header("x-direct"), Some("1"));
    assert!(r.header("x-request-id").is_some());
    let r = conn.request(&Request::new("HEAD", "/direct"));
    assert_eq!(r.status, 203);
    assert!(r.body.is_empty());
    let r = conn.request(&Request::get("/old/page?q=1"));
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://example.com/new"));
    // The connection stayed usable throughout and nothing was proxied.
    assert_eq!(conn.request(&Request::get("/direct")).status, 203);
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn no_route_is_a_json_404() {
    let mock = echo_route();
    let gw = gateway(&mock);
    let mut conn = gw.conn();
    let r = conn.request(&Request::get("/no/such/route"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"]["type"], "no_route");
    assert_eq!(
        v["error"]["request_id"],
        r.header("x-request-id").expect("request id")
    );
    // A 404 keeps the connection open.
    assert_eq!(conn.request(&Request::get("/exact")).status, 200);
    assert_eq!(gw.metric("hypergate_no_route_total"), 1.0);
}
