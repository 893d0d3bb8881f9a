//! Running an untrusted script with no network, a read-only view of the
//! system, only its tree writable, and limits on time, memory, processes,
//! disk, file size and output.
//!
//! The script runs as `sh -c` inside bubblewrap: every namespace unshared
//! (only `lo`, its own PIDs, its own hostname), as uid 65534 with no
//! capabilities (a runner started as root drops to 65534 with `setpriv`
//! first and hands the tree to that user, because inside a user namespace
//! made by root the script would still own root's files), `/usr`, `/bin`,
//! `/lib*` and `/sbin` bound read-only, of `/etc` only what builds need
//! ([`ETC`] and what the runner's config adds: no host secret, nothing of
//! patchbay's own configuration), the tree at `/build`, a private `/tmp` and
//! `/dev/shm` of bounded size, a read-only `/dev` and root, and nothing else
//! of the host: no home directories, no `/var`, no `/srv`. Limits are
//! rlimits (`prlimit`: file size, never above the disk quota, and open
//! files; address space and processes only without cgroups) and, where the
//! machine lets us create them, a memory and a pids cgroup (v1 or v2,
//! detected), which also tell an out-of-memory kill from other deaths. The
//! whole tree is killed at the wall-clock limit: the wrapper leads its own
//! process group, and bubblewrap's `--die-with-parent` takes the PID
//! namespace with it.
//!
//! Disk: the tree lives on a [`Disk`] of the runner's quota (`disk_mib`),
//! a loop-mounted ext4 image where the runner can mount (root), else a
//! directory measured while the job runs (see [`crate::disk`]). A job that
//! ends with its disk full, or is stopped by the measurement, fails with its
//! log naming the quota.
//!
//! Isolation `none` runs the script directly (with the same limits) for
//! trusted setups; it is never the default, and a runner that wants
//! bubblewrap and cannot find it refuses to run anything.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::disk::{self, Disk};

/// The disk quota of a job when the runner's config says nothing (`runner.disk_mib`): 4 GiB.
pub const DEFAULT_DISK_QUOTA: u64 = 4096 << 20;

/// How often a measured (soft) disk quota is checked at most: a job overshoots by what it
/// writes between two checks (page-cache writes run at ~1 GB/s, so every millisecond counts).
/// A tree that takes longer to measure is checked every ten measurement times instead, so the
/// watchdog costs at most a tenth of a core (a 15,000-file tree takes ~60 ms here).
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// What of the host's `/etc` a script sees, each read-only when the host has it: users and
/// groups (builds look names up), name resolution, TLS roots, alternatives (`cc`, `editor`),
/// the dynamic linker's cache, the time zone and the OS release. Entries starting with
/// `ca-certificates` are bound too. Anything else (secrets, host identity, patchbay's own
/// configuration) stays out unless the runner's config adds it.
pub const ETC: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "ssl",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
];

/// How a script is confined (`runner.isolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// bubblewrap: the default.
    Bubblewrap,
    /// No sandbox, for trusted setups only.
    None,
}

/// What a script may use.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock time; the whole process tree is killed at the limit.
    pub wall: Duration,
    /// Memory (cgroup limit where available, and address space).
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub processes: u64,
    /// Largest file the script may write.
    pub file_size_bytes: u64,
    /// Output kept: the first and last halves of this many bytes.
    pub output_bytes: usize,
}

/// Why a script failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It exited non-zero or was killed by a signal of its own.
    Failed,
    /// It ran past the wall-clock limit and was killed.
    Timeout,
    /// It ran out of memory.
    Memory,
}

impl Failure {
    /// The reason word published in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Failed => "failed",
            Failure::Timeout => "timeout",
            Failure::Memory => "memory",
        }
    }
}

