//! Re-tests asked on the list, as DPDK's labs take them: a reply to a series (or to its
//! report) from the submitter or a project maintainer, carrying `Recheck-request: <tests>`
//! or `patchbay: retest [<tests>]` on a line of its own (quoted lines do not count), re-runs
//! those tests on the same version once, as a new round with its own verdict and report.
//!
//! [`ask`] and [`decide`] are pure; [`Rechecker`] is the service on `mail.message.received`
//! (sender `dispatcher`, whose role owns `ci.job.#`). It claims the round in the results store
//! (its verdict row, keyed by round: two requests at once cannot both take round N, and the
//! deadline sweep decides a round whose jobs were lost), then republishes the version's own
//! jobs (from the history, as an admin's re-run does) with `round` and `recheck` set, and says
//! what it did on [`ACCEPTED_TOPIC`] or why not on [`REFUSED_TOPIC`]: a refusal (a stranger,
//! an unknown test, too many rounds, the same request again) is never mailed. A request heard
//! again (a redelivery) publishes its round's jobs again, under the same ids.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::{Outgoing, Publisher};
use patchbay_model::{Envelope, MailKind, MailReceived, SeriesHead, TestJob};
use patchbay_runtime::{BodyHandler, HandlerError};

/// The topic suffix of an accepted re-test (body `patchbay.json` v1: `series`, `round`,
/// `recheck`, `mail`, `by`); within the dispatcher's role, bound by no job queue.
pub const ACCEPTED_TOPIC: &str = "ci.job.recheck.accepted";

/// The topic suffix of a refused re-test (body `patchbay.json` v1: `series` when known,
/// `mail`, `by`, `reason`).
pub const REFUSED_TOPIC: &str = "ci.job.recheck.refused";

/// What a reply asks to re-run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Every test of the series.
    All,
    /// These tests, by name (`build`) or label (`build/x86_64`).
    Tests(Vec<String>),
}

/// The re-test request a mail's text carries, if any: the first unquoted line starting with
/// `Recheck-request:` or `patchbay: retest` (any case); names are separated by commas or
/// spaces, and none asks for every test.
pub fn ask(text: &str) -> Option<Ask> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('>') {
            continue;
        }
        let rest = strip_ci(line, "recheck-request:").or_else(|| {
            let rest = strip_ci(line, "patchbay:")?.trim_start();
            let rest = strip_ci(rest, "retest")?;
            (rest.is_empty() || rest.starts_with([' ', '\t', ','])).then_some(rest)
        });
        let Some(rest) = rest else { continue };
        let names: Vec<String> = rest.split([',', ' ', '\t']).filter(|n| !n.is_empty()).map(str::to_string).collect();
        return Some(if names.is_empty() { Ask::All } else { Ask::Tests(names) });
    }
    None
}

fn strip_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// A round already accepted for a series version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its number, from 1.
    pub round: u32,
    /// The labels it re-ran, sorted.
    pub recheck: Vec<String>,
    /// The Message-ID of the mail that asked.
    pub mail: String,
}

/// The label of a job, as verdicts name it (`build/x86_64`; `apply` alone).
pub fn label(job: &TestJob) -> String {
    if job.arch == patchbay_model::ANY_ARCH { job.test.clone() } else { format!("{}/{}", job.test, job.arch) }
}

/// Whether `asker` (an address) may ask for a re-test of `jobs`' series, what round it is and
/// which jobs it re-runs; or why not. `allowed` are the project's maintainers' addresses (the
/// submitter always may); `max` rounds per version at most.
pub fn decide<'a>(
    ask: &Ask,
    asker: &str,
    allowed: &[String],
    jobs: &'a [TestJob],
    rounds: &[Accepted],
    max: u32,
) -> Result<(u32, Vec<String>, Vec<&'a TestJob>), String> {
    let Some(first) = jobs.first() else { return Err("no test jobs are known for this series version".into()) };
    let asker = asker.trim().to_ascii_lowercase();
    let submitter = address(&first.series.submitter).to_ascii_lowercase();
    if asker != submitter && !allowed.iter().any(|a| address(a).eq_ignore_ascii_case(&asker)) {
        return Err(format!("{asker} is neither the submitter nor a maintainer of {}", first.series.project));
    }
    let tests: Vec<&TestJob> = jobs.iter().filter(|j| j.test != patchbay_model::APPLY_TEST).collect();
    let chosen: Vec<&TestJob> = match ask {
        Ask::All => tests.clone(),
        Ask::Tests(names) => {
            let unknown: Vec<&str> =
                names.iter().filter(|n| !tests.iter().any(|j| j.test == **n || label(j) == **n)).map(String::as_str).collect();
            if !unknown.is_empty() {
                let mut known: Vec<String> = tests.iter().map(|j| j.test.clone()).collect();
                known.dedup();
                return Err(format!("unknown test {} (this series has: {})", unknown.join(", "), known.join(", ")));
            }
            tests.iter().copied().filter(|j| names.iter().any(|n| j.test == *n || label(j) == *n)).collect()
        }
    };
    if chosen.is_empty() {
        return Err("this series has no test to run again".into());
    }
    let mut labels: Vec<String> = chosen.iter().map(|j| label(j)).collect();
    labels.sort();
    labels.dedup();
    if let Some(same) = rounds.iter().find(|r| r.recheck == labels) {
        return Err(format!("already re-tested in round {} ({})", same.round, labels.join(", ")));
    }
    if rounds.len() as u32 >= max {
        return Err(format!("at most {max} re-tests per series version (dispatch.max_rechecks)"));
    }
    let round = rounds.iter().map(|r| r.round).max().unwrap_or(0) + 1;
    Ok((round, labels, chosen))
}

