//! The ingest and threader services of the embedded shape: every mail is
//! stored first, idempotently, then placed in its series, and the messages
//! announcing both (`mail.message.received`, `series.series.*`) are published
//! in the same SQLite transaction (a `SealStream`). A mail is durable before
//! any caller hears "accepted", and a series transition is announced exactly
//! once because the announcement commits or rolls back with the transition.
//!
//! The threader runs inside the ingest transaction rather than as a consumer
//! of `mail.message.received`: in the embedded shape there is no hop to lose
//! or repeat, and parallel ingesters (any number of `patchbay inject`
//! processes beside `serve`) serialize on SQLite's write lock, inside which
//! every lookup and every write of the assembly happens. On RabbitMQ the
//! events still commit into the embedded log, and `serve`'s relay forwards
//! them: the log is their outbox.
//!
//! Per mail ([`Ingest::submit`], one group-commit closure): the content hash
//! is looked up (a duplicate only links its lists); a Message-ID conflict is
//! flagged (kept, never overwritten, never threaded); patches and covers are
//! placed by `patchbay-series` (`assemble.rs`); a later mail naming a project
//! claims a series no project claimed yet (announced `new` then, and
//! `complete` if it already was). Series events are published only for series
//! of a configured project. Re-rolls both ways: a completing version
//! supersedes every matching older version not yet replaced (or replaced by a
//! version newer than itself: each names its nearest successor, as in date
//! order), and an old version completing after any newer matching version was
//! posted is superseded at once by the nearest, with no `complete` event. A
//! `Supersedes: <msgid>` line in a series' own mail links it to the series
//! holding that mail; a version posted in reply to an older one's thread
//! re-rolls it, and the versions between (`series::rerolls_through`), as a
//! `RESEND` in reply to a posting of the same version replaces it. A partial
//! re-roll (`[PATCH v2 2/2]` in reply to v1's 2/2) takes the slots it lacks
//! from v1 when it completes and in its mbox (read from v1, never moved: a
//! mail is in one series), and supersedes v1; a mail joining v1 completes it
//! too, whichever arrives first. A mail
//! joining a series that already completed decides supersession again for it
//! and the newer versions, so the outcome does not depend on arrival order
//! (`tests/shapes.rs`, the order-independence property).
//!
//! Deadlines: [`Ingest::sweep`] marks series still `new` after
//! `incomplete_after_secs` as `incomplete`, by receipt time (`serve`, every
//! 30 s); [`Ingest::sweep_by_mail_dates`] does it for an archive (`import`):
//! its clock is the newest mail Date in the store (Dates more than a day after
//! their receipt do not count), so the outcome depends on the mails, not on
//! when they were imported. [`Ingest::set_settings`] takes a reloaded config.
//!
//! Tables (migration 2): `mails` (raw bytes, `content_hash` UNIQUE, Message-ID
//! indexed not unique, kind, problems, `conflicts_with`, hints JSON: base and
//! dependency hints, `change-id`, `Supersedes:`, the ids a mail cites),
//! `mail_lists`, `series` (project, submitter, version and whether a subject
//! named it, total, state `new|complete|incomplete|superseded`,
//! `supersedes`/`superseded_by`), `series_mails` (PK `(series_id, slot)`,
//! `mail_id` UNIQUE), `series_refs`, `import_marks`; `series_merged` (migration
//! 9: series found in their branch upstream, [`Ingest::mark_merged`], shown as
//! the state `merged` by [`SeriesStore`]); `series.uid` (migration 10), the
//! public id every message, port and link uses ([`identity`]), while `id` stays
//! the local key the series tables join on.
//!
//! Entry points: [`Ingest::accept`] (LMTP, `inject`, `import`), the sweeps,
//! [`lmtp::serve`] (RFC 2033 with limits, see `lmtp.rs`), and [`archive`] for
//! mbox, maildir and public-inbox sources. This crate knows the embedded store
//! but no HTTP, AMQP or config file (the binary turns the config into
//! [`Settings`]); time comes in as arguments, [`now`] is the edge.

pub mod archive;
mod assemble;
pub mod identity;
pub mod lmtp;
mod pg;
mod read;
pub mod settings;
mod sql;

use std::sync::Arc;

