//! One SQLite database in WAL mode, written by a single writer thread that
//! commits in groups.
//!
//! Every write is a closure run inside a transaction on the writer thread.
//! The writer takes all closures waiting at that moment, runs each inside its
//! own savepoint (so one failing closure rolls back only its own work; a closure
//! alone in its transaction needs none), and
//! commits them together with one fsync (`synchronous = FULL`). A caller's
//! future resolves only after that commit returned, so "written" always means
//! "on disk", and concurrent writers share the cost of an fsync instead of
//! queueing behind one another. Reads run on a small pool of read-only
//! connections on tokio's blocking threads; WAL lets them run beside the writer.
//!
//! Other processes (such as `patchbay inject`) may open the same file; SQLite's
//! own locking serialises their transactions with ours (`busy_timeout`).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use crate::StoreError;

const MAX_BATCH: usize = 4096;
/// Read connections kept open between reads; more are opened under load and closed after.
const MAX_IDLE_READERS: usize = 8;
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// WAL length (in pages, ~128 MiB) above which an idle database gets its WAL file truncated.
const TRUNCATE_PAGES: i64 = 32_768;
/// How long the database must go without writes before a large WAL file is truncated.
const TRUNCATE_WHEN_IDLE: Duration = Duration::from_secs(600);
/// Checkpoint often, in small steps: a large checkpoint's writeback makes the next
/// commit's fsync wait behind it (ext4 orders data before its journal commit).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

fn checkpoint_every() -> Duration {
    std::env::var("PATCHBAY_CHECKPOINT_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis).unwrap_or(CHECKPOINT_EVERY)
}

/// A connection that is inside the writer's transaction: do not BEGIN or COMMIT on it.
pub struct Tx<'a> {
    conn: &'a Connection,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&Tx<'_>) -> Option<Completion> + Send>;

struct Shared {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    commits: watch::Sender<u64>,
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    jobs: std::sync::mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Every service's statements share the writer: at rusqlite's default of 16, ingest alone
    // (about 40) evicted its own, and SQL was parsed again for every mail.
    conn.set_prepared_statement_cache_capacity(256);
    // Plans that never depend on bound values. Without this, SQLite 3.54 marks a parameter as
    // "re-plan when rebound" in common shapes (`WHERE a = ?1 ORDER BY b` on a key (a, b), a
    // join on it), and every execution of a cached statement parsed and planned its SQL again:
    // 35% of the writer's time in an import (issue 20). We run no ANALYZE, so no plan could
    // gain from the values anyway. `PATCHBAY_SQLITE_NO_QPSG` (set) leaves it off, to measure.
    if std::env::var_os("PATCHBAY_SQLITE_NO_QPSG").is_none() {
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -32_768)?;
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database, runs migrations and starts the writer.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        }
        // Several processes may create or migrate the same database at once (parallel
        // `patchbay inject` on first use); switching to WAL and migrating take locks that
        // SQLite's busy handler does not always wait for, so retry those here.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let conn = loop {
            match setup(path) {
                Err(StoreError::Sqlite { source, .. })
                    if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let (commits, _) = watch::channel(0u64);
        let shared = Arc::new(Shared { path: path.to_path_buf(), readers: Mutex::new(Vec::new()), commits });
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("patchbay-db-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_shared))
            .map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        Ok(Db { jobs, shared })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `f` in the next group commit and resolves with its value once the commit is durable.
    /// An error from `f` rolls back `f`'s own work only.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f)?.await
    }

    /// Queues `f` now (so jobs submitted in order run in order) and returns a future for its commit.
    pub fn submit<T, F>(&self, f: F) -> Result<impl std::future::Future<Output = Result<T, StoreError>> + use<T, F>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| match f(conn) {
            Ok(value) => Some(Box::new(move |committed: Result<(), StoreError>| {
                let _ = tx.send(committed.map(|()| value));
            })),
            Err(e) => {
                let _ = tx.send(Err(e));
                None
            }
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)?;
        Ok(async move {
            rx.await.map_err(|_| {
                StoreError::Setup("the write did not run: the database refused the transaction or the write panicked (see the log)".into())
            })?
        })
    }

    /// Queues `f` for the next group commit without waiting for it; failures are logged.
    pub fn write_detached<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&Tx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let job: Job = Box::new(move |conn| match f(conn) {
            Ok(()) => Some(Box::new(move |committed: Result<(), StoreError>| {
                if let Err(error) = committed {
                    tracing::warn!(%error, what, "Background write was not committed.");
                }
            })),
            Err(error) => {
                tracing::warn!(%error, what, "Background write failed.");
                None
            }
        });
        let _ = self.jobs.send(job);
    }

    /// Runs `f` on a read-only connection on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match shared.readers.lock().unwrap().pop() {
                Some(c) => c,
                None => open_reader(&shared.path)?,
            };
            let result = f(&conn);
            let mut idle = shared.readers.lock().unwrap();
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Setup(format!("read task failed: {e}")))?
    }

    /// A receiver that changes after every commit of this process's writer.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }
}

