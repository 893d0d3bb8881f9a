//! A job's disk: the directory that holds its tree (the checkout and every
//! build output), bounded by a quota.
//!
//! Two ways, chosen per runner:
//!
//! - **Mounted** (hard; a runner running as root, `mkfs.ext4` and
//!   `/dev/loop-control` present): a sparse file of the quota's size,
//!   formatted ext4 (no journal, no reserved blocks, inode tables not
//!   zeroed), loop-mounted `nosuid,nodev` on the job's directory. A write
//!   past the quota gets `ENOSPC`, and the host never holds more than the
//!   image's size for the job, filesystem metadata included. mkfs + mount +
//!   umount cost about 30 ms per job here (8-11 ms each, for 64 MiB and for
//!   4 GiB alike).
//! - **Measured** (soft; everywhere else): a plain directory whose usage
//!   (allocated blocks, each inode once, plus files the job deleted but still
//!   holds open) the sandbox measures every 50 ms (every ten measurement
//!   times for a tree that takes longer to walk: at most a tenth of a core),
//!   killing the job when it is over. It overshoots by what the job writes
//!   between two measurements (page-cache writes reach ~1 GB/s, so up to
//!   tens of MiB on a small tree, more on a big one); the file-size rlimit,
//!   never above the quota, bounds each single file exactly, and a job that
//!   ends over its quota fails even if it finished between two measurements.
//!
//! Rejected: a size-limited tmpfs (its pages are charged to the job's memory
//! cgroup, so a tree would eat the memory limit, and a big tree does not fit
//! in RAM) and project quotas (they need `prjquota` on the runner's
//! filesystem, which an operator must set up at mkfs or mount time).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::sandbox::SandboxError;

/// A disk is "full" when less than this is left: a job that ends so has hit its quota.
pub(crate) const FULL_SLACK: u64 = 1 << 20;

/// A job's quota-bounded directory; [`Disk::release`] it when the job is done.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    image: Option<PathBuf>,
    quota: u64,
    released: bool,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// The program's path: on `PATH`, or in the sbin directories a non-login root shell may lack.
pub(crate) fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn quiet(cmd: &mut Command, what: &str) -> Result<(), SandboxError> {
    let out = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.map_err(io(what))?;
    if out.status.success() {
        return Ok(());
    }
    Err(SandboxError::Io { what: what.to_string(), source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()) })
}

