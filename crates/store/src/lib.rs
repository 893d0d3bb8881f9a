//! patchbay's embedded store: one SQLite database (WAL) that holds both the
//! store's tables and the embedded message bus, so that a state change and the
//! messages announcing it commit in one transaction.
//!
//! This crate knows nothing of HTTP or AMQP. The bus half implements
//! `patchbay_bus::Bus`; callers that want a publish to join their own write
//! use [`EmbeddedBus::publish_in`] inside [`Db::write`].

mod bus;
mod db;
mod migrations;

use std::path::PathBuf;

pub use bus::EmbeddedBus;
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
