//! Label selectors: `os=debian,env!=prod,gpu,!retired`.
//!
//! A selector is a comma-separated list of terms, all of which must hold:
//! `key=value`, `key!=value`, `key in (a,b)` (one of the values),
//! `key notin (a,b)`, `key` (the label exists) and `!key` (it does not). Whitespace around terms is ignored. Errors point at the character
//! (1-based) where the input stops making sense, so a typo in a long
//! selector is found at once; they quote a few characters around it, never
//! the whole input.
//!
//! Parsing is one pass over the characters (each is looked at a bounded
//! number of times), and the input is at most [`MAX_SELECTOR_BYTES`]: the
//! work a caller can ask for is linear and small. The property tests below
//! hold it to both.

use std::fmt;

use crate::domain::Labels;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector. The empty selector matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed selector at character {position} (near {near:?}): {reason}")]
pub struct SelectorError {
    /// At most a dozen characters each side of the position.
    pub near: String,
    /// 1-based character position.
    pub position: usize,
    pub reason: String,
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Characters quoted each side of an error's position.
const NEAR: usize = 12;

struct Parser {
    chars: Vec<char>,
    pos: usize,
    /// Characters looked at so far: the tests hold it linear in the input.
    looks: std::cell::Cell<usize>,
}

impl Parser {
    fn error(&self, reason: impl Into<String>) -> SelectorError {
        let from = self.pos.saturating_sub(NEAR);
        let to = (self.pos + NEAR).min(self.chars.len());
        SelectorError {
            near: self.chars[from..to].iter().collect(),
            position: self.pos + 1,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.looks.set(self.looks.get() + 1);
        self.chars.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|c| c == ' ') {
            self.pos += 1;
        }
    }

    fn word(&mut self, what: &str) -> Result<String, SelectorError> {
        let start = self.pos;
        while self.peek().is_some_and(is_label_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(match self.peek() {
                Some(c) => self.error(format!("expected a {what}, found {c:?}")),
                None => self.error(format!("expected a {what}, found the end")),
            });
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        if word.len() > 63 {
            self.pos = start;
            return Err(self.error(format!("{what} longer than 63 characters")));
        }
        Ok(word)
    }

    fn value(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_label_char) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// Whether the input continues with the word `word` followed by a space
    /// or an opening parenthesis.
    /// Looks at no more than the word's length and one character.
    fn at_keyword(&self, word: &str) -> bool {
        let mut at = self.pos;
        for expected in word.chars() {
            self.looks.set(self.looks.get() + 1);
            if self.chars.get(at) != Some(&expected) {
                return false;
            }
            at += 1;
        }
        matches!(self.chars.get(at), Some(' ' | '('))
    }

    /// `(a, b, ...)`, at least one value.
    fn list(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_spaces();
        if self.peek() != Some('(') {
            return Err(self.error("expected '(' to start the list of values"));
        }
        self.pos += 1;
        let mut values = Vec::new();
        loop {
            self.skip_spaces();
            values.push(self.word("value")?);
            self.skip_spaces();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                Some(c) => return Err(self.error(format!("expected ',' or ')', found {c:?}"))),
                None => return Err(self.error("expected ')', found the end")),
            }
        }
    }

