//! Full test logs. Runners publish them in bounded `ci.test.log` chunks (a
//! result message carries only the tail); the [`Recorder`] service (run by
//! `serve`) stores each chunk deflate-compressed (flate2, pure Rust) in the
//! embedded store's `test_logs` (migration 3), keyed by `(job, idx)`, so a
//! redelivered chunk changes nothing. [`LogStore::read`] gives a job's whole
//! log back, and whether every chunk up to the last arrived, marking a missing
//! middle chunk in the text; `web` serves it at `GET /api/v1/logs/{job}`
//! through its `TestLogs` port.
//!
//! Knows the embedded store and the runtime; no HTTP, no runner.

use std::io::{Read as _, Write as _};

use async_trait::async_trait;
use patchbay_model::{Envelope, TestLog};
use patchbay_runtime::{BodyHandler, HandlerError};
use patchbay_store::{Db, StoreError};
use rusqlite::params;

/// Test logs in the store.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

/// A job's log as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// The text.
    pub text: String,
    /// Whether the last chunk arrived (and no chunk before it is missing).
    pub complete: bool,
}

impl LogStore {
    /// Logs in `db`.
    pub fn new(db: Db) -> Self {
        LogStore { db }
    }

    /// Stores one chunk of one run of a job; storing the same chunk again changes nothing.
    pub async fn append(&self, job: &str, run: &str, index: u32, last: bool, text: &str) -> Result<(), StoreError> {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(text.as_bytes()).map_err(|e| StoreError::Setup(format!("compressing a log chunk: {e}")))?;
        let data = z.finish().map_err(|e| StoreError::Setup(format!("compressing a log chunk: {e}")))?;
        let (job, run, bytes) = (job.to_string(), run.to_string(), text.len() as i64);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        self.db
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO test_logs (job, run, idx, last, bytes, at, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![job, run, index, last, bytes, at, data])?;
                Ok(())
            })
            .await
    }

    /// The whole log of the latest run of `job`, or `None` when nothing of it is stored.
    pub async fn read(&self, job: &str) -> Result<Option<Log>, StoreError> {
        let job = job.to_string();
        self.db
            .read(move |conn| {
                use rusqlite::OptionalExtension as _;
                let run: Option<String> =
                    conn.query_row("SELECT run FROM test_logs WHERE job = ?1 ORDER BY at DESC LIMIT 1", [&job], |r| r.get(0)).optional()?;
                let Some(run) = run else { return Ok(None) };
                let mut stmt = conn.prepare("SELECT idx, last, data FROM test_logs WHERE job = ?1 AND run = ?2 ORDER BY idx")?;
                let rows: Vec<(u32, bool, Vec<u8>)> =
                    stmt.query_map([&job, &run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
                if rows.is_empty() {
                    return Ok(None);
                }
                let mut text = String::new();
                let mut complete = false;
                for (n, (idx, last, data)) in rows.iter().enumerate() {
                    if *idx as usize != n {
                        text.push_str("\n[... a part of this log is missing ...]\n");
                    }
                    let mut chunk = String::new();
                    flate2::read::DeflateDecoder::new(&data[..])
                        .read_to_string(&mut chunk)
                        .map_err(|e| StoreError::Corrupt(format!("log chunk {idx} of {job}: {e}")))?;
                    text.push_str(&chunk);
                    complete = *last && rows.iter().enumerate().all(|(i, r)| r.0 as usize == i);
                }
                Ok(Some(Log { text, complete }))
            })
            .await
    }
}

/// The service that stores `ci.test.log` chunks as they are published.
pub struct Recorder {
    store: LogStore,
}

impl Recorder {
    /// Records into `store`.
    pub fn new(store: LogStore) -> Self {
        Recorder { store }
    }
}

#[async_trait]
impl BodyHandler<TestLog> for Recorder {
    async fn handle_body(&self, _envelope: &Envelope, chunk: TestLog, _attempt: u32) -> Result<(), HandlerError> {
        self.store
            .append(&chunk.job, &chunk.run, chunk.index, chunk.last, &chunk.text)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_round_trip_compressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite3")).unwrap();
        let logs = LogStore::new(db.clone());
        assert_eq!(logs.read("j").await.unwrap(), None);
        let big = "compiling foo.c\n".repeat(4000);
        logs.append("j", "r1", 0, false, &big).await.unwrap();
        assert!(!logs.read("j").await.unwrap().unwrap().complete);
        logs.append("j", "r1", 1, true, "error: it broke\n").await.unwrap();
        logs.append("j", "r1", 1, true, "error: it broke\n").await.unwrap();
        let log = logs.read("j").await.unwrap().unwrap();
        assert!(log.complete);
        assert_eq!(log.text, format!("{big}error: it broke\n"));
        let stored: i64 = db.read(|c| Ok(c.query_row("SELECT sum(length(data)) FROM test_logs", [], |r| r.get(0))?)).await.unwrap();
        assert!((stored as usize) < big.len() / 10, "kept compressed: {stored} bytes");
        // A missing middle chunk is said, not hidden.
        logs.append("k", "r1", 0, false, "a").await.unwrap();
        logs.append("k", "r1", 2, true, "c").await.unwrap();
        let k = logs.read("k").await.unwrap().unwrap();
        assert!(!k.complete && k.text.contains("missing"));
        // A re-run of a job replaces its log; chunks of two runs never mix.
        std::thread::sleep(std::time::Duration::from_millis(2));
        logs.append("j", "r2", 0, true, "second run\n").await.unwrap();
        assert_eq!(logs.read("j").await.unwrap().unwrap().text, "second run\n");
    }
}
