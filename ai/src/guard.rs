//! Guardrails: deny patterns and PII redaction for prompts and completions,
//! including redaction of streamed text whose secrets straddle chunk boundaries.
//!
//! How it works:
//! 1. [`Guardrail::new`] compiles a rule's deny patterns into one
//!    [`RegexSet`] (one pass over the text however many patterns there are),
//!    with size limits, and reports the first pattern that does not compile.
//! 2. The PII detectors are built-in regexes compiled once per process and
//!    shared by every guardrail (generic secrets use a byte loop instead, which
//!    is faster for a pattern with no literal). Each kind has a cheap
//!    pre-filter (an `@` for e-mail, enough digits for phones and cards) and a
//!    validation step the regex cannot express (Luhn for cards, date and
//!    digit-count checks for phones, character mix and entropy for generic
//!    secrets).
//! 3. [`Guardrail::redact`] collects the validated spans of every enabled kind,
//!    keeps the leftmost (then longest) of overlapping spans, and replaces each
//!    with `[REDACTED:<label>]`. When nothing matches it returns `None` without
//!    allocating.
//! 4. [`StreamRedactor`] redacts a stream: it emits everything up to the last
//!    *safe cut*, the end of a whitespace character that no detector's match can
//!    contain (any whitespace but a space, or a space not preceded by a digit or
//!    `)`, the only places a space occurs inside a phone or card number). Every
//!    detector only looks at its match and the one character on either side,
//!    and treats whitespace exactly like the start of the text, so redacting
//!    the pieces between safe cuts gives the same result as redacting the whole
//!    text. It holds back at most [`STREAM_MAX_HOLD_BYTES`]; past that it cuts
//!    anyway (after whitespace if it can), and only then may a secret longer
//!    than the bound be redacted as two pieces, or escape if a piece gets too
//!    short to be recognised.
//!
//! What is detected, and the heuristics that keep false positives low:
//! - **email**: `local@domain.tld` with an ASCII domain and an alphabetic TLD
//!   of two or more letters; image names such as `icon@2x.png` are skipped.
//! - **phone**: 9 to 15 digits in one of three shapes: international
//!   (`+CC` then 2 to 5 groups, optionally separated by a space, dot or dash,
//!   with an optional area code in parentheses); North American
//!   (`555-123-4567`, `(555) 123 4567`, `1 555.123.4567`: separators required);
//!   national with a trunk `0` (`020 7946 0958`, `06 12 34 56 78`: at least one
//!   separator). Plain digit runs without `+` are never phones, matches glued
//!   to a word, `.`, `-` or `/` are skipped, and candidates containing a date
//!   (`05.06.2024`, `2024-01-15`) are rejected. If a candidate is too long its
//!   longest valid prefix ending before a separator is used.
//! - **card**: 13 to 19 digits starting with 2 to 6 (the card networks' ranges),
//!   either unseparated or in groups of 3 to 6 digits split by single spaces or
//!   dashes, passing the Luhn check; not preceded by `+` (phones) or by a
//!   decimal point (long fractions). As for phones, a too-long run falls back to
//!   its longest valid prefix ending before a separator.
//! - **api_key**: known prefixes: OpenAI and Anthropic `sk-...` (incl.
//!   `sk-proj-`, `sk-ant-`), AWS `AKIA`/`ASIA` access key ids, GitHub
//!   `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and `github_pat_`, Slack `xox[baprs]-`,
//!   Stripe `sk_live_`/`rk_live_`, Google `AIza`, and JWTs (`eyJ...`); plus
//!   generic secrets: runs of 32 or more base64/base64url characters with at
//!   least two upper-case letters, two lower-case letters and two digits and a
//!   Shannon entropy of at least 4 bits per character, or hex runs of 32 or more
//!   with both digits and letters and more than 3.2 bits per character. Hex
//!   hashes (git SHAs, SHA-256) are therefore redacted too: we prefer that to
//!   leaking 32-hex API keys. `Bearer <token>` has no rule of its own: the token
//!   is caught when it is a JWT, has a known prefix or looks random.
//!
//! Deny patterns apply to whole texts ([`Guardrail::check_deny`]); there is no
//! streaming deny check.

use std::cmp::Reverse;
use std::fmt;
use std::ops::AddAssign;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// Most bytes a [`StreamRedactor`] holds back before it emits text anyway.
pub const STREAM_MAX_HOLD_BYTES: usize = 512;

/// Compiled-size limit for one deny pattern.
const DENY_PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Compiled-size limit for a rule's deny patterns together.
const DENY_SET_SIZE_LIMIT: usize = 8 << 20;
/// Cache limit for the lazy DFA of a rule's deny set.
const DENY_SET_DFA_SIZE_LIMIT: usize = 8 << 20;

const PHONE_MIN_DIGITS: usize = 9;
const PHONE_MAX_DIGITS: usize = 15;
const CARD_MIN_DIGITS: usize = 13;
const CARD_MAX_DIGITS: usize = 19;
const GENERIC_SECRET_MIN_LEN: usize = 32;
const BASE64_MIN_ENTROPY_BITS: f64 = 4.0;
const HEX_MIN_ENTROPY_BITS: f64 = 3.2;

