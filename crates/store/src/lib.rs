//! patchbay's embedded store: one SQLite database (WAL) that holds both the
//! store's tables and the embedded message bus, so that a state change and the
//! messages announcing it commit in one transaction.
//!
//! This crate knows nothing of HTTP or AMQP, nor of any service. The bus half
//! implements `patchbay_bus::Bus` and `MessageLog`; callers that want a publish
//! to join their own write use [`EmbeddedBus::publish_in`] inside [`Db::write`]
//! (sealing then happens during the write; batches of 32 or more are signed on
//! several threads). A write that publishes as it goes (an import's batch) uses
//! a [`SealStream`] instead: messages are signed on a thread of their own while
//! the write goes on, and join it at the end.
//!
//! Writer (`db.rs`): every write is a closure queued to one thread,
//! which takes up to 4,096 waiting closures, runs each in its own savepoint
//! (none when it is alone) inside `BEGIN IMMEDIATE`, and commits them with one
//! fsync. "Written" means
//! "on disk". [`Db::submit`] queues at once, so jobs submitted in order run in
//! order. Reads run on `query_only` connections on tokio's blocking threads.
//! Checkpoints: automatic ones are off; a background thread runs
//! `wal_checkpoint(PASSIVE)` at most every 50 ms (`PATCHBAY_CHECKPOINT_MS`)
//! until the WAL is copied back, off the commit path, because a large
//! checkpoint's writeback made the next fsync wait. The WAL is truncated only
//! after 10 minutes without writes: truncating right after a burst stalled
//! every fsync for 70-100 ms on a `discard`-mounted ext4.
//!
//! Bus tables: `bus_messages` (the log; `pos` never reused, `id` unique, wire
//! bytes), `bus_deliveries` (one row per queue and message until ack or
//! dead-letter: `attempts`, `not_before`, `last_error`), `bus_dead_letters`,
//! `bus_queues`, `bus_bindings`, `bus_senders` (committed sequence mark per
//! sender), `bus_meta` (`bindings_generation`; keys ending in `_pos` are
//! positions pruning must not pass). A message id already in the log is
//! ignored, so `publish_sealed` is idempotent; a queue sees only what was
//! published after its bindings committed.
//!
//! Consuming (`bus.rs`): one process consumes a queue at a time
//! (an exclusive lock on `<data>/locks/<queue>.lock`; a second process polls
//! every 200 ms as a standby). Which rows are handed out lives in memory only
//! (a cursor, a ready buffer filled 256 rows at a time, delayed retries by due
//! time), so handing out writes nothing and a crash just means redelivery.
//! Attempts are persisted in detached writes off the hot path: a message that
//! keeps killing its consumer climbs towards `max_attempts`, rows only loaded
//! into a buffer are not aged by restarts. Consumers wake on this process's
//! commits and poll every 100 ms for other processes'.
//!
//! Sequence numbers: `Bus::publish` seals on the publisher's thread under one
//! lock that also enqueues the write; the writer commits a batch only if each
//! sender's lowest `seq` is above its mark in `bus_senders` (`claim_seqs`),
//! else `SeqConflict` and the publisher relearns the mark and re-seals (up to
//! 16 times). That lets two processes publish as one sender (`patchbay
//! publish` falling back to the store while `serve` runs).
//!
//! Migrations (`migrations.rs`, `PRAGMA user_version`): 1 the
//! bus, 2 mail and series (ingest), 3 test logs (logs), 4 results and verdicts
//! and 5 reports (results), 6 history, 7 the report mail as sent, 8 a
//! deletable full-text index, 9 merged series, 10 series' public ids (ingest),
//! 11 report claims, 12 results' retrying, flaky and pre-existing marks, re-test rounds,
//! Patchwork checks and notifications, 13 notification rules, 14 the history by category
//! and project, 15 each topic's count in the history.
//! The crates named own and query those tables.
//! `Db::open` retries the WAL switch and migrations while another process
//! holds them.

mod bus;
mod db;
mod migrations;
mod outbox;

use std::path::PathBuf;

pub use bus::{EmbeddedBus, SealStream, Unsealed};
pub use db::{Db, Tx};

/// The database file name inside a data directory.
pub const DB_FILE: &str = "patchbay.sqlite3";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed on this database.
    #[error("{path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// SQLite failed inside a write or read closure (the path is added by the caller's context).
    #[error(transparent)]
    Query(#[from] rusqlite::Error),
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The database is from a newer patchbay, or setup failed in a way SQLite does not describe.
    #[error("{0}")]
    Setup(String),
    /// Data in the database is not what this version wrote.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Another process committed a higher sequence number for these senders first; re-seal and retry.
    #[error("sequence numbers of {0:?} were taken by another writer")]
    SeqConflict(Vec<patchbay_model::Sender>),
    /// The store was shut down.
    #[error("store closed")]
    Closed,
    /// Another store backend behind the same port failed (PostgreSQL: `patchbay-store-pg`).
    #[error("{0}")]
    Backend(String),
}

impl StoreError {
    fn at(self, path: &std::path::Path) -> StoreError {
        match self {
            StoreError::Query(source) => StoreError::Sqlite { path: path.to_path_buf(), source },
            other => other,
        }
    }
}

impl From<StoreError> for patchbay_bus::BusError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => patchbay_bus::BusError::Closed,
            other => patchbay_bus::BusError::Unavailable(other.to_string()),
        }
    }
}
