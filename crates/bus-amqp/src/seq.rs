//! Sequence numbers for a broker that cannot keep counters: reserved in blocks
//! in a small file per sender, so they rise strictly across restarts. A crash
//! skips the rest of the reserved block; consumers see a gap that history
//! cannot fill, and move on.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use patchbay_model::Sender;

const BLOCK: u64 = 1024;

/// Per-sender counters backed by files in one directory.
pub struct FileSeqs {
    dir: PathBuf,
    senders: HashMap<Sender, (u64, u64)>, // (next, reserved up to and including)
}

impl FileSeqs {
    /// Counters stored in `dir` (created when needed).
    pub fn new(dir: &Path) -> Self {
        FileSeqs { dir: dir.to_path_buf(), senders: HashMap::new() }
    }

    fn path(&self, sender: &Sender) -> PathBuf {
        let name: String = format!("{}/{}", sender.service, sender.instance).bytes().map(|b| format!("{b:02x}")).collect();
        self.dir.join(name)
    }

    /// The next sequence number for `sender`.
    pub fn next(&mut self, sender: &Sender) -> std::io::Result<u64> {
        if !self.senders.contains_key(sender) {
            let reserved = match std::fs::read_to_string(self.path(sender)) {
                Ok(text) => {
                    text.trim().parse::<u64>().map_err(|e| std::io::Error::other(format!("{}: {e}", self.path(sender).display())))?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            };
            self.senders.insert(sender.clone(), (reserved + 1, reserved));
        }
        let (next, reserved) = self.senders[sender];
        if next > reserved {
            let reserve = next + BLOCK - 1;
            std::fs::create_dir_all(&self.dir)?;
            let path = self.path(sender);
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{reserve}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()?;
            self.senders.insert(sender.clone(), (next, reserve));
        }
        let entry = self.senders.get_mut(sender).expect("inserted above");
        entry.0 += 1;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sender::new("svc", "a/b");
        let mut seqs = FileSeqs::new(dir.path());
        let first: Vec<u64> = (0..3).map(|_| seqs.next(&s).unwrap()).collect();
        assert_eq!(first, [1, 2, 3]);
        let mut again = FileSeqs::new(dir.path());
        let after = again.next(&s).unwrap();
        assert!(after > 3, "{after}");
        assert_eq!(again.next(&Sender::new("other", "1")).unwrap(), 1);
    }
}
