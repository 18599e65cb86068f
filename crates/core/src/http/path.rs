//! The canonical request path: the one form routing, auth, limits, logs and the upstream see.
//!
//! A path that is already canonical (the common case) is recognised by one
//! hand-written scan and left alone. Any other path is rebuilt in one pass over
//! its bytes into a caller-owned buffer:
//! 1. Each `%XX` escape is decoded: unreserved characters are written plainly,
//!    controls, encoded slashes (per [`EscapedSlashAction`]) and double encoding
//!    are refused, everything else stays encoded with uppercase hex.
//! 2. Raw controls, backslashes and `;` are refused or handled per [`PathPolicy`].
//! 3. Every decoded byte goes through an incremental UTF-8 check, so overlong
//!    forms (`%C0%AE`), surrogates and truncated sequences are refused.
//! 4. At each separator the segment just written is closed: empty segments
//!    (repeated `/`) are dropped, `.` removed and `..` removes the segment
//!    before it (RFC 3986 §5.2.4, on the decoded segment, so `.%2e` is `..`).
//!
//! Slashes are merged before dot segments are resolved (as nginx does), so
//! `/a//..` is `/`, not `/a/`. Models: Envoy's `normalize_path` +
//! `merge_slashes` + `path_with_escaped_slashes_action`, nginx's URI
//! normalisation and Spring Security's `StrictHttpFirewall`.

/// What to do with an encoded slash or backslash (`%2F`, `%5C`) and a raw `\`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashAction {
    /// Refuse the request (400): `EscapedSlash` or `Backslash`.
    #[default]
    Reject,
    /// Forward them unchanged (`%2F`, `%5C` with uppercase hex, raw `\`) as part
    /// of a segment, not as separators. Only safe when the upstream does not
    /// decode them into separators either.
    Keep,
    /// Treat them as `/` separators.
    Decode,
}

/// The normalisation policy (from the `[path]` config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Encoded slashes and backslashes, and raw backslashes.
    pub escaped_slashes: EscapedSlashAction,
    /// Refuse `%25` followed by two hex digits (`%2570` is `%70` once decoded, `p` twice).
    pub reject_double_encoding: bool,
    /// Refuse a raw `;`: servlet containers strip `;params` from segments, so
    /// `/private;x/y` would reach `/private/y` behind a rule for `/private/`.
    pub reject_semicolons: bool,
}

impl Default for PathPolicy {
    /// The strict policy: reject escaped slashes, double encoding and semicolons.
    fn default() -> Self {
        Self {
            escaped_slashes: EscapedSlashAction::Reject,
            reject_double_encoding: true,
            reject_semicolons: true,
        }
    }
}

/// Why a path was refused (each is a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the path")]
    BadEscape,
    /// A raw space, control byte or DEL, or an escape that decodes to a control byte or DEL.
    #[error("control character or space in the path")]
    ControlCharacter,
    /// `%2F` or `%5C` under [`EscapedSlashAction::Reject`].
    #[error("encoded slash or backslash (%2F, %5C) in the path")]
    EscapedSlash,
    /// A raw `\` under [`EscapedSlashAction::Reject`].
    #[error("backslash in the path")]
    Backslash,
    /// `%25` followed by two hex digits, with `reject_double_encoding`.
    #[error("double percent-encoding (%25 followed by two hex digits) in the path")]
    DoubleEncoding,
    /// A `;`, raw or encoded (`%3B`: a server that decodes before it strips
    /// `;params` splits on it too), with `reject_semicolons`.
    #[error("semicolon (path parameter) in the path")]
    Semicolon,
    /// The decoded path is not valid UTF-8 (overlong form, surrogate, truncated sequence).
    #[error("the decoded path is not valid UTF-8")]
    InvalidUtf8,
    /// The path does not start with `/`.
    #[error("the path must start with /")]
    NotAbsolute,
}

impl PathError {
    /// The metric label for this error (snake_case).
    pub fn label(self) -> &'static str {
        match self {
            Self::BadEscape => "bad_escape",
            Self::ControlCharacter => "control_character",
            Self::EscapedSlash => "escaped_slash",
            Self::Backslash => "backslash",
            Self::DoubleEncoding => "double_encoding",
            Self::Semicolon => "semicolon",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NotAbsolute => "not_absolute",
        }
    }
}

/// Outcome of [`normalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalized {
    /// The path is already canonical; use it as it is (`out` holds nothing meaningful).
    Unchanged,
    /// The canonical path is in `out`.
    Rewritten,
}

