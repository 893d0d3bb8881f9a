//! The PostgreSQL store of the scale-out shape (`store.url = "postgres://…"`), the second
//! implementation beside the embedded SQLite one (`patchbay-store`). Several processes on several
//! hosts share it; PostgreSQL, not patchbay, keeps them consistent.
//!
//! - [`PgStore::connect`]: a pool (deadpool-postgres over tokio-postgres) and the migrations
//!   (`migrate.rs`), applied once under an advisory lock however many processes start at once;
//!   a schema newer than this build is refused.
//! - [`PgStore::transaction`]: a state change and the messages announcing it commit together.
//!   [`PgTx::publish`] seals them (sequence numbers per sender from `sender_seqs`, whose row lock
//!   makes them rise in commit order) and writes them to `outbox` in the same transaction.
//! - [`Relay`] (`outbox.rs`): sends committed outbox rows to the bus (RabbitMQ, with publisher
//!   confirms) and marks them relayed in one transaction of its own. Rows are taken with
//!   `FOR UPDATE SKIP LOCKED`, so any number of relays share the work; a relay that dies
//!   mid-step leaves its rows to the next one. Each row is sent at least once, and consumers
//!   drop repeats by message id, as they do on every bus.
//!
//! Why tokio-postgres and not sqlx (measured): `docs/postgres-client.md`. This crate knows no
//! services, no HTTP and no config file.

mod migrate;
mod outbox;
pub mod tls;

use std::sync::Arc;

use patchbay_bus::{BusError, Sealer};

pub use migrate::SCHEMA_VERSION;
pub use outbox::{KEEP_RELAYED, PgTx, Relay};

/// What went wrong in the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL or pool settings are wrong: fix the config, retrying will not help.
    #[error("store.url: {0}")]
    Config(String),
    /// PostgreSQL answered with an error or the connection failed.
    #[error("PostgreSQL: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool (PostgreSQL unreachable, or the pool closed).
    #[error("PostgreSQL unreachable: {0}")]
    Unreachable(String),
    /// The database was migrated by a newer patchbay.
    #[error("the store's schema is version {found}, newer than this patchbay's {known}: upgrade patchbay")]
    TooNew {
        /// The version found.
        found: i32,
        /// The newest this build knows.
        known: i32,
    },
    /// The relay could not hand messages to the bus.
    #[error("relaying to the bus: {0}")]
    Bus(#[from] BusError),
    /// A stored message does not read back as an envelope.
    #[error("outbox row {pos} does not read back: {why}")]
    Corrupt {
        /// Its position.
        pos: i64,
        /// Why.
        why: String,
    },
}

/// The server's own words for an error (tokio-postgres' `Display` says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                out.push_str(&format!(": {detail}"));
            }
            out
        }
        None => e.to_string(),
    }
}

impl PgError {
    /// Whether trying again later can succeed (a lost connection, a serialization failure, a
    /// broker outage), as against a wrong config or a newer schema.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Config(_) | PgError::TooNew { .. } | PgError::Corrupt { .. } => false,
            PgError::Db(e) => e.code().is_none_or(|code| !permanent(code.code())),
            PgError::Unreachable(_) | PgError::Bus(_) => true,
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Db(e),
            other => PgError::Unreachable(other.to_string()),
        }
    }
}

