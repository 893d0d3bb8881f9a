//! Full test logs. Runners publish them in bounded `ci.test.log` chunks (a
//! result message carries only the tail); the [`Recorder`] service (run by
//! `serve`) stores each chunk deflate-compressed (flate2, pure Rust) in the
//! embedded store's `test_logs` (migration 3), keyed by `(job, idx)`, so a
//! redelivered chunk changes nothing. [`LogStore::read`] gives a job's whole
//! log back, and whether every chunk up to the last arrived, marking a missing
//! middle chunk in the text; `web` serves it at `GET /api/v1/logs/{job}`
//! through its `TestLogs` port. With `store.url`, the same table lives in PostgreSQL
//! ([`LogStore::on_postgres`]); the chunk rules (compression, missing parts) are the same code.
//!
//! Knows the stores and the runtime; no HTTP, no runner.

use std::io::{Read as _, Write as _};

use async_trait::async_trait;
use patchbay_model::{Envelope, TestLog};
use patchbay_runtime::{BodyHandler, HandlerError};
use patchbay_store::{Db, StoreError};

use rusqlite::params;

/// Test logs in the store.
#[derive(Clone)]
pub struct LogStore {
    tables: Tables,
}

/// Where `test_logs` lives.
#[derive(Clone)]
enum Tables {
    Sqlite(Db),
    Pg(patchbay_store_pg::PgStore),
}

/// The port's error for a PostgreSQL failure.
fn pg(e: impl Into<patchbay_store_pg::PgError>) -> StoreError {
    StoreError::Backend(e.into().to_string())
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
        LogStore { tables: Tables::Sqlite(db) }
    }

    /// Logs in PostgreSQL (`store.url`), shared by every process that records or serves them.
    pub fn on_postgres(store: patchbay_store_pg::PgStore) -> Self {
        LogStore { tables: Tables::Pg(store) }
    }

    /// Stores one chunk of one run of a job; storing the same chunk again changes nothing.
    pub async fn append(&self, job: &str, run: &str, index: u32, last: bool, text: &str) -> Result<(), StoreError> {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(text.as_bytes()).map_err(|e| StoreError::Setup(format!("compressing a log chunk: {e}")))?;
        let data = z.finish().map_err(|e| StoreError::Setup(format!("compressing a log chunk: {e}")))?;
        let (job, run, bytes) = (job.to_string(), run.to_string(), text.len() as i64);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        match &self.tables {
            Tables::Sqlite(db) => {
                db.write(move |tx| {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO test_logs (job, run, idx, last, bytes, at, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![job, run, index, last, bytes, at, data])?;
                    Ok(())
                })
                .await
            }
            Tables::Pg(store) => {
                store
                    .client()
                    .await
                    .map_err(pg)?
                    .execute(
                        "INSERT INTO test_logs (job, run, idx, last, bytes, at, data) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                        &[&patchbay_store_pg::text(&job).as_ref(), &patchbay_store_pg::text(&run).as_ref(), &i64::from(index), &last, &bytes, &at, &data],
                    )
                    .await
                    .map_err(pg)?;
                Ok(())
            }
        }
    }

    /// The whole log of the latest run of `job`, or `None` when nothing of it is stored.
    pub async fn read(&self, job: &str) -> Result<Option<Log>, StoreError> {
        let job = job.to_string();
        let rows = match &self.tables {
            Tables::Sqlite(db) => {
                let job = job.clone();
                db.read(move |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT idx, last, data FROM test_logs WHERE job = ?1
                         AND run = (SELECT run FROM test_logs WHERE job = ?1 ORDER BY at DESC LIMIT 1) ORDER BY idx",
                    )?;
                    Ok(stmt.query_map([&job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<Vec<_>, _>>()?)
                })
                .await?
            }
            Tables::Pg(store) => store
                .client()
                .await
                .map_err(pg)?
                .query(
                    "SELECT idx, last, data FROM test_logs WHERE job = $1
                     AND run = (SELECT run FROM test_logs WHERE job = $1 ORDER BY at DESC LIMIT 1) ORDER BY idx",
                    &[&job],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u32, r.get(1), r.get(2)))
                .collect(),
        };
        assemble(&job, &rows)
    }
}

/// A run's chunks, in index order, as one log: a missing chunk is said in the text, and the
/// log is complete when the last chunk came and none before it is missing.
fn assemble(job: &str, rows: &[(u32, bool, Vec<u8>)]) -> Result<Option<Log>, StoreError> {
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