/// Opens one connection in WAL mode with the schema migrated.
fn setup(path: &Path) -> Result<Connection, StoreError> {
    let sql = |source| StoreError::Sqlite { path: path.to_path_buf(), source };
    let mut conn = Connection::open(path).map_err(sql)?;
    configure(&conn).map_err(sql)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Setup(format!("{}: SQLite refused WAL mode (got {mode})", path.display())));
    }
    // The checkpointer thread does this off the commit path.
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(sql)?;
    crate::migrations::run(&mut conn).map_err(|e| e.at(path))?;

    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let sql = |source| StoreError::Sqlite { path: path.to_path_buf(), source };
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(sql)?;
    configure(&conn).map_err(sql)?;
    conn.pragma_update(None, "query_only", true).map_err(sql)?;
    Ok(conn)
}

fn writer_loop(conn: Connection, rx: std::sync::mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let checkpointer = Checkpointer::start(&shared.path);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut done: Vec<Completion> = Vec::with_capacity(MAX_BATCH);
    let mut generation = 0u64;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(path = %shared.path.display(), error = %e, "Cannot begin a write transaction; the batch fails.");
            // The jobs never ran: dropping them closes their channels, and callers see an error.
            batch.clear();
            continue;
        }
        let tx = Tx { conn: &conn };
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ());
        // A job alone in its transaction needs no savepoint: if it fails, the transaction rolls
        // back. A savepoint is not free: while one is open, every statement that keeps a
        // statement journal walks the savepoint's whole in-memory journal when it ends.
        let alone = batch.len() == 1;
        let mut failed_alone = false;
        for job in batch.drain(..) {
            if !alone && run("SAVEPOINT job").is_err() {
                drop(job); // never ran: its caller sees an error
                continue;
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(&tx))) {
                Ok(Some(completion)) => {
                    if !alone {
                        let _ = run("RELEASE job");
                    }
                    done.push(completion);
                }
                Ok(None) | Err(_) if alone => failed_alone = true,
                Ok(None) | Err(_) => {
                    let _ = run("ROLLBACK TO job");
                    let _ = run("RELEASE job");
                }
            }
        }
        if failed_alone {
            // Its caller has its error (or sees the write did not run, after a panic).
            let _ = conn.execute_batch("ROLLBACK");
            continue;
        }
        let committed = conn.execute_batch("COMMIT").map_err(|source| StoreError::Sqlite { path: shared.path.clone(), source });
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let ok = committed.is_ok();
        for completion in done.drain(..) {
            completion(match &committed {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Setup(format!("commit failed: {e}"))),
            });
        }
        if ok {
            generation += 1;
            shared.commits.send_replace(generation);
            checkpointer.poke();
        }
    }
}

