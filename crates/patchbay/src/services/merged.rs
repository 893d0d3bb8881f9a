//! The merge follower: `serve` fetches each project's branches (its own and its tree map's)
//! every `merged.interval_secs` into mirrors under `<data>/merged`, and a complete series
//! first seen within `merged.window_days` whose every patch is among the branch's last
//! [`DEPTH`] commits by `git patch-id --stable` becomes merged: ingest records it and
//! publishes `series.series.merged` (as the threader) in one transaction, the dashboard and
//! the API show the state `merged`, and runners set its waiting jobs aside.
//!
//! A push need not wait for the schedule: anything published on `git.branch.updated` (from a
//! post-receive hook: `patchbay publish --topic git.branch.updated --json '{"ref": "…"}'`) starts a
//! round at once; the body is not read, so a hook needs to know nothing but the topic.
//!
//! One walk of a branch answers for every series checked against it, and a series' patch ids
//! are computed once (a complete series' mbox does not change), so a round costs one fetch and
//! one `git log -p` per branch whose head moved, plus one `git patch-id` per new series.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::{Bus, TrustPolicy};
use patchbay_model::Envelope;
use patchbay_runtime::{Handler, HandlerError, ServiceSpec};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use patchbay_config::Config;
use patchbay_ingest::Ingest;
use patchbay_runner::Mirror;

/// The topic suffix a post-receive hook publishes on to start a round at once.
pub const PUSHED: &str = "git.branch.updated";

/// Commits of a branch searched for a series' patches.
pub const DEPTH: usize = 2_000;
/// Series looked at per project and round, newest first.
const CANDIDATES: u32 = 2_000;

/// A branch followed for one project.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Followed {
    project: String,
    repository: String,
    branch: String,
}

/// What a follower keeps between rounds.
pub struct Follower {
    ingest: Ingest,
    root: PathBuf,
    window: Duration,
    branches: Vec<Followed>,
    /// Per branch: the head last walked and its patch ids.
    walked: HashMap<Followed, (String, HashMap<String, String>)>,
    /// Per series: its patches' ids (`None`: it holds no diff and is never "merged").
    series_ids: HashMap<i64, Option<Vec<String>>>,
}

impl Follower {
    /// A follower of the branches `config`'s projects name.
    pub fn new(config: &Config, ingest: Ingest) -> Self {
        let mut branches = Vec::new();
        for p in &config.projects {
            let own = p.repository.iter().map(|r| (r.clone(), p.branch.clone()));
            for (repository, branch) in own.chain(p.trees.iter().map(|t| (t.repository.clone(), t.branch.clone()))) {
                let f = Followed { project: p.name.clone(), repository, branch };
                if !branches.contains(&f) {
                    branches.push(f);
                }
            }
        }
        Follower {
            ingest,
            root: config.data_dir.join("merged"),
            window: Duration::from_secs(config.merged.window_days as u64 * 86_400),
            branches,
            walked: HashMap::new(),
            series_ids: HashMap::new(),
        }
    }

    /// One round: fetch every branch and record the series found merged; returns how many.
    pub async fn round(&mut self) -> anyhow::Result<usize> {
        let now = patchbay_model::Timestamp::now().as_micros() / 1_000_000;
        let since = now - self.window.as_secs() as i64;
        let mut merged = 0;
        let mut failures = Vec::new();
        // A repository holding several followed branches is fetched once a round.
        let mut fetched = std::collections::HashSet::new();
        for followed in self.branches.clone() {
            match self.follow(&followed, since, now, &mut fetched).await {
                Ok(n) => merged += n,
                Err(e) => failures.push(format!("{} {}: {e:#}", patchbay_runner::git::scrub_url(&followed.repository), followed.branch)),
            }
        }
        if !failures.is_empty() {
            // The others were still followed; the next round tries these again.
            tracing::warn!(failures = %failures.join("; "), merged, "Following some branches failed.");
        }
        Ok(merged)
    }

    async fn follow(
        &mut self,
        f: &Followed,
        since: i64,
        now: i64,
        fetched: &mut std::collections::HashSet<String>,
    ) -> anyhow::Result<usize> {
        let candidates = self.ingest.series_store().unmerged(f.project.clone(), since, CANDIDATES).await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let mirror = Mirror::new(&self.root, &f.repository);
        if !fetched.contains(&f.repository) {
            mirror.refresh(Duration::ZERO).await?;
            fetched.insert(f.repository.clone());
        }
        let head = mirror.branch_head(&f.branch).await?;
        if self.walked.get(f).is_none_or(|(walked, _)| *walked != head) {
            let ids = mirror.branch_patch_ids(&head, DEPTH).await?;
            self.walked.insert(f.clone(), (head, ids));
        }
        if self.series_ids.len() > 100_000 {
            self.series_ids.clear(); // series that left the window; the rest are computed again
        }
        let mut merged = 0;
        for id in candidates {
            if !self.series_ids.contains_key(&id) {
                let Some(mbox) = self.ingest.series_store().mbox(id).await? else { continue };
                let ids = mirror.patch_ids(&mbox).await?;
                self.series_ids.insert(id, (!ids.is_empty()).then_some(ids));
            }
            let (Some(Some(ids)), Some((_, history))) = (self.series_ids.get(&id), self.walked.get(f)) else { continue };
            let commits: Option<Vec<String>> = ids.iter().map(|p| history.get(p).cloned()).collect();
            let Some(commits) = commits else { continue };
            let repository = patchbay_runner::git::scrub_url(&f.repository);
            if let Some(m) = self.ingest.mark_merged(id, repository, f.branch.clone(), commits, now).await? {
                tracing::info!(series = id, version = m.series.version, branch = %f.branch, "Series found merged upstream.");
                self.series_ids.remove(&id);
                merged += 1;
            }
        }
        Ok(merged)
    }
}

/// Wakes the follower when a push is announced.
struct Pushed(Arc<Notify>);

#[async_trait]
impl Handler for Pushed {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        tracing::debug!(topic = %envelope.topic, sender = %envelope.sender, "A push was announced; following the branches now.");
        self.0.notify_one();
        Ok(())
    }
}

/// Starts the follower (a round every `merged.interval_secs`, and at once on `git.branch.updated`)
/// until `closing`; nothing when it is off or no project names a repository.
pub fn start(
    config: &Config,
    ingest: Ingest,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut follower = Follower::new(config, ingest);
    if config.merged.interval_secs == 0 || follower.branches.is_empty() {
        return Ok(Vec::new());
    }
    let wake = Arc::new(Notify::new());
    let mut spec =
        ServiceSpec::new(patchbay_model::ServiceName::Threader.as_str(), vec![patchbay_runtime::pattern(&config.bus.root, PUSHED)?]);
    spec.queue = format!("merged-follower.{}", config.instance);
    spec.concurrency = 1;
    let hook = crate::tasks::spawn_service(bus, policy, spec, Arc::new(Pushed(wake.clone())), closing.clone(), "The push listener");
    let every = Duration::from_secs(config.merged.interval_secs as u64);
    let rounds = tokio::spawn(async move {
        let stop = crate::tasks::closed(closing);
        tokio::pin!(stop);
        loop {
            match follower.round().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, "Series found merged upstream."),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "Following the projects' branches failed; will retry."),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
                () = wake.notified() => {}
            }
        }
    });
    Ok(vec![hook, rounds])
}