    fn term(&mut self) -> Result<Term, SelectorError> {
        self.skip_spaces();
        if self.peek() == Some('!') {
            self.pos += 1;
            let key = self.word("label key")?;
            return Ok(Term::Absent(key));
        }
        let key = self.word("label key")?;
        self.skip_spaces();
        if self.at_keyword("in") {
            self.pos += 2;
            return Ok(Term::In(key, self.list()?));
        }
        if self.at_keyword("notin") {
            self.pos += 5;
            return Ok(Term::NotIn(key, self.list()?));
        }
        match self.peek() {
            Some('=') => {
                self.pos += 1;
                if self.peek() == Some('=') {
                    self.pos += 1;
                }
                Ok(Term::Equals(key, self.value()))
            }
            Some('!') => {
                self.pos += 1;
                if self.peek() != Some('=') {
                    return Err(self.error("expected '=' after '!'"));
                }
                self.pos += 1;
                Ok(Term::NotEquals(key, self.value()))
            }
            _ => Ok(Term::Exists(key)),
        }
    }
}

impl Parser {
    fn selector(&mut self, input: &str) -> Result<Selector, SelectorError> {
        if input.len() > MAX_SELECTOR_BYTES {
            let head: String = input.chars().take(NEAR).collect();
            return Err(SelectorError {
                near: format!("{head}..."),
                position: MAX_SELECTOR_BYTES + 1,
                reason: format!(
                    "a selector is at most {MAX_SELECTOR_BYTES} bytes, this one has {}",
                    input.len()
                ),
            });
        }
        self.chars = input.chars().collect();
        let mut terms = Vec::new();
        self.skip_spaces();
        if self.peek().is_none() {
            return Ok(Selector { terms });
        }
        loop {
            terms.push(self.term()?);
            self.skip_spaces();
            match self.peek() {
                None => break,
                Some(',') => self.pos += 1,
                Some(c) => {
                    return Err(self.error(format!("expected ',' or the end, found {c:?}")));
                }
            }
        }
        Ok(Selector { terms })
    }
}

/// The longest selector accepted: far more than any real one, and a bound
/// on the work (and the error text) a caller can cause.
pub const MAX_SELECTOR_BYTES: usize = 4096;

impl Selector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Self::parse_counting(input).0
    }

    /// [`Selector::parse`], and how many characters it looked at.
    pub(crate) fn parse_counting(input: &str) -> (Result<Self, SelectorError>, usize) {
        let mut parser = Parser {
            chars: Vec::new(),
            pos: 0,
            looks: std::cell::Cell::new(0),
        };
        let parsed = parser.selector(input);
        (parsed, parser.looks.get())
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.terms.iter().all(|term| match term {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
            Term::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Term::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self
            .terms
            .iter()
            .map(|t| match t {
                Term::Equals(k, v) => format!("{k}={v}"),
                Term::NotEquals(k, v) => format!("{k}!={v}"),
                Term::Exists(k) => k.clone(),
                Term::Absent(k) => format!("!{k}"),
                Term::In(k, v) => format!("{k} in ({})", v.join(",")),
                Term::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
            })
            .collect();
        f.write_str(&terms.join(","))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_selector_too_long_is_refused_without_echoing_it() {
        let long = "a=b,".repeat(2000);
        let error = Selector::parse(&long).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("at most 4096 bytes, this one has 8000"),
            "{text}"
        );
        assert!(text.len() < 200, "{text}");
        assert!(Selector::parse(&long[..4095]).is_ok());
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches() {
        let s = Selector::parse("os=debian, env!=prod,gpu,!retired").unwrap();
        assert!(s.matches(&labels(&[("os", "debian"), ("env", "test"), ("gpu", "")])));
        assert!(!s.matches(&labels(&[("os", "debian"), ("env", "prod"), ("gpu", "")])));
        assert!(!s.matches(&labels(&[("os", "debian"), ("gpu", ""), ("retired", "y")])));
        assert!(!s.matches(&labels(&[("os", "gentoo"), ("gpu", "")])));
        assert_eq!(s.to_string(), "os=debian,env!=prod,gpu,!retired");
    }

    #[test]
    fn in_and_notin_lists() {
        let s = Selector::parse("os in (debian, ubuntu),env notin (prod),gpu").unwrap();
        assert!(s.matches(&labels(&[("os", "ubuntu"), ("env", "test"), ("gpu", "")])));
        assert!(s.matches(&labels(&[("os", "debian"), ("gpu", "")])));
        assert!(!s.matches(&labels(&[("os", "gentoo"), ("gpu", "")])));
        assert!(!s.matches(&labels(&[("os", "debian"), ("env", "prod"), ("gpu", "")])));
        assert_eq!(s.to_string(), "os in (debian,ubuntu),env notin (prod),gpu");
        // A key named like the keyword still works.
        assert!(Selector::parse("in=x,index").is_ok());
        let e = Selector::parse("os in (debian").unwrap_err();
        assert!(e.reason.contains("')'"), "{e}");
        let e = Selector::parse("os in debian").unwrap_err();
        assert_eq!(e.position, 7, "{e}");
    }

    #[test]
    fn empty_matches_all() {
        let s = Selector::parse("  ").unwrap();
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
    }

    /// Valid selectors of every form, built from a list of terms.
    fn valid_selector() -> impl Strategy<Value = String> {
        let word = "[a-z0-9][a-z0-9._/-]{0,20}";
        let term = prop_oneof![
            (word, word).prop_map(|(k, v)| format!("{k}={v}")),
            (word, word).prop_map(|(k, v)| format!("{k}!={v}")),
            word.prop_map(|k| k.to_string()),
            word.prop_map(|k| format!("!{k}")),
            (word, prop::collection::vec(word, 1..4))
                .prop_map(|(k, v)| format!("{k} in ({})", v.join(","))),
            (word, prop::collection::vec(word, 1..4))
                .prop_map(|(k, v)| format!("{k} notin ({})", v.join(", "))),
        ];
        prop::collection::vec(term, 0..40).prop_map(|terms| terms.join(","))
    }

    /// Characters the grammar gives meaning to, and some it does not.
    fn selector_noise() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("in ".to_string()),
                Just("notin (".to_string()),
                Just("in(".to_string()),
                "[a-z=!,() \u{0}-\u{7f}é]",
            ],
            0..400,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        /// Whatever the input: no panic, an error that quotes little of
        /// it, and work linear in its length.
        #[test]
        fn any_input_is_parsed_in_linear_time_without_panic(input in selector_noise()) {
            let (parsed, looks) = Selector::parse_counting(&input);
            let chars = input.chars().count();
            prop_assert!(looks <= 8 * chars + 8, "{looks} looks at {chars} characters");
            if let Err(e) = parsed {
                prop_assert!(e.to_string().len() < 300, "{e}");
                prop_assert!(e.position <= chars + 1);
            }
        }

        /// Every valid selector parses, in linear work, and reads back as
        /// the same selector.
        #[test]
        fn valid_selectors_parse_and_read_back(input in valid_selector()) {
            let (parsed, looks) = Selector::parse_counting(&input);
            let parsed = parsed.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(looks <= 8 * input.chars().count() + 8);
            prop_assert_eq!(Selector::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    /// At the cap, the worst inputs found: work stays within eight looks per
    /// character (the keyword check once re-read the rest of the input at
    /// every term, which made 80K characters take seconds).
    #[test]
    fn the_largest_selectors_cost_linear_work() {
        for unit in [
            "a,",
            "in,",
            "a in (b),",
            "a notin (b,c),",
            "!a,",
            "a=b,",
            "a  ,",
        ] {
            let input = unit.repeat(MAX_SELECTOR_BYTES / unit.len());
            let input = input.trim_end_matches(',');
            let (parsed, looks) = Selector::parse_counting(input);
            assert!(parsed.is_ok(), "{unit}: {parsed:?}");
            assert!(
                looks <= 8 * input.len() + 8,
                "{unit}: {looks} looks at {}",
                input.len()
            );
        }
    }

    #[test]
    fn errors_point_at_the_character() {
        let e = Selector::parse("os=debian,,env=test").unwrap_err();
        assert_eq!(e.position, 11, "{e}");
        let e = Selector::parse("os=deb ian").unwrap_err();
        assert_eq!(e.position, 8, "{e}");
        let e = Selector::parse("os!debian").unwrap_err();
        assert_eq!(e.position, 4, "{e}");
        let e = Selector::parse("os=debian,").unwrap_err();
        assert!(e.reason.contains("end"), "{e}");
        let e = Selector::parse("=x").unwrap_err();
        assert_eq!(e.position, 1);
        assert!(e.to_string().contains("at character 1"));
    }
}
