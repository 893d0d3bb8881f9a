//! The dispatcher: a complete series in, one job per (test, arch) out.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::{Outgoing, Publisher};
use patchbay_model::{Envelope, Sender, SeriesComplete, TestJob, TestLimits};
use patchbay_runtime::{BodyHandler, HandlerError};

/// One test as the dispatcher needs it.
#[derive(Clone, Debug)]
pub struct TestDef {
    /// Name (a topic word).
    pub name: String,
    /// Script.
    pub script: String,
    /// Arches.
    pub arches: Vec<String>,
    /// Limits.
    pub limits: TestLimits,
    /// Whether the verdict waits for it.
    pub required: bool,
    /// Runner labels needed beyond the arch.
    pub capabilities: Vec<String>,
    /// Re-runs of a failure.
    pub retries: u32,
    /// A failure is checked on the base alone.
    pub baseline: bool,
    /// The script runs after each patch.
    pub per_patch: bool,
}

/// A project's repository and tests.
#[derive(Clone, Debug)]
pub struct ProjectTests {
    /// Project name, as in series events.
    pub name: String,
    /// Repository URL or path.
    pub repository: String,
    /// Branch used when a series names no usable base.
    pub branch: String,
    /// Tests.
    pub tests: Vec<TestDef>,
    /// The tree map: which repository and branch a series goes to, first match wins.
    pub trees: Vec<Tree>,
}

/// One entry of a project's tree map (`[[project.tree]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// Subject tags (lower case) that send a series here: `net-next` in `[PATCH net-next 1/3]`.
    pub tags: Vec<String>,
    /// Path prefixes that send a series here when no tag did: `drivers/net/`.
    pub paths: Vec<String>,
    /// Repository.
    pub repository: String,
    /// Branch.
    pub branch: String,
}

/// Where else a `base-commit:` may be for a job on `repository`: the project's other
/// repositories, its own first, then its tree map's in order, each once.
pub fn other_repositories(project: &ProjectTests, repository: &str) -> Vec<String> {
    let mut remotes: Vec<String> = Vec::new();
    for r in std::iter::once(&project.repository).chain(project.trees.iter().map(|t| &t.repository)) {
        if r != repository && !remotes.contains(r) {
            remotes.push(r.clone());
        }
    }
    remotes
}

/// The words inside a subject's leading brackets, lower-cased: `[PATCH net-next v2 1/3]` gives
/// `patch`, `net-next`, `v2`, `1/3` (tags are compared with these).
fn bracket_words(subject: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = subject.trim_start();
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(end) = inner.find(']') else { break };
        words.extend(inner[..end].split([' ', ',', ';', '\t']).filter(|w| !w.is_empty()).map(str::to_ascii_lowercase));
        rest = inner[end + 1..].trim_start();
    }
    words
}

/// The files a series' mbox changes, from its `diff --git a/X b/Y` lines (both names).
fn touched(mbox: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in mbox.lines() {
        if let Some(rest) = line.strip_prefix("diff --git a/")
            && let Some((a, b)) = rest.split_once(" b/")
        {
            out.push(a);
            out.push(b);
        }
    }
    out
}

/// The tree map's choice for a series (tags of its patches' subjects first, then the paths
/// its diffs touch; the first matching entry in order), with why, or `None` for the project's
/// own repository and branch.
pub fn pick_tree<'a>(trees: &'a [Tree], series: &SeriesComplete) -> Option<(&'a Tree, String)> {
    let words: Vec<String> = series.patches.iter().flat_map(|p| bracket_words(&p.subject)).collect();
    for tree in trees {
        if let Some(tag) = tree.tags.iter().find(|t| words.contains(t)) {
            return Some((tree, format!("subject tag {tag}")));
        }
    }
    let files = touched(&series.mbox);
    for tree in trees {
        for prefix in &tree.paths {
            if let Some(file) = files.iter().find(|f| f.starts_with(prefix.as_str())) {
                return Some((tree, format!("it touches {file}")));
            }
        }
    }
    None
}