/// What running a script gave.
#[derive(Clone, Debug)]
pub struct Execution {
    /// `None` when it passed.
    pub failure: Option<Failure>,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration: Duration,
    /// Output (stdout and stderr interleaved), head and tail when it was longer than the limit.
    pub output: Vec<u8>,
    /// Bytes of output dropped from the middle.
    pub dropped: u64,
    /// Whether the process limit was reached at some point (a fork bomb, or just too many jobs).
    pub hit_process_limit: bool,
    /// Whether the job failed with its disk quota used up (the output says so at its end).
    pub disk_quota_exceeded: bool,
}

/// Why a script could not be run at all (an infrastructure fault, reported as ERROR).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// bubblewrap is wanted but not installed.
    #[error("bubblewrap (bwrap) is not installed; install Debian's `bubblewrap`, or set isolation = \"none\" for trusted jobs only")]
    NoBubblewrap,
    /// An extra `/etc` entry the config asks for is not a plain name under `/etc`.
    #[error(
        "runner.etc_extra: {0:?} must name something under /etc (`gitconfig`, `java-17-openjdk`), without `..`, and not patchbay's own configuration"
    )]
    EtcPath(String),
    /// Spawning or waiting failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Where the runner may create cgroups for its jobs.
#[derive(Clone, Debug)]
enum Cgroups {
    /// v1: one directory per controller.
    V1 { memory: PathBuf, pids: PathBuf },
    /// v2: one unified directory.
    V2 { dir: PathBuf },
}

/// Runs scripts under one isolation mode; cheap to clone.
#[derive(Clone, Debug)]
pub struct Sandbox {
    isolation: Isolation,
    cgroups: Option<Cgroups>,
    disk_quota: u64,
    /// Whether job disks are mounted images; cleared for good when mounting fails.
    mount_disks: Arc<AtomicBool>,
    etc_extra: Vec<String>,
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file())).unwrap_or(false)
}

fn writable_dir(p: &Path) -> bool {
    std::fs::create_dir_all(p).is_ok() && {
        let probe = p.join(format!("probe-{}", std::process::id()));
        let ok = std::fs::create_dir(&probe).is_ok();
        let _ = std::fs::remove_dir(&probe);
        ok
    }
}

impl Sandbox {
    /// A sandbox of this kind; fails at once when bubblewrap is wanted and missing.
    pub fn new(isolation: Isolation) -> Result<Sandbox, SandboxError> {
        if isolation == Isolation::Bubblewrap && !which("bwrap") {
            return Err(SandboxError::NoBubblewrap);
        }
        let cgroups = detect_cgroups();
        if let Some(c) = &cgroups {
            sweep_stale(c);
        }
        // Mounting needs root (mount(8) refuses options to anyone else) and the tools.
        let can_mount = running_as_root() && Path::new("/dev/loop-control").exists() && disk::program("mkfs.ext4").is_some();
        Ok(Sandbox {
            isolation,
            cgroups,
            disk_quota: DEFAULT_DISK_QUOTA,
            mount_disks: Arc::new(AtomicBool::new(can_mount)),
            etc_extra: Vec::new(),
        })
    }

    /// Sets every job's disk quota (`runner.disk_mib`), covering the checkout and all it builds.
    pub fn with_disk_quota(mut self, bytes: u64) -> Sandbox {
        self.disk_quota = bytes.max(1 << 20);
        self
    }

    /// Measures job disks instead of mounting them: for hosts that must not mount, and to test
    /// the fallback where mounting works.
    pub fn with_measured_disks(mut self) -> Sandbox {
        self.mount_disks = Arc::new(AtomicBool::new(false));
        self
    }

    /// Adds entries of the host's `/etc` (`runner.etc_extra`, names relative to `/etc`) to what
    /// scripts see, for builds that need more than [`ETC`].
    pub fn with_etc_extra<S: AsRef<str>>(mut self, names: &[S]) -> Result<Sandbox, SandboxError> {
        for name in names {
            let name = name.as_ref();
            let rel = name.strip_prefix("/etc/").unwrap_or(name).trim_matches('/');
            let bad = rel.is_empty()
                || rel.starts_with('/')
                || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                || rel.split('/').next() == Some("patchbay");
            if bad {
                return Err(SandboxError::EtcPath(name.to_string()));
            }
            self.etc_extra.push(rel.to_string());
        }
        Ok(self)
    }