/// Errors building a [`Guardrail`] or parsing a [`PiiKind`].
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A deny pattern does not parse or compiles too big.
    #[error("guardrail {rule:?}: deny pattern {index} ({pattern:?}) does not compile: {reason}")]
    InvalidDenyPattern {
        /// The guardrail's name.
        rule: String,
        /// Index of the pattern in the rule's deny list.
        index: usize,
        /// The pattern as configured.
        pattern: String,
        /// The regex compiler's explanation.
        reason: String,
    },
    /// Each deny pattern compiles alone, but all of them together are too big.
    #[error("guardrail {rule:?}: deny patterns together exceed the size limit: {reason}")]
    DenySetTooLarge {
        /// The guardrail's name.
        rule: String,
        /// The regex compiler's explanation.
        reason: String,
    },
    /// A PII kind name that is not one of `email`, `phone`, `card`, `api_key`.
    #[error("unknown PII kind {0:?} (expected one of: email, phone, card, api_key)")]
    UnknownPiiKind(String),
}

/// A kind of personal or secret data that a guardrail can redact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    /// E-mail addresses.
    Email,
    /// Phone numbers with at least 9 digits.
    Phone,
    /// Payment card numbers that pass the Luhn check.
    CardNumber,
    /// API keys, tokens and other secret-looking strings.
    ApiKey,
}

impl PiiKind {
    /// Every kind, in declaration order.
    pub const ALL: [PiiKind; 4] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::CardNumber,
        PiiKind::ApiKey,
    ];

    /// The name used in configuration and in redaction markers.
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CardNumber => "card",
            PiiKind::ApiKey => "api_key",
        }
    }

    /// The text that replaces a redacted item.
    fn marker(self) -> &'static str {
        match self {
            PiiKind::Email => "[REDACTED:email]",
            PiiKind::Phone => "[REDACTED:phone]",
            PiiKind::CardNumber => "[REDACTED:card]",
            PiiKind::ApiKey => "[REDACTED:api_key]",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for PiiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for PiiKind {
    type Err = GuardError;

    fn from_str(label: &str) -> Result<Self, Self::Err> {
        PiiKind::ALL
            .into_iter()
            .find(|kind| kind.label() == label)
            .ok_or_else(|| GuardError::UnknownPiiKind(label.to_owned()))
    }
}

/// How many items of each kind a redaction replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedactionCounts {
    /// E-mail addresses.
    pub email: u32,
    /// Phone numbers.
    pub phone: u32,
    /// Card numbers.
    pub card: u32,
    /// API keys and secrets.
    pub api_key: u32,
}

impl RedactionCounts {
    /// The count for one kind.
    pub fn get(&self, kind: PiiKind) -> u32 {
        match kind {
            PiiKind::Email => self.email,
            PiiKind::Phone => self.phone,
            PiiKind::CardNumber => self.card,
            PiiKind::ApiKey => self.api_key,
        }
    }

    /// All items redacted, of every kind.
    pub fn total(&self) -> u32 {
        self.email + self.phone + self.card + self.api_key
    }

    fn record(&mut self, kind: PiiKind) {
        let count = match kind {
            PiiKind::Email => &mut self.email,
            PiiKind::Phone => &mut self.phone,
            PiiKind::CardNumber => &mut self.card,
            PiiKind::ApiKey => &mut self.api_key,
        };
        *count += 1;
    }
}

impl AddAssign for RedactionCounts {
    fn add_assign(&mut self, other: RedactionCounts) {
        self.email += other.email;
        self.phone += other.phone;
        self.card += other.card;
        self.api_key += other.api_key;
    }
}

/// One compiled guardrail rule: deny patterns and the PII kinds it redacts.
#[derive(Debug)]
pub struct Guardrail {
    name: String,
    deny: RegexSet,
    /// Bit set of [`PiiKind::bit`].
    redact: u8,
}

