//! Route matching: ordered routes, indexed by the first path segment.
//!
//! Routes are tried in config order and the first match wins. To keep lookup
//! flat as the route table grows, the [`Router`] indexes routes by the first
//! literal segment of their path pattern; a request only tries the routes filed
//! under its own first segment plus those with no literal first segment
//! (catch-alls, parameters), merged in config order. Matching borrows the
//! request's bytes and allocates nothing.

use std::collections::HashMap;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PathMatch {
    /// Any path.
    #[default]
    Any,
    /// This exact path.
    Exact(String),
    /// Prefix on segment boundaries, stored without a trailing slash (`/` is `Any`).
    Prefix(String),
    /// Segments with parameters.
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text.
    Literal(String),
    /// Any one non-empty segment (`{name}`).
    Param(String),
    /// The rest of the path, possibly empty (`{*name}`, last only).
    Rest(String),
}

impl PathMatch {
    /// A segment-boundary prefix; a trailing slash is ignored.
    pub fn prefix(p: &str) -> Self {
        let trimmed = p.trim_end_matches('/');
        if trimmed.is_empty() {
            PathMatch::Any
        } else {
            PathMatch::Prefix(trimmed.to_string())
        }
    }

    /// Parses a template such as `/users/{id}/orders/{*rest}`.
    pub fn template(t: &str) -> Result<Self, String> {
        let Some(body) = t.strip_prefix('/') else {
            return Err("must start with '/'".into());
        };
        let parts: Vec<&str> = body.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if let Some(rest) = inner.strip_prefix('*') {
                    if i + 1 != parts.len() {
                        return Err(format!("{{*{rest}}} must be the last segment"));
                    }
                    Segment::Rest(rest.to_string())
                } else if inner.is_empty() || inner.contains(['{', '}']) {
                    return Err(format!("invalid parameter {part:?}"));
                } else {
                    Segment::Param(inner.to_string())
                }
            } else if part.contains(['{', '}']) {
                return Err(format!("invalid segment {part:?}"));
            } else {
                Segment::Literal(part.to_string())
            };
            segments.push(seg);
        }
        Ok(PathMatch::Template(segments))
    }

    /// The literal first segment every matching path has, if there is one.
    fn first_literal(&self) -> Option<&str> {
        match self {
            PathMatch::Any => None,
            PathMatch::Exact(p) | PathMatch::Prefix(p) => Some(first_segment(p)),
            PathMatch::Template(segs) => match segs.first() {
                Some(Segment::Literal(l)) => Some(l),
                _ => None,
            },
        }
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Template(segs) => {
                let mut rest = path.strip_prefix('/').unwrap_or(path);
                for (i, seg) in segs.iter().enumerate() {
                    if let Segment::Rest(_) = seg {
                        return true;
                    }
                    let (part, tail) = match rest.find('/') {
                        Some(n) => (&rest[..n], Some(&rest[n + 1..])),
                        None => (rest, None),
                    };
                    let ok = match seg {
                        Segment::Literal(l) => part == l,
                        Segment::Param(_) => !part.is_empty(),
                        Segment::Rest(_) => true,
                    };
                    if !ok {
                        return false;
                    }
                    match tail {
                        Some(t) => rest = t,
                        None => {
                            return i + 1 == segs.len()
                                || (i + 2 == segs.len()
                                    && matches!(segs[i + 1], Segment::Rest(_)));
                        }
                    }
                }
                false
            }
        }
    }
}

/// The first segment of a path: text between the leading `/` and the next one.
fn first_segment(path: &str) -> &str {
    let p = path.strip_prefix('/').unwrap_or(path);
    p.split('/').next().unwrap_or("")
}

/// What the router needs to know about a request.
pub trait RequestInfo {
    /// Method, e.g. `GET`.
    fn method(&self) -> &str;
    /// Host without port, as sent (compared case-insensitively).
    fn host(&self) -> &str;
    /// Path without query.
    fn path(&self) -> &str;
    /// Raw query string without `?` (may be empty).
    fn query(&self) -> &str;
    /// The first value of a header, by lowercase name.
    fn header(&self, lowercase_name: &str) -> Option<&[u8]>;
}

/// A route's match conditions.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Lowercase host patterns (`*.example.com` for a wildcard).
    pub hosts: Vec<String>,
    /// Path condition.
    pub path: PathMatch,
    /// Uppercase methods.
    pub methods: Vec<String>,
    /// `(lowercase header name, required value)`.
    pub headers: Vec<(String, Option<String>)>,
    /// `(parameter name, required value)`.
    pub query: Vec<(String, Option<String>)>,
}

impl RouteMatch {
    /// Whether the request satisfies every condition.
    pub fn matches<R: RequestInfo>(&self, req: &R) -> bool {
        if !self.path.matches(req.path()) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method()) {
            return false;
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| host_matches(h, req.host())) {
            return false;
        }
        for (name, value) in &self.headers {
            match (req.header(name), value) {
                (None, _) => return false,
                (Some(v), Some(want)) if v != want.as_bytes() => return false,
                _ => {}
            }
        }
        for (name, value) in &self.query {
            let found = req.query().split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            });
            match (found, value) {
                (None, _) => return false,
                (Some(v), Some(want)) if v != want => return false,
                _ => {}
            }
        }
        true
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Route lookup index.
#[derive(Debug, Default)]
pub struct Router {
    matchers: Vec<RouteMatch>,
    /// Keyed with xxh3: the key is hashed once per request, and SipHash's DoS
    /// resistance buys nothing for keys that come from our own config.
    by_first_segment: HashMap<Box<str>, Vec<u32>, Xxh3DefaultBuilder>,
    generic: Vec<u32>,
}