    /// Every job's disk quota, in bytes.
    pub fn disk_quota(&self) -> u64 {
        self.disk_quota
    }

    /// Whether job disks are mounted images (hard quota) rather than measured (soft).
    pub fn mounts_disks(&self) -> bool {
        self.mount_disks.load(Ordering::Relaxed)
    }

    /// A job's disk at `dir` (which must not exist): a mounted image of the quota's size where
    /// this runner can mount, else a measured directory; the tree goes in [`Disk::tree`].
    pub async fn disk(&self, dir: &Path) -> Result<Disk, SandboxError> {
        if self.mounts_disks() {
            match Disk::mounted(dir, self.disk_quota).await {
                Ok(d) => return Ok(d),
                Err(error) => {
                    if self.mount_disks.swap(false, Ordering::Relaxed) {
                        tracing::warn!(%error, "Cannot mount job disks; disk quotas are measured from now on (soft: a job may overshoot by what it writes between two measurements).");
                    }
                }
            }
        }
        Disk::measured(dir, self.disk_quota)
    }

    /// Whether memory and process limits are enforced by cgroups here (else by rlimits only).
    pub fn has_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Runs `script` with `sh -c` in `tree` (seen as `/build` inside bubblewrap), measuring the
    /// tree against the disk quota: for trees that are not on a [`Disk`].
    pub async fn run(&self, script: &str, tree: &Path, limits: &Limits) -> Result<Execution, SandboxError> {
        self.execute(script, tree, None, limits).await
    }

    /// Runs `script` in the tree on `disk` (seen as `/build` inside bubblewrap), under its quota.
    pub async fn run_on(&self, script: &str, disk: &Disk, limits: &Limits) -> Result<Execution, SandboxError> {
        self.execute(script, &disk.tree(), Some(disk), limits).await
    }

