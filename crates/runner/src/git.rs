//! Git as the runner uses it, through its CLI (libgit2 has no `am`): one bare
//! mirror per repository, refreshed at most once per interval or on demand
//! when a wanted commit is missing; a fresh detached worktree per job,
//! removed afterwards; `git am -3` as a fixed identity that never reads the
//! host's git configuration, aborted cleanly when a patch does not apply.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The identity `git am` commits as on every runner.
pub const IDENTITY: (&str, &str) = ("patchbay runner", "runner@patchbay.invalid");

/// A git command failed.
#[derive(Debug, thiserror::Error)]
#[error("git {args}: {detail}")]
pub struct GitError {
    /// The arguments, for the log.
    pub args: String,
    /// What git said, or the OS.
    pub detail: String,
}

/// A git command that reads no user or system configuration and asks nothing.
fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", IDENTITY.0)
        .env("GIT_AUTHOR_EMAIL", IDENTITY.1)
        .env("GIT_COMMITTER_NAME", IDENTITY.0)
        .env("GIT_COMMITTER_EMAIL", IDENTITY.1)
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn run(mut cmd: Command, args: &[&str], input: Option<&[u8]>) -> Result<std::process::Output, GitError> {
    let shown = args.join(" ");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| GitError { args: shown.clone(), detail: e.to_string() })?;
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("piped");
        let data = data.to_vec();
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }
    child.wait_with_output().await.map_err(|e| GitError { args: shown, detail: e.to_string() })
}

