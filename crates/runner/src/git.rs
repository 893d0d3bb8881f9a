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

/// FNV-1a of a URL: a stable short name for a remote.
fn fnv1a(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn mirror_name(url: &str) -> String {
    // Readable and unique enough: the last path words plus a hash of the whole URL.
    let h = fnv1a(url);
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

    /// Fetches `commit` from another repository `url` into this mirror: by id first (servers
    /// that allow it send only what is needed), else every branch of `url` (kept under
    /// `refs/patchbay/remotes/`, which the next fetch of the mirror's own remote prunes; the
    /// objects stay). Says whether the mirror has the commit now.
    pub async fn fetch_commit(&self, url: &str, commit: &str) -> Result<bool, GitError> {
        if commit.len() < 7 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        if ok(self.git(), &["fetch", "--quiet", "--no-tags", url, commit]).await.is_ok() && self.has_commit(commit).await {
            return Ok(true);
        }
        // A stable name per remote (FNV-1a of its URL), so fetches of one remote reuse refs.
        let key = fnv1a(url);
        let refspec = format!("+refs/heads/*:refs/patchbay/remotes/{key:016x}/*");
        ok(self.git(), &["fetch", "--quiet", "--no-tags", url, &refspec]).await?;
        Ok(self.has_commit(commit).await)
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

    /// The branch as it was at `date` (unix seconds): the last commit of its first-parent line
    /// committed at or before then; `None` when the branch is younger.
    pub async fn branch_as_of(&self, branch: &str, date: i64) -> Result<Option<String>, GitError> {
        let head = self.branch_head(branch).await?;
        let at = ok(self.git(), &["rev-list", "-1", "--first-parent", &format!("--before=@{date}"), &head]).await?;
        Ok(Some(at).filter(|c| !c.is_empty()))
    }

    /// The patch of each of `mbox`'s mails found among the last `depth` commits of `head`, by
    /// `git patch-id --stable` (what survives a rebase and a maintainer's `git am`): one entry
    /// per patch of the mbox in order, `None` for a patch not found there. Empty when the mbox
    /// holds no diff.
    pub async fn merged_patches(&self, head: &str, mbox: &[u8], depth: usize) -> Result<Vec<Option<Merged>>, GitError> {
        let series = self.patch_ids(mbox).await?;
        if series.is_empty() {
            return Ok(Vec::new());
        }
        let history = self.branch_patch_ids(head, depth).await?;
        let mut out = Vec::new();
        for (i, id) in series.iter().enumerate() {
            let Some(commit) = history.get(id) else {
                out.push(None);
                continue;
            };
            let subject = ok(self.git(), &["log", "-1", "--format=%s", commit]).await.unwrap_or_default();
            out.push(Some(Merged { patch: i + 1, commit: commit.clone(), subject }));
        }
        Ok(out)
    }

    /// The `git patch-id --stable` of each patch of `mbox`, in order (none without a diff).
    pub async fn patch_ids(&self, mbox: &[u8]) -> Result<Vec<String>, GitError> {
        let out = run(self.git(), &["patch-id", "--stable"], Some(mbox)).await?;
        Ok(patch_id_lines(&out.stdout).into_iter().map(|(id, _)| id).collect())
    }

    /// The patch ids of the last `depth` non-merge commits of `head`, each to its commit: one
    /// walk answers for every series checked against the same head.
    pub async fn branch_patch_ids(&self, head: &str, depth: usize) -> Result<std::collections::HashMap<String, String>, GitError> {
        let depth = depth.to_string();
        let log = run(self.git(), &["log", "--no-merges", "--no-color", "-p", "-n", &depth, "--format=commit %H", head], None).await?;
        if !log.status.success() {
            return Err(GitError {
                args: format!("log -p -n {depth} {head}"),
                detail: String::from_utf8_lossy(&log.stderr).trim().to_string(),
            });
        }
        let history = run(self.git(), &["patch-id", "--stable"], Some(&log.stdout)).await?;
        Ok(patch_id_lines(&history.stdout).into_iter().collect())
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

/// A patch of a series that is already in a branch: the same change by `git patch-id --stable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// Its place in the series (1 for the first patch with a diff).
    pub patch: usize,
    /// The branch's commit holding it.
    pub commit: String,
    /// That commit's subject.
    pub subject: String,
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

    /// The commits after `start` up to the head, oldest first, each with its subject: the
    /// series' patches as applied.
    pub async fn commits_after(&self, start: &str) -> Result<Vec<(String, String)>, GitError> {
        let range = format!("{start}..HEAD");
        let out = ok(self.git(), &["-c", "safe.directory=*", "log", "--reverse", "--format=%H %s", &range]).await?;
        Ok(out.lines().filter_map(|l| l.split_once(' ').map(|(c, s)| (c.to_string(), s.to_string()))).collect())
    }

    /// Checks out `commit` (detached), keeping untracked build outputs for the next step. The
    /// sandbox may have handed the tree to its own user in between, hence `safe.directory`.
    pub async fn checkout(&self, commit: &str) -> Result<(), GitError> {
        ok(self.git(), &["-c", "safe.directory=*", "checkout", "-q", "-f", "--detach", commit]).await.map(|_| ())
    }

    /// Removes the tree and its administrative files; a dirty tree is never reused.
    pub async fn remove(self) {
        let _ = ok(self.mirror.git(), &["worktree", "remove", "--force", &self.dir.to_string_lossy()]).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = ok(self.mirror.git(), &["worktree", "prune"]).await;
    }
}

/// Replaces the runner's own paths and host name in text that will be published, whole tokens only.
///
/// A path is replaced where it is a path prefix: not preceded by a name
/// character (`[A-Za-z0-9_.-]`), and followed by `/`, a character that is not
/// a name character, or the end (`/w/17` hides `/w/17/a.c` and `/w/17:`, not
/// `/w/170` or `/w/17.img`, which the enclosing root then hides). Longer paths
/// go first, so a job's directory is hidden whole before its runner's root.
/// The host name is replaced where it is a word: bounded on both sides by a
/// character that is not a name character or by a line end, a sentence's
/// final dot counting as a bound. So on a host `vm`, `recvmsg`, `vm.c`,
/// `vm_x` and `/home/vm-x` stay, while `vm:`, `user@vm`, `(vm)`, `vm.` and
/// `/home/vm/x` lose it. A fully qualified form (`vm.example.org`) is not
/// known to the runner and is left alone: the host name is the kernel's.
/// Secrets of one character are ignored (they would hide every such letter).
pub fn scrub(text: &str, paths: &[&str], host: &str) -> String {
    let mut paths: Vec<&str> = paths.iter().map(|p| p.trim_end_matches('/')).filter(|p| p.len() > 1).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let mut out = text.to_string();
    for p in paths {
        out = replace_token(&out, p);
    }
    if host.len() > 1 {
        out = replace_token(&out, host);
    }
    out
}

/// `git patch-id` output as (patch id, commit) pairs.
fn patch_id_lines(out: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(id, commit)| (id.to_string(), commit.to_string())))
        .collect()
}

/// A repository as a report may name it: a URL without its user and password, a local path
/// as its last component (the runner's paths are its own).
pub fn scrub_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return if path.is_empty() { format!("{scheme}://{host}") } else { format!("{scheme}://{host}/{path}") };
    }
    if let Some((_, host_path)) = url.split_once('@').filter(|(user, _)| !user.contains('/')) {
        return host_path.to_string(); // scp-like `git@host:path`
    }
    std::path::Path::new(url.trim_end_matches('/')).file_name().map_or_else(|| url.to_string(), |n| n.to_string_lossy().into_owned())
}

