//! Rules (`[[notify]]`) and what they match, as pure functions: no IO, no clock.

use patchbay_model::{Envelope, TopicPattern, TopicRoot};
use serde::{Deserialize, Serialize};

/// Where a rule's notifications go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A mail to this address, through the reporter's transport (outbox maildir or SMTP).
    Email(String),
    /// A JSON POST of the signed envelope (a digest: of all of them), with an HMAC-SHA256 header.
    Webhook {
        /// The receiver.
        url: String,
        /// The HMAC key.
        secret: String,
    },
}

/// When a rule's notifications go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cadence {
    /// Each message at once, in order.
    Now,
    /// A digest of every message of a period, when it ends: periods of `period` seconds
    /// starting `offset` seconds after a multiple of `period` from the Unix epoch (hourly, daily
    /// at 00:00 UTC, weekly on Monday 00:00 UTC, or `<N>s`).
    Every {
        /// The period in seconds.
        period: i64,
        /// Where periods start.
        offset: i64,
    },
}

impl Cadence {
    /// `now`, `hourly`, `daily`, `weekly`, or a period `<N>s` / `<N>m` (a short digest for tests).
    pub fn parse(text: &str) -> Result<Cadence, String> {
        let every = |period| Ok(Cadence::Every { period, offset: 0 });
        match text {
            "now" => Ok(Cadence::Now),
            "hourly" => every(3_600),
            "daily" => every(86_400),
            "weekly" => Ok(Cadence::Every { period: 7 * 86_400, offset: 4 * 86_400 }),
            t => {
                let wrong = || format!("{t:?} is not now, hourly, daily, weekly or a period such as 30s or 15m");
                let (n, minutes) = match (t.strip_suffix('s'), t.strip_suffix('m')) {
                    (Some(n), _) => (n, false),
                    (_, Some(n)) => (n, true),
                    _ => return Err(wrong()),
                };
                let n: i64 = n.parse().map_err(|_| wrong())?;
                let period = if minutes { n.checked_mul(60) } else { Some(n) };
                match period {
                    Some(p) if (1..=366 * 86_400).contains(&p) => every(p),
                    _ => Err(wrong()),
                }
            }
        }
    }

    /// The end of the latest period that has ended at `now` (unix seconds); `None` for `Now`.
    pub fn due(&self, now: i64) -> Option<i64> {
        match *self {
            Cadence::Now => None,
            Cadence::Every { period, offset } => Some((now - offset).div_euclid(period) * period + offset),
        }
    }
}

/// A rule as written in the config (`[[notify]]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Its name (a word): deliveries are kept per rule.
    pub name: String,
    /// Mail to this address …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// … or POST to this URL …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// … signed with this secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Topic patterns (suffixes under the root, such as `ci.series.verdict`); none: every topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Only messages about this project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Only messages about series of this submitter (an address, any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// Only results of this outcome (`FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Only verdicts of this kind (`FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Only messages about this test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// `now` (default), `hourly`, `daily`, `weekly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cadence: Option<String>,
}

/// A rule, checked.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// Where to.
    pub destination: Destination,
    /// Topic patterns (suffixes); empty: all.
    pub topics: Vec<TopicPattern>,
    /// Body filters: project, submitter, outcome, verdict, test.
    pub project: Option<String>,
    /// See [`RawRule::submitter`].
    pub submitter: Option<String>,
    /// See [`RawRule::outcome`].
    pub outcome: Option<String>,
    /// See [`RawRule::verdict`].
    pub verdict: Option<String>,
    /// See [`RawRule::test`].
    pub test: Option<String>,
    /// When.
    pub cadence: Cadence,
    /// As written, for an admin to read back (see [`Rule::shown`]).
    pub written: RawRule,
    /// Messages published before this (unix microseconds) are not its: set for a rule added
    /// over HTTP, which sees what is published from its adding on.
    pub since: Option<i64>,
}

