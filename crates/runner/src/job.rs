//! One job from start to end: refresh the mirror, choose the base, make the
//! job's disk (its quota) and a fresh worktree on it, apply dependencies and
//! the series with `git am -3`, run the script in the sandbox, release the
//! disk and the tree. What comes back is ready to
//! publish: the runner's paths and host name are scrubbed from every text.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::disk::Disk;
use crate::git::{self, Applied, GitError, Merged, Mirror, Worktree};
use crate::sandbox::{Execution, Limits, Sandbox, SandboxError};

/// Everything a runner needs for one job; it never reads a store.
#[derive(Clone, Debug)]
pub struct Job {
    /// Repository URL or local path.
    pub repository: String,
    /// Branch to apply on when no usable `base-commit` is given.
    pub branch: String,
    /// The series' `base-commit:`, when it named one.
    pub base_commit: Option<String>,
    /// Series to apply first (`Based-on:`), as mboxes, in order.
    pub dependencies: Vec<Vec<u8>>,
    /// The series, as an mbox in patch order.
    pub mbox: Vec<u8>,
    /// The test script (`sh -c`), or `None` to only apply.
    pub script: Option<String>,
    /// The script's limits.
    pub limits: Limits,
    /// The series' date (unix seconds): when it does not apply at the branch head, it is
    /// tried on the branch as it was then.
    pub date: Option<i64>,
    /// Why `repository` and `branch`, when a tree map chose them (said in the base's reason).
    pub tree: Option<String>,
    /// Other repositories of the project, searched in order for a `base_commit` that
    /// `repository` lacks (fetched into its mirror).
    pub remotes: Vec<String>,
    /// Run the script after each patch in turn, stopping at the first failure
    /// ([`Report::broke_at`]), instead of once on the whole series.
    pub per_patch: bool,
}

/// The patch after which a per-patch run first failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokeAt {
    /// Its place in the series, from 1.
    pub patch: usize,
    /// Patches in the series.
    pub total: usize,
    /// Its subject, as committed.
    pub subject: String,
}

/// Which commit the series was applied to, and why that one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The commit.
    pub commit: String,
    /// `base-commit`, or `branch <name>` with why the base-commit was not used, and
    /// `branch <name> as of <date>, the series' date: …` when the head would not do.
    pub reason: String,
}

/// What a job gave.
#[derive(Clone, Debug)]
pub struct Report {
    /// The base used.
    pub base: Base,
    /// Whether and how the series applied (dependencies included).
    pub apply: Applied,
    /// The script's run, when the series applied and there was a script.
    pub test: Option<Execution>,
    /// When the series is already in the branch (it does not apply, or `git am -3` skipped
    /// every patch as already applied): each of its patches, in order, with the branch's
    /// commit holding it (by `git patch-id --stable` among the last [`MERGED_DEPTH`]
    /// commits); nothing was tested. Empty otherwise.
    pub merged: Vec<Merged>,
    /// For a per-patch run that failed: the first patch after which the script failed.
    pub broke_at: Option<BrokeAt>,
    /// Time from start to end, git included.
    pub duration: Duration,
}

/// Why a job could not be run at all (reported as ERROR, not as a failure of the series).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Git failed for reasons other than the series (unreachable repository, missing branch).
    #[error(transparent)]
    Git(#[from] GitError),
    /// The sandbox could not run the script.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The work directory is unusable, or one of the above, with the runner's paths scrubbed.
    #[error("{0}")]
    Io(String),
}

/// How many of the branch's latest commits are searched for a series that does not apply,
/// to tell "already merged" from "does not apply".
pub const MERGED_DEPTH: usize = 2000;

/// Runs jobs on this machine.
#[derive(Clone, Debug)]
pub struct Runner {
    root: PathBuf,
    sandbox: Sandbox,
    fetch_interval: Duration,
    /// One lock per mirror: clones and fetches of one repository never overlap.
    mirrors: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>>>>,
}

