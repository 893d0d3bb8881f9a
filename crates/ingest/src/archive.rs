//! Reading mail sources for `patchbay import`: mbox files, maildirs, and
//! public-inbox v2 git archives, one mail at a time so memory does not grow
//! with the archive.
//!
//! A public-inbox v2 archive is one or more epoch repositories (`git/0.git`,
//! `git/1.git`, … or a single bare epoch); each commit's tree holds the mail
//! as the blob `m`, and a commit without `m` is a deletion, skipped. The
//! importer records the last imported commit per epoch (`import_marks`), in
//! the same transaction as the mails, so the next run reads only
//! `mark..HEAD`. Git is driven with its CLI: `rev-list` for the commits and
//! one `cat-file --batch` process for the blobs.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use patchbay_mail::MboxReader;

use crate::IngestError;

/// What kind of source a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A file of mails separated by `From ` lines.
    Mbox,
    /// A directory with `cur/` and `new/`.
    Maildir,
    /// A public-inbox v2 archive (or one epoch of it).
    PublicInbox,
}

impl Kind {
    /// Lower-case name for summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mbox => "mbox",
            Kind::Maildir => "maildir",
            Kind::PublicInbox => "public-inbox",
        }
    }
}

fn src_err(path: &Path, what: impl std::fmt::Display) -> IngestError {
    IngestError::Source(format!("{}: {what}", path.display()))
}

fn is_git_dir(p: &Path) -> bool {
    p.join("HEAD").is_file() && p.join("objects").is_dir()
}

/// Tells what `path` is.
pub fn detect(path: &Path) -> Result<Kind, IngestError> {
    let meta = std::fs::metadata(path).map_err(|e| src_err(path, e))?;
    if meta.is_file() {
        return Ok(Kind::Mbox);
    }
    if is_git_dir(path) || path.join("git").is_dir() {
        return Ok(Kind::PublicInbox);
    }
    if path.join("cur").is_dir() || path.join("new").is_dir() {
        return Ok(Kind::Maildir);
    }
    Err(src_err(path, "neither an mbox file, a maildir (cur/, new/) nor a public-inbox archive (git/N.git or a bare epoch)"))
}

/// The epoch repositories of a public-inbox archive, oldest first.
pub fn epochs(path: &Path) -> Result<Vec<PathBuf>, IngestError> {
    if is_git_dir(path) {
        return Ok(vec![std::fs::canonicalize(path).map_err(|e| src_err(path, e))?]);
    }
    let dir = path.join("git");
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| src_err(&dir, e))? {
        let entry = entry.map_err(|e| src_err(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".git").and_then(|n| n.parse().ok())
            && is_git_dir(&entry.path())
        {
            found.push((n, std::fs::canonicalize(entry.path()).map_err(|e| src_err(path, e))?));
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(src_err(&dir, "no epoch repositories (N.git)"));
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// One item of a source.
#[derive(Debug)]
pub struct Item {
    /// The mail, or `None` for a public-inbox deletion (a commit without `m`).
    pub raw: Option<Vec<u8>>,
    /// For public-inbox: the epoch and the commit, to record once this item is stored.
    pub mark: Option<(String, String)>,
}

/// How far a source has got: `done` of `total` units.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
}

/// A source of mails.
pub trait Source: Send {
    /// The next mail, `None` at the end.
    fn next_item(&mut self) -> Option<Result<Item, IngestError>>;
    /// Bytes (mbox) or mails (maildir, public-inbox) done so far.
    fn progress(&self) -> Progress;
}

struct Mbox {
    path: PathBuf,
    reader: MboxReader<BufReader<File>>,
    size: u64,
}

impl Source for Mbox {
    fn next_item(&mut self) -> Option<Result<Item, IngestError>> {
        Some(self.reader.next()?.map(|m| Item { raw: Some(m.raw), mark: None }).map_err(|e| src_err(&self.path, e)))
    }
    fn progress(&self) -> Progress {
        Progress { done: self.reader.offset(), total: Some(self.size) }
    }
}

/// Opens an mbox file.
pub fn mbox(path: &Path) -> Result<Box<dyn Source>, IngestError> {
    let file = File::open(path).map_err(|e| src_err(path, e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Box::new(Mbox { path: path.to_path_buf(), reader: MboxReader::new(BufReader::with_capacity(1 << 20, file)), size }))
}

struct Maildir {
    files: Vec<PathBuf>,
    next: usize,
}

impl Source for Maildir {
    fn next_item(&mut self) -> Option<Result<Item, IngestError>> {
        let path = self.files.get(self.next)?;
        self.next += 1;
        Some(std::fs::read(path).map(|raw| Item { raw: Some(raw), mark: None }).map_err(|e| src_err(path, e)))
    }
    fn progress(&self) -> Progress {
        Progress { done: self.next as u64, total: Some(self.files.len() as u64) }
    }
}

/// Opens a maildir: every file in `new/` and `cur/`, in name order (delivery time first).
pub fn maildir(path: &Path) -> Result<Box<dyn Source>, IngestError> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        let dir = path.join(sub);
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).map_err(|e| src_err(&dir, e))? {
            let entry = entry.map_err(|e| src_err(&dir, e))?;
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) && !entry.file_name().to_string_lossy().starts_with('.') {
                files.push(entry.path());
            }
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(Box::new(Maildir { files, next: 0 }))
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--git-dir").arg(dir).env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null");
    c
}

