//! The domain's words as they travel on the wire: the test every series gets, the arch any
//! runner takes, and enums for the words of results. Named once here so that the dispatcher, the runner, the aggregator, the verdict
//! and the report cannot drift apart on a spelling; the strings themselves are a compatibility
//! promise (job ids, queue names and topics are built from them).

/// The name of the "does it apply?" test, dispatched for every complete series.
pub const APPLY_TEST: &str = "apply";

/// The arch of jobs any runner can take (the `apply` job); labels drop it (`apply`, not `apply/any`).
pub const ANY_ARCH: &str = "any";

/// Defines an enum of wire words: one variant per word patchbay knows, and `Other` for any other
/// string, kept as it came. On the wire and in the JSON Schemas each is exactly the `String` it
/// replaced (a reader never refuses a word it does not know), so the types add names, not rules.
macro_rules! wire_words {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A word patchbay does not define, kept as it came so it reads and writes back unchanged.
            Other(String),
        }

        impl $name {
            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    Self::Other(word) => word,
                    known => known.known().unwrap_or_default(),
                }
            }

            /// The spelling of a word patchbay defines (`None` for `Other`), for callers that
            /// need it beyond the value's life.
            pub fn known(&self) -> Option<&'static str> {
                match self {
                    $(Self::$variant => Some($word),)+
                    Self::Other(_) => None,
                }
            }
        }

        /// Reads a wire word; unknown words become `Other`, so this never fails.
        impl From<&str> for $name {
            fn from(word: &str) -> Self {
                match word {
                    $($word => Self::$variant,)+
                    other => Self::Other(other.to_string()),
                }
            }
        }

        /// Reads a wire word without copying an unknown one.
        impl From<String> for $name {
            fn from(word: String) -> Self {
                match word.as_str() {
                    $($word => Self::$variant,)+
                    _ => Self::Other(word),
                }
            }
        }

        /// Never fails: unknown words become `Other`.
        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(word: &str) -> Result<Self, Self::Err> {
                Ok(word.into())
            }
        }

        /// The wire spelling, for logs, mails and SQL.
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Shows the wire spelling, as the `String` it replaced did.
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }

        /// Equal when the wire spellings are (an `Other` holding a known word equals its variant).
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl Eq for $name {}

        /// Hashes the wire spelling, consistent with `PartialEq`.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.as_str().hash(state)
            }
        }

        /// Compares with a wire spelling.
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        /// Compares with a wire spelling.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        /// Compares a wire spelling with the word.
        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        /// Written as the plain string.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        /// Read from any string.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self::from)
            }
        }

        /// The schema of a plain string, as before the enum: the wire format is unchanged.
        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                <String as schemars::JsonSchema>::inline_schema()
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                <String as schemars::JsonSchema>::schema_name()
            }
            fn schema_id() -> std::borrow::Cow<'static, str> {
                <String as schemars::JsonSchema>::schema_id()
            }
            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <String as schemars::JsonSchema>::json_schema(generator)
            }
        }
    };
}

wire_words! {
    /// A test result's outcome, in resultsdb's words.
    pub enum Outcome {
        /// The test passed.
        Passed = "PASSED",
        /// The test failed: the series is at fault (`reason` says how).
        Failed = "FAILED",
        /// The test could not run properly: the infrastructure (or an earlier failure) is at fault.
        Error = "ERROR",
        /// Nothing to judge, only to tell (`already-merged`).
        Info = "INFO",
        /// A person has to look.
        NeedsInspection = "NEEDS_INSPECTION",
        /// Waiting for a runner.
        Queued = "QUEUED",
        /// A runner has it.
        Running = "RUNNING",
    }
}

wire_words! {
    /// Why a result is not PASSED (the `reason` of results): how a test failed, why it could not
    /// run, or what INFO tells. An ERROR's own words (`git clone failed: …`) are kept as `Other`.
    pub enum FailureKind {
        /// FAILED: the script exited non-zero.
        Failed = "failed",
        /// FAILED: the script ran out of wall-clock time.
        Timeout = "timeout",
        /// FAILED: the script ran out of memory.
        Memory = "memory",
        /// FAILED `apply`: a patch does not apply (`failed_patch` names it).
        Apply = "apply",
        /// ERROR: a test could not run because its series does not apply.
        SeriesDoesNotApply = "series-does-not-apply",
        /// INFO: every patch is in the branch already, so nothing was tested (the verdict is MERGED).
        AlreadyMerged = "already-merged",
    }
}

wire_words! {
    /// A series version's verdict, as published (`ci.series.verdict`) and reported.
    pub enum VerdictKind {
        /// Every required result passed (or was waived).
        Passed = "PASSED",
        /// A required result failed, or the series does not apply.
        Failed = "FAILED",
        /// The deadline passed with required results missing.
        Incomplete = "INCOMPLETE",
        /// The series is already in the branch: nothing was tested, nothing failed.
        Merged = "MERGED",
    }
}

wire_words! {
    /// What a mail is, as `mail.message.received` says (`patchbay-mail`'s parser decides it).
    pub enum MailKind {
        /// A patch (`[PATCH n/N]` with a diff).
        Patch = "patch",
        /// A series' cover letter (`0/N`).
        Cover = "cover",
        /// A pull request (`git request-pull`).
        Pull = "pull",
        /// Anything else: a review, a reply.
        Comment = "comment",
    }
}

