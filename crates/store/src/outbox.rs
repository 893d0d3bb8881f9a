//! The log read as an outbox: a named mark in `bus_meta` (a key ending in `_pos`, so pruning
//! never passes it) and the wire forms after it, for whoever sends the log on elsewhere (the
//! relay to RabbitMQ). Kept here, beside the tables, so no caller writes SQL over them.

use rusqlite::params;

use crate::{Db, StoreError};

impl Db {
    /// Where the reader named `key` stands, starting at the end of the log the first time:
    /// turning a reader on does not send the old log.
    pub async fn log_mark(&self, key: &'static str) -> Result<i64, StoreError> {
        debug_assert!(key.ends_with("_pos"), "history pruning honours only marks named *_pos: {key}");
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO bus_meta (key, value) SELECT ?1, coalesce(max(pos), 0) FROM bus_messages WHERE true
                 ON CONFLICT (key) DO NOTHING",
                [key],
            )?;
            Ok(tx.query_row("SELECT value FROM bus_meta WHERE key = ?1", [key], |r| r.get(0))?)
        })
        .await
    }

    /// Moves the mark named `key` to `pos`.
    pub async fn set_log_mark(&self, key: &'static str, pos: i64) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute("UPDATE bus_meta SET value = ?2 WHERE key = ?1", params![key, pos])?;
            Ok(())
        })
        .await
    }

    /// At most `limit` messages after position `pos`, in log order, as (position, wire form).
    pub async fn log_after(&self, pos: i64, limit: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT pos, wire FROM bus_messages WHERE pos > ?1 ORDER BY pos LIMIT ?2")?;
            let rows = stmt.query_map([pos, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
