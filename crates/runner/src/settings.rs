//! `[runner]`: how this machine runs test jobs.

use std::path::{Path, PathBuf};

use patchbay_model::{Invalid, Section, section::resolve_path};
use serde::Deserialize;

use crate::Isolation;

/// `[runner]` of `patchbay.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerSettings {
    /// Sandbox kind (default bubblewrap).
    pub isolation: Isolation,
    /// Jobs at once (default 1).
    pub jobs: u16,
    /// Labels this runner offers (default: this machine's arch).
    pub capabilities: Vec<String>,
    /// Mirrors and worktrees (default `<data_dir>/runner`).
    pub work_dir: Option<PathBuf>,
    /// A mirror is fetched at most this often (default 300 s), and on demand for an unknown base.
    pub fetch_interval_secs: u64,
    /// A job that keeps killing runners is dead-lettered after this many attempts (default 3).
    pub max_attempts: u32,
    /// Output kept per test, head and tail, in KiB (default 1024).
    pub output_kib: u64,
    /// Jobs of a series version superseded before they start are set aside, not run
    /// (`ci.test.cancelled`; default true).
    pub cancel_superseded: bool,
    /// Disk quota per job in MiB: the checkout and everything the build writes (default 4096).
    pub disk_mib: u64,
    /// Entries of the host's `/etc` that scripts see beyond the built-in few (names under `/etc`).
    pub etc_extra: Vec<String>,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            isolation: Isolation::Bubblewrap,
            jobs: 1,
            capabilities: vec![std::env::consts::ARCH.to_string()],
            work_dir: None,
            fetch_interval_secs: 300,
            max_attempts: 3,
            output_kib: 1024,
            cancel_superseded: true,
            disk_mib: crate::DEFAULT_DISK_QUOTA >> 20,
            etc_extra: Vec::new(),
        }
    }
}

impl Section for RunnerSettings {
    const NAME: &'static str = "runner";

    fn resolve(&mut self, base: &Path) -> Result<(), Invalid> {
        self.work_dir = self.work_dir.as_deref().map(|p| resolve_path(base, p));
        if self.jobs == 0 || self.jobs > 256 {
            return Err(Invalid::new("jobs", format!("{} must be 1-256", self.jobs)));
        }
        if self.max_attempts == 0 {
            return Err(Invalid::new("max_attempts", "must be at least 1"));
        }
        if self.disk_mib < 16 {
            return Err(Invalid::new("disk_mib", format!("{} is too small (at least 16)", self.disk_mib)));
        }
        Ok(())
    }
}
