//! `o200k_base`'s pre-tokenizer, hand-written: splits text into exactly the
//! pieces tiktoken's regex finds, which byte-pair merges then never cross.
//!
//! Why hand-written: tiktoken runs the pattern below on `fancy-regex`, whose
//! backtracking VM (needed only for the look-ahead in `\s+(?!\S)`) is most
//! of the time of its count; and compiling the pattern on the `regex` crate
//! instead peaks at about 12 MB of temporaries, which left 2.8 MB resident
//! under mimalloc for a regex that keeps under 0.5 MB. This is a table of
//! Unicode ranges (about 30 KB) and a scanner, about ten times faster than
//! tiktoken's count overall (`timing_against_tiktoken` in the parent module).
//!
//! tiktoken's pattern, seven branches tried in order at each position, the
//! first that matches giving the piece (leftmost-first, as a backtracking
//! engine finds it):
//!
//! ```text
//! 1  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//! 2  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//! 3  \p{N}{1,3}
//! 4   ?[^\s\p{L}\p{N}]+[\r\n/]*
//! 5  \s*[\r\n]+
//! 6  \s+(?!\S)
//! 7  \s+
//! ```
//!
//! How it works: every character falls in one [`CharClass`] (the general
//! categories and `White_Space`, from `regex-syntax`'s tables, the ones the
//! regex engines use), and each branch's backtracking is worked out in closed
//! form in the function that implements it. Some branch matches at every
//! position (a letter starts 1 or 2, a digit 3, a symbol or mark 4, whitespace
//! 5 to 7), so pieces tile the text. The tests compare the pieces with
//! `fancy-regex` running tiktoken's pattern.
//!
//! Depends on `regex-syntax` (Unicode tables, read once when built).

use regex_syntax::hir::{Class, HirKind};

/// The classes the pattern tells apart; every character is in exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CharClass {
    /// `Lu`, `Lt`: upper- and titlecase letters.
    Upper,
    /// `Ll`: lowercase letters.
    Lower,
    /// `Lm`, `Lo`: letters without case (CJK, Arabic, modifiers); the pattern
    /// counts them on both the upper and the lower side.
    Caseless,
    /// `M`: combining marks; on both sides too, but not letters.
    Mark,
    /// `N`: digits, numerals, fractions.
    Number,
    /// `\r` and `\n`.
    LineBreak,
    /// Any other `White_Space`.
    Space,
    /// Everything else: punctuation, symbols, controls, emoji, unassigned.
    Other,
}

use CharClass::{Caseless, LineBreak, Lower, Mark, Number, Other, Space, Upper};

impl CharClass {
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
    fn is_upper_side(self) -> bool {
        matches!(self, Upper | Caseless | Mark)
    }

    /// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
    fn is_lower_side(self) -> bool {
        matches!(self, Lower | Caseless | Mark)
    }

    /// `[^\r\n\p{L}\p{N}]`
    fn is_prefix(self) -> bool {
        matches!(self, Mark | Space | Other)
    }

    /// `[^\s\p{L}\p{N}]`
    fn is_symbol(self) -> bool {
        matches!(self, Mark | Other)
    }

    /// `\s`
    fn is_space(self) -> bool {
        matches!(self, LineBreak | Space)
    }
}

/// Splits text into `o200k_base` pieces; see the module documentation.
pub(crate) struct PreTokenizer {
    /// The class of each ASCII character.
    ascii: [CharClass; 128],
    /// `(first, last, class)`, sorted and disjoint; a character in none is
    /// [`CharClass::Other`].
    ranges: Box<[(u32, u32, CharClass)]>,
}

impl PreTokenizer {
    pub(crate) fn new() -> Self {
        let mut ranges = Vec::new();
        for (class, pattern) in [
            (Upper, r"[\p{Lu}\p{Lt}]"),
            (Lower, r"\p{Ll}"),
            (Caseless, r"[\p{Lm}\p{Lo}]"),
            (Mark, r"\p{M}"),
            (Number, r"\p{N}"),
            (LineBreak, r"[\r\n]"),
            (Space, r"[\s--[\r\n]]"),
        ] {
            // Fixed patterns over regex-syntax's own tables: cannot fail.
            let hir = regex_syntax::parse(pattern).expect("a Unicode class");
            let HirKind::Class(Class::Unicode(set)) = hir.kind() else {
                unreachable!("{pattern} is a Unicode class");
            };
            ranges.extend(
                set.ranges()
                    .iter()
                    .map(|range| (u32::from(range.start()), u32::from(range.end()), class)),
            );
        }
        ranges.sort_unstable_by_key(|&(first, _, _)| first);
        let mut pre_tokenizer = Self {
            ascii: [Other; 128],
            ranges: ranges.into_boxed_slice(),
        };
        for byte in 0..128u8 {
            pre_tokenizer.ascii[usize::from(byte)] = pre_tokenizer.lookup(char::from(byte));
        }
        pre_tokenizer
    }