impl Router {
    /// Builds the index over routes in match order.
    pub fn build<'a>(matchers: impl Iterator<Item = &'a RouteMatch>) -> Self {
        let mut router = Router::default();
        for (i, m) in matchers.enumerate() {
            match m.path.first_literal() {
                Some(seg) => router
                    .by_first_segment
                    .entry(seg.into())
                    .or_default()
                    .push(i as u32),
                None => router.generic.push(i as u32),
            }
            router.matchers.push(m.clone());
        }
        router
    }

    /// The index of the first route that matches, if any.
    pub fn find<R: RequestInfo>(&self, req: &R) -> Option<usize> {
        let specific: &[u32] = self
            .by_first_segment
            .get(first_segment(req.path()))
            .map_or(&[], |v| v.as_slice());
        let (mut a, mut b) = (specific.iter().peekable(), self.generic.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => return None,
            };
            let idx = *next.expect("peeked") as usize;
            if self.matchers[idx].matches(req) {
                return Some(idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req<'a> {
        method: &'a str,
        host: &'a str,
        path: &'a str,
        query: &'a str,
        headers: &'a [(&'a str, &'a str)],
    }

    impl RequestInfo for Req<'_> {
        fn method(&self) -> &str {
            self.method
        }
        fn host(&self) -> &str {
            self.host
        }
        fn path(&self) -> &str {
            self.path
        }
        fn query(&self) -> &str {
            self.query
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    fn get(path: &str) -> Req<'_> {
        Req {
            method: "GET",
            host: "example.com",
            path,
            query: "",
            headers: &[],
        }
    }

    fn route(path: PathMatch) -> RouteMatch {
        RouteMatch {
            path,
            ..Default::default()
        }
    }

    #[test]
    fn prefix_respects_segment_boundaries() {
        let p = PathMatch::prefix("/api/");
        assert!(p.matches("/api"));
        assert!(p.matches("/api/users"));
        assert!(!p.matches("/apix"));
        assert!(!p.matches("/"));
    }

    #[test]
    fn templates_bind_segments_and_rest() {
        let t = PathMatch::template("/users/{id}/orders").unwrap();
        assert!(t.matches("/users/42/orders"));
        assert!(!t.matches("/users//orders"));
        assert!(!t.matches("/users/42"));
        assert!(!t.matches("/users/42/orders/x"));
        let r = PathMatch::template("/static/{*file}").unwrap();
        assert!(r.matches("/static/css/a.css"));
        assert!(r.matches("/static"));
        assert!(!r.matches("/other/a"));
        assert!(PathMatch::template("/a/{*x}/b").is_err());
        assert!(PathMatch::template("/a/{}").is_err());
    }

    #[test]
    fn first_match_wins_across_index_and_catch_all() {
        let routes = [
            route(PathMatch::Exact("/health".into())),
            route(PathMatch::Any),
            route(PathMatch::prefix("/api")),
        ];
        let r = Router::build(routes.iter());
        assert_eq!(r.find(&get("/health")), Some(0));
        // The catch-all at index 1 precedes the /api prefix at index 2.
        assert_eq!(r.find(&get("/api/x")), Some(1));
    }

    #[test]
    fn hosts_methods_headers_query() {
        let m = RouteMatch {
            hosts: vec!["*.example.com".into(), "api.test".into()],
            path: PathMatch::Any,
            methods: vec!["POST".into()],
            headers: vec![("x-env".into(), Some("canary".into()))],
            query: vec![("debug".into(), None), ("v".into(), Some("2".into()))],
        };
        let ok = Req {
            method: "POST",
            host: "A.Example.com",
            path: "/",
            query: "debug&v=2",
            headers: &[("x-env", "canary")],
        };
        assert!(m.matches(&ok));
        assert!(!m.matches(&Req {
            host: "example.com",
            ..ok
        }));
        assert!(!m.matches(&Req {
            method: "GET",
            ..ok
        }));
        assert!(!m.matches(&Req {
            query: "debug&v=3",
            ..ok
        }));
        assert!(!m.matches(&Req { headers: &[], ..ok }));
        assert!(m.matches(&Req {
            host: "API.TEST",
            ..ok
        }));
    }

    #[test]
    fn thousand_routes_pick_the_right_one() {
        let routes: Vec<RouteMatch> = (0..1000)
            .map(|i| route(PathMatch::prefix(&format!("/svc{i}"))))
            .chain(std::iter::once(route(PathMatch::Any)))
            .collect();
        let r = Router::build(routes.iter());
        assert_eq!(r.find(&get("/svc999/x")), Some(999));
        assert_eq!(r.find(&get("/svc5")), Some(5));
        assert_eq!(r.find(&get("/nope")), Some(1000));
    }
}