use patchbay_bus::Outgoing;
use patchbay_model::{Body, Sender, TopicRoot};
use patchbay_store::{EmbeddedBus, StoreError, Unsealed};
use patchbay_store_pg::PgStore;

use crate::sql::{Sql, args};

pub use assemble::{Incoming, Outcome, Project};
pub use patchbay_series::Rules;
pub use read::{Consistency, MailAge, SeriesStore, TEST_ANYWAY_LIST};
pub use settings::{DEFAULT_LMTP, IngestSettings};

/// Events a write gathers before handing them to be sealed.
const FLUSH_EVENTS: usize = 32;

/// Hands a write's events so far on to be published: on SQLite to the thread that seals them
/// while the write goes on; on PostgreSQL it keeps them for the end of the write.
type Flush<'a> = dyn FnMut(&mut Vec<assemble::Event>) -> Result<(), StoreError> + 'a;

/// Why ingestion failed; every variant means "nothing was stored, try again" unless noted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The store could not commit the mail.
    #[error("storing the mail failed: {0}")]
    Store(#[from] StoreError),
    /// A mail source could not be read (file, directory or git archive).
    #[error("{0}")]
    Source(String),
}

/// How ingestion behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Series assembly thresholds.
    pub rules: Rules,
    /// Projects in match order.
    pub projects: Vec<Project>,
}

/// Where the mail and series tables are, and how their changes are announced.
#[derive(Clone)]
enum Backend {
    /// The embedded store: its bus log is the outbox.
    Sqlite(EmbeddedBus),
    /// PostgreSQL: one ordered writer per process, the outbox in the same transaction.
    Postgres(pg::Writer),
}

/// The ingest service: cheap to clone, shared by LMTP sessions and importers.
#[derive(Clone)]
pub struct Ingest {
    backend: Backend,
    root: TopicRoot,
    /// `mail.message.received` is the ingest service's word, series events the threader's.
    senders: Arc<(Sender, Sender)>,
    /// Replaced whole when `serve` reloads its config; a transaction uses the one it started with.
    settings: Arc<std::sync::RwLock<Arc<Settings>>>,
}

/// Parses raw bytes into an [`Incoming`] mail; pure CPU, run it off the async threads in bulk.
pub fn incoming(mut raw: Vec<u8>, lists: Vec<String>, received_at: i64) -> Incoming {
    // An mbox envelope line (procmail, `git format-patch` files, Postfix `pipe` with flag F)
    // is not part of the mail.
    if raw.starts_with(b"From ") {
        let end = raw.iter().position(|&b| b == b'\n').map_or(raw.len(), |p| p + 1);
        raw.drain(..end);
    }
    let parsed = patchbay_mail::parse(&raw);
    Incoming { raw, parsed, lists, received_at }
}

impl Ingest {
    /// Binds ingestion to the embedded bus (whose database is the store).
    pub fn new(bus: EmbeddedBus, root: TopicRoot, instance: &str, settings: Settings) -> Self {
        Self::with_backend(Backend::Sqlite(bus), root, instance, settings)
    }

    /// Binds ingestion to a shared PostgreSQL store: any number of processes on any hosts
    /// ingest into it at once, each change and its announcements committed together in its
    /// outbox (sent on by any relay: `patchbay run <service>` relays). Writes of this process run
    /// in submission order on one thread (an import's mark follows its mails); writes of all
    /// processes take one advisory lock, the single writer SQLite gives the embedded shape,
    /// so the placement rules see every mail committed before. Call inside a Tokio runtime.
    pub fn on_postgres(store: PgStore, root: TopicRoot, instance: &str, settings: Settings) -> Self {
        Self::with_backend(Backend::Postgres(pg::Writer::start(store)), root, instance, settings)
    }

    fn with_backend(backend: Backend, root: TopicRoot, instance: &str, settings: Settings) -> Self {
        Ingest {
            root,
            senders: Arc::new((Sender::new("ingest", instance), Sender::new("threader", instance))),
            backend,
            settings: Arc::new(std::sync::RwLock::new(Arc::new(settings))),
        }
    }

    /// The embedded bus (and so the store) this service writes to; `None` on PostgreSQL.
    pub fn embedded(&self) -> Option<&EmbeddedBus> {
        match &self.backend {
            Backend::Sqlite(bus) => Some(bus),
            Backend::Postgres(_) => None,
        }
    }