/// Copies WAL frames back into the database off the commit path, so a commit
/// never waits behind a checkpoint's fsync.
struct Checkpointer {
    poke: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Checkpointer {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new().name("patchbay-db-checkpoint".into()).spawn(move || {
            let Ok(conn) = Connection::open(&path) else { return };
            if configure(&conn).is_err() {
                return;
            }
            // Poked after commits; once poked, keeps going on its own timer until the WAL is
            // fully copied back, so that work is done while the database is idle instead of
            // landing beside later commits.
            //
            // The WAL file is reused from its start after each complete checkpoint, so it keeps
            // the size of the largest burst. Shrinking it frees blocks, and on a filesystem
            // mounted with `discard` the next journal commits then stall every fsync for ~100 ms
            // (measured here: p99 at 1,000 msg/s went from 2.7 ms to 20-40 ms). So it is only
            // truncated after the database has been idle for a long while.
            let every = checkpoint_every();
            let mut behind = false;
            let mut large = false;
            let mut last_write = std::time::Instant::now();
            loop {
                match rx.recv_timeout(every) {
                    Ok(()) => {
                        behind = true;
                        last_write = std::time::Instant::now();
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if !behind {
                    if large && last_write.elapsed() > TRUNCATE_WHEN_IDLE {
                        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                        large = false;
                    }
                    continue;
                }
                std::thread::sleep(every);
                while rx.try_recv().is_ok() {}
                let frames: Result<(i64, i64, i64), _> =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
                if let Ok((0, log, done)) = frames {
                    large |= log > TRUNCATE_PAGES;
                    behind = done < log;
                }
            }
        });
        Checkpointer { poke: spawned.ok().map(|_| tx) }
    }

    fn poke(&self) {
        if let Some(tx) = &self.poke {
            let _ = tx.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_failures_stay_local() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite3")).unwrap();
        db.write(|tx| {
            tx.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")?;
            Ok(())
        })
        .await
        .unwrap();
        let mut commits = db.commits();
        commits.borrow_and_update();
        let mut tasks = Vec::new();
        for n in 0..200i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |tx| {
                    tx.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                    if n % 10 == 0 {
                        return Err(StoreError::Setup("refused".into()));
                    }
                    Ok(n)
                })
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 180);
        let count: i64 = db.read(|c| Ok(c.query_row("SELECT count(*) FROM t WHERE n % 10 != 0", [], |r| r.get(0))?)).await.unwrap();
        let refused: i64 = db.read(|c| Ok(c.query_row("SELECT count(*) FROM t WHERE n % 10 = 0", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!((count, refused), (180, 0));
        let generations = *commits.borrow_and_update();
        assert!((1..200).contains(&generations), "200 writes took {generations} commits");
    }

    /// A write alone in its transaction runs without a savepoint: when it fails, none of its
    /// statements stay, and the writer goes on.
    #[tokio::test]
    async fn a_failing_write_alone_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite3")).unwrap();
        db.write(|tx| Ok(tx.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")?)).await.unwrap();
        let failed = db
            .write(|tx| {
                tx.execute("INSERT INTO t (n) VALUES (1)", [])?;
                tx.execute("INSERT INTO t (n) VALUES (2)", [])?;
                tx.execute("INSERT INTO t (n) VALUES (1)", [])?; // the key is taken
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        let panicked = db
            .write(|tx| -> Result<(), StoreError> {
                tx.execute("INSERT INTO t (n) VALUES (3)", [])?;
                panic!("a write that panics");
            })
            .await;
        assert!(panicked.is_err());
        db.write(|tx| Ok(tx.execute("INSERT INTO t (n) VALUES (4)", [])?)).await.unwrap();
        let left: Vec<i64> = db
            .read(|c| Ok(c.prepare("SELECT n FROM t ORDER BY n")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?))
            .await
            .unwrap();
        assert_eq!(left, vec![4]);
    }

    /// A cached statement is planned once: rebinding a parameter never makes SQLite parse and
    /// plan it again (it did for `WHERE a = ?1 ORDER BY b` on key (a, b) before QPSG was set).
    #[tokio::test]
    async fn cached_statements_are_not_planned_again_when_rebound() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite3")).unwrap();
        let sql = "SELECT b FROM t WHERE a = ?1 ORDER BY b";
        let replans = |c: &Connection| -> Result<i32, StoreError> {
            for a in 0..50i64 {
                c.prepare_cached(sql)?.query_map([a], |r| r.get::<_, i64>(0))?.for_each(drop);
            }
            Ok(c.prepare_cached(sql)?.get_status(rusqlite::StatementStatus::RePrepare))
        };
        let written = db
            .write(move |tx| {
                tx.execute_batch("CREATE TABLE t (a INTEGER, b INTEGER, PRIMARY KEY (a, b)) WITHOUT ROWID")?;
                tx.execute_batch("INSERT INTO t VALUES (1, 1), (1, 2), (2, 1)")?;
                replans(tx)
            })
            .await
            .unwrap();
        assert_eq!(written, 0, "the writer planned the statement again on rebinding");
        assert_eq!(db.read(move |c| replans(c)).await.unwrap(), 0, "a reader planned the statement again on rebinding");
    }

    #[tokio::test]
    async fn a_panicking_write_does_not_kill_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite3")).unwrap();
        let r: Result<(), _> = db.write(|_| panic!("boom")).await;
        assert!(r.is_err());
        db.write(|tx| Ok(tx.execute_batch("CREATE TABLE t (n)")?)).await.unwrap();
    }
}