    async fn execute(&self, script: &str, tree: &Path, disk: Option<&Disk>, limits: &Limits) -> Result<Execution, SandboxError> {
        let quota = disk.map_or(self.disk_quota, Disk::quota);
        let hard = disk.is_some_and(Disk::is_mounted);
        let group = self.cgroups.as_ref().map(|c| JobCgroup::create(c, limits)).transpose()?;
        // The wrapper joins the cgroups itself, then execs: nothing runs outside them.
        let mut wrapper = String::new();
        if let Some(g) = &group {
            for procs in g.procs_files() {
                wrapper.push_str(&format!("echo $$ > '{}' || exit 125; ", procs.display()));
            }
        }
        wrapper.push_str("exec \"$@\"");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(wrapper).arg("patchbay-sandbox");
        // No single file may be larger than the whole quota: one writer is stopped exactly even
        // where the quota is measured.
        cmd.arg("prlimit").arg(format!("--fsize={}", limits.file_size_bytes.min(quota))).arg("--nofile=4096").arg("--core=0");
        if group.is_none() {
            // Without cgroups, rlimits are all there is. With them, no address-space limit:
            // it breaks programs that reserve more than they use (Go, JVMs, sanitizers), and
            // the cgroup counts what is really used and tells an OOM kill apart.
            cmd.arg(format!("--nproc={}", limits.processes)).arg(format!("--as={}", limits.memory_bytes.saturating_add(256 << 20)));
        }
        cmd.arg("--");
        match self.isolation {
            Isolation::Bubblewrap => {
                if running_as_root() {
                    // Inside a user namespace made by root, the script would still own root's
                    // files (/etc/shadow, host keys): drop to nobody first, and hand it the tree.
                    let chown = Command::new("chown")
                        .args(["-R", "65534:65534"])
                        .arg(tree)
                        .status()
                        .await
                        .map_err(io("handing the tree to the sandbox user"))?;
                    if !chown.success() {
                        return Err(SandboxError::Io {
                            what: format!("chown -R 65534:65534 {}", tree.display()),
                            source: std::io::Error::other(chown.to_string()),
                        });
                    }
                    cmd.args(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
                }
                // /tmp and /dev/shm are tmpfs, charged to the memory cgroup where there is one;
                // their size bounds them where there is none.
                let scratch = limits.memory_bytes.min(quota).to_string();
                cmd.arg("bwrap")
                    .args(["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534"])
                    .args(["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"])
                    .args(["--ro-bind", "/usr", "/usr"])
                    .args(["--ro-bind-try", "/bin", "/bin", "--ro-bind-try", "/sbin", "/sbin"])
                    .args(["--ro-bind-try", "/lib", "/lib", "--ro-bind-try", "/lib64", "/lib64", "--ro-bind-try", "/lib32", "/lib32"]);
                for entry in self.etc_entries() {
                    cmd.arg("--ro-bind-try").arg(&entry).arg(&entry);
                }
                // Private keys stay out even for a runner user in the ssl-cert group.
                if Path::new("/etc/ssl/private").is_dir() {
                    cmd.args(["--tmpfs", "/etc/ssl/private"]);
                }
                cmd.args(["--size", &scratch, "--tmpfs", "/tmp"])
                    .args(["--dev", "/dev", "--size", &scratch, "--tmpfs", "/dev/shm", "--remount-ro", "/dev", "--proc", "/proc"])
                    .arg("--bind")
                    .arg(tree)
                    .arg("/build")
                    .args(["--remount-ro", "/", "--chdir", "/build", "--clearenv"])
                    .args(["--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
                    .args(["--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8", "--setenv", "TMPDIR", "/tmp"])
                    .args(["/bin/sh", "-c", &format!("exec 2>&1\n{script}")]);
            }
            Isolation::None => {
                cmd.args(["/bin/sh", "-c", &format!("exec 2>&1\n{script}")]).current_dir(tree);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(io("starting the sandbox"))?;
        let pgid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let capture = tokio::spawn(capture(stdout, stderr, limits.output_bytes));
        // A measured quota: the tree (and what the job's processes hold open), every 50 ms or so.
        let measured = if hard { None } else { Some(disk.map_or(tree, Disk::dir).to_path_buf()) };
        let procs = group.as_ref().map(JobCgroup::procs_files).unwrap_or_default();
        let watchdog = async {
            match &measured {
                Some(dir) => watch_disk(dir.clone(), quota, procs.clone()).await,
                None => std::future::pending().await,
            }
        };
        let (status, ended) = tokio::select! {
            status = child.wait() => (Some(status.map_err(io("waiting for the script"))?), Ended::Exited),
            () = tokio::time::sleep(limits.wall) => (None, Ended::Timeout),
            used = watchdog => (None, Ended::OverQuota(used)),
        };
        // Whatever is left of the tree goes now: the group, and everything in the cgroups.
        if let Some(pgid) = pgid {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
        }
        let status = match status {
            Some(s) => s,
            None => child.wait().await.map_err(io("waiting for the killed script"))?,
        };
        if let Some(g) = &group {
            g.kill_all();
        }
        let duration = started.elapsed();
        let (output, dropped) = capture.await.unwrap_or_default();
        let oom = group.as_ref().is_some_and(JobCgroup::oom_killed);
        let hit_process_limit = group.as_ref().is_some_and(JobCgroup::hit_pids_max);
        if let Some(g) = group {
            g.remove();
        }
        if status.code() == Some(125) && output.is_empty() {
            return Err(SandboxError::Io {
                what: "joining the job's cgroups".into(),
                source: std::io::Error::other("the wrapper could not write cgroup.procs"),
            });
        }
        // Over the quota: stopped by the measurement, or ended with the disk full (less than
        // 1 MiB or no inode left), whatever the exit status: a script that ignored ENOSPC, or a
        // fast writer that finished between two measurements, still fails.
        let over_quota = match (ended, disk) {
            (Ended::OverQuota(_), _) => true,
            (Ended::Exited, Some(d)) => d.is_full().await,
            (Ended::Exited, None) => {
                let dir = tree.to_path_buf();
                let used = tokio::task::spawn_blocking(move || disk::usage(&dir, &[])).await.unwrap_or(0);
                used.saturating_add(disk::FULL_SLACK) >= quota
            }
            (Ended::Timeout, _) => false,
        };
        let mut output = output;
        if over_quota {
            let how = match ended {
                Ended::OverQuota(used) => {
                    format!("; it was stopped at {} MiB (a soft quota: this runner measures usage while the job runs)", used >> 20)
                }
                _ => String::new(),
            };
            output.extend_from_slice(
                format!("\n[patchbay: disk quota exceeded: the job may write {} MiB (runner.disk_mib){how}]\n", quota >> 20).as_bytes(),
            );
        }
        let failure = match ended {
            Ended::Timeout => Some(Failure::Timeout),
            _ if oom => Some(Failure::Memory),
            _ if over_quota => Some(Failure::Failed),
            Ended::Exited if status.success() => None,
            _ => Some(Failure::Failed),
        };
        Ok(Execution { failure, exit_code: status.code(), duration, output, dropped, hit_process_limit, disk_quota_exceeded: over_quota })
    }

    /// The `/etc` entries bound into the sandbox: [`ETC`], `ca-certificates*`, and the extras.
    fn etc_entries(&self) -> Vec<PathBuf> {
        let etc = Path::new("/etc");
        let mut names: Vec<String> = ETC.iter().map(|s| s.to_string()).collect();
        if let Ok(entries) = std::fs::read_dir(etc) {
            names.extend(
                entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("ca-certificates")),
            );
        }
        names.extend(self.etc_extra.iter().cloned());
        names.sort();
        names.dedup();
        names.into_iter().map(|n| etc.join(n)).collect()
    }
}

/// How the wait for a script ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Exited,
    Timeout,
    /// The measured disk usage passed the quota (bytes used then).
    OverQuota(u64),
}

/// Resolves with the usage once `dir` holds more than `quota` bytes; measures every
/// [`DISK_CHECK_INTERVAL`], or every ten measurement times when measuring takes longer.
async fn watch_disk(dir: PathBuf, quota: u64, procs: Vec<PathBuf>) -> u64 {
    loop {
        let started = Instant::now();
        let (d, p) = (dir.clone(), procs.clone());
        let used = tokio::task::spawn_blocking(move || {
            let pids: Vec<String> = p
                .iter()
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
                .collect();
            disk::usage(&d, &pids)
        })
        .await
        .unwrap_or(0);
        if used > quota {
            return used;
        }
        tokio::time::sleep(DISK_CHECK_INTERVAL.max(started.elapsed() * 10)).await;
    }
}

/// Reads both pipes into one buffer, keeping the first and last `limit / 2` bytes.
async fn capture(mut out: tokio::process::ChildStdout, mut err: tokio::process::ChildStderr, limit: usize) -> (Vec<u8>, u64) {
    let half = (limit / 2).max(1);
    let mut head = Vec::new();
    let mut tail = std::collections::VecDeque::new();
    let mut dropped = 0u64;
    let (mut a, mut b) = (vec![0u8; 16384], vec![0u8; 16384]);
    let (mut out_open, mut err_open) = (true, true);
    let mut keep = |chunk: &[u8], head: &mut Vec<u8>, tail: &mut std::collections::VecDeque<u8>| {
        let room = half.saturating_sub(head.len()).min(chunk.len());
        head.extend_from_slice(&chunk[..room]);
        for &byte in &chunk[room..] {
            if tail.len() == half {
                tail.pop_front();
                dropped += 1;
            }
            tail.push_back(byte);
        }
    };
    while out_open || err_open {
        tokio::select! {
            n = out.read(&mut a), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => keep(&a[..n], &mut head, &mut tail),
            },
            n = err.read(&mut b), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => keep(&b[..n], &mut head, &mut tail),
            },
        }
    }
    if dropped > 0 {
        head.extend_from_slice(format!("\n[... {dropped} bytes of output dropped ...]\n").as_bytes());
    }
    head.extend(tail);
    (head, dropped)
}

/// Whether this process runs as root (uid 0), read from /proc so no unsafe call is needed.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

fn detect_cgroups() -> Option<Cgroups> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").is_file() {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        if !(controllers.contains("memory") && controllers.contains("pids")) {
            return None;
        }
        let dir = root.join("patchbay");
        if !writable_dir(&dir) {
            return None;
        }
        // Delegate the controllers to the children of our directory.
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
        let delegated = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        // A root that holds processes cannot delegate (EBUSY): then rlimits are all we have.
        return (delegated.contains("memory") && delegated.contains("pids")).then_some(Cgroups::V2 { dir });
    }
    let memory = root.join("memory/patchbay");
    let pids = root.join("pids/patchbay");
    (writable_dir(&memory) && writable_dir(&pids)).then_some(Cgroups::V1 { memory, pids })
}