impl Runner {
    /// Mirrors and worktrees go under `root`; a mirror is fetched at most every `fetch_interval`.
    pub fn new(root: &Path, sandbox: Sandbox, fetch_interval: Duration) -> Runner {
        // Trees left by a runner that was killed are never reused: remove them (after making
        // them writable: a script may have left read-only directories) and prune the mirrors.
        let work = root.join("work");
        if work.exists() {
            crate::disk::release_stale(&work);
            let _ = std::process::Command::new("chmod").args(["-R", "u+w"]).arg(&work).status();
            let _ = std::fs::remove_dir_all(&work);
            if let Ok(mirrors) = std::fs::read_dir(root.join("mirrors")) {
                for m in mirrors.flatten() {
                    let _ = std::process::Command::new("git").arg("--git-dir").arg(m.path()).args(["worktree", "prune"]).status();
                }
            }
        }
        if sandbox.mounts_disks() {
            tracing::info!(disk_quota_mib = sandbox.disk_quota() >> 20, "Job trees go on loop-mounted images of the disk quota (hard).");
        } else {
            tracing::warn!(
                disk_quota_mib = sandbox.disk_quota() >> 20,
                "This runner cannot mount (not root): the disk quota is measured while jobs run (soft; a job may overshoot by what it writes between two measurements)."
            );
        }
        Runner { root: root.to_path_buf(), sandbox, fetch_interval, mirrors: Default::default() }
    }

    /// Runs one job; errors come back with the runner's paths and host name scrubbed, ready to publish.
    pub async fn run(&self, job: &Job) -> Result<Report, JobError> {
        self.run_inner(job).await.map_err(|e| {
            let root = self.root.display().to_string();
            JobError::Io(git::scrub(&e.to_string(), &[&root], &hostname()))
        })
    }

