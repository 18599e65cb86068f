//! Fuzz target: the canonical path normaliser, `hypergate::http::path::normalize`.
//!
//! Routing, auth, rate-limit keys and the upstream all see the path it
//! produces, so a path that is not canonical after normalising, or that
//! normalises differently a second time, is a way past a rule. For the input
//! as a path (without its query), under each escaped-slash action, strict and
//! relaxed:
//! 1. no panic; a path not starting with `/` is `NotAbsolute`;
//! 2. every accepted path's canonical form starts with `/`, has no `//`, `/./`
//!    or `/../`, does not end in `/.` or `/..`, has only uppercase escapes of
//!    bytes that are not unreserved, and decodes to valid UTF-8 (so
//!    `Unchanged` is only returned for a path that is already all that);
//! 3. `Rewritten` is never the input byte for byte, and normalising the
//!    canonical form again returns `Unchanged` (idempotence);
//! 4. the relaxed flags only accept more: where the strict policy accepts, the
//!    relaxed one gives the same path, and where `Reject` accepts, `Keep` and
//!    `Decode` give the same path.
#![no_main]

use hypergate::http::path::{normalize, EscapedSlashAction, Normalized, PathError, PathPolicy};
use libfuzzer_sys::fuzz_target;

const ACTIONS: [EscapedSlashAction; 3] = [
    EscapedSlashAction::Reject,
    EscapedSlashAction::Keep,
    EscapedSlashAction::Decode,
];

fuzz_target!(|path: &[u8]| {
    let mut strict_reject = None;
    for escaped_slashes in ACTIONS {
        let strict = PathPolicy {
            escaped_slashes,
            ..PathPolicy::default()
        };
        let relaxed = PathPolicy {
            reject_double_encoding: false,
            reject_semicolons: false,
            ..strict
        };
        let strict_form = canonical(path, &strict);
        let relaxed_form = canonical(path, &relaxed);
        if let Ok(form) = &strict_form {
            assert_eq!(
                relaxed_form.as_ref(),
                Ok(form),
                "relaxed flags changed an accepted path"
            );
        }
        match escaped_slashes {
            EscapedSlashAction::Reject => strict_reject = Some(strict_form),
            _ => {
                if let Some(Ok(form)) = &strict_reject {
                    assert_eq!(
                        strict_form.as_ref(),
                        Ok(form),
                        "{escaped_slashes:?} changed a path Reject accepts"
                    );
                }
            }
        }
    }
});

/// Normalises `path` under `policy` and checks the result; returns the canonical form.
fn canonical(path: &[u8], policy: &PathPolicy) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::new();
    let result = normalize(path, policy, &mut out);
    if path.first() != Some(&b'/') {
        assert_eq!(result, Err(PathError::NotAbsolute));
    }
    let form = match result? {
        Normalized::Unchanged => path.to_vec(),
        Normalized::Rewritten => {
            assert_ne!(out, path, "Rewritten to the same bytes");
            out
        }
    };
    assert_canonical(&form);
    let mut again = Vec::new();
    assert_eq!(
        normalize(&form, policy, &mut again),
        Ok(Normalized::Unchanged),
        "not idempotent under {policy:?}: {:?}",
        String::from_utf8_lossy(&form)
    );
    Ok(form)
}

/// Panics unless `path` has the shape of a canonical path.
fn assert_canonical(path: &[u8]) {
    let text = String::from_utf8_lossy(path);
    assert!(path.starts_with(b"/"), "{text:?}");
    for bad in [&b"//"[..], b"/./", b"/../"] {
        assert!(!path.windows(bad.len()).any(|w| w == bad), "{text:?}");
    }
    assert!(
        !path.ends_with(b"/.") && !path.ends_with(b"/.."),
        "{text:?}"
    );
    let mut decoded = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'%' {
            decoded.push(byte);
            rest = tail;
            continue;
        }
        let digits = tail.get(..2).expect("truncated escape");
        assert!(
            digits
                .iter()
                .all(|d| matches!(d, b'0'..=b'9' | b'A'..=b'F')),
            "escape not uppercase hex in {text:?}"
        );
        let value = u8::from_str_radix(std::str::from_utf8(digits).unwrap(), 16).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "unreserved byte left encoded in {text:?}"
        );
        decoded.push(value);
        rest = &tail[2..];
    }
    assert!(
        std::str::from_utf8(&decoded).is_ok(),
        "decodes to invalid UTF-8: {text:?}"
    );
}