/// Normalises `path` (the request target without its query) under `policy`.
///
/// Returns [`Normalized::Unchanged`] when `path` is already canonical, else
/// writes the canonical form into `out` (cleared first) and returns
/// [`Normalized::Rewritten`]. On error `out` holds a partial result.
pub fn normalize(
    path: &[u8],
    policy: &PathPolicy,
    out: &mut Vec<u8>,
) -> Result<Normalized, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plainly_canonical(path) {
        return Ok(Normalized::Unchanged);
    }
    out.clear();
    out.push(b'/');
    let mut segment = 1; // where the current segment starts in `out`
    let mut utf8 = Utf8Check::default();
    let mut i = 1;
    while i < path.len() {
        let raw = path[i];
        i += 1;
        if raw == b'%' {
            let value = match (path.get(i).and_then(hex), path.get(i + 1).and_then(hex)) {
                (Some(high), Some(low)) => high << 4 | low,
                _ => return Err(PathError::BadEscape),
            };
            i += 2;
            utf8.push(value)?;
            match value {
                0..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
                b'/' | b'\\' => match policy.escaped_slashes {
                    EscapedSlashAction::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashAction::Keep => push_escaped(out, value),
                    EscapedSlashAction::Decode => segment = close_segment(out, segment, true),
                },
                b';' if policy.reject_semicolons => return Err(PathError::Semicolon),
                _ if is_unreserved(value) => push_plain(out, value, policy)?,
                _ => push_escaped(out, value),
            }
            continue;
        }
        utf8.push(raw)?;
        match raw {
            0..=0x20 | 0x7F => return Err(PathError::ControlCharacter),
            b'/' => segment = close_segment(out, segment, true),
            b'\\' => match policy.escaped_slashes {
                EscapedSlashAction::Reject => return Err(PathError::Backslash),
                EscapedSlashAction::Keep => out.push(b'\\'),
                EscapedSlashAction::Decode => segment = close_segment(out, segment, true),
            },
            b';' if policy.reject_semicolons => return Err(PathError::Semicolon),
            _ => push_plain(out, raw, policy)?,
        }
    }
    utf8.finish()?;
    close_segment(out, segment, false);
    // A path that only needed checking (`/caf%C3%A9`) is reported unchanged.
    Ok(if out[..] == path[..] {
        Normalized::Unchanged
    } else {
        Normalized::Rewritten
    })
}

/// The fast path: true when `path` (starting with `/`) has nothing to decode,
/// check or resolve: no `%`, `\`, `;`, space, control, DEL or non-ASCII byte,
/// no `//` and no `.` or `..` segment. Hand-written as one pass over the bytes
/// without allocating, because it runs on every request.
fn is_plainly_canonical(path: &[u8]) -> bool {
    for (i, &byte) in path.iter().enumerate() {
        match byte {
            b'/' => match &path[i + 1..] {
                [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..] => {
                    return false
                }
                _ => {}
            },
            b'%' | b'\\' | b';' | 0..=0x20 | 0x7F..=0xFF => return false,
            _ => {}
        }
    }
    true
}

/// Ends the segment that starts at `segment` in `out` (just after its `/`):
/// drops it if empty, removes it if `.`, removes it and the one before if `..`.
/// With `separator`, a kept segment gets its closing `/`. Returns where the next
/// segment starts.
fn close_segment(out: &mut Vec<u8>, segment: usize, separator: bool) -> usize {
    match &out[segment..] {
        b"" => {}
        b"." => out.truncate(segment),
        b".." => {
            // `out[segment - 1]` is the `/` before this segment; `out[0]` is the root.
            let parent = out[..segment - 1]
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(1, |slash| slash + 1);
            out.truncate(parent);
        }
        _ if separator => out.push(b'/'),
        _ => {}
    }
    out.len()
}

/// Writes a literal byte; refuses double encoding when this byte completes
/// `%25` + two hex digits in the output, whether those digits came raw or
/// decoded (`%2570`, `%25%37%30`).
fn push_plain(out: &mut Vec<u8>, byte: u8, policy: &PathPolicy) -> Result<(), PathError> {
    out.push(byte);
    // Every `%` in `out` starts an escape (a raw `%` in the input always does),
    // so `%25` followed by two hex digits here is a double encoding.
    if let [.., b'%', b'2', b'5', a, b] = out[..] {
        if policy.reject_double_encoding && a.is_ascii_hexdigit() && b.is_ascii_hexdigit() {
            return Err(PathError::DoubleEncoding);
        }
    }
    Ok(())
}

