//! Running an untrusted script with no network, a read-only view of the
//! system, only the tree writable, and limits on time, memory, processes,
//! file size and output.
//!
//! The script runs as `sh -c` inside bubblewrap: every namespace unshared
//! (only `lo`, its own PIDs, its own hostname), as uid 65534 with no
//! capabilities (a runner started as root drops to 65534 with `setpriv`
//! first and hands the tree to that user, because inside a user namespace
//! made by root the script would still own root's files), `/usr`, `/bin`, `/lib*`, `/sbin` and `/etc` bound read-only,
//! the tree at `/build`, a private `/tmp`, and nothing else of the host: no
//! home directories, no `/var`, no `/srv`. Limits are rlimits (`prlimit`:
//! address space, file size, open files) and, where the machine lets us
//! create them, a memory and a pids cgroup (v1 or v2, detected), which also
//! tell an out-of-memory kill from other deaths. The whole tree is killed at
//! the wall-clock limit: the wrapper leads its own process group, and
//! bubblewrap's `--die-with-parent` takes the PID namespace with it.
//!
//! Isolation `none` runs the script directly (with the same limits) for
//! trusted setups; it is never the default, and a runner that wants
//! bubblewrap and cannot find it refuses to run anything.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How a script is confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// Why a script could not be run at all (an infrastructure fault, reported as ERROR).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// bubblewrap is wanted but not installed.
    #[error("bubblewrap (bwrap) is not installed; install Debian's `bubblewrap`, or set isolation = \"none\" for trusted jobs only")]
    NoBubblewrap,
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
        Ok(Sandbox { isolation, cgroups })
    }

    /// Whether memory and process limits are enforced by cgroups here (else by rlimits only).
    pub fn has_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Runs `script` with `sh -c` in `tree` (seen as `/build` inside bubblewrap).
    pub async fn run(&self, script: &str, tree: &Path, limits: &Limits) -> Result<Execution, SandboxError> {
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
        cmd.arg("prlimit").arg(format!("--fsize={}", limits.file_size_bytes)).arg("--nofile=4096").arg("--core=0");
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
                cmd.arg("bwrap")
                    .args(["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534"])
                    .args(["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"])
                    .args(["--ro-bind", "/usr", "/usr"])
                    .args(["--ro-bind-try", "/bin", "/bin", "--ro-bind-try", "/sbin", "/sbin"])
                    .args(["--ro-bind-try", "/lib", "/lib", "--ro-bind-try", "/lib64", "/lib64", "--ro-bind-try", "/lib32", "/lib32"])
                    .args(["--ro-bind", "/etc", "/etc"])
                    // patchbay's own configuration (SMTP and broker passwords) stays out of reach.
                    .args(if Path::new("/etc/patchbay").is_dir() { &["--tmpfs", "/etc/patchbay"][..] } else { &[][..] })
                    .args(["--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc"])
                    .arg("--bind")
                    .arg(tree)
                    .arg("/build")
                    .args(["--chdir", "/build", "--clearenv"])
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
        let status = tokio::select! {
            status = child.wait() => Some(status.map_err(io("waiting for the script"))?),
            () = tokio::time::sleep(limits.wall) => None,
        };
        let timed_out = status.is_none();
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
        let failure = if timed_out {
            Some(Failure::Timeout)
        } else if oom {
            Some(Failure::Memory)
        } else if status.success() {
            None
        } else {
            Some(Failure::Failed)
        };
        Ok(Execution { failure, exit_code: status.code(), duration, output, dropped, hit_process_limit })
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