struct Epoch {
    dir: PathBuf,
    key: String,
    revs: BufReader<ChildStdout>,
    rev_list: Child,
    cat: Child,
    cat_in: ChildStdin,
    cat_out: BufReader<ChildStdout>,
}

struct PublicInbox {
    pending: Vec<(PathBuf, Option<String>)>,
    current: Option<Epoch>,
    done: u64,
    total: u64,
}

fn range_args(mark: &Option<String>) -> Vec<String> {
    let mut args = vec!["HEAD".to_string()];
    if let Some(m) = mark {
        args.push(format!("^{m}"));
    }
    args
}

impl PublicInbox {
    fn open_epoch(dir: &Path, mark: &Option<String>) -> Result<Epoch, IngestError> {
        let mut rev_list = git(dir)
            .args(["rev-list", "--reverse", "--topo-order"])
            .args(range_args(mark))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| src_err(dir, format!("running git rev-list: {e}")))?;
        let revs = BufReader::new(rev_list.stdout.take().expect("piped"));
        let mut cat = git(dir)
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| src_err(dir, format!("running git cat-file: {e}")))?;
        let cat_in = cat.stdin.take().expect("piped");
        let cat_out = BufReader::with_capacity(1 << 20, cat.stdout.take().expect("piped"));
        Ok(Epoch { dir: dir.to_path_buf(), key: dir.display().to_string(), revs, rev_list, cat, cat_in, cat_out })
    }

    fn read_blob(e: &mut Epoch, commit: &str) -> Result<Option<Vec<u8>>, IngestError> {
        writeln!(e.cat_in, "{commit}:m").and_then(|()| e.cat_in.flush()).map_err(|err| src_err(&e.dir, err))?;
        let mut header = String::new();
        e.cat_out.read_line(&mut header).map_err(|err| src_err(&e.dir, err))?;
        let header = header.trim_end();
        if header.ends_with(" missing") || header.ends_with(" ambiguous") {
            return Ok(None);
        }
        let mut parts = header.split(' ');
        let (_oid, kind, size) = (parts.next(), parts.next(), parts.next().and_then(|s| s.parse::<usize>().ok()));
        let Some(size) = size.filter(|_| kind == Some("blob")) else {
            return Err(src_err(&e.dir, format!("git cat-file said {header:?} for {commit}:m")));
        };
        let mut raw = vec![0; size + 1];
        e.cat_out.read_exact(&mut raw).map_err(|err| src_err(&e.dir, err))?;
        raw.pop();
        Ok(Some(raw))
    }
}

impl Source for PublicInbox {
    fn next_item(&mut self) -> Option<Result<Item, IngestError>> {
        loop {
            if self.current.is_none() {
                if self.pending.is_empty() {
                    return None;
                }
                let (dir, mark) = self.pending.remove(0);
                match Self::open_epoch(&dir, &mark) {
                    Ok(e) => self.current = Some(e),
                    Err(err) => return Some(Err(err)),
                }
            }
            let e = self.current.as_mut().expect("set above");
            let mut line = String::new();
            match e.revs.read_line(&mut line) {
                Err(err) => return Some(Err(src_err(&e.dir, err))),
                Ok(0) => {
                    let mut done = self.current.take().expect("set above");
                    drop(done.cat_in);
                    let _ = done.cat.wait();
                    match done.rev_list.wait() {
                        Ok(s) if s.success() => continue,
                        Ok(s) => {
                            return Some(Err(src_err(
                                &done.dir,
                                format!("git rev-list failed ({s}); is the recorded mark still in the archive?"),
                            )));
                        }
                        Err(err) => return Some(Err(src_err(&done.dir, err))),
                    }
                }
                Ok(_) => {
                    let commit = line.trim().to_string();
                    self.done += 1;
                    let raw = match Self::read_blob(e, &commit) {
                        Ok(r) => r,
                        Err(err) => return Some(Err(err)),
                    };
                    return Some(Ok(Item { raw, mark: Some((e.key.clone(), commit)) }));
                }
            }
        }
    }
    fn progress(&self) -> Progress {
        Progress { done: self.done, total: Some(self.total) }
    }
}

/// Opens a public-inbox archive; `marks` gives, per epoch (as [`epochs`] names it), the last
/// commit imported before.
pub fn public_inbox(epochs: Vec<(PathBuf, Option<String>)>) -> Result<Box<dyn Source>, IngestError> {
    let mut total = 0;
    for (dir, mark) in &epochs {
        let out = git(dir)
            .args(["rev-list", "--count"])
            .args(range_args(mark))
            .output()
            .map_err(|e| src_err(dir, format!("running git: {e}")))?;
        if !out.status.success() {
            return Err(src_err(
                dir,
                format!(
                    "git rev-list failed: {}; if the archive was rewritten past the recorded mark, import with --full",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        total += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0);
    }
    Ok(Box::new(PublicInbox { pending: epochs, current: None, done: 0, total }))
}

/// Reads a whole stream (stdin for `inject`) up to `limit` bytes; `Ok(None)` when larger.
pub fn read_limited(mut input: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    input.by_ref().take(limit + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}
