//! Ingest on PostgreSQL: one writer thread per process runs the placement rules
//! (`assemble.rs`, through [`crate::sql::Pg`]) in submission order, each write in one
//! transaction that first takes [`WRITE_LOCK`], so writers of every process and host queue as
//! SQLite's single writer queues them: every lookup of the rules sees every mail committed
//! before, and a change commits with its announcements in the outbox. Reads take a snapshot
//! of their own, without the lock.

use std::future::Future;

use patchbay_bus::Outgoing;
use patchbay_store::StoreError;
use patchbay_store_pg::PgStore;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::sql::{Pg, Sql, pg};

/// The advisory lock every ingest write holds until it commits ("pbingest" in ASCII).
pub(crate) const WRITE_LOCK: i64 = 0x7062_696e_6765_7374;

type Job = Box<dyn FnOnce(&PgStore, &Handle) + Send>;

/// The process's ordered writer: cheap to clone; its thread ends when the last clone is gone.
#[derive(Clone)]
pub(crate) struct Writer {
    store: PgStore,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on the current Tokio runtime.
    pub(crate) fn start(store: PgStore) -> Writer {
        let rt = Handle::current();
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let on_thread = store.clone();
        std::thread::Builder::new()
            .name("ingest-pg".into())
            .spawn(move || {
                for job in queue {
                    job(&on_thread, &rt);
                }
            })
            .expect("spawning the ingest writer thread");
        Writer { store, jobs }
    }

    /// The store written to.
    pub(crate) fn store(&self) -> &PgStore {
        &self.store
    }

    /// Queues `change` behind every write submitted before it; resolves once it committed with
    /// the messages it returns.
    pub(crate) fn submit<T, F>(&self, change: F) -> impl Future<Output = Result<T, StoreError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Sql) -> Result<(T, Vec<Outgoing>), StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |store, rt| {
            // A panic in the rules fails this write (its transaction rolls back as it drops),
            // never the writer: later mail must still be stored.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(store, rt, change)))
                .unwrap_or_else(|_| Err(StoreError::Corrupt("the ingest writer panicked on this write; see the log".into())));
            let _ = done.send(out);
        });
        let queued = self.jobs.send(job).is_ok();
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            result.await.unwrap_or(Err(StoreError::Closed))
        }
    }
}

/// One write: lock, change, announce, commit (rolled back on any error).
fn write<T>(
    store: &PgStore,
    rt: &Handle,
    change: impl FnOnce(&dyn Sql) -> Result<(T, Vec<Outgoing>), StoreError>,
) -> Result<T, StoreError> {
    let mut client = rt.block_on(store.client()).map_err(pg)?;
    let mut ptx = rt.block_on(store.begin(&mut client)).map_err(pg)?;
    // A host that dies holding the lock (power, network) must not stall every other ingest
    // host until TCP keepalive notices: the server ends a transaction idle this long.
    rt.block_on(ptx.sql().batch_execute("SET LOCAL idle_in_transaction_session_timeout = '60s'")).map_err(pg)?;
    rt.block_on(ptx.sql().execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])).map_err(pg)?;
    let (out, messages) = change(&Pg { tx: ptx.sql(), rt })?;
    if !messages.is_empty() {
        rt.block_on(ptx.publish(messages)).map_err(pg)?;
    }
    rt.block_on(ptx.commit()).map_err(pg)?;
    Ok(out)
}

/// Runs `f` on one read-only snapshot of `store`, on a blocking thread.
pub(crate) async fn read<T, F>(store: PgStore, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Sql) -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let rt = Handle::current();
        let mut client = rt.block_on(store.client()).map_err(pg)?;
        let tx = rt.block_on(client.transaction()).map_err(pg)?;
        rt.block_on(tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")).map_err(pg)?;
        let out = f(&Pg { tx: &tx, rt: &rt })?;
        rt.block_on(tx.commit()).map_err(pg)?;
        Ok(out)
    })
    .await
    .map_err(|e| StoreError::Backend(format!("a store read panicked: {e}")))?
}