/// The bare address of `Name <addr>` (or the text itself).
fn address(mailbox: &str) -> &str {
    match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(a), Some(b)) if a < b => &mailbox[a + 1..b],
        _ => mailbox.trim(),
    }
}

/// A mail that may ask for a re-test, as the store has it.
#[derive(Clone, Debug)]
pub struct AskingMail {
    /// Its From address.
    pub from: Option<String>,
    /// Its text, diff left out.
    pub text: String,
    /// The Message-IDs it answers, nearest first (`In-Reply-To`, then `References` backwards).
    pub answers: Vec<String>,
}

/// What the rechecker reads (the binary implements it over the store and the history).
#[async_trait]
pub trait RecheckPorts: Send + Sync + 'static {
    /// The stored mail `id`.
    async fn mail(&self, id: i64) -> Result<Option<AskingMail>, String>;
    /// The series (public id) a mail with this Message-ID is part of.
    async fn series_of_mail(&self, message_id: &str) -> Result<Option<i64>, String>;
    /// The jobs the dispatcher queued for series `id`'s first testing.
    async fn jobs(&self, id: i64) -> Result<Vec<TestJob>, String>;
    /// The re-test rounds claimed for the series version so far.
    async fn rounds(&self, head: &SeriesHead) -> Result<Vec<Accepted>, String>;
    /// Claims round `round` for `recheck`, asked by mail `mail`; false when it was taken first.
    async fn claim(&self, head: &SeriesHead, round: u32, recheck: &[String], mail: &str) -> Result<bool, String>;
}

/// Who may ask for re-tests in one project.
#[derive(Clone, Debug)]
pub struct RecheckProject {
    /// Project name.
    pub name: String,
    /// Its list ids: a request must come through one of them.
    pub list_ids: Vec<String>,
    /// Maintainers' addresses (besides each series' submitter).
    pub maintainers: Vec<String>,
}

/// The re-test service (see the module comment).
pub struct Rechecker {
    ports: Arc<dyn RecheckPorts>,
    projects: Vec<RecheckProject>,
    publisher: Publisher,
    max_rounds: u32,
    /// The domain of report Message-IDs (`report.domain`), so a reply to a report is placed.
    report_domain: String,
}

impl Rechecker {
    /// A rechecker publishing as `publisher` (sender `dispatcher`), at most `max_rounds` re-tests per version.
    pub fn new(
        ports: Arc<dyn RecheckPorts>,
        projects: Vec<RecheckProject>,
        publisher: Publisher,
        max_rounds: u32,
        report_domain: String,
    ) -> Self {
        Rechecker { ports, projects, publisher, max_rounds, report_domain }
    }

    /// The series a mail answers: a report's (by its Message-ID), else the nearest one of its
    /// ancestors that is part of a series.
    async fn answered(&self, mail: &AskingMail) -> Result<Option<i64>, HandlerError> {
        for id in &mail.answers {
            if let Some(series) = report_series(id, &self.report_domain) {
                return Ok(Some(series));
            }
            if let Some(series) = self.ports.series_of_mail(id).await.map_err(HandlerError::Transient)? {
                return Ok(Some(series));
            }
        }
        Ok(None)
    }

    fn free_form(&self, suffix: &str, body: serde_json::Value) -> Result<Outgoing, HandlerError> {
        self.publisher.free_form(suffix, body).map_err(|e| HandlerError::Permanent(e.to_string()))
    }

    /// Round `round`'s copies of `jobs`: their own ids (`-r<round>`), first runs of their retries.
    fn round_jobs(&self, jobs: &[&TestJob], round: u32, labels: &[String]) -> Result<Vec<Outgoing>, HandlerError> {
        jobs.iter()
            .map(|job| {
                let again = TestJob {
                    job: format!("{}-r{round}", job.job),
                    round,
                    recheck: labels.to_vec(),
                    retry: 0,
                    avoid: None,
                    ..(*job).clone()
                };
                self.publisher.outgoing(&again).map_err(|e| HandlerError::Permanent(e.to_string()))
            })
            .collect()
    }