    async fn run_inner(&self, job: &Job) -> Result<Report, JobError> {
        let started = Instant::now();
        let mirror = Mirror::new(&self.root.join("mirrors"), &job.repository);
        let lock = self.mirrors.lock().unwrap().entry(mirror.dir().to_path_buf()).or_default().clone();
        let base = {
            let _guard = lock.lock().await;
            mirror.refresh(self.fetch_interval).await?;
            self.base(&mirror, job).await?
        };
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = self.root.join("work").join(format!(
            "{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.parent().expect("has a parent")).map_err(|e| JobError::Io(format!("{}: {e}", self.root.display())))?;
        // The tree, checkout and build outputs alike, lives on the job's disk, under its quota.
        let disk = self.sandbox.disk(&dir).await?;
        // Worktree bookkeeping in the mirror (add, remove, prune) is serialized per mirror too.
        let tree = {
            let _guard = lock.lock().await;
            match mirror.worktree(&disk.tree(), &base.base.commit).await {
                Ok(tree) => tree,
                Err(e) if disk.is_full().await => {
                    let error = does_not_fit(&disk, "the checkout", &e.to_string());
                    disk.release().await;
                    let _ = mirror.prune().await;
                    return Err(error);
                }
                Err(e) => {
                    disk.release().await;
                    let _ = mirror.prune().await;
                    return Err(e.into());
                }
            }
        };
        let mut tree = Some(tree);
        let mut base = base;
        let result = self.apply_and_test(&mirror, &lock, &mut tree, &mut base, &disk, job).await;
        let paths = [dir.display().to_string(), mirror.dir().display().to_string(), self.root.display().to_string()];
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let host = hostname();
        // The disk goes first (an unmount, not a walk deleting every file), then git's records.
        disk.release().await;
        {
            let _guard = lock.lock().await;
            match tree {
                Some(tree) => tree.remove().await,
                None => drop(mirror.prune().await),
            }
        }
        let (mut apply, test, merged, broke_at) = result?;
        apply.output = git::scrub(&apply.output, &paths, &host);
        let mut test = test;
        if let Some(t) = &mut test {
            t.output = git::scrub(&String::from_utf8_lossy(&t.output), &paths, &host).into_bytes();
        }
        Ok(Report { base: base.base, apply, test, merged, broke_at, duration: started.elapsed() })
    }

    async fn base(&self, mirror: &Mirror, job: &Job) -> Result<Chosen, JobError> {
        if let Some(wanted) = &job.base_commit {
            if !mirror.has_commit(wanted).await {
                // Maybe it is newer than our last fetch.
                mirror.refresh(Duration::ZERO).await?;
            }
            if mirror.has_commit(wanted).await {
                return Ok(Chosen { base: Base { commit: wanted.clone(), reason: "base-commit".into() }, head_because: None });
            }
            // Maybe it is in another tree of the project (a series on net-next mapped to net).
            for remote in job.remotes.iter().filter(|r| **r != job.repository) {
                match mirror.fetch_commit(remote, wanted).await {
                    Ok(true) => {
                        let reason = format!("base-commit (found in {})", git::scrub_url(remote));
                        return Ok(Chosen { base: Base { commit: wanted.clone(), reason }, head_because: None });
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, remote = %git::scrub_url(remote), "Could not look for a base-commit in another repository.")
                    }
                }
            }
            let head = mirror.branch_head(&job.branch).await?;
            let searched = if job.remotes.is_empty() { "the repository" } else { "the project's repositories" };
            let because = format!("base-commit {wanted} is not in {searched}");
            let reason = format!("{} ({because})", branch_words(job));
            return Ok(Chosen { base: Base { commit: head, reason }, head_because: Some(because) });
        }
        let head = mirror.branch_head(&job.branch).await?;
        Ok(Chosen { base: Base { commit: head, reason: branch_words(job) }, head_because: Some(String::new()) })
    }

    /// Applies the series (dependencies first) at the chosen base; when it does not apply,
    /// tells "already merged" (every patch in the branch) from "does not apply", and, at the
    /// branch head, tries again on the branch as of the series' date in a fresh worktree
    /// (`tree` and `base` then name that one). Runs the script on what applied.
    async fn apply_and_test(
        &self,
        mirror: &Mirror,
        lock: &tokio::sync::Mutex<()>,
        tree: &mut Option<Worktree>,
        chosen: &mut Chosen,
        disk: &Disk,
        job: &Job,
    ) -> Result<(Applied, Option<Execution>, Vec<Merged>, Option<BrokeAt>), JobError> {
        let (mut applied, mut start) = self.apply(tree.as_ref().expect("a tree"), disk, job).await?;
        // `git am -3` skips a patch already in the tree ("No changes -- Patch already applied."),
        // so a merged series may also "apply" with nothing left to apply.
        let count = |prefix: &str| applied.output.lines().filter(|l| l.starts_with(prefix)).count();
        let nothing_applied = applied.ok && count("No changes -- Patch already applied") >= count("Applying: ").max(1);
        if !applied.ok || nothing_applied {
            let merged = self.merged(mirror, job).await;
            if !merged.is_empty() {
                return Ok((applied, None, merged, None));
            }
        }
        if !applied.ok
            && let (Some(because), Some(date)) = (chosen.head_because.clone(), job.date)
            && let Some(at) = mirror.branch_as_of(&job.branch, date).await?.filter(|at| *at != chosen.base.commit)
        {
            // A fresh tree at the branch as it was on the series' date, at the same place on the disk.
            {
                let _guard = lock.lock().await;
                if let Some(old) = tree.take() {
                    old.remove().await;
                }
                *tree = Some(mirror.worktree(&disk.tree(), &at).await?);
            }
            let (then, then_start) = self.apply(tree.as_ref().expect("a tree"), disk, job).await?;
            let day = patchbay_model::Timestamp::day_of(date);
            if then.ok {
                let why = if because.is_empty() {
                    "it does not apply at the head".to_string()
                } else {
                    format!("{because}, and the series does not apply at the head")
                };
                chosen.base = Base { commit: at, reason: format!("{} as of {day}, the series' date: {why}", branch_words(job)) };
                applied = then;
                start = then_start;
            } else {
                // The head's failure is the one reported: that is where the series should go.
                let reason = std::mem::take(&mut chosen.base.reason);
                chosen.base.reason = match reason.strip_suffix(')') {
                    Some(open) => format!("{open}; the series does not apply as of {day}, its date, either)"),
                    None => format!("{reason} (the series does not apply as of {day}, its date, either)"),
                };
            }
        }
        if !applied.ok {
            return Ok((applied, None, Vec::new(), None));
        }
        let Some(script) = &job.script else { return Ok((applied, None, Vec::new(), None)) };
        if job.per_patch {
            let (test, broke_at) = self.per_patch(tree.as_ref().expect("a tree"), disk, job, script, &start).await?;
            return Ok((applied, Some(test), Vec::new(), broke_at));
        }
        let test = self.sandbox.run_on(script, disk, &job.limits).await?;
        Ok((applied, Some(test), Vec::new(), None))
    }

    /// Runs `script` after each of the series' patches (the commits after `start`), stopping at
    /// the first failure: a bisectable series builds at every step. The output holds a line per
    /// step that passed and the whole output of the last step run.
    async fn per_patch(
        &self,
        tree: &Worktree,
        disk: &Disk,
        job: &Job,
        script: &str,
        start: &str,
    ) -> Result<(Execution, Option<BrokeAt>), JobError> {
        let commits = tree.commits_after(start).await?;
        let total = commits.len();
        let mut said = Vec::new();
        let mut spent = Duration::ZERO;
        let mut last = None;
        for (i, (commit, subject)) in commits.iter().enumerate() {
            tree.checkout(commit).await?;
            let run = self.sandbox.run_on(script, disk, &job.limits).await?;
            spent += run.duration;
            let step = format!("after patch {}/{total} {subject}", i + 1);
            if run.failure.is_none() && i + 1 < total {
                said.extend_from_slice(format!("[patchbay: passed {step}]\n").as_bytes());
                continue;
            }
            said.extend_from_slice(format!("[patchbay: {step}]\n").as_bytes());
            let broke = run.failure.is_some().then(|| BrokeAt { patch: i + 1, total, subject: subject.clone() });
            last = Some((run, broke));
            break;
        }
        match last {
            Some((mut run, broke)) => {
                said.extend_from_slice(&run.output);
                run.output = said;
                run.duration = spent;
                Ok((run, broke))
            }
            // No patch left to test (a series git skipped whole): the tree as it is.
            None => Ok((self.sandbox.run_on(script, disk, &job.limits).await?, None)),
        }
    }

    /// The series' patches, when every one is already in the branch; else nothing (git's
    /// trouble here only costs the distinction, and is logged).
    async fn merged(&self, mirror: &Mirror, job: &Job) -> Vec<Merged> {
        let found = async {
            let head = mirror.branch_head(&job.branch).await?;
            mirror.merged_patches(&head, &job.mbox, MERGED_DEPTH).await
        };
        match found.await {
            Ok(found) if !found.is_empty() && found.iter().all(Option::is_some) => found.into_iter().flatten().collect(),
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::warn!(%error, "Cannot tell whether the series is already merged.");
                Vec::new()
            }
        }
    }