/// Finds the series a `Based-on:` or `Depends-on:` line names, as an mbox, when it is stored
/// and complete (the binary implements it over the store).
#[async_trait]
pub trait Dependencies: Send + Sync + 'static {
    /// The mbox of the complete series that `reference` (a Message-ID or a URL) names.
    async fn mbox(&self, reference: &str) -> Option<String>;
}

/// No dependency lookup: `Based-on:` is ignored.
pub struct NoDependencies;

#[async_trait]
impl Dependencies for NoDependencies {
    async fn mbox(&self, _reference: &str) -> Option<String> {
        None
    }
}

/// What the age rule needs to know of a series' mails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailDates {
    /// The newest `Date:` of its mails (unix seconds; the arrival time for a mail without one).
    pub newest: i64,
    /// Whether testing was asked for whatever the age (`patchbay import --test`).
    pub test_anyway: bool,
}

/// Finds the dates of a series' mails (the binary implements it over the store).
#[async_trait]
pub trait SeriesDates: Send + Sync + 'static {
    /// The dates of series `id`'s mails; `Ok(None)` when it has none stored here (it is then tested).
    async fn dates(&self, id: i64) -> Result<Option<MailDates>, String>;
}

/// Whether a series whose newest mail is dated `newest` is history at `now`, not work: older
/// than `max_age` seconds (0: never).
pub fn too_old(newest: i64, now: i64, max_age: u64) -> bool {
    max_age > 0 && now.saturating_sub(newest) > max_age.min(i64::MAX as u64) as i64
}

/// The topic suffix on which the dispatcher says it left a series untested (body `patchbay.json` v1:
/// `series`, `newest_date`, `max_age_secs`, `reason`); within its role (`ci.job.#`), and no job queue binds it.
pub const SKIPPED_TOPIC: &str = "ci.job.skipped";

/// The dates of series' mails, and the age rule: series older than `max_age_secs` (0: no
/// limit) are left alone.
struct AgeRule {
    max_age_secs: u64,
    dates: Arc<dyn SeriesDates>,
    sender: Sender,
}

/// The dispatcher service.
pub struct Dispatcher {
    projects: Vec<ProjectTests>,
    publisher: Publisher,
    dependencies: Arc<dyn Dependencies>,
    age: Option<AgeRule>,
}

impl Dispatcher {
    /// Dispatches for `projects`, publishing with `publisher` (sender `dispatcher`).
    pub fn new(projects: Vec<ProjectTests>, publisher: Publisher, dependencies: Arc<dyn Dependencies>) -> Self {
        Dispatcher { projects, publisher, dependencies, age: None }
    }

    /// Leaves untested (and so unreported) every series whose newest mail is dated more than
    /// `max_age_secs` ago (`dispatch.max_age_secs`; 0 keeps no limit), unless its mails ask for a
    /// test anyway; says so in the log and on [`SKIPPED_TOPIC`], published as `sender`. Jobs
    /// carry the series' date from `dates` (whatever the limit), so a runner can apply a series
    /// that no longer applies at the branch head on the branch as it was then.
    pub fn with_max_age(mut self, max_age_secs: u64, dates: Arc<dyn SeriesDates>, sender: Sender) -> Self {
        self.age = Some(AgeRule { max_age_secs, dates, sender });
        self
    }

    /// The dates of `series`' mails, when the dispatcher knows dates and the series is one of its projects'.
    async fn dates(&self, series: &SeriesComplete) -> Result<Option<MailDates>, HandlerError> {
        let Some(rule) = &self.age else { return Ok(None) };
        if !self.projects.iter().any(|p| p.name == series.series.project) {
            return Ok(None);
        }
        rule.dates.dates(series.series.id).await.map_err(HandlerError::Transient)
    }

    /// Whether a series with these dates is too old to test now.
    fn history_not_work(&self, dates: Option<MailDates>) -> bool {
        let (Some(rule), Some(dates)) = (&self.age, dates) else { return false };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        !dates.test_anyway && too_old(dates.newest, now, rule.max_age_secs)
    }

    /// The jobs for one complete series (pure apart from the dependency and date lookups).
    pub async fn jobs(&self, series: &SeriesComplete) -> Vec<TestJob> {
        let date = self.dates(series).await.ok().flatten().map(|d| d.newest);
        self.jobs_dated(series, date).await
    }

