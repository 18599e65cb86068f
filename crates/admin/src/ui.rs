//! The dashboard: a static web page on the admin listener at `/ui`.
//!
//! The page (`ui/index.html`, `ui/app.js`, `ui/style.css`, `ui/favicon.svg`)
//! and the vendored uPlot 1.6.32 charting library (`ui/vendor/`, from npm, MIT,
//! licence served next to it) are compiled into the binary with `include_str!`:
//! nothing is built or read from disk at run time. In the browser, `app.js` polls the admin JSON endpoints
//! (`/stats`, `/hypercare/series`, `/hypercare/canary`, `/hypercare/alerts`,
//! `/hypercare/windows`, `/hypercare/summary`, `/hypercare/fleet`) every 2 s on the same origin and
//! draws the charts and panels. Every response carries a `Content-Security-Policy`
//! that allows scripts, styles and fetches from this origin only (no inline code,
//! no other host), and `nosniff`.
//!
//! These static files hold no data and are served without the admin token; the
//! JSON the page fetches needs it when `admin.token` is set. On a 401 the page
//! shows a token form once, keeps the token in `sessionStorage` (this tab only)
//! and sends it as `Authorization: Bearer` from then on.

use std::io::Write;

/// What the page may load: its own origin only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file of the page: path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/ui", HTML, include_str!("ui/index.html")),
    ("/ui/", HTML, include_str!("ui/index.html")),
    ("/ui/index.html", HTML, include_str!("ui/index.html")),
    ("/ui/app.js", JS, include_str!("ui/app.js")),
    ("/ui/style.css", CSS, include_str!("ui/style.css")),
    ("/ui/favicon.svg", SVG, include_str!("ui/favicon.svg")),
    (
        "/ui/vendor/uPlot.iife.min.js",
        JS,
        include_str!("ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "/ui/vendor/uPlot.min.css",
        CSS,
        include_str!("ui/vendor/uPlot.min.css"),
    ),
    (
        "/ui/vendor/uPlot.LICENSE",
        TEXT,
        include_str!("ui/vendor/uPlot.LICENSE"),
    ),
];

/// Status, content type and body for `method path` (`path` without its query).
fn lookup(method: &str, path: &str) -> (u16, &'static str, &'static str) {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, body)) if method == "GET" || method == "HEAD" => {
            (200, content_type, body)
        }
        Some(_) => (405, TEXT, "method not allowed\n"),
        None => (404, TEXT, "not found\n"),
    }
}

/// Answers one request for a path under `/ui` and closes the exchange.
pub(super) fn serve(out: &mut impl Write, method: &str, path: &str) {
    let (status, content_type, body) = lookup(method, path);
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         content-security-policy: {CONTENT_SECURITY_POLICY}\r\n\
         x-content-type-options: nosniff\r\ncache-control: no-cache\r\n\
         connection: close\r\n\r\n",
        hypergate_core::http::reason(status),
        body.len(),
    );
    let _ = out.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = out.write_all(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(method: &str, path: &str) -> (String, String) {
        let mut out = Vec::new();
        serve(&mut out, method, path);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    #[test]
    fn serves_the_page_and_its_files_with_their_types() {
        for (path, content_type, needle) in [
            ("/ui", "text/html", "<title>Hypergate dashboard</title>"),
            ("/ui/", "text/html", "/ui/app.js"),
            ("/ui/app.js", "text/javascript", "POLL_MS"),
            ("/ui/style.css", "text/css", ".card"),
            ("/ui/favicon.svg", "image/svg+xml", "<svg"),
            ("/ui/vendor/uPlot.iife.min.js", "text/javascript", "uPlot"),
            ("/ui/vendor/uPlot.min.css", "text/css", ".uplot"),
            ("/ui/vendor/uPlot.LICENSE", "text/plain", "MIT"),
        ] {
            let (head, body) = response("GET", path);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
            assert!(
                head.contains(&format!("content-type: {content_type}")),
                "{path}: {head}"
            );
            assert!(
                head.contains(&format!("content-length: {}\r\n", body.len())),
                "{path}: {head}"
            );
            assert!(body.contains(needle), "{path} lacks {needle:?}");
        }
    }

    #[test]
    fn every_response_allows_only_its_own_origin() {
        for path in ["/ui", "/ui/app.js", "/ui/missing"] {
            let (head, _) = response("GET", path);
            let csp = head
                .lines()
                .find_map(|l| l.strip_prefix("content-security-policy: "))
                .unwrap_or_else(|| panic!("{path}: no CSP in {head}"));
            assert!(csp.starts_with("default-src 'self';"), "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            assert!(!csp.contains("http"), "{csp}");
            assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        }
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        for path in ["/ui/nope.js", "/uix", "/ui/../admin", "/ui/vendor/"] {
            let (head, _) = response("GET", path);
            assert!(head.starts_with("HTTP/1.1 404 "), "{path}: {head}");
        }
        let (head, _) = response("POST", "/ui/app.js");
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
        let (head, body) = response("HEAD", "/ui");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body.is_empty());
    }

    #[test]
    fn the_page_asks_for_the_admin_token_and_sends_it() {
        let index = lookup("GET", "/ui").2;
        assert!(index.contains("id=\"login\""), "no token form");
        assert!(
            index.contains("type=\"password\""),
            "the token field is not masked"
        );
        let app = lookup("GET", "/ui/app.js").2;
        assert!(app.contains("response.status === 401"));
        assert!(app.contains("Authorization: \"Bearer \" + token"));
        assert!(app.contains("sessionStorage"));
        assert!(
            !app.contains("localStorage"),
            "the token must not outlive the tab"
        );
    }

    #[test]
    fn the_page_references_only_files_that_are_served() {
        let index = lookup("GET", "/ui").2;
        for attr in ["src=\"", "href=\""] {
            for part in index.split(attr).skip(1) {
                let target = part.split('"').next().unwrap();
                assert_eq!(lookup("GET", target).0, 200, "index.html links {target}");
            }
        }
    }
}