/// Writes `%XX` with uppercase hex.
fn push_escaped(out: &mut Vec<u8>, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[
        b'%',
        HEX[usize::from(value >> 4)],
        HEX[usize::from(value & 0xF)],
    ]);
}

/// The value of a hex digit, either case.
fn hex(&digit: &u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|v| v as u8)
}

/// RFC 3986 unreserved: ALPHA / DIGIT / `-` / `.` / `_` / `~`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Incremental UTF-8 validation of the decoded bytes, one at a time, without a
/// buffer. Follows RFC 3629 (Unicode table 3-7): the byte after a lead byte has
/// a narrowed range that excludes overlong forms, surrogates and code points
/// above U+10FFFF.
#[derive(Default)]
struct Utf8Check {
    /// Continuation bytes still expected.
    pending: u8,
    /// Lowest allowed value of the next continuation byte.
    low: u8,
    /// Highest allowed value of the next continuation byte.
    high: u8,
}

impl Utf8Check {
    /// Takes the next decoded byte; refuses it if it cannot continue valid UTF-8.
    fn push(&mut self, byte: u8) -> Result<(), PathError> {
        if self.pending > 0 {
            if !(self.low..=self.high).contains(&byte) {
                return Err(PathError::InvalidUtf8);
            }
            (self.pending, self.low, self.high) = (self.pending - 1, 0x80, 0xBF);
            return Ok(());
        }
        (self.pending, self.low, self.high) = match byte {
            0x00..=0x7F => return Ok(()),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Err(PathError::InvalidUtf8),
        };
        Ok(())
    }

