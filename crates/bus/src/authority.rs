//! Authority over topics: which sender may say what.
//!
//! A signature says which key sealed a message; it does not say that the
//! sender had any business saying it. Each of patchbay's services owns the
//! topics of its role (the runner results, the dispatcher jobs, the aggregator
//! verdicts), and every consumer drops what a sender may not say, signed or
//! not. A sender that is not a service (a shell script, `patchbay publish`,
//! an operator's tool) has the rest of the topic space: it can never publish
//! in a category a role owns (`mail`, `series`, `ci`, `report`), so it can
//! never speak for a service.
//!
//! Roles are matched on the sender's service name exactly; anything else is a
//! shell. Knows nothing of keys, backends or HTTP.

use std::collections::BTreeMap;

use patchbay_model::{Sender, ServiceName, Topic, TopicRoot};

use crate::{PatternError, Rejection, TopicPattern};

/// The topics each of patchbay's own services may publish, as suffixes under the topic root.
/// `admin` re-queues a job and re-issues a verdict for the dashboard's buttons, which need
/// an admin token.
pub const DEFAULT_ROLES: &[(&str, &[&str])] = &[
    (ServiceName::Ingest.as_str(), &["mail.#"]),
    (ServiceName::Threader.as_str(), &["series.#"]),
    (ServiceName::Dispatcher.as_str(), &["ci.job.#"]),
    (ServiceName::Runner.as_str(), &["ci.test.#", "ci.runner.#"]),
    (ServiceName::Aggregator.as_str(), &["ci.result.#", "ci.series.#"]),
    (ServiceName::Reporter.as_str(), &["report.#"]),
    (ServiceName::Admin.as_str(), &["ci.job.#", "ci.series.verdict"]),
];

/// Which service owns which topics under one deployment's root.
#[derive(Clone, Debug)]
pub struct Authority {
    root: TopicRoot,
    /// Service name → full patterns it may publish, in the order granted (the first match
    /// names a topic's owner in refusals).
    roles: Vec<(String, Vec<TopicPattern>)>,
    /// Category (first word of the suffix) → the first role that publishes in it.
    categories: BTreeMap<String, String>,
}

impl Authority {
    /// The default roles of patchbay's services under `root`.
    pub fn new(root: TopicRoot) -> Self {
        let mut a = Authority { root, roles: Vec::new(), categories: BTreeMap::new() };
        for (service, patterns) in DEFAULT_ROLES {
            a.grant(service, patterns.iter().copied()).expect("the default roles are valid patterns");
        }
        a
    }