impl Guardrail {
    /// Compiles a rule. `deny` are regexes (`regex` crate syntax; prefix a
    /// pattern with `(?i)` to ignore case); `redact` the PII kinds to redact.
    pub fn new(name: &str, deny: &[String], redact: &[PiiKind]) -> Result<Guardrail, GuardError> {
        for (index, pattern) in deny.iter().enumerate() {
            RegexBuilder::new(pattern)
                .size_limit(DENY_PATTERN_SIZE_LIMIT)
                .build()
                .map_err(|error| GuardError::InvalidDenyPattern {
                    rule: name.to_owned(),
                    index,
                    pattern: pattern.clone(),
                    reason: error.to_string(),
                })?;
        }
        let deny = RegexSetBuilder::new(deny)
            .size_limit(DENY_SET_SIZE_LIMIT)
            .dfa_size_limit(DENY_SET_DFA_SIZE_LIMIT)
            .build()
            .map_err(|error| GuardError::DenySetTooLarge {
                rule: name.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(Guardrail {
            name: name.to_owned(),
            deny,
            redact: redact.iter().fold(0, |bits, kind| bits | kind.bit()),
        })
    }

    /// The rule's name, for logs and error bodies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The deny pattern at `index`, as configured.
    pub fn deny_pattern(&self, index: usize) -> Option<&str> {
        self.deny.patterns().get(index).map(String::as_str)
    }

    /// Whether this rule redacts `kind`.
    pub fn redacts(&self, kind: PiiKind) -> bool {
        self.redact & kind.bit() != 0
    }

    /// Index of the first deny pattern (in configuration order) that matches
    /// `text`, or `None`. All patterns are checked in one pass.
    pub fn check_deny(&self, text: &str) -> Option<usize> {
        if !self.deny.is_match(text) {
            return None;
        }
        self.deny.matches(text).into_iter().next()
    }

    /// `text` with every enabled PII kind replaced by `[REDACTED:<label>]`, and
    /// how many of each were replaced; `None` (and no allocation) when nothing
    /// matched.
    pub fn redact(&self, text: &str) -> Option<(String, RedactionCounts)> {
        let mut spans = Vec::new();
        self.find_spans(text, &mut spans);
        if spans.is_empty() {
            return None;
        }
        let mut counts = RedactionCounts::default();
        Some((render(text, &spans, &mut counts), counts))
    }

    /// Fills `spans` with the non-overlapping redaction spans of `text`, in order.
    fn find_spans(&self, text: &str, spans: &mut Vec<Span>) {
        if self.redact == 0 {
            return;
        }
        let detectors = detectors();
        if self.redacts(PiiKind::Email) && text.contains('@') {
            for found in detectors.email.find_iter(text) {
                if accept_email(found.as_str()) {
                    spans.push(Span::new(found.start(), found.end(), PiiKind::Email));
                }
            }
        }
        let wants_digits = self.redacts(PiiKind::Phone) || self.redacts(PiiKind::CardNumber);
        let digits = if wants_digits {
            text.bytes().filter(u8::is_ascii_digit).count()
        } else {
            0
        };
        if self.redacts(PiiKind::Phone) && digits >= PHONE_MIN_DIGITS {
            for found in detectors.phone.find_iter(text) {
                if let Some(end) = accept_phone(text, found.start(), found.end(), &detectors.date) {
                    spans.push(Span::new(found.start(), end, PiiKind::Phone));
                }
            }
        }
        if self.redacts(PiiKind::CardNumber) && digits >= CARD_MIN_DIGITS {
            for found in detectors.card.find_iter(text) {
                if let Some(end) = accept_card(text, found.start(), found.end()) {
                    spans.push(Span::new(found.start(), end, PiiKind::CardNumber));
                }
            }
        }
        if self.redacts(PiiKind::ApiKey) {
            for found in detectors.known_key.find_iter(text) {
                spans.push(Span::new(found.start(), found.end(), PiiKind::ApiKey));
            }
            for (start, end) in secret_runs(text) {
                if accept_generic_secret(&text[start..end]) {
                    spans.push(Span::new(start, end, PiiKind::ApiKey));
                }
            }
        }
        if spans.len() > 1 {
            spans.sort_unstable_by_key(|span| (span.start, Reverse(span.end), span.kind));
            let mut covered_to = 0;
            spans.retain(|span| {
                let keep = span.start >= covered_to;
                if keep {
                    covered_to = span.end;
                }
                keep
            });
        }
    }
}

/// Redacts a stream of text deltas as [`Guardrail::redact`] would redact their
/// concatenation, holding back only the tail that could still become part of a
/// match (at most [`STREAM_MAX_HOLD_BYTES`]).
#[derive(Debug)]
pub struct StreamRedactor {
    guard: Arc<Guardrail>,
    /// Text received but not yet emitted.
    pending: String,
    /// Reused span buffer.
    spans: Vec<Span>,
    counts: RedactionCounts,
}

impl StreamRedactor {
    /// A redactor applying `guard`'s PII kinds.
    pub fn new(guard: Arc<Guardrail>) -> StreamRedactor {
        StreamRedactor {
            guard,
            pending: String::new(),
            spans: Vec::new(),
            counts: RedactionCounts::default(),
        }
    }

    /// Takes the next delta and returns the text that is safe to emit now
    /// (possibly empty).
    pub fn push(&mut self, delta: &str) -> String {
        if self.guard.redact == 0 {
            return delta.to_owned();
        }
        self.pending.push_str(delta);
        let mut cut = last_safe_cut(&self.pending);
        if self.pending.len() - cut > STREAM_MAX_HOLD_BYTES {
            cut = forced_cut(&self.pending);
        }
        self.emit(cut)
    }

    /// Ends the stream and returns the held-back text, redacted.
    pub fn finish(&mut self) -> String {
        self.emit(self.pending.len())
    }

    /// Items redacted so far, over the whole stream.
    pub fn counts(&self) -> RedactionCounts {
        self.counts
    }

    /// Bytes received but not emitted yet.
    pub fn held_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Redacts and returns `pending[..cut]`, keeping the rest.
    fn emit(&mut self, cut: usize) -> String {
        if cut == 0 {
            return String::new();
        }
        self.spans.clear();
        let piece = &self.pending[..cut];
        self.guard.find_spans(piece, &mut self.spans);
        let out = if self.spans.is_empty() {
            piece.to_owned()
        } else {
            render(piece, &self.spans, &mut self.counts)
        };
        self.pending.drain(..cut);
        out
    }
}

/// A validated match: `text[start..end]` is redacted as `kind`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    kind: PiiKind,
}

impl Span {
    fn new(start: usize, end: usize, kind: PiiKind) -> Span {
        Span { start, end, kind }
    }
}

/// `text` with `spans` (sorted, disjoint) replaced by their markers.
fn render(text: &str, spans: &[Span], counts: &mut RedactionCounts) -> String {
    let mut out = String::with_capacity(text.len() + spans.len() * 16);
    let mut copied_to = 0;
    for span in spans {
        out.push_str(&text[copied_to..span.start]);
        out.push_str(span.kind.marker());
        counts.record(span.kind);
        copied_to = span.end;
    }
    out.push_str(&text[copied_to..]);
    out
}

/// The end of the last whitespace character in `text` that no detector's
/// match can contain, or 0. Any whitespace but U+0020 qualifies; a space
/// qualifies unless it follows a digit or `)`.
fn last_safe_cut(text: &str) -> usize {
    let mut chars = text.char_indices().rev().peekable();
    while let Some((index, c)) = chars.next() {
        if !c.is_whitespace() {
            continue;
        }
        let glued = c == ' ' && matches!(chars.peek(), Some((_, '0'..='9' | ')')));
        if !glued {
            return index + c.len_utf8();
        }
    }
    0
}

/// A cut that leaves at most [`STREAM_MAX_HOLD_BYTES`] held: after the first
/// whitespace in the last that many bytes if there is one, else at the first
/// character boundary that leaves no more than that.
fn forced_cut(text: &str) -> usize {
    let mut earliest = text.len() - STREAM_MAX_HOLD_BYTES;
    while !text.is_char_boundary(earliest) {
        earliest += 1;
    }
    text[earliest..]
        .char_indices()
        .find(|(_, c)| c.is_whitespace())
        .map_or(earliest, |(index, c)| earliest + index + c.len_utf8())
}

/// The built-in PII regexes, compiled once per process.
struct Detectors {
    email: Regex,
    phone: Regex,
    date: Regex,
    card: Regex,
    known_key: Regex,
}

fn detectors() -> &'static Detectors {
    static DETECTORS: OnceLock<Detectors> = OnceLock::new();
    DETECTORS.get_or_init(|| {
        // Constant patterns, each exercised by the tests: failing to compile
        // one is a bug in this file, not a runtime condition.
        let compile = |pattern: &str| Regex::new(pattern).expect("built-in PII pattern compiles");
        Detectors {
            email: compile(EMAIL_PATTERN),
            phone: compile(PHONE_PATTERN),
            date: compile(DATE_PATTERN),
            card: compile(CARD_PATTERN),
            known_key: compile(KNOWN_KEY_PATTERN),
        }
    })
}