    /// The pieces of `text`, in order; together they are all of it.
    pub(crate) fn pieces<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let mut start = 0;
        std::iter::from_fn(move || {
            if start == text.len() {
                return None;
            }
            let end = self.piece_end(text, start);
            let piece = &text[start..end];
            start = end;
            Some(piece)
        })
    }

    /// Where the piece starting at `start` (before the end of `text`) ends.
    fn piece_end(&self, text: &str, start: usize) -> usize {
        if let Some(end) = self.word(text, start) {
            return end;
        }
        if let Some((Number, _)) = self.char_at(text, start) {
            return self.digits(text, start);
        }
        if let Some(end) = self.symbols(text, start) {
            return end;
        }
        self.whitespace(text, start)
    }

    /// Branches 1 then 2, each first with the optional prefix character taken
    /// (if it can be) and then without it, as a backtracking engine tries them.
    fn word(&self, text: &str, start: usize) -> Option<usize> {
        let (class, next) = self.char_at(text, start)?;
        let starts = [class.is_prefix().then_some(next), Some(start)];
        let branch_one = starts
            .iter()
            .flatten()
            .find_map(|&at| self.lower_tail_word(text, at));
        let end = branch_one.or_else(|| {
            starts
                .iter()
                .flatten()
                .find_map(|&at| self.upper_head_word(text, at))
        })?;
        Some(contraction_end(text, end))
    }

    /// Branch 1 from `at`, up to its contraction:
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+`. The
    /// greedy `*` takes the run of upper-side characters; if a lowercase
    /// letter follows, the `+` takes the lower-side run from there. Otherwise
    /// the `*` gives back characters until the `+` can start: at the run's
    /// last character that is on both sides (caseless or mark), and the `+`
    /// ends after it, since what follows in the run is upper case only.
    fn lower_tail_word(&self, text: &str, at: usize) -> Option<usize> {
        let mut end = at;
        let mut after_last_both = None;
        while let Some((class, next)) = self.char_at(text, end) {
            if !class.is_upper_side() {
                break;
            }
            if class.is_lower_side() {
                after_last_both = Some(next);
            }
            end = next;
        }
        match self.char_at(text, end) {
            Some((Lower, _)) => Some(self.run_end(text, end, CharClass::is_lower_side)),
            _ => after_last_both,
        }
    }

    /// Branch 2 from `at`, up to its contraction:
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*`, both
    /// greedy, nothing after them can fail.
    fn upper_head_word(&self, text: &str, at: usize) -> Option<usize> {
        let upper_end = self.run_end(text, at, CharClass::is_upper_side);
        (upper_end > at).then(|| self.run_end(text, upper_end, CharClass::is_lower_side))
    }

    /// Branch 3: `\p{N}{1,3}`, at a number.
    fn digits(&self, text: &str, start: usize) -> usize {
        let mut end = start;
        for _ in 0..3 {
            match self.char_at(text, end) {
                Some((Number, next)) => end = next,
                _ => break,
            }
        }
        end
    }

    /// Branch 4: ` ?[^\s\p{L}\p{N}]+[\r\n/]*`. The space is taken only if a
    /// symbol follows it (without it, the space itself is no symbol).
    fn symbols(&self, text: &str, start: usize) -> Option<usize> {
        let (class, next) = self.char_at(text, start)?;
        let after_space = text[start..].starts_with(' ')
            && self
                .char_at(text, next)
                .is_some_and(|(class, _)| class.is_symbol());
        let from = match (after_space, class.is_symbol()) {
            (true, _) => next,
            (false, true) => start,
            (false, false) => return None,
        };
        let end = self.run_end(text, from, CharClass::is_symbol);
        let breaks = text[end..]
            .bytes()
            .take_while(|byte| matches!(byte, b'\r' | b'\n' | b'/'))
            .count();
        Some(end + breaks)
    }

    /// Branches 5 to 7, at whitespace (every other character matched an
    /// earlier branch; the first character is taken regardless, so a piece
    /// is never empty). Over the run of whitespace: 5, `\s*[\r\n]+`, ends
    /// after its last line break (the `\s*` gives back up to it, the `+` can
    /// take no more); if there is none, 6, `\s+(?!\S)`, takes the run but its
    /// last character when a non-space follows, and 7, `\s+`, takes a run of
    /// one.
    fn whitespace(&self, text: &str, start: usize) -> usize {
        let mut end = start;
        let mut last_start = start;
        let mut after_last_break = None;
        let mut characters = 0;
        while let Some((class, next)) = self.char_at(text, end) {
            if characters > 0 && !class.is_space() {
                break;
            }
            if class == LineBreak {
                after_last_break = Some(next);
            }
            characters += 1;
            last_start = end;
            end = next;
        }
        match after_last_break {
            Some(after) => after,
            None if end < text.len() && characters > 1 => last_start,
            None => end,
        }
    }

    /// Where the run of characters of a class accepted by `accept` that
    /// starts at `at` ends.
    fn run_end(&self, text: &str, mut at: usize, accept: fn(CharClass) -> bool) -> usize {
        while let Some((class, next)) = self.char_at(text, at) {
            if !accept(class) {
                break;
            }
            at = next;
        }
        at
    }

    /// The class of the character at byte `at` and where the next one starts;
    /// `None` at the end of `text`.
    fn char_at(&self, text: &str, at: usize) -> Option<(CharClass, usize)> {
        let &byte = text.as_bytes().get(at)?;
        if byte.is_ascii() {
            return Some((self.ascii[usize::from(byte)], at + 1));
        }
        let c = text[at..].chars().next()?;
        Some((self.lookup(c), at + c.len_utf8()))
    }

    fn lookup(&self, c: char) -> CharClass {
        let c = u32::from(c);
        let after = self.ranges.partition_point(|&(first, _, _)| first <= c);
        match after.checked_sub(1).map(|index| self.ranges[index]) {
            Some((_, last, class)) if c <= last => class,
            _ => Other,
        }
    }
}