/// Removes job cgroups left behind by runners that died (their pid is gone); a cgroup whose
/// processes were still exiting when its job ended is removed here too, at the next start.
fn sweep_stale(c: &Cgroups) {
    let dirs = match c {
        Cgroups::V1 { memory, pids } => vec![memory.clone(), pids.clone()],
        Cgroups::V2 { dir } => vec![dir.clone()],
    };
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("job-").and_then(|r| r.split('-').next()) else { continue };
            if pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// One job's cgroups, removed when the job ends.
struct JobCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl JobCgroup {
    fn create(c: &Cgroups, limits: &Limits) -> Result<JobCgroup, SandboxError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!("job-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let write = |p: PathBuf, v: String| std::fs::write(&p, v).map_err(io(format!("writing {}", p.display())));
        match c {
            Cgroups::V1 { memory, pids } => {
                let (m, p) = (memory.join(&name), pids.join(&name));
                std::fs::create_dir_all(&m).map_err(io(format!("creating {}", m.display())))?;
                std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
                write(m.join("memory.limit_in_bytes"), limits.memory_bytes.to_string())?;
                // Without swap accounting memsw may be absent; the plain limit still holds.
                let _ = std::fs::write(m.join("memory.memsw.limit_in_bytes"), limits.memory_bytes.to_string());
                write(p.join("pids.max"), limits.processes.to_string())?;
                Ok(JobCgroup { dirs: vec![m, p], v2: false })
            }
            Cgroups::V2 { dir } => {
                let d = dir.join(&name);
                std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
                write(d.join("memory.max"), limits.memory_bytes.to_string())?;
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                write(d.join("pids.max"), limits.processes.to_string())?;
                Ok(JobCgroup { dirs: vec![d], v2: true })
            }
        }
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    fn read(&self, file: &str) -> String {
        self.dirs.iter().find_map(|d| std::fs::read_to_string(d.join(file)).ok()).unwrap_or_default()
    }

    fn oom_killed(&self) -> bool {
        if self.v2 {
            return self.read("memory.events").lines().any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0"));
        }
        let control = self.read("memory.oom_control");
        control.lines().any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0"))
            || self.read("memory.failcnt").trim().parse::<u64>().unwrap_or(0) > 0 && control.contains("under_oom 1")
    }

    fn hit_pids_max(&self) -> bool {
        self.dirs.iter().any(|d| {
            std::fs::read_to_string(d.join("pids.events"))
                .map(|e| e.lines().any(|l| l.starts_with("max ") && !l.ends_with(" 0")))
                .unwrap_or(false)
        })
    }

    /// SIGKILLs every process left in the job's cgroups, until none is left.
    fn kill_all(&self) {
        for _ in 0..50 {
            let pids: Vec<String> = self
                .procs_files()
                .iter()
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
                .filter(|l| !l.is_empty())
                .collect();
            if pids.is_empty() {
                return;
            }
            let _ = std::process::Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn remove(self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