// Invariant the stream redactor relies on: no pattern matches a whitespace
// character other than a single space right after a digit or `)`.

const EMAIL_PATTERN: &str = r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?-u:\b)";

const PHONE_PATTERN: &str = concat!(
    // International: +CC, then 2 to 5 groups, the last of digits.
    r"(?-u:\B)\+[1-9][0-9]{0,2}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,4}[ .-]?[0-9]{1,5}(?-u:\b)",
    // North American: optional 1, area code (parenthesised or not), 3-4 digits.
    r"|(?:(?-u:\b)1[ .-])?(?:(?-u:\B)\([0-9]{3}\)[ .-]?|(?-u:\b)[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}(?-u:\b)",
    // National with trunk prefix 0, at least one separator.
    r"|(?:(?-u:\B)\(0[0-9]{1,4}\)|(?-u:\b)0[0-9]{1,4})(?:[ .-][0-9]{2,8}){1,4}(?-u:\b)",
);

const DATE_PATTERN: &str = concat!(
    r"(?-u:\b)(?:",
    r"[0-9]{1,2}\.[0-9]{1,2}\.(?:19|20)[0-9]{2}",
    r"|[0-9]{1,2}-[0-9]{1,2}-(?:19|20)[0-9]{2}",
    r"|(?:19|20)[0-9]{2}\.[0-9]{1,2}\.[0-9]{1,2}",
    r"|(?:19|20)[0-9]{2}-[0-9]{1,2}-[0-9]{1,2}",
    r")(?-u:\b)",
);

const CARD_PATTERN: &str = r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)";

const KNOWN_KEY_PATTERN: &str = concat!(
    r"(?-u:\b)(?:",
    r"sk-[A-Za-z0-9_-]{20,}",
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
    r"|gh[pousr]_[A-Za-z0-9]{36,}",
    r"|github_pat_[A-Za-z0-9_]{22,}",
    r"|xox[baprs]-[A-Za-z0-9-]{10,}",
    r"|[rs]k_live_[A-Za-z0-9]{16,}",
    r"|AIza[A-Za-z0-9_-]{35}",
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    r")",
);