    /// Applies the dependencies, then the series; a tree that filled its disk is an error.
    /// Applies the dependencies, then the series; also returns the commit the series' own
    /// patches start after. An empty mbox is the base alone (a baseline run): nothing to apply.
    async fn apply(&self, tree: &Worktree, disk: &Disk, job: &Job) -> Result<(Applied, String), JobError> {
        for (i, dep) in job.dependencies.iter().enumerate() {
            let applied = tree.am(dep).await?;
            if !applied.ok && disk.is_full().await {
                return Err(does_not_fit(disk, "the series it is based on", &applied.output));
            }
            if !applied.ok {
                let output = format!("The series this one is based on (dependency {}) did not apply:\n{}", i + 1, applied.output);
                return Ok((Applied { ok: false, output, failed_patch: applied.failed_patch }, String::new()));
            }
        }
        let start = tree.head().await?;
        if job.mbox.is_empty() {
            return Ok((Applied { ok: true, output: "Nothing to apply: the base alone.\n".into(), failed_patch: None }, start));
        }
        let applied = tree.am(&job.mbox).await?;
        if !applied.ok && disk.is_full().await {
            // Not the series' fault as far as we know: the runner's quota is too small for it.
            return Err(does_not_fit(disk, "the series", &applied.output));
        }
        Ok((applied, start))
    }
}

/// A job whose tree outgrew its disk before the script ran: an error naming the quota.
fn does_not_fit(disk: &Disk, what: &str, detail: &str) -> JobError {
    // git's own words are often about what followed (a 3-way merge refusing a half-written file).
    let detail = detail.lines().map(str::trim).find(|l| l.contains("No space left")).unwrap_or("git stopped with the disk full");
    JobError::Io(format!("{what} does not fit in the disk quota of {} MiB (runner.disk_mib): {detail}", disk.quota() >> 20))
}

/// The base chosen before applying, and whether it is the branch head (`Some(why)`: why the
/// head, empty when the series named no base), which alone may give way to the branch as of
/// the series' date.
struct Chosen {
    base: Base,
    head_because: Option<String>,
}

/// `branch <name>`, and why that branch when a tree map chose it.
fn branch_words(job: &Job) -> String {
    match &job.tree {
        Some(why) => format!("branch {} (tree map: {why})", job.branch),
        None => format!("branch {}", job.branch),
    }
}

/// This machine's host name (empty when unknown): what scrubbing removes from output, and what
/// names a host in key ids and in the namespace claim.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}