    async fn publish(&self, out: Vec<Outgoing>) -> Result<(), HandlerError> {
        self.publisher.bus().publish(out).await.map(|_| ()).map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

/// The series id of a report's Message-ID `<patchbay-report-<series>-v<version>[-r<n>]@<domain>>`.
pub fn report_series(message_id: &str, domain: &str) -> Option<i64> {
    let inner = message_id.trim().strip_prefix('<')?.strip_suffix('>')?;
    let (local, at) = inner.rsplit_once('@')?;
    if !at.eq_ignore_ascii_case(domain) {
        return None;
    }
    let (series, _) = local.strip_prefix("patchbay-report-")?.split_once("-v")?;
    series.parse().ok()
}

#[async_trait]
impl BodyHandler<MailReceived> for Rechecker {
    async fn handle_body(&self, _envelope: &Envelope, m: MailReceived, _attempt: u32) -> Result<(), HandlerError> {
        // Patches and covers are postings, not requests; only replies can ask.
        if m.kind != MailKind::Comment {
            return Ok(());
        }
        if !self.projects.iter().any(|p| m.lists.iter().any(|l| p.list_ids.contains(&l.to_ascii_lowercase()))) {
            return Ok(());
        }
        let Some(mail) = self.ports.mail(m.mail).await.map_err(HandlerError::Transient)? else { return Ok(()) };
        let Some(ask) = ask(&mail.text) else { return Ok(()) };
        let by = mail.from.clone().unwrap_or_default();
        let series = self.answered(&mail).await?;
        // `series`: the series' head when its jobs are known, else its bare id (or null), so the
        // series page, which looks refusals up by id, shows every refusal of its series.
        let refuse = |series: serde_json::Value, reason: String| {
            tracing::info!(mail = %m.message_id, %by, %reason, "Re-test refused.");
            self.free_form(REFUSED_TOPIC, serde_json::json!({"series": series, "mail": m.message_id, "by": by, "reason": reason}))
        };
        let Some(series) = series else {
            let out = refuse(serde_json::Value::Null, "the mail answers no series patchbay knows".into())?;
            return self.publish(vec![out]).await;
        };
        let jobs: Vec<TestJob> = self.ports.jobs(series).await.map_err(HandlerError::Transient)?;
        let Some(head) = jobs.first().map(|j| j.series.clone()) else {
            let out = refuse(series.into(), "no test jobs are known for this series version".into())?;
            return self.publish(vec![out]).await;
        };
        // Permission is the series' own project's (its submitter and maintainers), whichever
        // configured list the request came through: a maintainer of another project asks for
        // nothing here, and a reply cross-posted to several lists is judged alike whichever
        // copy came first (later copies of the same mail are not announced again).
        let head_json = serde_json::to_value(&head).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let Some(project) = self.projects.iter().find(|p| p.name == head.project) else {
            let out = refuse(head_json, format!("project {} takes no re-tests by mail", head.project))?;
            return self.publish(vec![out]).await;
        };
        let rounds = self.ports.rounds(&head).await.map_err(HandlerError::Transient)?;
        if let Some(heard) = rounds.iter().find(|r| r.mail == m.message_id) {
            // This very mail was heard before (a redelivery): its round is claimed; its jobs go
            // out again under the same ids, in case a crash kept them from going out at all.
            let chosen: Vec<&TestJob> = jobs.iter().filter(|j| heard.recheck.contains(&label(j))).collect();
            let out = self.round_jobs(&chosen, heard.round, &heard.recheck)?;
            return self.publish(out).await;
        }
        let (round, labels, chosen) = match decide(&ask, &by, &project.maintainers, &jobs, &rounds, self.max_rounds) {
            Ok(accepted) => accepted,
            Err(reason) => {
                let out = refuse(head_json, reason)?;
                return self.publish(vec![out]).await;
            }
        };
        if !self.ports.claim(&head, round, &labels, &m.message_id).await.map_err(HandlerError::Transient)? {
            return Err(HandlerError::Transient(format!("round {round} of this version was just taken; deciding again")));
        }
        let mut out = self.round_jobs(&chosen, round, &labels)?;
        let n = out.len();
        out.push(self.free_form(
            ACCEPTED_TOPIC,
            serde_json::json!({"series": head, "round": round, "recheck": labels, "mail": m.message_id, "by": by}),
        )?);
        // The round's jobs and its announcement together, or none of them.
        self.publish(out).await?;
        patchbay_metrics::metrics().jobs_queued.inc_by(n as u64);
        tracing::info!(series, round, tests = %labels.join(", "), %by, "Re-test queued.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_line_of_its_own_and_never_a_quote() {
        assert_eq!(ask("Thanks!\nRecheck-request: build, lint\n"), Some(Ask::Tests(vec!["build".into(), "lint".into()])));
        assert_eq!(ask("recheck-request:build/x86_64"), Some(Ask::Tests(vec!["build/x86_64".into()])));
        assert_eq!(ask("  patchbay: retest\n"), Some(Ask::All));
        assert_eq!(ask("Patchbay: retest build lint"), Some(Ask::Tests(vec!["build".into(), "lint".into()])));
        assert_eq!(ask("Recheck-request:"), Some(Ask::All));
        assert_eq!(ask("> Recheck-request: build\nI agree with the above."), None, "a quote asks nothing");
        assert_eq!(ask("please do a patchbay: retest build"), None, "not a line of its own");
        assert_eq!(ask("patchbay: retesting is slow"), None);
        assert_eq!(ask("Looks good to me."), None);
    }

    fn job(test: &str, arch: &str) -> TestJob {
        TestJob {
            job: format!("7-v2-{test}-{arch}"),
            series: SeriesHead {
                id: 7,
                project: "net".into(),
                name: "x".into(),
                submitter: "Ann <ann@example.org>".into(),
                version: 2,
                total: 1,
            },
            test: test.into(),
            arch: arch.into(),
            capabilities: vec![],
            required: true,
            repository: "r".into(),
            branch: "main".into(),
            base_commit: None,
            dependencies: vec![],
            mbox: String::new(),
            mbox_base64: None,
            script: None,
            limits: patchbay_model::TestLimits { wall_secs: 1, memory_mib: 1, processes: 1, file_size_mib: 1, output_kib: 1 },
            date: None,
            tree: None,
            remotes: vec![],
            retries: 0,
            retry: 0,
            avoid: None,
            baseline: false,
            per_patch: false,
            round: 0,
            recheck: vec![],
        }
    }

    #[test]
    fn the_submitter_or_a_maintainer_may_re_test_known_tests_a_few_times() {
        let jobs = [job("apply", "any"), job("build", "x86_64"), job("build", "arm64"), job("lint", "x86_64")];
        let maint = vec!["Bob <bob@example.org>".to_string()];
        let tests = |t: &[&str]| Ask::Tests(t.iter().map(|s| s.to_string()).collect());
        let (round, labels, chosen) = decide(&tests(&["build"]), "ANN@example.org", &maint, &jobs, &[], 3).unwrap();
        assert_eq!((round, labels.clone()), (1, vec!["build/arm64".to_string(), "build/x86_64".to_string()]));
        assert_eq!(chosen.len(), 2);
        let (_, all, _) = decide(&Ask::All, "bob@example.org", &maint, &jobs, &[], 3).unwrap();
        assert_eq!(all, ["build/arm64", "build/x86_64", "lint/x86_64"], "every test, apply left out");
        let e = decide(&tests(&["build"]), "eve@example.org", &maint, &jobs, &[], 3).unwrap_err();
        assert!(e.contains("neither the submitter nor a maintainer of net"), "{e}");
        let e = decide(&tests(&["fuzz"]), "ann@example.org", &maint, &jobs, &[], 3).unwrap_err();
        assert!(e.contains("unknown test fuzz (this series has: build, lint)"), "{e}");
        let done = Accepted { round: 1, recheck: labels, mail: "<m1>".into() };
        let e = decide(&tests(&["build"]), "ann@example.org", &maint, &jobs, std::slice::from_ref(&done), 3).unwrap_err();
        assert!(e.contains("already re-tested in round 1"), "{e}");
        let (round, ..) = decide(&tests(&["lint/x86_64"]), "ann@example.org", &maint, &jobs, std::slice::from_ref(&done), 3).unwrap();
        assert_eq!(round, 2);
        let e = decide(&tests(&["lint"]), "ann@example.org", &maint, &jobs, &[done], 1).unwrap_err();
        assert!(e.contains("at most 1 re-tests per series version"), "{e}");
        assert!(decide(&Ask::All, "ann@example.org", &maint, &[], &[], 3).is_err(), "no jobs known");
    }

    #[test]
    fn a_reply_to_a_report_names_its_series() {
        assert_eq!(report_series("<patchbay-report-4211-v2@ci.example.org>", "ci.example.org"), Some(4211));
        assert_eq!(report_series("<patchbay-report-4211-v2-r1@ci.example.org>", "ci.example.org"), Some(4211));
        assert_eq!(report_series("<patchbay-report-4211-v2@elsewhere.org>", "ci.example.org"), None, "another instance's");
        assert_eq!(report_series("<20240101.abc@example.org>", "ci.example.org"), None);
    }
}