    /// Refuses a sequence cut short by the end of the path.
    fn finish(&self) -> Result<(), PathError> {
        if self.pending == 0 {
            Ok(())
        } else {
            Err(PathError::InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use EscapedSlashAction::{Decode, Keep, Reject};
    use PathError::*;

    fn policy(escaped_slashes: EscapedSlashAction) -> PathPolicy {
        PathPolicy {
            escaped_slashes,
            ..PathPolicy::default()
        }
    }

    /// The canonical form of `path`, whether or not it was rewritten.
    fn canonical(path: &[u8], policy: &PathPolicy) -> Result<Vec<u8>, PathError> {
        let mut out = b"stale".to_vec();
        Ok(match normalize(path, policy, &mut out)? {
            Normalized::Unchanged => path.to_vec(),
            Normalized::Rewritten => out,
        })
    }

    /// An input and its canonical form or error.
    type Case = (&'static str, Result<&'static str, PathError>);

    fn check_table(policy: &PathPolicy, cases: &[Case]) {
        for &(input, expected) in cases {
            let got = canonical(input.as_bytes(), policy);
            let got = got.map(|p| String::from_utf8(p).expect("output is UTF-8"));
            assert_eq!(
                got,
                expected.map(str::to_owned),
                "{input:?} under {policy:?}"
            );
        }
    }

    #[test]
    fn default_policy_table() {
        check_table(
            &PathPolicy::default(),
            &[
                // Root, plain paths and trailing slashes.
                ("/", Ok("/")),
                ("/hello", Ok("/hello")),
                ("/hello/", Ok("/hello/")),
                ("/a/b/c.txt", Ok("/a/b/c.txt")),
                ("/.well-known/x", Ok("/.well-known/x")),
                ("/a/.../b", Ok("/a/.../b")),
                ("/a/..b/.c", Ok("/a/..b/.c")),
                // Repeated slashes.
                ("//private/x", Ok("/private/x")),
                ("/a///b//", Ok("/a/b/")),
                ("//", Ok("/")),
                // Dot segments.
                ("/./private/x", Ok("/private/x")),
                ("/hello/../private/x", Ok("/private/x")),
                ("/a/./b", Ok("/a/b")),
                ("/a/b/..", Ok("/a/")),
                ("/a/b/.", Ok("/a/b/")),
                ("/..", Ok("/")),
                ("/.", Ok("/")),
                ("/../../a", Ok("/a")),
                ("/a/../../b", Ok("/b")),
                ("/a//..", Ok("/")),
                // Encoded dots, either case and mixed.
                ("/%2e/private", Ok("/private")),
                ("/a/%2E%2E/b", Ok("/b")),
                ("/a/.%2e/b", Ok("/b")),
                ("/a/%2e./b", Ok("/b")),
                ("/a/.%2E", Ok("/")),
                // Unreserved characters are decoded, others normalised to uppercase.
                ("/%70rivate/x", Ok("/private/x")),
                ("/%7Euser/%2D%5f", Ok("/~user/-_")),
                ("/a%3ab", Ok("/a%3Ab")),
                ("/a%20b", Ok("/a%20b")),
                ("/a%3f", Ok("/a%3F")),
                // Bad escapes.
                ("/a%", Err(BadEscape)),
                ("/a%4", Err(BadEscape)),
                ("/a%zz", Err(BadEscape)),
                ("/a%%41", Err(BadEscape)),
                // Encoded and raw slashes and backslashes.
                ("/private%2fx", Err(EscapedSlash)),
                ("/private%2Fx", Err(EscapedSlash)),
                ("/a%5cb", Err(EscapedSlash)),
                ("/a\\b", Err(Backslash)),
                // Double encoding, raw or decoded digits; a lone %25 is fine.
                ("/%2570rivate", Err(DoubleEncoding)),
                ("/%252F", Err(DoubleEncoding)),
                ("/%25%37%30", Err(DoubleEncoding)),
                ("/%25%37x", Ok("/%257x")),
                ("/100%25", Ok("/100%25")),
                ("/100%25/", Ok("/100%25/")),
                ("/100%25zz", Ok("/100%25zz")),
                // Semicolons, raw or encoded (decode-then-strip servers split on both).
                ("/private;x/y", Err(Semicolon)),
                ("/a;", Err(Semicolon)),
                ("/private%3bx/y", Err(Semicolon)),
                ("/%3B/private", Err(Semicolon)),
                // Controls, NUL, space and DEL, raw or encoded.
                ("/a%00", Err(ControlCharacter)),
                ("/a%0d%0a", Err(ControlCharacter)),
                ("/a%7F", Err(ControlCharacter)),
                ("/a\tb", Err(ControlCharacter)),
                ("/a b", Err(ControlCharacter)),
                ("/a\x7f", Err(ControlCharacter)),
                ("/a\0", Err(ControlCharacter)),
                // UTF-8: valid stays as it is, invalid is refused.
                ("/caf%C3%A9", Ok("/caf%C3%A9")),
                ("/caf%c3%a9", Ok("/caf%C3%A9")),
                ("/café", Ok("/café")),
                ("/caf\u{e9}/./x", Ok("/caf\u{e9}/x")),
                ("/%F0%9F%A6%80", Ok("/%F0%9F%A6%80")),
                ("/%C0%AE%C0%AE/private", Err(InvalidUtf8)),
                ("/%C0%AF", Err(InvalidUtf8)),
                ("/%E0%80%AE", Err(InvalidUtf8)),
                ("/%ED%A0%80", Err(InvalidUtf8)),
                ("/%F4%90%80%80", Err(InvalidUtf8)),
                ("/%C3", Err(InvalidUtf8)),
                ("/%C3/", Err(InvalidUtf8)),
                ("/%C3a%A9", Err(InvalidUtf8)),
                ("/%FF", Err(InvalidUtf8)),
                // Not absolute (the caller handles `OPTIONS *`).
                ("", Err(NotAbsolute)),
                ("*", Err(NotAbsolute)),
                ("a/b", Err(NotAbsolute)),
            ],
        );
    }

    #[test]
    fn keep_policy_table() {
        check_table(
            &policy(Keep),
            &[
                ("/private%2fx", Ok("/private%2Fx")),
                ("/a%5cb", Ok("/a%5Cb")),
                ("/a\\b", Ok("/a\\b")),
                ("/a/..%2F/b", Ok("/a/..%2F/b")),
                ("/a/b\\..", Ok("/a/b\\..")),
                ("/a%2F../b", Ok("/a%2F../b")),
                ("/x/%2e%2e%2f", Ok("/x/..%2F")),
                ("//a%2F/./b", Ok("/a%2F/b")),
                ("/%252F", Err(DoubleEncoding)),
            ],
        );
    }

    #[test]
    fn decode_policy_table() {
        check_table(
            &policy(Decode),
            &[
                ("/private%2fx", Ok("/private/x")),
                ("/a%5Cb", Ok("/a/b")),
                ("/a\\b", Ok("/a/b")),
                ("/a/..%2Fprivate", Ok("/private")),
                ("/a%2F%2F..%5C..\\b", Ok("/b")),
                ("/a\\", Ok("/a/")),
                ("\\a", Err(NotAbsolute)),
            ],
        );
    }

    #[test]
    fn relaxed_flags() {
        let relaxed = PathPolicy {
            reject_double_encoding: false,
            reject_semicolons: false,
            ..PathPolicy::default()
        };
        check_table(
            &relaxed,
            &[
                ("/%2570rivate", Ok("/%2570rivate")),
                ("/%25%37%30", Ok("/%2570")),
                ("/private;x/y", Ok("/private;x/y")),
                ("/a;b/../c", Ok("/c")),
                ("/a%3bb", Ok("/a%3Bb")),
            ],
        );
    }

    #[test]
    fn unchanged_leaves_out_alone_and_canonical_slow_paths_report_unchanged() {
        let mut out = b"stale".to_vec();
        let policy = PathPolicy::default();
        assert_eq!(
            normalize(b"/a/b/", &policy, &mut out),
            Ok(Normalized::Unchanged)
        );
        assert_eq!(out, b"stale");
        for path in ["/caf%C3%A9", "/a%20b", "/café"] {
            assert_eq!(
                normalize(path.as_bytes(), &policy, &mut out),
                Ok(Normalized::Unchanged),
                "{path}"
            );
        }
        assert_eq!(
            normalize(b"/a//b", &policy, &mut out),
            Ok(Normalized::Rewritten)
        );
        assert_eq!(out, b"/a/b");
    }

    #[test]
    fn labels_and_messages() {
        assert_eq!(BadEscape.label(), "bad_escape");
        assert_eq!(InvalidUtf8.label(), "invalid_utf8");
        assert_eq!(
            BadEscape.to_string(),
            "invalid percent-encoding in the path"
        );
        let action: EscapedSlashAction = serde_json::from_str("\"decode\"").unwrap();
        assert_eq!(action, Decode);
        assert_eq!(serde_json::to_string(&Keep).unwrap(), "\"keep\"");
    }

    /// Paths starting with `/`, built from pieces that exercise every rule:
    /// mostly ones a canonical path may keep or the policy may rewrite, some
    /// that make it invalid (so most paths still pass), and any byte.
    fn path_strategy() -> impl Strategy<Value = Vec<u8>> {
        const COMMON: &[&str] = &[
            "/", "/", "/", ".", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%41", "%3a",
            "%C3%A9", "\\", "a", "b", "Z", "0", "7", "e", "F", "-", "~", "é", "€",
        ];
        const HAZARDS: &[&[u8]] = &[
            b"%", b"%00", b"%C0%AE", b";", b" ", b"\xC3", b"\xA9", b"\xF0",
        ];
        let piece = prop_oneof![
            12 => proptest::sample::select(COMMON).prop_map(|p| p.as_bytes().to_vec()),
            1 => proptest::sample::select(HAZARDS).prop_map(<[u8]>::to_vec),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|pieces| {
            let mut path = vec![b'/'];
            pieces.iter().for_each(|p| path.extend_from_slice(p));
            path
        })
    }

    /// The shape every canonical path has.
    fn assert_canonical_shape(path: &[u8]) {
        let text = String::from_utf8_lossy(path);
        assert!(path.starts_with(b"/"), "{text:?}");
        for bad in [&b"//"[..], b"/./", b"/../"] {
            assert!(!path.windows(bad.len()).any(|w| w == bad), "{text:?}");
        }
        assert!(
            !path.ends_with(b"/.") && !path.ends_with(b"/.."),
            "{text:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn canonical_forms_are_fixed_points(path in path_strategy()) {
            for action in [Reject, Keep, Decode] {
                let policy = policy(action);
                let mut out = Vec::new();
                let Ok(outcome) = normalize(&path, &policy, &mut out) else { continue };
                let canonical = match outcome {
                    Normalized::Unchanged => path.clone(),
                    Normalized::Rewritten => {
                        prop_assert_ne!(&out, &path);
                        out
                    }
                };
                assert_canonical_shape(&canonical);
                let mut again = Vec::new();
                prop_assert_eq!(normalize(&canonical, &policy, &mut again), Ok(Normalized::Unchanged));
            }
        }

        #[test]
        fn slash_action_matters_only_with_slashes(path in path_strategy()) {
            if let Ok(strict) = canonical(&path, &PathPolicy::default()) {
                prop_assert_eq!(canonical(&path, &policy(Keep)), Ok(strict.clone()));
                prop_assert_eq!(canonical(&path, &policy(Decode)), Ok(strict));
            }
        }
    }
}