    /// The shared PostgreSQL store this service writes to; `None` on the embedded store.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(w) => Some(w.store()),
        }
    }

    /// The read side of the store this service writes to.
    pub fn series_store(&self) -> Arc<dyn SeriesStore> {
        match &self.backend {
            Backend::Sqlite(bus) => Arc::new(bus.db().clone()),
            Backend::Postgres(w) => Arc::new(w.store().clone()),
        }
    }

    /// Runs `change` in one write transaction and publishes the events it made inside it.
    async fn announcing<T, F>(&self, change: F) -> Result<T, IngestError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Sql, &mut Vec<assemble::Event>) -> Result<T, StoreError> + Send + 'static,
    {
        Ok(self.write(move |tx, events, _| change(tx, events))?.await?)
    }

    /// Queues `change` for the store's writer; the future resolves once it committed, with the
    /// messages announcing the events it made (state and announcement commit together).
    /// `change` may [`Flush`] its events as it goes: on SQLite they are then sealed on a thread
    /// of their own while it goes on (an import's batch publishes hundreds).
    fn write<T, F>(&self, change: F) -> Result<impl Future<Output = Result<T, StoreError>> + use<T, F>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Sql, &mut Vec<assemble::Event>, &mut Flush<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        Ok(match &self.backend {
            Backend::Sqlite(bus) => {
                let bus = bus.clone();
                futures_util::future::Either::Left(bus.db().clone().submit(move |tx| {
                    let announce = |events: Vec<assemble::Event>| events.into_iter().map(|e| this.announcement(e)).collect();
                    let mut stream = bus.seal_stream();
                    let mut events = Vec::new();
                    let out = change(&**tx, &mut events, &mut |events| {
                        if events.len() >= FLUSH_EVENTS {
                            stream.push(tx, announce(std::mem::take(events)))?;
                        }
                        Ok(())
                    })?;
                    stream.push(tx, announce(events))?;
                    stream.finish(tx)?;
                    Ok(out)
                })?)
            }
            Backend::Postgres(w) => futures_util::future::Either::Right(w.submit(move |db: &dyn Sql| {
                let mut events = Vec::new();
                let out = change(db, &mut events, &mut |_| Ok(()))?;
                Ok((out, this.outgoing(events)?))
            })),
        })
    }

    fn outgoing(&self, events: Vec<assemble::Event>) -> Result<Vec<Outgoing>, StoreError> {
        events.into_iter().map(|event| self.announcement(event).into_outgoing()).collect()
    }

    /// `event` with who announces it: the ingest service a mail, the threader a series.
    fn announcement(&self, event: assemble::Event) -> Announcement {
        let (ingest, threader) = &*self.senders;
        let sender = if matches!(event, assemble::Event::Received(_)) { ingest } else { threader };
        Announcement { event, sender: sender.clone(), root: self.root.clone() }
    }

    /// The projects and rules mail is assembled by now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Assembles mail by `settings` from the next transaction on (`serve` reloading its config:
    /// a project or list added or changed without a restart).
    pub fn set_settings(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
    }

    /// Stores and threads `mails` in one transaction (and records `mark` for an importer's
    /// source in it); resolves once all of it is durable.
    pub fn submit(
        &self,
        mails: Vec<Incoming>,
        mark: Option<(String, String)>,
    ) -> Result<impl Future<Output = Result<Vec<Outcome>, IngestError>> + use<>, IngestError> {
        let settings = self.settings();
        let fut = self.write(move |tx, events, flush| {
            let mut outcomes = Vec::with_capacity(mails.len());
            for mail in &mails {
                outcomes.push(assemble::accept(tx, &settings.rules, &settings.projects, mail, events)?);
                flush(events)?;
            }
            if let Some((source, mark)) = &mark {
                tx.exec(
                    "INSERT INTO import_marks (source, mark) VALUES (?1, ?2) ON CONFLICT (source) DO UPDATE SET mark = ?2",
                    args![source, mark],
                )?;
            }
            Ok(outcomes)
        })?;
        Ok(async move { fut.await.map_err(IngestError::from) })
    }

    /// Stores and threads `mails` in one transaction; resolves once durable.
    pub async fn accept(&self, mails: Vec<Incoming>) -> Result<Vec<Outcome>, IngestError> {
        self.submit(mails, None)?.await
    }

    /// Marks series that are still missing patches `incomplete_after` seconds after their first
    /// mail; returns how many changed.
    pub async fn sweep(&self, now: i64, incomplete_after: i64) -> Result<usize, IngestError> {
        self.announcing(move |tx, events| assemble::sweep(tx, assemble::Age::Received, now - incomplete_after, now, events)).await
    }

    /// Records that every patch of series `id` is in `branch` of `repository` (`commits` in
    /// patch order) and publishes `series.series.merged` in the same transaction, as the
    /// threader; `None` when it was known already (or there is no such series).
    pub async fn mark_merged(
        &self,
        id: i64,
        repository: String,
        branch: String,
        commits: Vec<String>,
        now: i64,
    ) -> Result<Option<patchbay_model::SeriesMerged>, IngestError> {
        self.announcing(move |tx, events| assemble::mark_merged(tx, id, &repository, &branch, &commits, now, events)).await
    }

    /// The deadline sweep for an imported archive, whose mails may be years old: the clock is the
    /// newest mail Date in the store, and a series' age is its first mail's Date, so the outcome
    /// depends on the mails alone, not on when they were imported. Returns how many changed.
    pub async fn sweep_by_mail_dates(&self, now: i64, incomplete_after: i64) -> Result<usize, IngestError> {
        self.announcing(move |tx, events| {
            let Some(clock) = assemble::newest_date(tx)? else { return Ok(0) };
            let mut total = 0;
            loop {
                let n = assemble::sweep(tx, assemble::Age::Dated, clock - incomplete_after, now, events)?;
                total += n;
                if n < 1000 {
                    return Ok(total);
                }
            }
        })
        .await
    }

    /// The mbox (patches in slot order) of the complete series holding the mail `message_id`
    /// (with or without angle brackets), for `Based-on:` dependencies; `None` when there is none.
    pub async fn complete_series_mbox(&self, message_id: &str) -> Result<Option<String>, IngestError> {
        let id = message_id.trim();
        let id = if id.starts_with('<') { id.to_string() } else { format!("<{id}>") };
        Ok(self.read(move |conn| assemble::complete_series_mbox(conn, &id)).await?)
    }

    /// Runs `f` on a consistent snapshot of the store.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Sql) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(bus) => bus.db().read(move |c| f(c)).await,
            Backend::Postgres(w) => pg::read(w.store().clone(), f).await,
        }
    }

    /// The mark an importer recorded for `source` (the last public-inbox commit imported).
    pub async fn mark(&self, source: &str) -> Result<Option<String>, IngestError> {
        let source = source.to_string();
        Ok(self.read(move |db| db.value("SELECT mark FROM import_marks WHERE source = ?1", args![source])).await?)
    }
}

