//! The schema, versioned: each migration runs once, in order, in one transaction, under an
//! advisory lock, so processes starting together neither race nor half-apply one.

use crate::PgError;

/// The migrations, in order; a migration, once released, never changes (add a new one).
const MIGRATIONS: &[&str] = &[
    // 1: the transactional outbox and per-sender sequence numbers.
    "CREATE TABLE outbox (
         pos BIGSERIAL PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         sender TEXT NOT NULL,
         topic TEXT NOT NULL,
         wire BYTEA NOT NULL,
         created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
         relayed_at TIMESTAMPTZ
     );
     CREATE INDEX outbox_waiting ON outbox (pos) WHERE relayed_at IS NULL;
     CREATE TABLE sender_seqs (sender TEXT PRIMARY KEY, next BIGINT NOT NULL);",
    // 2: results and verdicts (owned by patchbay-results; SQLite's migration 4 and its later columns).
    // Times are Unix seconds as in SQLite, so both stores answer the ports alike.
    "CREATE TABLE results (
         id BIGSERIAL PRIMARY KEY,
         message_id TEXT NOT NULL UNIQUE,
         job TEXT NOT NULL,
         series_id BIGINT NOT NULL,
         version BIGINT NOT NULL,
         project TEXT NOT NULL,
         test TEXT NOT NULL,
         arch TEXT NOT NULL,
         outcome TEXT NOT NULL,
         reason TEXT,
         duration_ms BIGINT NOT NULL,
         base TEXT,
         excerpt TEXT NOT NULL,
         recorded_at BIGINT NOT NULL,
         duplicate BOOLEAN NOT NULL,
         waived BOOLEAN NOT NULL DEFAULT false,
         waiver TEXT
     );
     CREATE INDEX results_series ON results (series_id, version, test, arch, id);
     CREATE INDEX results_test ON results (test, outcome, id);
     CREATE TABLE verdicts (
         series_id BIGINT NOT NULL,
         version BIGINT NOT NULL,
         project TEXT NOT NULL,
         verdict TEXT,
         detail TEXT,
         series TEXT NOT NULL,
         since BIGINT NOT NULL,
         decided_at BIGINT,
         PRIMARY KEY (series_id, version)
     );
     CREATE INDEX verdicts_pending ON verdicts (since) WHERE decided_at IS NULL;",
    // 3: full test logs (owned by patchbay-logs; SQLite's migration 3): deflated chunks.
    "CREATE TABLE test_logs (
         job TEXT NOT NULL,
         run TEXT NOT NULL,
         idx BIGINT NOT NULL,
         last BOOLEAN NOT NULL,
         bytes BIGINT NOT NULL,
         at BIGINT NOT NULL,
         data BYTEA NOT NULL,
         PRIMARY KEY (job, run, idx)
     );
     CREATE INDEX test_logs_latest ON test_logs (job, at);",
    // 4: the message history (owned by patchbay-history): each message's wire form beside the
    // fields its filters read; `pos` is store order, `ts` monotone in it.
    "CREATE TABLE history (
         pos BIGSERIAL PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         wire BYTEA NOT NULL,
         ts BIGINT NOT NULL,
         topic TEXT NOT NULL,
         category TEXT NOT NULL,
         service TEXT NOT NULL,
         instance TEXT NOT NULL,
         seq BIGINT NOT NULL,
         series BIGINT,
         project TEXT,
         job TEXT,
         body TSVECTOR NOT NULL
     );
     CREATE INDEX history_ts ON history (ts, pos);
     CREATE INDEX history_topic ON history (topic, pos);
     CREATE INDEX history_category ON history (category, pos);
     CREATE INDEX history_series ON history (series, pos);
     CREATE INDEX history_project ON history (project, pos);
     CREATE INDEX history_sender ON history (service, instance, seq);
     CREATE INDEX history_job ON history (job, pos);
     CREATE INDEX history_body ON history USING GIN (body);
     CREATE TABLE history_topics (topic TEXT PRIMARY KEY);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Any number, the same in every process: the lock the migrations are applied under.
const MIGRATION_LOCK: i64 = 0x7061_7463_6862_6179; // "patchbay"

/// Applies what is missing; refuses a schema newer than this build.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let found: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
    if found > SCHEMA_VERSION {
        return Err(PgError::TooNew { found, known: SCHEMA_VERSION });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).await?;
        tracing::info!(version, "PostgreSQL store migrated.");
    }
    tx.commit().await?;
    Ok(())
}
