//! Topic patterns with AMQP topic-exchange semantics: `*` matches exactly one
//! word, `#` matches zero or more words, anything else matches itself.

use std::fmt;

use crate::Topic;

/// Why a pattern is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("topic pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pattern: String,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Word {
    Literal(String),
    Star,
    Hash,
}

/// A binding pattern such as `patchbay.*.series.#`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    text: String,
    words: Vec<Word>,
}

impl TopicPattern {
    /// Parses a pattern; words are `*`, `#` or literal topic words.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError { pattern: text.to_string(), reason };
        if text.len() > 255 {
            return Err(err("longer than 255 bytes"));
        }
        let mut words = Vec::new();
        for w in text.split('.') {
            words.push(match w {
                "*" => Word::Star,
                "#" => Word::Hash,
                "" => return Err(err("empty word")),
                w if w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => Word::Literal(w.to_string()),
                _ => return Err(err("words are '*', '#' or ASCII letters, digits, '_' and '-'")),
            });
        }
        Ok(TopicPattern { text: text.to_string(), words })
    }

    /// The pattern as written, for AMQP bindings and display.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a topic matches, by AMQP's rules.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// Whether a dotted topic string matches.
    pub fn matches_str(&self, topic: &str) -> bool {
        let topic: Vec<&str> = topic.split('.').collect();
        matches_words(&self.words, &topic)
    }
}

// Iterative matcher with backtracking over the last `#`, linear in practice.
fn matches_words(pat: &[Word], topic: &[&str]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        if p < pat.len() {
            match &pat[p] {
                Word::Hash => {
                    backtrack = Some((p, t));
                    p += 1;
                    continue;
                }
                Word::Star if t < topic.len() => {
                    p += 1;
                    t += 1;
                    continue;
                }
                Word::Literal(l) if t < topic.len() && l == topic[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        } else if t == topic.len() {
            return true;
        }
        // Mismatch: let the last `#` swallow one more word, if it can.
        match backtrack {
            Some((bp, bt)) if bt < topic.len() => {
                backtrack = Some((bp, bt + 1));
                p = bp + 1;
                t = bt + 1;
            }
            _ => return false,
        }
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", self.text)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for TopicPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicPattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        TopicPattern::parse(p).unwrap().matches_str(t)
    }

    #[test]
    fn amqp_examples() {
        // The examples from RabbitMQ's topic exchange tutorial.
        assert!(m("*.orange.*", "quick.orange.rabbit"));
        assert!(m("*.*.rabbit", "quick.orange.rabbit"));
        assert!(m("lazy.#", "lazy.orange.elephant"));
        assert!(!m("*.orange.*", "quick.brown.fox"));
        assert!(m("lazy.#", "lazy"));
        assert!(!m("*.orange.*", "quick.orange.male.rabbit"));
        assert!(m("lazy.#", "lazy.orange.male.rabbit"));
        assert!(!m("*.*.rabbit", "orange"));
        assert!(m("#", "anything.at.all"));
        assert!(m("a.#.z", "a.z"));
        assert!(m("a.#.z", "a.b.c.z"));
        assert!(!m("a.#.z", "a.b.c"));
        assert!(m("#.z", "z"));
        assert!(m("a.#.#.z", "a.z"));
        assert!(m("#.*", "a"));
        assert!(!m("#.*.*", "a"));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.*", "a"));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["", "a..b", "a.b*", "a.#b", "a b", "a.é"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }

    // A direct recursive reference definition to check the iterative matcher against.
    fn reference(p: &[Word], t: &[&str]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((Word::Hash, rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((Word::Star, rest)) => !t.is_empty() && reference(rest, &t[1..]),
            Some((Word::Literal(l), rest)) => t.first() == Some(&l.as_str()) && reference(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(
            pat in proptest::collection::vec(prop_oneof!["a", "b", Just("*".to_string()), Just("#".to_string())], 1..7),
            topic in proptest::collection::vec(prop_oneof!["a", "b"], 1..8),
        ) {
            let p = TopicPattern::parse(&pat.join(".")).unwrap();
            let t: Vec<&str> = topic.iter().map(|s| s.as_str()).collect();
            prop_assert_eq!(p.matches_str(&topic.join(".")), reference(&p.words, &t));
        }
    }
}