/// A character that may continue a host or file name, so a secret next to it is part of another word.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Replaces each `needle` in `text` that no name character precedes or follows (a path's `/` is no name character).
///
/// A single dot after the needle counts as the end of a sentence, not as part
/// of a name, when no name character follows the dot.
fn replace_token(text: &str, needle: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(at) = text[from..].find(needle).map(|i| from + i) {
        let end = at + needle.len();
        let before = text[..at].chars().next_back();
        let mut after = text[end..].chars();
        let next = after.next();
        let bounded = before.is_none_or(|c| !is_name_char(c))
            && (next.is_none_or(|c| !is_name_char(c)) || next == Some('.') && after.next().is_none_or(|c| !is_name_char(c)));
        if bounded {
            out.push_str(&text[from..at]);
            out.push_str("<runner>");
            from = end;
        } else {
            // Skip one character, not the whole needle: a match may overlap this one.
            let step = text[at..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[from..at + step]);
            from = at + step;
        }
    }
    out.push_str(&text[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_named_without_secrets_or_runner_paths() {
        assert_eq!(scrub_url("https://user:tok3n@git.example.org/net/net-next.git"), "https://git.example.org/net/net-next.git");
        assert_eq!(scrub_url("https://git.kernel.org/pub/scm/x.git"), "https://git.kernel.org/pub/scm/x.git");
        assert_eq!(scrub_url("ssh://git@host"), "ssh://host");
        assert_eq!(scrub_url("git@github.com:org/repo.git"), "github.com:org/repo.git");
        assert_eq!(scrub_url("/srv/runner/repos/net-next/"), "net-next");
    }

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
        assert_eq!(scrub("error in /var/lib/pb/w/17/a.c", &["/var/lib/pb/w/17"], ""), "error in <runner>/a.c");
    }

    #[test]
    fn scrub_replaces_the_host_name_as_a_word_only() {
        let host = |t: &str| scrub(t, &[], "vm");
        // Inside other words: kept (this was `rec<runner>sg`).
        assert_eq!(host("recvmsg() failed: vmx vm_stat kvm"), "recvmsg() failed: vmx vm_stat kvm");
        assert_eq!(
            host("vm.c:12: error; /home/vm-x/a; vm-1 and 1-vm; vm.example.org"),
            "vm.c:12: error; /home/vm-x/a; vm-1 and 1-vm; vm.example.org"
        );
        // As a word: hidden, at line ends too.
        assert_eq!(
            host("vm: ready\nuser@vm\n(vm) [vm]\nssh vm\nhost /home/vm/x"),
            "<runner>: ready\nuser@<runner>\n(<runner>) [<runner>]\nssh <runner>\nhost /home/<runner>/x"
        );
        assert_eq!(host("vm"), "<runner>");
        assert_eq!(host("built on vm. Done"), "built on <runner>. Done");
        assert_eq!(host("built on vm."), "built on <runner>.");
        assert_eq!(host("vmvm vm vm"), "vmvm <runner> <runner>");
        // A fully qualified host name is itself one token.
        assert_eq!(
            scrub("on build1.example.org: ok; xbuild1.example.org", &[], "build1.example.org"),
            "on <runner>: ok; xbuild1.example.org"
        );
        // One letter is never a secret.
        assert_eq!(scrub("a b", &[], "a"), "a b");
    }

    #[test]
    fn scrub_replaces_paths_as_path_prefixes() {
        let paths = ["/srv/pb", "/srv/pb/work/17", "/srv/pb/mirrors/x.git/"];
        let s = |t: &str| scrub(t, &paths, "vm");
        assert_eq!(s("/srv/pb/work/17/a.c:3: error"), "<runner>/a.c:3: error");
        assert_eq!(s("'/srv/pb/work/17': no such file"), "'<runner>': no such file");
        assert_eq!(s("cd /srv/pb/work/17.img; /srv/pb/work/170/x"), "cd <runner>/work/17.img; <runner>/work/170/x");
        assert_eq!(s("fatal: /srv/pb/mirrors/x.git/worktrees/17 on vm"), "fatal: <runner>/worktrees/17 on <runner>");
        assert_eq!(s("/srv/pbx and /opt/srv/pb and x/srv/pb stay"), "/srv/pbx and /opt/srv/pb and x/srv/pb stay");
        assert_eq!(s("GIT_DIR=/srv/pb"), "GIT_DIR=<runner>");
    }
}