impl Disk {
    /// A plain directory at `dir`, measured against `quota` while a job runs.
    pub(crate) fn measured(dir: &Path, quota: u64) -> Result<Disk, SandboxError> {
        std::fs::create_dir_all(dir.join("tree")).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Disk { dir: dir.to_path_buf(), image: None, quota, released: false })
    }

    /// A sparse ext4 image of `quota` bytes beside `dir`, loop-mounted on `dir`.
    pub(crate) async fn mounted(dir: &Path, quota: u64) -> Result<Disk, SandboxError> {
        let image = dir.with_extension("img");
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        // From here on, dropping the disk unmounts and deletes whatever was made.
        let disk = Disk { dir: dir.to_path_buf(), image: Some(image.clone()), quota, released: false };
        let file = std::fs::File::create(&image).map_err(io(format!("creating {}", image.display())))?;
        file.set_len(quota).map_err(io(format!("sizing {}", image.display())))?;
        drop(file);
        let mkfs = program("mkfs.ext4").ok_or_else(|| SandboxError::Io {
            what: "formatting a job's disk".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "mkfs.ext4 not found (Debian's e2fsprogs)"),
        })?;
        // No journal (scratch data), no blocks reserved for root, and nothing zeroed ahead:
        // mkfs writes a few hundred KiB whatever the size, and the image stays sparse.
        quiet(
            Command::new(mkfs)
                .args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-E", "nodiscard,lazy_itable_init=1", "-L", "patchbay-job"])
                .arg(&image),
            "formatting a job's disk (mkfs.ext4)",
        )
        .await?;
        // noinit_itable: no background thread zeroing inode tables into the image.
        quiet(
            Command::new(program("mount").unwrap_or_else(|| "mount".into()))
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime,noinit_itable"])
                .arg(&image)
                .arg(dir),
            "mounting a job's disk",
        )
        .await?;
        std::fs::create_dir(dir.join("tree")).map_err(io(format!("creating the tree in {}", dir.display())))?;
        Ok(disk)
    }

    /// Where the job's tree goes (an empty directory, as `git worktree add` accepts it).
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    /// The directory the quota covers.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the quota is a mounted filesystem (hard) rather than measured (soft).
    pub fn is_mounted(&self) -> bool {
        self.image.is_some()
    }

    /// What the disk takes on the host now: the image's allocated blocks, or the tree's usage.
    pub fn host_bytes(&self) -> u64 {
        match &self.image {
            Some(image) => std::fs::metadata(image).map(|m| m.blocks() * 512).unwrap_or(0),
            None => usage(&self.dir, &[]),
        }
    }

    /// The quota, in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Whether the job has (nearly) used its quota: no space or no inodes left.
    pub(crate) async fn is_full(&self) -> bool {
        if self.image.is_none() {
            let dir = self.dir.clone();
            let used = tokio::task::spawn_blocking(move || usage(&dir, &[])).await.unwrap_or(0);
            return used.saturating_add(FULL_SLACK) >= self.quota;
        }
        let Ok(out) = Command::new("stat").args(["-f", "-c", "%a %S %d"]).arg(&self.dir).stdin(Stdio::null()).output().await else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let n: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        matches!(n[..], [avail, block, inodes] if avail.saturating_mul(block) < FULL_SLACK || inodes == 0)
    }

    /// Unmounts and deletes the disk with everything on it.
    pub async fn release(mut self) {
        self.released = true;
        if let Some(image) = &self.image {
            let umount = program("umount").unwrap_or_else(|| "umount".into());
            let mut done = false;
            // Processes of the job may still be exiting and hold the tree: retry, then detach.
            for _ in 0..25 {
                if quiet(Command::new(&umount).arg(&self.dir), "umount").await.is_ok() {
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !done {
                let _ = quiet(Command::new(&umount).arg("-l").arg(&self.dir), "umount -l").await;
            }
            let _ = std::fs::remove_file(image);
            let _ = std::fs::remove_dir(&self.dir);
        } else if std::fs::remove_dir_all(&self.dir).is_err() {
            // A script may have left read-only directories.
            let _ = Command::new("chmod").args(["-R", "u+rwx"]).arg(&self.dir).status().await;
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Not released (an error path, a panic): detach the mount at least, never leak it.
        if let Some(image) = &self.image {
            let umount = program("umount").unwrap_or_else(|| "umount".into());
            let _ = std::process::Command::new(umount).arg("-l").arg(&self.dir).stderr(Stdio::null()).status();
            let _ = std::fs::remove_file(image);
            let _ = std::fs::remove_dir(&self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Unmounts the job disks a killed runner left mounted under `work` (lazily: nothing may still
/// use them), so its directories can be removed.
pub(crate) fn release_stale(work: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let Some(umount) = program("umount") else { return };
    for line in mountinfo.lines() {
        let Some(point) = line.split(' ').nth(4) else { continue };
        let point = PathBuf::from(unescape(point));
        if point.starts_with(work) && point != work {
            let _ = std::process::Command::new(&umount).arg("-l").arg(&point).stderr(Stdio::null()).status();
        }
    }
}

/// mountinfo writes space, tab, newline and backslash as `\NNN` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes allocated under `dir` (each inode once, not crossing into other filesystems), plus
/// files on the same filesystem that the processes `pids` deleted but still hold open.
pub(crate) fn usage(dir: &Path, pids: &[String]) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else { return 0 };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut total = top.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                // The job's own directory, made unreadable to hide what is in it: we own it.
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
                match std::fs::read_dir(&d) {
                    Ok(e) => e,
                    Err(_) => continue,
                }
            }
            Err(_) => continue,
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev || (m.nlink() > 1 && !seen.insert(m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(Path::new("/proc").join(pid).join("fd")) else { continue };
        for fd in fds.flatten() {
            let deleted = std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().ends_with(" (deleted)"));
            if !deleted {
                continue;
            }
            if let Ok(m) = std::fs::metadata(fd.path())
                && m.dev() == dev
                && m.is_file()
                && seen.insert(m.ino())
            {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/srv/run\040ner/work/1"), "/srv/run ner/work/1");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn usage_counts_allocated_blocks_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        std::fs::File::create(d.path().join("sparse")).unwrap().set_len(1 << 30).unwrap();
        let used = usage(d.path(), &[]);
        assert!((1 << 20..4 << 20).contains(&used), "{used}");
    }
}