wire_words! {
    /// How a report went out (`report.email.sent`).
    pub enum TransportKind {
        /// Written to the outbox maildir.
        Outbox = "outbox",
        /// Handed to the SMTP server.
        Smtp = "smtp",
    }
}

/// patchbay's own services, by the sender name each publishes under. Roles (which topics a
/// sender may publish) and the names a shell may not take are keyed on these; `Sender::service`
/// stays a string, because any other program may publish under a name of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    /// Stores mail (`mail.#`).
    Ingest,
    /// Assembles series (`series.#`).
    Threader,
    /// Turns complete series into jobs (`ci.job.#`).
    Dispatcher,
    /// Runs jobs (`ci.test.#`, `ci.runner.#`).
    Runner,
    /// Records results and issues verdicts (`ci.result.#`, `ci.series.#`).
    Aggregator,
    /// Mails reports (`report.#`).
    Reporter,
    /// The dashboard's admin actions (re-queue a job, re-issue a verdict).
    Admin,
}

impl ServiceName {
    /// Every service, in pipeline order.
    pub const ALL: [ServiceName; 7] = [
        ServiceName::Ingest,
        ServiceName::Threader,
        ServiceName::Dispatcher,
        ServiceName::Runner,
        ServiceName::Aggregator,
        ServiceName::Reporter,
        ServiceName::Admin,
    ];

    /// Every service's sender name, for lists kept as strings (reserved names, roles).
    pub const NAMES: [&'static str; 7] = {
        let mut names = [""; 7];
        let mut i = 0;
        while i < names.len() {
            names[i] = ServiceName::ALL[i].as_str();
            i += 1;
        }
        names
    };

    /// The sender name (and queue name) on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceName::Ingest => "ingest",
            ServiceName::Threader => "threader",
            ServiceName::Dispatcher => "dispatcher",
            ServiceName::Runner => "runner",
            ServiceName::Aggregator => "aggregator",
            ServiceName::Reporter => "reporter",
            ServiceName::Admin => "admin",
        }
    }

    /// The service a sender name is, exactly as spelled; `None` for any other sender.
    pub fn parse(name: &str) -> Option<Self> {
        ServiceName::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The sender name, for logs.
impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// Whether the result is in: anything but QUEUED and RUNNING.
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Queued | Outcome::Running)
    }

    /// Whether it fails a verdict unless waived: FAILED and ERROR alike, so PASSED means every
    /// required test really passed.
    pub fn fails(&self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_read_and_write_back_as_the_strings_they_replaced() {
        for word in ["PASSED", "FAILED", "ERROR", "INFO", "NEEDS_INSPECTION", "QUEUED", "RUNNING", "SKIPPED"] {
            let outcome: Outcome = serde_json::from_value(serde_json::json!(word)).unwrap();
            assert_eq!(outcome, word);
            assert_eq!(serde_json::to_value(&outcome).unwrap(), serde_json::json!(word));
            assert_eq!(format!("{outcome} {outcome:?}"), format!("{word} {word:?}"));
        }
        assert!(matches!(Outcome::from("PASSED"), Outcome::Passed));
        assert!(matches!(Outcome::from("SKIPPED".to_string()), Outcome::Other(w) if w == "SKIPPED"));
        assert_eq!(Outcome::Other("ERROR".into()), Outcome::Error);
        assert!(Outcome::Error.fails() && !Outcome::Info.fails() && !Outcome::Running.is_final());
        for word in ["failed", "timeout", "memory", "apply", "series-does-not-apply", "already-merged", "git clone failed: 128"] {
            let kind: FailureKind = serde_json::from_value(serde_json::json!(word)).unwrap();
            assert_eq!(serde_json::to_value(&kind).unwrap(), serde_json::json!(word));
        }
        assert!(matches!(FailureKind::from("already-merged"), FailureKind::AlreadyMerged));
        for word in ["patch", "cover", "pull", "comment", "outbox", "smtp"] {
            let (kind, transport) = (MailKind::from(word), TransportKind::from(word));
            assert!(kind.known().is_some() || transport.known().is_some(), "{word}");
            assert_eq!((kind.as_str(), serde_json::to_value(&transport).unwrap()), (word, serde_json::json!(word)));
        }
        assert_eq!(ServiceName::NAMES, ["ingest", "threader", "dispatcher", "runner", "aggregator", "reporter", "admin"]);
        assert_eq!(ServiceName::parse("runner"), Some(ServiceName::Runner));
        assert_eq!(ServiceName::parse("Runner"), None);
        for word in ["PASSED", "FAILED", "INCOMPLETE", "MERGED", "WAIVED"] {
            let verdict: VerdictKind = serde_json::from_value(serde_json::json!(word)).unwrap();
            assert_eq!(serde_json::to_value(&verdict).unwrap(), serde_json::json!(word));
            assert_eq!(verdict.known().is_some(), word != "WAIVED");
        }
        assert_eq!(
            serde_json::to_value(schemars::schema_for!(Outcome)).unwrap()["type"],
            serde_json::to_value(schemars::schema_for!(String)).unwrap()["type"]
        );
    }
}