impl RawRule {
    /// The rule, or the key that is wrong and why.
    pub fn check(self) -> Result<Rule, (&'static str, String)> {
        let written = self.clone();
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(("name", format!("{:?} must be ASCII letters, digits, '-' or '_'", self.name)));
        }
        // Written into a mail's header or a request line as they are: one line, no spaces.
        let plain = |v: &Option<String>| v.as_deref().is_none_or(|v| !v.chars().any(|c| c.is_control() || c.is_whitespace()));
        if !plain(&self.email) {
            return Err(("email", "an address has no spaces or control characters".into()));
        }
        if !plain(&self.webhook) {
            return Err(("webhook", "a URL has no spaces or control characters".into()));
        }
        let destination = match (self.email, self.webhook, self.secret) {
            (Some(email), None, None) if email.contains('@') => Destination::Email(email),
            (Some(email), None, None) => return Err(("email", format!("{email:?} is not an address"))),
            (None, Some(url), Some(secret)) if (url.starts_with("http://") || url.starts_with("https://")) && !secret.is_empty() => {
                Destination::Webhook { url, secret }
            }
            (None, Some(_), None) => return Err(("secret", "a webhook needs its secret (the HMAC key)".into())),
            (None, Some(url), _) => return Err(("webhook", format!("{url:?} must start with https:// or http://"))),
            _ => return Err(("email", "give email, or webhook with its secret, not both".into())),
        };
        let topics = self
            .topics
            .iter()
            .map(|t| TopicPattern::parse(t).map_err(|e| ("topics", format!("{t:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let cadence = Cadence::parse(self.cadence.as_deref().unwrap_or("now")).map_err(|e| ("cadence", e))?;
        let upper = |o: Option<String>| o.map(|s| s.to_ascii_uppercase());
        Ok(Rule {
            name: self.name,
            destination,
            topics,
            project: self.project,
            submitter: self.submitter.map(|s| s.to_ascii_lowercase()),
            outcome: upper(self.outcome),
            verdict: upper(self.verdict),
            test: self.test,
            cadence,
            written,
            since: None,
        })
    }
}

/// The series a message is about, if it says (for ordering per series and filtering).
pub fn series_of(body: &serde_json::Value) -> Option<&serde_json::Value> {
    match body.get("series") {
        Some(s @ serde_json::Value::Object(_)) => Some(s),
        _ => None,
    }
}

impl Rule {
    /// The rule as written, its secret left out: what an admin may read back.
    pub fn shown(&self) -> serde_json::Value {
        let mut written = self.written.clone();
        if written.secret.is_some() {
            written.secret = Some("(set)".into());
        }
        serde_json::to_value(written).unwrap_or_default()
    }

    /// Whether `env` is one this rule notifies of.
    pub fn matches(&self, root: &TopicRoot, env: &Envelope) -> bool {
        if self.since.is_some_and(|since| env.sent_at.as_micros() < since) {
            return false;
        }
        let Some(suffix) = root.suffix_of(env.topic.as_str()) else { return false };
        // The notifications' own news (a dead letter) only when a rule names it: a rule of every
        // topic would otherwise feed on its own failures.
        if self.topics.is_empty() && suffix.starts_with("notify.") {
            return false;
        }
        if !self.topics.is_empty() && !self.topics.iter().any(|p| p.matches_str(suffix)) {
            return false;
        }
        let body = &env.body;
        let series = series_of(body);
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
        let project = text(series.and_then(|s| s.get("project"))).or_else(|| text(body.get("project")));
        let submitter = text(series.and_then(|s| s.get("submitter"))).map(|s| s.to_ascii_lowercase());
        let same = |want: &Option<String>, got: Option<String>| want.as_ref().is_none_or(|w| got.as_deref() == Some(w.as_str()));
        same(&self.project, project)
            && self.submitter.as_ref().is_none_or(|w| submitter.is_some_and(|s| s.contains(w.as_str())))
            && same(&self.outcome, text(body.get("outcome")))
            && same(&self.verdict, text(body.get("verdict")))
            && same(&self.test, text(body.get("test")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_bus::Sealer;
    use patchbay_model::Sender;

    fn raw(extra: &str) -> RawRule {
        toml_like(&format!("name = \"r\"\nwebhook = \"https://hooks.example.org/x\"\nsecret = \"s\"\n{extra}"))
    }

    fn toml_like(text: &str) -> RawRule {
        let mut v = serde_json::Map::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, val) = line.split_once(" = ").unwrap();
            let val: serde_json::Value = serde_json::from_str(val).unwrap();
            v.insert(k.to_string(), val);
        }
        serde_json::from_value(serde_json::Value::Object(v)).unwrap()
    }

    fn env(root: &TopicRoot, suffix: &str, body: serde_json::Value) -> Envelope {
        let out = patchbay_bus::Outgoing {
            sender: Sender::new("aggregator", "main"),
            topic: root.topic(suffix).unwrap(),
            schema: patchbay_model::free_form_schema(),
            body,
        };
        Sealer::default().seal(out, 1)
    }

    #[test]
    fn cadences_end_their_periods_on_the_clock() {
        assert_eq!(Cadence::parse("now"), Ok(Cadence::Now));
        let daily = Cadence::parse("daily").unwrap();
        assert_eq!(daily.due(86_400 * 3 + 5), Some(86_400 * 3));
        let weekly = Cadence::parse("weekly").unwrap();
        // 2026-12-07 is a Monday: a week's digest is due at its 00:00 UTC.
        assert_eq!(weekly.due(1_796_601_600 + 3 * 86_400), Some(1_796_601_600));
        assert_eq!(Cadence::parse("30s").unwrap().due(61), Some(60));
        assert!(Cadence::parse("0s").is_err() && Cadence::parse("fortnightly").is_err());
        assert!(Cadence::parse("5é").is_err() && Cadence::parse("99999999999999999m").is_err(), "no panic, no overflow");
        assert_eq!(Cadence::parse("15m"), Ok(Cadence::Every { period: 900, offset: 0 }));
    }

    #[test]
    fn rules_filter_by_topic_and_the_bodys_fields() {
        let root = TopicRoot::new("patchbay", "prod").unwrap();
        let series =
            serde_json::json!({"id": 1, "project": "net", "submitter": "Ann <ANN@example.org>", "name": "x", "version": 1, "total": 1});
        let failed = env(&root, "ci.series.verdict", serde_json::json!({"series": series, "verdict": "FAILED"}));
        let passed = env(&root, "ci.series.verdict", serde_json::json!({"series": series, "verdict": "PASSED"}));
        let result = env(&root, "ci.result.recorded", serde_json::json!({"series": series, "test": "build", "outcome": "FAILED"}));
        let rule = raw("topics = [\"ci.series.verdict\"]\nverdict = \"failed\"\nproject = \"net\"").check().unwrap();
        assert!(rule.matches(&root, &failed) && !rule.matches(&root, &passed) && !rule.matches(&root, &result));
        let by_test = raw("test = \"build\"\nsubmitter = \"ann@example.org\"").check().unwrap();
        assert!(by_test.matches(&root, &result) && !by_test.matches(&root, &failed));
        let other = raw("project = \"hwmon\"").check().unwrap();
        assert!(!other.matches(&root, &failed));
        let dead = env(&root, "notify.delivery.dead", serde_json::json!({"rule": "r"}));
        assert!(!raw("").check().unwrap().matches(&root, &dead), "a rule of everything does not feed on its own dead letters");
        assert!(raw("topics = [\"notify.#\"]").check().unwrap().matches(&root, &dead), "unless it names them");
        assert_eq!(raw("").check().unwrap().cadence, Cadence::Now);
        assert_eq!(toml_like("name = \"r\"\nwebhook = \"https://x\"").check().unwrap_err().0, "secret");
        assert_eq!(toml_like("name = \"r\"\nemail = \"nobody\"").check().unwrap_err().0, "email");
        assert_eq!(raw("cadence = \"sometimes\"").check().unwrap_err().0, "cadence");
        assert_eq!(toml_like("name = \"r\"\nemail = \"a@x\\r\\nBcc: b@y\"").check().unwrap_err().0, "email", "no header injection");
        let mut late = raw("").check().unwrap();
        late.since = Some(failed.sent_at.as_micros() + 1);
        assert!(!late.matches(&root, &failed), "a rule added later does not see what came before it");
    }
}