async fn ok(cmd: Command, args: &[&str]) -> Result<String, GitError> {
    let out = run(cmd, args, None).await?;
    if !out.status.success() {
        return Err(GitError { args: args.join(" "), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A bare mirror of one repository.
#[derive(Clone, Debug)]
pub struct Mirror {
    url: String,
    dir: PathBuf,
}

fn mirror_name(url: &str) -> String {
    // Readable and unique enough: the last path words plus a hash of the whole URL.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in url.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let tail: String = url
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    format!("{tail}-{h:016x}.git")
}

impl Mirror {
    /// The mirror of `url` under `root` (created on first refresh).
    pub fn new(root: &Path, url: &str) -> Mirror {
        Mirror { url: url.to_string(), dir: root.join(mirror_name(url)) }
    }

    /// Where the mirror lives (never published).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn git(&self) -> Command {
        let mut c = git();
        c.arg("--git-dir").arg(&self.dir);
        c
    }

    /// Clones when absent; fetches when the last fetch is older than `max_age` (zero: always).
    pub async fn refresh(&self, max_age: Duration) -> Result<(), GitError> {
        if !self.dir.join("HEAD").is_file() {
            if let Some(parent) = self.dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| GitError { args: "clone".into(), detail: e.to_string() })?;
            }
            let tmp = self.dir.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            ok(git(), &["clone", "--mirror", "--quiet", &self.url, &tmp.to_string_lossy()]).await?;
            std::fs::rename(&tmp, &self.dir).map_err(|e| GitError { args: "clone".into(), detail: e.to_string() })?;
            self.stamp();
            return Ok(());
        }
        let fresh = std::fs::metadata(self.dir.join("patchbay-fetched"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < max_age);
        if fresh {
            return Ok(());
        }
        ok(self.git(), &["fetch", "--prune", "--quiet", "origin"]).await?;
        self.stamp();
        Ok(())
    }

    fn stamp(&self) {
        let _ = std::fs::write(self.dir.join("patchbay-fetched"), b"");
    }

    /// Whether `rev` names a commit the mirror has.
    pub async fn has_commit(&self, rev: &str) -> bool {
        if rev.is_empty() || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        ok(self.git(), &["cat-file", "-e", &format!("{rev}^{{commit}}")]).await.is_ok()
    }

    /// The commit a branch points at.
    pub async fn branch_head(&self, branch: &str) -> Result<String, GitError> {
        ok(self.git(), &["rev-parse", "--verify", &format!("refs/heads/{branch}^{{commit}}")]).await
    }

    /// Forgets worktrees whose directories are gone (a failed add leaves one behind).
    pub async fn prune(&self) -> Result<(), GitError> {
        ok(self.git(), &["worktree", "prune"]).await.map(drop)
    }

    /// A fresh detached worktree at `base` in `dir` (absent, or an empty directory).
    pub async fn worktree(&self, dir: &Path, base: &str) -> Result<Worktree, GitError> {
        ok(self.git(), &["worktree", "add", "--detach", "--quiet", &dir.to_string_lossy(), base]).await?;
        Ok(Worktree { mirror: self.clone(), dir: dir.to_path_buf() })
    }
}

/// A job's working tree; [`Worktree::remove`] it when done.
#[derive(Debug)]
pub struct Worktree {
    mirror: Mirror,
    dir: PathBuf,
}

/// What `git am -3` made of a series.
#[derive(Clone, Debug)]
pub struct Applied {
    /// Whether every patch applied.
    pub ok: bool,
    /// `git am`'s output, with the failing patch and the rejected hunk on failure.
    pub output: String,
    /// The subject of the patch that failed, from `Patch failed at NNNN <subject>`.
    pub failed_patch: Option<String>,
}

impl Worktree {
    /// The tree's directory (never published).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn git(&self) -> Command {
        let mut c = git();
        c.current_dir(&self.dir).env("HOME", &self.dir);
        c
    }

    /// Applies an mbox with `git am -3`; on failure, records why and aborts cleanly.
    pub async fn am(&self, mbox: &[u8]) -> Result<Applied, GitError> {
        // Series mboxes are written mboxrd (`>From ` quoted); git am must unquote them.
        let args = [
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgSign=false",
            "am",
            "-3",
            "--keep-cr",
            "--no-gpg-sign",
            "--patch-format=mboxrd",
        ];
        let out = run(self.git(), &args, Some(mbox)).await?;
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            return Ok(Applied { ok: true, output, failed_patch: None });
        }
        let failed_patch = output.lines().find_map(|l| l.strip_prefix("Patch failed at ")).map(|rest| rest.trim().to_string());
        // The rejected hunk: what git was trying to apply when it stopped.
        if let Ok(diff) = ok(self.git(), &["am", "--show-current-patch=diff"]).await {
            output.push_str("\n--- the patch that failed ---\n");
            output.push_str(&diff);
            output.push('\n');
        }
        let _ = ok(self.git(), &["am", "--abort"]).await;
        Ok(Applied { ok: false, output, failed_patch })
    }

    /// The commit checked out now.
    pub async fn head(&self) -> Result<String, GitError> {
        ok(self.git(), &["rev-parse", "HEAD"]).await
    }

    /// Removes the tree and its administrative files; a dirty tree is never reused.
    pub async fn remove(self) {
        let _ = ok(self.mirror.git(), &["worktree", "remove", "--force", &self.dir.to_string_lossy()]).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = ok(self.mirror.git(), &["worktree", "prune"]).await;
    }
}

/// Replaces the runner's own paths (and host name) in text that will be published.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() > 1) {
        out = out.replace(s, "<runner>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names_are_readable_and_distinct() {
        let a = mirror_name("https://git.kernel.org/pub/scm/linux/kernel/git/groeck/linux-staging.git");
        let b = mirror_name("https://example.org/other/linux-staging.git");
        assert!(a.starts_with("linux-staging-") && a.ends_with(".git"));
        assert_ne!(a, b);
        assert!(mirror_name("/srv/x/").starts_with("x-"));
    }

    #[test]
    fn scrub_hides_paths() {
        assert_eq!(scrub("error in /var/lib/pb/w/17/a.c", &["/var/lib/pb/w/17"]), "error in <runner>/a.c");
    }
}