/// An event on its way to be published, shaped into its message where it is sealed.
struct Announcement {
    event: assemble::Event,
    sender: Sender,
    root: TopicRoot,
}

impl Unsealed for Announcement {
    fn sender(&self) -> &Sender {
        &self.sender
    }

    fn into_outgoing(self) -> Result<Outgoing, StoreError> {
        use assemble::Event;
        let (root, sender) = (&self.root, &self.sender);
        match self.event {
            Event::Received(b) => b.shape(root, sender),
            Event::New(b) => b.shape(root, sender),
            Event::Complete(b) => b.into_body().shape(root, sender),
            Event::Incomplete(b) => b.shape(root, sender),
            Event::Superseded(b) => b.shape(root, sender),
            Event::Merged(b) => b.shape(root, sender),
        }
    }
}

/// A body made into a message, whatever its type.
trait Shaped {
    fn shape(&self, root: &TopicRoot, sender: &Sender) -> Result<Outgoing, StoreError>;
}

impl<B: Body> Shaped for B {
    fn shape(&self, root: &TopicRoot, sender: &Sender) -> Result<Outgoing, StoreError> {
        Outgoing::of(root, sender, self).map_err(|e| StoreError::Corrupt(format!("building {}: {e}", B::TOPIC)))
    }
}

/// Seconds since the epoch, for `received_at` (ingest's only clock, at the edge).
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
