//! Moving from the embedded shape to PostgreSQL (`patchbay move-store`): every table of the
//! data directory's SQLite store is copied, row for row, into the empty, migrated database of
//! `store.url`, in one transaction, so the tables move whole or not at all. The tables
//! have the same columns on both stores (each owning crate keeps them so); the copy is generic
//! over the columns PostgreSQL declares, converting SQLite's integers to PostgreSQL's booleans
//! where it declares one. Ids are kept (series' public ids, mails', results'), and the
//! identity sequences continue after them. The bus log becomes the PostgreSQL history (each
//! message once, in log order), and each sender's sequence continues after the last number
//! it used, so consumers' gap detection sees no step back. Nothing is sent again: the move
//! writes no outbox rows.

use std::path::Path;

use patchbay_store_pg::PgStore;
use rusqlite::types::ValueRef;
use tokio_postgres::types::ToSql;

/// Why a move failed; nothing was written to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The SQLite store could not be read.
    #[error("reading {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// SQLite's words.
        source: rusqlite::Error,
    },
    /// PostgreSQL refused.
    #[error("{0}")]
    Postgres(String),
    /// The PostgreSQL database already holds data: a move goes into an empty one only.
    #[error("the PostgreSQL database already holds {0}; move into an empty database")]
    NotEmpty(String),
    /// Messages wait in the embedded queues: work not done yet would be lost.
    #[error("messages wait in the embedded store's queues ({0}): start `serve` until they are handled, or move without them")]
    Pending(String),
    /// A table or value does not fit the other store's shape.
    #[error("{0}")]
    Shape(String),
}

fn pg(e: impl Into<patchbay_store_pg::PgError>) -> MoveError {
    MoveError::Postgres(e.into().to_string())
}

/// The tables moved, in an order their references allow (`series`' links to other series are
/// set after every series exists).
pub const TABLES: &[&str] = &[
    "mails",
    "mail_lists",
    "series",
    "series_mails",
    "series_refs",
    "import_marks",
    "series_merged",
    "results",
    "verdicts",
    "reports",
    "test_logs",
    "patchwork_checks",
    "notify_rules",
    "notify_queue",
    "notify_digests",
];

/// What a move copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Rows per table, in [`TABLES`] order.
    pub rows: Vec<(String, u64)>,
    /// Messages of the bus log given to the history (kept once each by id).
    pub messages: u64,
}

