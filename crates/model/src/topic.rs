//! Topics: `<prefix>.<env>.<service>.<object>[.<subobject>].<event>`, as fedmsg
//! named them. A topic is also an AMQP routing key, so it keeps to AMQP's
//! limits (255 bytes, words separated by dots).

use std::fmt;

/// Why a string is not a usable topic or topic root.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    /// A topic is limited to 255 bytes because it is also an AMQP routing key.
    #[error("topic {0:?} is longer than 255 bytes")]
    TooLong(String),
    /// Words are non-empty runs of ASCII letters, digits, `_` and `-`.
    #[error("topic {topic:?}: word {word:?} must be non-empty ASCII letters, digits, '_' or '-'")]
    BadWord {
        /// The topic as given.
        topic: String,
        /// The offending word.
        word: String,
    },
    /// A suffix needs at least a service, an object and an event.
    #[error("topic suffix {0:?} needs at least <service>.<object>.<event>")]
    ShortSuffix(String),
}

fn check_words(topic: &str) -> Result<(), TopicError> {
    if topic.len() > 255 {
        return Err(TopicError::TooLong(topic.to_string()));
    }
    for word in topic.split('.') {
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(TopicError::BadWord { topic: topic.to_string(), word: word.to_string() });
        }
    }
    Ok(())
}

/// A concrete topic a message is published on (never a pattern).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Topic(String);

impl Topic {
    /// Validates the spelling of a full topic.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        check_words(topic)?;
        Ok(Topic(topic.to_string()))
    }

    /// The topic as a string, for routing keys and display.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The `<prefix>.<env>` every topic of one deployment starts with, from config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRoot {
    root: String,
}

impl TopicRoot {
    /// Builds the root from config; the prefix may have dots (`org.example`), the env may not.
    pub fn new(prefix: &str, env: &str) -> Result<Self, TopicError> {
        check_words(prefix)?;
        if env.contains('.') {
            return Err(TopicError::BadWord { topic: format!("{prefix}.{env}"), word: env.to_string() });
        }
        check_words(env)?;
        Ok(TopicRoot { root: format!("{prefix}.{env}") })
    }

    /// `<prefix>.<env>`, the part every topic of this deployment shares.
    pub fn as_str(&self) -> &str {
        &self.root
    }

    /// Builds a full topic from `<service>.<object>[.<subobject>].<event>`.
    pub fn topic(&self, suffix: &str) -> Result<Topic, TopicError> {
        check_words(suffix)?;
        if suffix.split('.').count() < 3 {
            return Err(TopicError::ShortSuffix(suffix.to_string()));
        }
        Topic::parse(&format!("{}.{suffix}", self.root))
    }

    /// Accepts either a suffix or a full topic under this root, as a command line would.
    pub fn resolve(&self, topic_or_suffix: &str) -> Result<Topic, TopicError> {
        match self.suffix_of(topic_or_suffix) {
            Some(suffix) => self.topic(suffix),
            None => self.topic(topic_or_suffix),
        }
    }

    /// The `<service>...<event>` part of a topic under this root, if it is under it.
    pub fn suffix_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(self.root.as_str())?.strip_prefix('.').filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_resolves_topics() {
        let root = TopicRoot::new("org.patchbay", "prod").unwrap();
        let t = root.topic("mail.message.received").unwrap();
        assert_eq!(t.as_str(), "org.patchbay.prod.mail.message.received");
        assert_eq!(root.resolve(t.as_str()).unwrap(), t);
        assert_eq!(root.resolve("mail.message.received").unwrap(), t);
        assert_eq!(root.suffix_of(t.as_str()), Some("mail.message.received"));
        assert_eq!(root.suffix_of("org.patchbay.production.x.y.z"), None);
        assert!(root.resolve("org.patchbay.prod.x").is_err(), "a full topic needs a full suffix too");
    }

    #[test]
    fn rejects_bad_spellings() {
        let root = TopicRoot::new("patchbay", "dev").unwrap();
        assert!(matches!(root.topic("mail.received"), Err(TopicError::ShortSuffix(_))));
        assert!(root.topic("mail..message.x").is_err());
        assert!(root.topic("mail.*.received").is_err());
        assert!(root.topic("mail.#").is_err());
        assert!(TopicRoot::new("patchbay", "de.v").is_err());
        assert!(Topic::parse(&"a.".repeat(200)).is_err());
    }
}
