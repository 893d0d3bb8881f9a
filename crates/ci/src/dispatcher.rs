//! The dispatcher: a complete series in, one job per (test, arch) out.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::{Outgoing, Publisher};
use patchbay_model::{Body, Envelope, Sender, SeriesComplete, TestJob, TestLimits};
use patchbay_runtime::{Handler, HandlerError};

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
        let job = |test: &str, arch: &str| TestJob {
            job: format!("{}-v{}-{test}-{arch}", series.series.id, series.series.version),
            series: series.series.clone(),
            test: test.to_string(),
            arch: arch.to_string(),
            capabilities: Vec::new(),
            required: true,
            repository: project.repository.clone(),
            branch: project.branch.clone(),
            base_commit: series.base_commit.clone(),
            dependencies: dependencies.clone(),
            mbox: series.mbox.clone(),
            mbox_base64: series.mbox_base64.clone(),
            script: None,
            limits: TestLimits { wall_secs: 600, memory_mib: 1024, processes: 256, file_size_mib: 1024, output_kib: 256 },
            date,
        };
        let mut jobs = vec![job("apply", crate::ANY_ARCH)];
        for t in &project.tests {
            for arch in &t.arches {
                let mut j = job(&t.name, arch);
                j.script = Some(t.script.clone());
                j.limits = t.limits.clone();
                j.required = t.required;
                j.capabilities = std::iter::once(arch.clone()).chain(t.capabilities.iter().cloned()).collect();
                jobs.push(j);
            }
        }
        jobs
    }
}

#[async_trait]
impl Handler for Dispatcher {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        let series: SeriesComplete = serde_json::from_value(envelope.body.clone())
            .map_err(|e| HandlerError::Permanent(format!("not a {} body: {e}", SeriesComplete::SCHEMA)))?;
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
            let topic = self.publisher.root().topic(SKIPPED_TOPIC).map_err(|e| HandlerError::Permanent(e.to_string()))?;
            let out = Outgoing { sender: rule.sender.clone(), topic, schema: patchbay_model::free_form_schema(), body };
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
        tracing::info!(series = series.series.id, version = series.series.version, jobs = jobs.len(), "Series dispatched.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