/// Runs of at least [`GENERIC_SECRET_MIN_LEN`] base64/base64url characters
/// (`[A-Za-z0-9+/_-]`), each with up to two trailing `=`, as `(start, end)`.
/// The same as the regex `[A-Za-z0-9+/_-]{32,}={0,2}`, but a byte loop is
/// several times faster than a DFA for a pattern without a literal to look for.
fn secret_runs(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    let mut position = 0;
    std::iter::from_fn(move || {
        while position < bytes.len() {
            let start = position;
            while position < bytes.len() && is_secret_byte(bytes[position]) {
                position += 1;
            }
            if position - start >= GENERIC_SECRET_MIN_LEN {
                let mut end = position;
                while end < bytes.len() && end - position < 2 && bytes[end] == b'=' {
                    end += 1;
                }
                position = end;
                return Some((start, end));
            }
            position += 1;
        }
        None
    })
}

fn is_secret_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'_' | b'-')
}

/// File names such as `icon@2x.png` look like addresses; their "TLD" gives
/// them away.
fn accept_email(candidate: &str) -> bool {
    const FILE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "gif", "svg", "webp", "pdf"];
    let tld = candidate.rsplit('.').next().unwrap_or_default();
    !FILE_EXTENSIONS
        .iter()
        .any(|extension| tld.eq_ignore_ascii_case(extension))
}

/// End of the phone number in `text[start..end]`, if it is one.
fn accept_phone(text: &str, start: usize, end: usize, date: &Regex) -> Option<usize> {
    if matches!(text[..start].chars().next_back(), Some('.' | '-' | '/')) {
        return None;
    }
    longest_valid_prefix(&text[start..end], |candidate| {
        let digits = count_digits(candidate);
        (PHONE_MIN_DIGITS..=PHONE_MAX_DIGITS).contains(&digits) && !date.is_match(candidate)
    })
    .map(|length| start + length)
}

/// End of the card number in `text[start..end]`, if it is one.
fn accept_card(text: &str, start: usize, end: usize) -> Option<usize> {
    let mut before = text[..start].chars().rev();
    match (before.next(), before.next()) {
        (Some('+'), _) => return None,
        (Some('.'), Some(c)) if c.is_ascii_digit() => return None,
        _ => {}
    }
    longest_valid_prefix(&text[start..end], is_card_number).map(|length| start + length)
}

fn is_card_number(candidate: &str) -> bool {
    if !matches!(candidate.as_bytes().first(), Some(b'2'..=b'6')) {
        return false;
    }
    if !(CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&count_digits(candidate)) {
        return false;
    }
    let separated = candidate.contains([' ', '-']);
    let grouped = !separated
        || candidate
            .split([' ', '-'])
            .all(|group| (3..=6).contains(&group.len()));
    grouped && luhn_valid(candidate)
}

/// Length of the longest prefix of `candidate` that is the whole candidate or
/// ends just before a separator (space, dot or dash) and satisfies `valid`.
fn longest_valid_prefix(candidate: &str, valid: impl Fn(&str) -> bool) -> Option<usize> {
    if valid(candidate) {
        return Some(candidate.len());
    }
    candidate
        .char_indices()
        .rev()
        .filter(|&(index, c)| index > 0 && matches!(c, ' ' | '.' | '-'))
        .map(|(index, _)| index)
        .find(|&index| valid(&candidate[..index]))
}

fn count_digits(text: &str) -> usize {
    text.bytes().filter(u8::is_ascii_digit).count()
}

/// The Luhn (mod 10) check over the ASCII digits of `number`, ignoring
/// everything else.
fn luhn_valid(number: &str) -> bool {
    let mut sum = 0;
    let mut double = false;
    for byte in number.bytes().rev().filter(u8::is_ascii_digit) {
        let mut digit = u32::from(byte - b'0');
        if double {
            digit *= 2;
            if digit > 9 {
                digit -= 9;
            }
        }
        sum += digit;
        double = !double;
    }
    sum % 10 == 0
}

/// Whether a long base64/hex run looks random enough to be a secret.
fn accept_generic_secret(candidate: &str) -> bool {
    let token = candidate.trim_end_matches('=');
    let bytes = token.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if bytes.iter().all(u8::is_ascii_hexdigit) {
        return digits > 0 && digits < bytes.len() && shannon_entropy(bytes) > HEX_MIN_ENTROPY_BITS;
    }
    let upper = bytes.iter().filter(|b| b.is_ascii_uppercase()).count();
    let lower = bytes.iter().filter(|b| b.is_ascii_lowercase()).count();
    upper >= 2 && lower >= 2 && digits >= 2 && shannon_entropy(bytes) >= BASE64_MIN_ENTROPY_BITS
}

