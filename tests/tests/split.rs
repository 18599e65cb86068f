//! Weighted traffic splits (canary / blue-green): proportions, forced sides by
//! header and cookie, and sticky assignment by a request key.

use hypergate_tests::{preamble, MockUpstream, Request, TestGateway};
use std::collections::HashMap;

struct Canary {
    blue: MockUpstream,
    green: MockUpstream,
    gw: TestGateway,
}

fn canary(shards: usize) -> Canary {
    let blue = MockUpstream::ok("blue");
    let green = MockUpstream::ok("green");
    let gw = TestGateway::start(&format!(
        r#"{}
[[clusters]]
name = "blue"
version = "v1"
endpoints = [{{ address = "{}" }}]

[[clusters]]
name = "green"
version = "v2"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "sticky"
[routes.match]
path_prefix = "/sticky"
[routes.split]
targets = [{{ cluster = "blue", weight = 90 }}, {{ cluster = "green", weight = 10 }}]
sticky_on = "header:x-user"

[[routes]]
name = "canary"
[routes.split]
targets = [{{ cluster = "blue", weight = 90 }}, {{ cluster = "green", weight = 10 }}]
override_header = "x-canary"
override_cookie = "canary"
"#,
        preamble(shards),
        blue.addr(),
        green.addr()
    ));
    Canary { blue, green, gw }
}

#[test]
fn ninety_ten_split_over_ten_thousand_requests() {
    let c = canary(2);
    let addr = c.gw.addr;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut counts: HashMap<String, usize> = HashMap::new();
                let mut conn = hypergate_tests::Conn::connect(addr);
                for _ in 0..2500 {
                    let r = conn.request(&Request::get("/split"));
                    assert_eq!(r.status, 200);
                    *counts.entry(r.text()).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in threads {
        for (k, v) in t.join().expect("load thread") {
            *total.entry(k).or_default() += v;
        }
    }
    let blue = total.get("blue").copied().unwrap_or(0);
    let green = total.get("green").copied().unwrap_or(0);
    assert_eq!(blue + green, 10_000, "{total:?}");
    let green_share = green as f64 / 10_000.0;
    assert!(
        (green_share - 0.10).abs() <= 0.03,
        "green got {:.2}% ({total:?})",
        green_share * 100.0
    );
    assert_eq!(c.blue.request_count(), blue);
    assert_eq!(c.green.request_count(), green);
}

#[test]
fn override_header_and_cookie_force_a_side() {
    let c = canary(1);
    let mut conn = c.gw.conn();
    for (name, value, want) in [
        ("X-Canary", "green", "green"),
        ("X-Canary", "v2", "green"),
        ("X-Canary", "blue", "blue"),
        ("X-Canary", "v1", "blue"),
        ("Cookie", "theme=dark; canary=v2", "green"),
        ("Cookie", "canary=green", "green"),
        ("Cookie", "canary=blue; other=1", "blue"),
    ] {
        for i in 0..30 {
            let r = conn.request(&Request::get("/forced").header(name, value));
            assert_eq!(r.text(), want, "{name}: {value} (request {i})");
        }
    }
    // An unknown value forces nothing: the weights apply.
    let mut seen = HashMap::new();
    for _ in 0..100 {
        let r = conn.request(&Request::get("/forced").header("X-Canary", "purple"));
        *seen.entry(r.text()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("green"), Some(&10), "{seen:?}");
}

#[test]
fn sticky_key_keeps_each_user_on_one_side() {
    let c = canary(2);
    let mut sides: HashMap<String, usize> = HashMap::new();
    for user in 0..200 {
        let id = format!("user-{user}");
        let mut conn = c.gw.conn();
        let first = conn
            .request(&Request::get("/sticky/x").header("X-User", &id))
            .text();
        for i in 0..10 {
            // New connections too, so a different shard may serve the user.
            let r = if i % 3 == 0 {
                c.gw.send(&Request::get("/sticky/y").header("X-User", &id))
            } else {
                conn.request(&Request::get("/sticky/z").header("X-User", &id))
            };
            assert_eq!(r.text(), first, "{id} switched sides on request {i}");
        }
        *sides.entry(first).or_default() += 1;
    }
    let green = sides.get("green").copied().unwrap_or(0);
    assert!(
        green > 0 && green < 60,
        "sticky assignment ignores the weights: {sides:?}"
    );
}
