//! Following public-inbox archives without an MTA (`[[source]]`): `serve` (or `patchbay run
//! ingest`) fetches each archive every `interval_secs` and imports what is new, by the commit
//! marks `import` keeps, each mail recorded as come through the source's list. A URL is
//! mirrored under `<data>/sources` (`git clone --mirror`, then `git fetch`); a local directory
//! is read as it is (kept by someone else: grokmirror, `public-inbox-clone`). Old mail follows
//! `dispatch.max_age_secs`, as any import does.
//!
//! Every round says how it went on the bus, as ingest: `mail.source.fetched` (`list_id`,
//! `repository`, `read`, `stored`, `duplicates`, `skipped`) or `mail.source.failed` (with
//! `error`, `failures` in a row and `retry_in_secs`); a failing fetch is retried with backoff
//! (5 s doubling, at most the interval), and loses nothing: the marks only move with what was
//! stored. The dashboard's sources page shows the latest of each.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, Outgoing};
use patchbay_config::{Config, SourceConfig};
use patchbay_ingest::Ingest;
use patchbay_model::{Sender, ServiceName, TopicRoot};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The topic suffix of a fetch and import that worked.
pub const FETCHED: &str = "mail.source.fetched";
/// The topic suffix of a fetch or import that failed (and will be retried).
pub const FAILED: &str = "mail.source.failed";

/// The longest a fetch may take before it counts as failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The first retry after a failure; it doubles up to the source's interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// Starts one follower per `[[source]]`; they stop when `closing` turns true.
pub fn start(config: &Config, ingest: Ingest, bus: Arc<dyn Bus>, closing: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let sender = Sender::new(ServiceName::Ingest.as_str(), &config.instance);
    config
        .sources
        .iter()
        .cloned()
        .map(|source| {
            let follower = Follower {
                mirror: config.data_dir.join("sources").join(mirror_name(&source.repository)),
                source,
                ingest: ingest.clone(),
                bus: bus.clone(),
                root: config.bus.root.clone(),
                sender: sender.clone(),
            };
            tokio::spawn(follower.run(closing.clone()))
        })
        .collect()
}

/// A directory name for a URL's mirror: its words (credentials left out), nothing a path could
/// misread, and a hash of the whole URL, so two URLs never share a mirror.
fn mirror_name(url: &str) -> String {
    let shown = shown(url);
    let words: String = shown.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    let words: String = words.trim_matches(['_', '.']).chars().take(100).collect();
    // FNV-1a: stable across builds and hosts (std's hasher is not).
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{}-{hash:016x}.git", if words.is_empty() { "source" } else { &words })
}

/// The repository as it may be shown: a URL without its user and password.
fn shown(repository: &str) -> String {
    patchbay_runner::git::scrub_url(repository)
}

struct Follower {
    source: SourceConfig,
    mirror: PathBuf,
    ingest: Ingest,
    bus: Arc<dyn Bus>,
    root: TopicRoot,
    sender: Sender,
}

impl Follower {
    async fn run(self, mut closing: watch::Receiver<bool>) {
        let interval = Duration::from_secs(self.source.interval_secs);
        let mut failures = 0u32;
        loop {
            let delay = match self.round().await {
                Ok(summary) => {
                    failures = 0;
                    if summary.read > 0 {
                        tracing::info!(list = %self.source.list_id, stored = summary.stored, read = summary.read, "Archive followed.");
                    }
                    let body = serde_json::json!({
                        "list_id": self.source.list_id, "repository": shown(&self.source.repository),
                        "read": summary.read, "stored": summary.stored, "duplicates": summary.duplicates, "skipped": summary.skipped,
                    });
                    self.announce(FETCHED, body).await;
                    interval
                }
                Err(error) => {
                    failures += 1;
                    let retry = FIRST_RETRY.saturating_mul(2u32.saturating_pow(failures - 1)).min(interval);
                    tracing::warn!(list = %self.source.list_id, repository = %shown(&self.source.repository), failures, retry_in_secs = retry.as_secs(), %error, "Following the archive failed; will retry.");
                    let body = serde_json::json!({
                        "list_id": self.source.list_id, "repository": shown(&self.source.repository),
                        "error": error, "failures": failures, "retry_in_secs": retry.as_secs(),
                    });
                    self.announce(FAILED, body).await;
                    retry
                }
            };
            tokio::select! {
                _ = closing.wait_for(|c| *c) => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One fetch (for a URL) and one import of what is new.
    async fn round(&self) -> Result<crate::ingest::Summary, String> {
        let local = Path::new(&self.source.repository);
        let path = if local.is_dir() {
            local.to_path_buf()
        } else {
            self.fetch().await?;
            self.mirror.clone()
        };
        crate::ingest::follow_into(&self.ingest, &path, &self.source.list_id).await.map_err(|e| format!("{:#}", e.error()))
    }

    /// Brings the mirror up to date: a mirror clone the first time, a fetch after.
    async fn fetch(&self) -> Result<(), String> {
        let mut git = tokio::process::Command::new("git");
        git.env("GIT_TERMINAL_PROMPT", "0").env("GIT_CONFIG_NOSYSTEM", "1").env("LC_ALL", "C").kill_on_drop(true);
        if self.mirror.join("HEAD").is_file() {
            git.arg("--git-dir").arg(&self.mirror).args(["fetch", "--quiet", "--prune", "origin"]);
        } else {
            if let Some(parent) = self.mirror.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            // A half-made mirror from an interrupted clone is made again.
            let _ = std::fs::remove_dir_all(&self.mirror);
            git.args(["clone", "--quiet", "--mirror", "--", &self.source.repository]).arg(&self.mirror);
        }
        let out = tokio::time::timeout(FETCH_TIMEOUT, git.output())
            .await
            .map_err(|_| format!("git fetch of {} took over {} s", shown(&self.source.repository), FETCH_TIMEOUT.as_secs()))?
            .map_err(|e| format!("git: {e}"))?;
        if !out.status.success() {
            // git may repeat the URL, credentials and all: what is published shows it without them.
            let said = String::from_utf8_lossy(&out.stderr).replace(&self.source.repository, &shown(&self.source.repository));
            return Err(format!("git fetch of {}: {}", shown(&self.source.repository), said.trim()));
        }
        Ok(())
    }

    async fn announce(&self, suffix: &str, body: serde_json::Value) {
        let out = match Outgoing::free_form(&self.root, &self.sender, suffix, body) {
            Ok(out) => out,
            Err(error) => return tracing::error!(%error, "No topic for the follower's news."),
        };
        if let Err(error) = self.bus.publish(vec![out]).await {
            tracing::warn!(%error, "The follower's news was not published.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_get_plain_names() {
        assert!(mirror_name("https://lore.kernel.org/linux-hwmon/0").starts_with("https___lore.kernel.org_linux-hwmon_0-"));
        for url in ["file:///srv/../etc", "../../x", "/"] {
            let name = mirror_name(url);
            assert!(!name.contains('/') && name.ends_with(".git") && name != ".git", "{url}: {name}");
        }
        assert_ne!(mirror_name("https://h/a-b"), mirror_name("https://h/a_b"), "never one mirror for two URLs");
        assert!(!mirror_name("https://user:token@h/x").contains("token"), "{}", mirror_name("https://user:token@h/x"));
    }
}