    /// Lets `service` publish topics matching the suffix `patterns` (`build.#`); a new service
    /// name becomes a role, and the categories it publishes in are closed to shells.
    pub fn grant<'a>(&mut self, service: &str, patterns: impl IntoIterator<Item = &'a str>) -> Result<(), PatternError> {
        for suffix in patterns {
            let full = TopicPattern::parse(&format!("{}.{suffix}", self.root.as_str()))?;
            let category = suffix.split('.').next().unwrap_or_default();
            if !matches!(category, "*" | "#") {
                self.categories.entry(category.to_string()).or_insert_with(|| service.to_string());
            }
            match self.roles.iter_mut().find(|(s, _)| s == service) {
                Some((_, ps)) => ps.push(full),
                None => self.roles.push((service.to_string(), vec![full])),
            }
        }
        Ok(())
    }

    /// The topic root the roles live under.
    pub fn root(&self) -> &TopicRoot {
        &self.root
    }

    /// Whether `service` is a role's name, compared without case: a shell that calls itself
    /// `RUNNER` is refused at the edge even though consumers would treat it as a shell.
    pub fn is_role(&self, service: &str) -> bool {
        self.roles.iter().any(|(r, _)| r.eq_ignore_ascii_case(service))
    }

    /// Roles and their patterns, for `config check`.
    pub fn roles(&self) -> impl Iterator<Item = (&str, &[TopicPattern])> {
        self.roles.iter().map(|(s, p)| (s.as_str(), p.as_slice()))
    }

    /// The role that publishes `topic`, or else owns its category, if a role does.
    pub fn owner(&self, topic: &str) -> Option<&str> {
        if let Some((service, _)) = self.roles.iter().find(|(_, ps)| ps.iter().any(|p| p.matches_str(topic))) {
            return Some(service);
        }
        let category = self.root.suffix_of(topic)?.split('.').next()?;
        self.categories.get(category).map(String::as_str)
    }

    /// Decides whether `sender` may publish `topic`.
    pub fn check(&self, sender: &Sender, topic: &Topic) -> Result<(), Rejection> {
        match self.roles.iter().find(|(s, _)| *s == sender.service).map(|(_, ps)| ps) {
            Some(patterns) if patterns.iter().any(|p| p.matches(topic)) => Ok(()),
            Some(_) => Err(Rejection::OffRole { service: sender.service.clone(), topic: topic.to_string() }),
            None => match self.owner(topic.as_str()) {
                Some(owner) => {
                    Err(Rejection::Reserved { service: sender.service.clone(), topic: topic.to_string(), owner: owner.to_string() })
                }
                None => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        Authority::new(TopicRoot::new("org.example", "prod").unwrap())
    }

    fn check(a: &Authority, service: &str, suffix: &str) -> Result<(), Rejection> {
        let topic = a.root().topic(suffix).unwrap();
        a.check(&Sender::new(service, "main"), &topic)
    }

    #[test]
    fn each_service_publishes_only_its_role() {
        let a = authority();
        for (service, suffix) in [
            ("ingest", "mail.message.received"),
            ("threader", "series.series.complete"),
            ("dispatcher", "ci.job.build.x86_64.queued"),
            ("runner", "ci.test.finished"),
            ("runner", "ci.test.log"),
            ("runner", "ci.runner.heartbeat"),
            ("aggregator", "ci.result.recorded"),
            ("aggregator", "ci.series.verdict"),
            ("reporter", "report.email.sent"),
            ("admin", "ci.job.build.x86_64.queued"),
            ("admin", "ci.series.verdict"),
        ] {
            assert_eq!(check(&a, service, suffix), Ok(()), "{service} on {suffix}");
        }
        for (service, suffix) in [
            ("runner", "ci.job.build.x86_64.queued"),
            ("runner", "ci.series.verdict"),
            ("dispatcher", "ci.test.finished"),
            ("aggregator", "ci.test.finished"),
            ("ingest", "series.series.complete"),
            ("admin", "ci.test.finished"),
            ("reporter", "shell.message.logged"),
        ] {
            assert!(matches!(check(&a, service, suffix), Err(Rejection::OffRole { .. })), "{service} on {suffix}");
        }
    }

    #[test]
    fn a_shell_never_speaks_in_a_service_category() {
        let a = authority();
        for suffix in ["ci.test.finished", "ci.job.build.any.queued", "ci.anything.new", "mail.message.received", "report.email.sent"] {
            for service in ["shell", "RUNNER", "Runner", "nightly"] {
                let err = check(&a, service, suffix).unwrap_err();
                assert!(matches!(err, Rejection::Reserved { .. }), "{service} on {suffix}: {err}");
            }
        }
        assert_eq!(check(&a, "shell", "shell.message.logged"), Ok(()));
        assert_eq!(check(&a, "nightly", "build.nightly.done"), Ok(()));
        let other_root = Topic::parse("org.example.staging.ci.test.finished").unwrap();
        assert_eq!(a.check(&Sender::new("shell", "x"), &other_root), Ok(()), "another deployment's topics are not ours to police");
        assert!(a.is_role("RUNNER") && !a.is_role("shell"));
        let e = check(&a, "shell", "ci.test.finished").unwrap_err().to_string();
        assert!(e.contains("\"shell\"") && e.contains("runner"), "{e}");
    }

    #[test]
    fn the_operator_extends_roles() {
        let mut a = authority();
        a.grant("nightly", ["build.#"]).unwrap();
        a.grant("runner", ["ci.bench.#"]).unwrap();
        assert_eq!(check(&a, "nightly", "build.nightly.done"), Ok(()));
        assert!(matches!(check(&a, "shell", "build.nightly.done"), Err(Rejection::Reserved { .. })));
        assert!(matches!(check(&a, "nightly", "ci.test.finished"), Err(Rejection::OffRole { .. })));
        assert_eq!(check(&a, "runner", "ci.bench.done.now"), Ok(()));
        assert!(a.grant("x", ["a.#b"]).is_err());
    }
}
