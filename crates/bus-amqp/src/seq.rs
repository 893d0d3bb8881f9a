//! Sequence numbers for a broker that cannot keep counters: reserved in blocks
//! in a small file per sender, so they rise strictly across restarts. A crash
//! skips the rest of the reserved block; consumers see a gap that history
//! cannot fill, and move on.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use patchbay_model::Sender;

const BLOCK: u64 = 1024;

/// One sender's counter, backed by one file.
pub struct SenderSeq {
    path: PathBuf,
    next: u64,
    reserved: u64,
}

impl SenderSeq {
    /// Loads the counter of `sender` from `dir`.
    pub fn load(dir: &Path, sender: &Sender) -> std::io::Result<Self> {
        let name: String = format!("{}/{}", sender.service, sender.instance).bytes().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(name);
        let reserved = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(SenderSeq { path, next: reserved + 1, reserved })
    }

    /// The next sequence number; reserves (and fsyncs) a new block when the current one is used up.
    pub fn take(&mut self) -> std::io::Result<u64> {
        if self.next > self.reserved {
            let reserve = self.next + BLOCK - 1;
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = self.path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{reserve}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()?;
            self.reserved = reserve;
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// Per-sender counters in one directory, each behind its own lock, so senders never wait
/// for each other while one sender's messages stay in sequence order.
pub struct FileSeqs {
    dir: PathBuf,
    senders: std::sync::Mutex<HashMap<Sender, std::sync::Arc<tokio::sync::Mutex<Option<SenderSeq>>>>>,
}

impl FileSeqs {
    /// Counters stored in `dir` (created when needed).
    pub fn new(dir: &Path) -> Self {
        FileSeqs { dir: dir.to_path_buf(), senders: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Locks `sender`'s counter (loading it on first use); hold the guard while sending.
    pub async fn lock(&self, sender: &Sender) -> std::io::Result<tokio::sync::OwnedMutexGuard<Option<SenderSeq>>> {
        let cell = self.senders.lock().unwrap().entry(sender.clone()).or_default().clone();
        let mut guard = cell.lock_owned().await;
        if guard.is_none() {
            *guard = Some(SenderSeq::load(&self.dir, sender)?);
        }
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sender::new("svc", "a/b");
        let mut seqs = SenderSeq::load(dir.path(), &s).unwrap();
        let first: Vec<u64> = (0..3).map(|_| seqs.take().unwrap()).collect();
        assert_eq!(first, [1, 2, 3]);
        let mut again = SenderSeq::load(dir.path(), &s).unwrap();
        let after = again.take().unwrap();
        assert!(after > 3, "{after}");
        assert_eq!(SenderSeq::load(dir.path(), &Sender::new("other", "1")).unwrap().take().unwrap(), 1);
    }
}