    /// The jobs for one complete series whose newest mail is dated `date` (unix seconds).
    async fn jobs_dated(&self, series: &SeriesComplete, date: Option<i64>) -> Vec<TestJob> {
        let Some(project) = self.projects.iter().find(|p| p.name == series.series.project) else { return Vec::new() };
        let mut dependencies = Vec::new();
        for reference in series.based_on.iter().chain(series.depends_on.iter()) {
            match self.dependencies.mbox(reference).await {
                Some(mbox) => dependencies.push(mbox),
                None => {
                    tracing::info!(series = series.series.id, %reference, "Dependency not stored or not complete; applying without it.")
                }
            }
        }
        let picked = pick_tree(&project.trees, series);
        let (repository, branch, tree) = match &picked {
            Some((t, why)) => (t.repository.clone(), t.branch.clone(), Some(why.clone())),
            None => (project.repository.clone(), project.branch.clone(), None),
        };
        let remotes = other_repositories(project, &repository);
        let job = |test: &str, arch: &str| TestJob {
            job: format!("{}-v{}-{test}-{arch}", series.series.id, series.series.version),
            series: series.series.clone(),
            test: test.to_string(),
            arch: arch.to_string(),
            capabilities: Vec::new(),
            required: true,
            repository: repository.clone(),
            branch: branch.clone(),
            base_commit: series.base_commit.clone(),
            dependencies: dependencies.clone(),
            mbox: series.mbox.clone(),
            mbox_base64: series.mbox_base64.clone(),
            script: None,
            limits: TestLimits { wall_secs: 600, memory_mib: 1024, processes: 256, file_size_mib: 1024, output_kib: 256 },
            date,
            tree: tree.clone(),
            remotes: remotes.clone(),
            retries: 0,
            retry: 0,
            avoid: None,
            baseline: false,
            per_patch: false,
            round: 0,
            recheck: Vec::new(),
        };
        let mut jobs = vec![job(patchbay_model::APPLY_TEST, crate::ANY_ARCH)];
        for t in &project.tests {
            for arch in &t.arches {
                let mut j = job(&t.name, arch);
                j.script = Some(t.script.clone());
                j.limits = t.limits.clone();
                j.required = t.required;
                (j.retries, j.baseline, j.per_patch) = (t.retries, t.baseline, t.per_patch);
                j.capabilities = std::iter::once(arch.clone()).chain(t.capabilities.iter().cloned()).collect();
                jobs.push(j);
            }
        }
        jobs
    }
}