/// Shannon entropy of the byte distribution of `bytes`, in bits per byte.
fn shannon_entropy(bytes: &[u8]) -> f64 {
    let mut frequencies = [0u32; 256];
    for &byte in bytes {
        frequencies[usize::from(byte)] += 1;
    }
    let length = bytes.len() as f64;
    frequencies
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / length;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(kinds: &[PiiKind]) -> Guardrail {
        Guardrail::new("test", &[], kinds).unwrap()
    }

    fn redacted(kinds: &[PiiKind], text: &str) -> String {
        guard(kinds)
            .redact(text)
            .map_or_else(|| text.to_owned(), |(out, _)| out)
    }

    fn all(text: &str) -> String {
        redacted(&PiiKind::ALL, text)
    }

    #[test]
    fn kinds_parse_from_their_labels() {
        for kind in PiiKind::ALL {
            assert_eq!(kind.label().parse::<PiiKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.label());
        }
        assert_eq!("card".parse::<PiiKind>().unwrap(), PiiKind::CardNumber);
        let error = "ssn".parse::<PiiKind>().unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"unknown PII kind "ssn" (expected one of: email, phone, card, api_key)"#
        );
    }

    #[test]
    fn deny_returns_first_matching_pattern_index() {
        let deny = vec![
            r"(?i)ignore (all )?previous instructions".to_owned(),
            r"\bpassword\b".to_owned(),
            r"rm -rf".to_owned(),
        ];
        let rule = Guardrail::new("jailbreak", &deny, &[]).unwrap();
        assert_eq!(rule.name(), "jailbreak");
        assert_eq!(
            rule.check_deny("please IGNORE previous instructions"),
            Some(0)
        );
        assert_eq!(
            rule.check_deny("my password is hunter2, run rm -rf /"),
            Some(1)
        );
        assert_eq!(rule.check_deny("run rm -rf /"), Some(2));
        assert_eq!(rule.check_deny("passwords are fine"), None);
        assert_eq!(rule.deny_pattern(2), Some("rm -rf"));
        assert_eq!(rule.deny_pattern(3), None);
        assert_eq!(guard(&[]).check_deny("anything"), None);
    }

    #[test]
    fn invalid_deny_pattern_names_rule_index_and_reason() {
        let deny = vec!["fine".to_owned(), "(unclosed".to_owned()];
        let error = Guardrail::new("strict", &deny, &[]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(
                r#"guardrail "strict": deny pattern 1 ("(unclosed") does not compile: "#
            ),
            "{message}"
        );
        assert!(message.contains("unclosed group"), "{message}");
        assert!(matches!(
            error,
            GuardError::InvalidDenyPattern { index: 1, .. }
        ));
    }

    #[test]
    fn oversized_deny_pattern_is_rejected() {
        let deny = vec![r"\w{1000}\w{1000}\w{1000}".to_owned()];
        let error = Guardrail::new("huge", &deny, &[]).unwrap_err();
        assert!(matches!(
            error,
            GuardError::InvalidDenyPattern { index: 0, .. }
        ));
        assert!(error.to_string().contains("size limit"), "{error}");
    }

    #[test]
    fn nothing_to_redact_returns_none() {
        let rule = guard(&PiiKind::ALL);
        assert!(rule.redact("").is_none());
        assert!(rule
            .redact("Just a sentence about the weather, 42 degrees.")
            .is_none());
        assert!(guard(&[]).redact("mail bob@example.com").is_none());
    }

    #[test]
    fn only_enabled_kinds_are_redacted() {
        let text = "bob@example.com 4111 1111 1111 1111";
        assert_eq!(
            redacted(&[PiiKind::Email], text),
            "[REDACTED:email] 4111 1111 1111 1111"
        );
        assert_eq!(
            redacted(&[PiiKind::CardNumber], text),
            "bob@example.com [REDACTED:card]"
        );
    }

    #[test]
    fn emails() {
        let (out, counts) = guard(&[PiiKind::Email])
            .redact("Write to bob@example.com or <alice.smith+tag@mail.example.co.uk>.")
            .unwrap();
        assert_eq!(out, "Write to [REDACTED:email] or <[REDACTED:email]>.");
        assert_eq!(
            counts,
            RedactionCounts {
                email: 2,
                ..Default::default()
            }
        );
        for text in [
            "user@localhost",
            "see @mentions and @app.route",
            "npm i left-pad@1.3.0",
            "icons: logo@2x.png, banner@3x.JPG",
            "a @ b.com",
        ] {
            assert_eq!(all(text), text);
        }
    }

    #[test]
    fn phones() {
        for (text, expected) in [
            ("call +1 (555) 123-4567 now", "call [REDACTED:phone] now"),
            ("UK: +44 20 7946 0958.", "UK: [REDACTED:phone]."),
            ("+4915112345678", "[REDACTED:phone]"),
            ("+33 6 12 34 56 78", "[REDACTED:phone]"),
            ("Berlin +49 30 2012 3456", "Berlin [REDACTED:phone]"),
            ("US 555-123-4567", "US [REDACTED:phone]"),
            ("(555) 123 4567", "[REDACTED:phone]"),
            ("1 555.123.4567", "[REDACTED:phone]"),
            ("London 020 7946 0958", "London [REDACTED:phone]"),
            ("Paris 06 12 34 56 78", "Paris [REDACTED:phone]"),
        ] {
            assert_eq!(redacted(&[PiiKind::Phone], text), expected, "{text}");
        }
        for text in [
            "version 1.2.3",
            "release 10.15.7 build 2024",
            "order 12345678901",
            "total 1 234 567 890",
            "on 2024-01-15 at 10:30",
            "meet 05.06.2024 12.30",
            "ip 192.168.100.200",
            "local 555-1234",
            "id abc555-123-4567",
            "ref v.555-123-4567",
            "years 2023 2024 2025",
        ] {
            assert_eq!(redacted(&[PiiKind::Phone], text), text, "{text}");
        }
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("378282246310005"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("79927398710"));
    }

    #[test]
    fn cards() {
        for (text, expected) in [
            ("card 4111 1111 1111 1111 exp", "card [REDACTED:card] exp"),
            ("4111-1111-1111-1111", "[REDACTED:card]"),
            ("4111111111111111", "[REDACTED:card]"),
            ("amex 3782 822463 10005.", "amex [REDACTED:card]."),
            ("csv,5555555555554444,12/27", "csv,[REDACTED:card],12/27"),
            // A trailing group makes the whole run fail Luhn; the card prefix is kept.
            ("4111 1111 1111 1111 123", "[REDACTED:card] 123"),
        ] {
            assert_eq!(redacted(&[PiiKind::CardNumber], text), expected, "{text}");
        }
        for text in [
            "4111 1111 1111 1112",
            "4111111111111112",
            "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
            "pi 3.1415926535897932",
            "call +4111111111111111",
            "id 411111111111111111111111",
            "zeros 0000 0000 0000 0000",
        ] {
            assert_eq!(redacted(&[PiiKind::CardNumber], text), text, "{text}");
        }
    }

    #[test]
    fn known_api_keys() {
        for key in [
            "sk-abcdefghijklmnopqrstuvwxyz0123",
            "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_AbCdEf",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-0123456789",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            "xoxb-1234567890-abcdefghij",
            "sk_live_abcdefghijklmnop1234",
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ] {
            let text = format!("token: {key} (rotate it)");
            let (out, counts) = guard(&[PiiKind::ApiKey]).redact(&text).unwrap();
            assert_eq!(out, "token: [REDACTED:api_key] (rotate it)", "{key}");
            assert_eq!(counts.api_key, 1, "{key}");
        }
        for text in [
            "scikit-learn and task-runner",
            "sk-short",
            "AKIA is a prefix",
            "the xoxb- prefix alone",
            "Authorization: Bearer abc",
        ] {
            assert_eq!(redacted(&[PiiKind::ApiKey], text), text, "{text}");
        }
    }

    /// Deterministic xorshift generator for random-looking tokens.
    fn random_tokens(alphabet: &[u8], length: usize, count: usize) -> Vec<String> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..count)
            .map(|_| {
                (0..length)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        char::from(alphabet[(state % alphabet.len() as u64) as usize])
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn generic_secrets_are_caught_reliably() {
        let base64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let hex = b"0123456789abcdef";
        for (alphabet, minimum) in [(&base64[..], 95), (&hex[..], 98)] {
            let caught = random_tokens(alphabet, 32, 100)
                .iter()
                .filter(|token| all(&format!("key={token};")) == "key=[REDACTED:api_key];")
                .count();
            assert!(caught >= minimum, "{caught} of 100 caught");
        }
    }

    #[test]
    fn secret_runs_match_the_equivalent_regex() {
        let regex = Regex::new(r"[A-Za-z0-9+/_-]{32,}={0,2}").unwrap();
        let long = "Ab1+/_-".repeat(6);
        for text in [
            String::new(),
            "short run only".to_owned(),
            long.clone(),
            format!("{long}==="),
            format!("x {long}=={long} é{long}= {}", &long[..31]),
            format!("{}é{}", &long[..31], &long[..32]),
        ] {
            let expected: Vec<_> = regex
                .find_iter(&text)
                .map(|m| (m.start(), m.end()))
                .collect();
            assert_eq!(secret_runs(&text).collect::<Vec<_>>(), expected, "{text:?}");
        }
    }

    #[test]
    fn generic_secret_false_positives_are_rare() {
        for text in [
            "/home/user/projects/Hypergate2/src/main.rs",
            "https://example.com/docs/getting-started/Installation2Guide",
            "test_GetUserAccountById2WithInvalidTokenResponse",
            "my_very_long_function_name_for_testing_purposes",
            "550e8400-e29b-41d4-a716-446655440000",
            "00000000000000000000000000000000000000",
            "ThisIsAVeryLongCamelCaseIdentifierName",
            "----------------------------------------",
        ] {
            assert_eq!(redacted(&[PiiKind::ApiKey], text), text, "{text}");
        }
        // A hex digest is redacted: 32+ hex characters may be an API key.
        assert_eq!(
            redacted(
                &[PiiKind::ApiKey],
                "commit 3f786850e387550fdab836ed7e6dc881de23001b"
            ),
            "commit [REDACTED:api_key]"
        );
    }

    #[test]
    fn overlapping_matches_keep_the_leftmost_longest() {
        let (out, counts) = guard(&PiiKind::ALL)
            .redact("mail sk-abcdefghijklmnopqrstuvwxyz0123@example.com and 4111 1111 1111 1111")
            .unwrap();
        assert_eq!(out, "mail [REDACTED:email] and [REDACTED:card]");
        assert_eq!(
            counts,
            RedactionCounts {
                email: 1,
                phone: 0,
                card: 1,
                api_key: 0
            }
        );
        assert_eq!(counts.total(), 2);
        assert_eq!(counts.get(PiiKind::CardNumber), 1);
    }

    #[test]
    fn counts_add_up() {
        let mut total = RedactionCounts {
            email: 1,
            ..Default::default()
        };
        total += RedactionCounts {
            email: 2,
            phone: 1,
            card: 0,
            api_key: 3,
        };
        assert_eq!(
            total,
            RedactionCounts {
                email: 3,
                phone: 1,
                card: 0,
                api_key: 3
            }
        );
    }

    const STREAM_TEXTS: &[&str] = &[
        "Contact bob@example.com or alice.smith+tag@mail.example.co.uk today.",
        "Card: 4111 1111 1111 1111, exp 12/25. Not: 4111-1111-1111-1112.",
        "Call +1 (555) 123-4567 or 020 7946 0958 now",
        "key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z and AKIAIOSFODNN7EXAMPLE end",
        "Numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17, version 1.2.3 on 2024-01-15",
        "Grüße an jürgen@example.de — Tel. +49 30 2012 3456 ✓",
        "email me at bob@example.com",
        "4111 1111 1111 1111 123",
        "no pii here at all,\njust  words\tand 42 numbers.",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U ok",
        "5555 5555 5555 4444\n+33 6 12 34 56 78 meet 05.06.2024 12.30",
    ];

    fn stream(rule: &Arc<Guardrail>, pieces: &[&str]) -> (String, RedactionCounts) {
        let mut redactor = StreamRedactor::new(Arc::clone(rule));
        let mut out: String = pieces.iter().map(|piece| redactor.push(piece)).collect();
        out.push_str(&redactor.finish());
        assert_eq!(redactor.held_bytes(), 0);
        (out, redactor.counts())
    }

    fn boundaries(text: &str) -> Vec<usize> {
        (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect()
    }

    #[test]
    fn stream_matches_whole_text_redaction_at_every_split() {
        let rule = Arc::new(guard(&PiiKind::ALL));
        for text in STREAM_TEXTS {
            let (expected, expected_counts) = rule
                .redact(text)
                .unwrap_or_else(|| (text.to_string(), RedactionCounts::default()));
            for &split in &boundaries(text) {
                let (out, counts) = stream(&rule, &[&text[..split], &text[split..]]);
                assert_eq!(out, expected, "split {split} of {text:?}");
                assert_eq!(counts, expected_counts, "split {split} of {text:?}");
            }
        }
    }

    #[test]
    fn stream_matches_whole_text_redaction_at_three_way_splits() {
        let rule = Arc::new(guard(&PiiKind::ALL));
        for text in STREAM_TEXTS {
            let expected = rule
                .redact(text)
                .map_or_else(|| text.to_string(), |(out, _)| out);
            let cuts = boundaries(text);
            for &first in cuts.iter().step_by(3) {
                for &second in cuts.iter().filter(|&&cut| cut >= first) {
                    let pieces = [&text[..first], &text[first..second], &text[second..]];
                    assert_eq!(stream(&rule, &pieces).0, expected, "{pieces:?}");
                }
            }
        }
    }

    #[test]
    fn stream_one_character_at_a_time() {
        let rule = Arc::new(guard(&PiiKind::ALL));
        let text = STREAM_TEXTS.join(" ");
        let expected = rule.redact(&text).unwrap().0;
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(stream(&rule, &pieces).0, expected);
    }

    #[test]
    fn stream_emits_early_and_holds_back_little() {
        let rule = Arc::new(guard(&PiiKind::ALL));
        let mut redactor = StreamRedactor::new(Arc::clone(&rule));
        assert_eq!(
            redactor.push("Hello there, my mail is bob@exa"),
            "Hello there, my mail is "
        );
        assert_eq!(redactor.push("mple.com and"), "[REDACTED:email] ");
        assert_eq!(redactor.held_bytes(), "and".len());
        // A space after a digit may continue a card number: held.
        assert_eq!(redactor.push(" 4111 1111 "), "and ");
        assert_eq!(redactor.held_bytes(), "4111 1111 ".len());
        assert_eq!(redactor.push("1111 1111 is"), "");
        assert_eq!(redactor.push(" done"), "[REDACTED:card] is ");
        assert_eq!(redactor.finish(), "done");
        assert_eq!(
            redactor.counts(),
            RedactionCounts {
                email: 1,
                card: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn stream_hold_back_is_bounded() {
        let rule = Arc::new(guard(&PiiKind::ALL));
        let mut redactor = StreamRedactor::new(rule);
        let mut out = String::new();
        for _ in 0..100 {
            out.push_str(&redactor.push("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaé"));
            assert!(redactor.held_bytes() <= STREAM_MAX_HOLD_BYTES);
        }
        for _ in 0..100 {
            out.push_str(&redactor.push("1 2 3 "));
            assert!(redactor.held_bytes() <= STREAM_MAX_HOLD_BYTES);
        }
        out.push_str(&redactor.finish());
        let expected = format!(
            "{}{}",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaé".repeat(100),
            "1 2 3 ".repeat(100)
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn stream_without_redaction_passes_through() {
        let mut redactor = StreamRedactor::new(Arc::new(guard(&[])));
        assert_eq!(redactor.push("bob@exa"), "bob@exa");
        assert_eq!(redactor.finish(), "");
        assert_eq!(redactor.counts().total(), 0);
    }
}