/// After a word ending at `end`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)?`, the
/// contraction if one follows. Case-insensitive as `regex-syntax` folds:
/// `s` also matches `ſ` (U+017F, long s); the other letters fold only to
/// their ASCII pair (checked by a test).
fn contraction_end(text: &str, end: usize) -> usize {
    let Some(rest) = text[end..].strip_prefix('\'') else {
        return end;
    };
    let mut letters = rest.chars();
    let length = match (letters.next(), letters.next()) {
        (Some(letter @ ('s' | 'S' | 'ſ' | 't' | 'T' | 'm' | 'M' | 'd' | 'D')), _) => {
            letter.len_utf8()
        }
        (Some('r' | 'R' | 'v' | 'V'), Some('e' | 'E')) | (Some('l' | 'L'), Some('l' | 'L')) => 2,
        _ => return end,
    };
    end + 1 + length
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// SplitMix64 from `seed`: the same pseudo-random numbers on every run.
    pub(in crate::bpe) fn splitmix64(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }
    use std::sync::OnceLock;

    /// tiktoken's pre-tokenizer: its `o200k_base` pattern on `fancy-regex`.
    pub(in crate::bpe) fn tiktoken_pieces(text: &str) -> Vec<&str> {
        static PATTERN: OnceLock<fancy_regex::Regex> = OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            fancy_regex::Regex::new(concat!(
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
                r"|\p{N}{1,3}",
                r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
                r"|\s*[\r\n]+",
                r"|\s+(?!\S)",
                r"|\s+",
            ))
            .unwrap()
        });
        pattern
            .find_iter(text)
            .map(|piece| piece.unwrap().as_str())
            .collect()
    }

    fn pre_tokenizer() -> &'static PreTokenizer {
        static PRE_TOKENIZER: OnceLock<PreTokenizer> = OnceLock::new();
        PRE_TOKENIZER.get_or_init(PreTokenizer::new)
    }

    fn assert_same_pieces(text: &str) {
        let pieces: Vec<&str> = pre_tokenizer().pieces(text).collect();
        assert_eq!(pieces, tiktoken_pieces(text), "text: {text:?}");
    }

    /// Characters of every class: the first, middle and last of each range,
    /// the characters either side of it, and the ASCII ones.
    fn sample_characters() -> Vec<char> {
        let mut sample: Vec<char> = (0..128u8).map(char::from).collect();
        for &(first, last, _) in pre_tokenizer().ranges.iter() {
            let around = [
                first.wrapping_sub(1),
                first,
                first / 2 + last / 2,
                last,
                last + 1,
            ];
            sample.extend(around.into_iter().filter_map(char::from_u32));
        }
        sample.sort_unstable();
        sample.dedup();
        sample
    }

    #[test]
    fn ranges_are_sorted_and_disjoint() {
        let ranges = &pre_tokenizer().ranges;
        assert!(ranges.len() > 1000, "{} ranges", ranges.len());
        for pair in ranges.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
        assert_eq!(pre_tokenizer().lookup('a'), Lower);
        assert_eq!(pre_tokenizer().lookup('Ǆ'), Upper);
        assert_eq!(pre_tokenizer().lookup('ǅ'), Upper);
        assert_eq!(pre_tokenizer().lookup('日'), Caseless);
        assert_eq!(pre_tokenizer().lookup('\u{301}'), Mark);
        assert_eq!(pre_tokenizer().lookup('½'), Number);
        assert_eq!(pre_tokenizer().lookup('\n'), LineBreak);
        assert_eq!(pre_tokenizer().lookup('\u{3000}'), Space);
        assert_eq!(pre_tokenizer().lookup('😀'), Other);
    }

    /// The letters `contraction_end` accepts are what `(?i:x)` matches.
    #[test]
    fn contraction_letters_fold_as_regex_syntax_folds() {
        for (letter, accepted) in [
            ('s', "sSſ"),
            ('t', "tT"),
            ('r', "rR"),
            ('e', "eE"),
            ('v', "vV"),
            ('m', "mM"),
            ('l', "lL"),
            ('d', "dD"),
        ] {
            let hir = regex_syntax::ParserBuilder::new()
                .case_insensitive(true)
                .build()
                .parse(&letter.to_string())
                .unwrap();
            let HirKind::Class(Class::Unicode(folded)) = hir.kind() else {
                panic!("(?i){letter} is not a class");
            };
            let folded: String = folded
                .ranges()
                .iter()
                .flat_map(|range| range.start()..=range.end())
                .collect();
            let mut accepted: Vec<char> = accepted.chars().collect();
            accepted.sort_unstable();
            assert_eq!(folded, accepted.into_iter().collect::<String>());
        }
        assert_eq!(contraction_end("x'ſ", 1), 4);
        assert_eq!(contraction_end("x'LL", 1), 4);
        assert_eq!(contraction_end("x'Re", 1), 4);
        assert_eq!(contraction_end("x'r", 1), 1);
        assert_eq!(contraction_end("x's", 1), 3);
    }

    /// Each sampled character alone and in the contexts that decide the
    /// branches: after a prefix, between letters of either case, before and
    /// after marks, spaces, line breaks, digits and contractions.
    #[test]
    fn pieces_match_tiktoken_around_every_class() {
        let contexts = [
            "{}",
            "a{}",
            "{}a",
            "A{}",
            "{}A",
            "aA{}b",
            "AB{}cd",
            " {}x",
            "{}{}",
            "{}{}{}'s",
            "x{}'LL",
            "{}\u{301}",
            "\u{301}{}",
            "日{}",
            "{}日",
            "1{}",
            "{}12",
            "  {}",
            "{} ",
            "{}  x",
            "\n{}\n",
            "{}\r\n",
            "!{}/",
            " {}!",
            "{}\u{a0}y",
        ];
        for c in sample_characters() {
            for context in contexts {
                assert_same_pieces(&context.replace("{}", c.encode_utf8(&mut [0; 4])));
            }
        }
    }

    fn pseudo_random_texts(count: usize, max_chars: u64) -> impl Iterator<Item = String> {
        const COMMON: &[&str] = &[
            " ", " ", "  ", "\t", "\n", "\r", "\r\n", "'", "'s", "'S", "'ſ", "'re", "'VE", "'ll",
            "'d", "'m", "'t", "/", "!", ".", "a", "b", "Z", "Q", "e", "1", "23", "\u{301}",
            "\u{a0}", "\u{3000}", "\u{85}", "ǅ", "ʰ", "日", "ا", "😀", "\u{200d}", "½",
        ];
        let sample = sample_characters();
        // SplitMix64 with a fixed seed: the same texts on every run.
        let mut next = splitmix64(0x0070_7265_746f_6b65);
        (0..count).map(move |_| {
            let length = next() % max_chars;
            let mut text = String::new();
            for _ in 0..length {
                let pick = next();
                if pick % 3 == 0 {
                    text.push(sample[(pick / 3 % sample.len() as u64) as usize]);
                } else {
                    text.push_str(COMMON[(pick / 3 % COMMON.len() as u64) as usize]);
                }
            }
            text
        })
    }

    #[test]
    fn pieces_match_tiktoken_on_pseudo_random_text() {
        for text in pseudo_random_texts(20_000, 24) {
            assert_same_pieces(&text);
        }
    }

    /// Many more texts, for a release run:
    /// `cargo test -p hypergate-ai --release -- --ignored pieces_match_tiktoken_at_length`
    #[test]
    #[ignore = "slow; run in release"]
    fn pieces_match_tiktoken_at_length() {
        for text in pseudo_random_texts(2_000_000, 64) {
            assert_same_pieces(&text);
        }
    }
}