#[async_trait]
impl BodyHandler<SeriesComplete> for Dispatcher {
    async fn handle_body(&self, _envelope: &Envelope, series: SeriesComplete, _attempt: u32) -> Result<(), HandlerError> {
        let dates = self.dates(&series).await?;
        if let (true, Some(rule), Some(MailDates { newest, .. })) = (self.history_not_work(dates), &self.age, dates) {
            let reason = format!(
                "its newest mail is dated {newest} (unix time), more than dispatch.max_age_secs = {} ago: stored, not tested or reported (`patchbay import --test` asks for a test)",
                rule.max_age_secs
            );
            tracing::info!(
                series = series.series.id,
                version = series.series.version,
                newest_date = newest,
                "Old series not tested: {reason}."
            );
            let body = serde_json::json!({
                "series": series.series,
                "newest_date": newest,
                "max_age_secs": rule.max_age_secs,
                "reason": reason,
            });
            let out = Outgoing::free_form(self.publisher.root(), &rule.sender, SKIPPED_TOPIC, body)
                .map_err(|e| HandlerError::Permanent(e.to_string()))?;
            self.publisher.bus().publish(vec![out]).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
            return Ok(());
        }
        let jobs = self.jobs_dated(&series, dates.map(|d| d.newest)).await;
        if jobs.is_empty() {
            return Ok(());
        }
        let out = jobs
            .iter()
            .map(|j| self.publisher.outgoing(j))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        // One publish: the jobs of a series are queued together or not at all.
        self.publisher.bus().publish(out).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
        patchbay_metrics::metrics().jobs_queued.inc_by(jobs.len() as u64);
        tracing::info!(series = series.series.id, version = series.series.version, jobs = jobs.len(), "Series dispatched.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(subjects: &[&str], mbox: &str) -> SeriesComplete {
        let head = patchbay_model::SeriesHead {
            id: 1,
            project: "net".into(),
            name: "x".into(),
            submitter: "a@b".into(),
            version: 1,
            total: subjects.len() as u32,
        };
        SeriesComplete {
            series: head,
            cover: None,
            patches: subjects
                .iter()
                .enumerate()
                .map(|(i, s)| patchbay_model::SeriesPatch {
                    slot: i as u32 + 1,
                    mail: i as i64,
                    message_id: format!("<{i}@x>"),
                    subject: s.to_string(),
                })
                .collect(),
            mbox: mbox.into(),
            mbox_base64: None,
            base_commit: None,
            based_on: vec![],
            depends_on: vec![],
            supersedes: None,
        }
    }

    #[test]
    fn the_tree_map_goes_by_subject_tag_then_by_path() {
        let tree = |tags: &[&str], paths: &[&str], branch: &str| Tree {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            paths: paths.iter().map(|t| t.to_string()).collect(),
            repository: "r".into(),
            branch: branch.into(),
        };
        let trees = [tree(&["net"], &[], "net"), tree(&["net-next"], &[], "next"), tree(&[], &["drivers/bpf/"], "bpf")];
        let diff = "diff --git a/drivers/bpf/x.c b/drivers/bpf/x.c\n";
        let pick = |subjects: &[&str], mbox: &str| pick_tree(&trees, &series(subjects, mbox)).map(|(t, why)| (t.branch.clone(), why));
        assert_eq!(
            pick(&["[PATCH net-next v2 1/2] a", "[PATCH net-next v2 2/2] b"], ""),
            Some(("next".into(), "subject tag net-next".into()))
        );
        assert_eq!(pick(&["[PATCH NET] fix"], diff), Some(("net".into(), "subject tag net".into())), "tags first, any case");
        assert_eq!(pick(&["[net-next,PATCH 1/1] a"], ""), Some(("next".into(), "subject tag net-next".into())));
        assert_eq!(pick(&["[PATCH] net: fix"], diff), Some(("bpf".into(), "it touches drivers/bpf/x.c".into())), "a title word is no tag");
        assert_eq!(pick(&["[PATCH] fix"], "diff --git a/README b/README\n"), None);
        assert_eq!(bracket_words("[RFC] [PATCH bpf-next 3/5] x [net]"), ["rfc", "patch", "bpf-next", "3/5"]);
    }

    #[test]
    fn a_job_knows_the_projects_other_repositories() {
        let tree = |repository: &str| Tree { tags: vec![], paths: vec![], repository: repository.into(), branch: "main".into() };
        let project = ProjectTests {
            name: "net".into(),
            repository: "net.git".into(),
            branch: "main".into(),
            tests: vec![],
            trees: vec![tree("net.git"), tree("net-next.git"), tree("bpf.git"), tree("net-next.git")],
        };
        assert_eq!(other_repositories(&project, "net.git"), ["net-next.git", "bpf.git"]);
        assert_eq!(other_repositories(&project, "bpf.git"), ["net.git", "net-next.git"], "its own repository first");
        let alone = ProjectTests { trees: vec![], ..project };
        assert!(other_repositories(&alone, "net.git").is_empty(), "a project of one repository has none");
    }

    #[test]
    fn series_older_than_the_limit_are_history() {
        let (day, limit) = (86_400_i64, 3 * 86_400_u64);
        let now = 1_700_000_000;
        assert!(!too_old(now - 2 * day, now, limit), "two days: still work");
        assert!(!too_old(now - 3 * day, now, limit), "exactly the limit: still work");
        assert!(too_old(now - 3 * day - 1, now, limit));
        assert!(too_old(now - 730 * day, now, limit), "two years: history");
        assert!(!too_old(now + day, now, limit), "dated in the future: work");
        assert!(!too_old(0, now, 0), "0 is no limit");
        assert!(!too_old(i64::MIN, now, u64::MAX));
    }
}
