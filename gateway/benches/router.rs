//! Route lookup micro-benchmark: lookup time against the size of the route table.
//!
//! Run with `cargo bench -p hypergate --bench router`. Builds tables of 10, 100
//! and 1,000 prefix routes plus a catch-all, and times lookups of the last
//! specific route (the worst case for a linear scan) and of the catch-all.

use hypergate::routing::{PathMatch, RequestInfo, RouteMatch, Router};
use std::hint::black_box;
use std::time::Instant;

struct Req(&'static str);

impl RequestInfo for Req {
    fn method(&self) -> &str {
        "GET"
    }
    fn host(&self) -> &str {
        "api.example.com"
    }
    fn path(&self) -> &str {
        self.0
    }
    fn query(&self) -> &str {
        ""
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

fn table(n: usize) -> Router {
    let routes: Vec<RouteMatch> = (0..n)
        .map(|i| RouteMatch {
            path: PathMatch::prefix(&format!("/svc{i}")),
            methods: vec!["GET".into(), "POST".into()],
            ..Default::default()
        })
        .chain(std::iter::once(RouteMatch::default()))
        .collect();
    Router::build(routes.iter())
}

fn time(router: &Router, path: &'static str) -> f64 {
    let req = Req(path);
    let iterations = 2_000_000u32;
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(router.find(black_box(&req)));
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    println!(
        "{:>8} {:>22} {:>22}",
        "routes", "last route (ns/lookup)", "catch-all (ns/lookup)"
    );
    let mut rows = Vec::new();
    for n in [10usize, 100, 1000] {
        let router = table(n);
        let last: &'static str = Box::leak(format!("/svc{}/items/42", n - 1).into_boxed_str());
        let (l, c) = (time(&router, last), time(&router, "/unknown/path"));
        println!("{n:>8} {l:>22.1} {c:>22.1}");
        rows.push((n, l));
    }
    let ratio = rows[2].1 / rows[0].1;
    println!("lookup time, 1,000 routes vs 10 routes: {ratio:.2}x");
}