/// Copies the SQLite store `db` into `store` (migrated, empty), calling `progress` with each
/// table's name and rows as it is done (the history first). Messages still waiting in the
/// embedded queues (a series not yet dispatched, a verdict not yet reported) refuse the move
/// unless `drop_pending`: nothing would deliver them again. Stop `serve` first: the copy reads
/// one snapshot.
pub async fn move_store(db: &Path, store: &PgStore, drop_pending: bool, mut progress: impl FnMut(&str, u64)) -> Result<Moved, MoveError> {
    let sqlite_err = |source| MoveError::Sqlite { path: db.display().to_string(), source };
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite_err)?;
    // One snapshot for everything read below.
    conn.execute_batch("BEGIN").map_err(sqlite_err)?;
    if !drop_pending {
        let mut stmt = conn
            .prepare("SELECT q.name, count(*) FROM bus_deliveries d JOIN bus_queues q ON q.id = d.queue_id GROUP BY q.name ORDER BY q.name")
            .map_err(sqlite_err)?;
        let waiting: Vec<String> = stmt
            .query_map([], |r| Ok(format!("{} in {}", r.get::<_, i64>(1)?, r.get::<_, String>(0)?)))
            .map_err(sqlite_err)?
            .collect::<Result<_, _>>()
            .map_err(sqlite_err)?;
        if !waiting.is_empty() {
            return Err(MoveError::Pending(waiting.join(", ")));
        }
    }
    {
        // Nothing is written before the whole database is known to be empty.
        let client = store.client().await.map_err(pg)?;
        for table in TABLES.iter().chain(&["history", "sender_seqs", "outbox"]) {
            let n: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.map_err(pg)?.get(0);
            if n > 0 {
                return Err(MoveError::NotEmpty(format!("{n} rows in {table}")));
            }
        }
    }
    let mut moved = Moved::default();
    // The bus log first, as history (each message once by id).
    let mut stmt = conn.prepare("SELECT pos, wire FROM bus_messages WHERE pos > ?1 ORDER BY pos LIMIT 500").map_err(sqlite_err)?;
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, Vec<u8>)> =
            stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sqlite_err)?.collect::<Result<_, _>>().map_err(sqlite_err)?;
        let Some((last, _)) = rows.last() else { break };
        after = *last;
        let envelopes: Vec<patchbay_model::Envelope> =
            rows.iter().filter_map(|(_, w)| patchbay_model::Envelope::from_wire(w).ok()).collect();
        patchbay_history::record_in_postgres(store, &envelopes).await.map_err(|e| MoveError::Postgres(e.to_string()))?;
        moved.messages += envelopes.len() as u64;
    }
    progress("history", moved.messages);
    let mut client = store.client().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    for table in TABLES {
        let columns = tx
            .query(
                "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                &[table],
            )
            .await
            .map_err(pg)?;
        let columns: Vec<(String, String)> = columns.iter().map(|r| (r.get(0), r.get(1))).collect();
        // A series' links to other series wait until every series exists.
        let later = |c: &str| *table == "series" && matches!(c, "supersedes" | "superseded_by");
        let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert =
            tx.prepare(&format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), placeholders.join(", "))).await.map_err(pg)?;
        let mut stmt = conn.prepare(&format!("SELECT {} FROM {table}", names.join(", "))).map_err(|e| {
            MoveError::Shape(format!("table {table}: PostgreSQL's columns ({}) are not all in SQLite: {e}", names.join(", ")))
        })?;
        let mut rows = stmt.query([]).map_err(sqlite_err)?;
        let mut n = 0u64;
        let mut links: Vec<(i64, Option<i64>, Option<i64>)> = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_err)? {
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(columns.len());
            let mut link = (0, None, None);
            for (i, (name, ty)) in columns.iter().enumerate() {
                let v = row.get_ref(i).map_err(sqlite_err)?;
                let why = |what: &str| MoveError::Shape(format!("{table}.{name}: {what} where PostgreSQL declares {ty}"));
                let int = match v {
                    ValueRef::Integer(i) => Some(i),
                    _ => None,
                };
                if later(name) {
                    if name == "supersedes" {
                        link.1 = int
                    } else {
                        link.2 = int
                    }
                    values.push(Box::new(None::<i64>));
                    continue;
                }
                if *table == "series" && name == "id" {
                    link.0 = int.unwrap_or_default();
                }
                values.push(match (ty.as_str(), v) {
                    (_, ValueRef::Null) => match ty.as_str() {
                        "bigint" => Box::new(None::<i64>),
                        "integer" => Box::new(None::<i32>),
                        "boolean" => Box::new(None::<bool>),
                        "bytea" => Box::new(None::<Vec<u8>>),
                        _ => Box::new(None::<String>),
                    },
                    ("bigint", ValueRef::Integer(i)) => Box::new(i),
                    ("integer", ValueRef::Integer(i)) => Box::new(i32::try_from(i).map_err(|_| why("a number too large"))?),
                    ("boolean", ValueRef::Integer(i)) => Box::new(i != 0),
                    ("text", ValueRef::Text(t)) => Box::new(patchbay_store_pg::text(&String::from_utf8_lossy(t)).into_owned()),
                    ("bytea", ValueRef::Blob(b)) => Box::new(b.to_vec()),
                    ("bytea", ValueRef::Text(t)) => Box::new(t.to_vec()),
                    (_, other) => return Err(why(&format!("{:?}", other.data_type()))),
                });
            }
            if *table == "series" && (link.1.is_some() || link.2.is_some()) {
                links.push(link);
            }
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
            tx.execute(&insert, &params).await.map_err(|e| MoveError::Postgres(format!("{table}: {}", pg(e))))?;
            n += 1;
        }
        for (id, supersedes, superseded_by) in links {
            tx.execute("UPDATE series SET supersedes = $2, superseded_by = $3 WHERE id = $1", &[&id, &supersedes, &superseded_by])
                .await
                .map_err(pg)?;
        }
        progress(table, n);
        moved.rows.push((table.to_string(), n));
    }
    // New rows get ids after the moved ones.
    for (table, column) in [("mails", "id"), ("series", "id"), ("results", "id"), ("notify_queue", "pos")] {
        tx.execute(
            &format!("SELECT setval(pg_get_serial_sequence('{table}', '{column}'), coalesce(max({column}), 0) + 1, false) FROM {table}"),
            &[],
        )
        .await
        .map_err(pg)?;
    }
    // Each sender goes on after the last sequence number it used.
    let mut stmt = conn.prepare("SELECT service || ':' || instance, seq FROM bus_senders").map_err(sqlite_err)?;
    let senders: Vec<(String, i64)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sqlite_err)?.collect::<Result<_, _>>().map_err(sqlite_err)?;
    for (sender, seq) in &senders {
        tx.execute("INSERT INTO sender_seqs (sender, next) VALUES ($1, $2)", &[sender, &(seq + 1)]).await.map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(moved)
}
