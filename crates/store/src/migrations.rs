//! Schema migrations, numbered by `PRAGMA user_version`. Each step runs once,
//! in a transaction; a database newer than this binary is refused.

use rusqlite::Connection;

use crate::StoreError;

const STEPS: &[&str] = &[
    // 1: the embedded bus.
    "
    CREATE TABLE bus_messages (
        pos   INTEGER PRIMARY KEY AUTOINCREMENT,
        id    TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        wire  BLOB NOT NULL
    );
    CREATE TABLE bus_senders (
        service  TEXT NOT NULL,
        instance TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        PRIMARY KEY (service, instance)
    ) WITHOUT ROWID;
    CREATE TABLE bus_queues (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE bus_bindings (
        queue_id INTEGER NOT NULL REFERENCES bus_queues (id),
        pattern  TEXT NOT NULL,
        PRIMARY KEY (queue_id, pattern)
    ) WITHOUT ROWID;
    CREATE TABLE bus_deliveries (
        queue_id   INTEGER NOT NULL,
        pos        INTEGER NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        not_before INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (queue_id, pos)
    ) WITHOUT ROWID;
    CREATE TABLE bus_dead_letters (
        queue_id INTEGER NOT NULL,
        pos      INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        reason   TEXT NOT NULL,
        dead_at  INTEGER NOT NULL,
        PRIMARY KEY (queue_id, pos)
    ) WITHOUT ROWID;
    CREATE TABLE bus_meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO bus_meta (key, value) VALUES ('bindings_generation', 0);
    ",
];

/// Brings the database up to the latest schema.
pub fn run(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = STEPS.len() as i64;
    if version > latest {
        return Err(StoreError::Setup(format!(
            "the database has schema version {version}, newer than this patchbay knows ({latest}); upgrade patchbay"
        )));
    }
    for (i, step) in STEPS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}