/// The shared store: cheap to clone, one pool per process.
#[derive(Clone)]
pub struct PgStore {
    pool: deadpool_postgres::Pool,
    sealer: Arc<Sealer>,
    /// Pulled after each commit, so this process's relay sends at once instead of at its next poll.
    committed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("pool", &self.pool.status()).finish()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`) with at most `max_connections`,
    /// migrates the schema, and seals what transactions publish with `sealer`.
    pub async fn connect(url: &str, max_connections: usize, sealer: Sealer) -> Result<PgStore, PgError> {
        Self::connect_with(url, max_connections, None, sealer).await
    }

    /// [`PgStore::connect`], over TLS when `url` says `sslmode=require`, trusting the public
    /// roots and the PEM certificates `ca` (`store.ca_file`).
    pub async fn connect_with(url: &str, max_connections: usize, ca: Option<&[u8]>, sealer: Sealer) -> Result<PgStore, PgError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| PgError::Config(format!("{}: {e}", redact(url))))?;
        let recycling = || deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast };
        let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = tls::Rustls::new(ca).map_err(PgError::Config)?;
            deadpool_postgres::Manager::from_config(config, tls, recycling())
        } else {
            deadpool_postgres::Manager::from_config(config, tokio_postgres::NoTls, recycling())
        };
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(max_connections.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .wait_timeout(Some(std::time::Duration::from_secs(30)))
            .build()
            .map_err(|e| PgError::Config(e.to_string()))?;
        let store = PgStore { pool, sealer: Arc::new(sealer), committed: Arc::new(tokio::sync::Notify::new()) };
        let mut client = store.pool.get().await?;
        migrate::migrate(&mut client).await?;
        Ok(store)
    }

    /// Runs `f` in one transaction and commits it; an error from `f` (or a failed commit) rolls
    /// everything back, the messages `f` published included.
    pub async fn transaction<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut PgTx<'_>) -> Result<T, E>,
        E: From<PgError>,
    {
        let mut client = self.pool.get().await.map_err(PgError::from)?;
        let mut ptx = self.begin(&mut client).await?;
        let out = f(&mut ptx).await?;
        ptx.commit().await?;
        Ok(out)
    }

    /// Opens a transaction on `client` (from [`PgStore::client`]), for a writer whose steps are
    /// plain `async fn`s; [`PgTx::commit`] commits it and wakes this process's relay.
    pub async fn begin<'a>(&'a self, client: &'a mut deadpool_postgres::Object) -> Result<PgTx<'a>, PgError> {
        let tx = client.transaction().await?;
        Ok(PgTx::new(tx, &self.sealer, &self.committed))
    }

    /// A connection for reads outside a transaction.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.pool.get().await?)
    }

    /// Leadership among the processes of this database for `key`: `Some` while this process
    /// holds the session advisory lock `key` (on a connection of its own, kept by the
    /// [`Leader`]); `None` when another process holds it. A process that dies or loses its
    /// connection frees it for the next to ask.
    pub async fn lead(&self, key: i64) -> Result<Option<Leader>, PgError> {
        let client = self.pool.get().await?;
        let held: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get(0);
        // Not leading: the connection goes back to the pool without the lock.
        Ok(held.then(|| Leader { client: deadpool_postgres::Object::take(client) }))
    }

    /// One round trip, for a readiness check.
    pub async fn ping(&self) -> Result<(), PgError> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// The holder of a [`PgStore::lead`] lock: its own connection, out of the pool (the lock is
/// the session's; dropping the leader closes the connection and frees it).
pub struct Leader {
    client: deadpool_postgres::ClientWrapper,
}

impl Leader {
    /// Whether the lock may be gone: the connection that held it has closed, or does not
    /// answer within 2 s (a network cut or a failover closes nothing; the server then frees
    /// the lock when it notices, and another process may take it).
    pub async fn is_lost(&self) -> bool {
        if self.client.is_closed() {
            return true;
        }
        !matches!(tokio::time::timeout(std::time::Duration::from_secs(2), self.client.simple_query("SELECT 1")).await, Ok(Ok(_)))
    }
}

/// `s` as PostgreSQL `TEXT` can hold it: a NUL (which SQLite keeps, and a test's output or a
/// mail's header may carry) becomes U+FFFD, where the server would refuse the whole statement.
pub fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') { s.replace('\0', "\u{fffd}").into() } else { s.into() }
}

/// `sql` with SQLite's `?N` placeholders as PostgreSQL's `$N` (string literals left alone).
pub fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                debug_assert!(chars.peek().is_some_and(char::is_ascii_digit), "unnumbered placeholder in {sql}");
                out.push('$');
            }
            c => out.push(c),
        }
    }
    out
}

/// For the tests of the crates that implement ports on this store: a database of its own.
pub mod testing {
    use crate::PgError;

    /// Creates an empty database on the cluster `admin_url` names and returns its URL, so each
    /// test works alone on one shared cluster.
    pub async fn scratch_database(admin_url: &str) -> Result<String, PgError> {
        let config: tokio_postgres::Config =
            admin_url.parse().map_err(|e| PgError::Config(format!("{}: {e}", crate::redact(admin_url))))?;
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let name = format!("pbtest_{}", patchbay_model::Uuid::now_v7().simple());
        client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
        let base = admin_url.rsplit_once('/').map(|(base, _)| base).ok_or_else(|| PgError::Config("the URL names no database".into()))?;
        Ok(format!("{base}/{name}"))
    }
}

/// Whether PostgreSQL's SQLSTATE says that only an operator can mend it: a refused login
/// (class 28), a database that does not exist (3D000), a missing privilege (42501).
fn permanent(sqlstate: &str) -> bool {
    sqlstate.starts_with("28") || sqlstate == "3D000" || sqlstate == "42501"
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}:…{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_logins_and_missing_databases_are_not_retried() {
        for code in ["28P01", "28000", "3D000", "42501"] {
            assert!(super::permanent(code), "{code}");
        }
        // Serialization failures, deadlocks, shutdowns and lost connections are retried.
        for code in ["40001", "40P01", "57P01", "08006"] {
            assert!(!super::permanent(code), "{code}");
        }
    }

    #[test]
    fn text_loses_its_nuls_and_nothing_else() {
        assert_eq!(super::text("a\0b"), "a\u{fffd}b");
        assert!(matches!(super::text("plain"), std::borrow::Cow::Borrowed("plain")));
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(super::redact("postgres://pb:secret@db:5432/pb"), "postgres://pb:…@db:5432/pb");
        assert_eq!(super::redact("postgres://db/pb"), "postgres://db/pb");
    }

    #[test]
    fn placeholders_become_dollars_outside_literals() {
        use super::dollars;
        assert_eq!(dollars("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?12)"), "SELECT a FROM t WHERE b = $1 AND c IN ($2, $12)");
        assert_eq!(dollars("SELECT '?1' || ?1"), "SELECT '?1' || $1");
        assert_eq!(dollars("WHERE x LIKE '%\"supersedes\"%' AND y = ?3"), "WHERE x LIKE '%\"supersedes\"%' AND y = $3");
    }
}
