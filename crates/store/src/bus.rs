//! The embedded bus: the message log, queues, bindings, per-queue delivery
//! state, retries and dead letters, all tables in the store's database.
//!
//! Publishing inserts the message into `bus_messages` and one row per bound
//! queue into `bus_deliveries`, in the caller's group commit. A delivery row
//! lives until it is acked (deleted) or dead-lettered (moved). Which rows are
//! handed out is kept in memory only: after a crash every row still present
//! is simply delivered again, which is what at-least-once asks for.
//!
//! One process consumes a given queue at a time: the first subscription in a
//! process takes an exclusive lock file for the queue (`<data>/locks/`), and a
//! second process waits as a standby until the first exits or dies. Within the
//! process any number of subscriptions compete for the queue's messages. Any
//! process may publish.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::{
    Acker, Bus, BusError, DeadLetter, Delivery, LogEntry, MessageLog, Outgoing, QueueSpec, Sealer, Subscription, TopicPattern,
};
use patchbay_model::{Envelope, Sender, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::{Db, StoreError, Tx};

/// How many delivery rows one fetch loads into a queue's buffer.
const FETCH_BATCH: i64 = 256;
/// How often an idle consumer looks for messages other processes published.
const POLL: Duration = Duration::from_millis(100);

/// The bus inside the store's database.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    sealer: Sealer,
    lock_dir: PathBuf,
    routes: Arc<Mutex<Routes>>,
    seqs: Mutex<Seqs>,
    /// This process's consumer state per queue; a cell is filled once its lock file is held,
    /// so waiting as standby for one queue never blocks subscribing to another.
    queues: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<QueueRt>>>>>,
}

/// Bindings cached for the writer, reloaded when `bindings_generation` moves.
#[derive(Default)]
struct Routes {
    generation: Option<i64>,
    bindings: Vec<(i64, TopicPattern)>,
    memo: HashMap<String, Vec<i64>>,
}

impl Routes {
    fn refresh(&mut self, tx: &Connection) -> Result<(), StoreError> {
        let generation: i64 =
            tx.prepare_cached("SELECT value FROM bus_meta WHERE key = 'bindings_generation'")?.query_row([], |r| r.get(0))?;
        if self.generation == Some(generation) {
            return Ok(());
        }
        let mut stmt = tx.prepare_cached("SELECT queue_id, pattern FROM bus_bindings")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        self.bindings.clear();
        for row in rows {
            let (queue, pattern) = row?;
            let pattern = TopicPattern::parse(&pattern).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.bindings.push((queue, pattern));
        }
        self.memo.clear();
        self.generation = Some(generation);
        Ok(())
    }

    fn queues_for(&mut self, topic: &str) -> &[i64] {
        if !self.memo.contains_key(topic) {
            if self.memo.len() > 10_000 {
                self.memo.clear();
            }
            let mut queues: Vec<i64> = self.bindings.iter().filter(|(_, p)| p.matches_str(topic)).map(|(q, _)| *q).collect();
            queues.sort_unstable();
            queues.dedup();
            self.memo.insert(topic.to_string(), queues);
        }
        &self.memo[topic]
    }
}

/// Raises a sender's committed sequence mark to `max`, or fails if something at or above `min`
/// was committed first: that is what keeps sequence numbers strictly increasing in commit order.
fn claim_seqs(tx: &Connection, sender: &Sender, min: u64, max: u64) -> Result<bool, StoreError> {
    let raised = tx
        .prepare_cached("UPDATE bus_senders SET seq = ?4 WHERE service = ?1 AND instance = ?2 AND seq < ?3")?
        .execute(params![sender.service, sender.instance, min as i64, max as i64])?;
    if raised == 1 {
        return Ok(true);
    }
    let created = tx
        .prepare_cached("INSERT INTO bus_senders (service, instance, seq) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
        .execute(params![sender.service, sender.instance, max as i64])?;
    Ok(created == 1)
}

fn committed_seq(c: &Connection, sender: &Sender) -> Result<u64, StoreError> {
    Ok(c.prepare_cached("SELECT seq FROM bus_senders WHERE service = ?1 AND instance = ?2")?
        .query_row(params![sender.service, sender.instance], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

/// A sealed envelope and its wire bytes, made on the publisher's thread, not the writer's.
struct Sealed {
    envelope: Envelope,
    wire: Vec<u8>,
}

/// Inserts an envelope and its deliveries; false when its id is already in the log.
fn insert(tx: &Connection, routes: &mut Routes, env: &Envelope, wire: &[u8]) -> Result<bool, StoreError> {
    let inserted = tx
        .prepare_cached("INSERT INTO bus_messages (id, topic, wire) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING")?
        .execute(params![env.id.to_string(), env.topic.as_str(), wire])?;
    if inserted == 0 {
        return Ok(false);
    }
    let pos = tx.last_insert_rowid();
    let mut stmt = tx.prepare_cached("INSERT INTO bus_deliveries (queue_id, pos) VALUES (?1, ?2)")?;
    for queue in routes.queues_for(env.topic.as_str()) {
        stmt.execute(params![queue, pos])?;
    }
    Ok(true)
}

/// Commits sealed messages after checking their sequence numbers against the committed marks.
fn commit_sealed(tx: &Connection, routes: &Mutex<Routes>, sealed: Vec<Sealed>) -> Result<Vec<Envelope>, StoreError> {
    claim_all(tx, &sealed)?;
    insert_all(tx, routes, sealed)
}

/// Inserts messages whose sequence numbers are claimed, with their deliveries.
fn insert_all(tx: &Connection, routes: &Mutex<Routes>, sealed: Vec<Sealed>) -> Result<Vec<Envelope>, StoreError> {
    let mut routes = routes.lock().unwrap();
    routes.refresh(tx)?;
    for s in &sealed {
        insert(tx, &mut routes, &s.envelope, &s.wire)?;
    }
    Ok(sealed.into_iter().map(|s| s.envelope).collect())
}

/// Claims every sender's range of sequence numbers in `sealed`, or names the senders whose
/// numbers another writer committed first.
fn claim_all(tx: &Connection, sealed: &[Sealed]) -> Result<(), StoreError> {
    let mut ranges: BTreeMap<&Sender, (u64, u64)> = BTreeMap::new();
    for s in sealed {
        let r = ranges.entry(&s.envelope.sender).or_insert((u64::MAX, 0));
        r.0 = r.0.min(s.envelope.seq);
        r.1 = r.1.max(s.envelope.seq);
    }
    let mut conflicts = Vec::new();
    for (sender, (min, max)) in ranges {
        if !claim_seqs(tx, sender, min, max)? {
            conflicts.push(sender.clone());
        }
    }
    if !conflicts.is_empty() {
        return Err(StoreError::SeqConflict(conflicts));
    }
    Ok(())
}

/// Sequence numbers handed out by this process, per sender: the next one to use.
/// The committed mark in `bus_senders` stays authoritative (see [`claim_seqs`]).
#[derive(Default)]
struct Seqs {
    next: HashMap<Sender, u64>,
    stale: HashSet<Sender>,
}

impl Seqs {
    fn needs_mark<T: Unsealed>(&self, messages: &[T]) -> Vec<Sender> {
        let mut out: Vec<Sender> =
            messages.iter().map(|m| m.sender()).filter(|s| self.stale.contains(*s) || !self.next.contains_key(*s)).cloned().collect();
        out.sort();
        out.dedup();
        out
    }

    fn learn(&mut self, sender: Sender, committed: u64) {
        self.stale.remove(&sender);
        let next = self.next.entry(sender).or_insert(0);
        *next = (*next).max(committed + 1);
    }

    /// Seals in order; `None` when a sender's mark is unknown (learn it, then seal).
    fn seal(&mut self, sealer: &Sealer, messages: &[Outgoing]) -> Option<Vec<Sealed>> {
        let seqs = self.assign(messages)?;
        Some(seal_all(sealer, messages, &seqs))
    }

    /// Hands out the next sequence numbers in order; `None` when a sender's mark is unknown.
    fn assign<T: Unsealed>(&mut self, messages: &[T]) -> Option<Vec<u64>> {
        if !self.needs_mark(messages).is_empty() {
            return None;
        }
        Some(
            messages
                .iter()
                .map(|out| {
                    let next = self.next.get_mut(out.sender()).expect("checked above");
                    *next += 1;
                    *next - 1
                })
                .collect(),
        )
    }
}

/// Fewer messages than this are sealed on the calling thread.
const PARALLEL_SEAL: usize = 32;

/// Signs and serializes with sequence numbers already assigned. A large batch (an import's
/// transaction publishing hundreds of messages from the writer thread) is signed on several
/// threads, so the writer's critical path does not carry every signature.
fn seal_all(sealer: &Sealer, messages: &[Outgoing], seqs: &[u64]) -> Vec<Sealed> {
    let one = |(out, seq): (&Outgoing, &u64)| {
        let (envelope, wire) = sealer.seal_to_wire(out.clone(), *seq);
        Sealed { envelope, wire }
    };
    let threads = if messages.len() < PARALLEL_SEAL { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) };
    if threads <= 1 {
        return messages.iter().zip(seqs).map(one).collect();
    }
    let chunk = messages.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = messages
            .chunks(chunk)
            .zip(seqs.chunks(chunk))
            .map(|(m, q)| s.spawn(move || m.iter().zip(q).map(one).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("sealing does not panic")).collect()
    })
}

/// Something a [`SealStream`] turns into a message on its sealing thread: an [`Outgoing`], or
/// what a service shapes into one there (ingest's events: a series' mbox is written there too).
pub trait Unsealed: Send + 'static {
    /// Who publishes it: its sequence number is handed out on the writer, in push order.
    fn sender(&self) -> &Sender;
    /// The message, made on the sealing thread.
    fn into_outgoing(self) -> Result<Outgoing, StoreError>;
}

impl Unsealed for Outgoing {
    fn sender(&self) -> &Sender {
        &self.sender
    }

    fn into_outgoing(self) -> Result<Outgoing, StoreError> {
        Ok(self)
    }
}

/// The sealing thread of a [`SealStream`]: where messages go, and what it returns.
type SealingThread<T> = (std::sync::mpsc::Sender<Vec<(T, u64)>>, std::thread::JoinHandle<Result<Vec<Sealed>, StoreError>>);

/// The messages of one write, shaped and sealed on a thread of their own while the write goes
/// on: an import's transaction publishes hundreds, and its writer need not stop at the end to
/// wait for every signature. Sequence numbers are handed out as messages are pushed, so order
/// is kept; the messages join the write in [`SealStream::finish`]. Dropped unfinished (the
/// write failed), its numbers are skipped, as a rolled-back [`EmbeddedBus::publish_in`]'s are.
pub struct SealStream<T: Unsealed = Outgoing> {
    bus: EmbeddedBus,
    /// Messages held until there are enough to be worth a thread; a few are sealed in `finish`.
    held: Vec<(T, u64)>,
    thread: Option<SealingThread<T>>,
}

fn seal_one<T: Unsealed>(sealer: &Sealer, (item, seq): (T, u64)) -> Result<Sealed, StoreError> {
    let (envelope, wire) = sealer.seal_to_wire(item.into_outgoing()?, seq);
    Ok(Sealed { envelope, wire })
}

impl<T: Unsealed> SealStream<T> {
    /// Hands out sequence numbers for `messages` and passes them on to be sealed.
    pub fn push(&mut self, tx: &Tx<'_>, messages: Vec<T>) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let seqs = {
            let mut seqs = self.bus.inner.seqs.lock().unwrap();
            for sender in seqs.needs_mark(&messages) {
                let committed = committed_seq(tx, &sender)?;
                seqs.learn(sender, committed);
            }
            seqs.assign(&messages).expect("every mark is known")
        };
        self.held.extend(messages.into_iter().zip(seqs));
        if self.thread.is_none() && self.held.len() >= PARALLEL_SEAL {
            let (feed, rx) = std::sync::mpsc::channel::<Vec<(T, u64)>>();
            let sealer = self.bus.inner.sealer.clone();
            let handle = std::thread::Builder::new()
                .name("patchbay-sealer".into())
                .spawn(move || rx.into_iter().flatten().map(|item| seal_one(&sealer, item)).collect())
                .map_err(|e| StoreError::Setup(format!("cannot start a sealing thread: {e}")))?;
            self.thread = Some((feed, handle));
        }
        if let Some((feed, _)) = &self.thread
            && feed.send(std::mem::take(&mut self.held)).is_err()
        {
            // The thread stopped at a message it could not shape: its error says which.
            let (_, handle) = self.thread.take().expect("checked above");
            return Err(match handle.join() {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => StoreError::Setup("the sealing thread stopped".into()),
                Err(_) => StoreError::Setup("the sealing thread panicked".into()),
            });
        }
        Ok(())
    }

    /// Waits for the seals and publishes the messages inside `tx`, after what the write did.
    pub fn finish(mut self, tx: &Tx<'_>) -> Result<Vec<Envelope>, StoreError> {
        let mut sealed = match self.thread.take() {
            Some((feed, handle)) => {
                drop(feed);
                handle.join().map_err(|_| StoreError::Setup("the sealing thread panicked".into()))??
            }
            None => Vec::new(),
        };
        for item in self.held.drain(..) {
            sealed.push(seal_one(&self.bus.inner.sealer, item)?);
        }
        match claim_all(tx, &sealed) {
            Err(StoreError::SeqConflict(senders)) => {
                // Another process committed some of these numbers first: seal them again, as
                // `publish_in` does.
                {
                    let mut seqs = self.bus.inner.seqs.lock().unwrap();
                    for sender in senders {
                        let committed = committed_seq(tx, &sender)?;
                        seqs.learn(sender, committed);
                    }
                }
                let again = sealed
                    .into_iter()
                    .map(|s| Outgoing {
                        sender: s.envelope.sender,
                        topic: s.envelope.topic,
                        schema: s.envelope.schema,
                        body: s.envelope.body,
                    })
                    .collect();
                self.bus.publish_in(tx, again)
            }
            Err(e) => Err(e),
            Ok(()) => insert_all(tx, &self.bus.inner.routes, sealed),
        }
    }
}

fn parse_wire(wire: &[u8]) -> Result<Envelope, StoreError> {
    Envelope::from_wire(wire).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EmbeddedBus {
    /// Opens the bus over `db`, sealing with `sealer`; lock files go in `lock_dir`.
    pub fn new(db: Db, sealer: Sealer, lock_dir: &Path) -> Self {
        EmbeddedBus {
            inner: Arc::new(Inner {
                db,
                sealer,
                lock_dir: lock_dir.to_path_buf(),
                routes: Arc::new(Mutex::new(Routes::default())),
                seqs: Mutex::new(Seqs::default()),
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Opens `<data_dir>/patchbay.sqlite3` with lock files in `<data_dir>/locks`.
    pub fn open(data_dir: &Path, sealer: Sealer) -> Result<Self, StoreError> {
        let db = Db::open(&data_dir.join(crate::DB_FILE))?;
        Ok(Self::new(db, sealer, &data_dir.join("locks")))
    }

    /// The database this bus lives in, for store code that publishes in its own writes.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Declares, in one write, whichever of `specs` this store has no queue for yet: a process
    /// that publishes before the services ever ran here (`inject` from an MTA, `import`) then
    /// leaves its messages waiting in their queues instead of routed nowhere. Returns how many.
    pub async fn declare_missing(&self, specs: Vec<QueueSpec>) -> Result<usize, StoreError> {
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let known: std::collections::HashSet<String> = self
            .inner
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT 1 FROM bus_queues WHERE name = ?1")?;
                let mut known = std::collections::HashSet::new();
                for n in names {
                    if stmt.exists([&n])? {
                        known.insert(n);
                    }
                }
                Ok(known)
            })
            .await?;
        let missing: Vec<(String, Vec<String>)> = specs
            .into_iter()
            .filter(|s| !known.contains(&s.name))
            .map(|s| (s.name, s.patterns.iter().map(|p| p.as_str().to_string()).collect()))
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let n = missing.len();
        self.inner
            .db
            .write(move |tx| {
                for (name, patterns) in &missing {
                    declare(tx, name, patterns)?;
                }
                Ok(())
            })
            .await?;
        Ok(n)
    }

    /// A stream of messages to publish inside one write, shaped and sealed while it goes on.
    pub fn seal_stream<T: Unsealed>(&self) -> SealStream<T> {
        SealStream { bus: self.clone(), held: Vec::new(), thread: None }
    }

    /// Publishes inside the caller's write: the messages commit, or roll back, with it.
    /// (Signing then happens on the writer thread; hot paths should prefer [`Bus::publish`].)
    pub fn publish_in(&self, tx: &Tx<'_>, messages: Vec<Outgoing>) -> Result<Vec<Envelope>, StoreError> {
        loop {
            let sealed = {
                let mut seqs = self.inner.seqs.lock().unwrap();
                for sender in seqs.needs_mark(&messages) {
                    let committed = committed_seq(tx, &sender)?;
                    seqs.learn(sender, committed);
                }
                seqs.seal(&self.inner.sealer, &messages).expect("every mark is known")
            };
            match commit_sealed(tx, &self.inner.routes, sealed) {
                Err(StoreError::SeqConflict(senders)) => {
                    // Inside the writer the committed marks are current: one re-seal settles it.
                    let mut seqs = self.inner.seqs.lock().unwrap();
                    for sender in senders {
                        let committed = committed_seq(tx, &sender)?;
                        seqs.learn(sender, committed);
                    }
                }
                other => return other,
            }
        }
    }
}

fn declare(tx: &Connection, name: &str, patterns: &[String]) -> Result<i64, StoreError> {
    tx.prepare_cached("INSERT INTO bus_queues (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")?
        .execute(params![name, Timestamp::now().as_micros()])?;
    let id: i64 = tx.prepare_cached("SELECT id FROM bus_queues WHERE name = ?1")?.query_row([name], |r| r.get(0))?;
    let mut added = 0;
    for p in patterns {
        added += tx
            .prepare_cached("INSERT INTO bus_bindings (queue_id, pattern) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
            .execute(params![id, p])?;
    }
    if added > 0 {
        tx.execute("UPDATE bus_meta SET value = value + 1 WHERE key = 'bindings_generation'", [])?;
    }
    Ok(id)
}

async fn acquire_queue_lock(dir: &Path, queue: &str) -> Result<std::fs::File, BusError> {
    let path = dir.join(format!("{queue}.lock"));
    let io = |e: std::io::Error| BusError::Unavailable(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| BusError::Unavailable(format!("{}: {e}", dir.display())))?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    let mut warned = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !warned {
                    tracing::info!(queue, lock = %path.display(), "Another process consumes this queue; waiting as standby.");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<Envelope>, BusError> {
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let unknown = self.inner.seqs.lock().unwrap().needs_mark(&messages);
            if !unknown.is_empty() {
                let marks = self
                    .inner
                    .db
                    .read(move |c| unknown.into_iter().map(|s| committed_seq(c, &s).map(|m| (s, m))).collect::<Result<Vec<_>, _>>())
                    .await?;
                let mut seqs = self.inner.seqs.lock().unwrap();
                for (sender, mark) in marks {
                    seqs.learn(sender, mark);
                }
            }
            // Seal and enqueue under one lock, so the writer sees each sender's messages in sequence order.
            let pending = {
                let mut seqs = self.inner.seqs.lock().unwrap();
                let Some(sealed) = seqs.seal(&self.inner.sealer, &messages) else { continue };
                let routes = self.inner.routes.clone();
                self.inner.db.submit(move |tx| commit_sealed(tx, &routes, sealed))?
            };
            match pending.await {
                Ok(envelopes) => return Ok(envelopes),
                Err(StoreError::SeqConflict(senders)) => {
                    tracing::debug!(?senders, "Sequence numbers taken by another writer; re-sealing.");
                    self.inner.seqs.lock().unwrap().stale.extend(senders);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BusError::Unavailable(format!("sequence numbers kept conflicting after {ATTEMPTS} attempts")))
    }

    async fn publish_sealed(&self, envelopes: Vec<Envelope>) -> Result<(), BusError> {
        let routes = self.inner.routes.clone();
        let sealed: Vec<Sealed> = envelopes.into_iter().map(|envelope| Sealed { wire: envelope.to_wire(), envelope }).collect();
        self.inner
            .db
            .write(move |tx| {
                let mut routes = routes.lock().unwrap();
                routes.refresh(tx)?;
                for s in &sealed {
                    insert(tx, &mut routes, &s.envelope, &s.wire)?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn subscribe(&self, spec: QueueSpec) -> Result<Box<dyn Subscription>, BusError> {
        spec.validate()?;
        let patterns: Vec<String> = spec.patterns.iter().map(|p| p.as_str().to_string()).collect();
        let name = spec.name.clone();
        let id = self.inner.db.write(move |tx| declare(tx, &name, &patterns)).await?;
        let cell = self.inner.queues.lock().unwrap().entry(spec.name.clone()).or_default().clone();
        let rt = cell
            .get_or_try_init(|| async {
                let lock = acquire_queue_lock(&self.inner.lock_dir, &spec.name).await?;
                Ok::<_, BusError>(Arc::new(QueueRt {
                    id,
                    name: spec.name.clone(),
                    db: self.inner.db.clone(),
                    state: Mutex::new(QueueState::default()),
                    fetch: tokio::sync::Mutex::new(()),
                    changed: Notify::new(),
                    counts: Arc::new(Mutex::new(Vec::new())),
                    _lock: lock,
                }))
            })
            .await?
            .clone();
        Ok(Box::new(EmbeddedSubscription {
            commits: self.inner.db.commits(),
            rt,
            permits: Arc::new(Semaphore::new(spec.prefetch.max(1) as usize)),
        }))
    }

    async fn declare(&self, spec: QueueSpec) -> Result<(), BusError> {
        // The bindings only: no consumer lock, so another process may consume the queue.
        spec.validate()?;
        let patterns: Vec<String> = spec.patterns.iter().map(|p| p.as_str().to_string()).collect();
        let name = spec.name.clone();
        self.inner.db.write(move |tx| declare(tx, &name, &patterns)).await?;
        Ok(())
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let queue = queue.to_string();
        let rows = self
            .inner
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT dl.attempts, dl.reason, dl.dead_at, m.wire FROM bus_dead_letters dl
                     JOIN bus_queues q ON q.id = dl.queue_id JOIN bus_messages m ON m.pos = dl.pos
                     WHERE q.name = ?1 ORDER BY dl.dead_at, dl.pos LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![queue, limit as i64], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, Vec<u8>>(3)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (attempts, reason, at, wire) = row?;
                    out.push(DeadLetter {
                        envelope: parse_wire(&wire)?,
                        queue: queue.clone(),
                        attempts,
                        reason,
                        at: Timestamp::from_micros(at),
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(rows)
    }
}

#[async_trait]
impl MessageLog for EmbeddedBus {
    async fn read_after(&self, position: u64, limit: usize) -> Result<Vec<LogEntry>, BusError> {
        Ok(self
            .inner
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT pos, topic, wire FROM bus_messages WHERE pos > ?1 ORDER BY pos LIMIT ?2")?;
                let rows = stmt.query_map(params![position as i64, limit as i64], |r| {
                    Ok(LogEntry { position: r.get::<_, i64>(0)? as u64, topic: r.get(1)?, wire: r.get::<_, Vec<u8>>(2)?.into() })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?)
    }

    async fn head(&self) -> Result<u64, BusError> {
        Ok(self
            .inner
            .db
            .read(|c| Ok(c.query_row("SELECT coalesce(max(pos), 0) FROM bus_messages", [], |r| r.get::<_, i64>(0))? as u64))
            .await?)
    }

    async fn wait_after(&self, _position: u64, timeout: Duration) {
        let mut commits = self.inner.db.commits();
        commits.borrow_and_update();
        let _ = tokio::time::timeout(timeout.min(POLL * 5), commits.changed()).await;
    }
}

/// A delivery row loaded into memory.
struct Loaded {
    pos: i64,
    attempts: u32,
    envelope: Envelope,
}

#[derive(Default)]
struct QueueState {
    /// Highest position loaded from the database; rows at or below it are in memory or settled.
    cursor: i64,
    ready: VecDeque<Loaded>,
    /// Waiting for a retry delay: (due in micros, position).
    delayed: BTreeMap<(i64, i64), Loaded>,
}

impl QueueState {
    fn pop(&mut self, now: i64) -> Option<Loaded> {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
        self.ready.pop_front()
    }

    fn next_due(&self) -> Option<i64> {
        self.delayed.keys().next().map(|k| k.0)
    }
}

/// One queue's consumer state in this process.
struct QueueRt {
    id: i64,
    name: String,
    db: Db,
    state: Mutex<QueueState>,
    /// Serialises database fetches so two subscriptions never load the same rows.
    fetch: tokio::sync::Mutex<()>,
    /// Woken when a delivery returns to the queue (drop, retry).
    changed: Notify,
    /// Positions handed out whose attempt count is not yet written (one background write
    /// takes all of them).
    counts: Arc<Mutex<Vec<i64>>>,
    _lock: std::fs::File,
}

impl QueueRt {
    fn requeue_now(&self, loaded: Loaded) {
        self.state.lock().unwrap().ready.push_front(loaded);
        self.changed.notify_waiters();
    }

    fn requeue_later(&self, loaded: Loaded, due: i64) {
        self.state.lock().unwrap().delayed.insert((due, loaded.pos), loaded);
        self.changed.notify_waiters();
    }

    async fn fetch(&self, cursor: i64) -> Result<Vec<(i64, u32, i64, Envelope)>, StoreError> {
        let queue = self.id;
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT d.pos, d.attempts, d.not_before, m.wire FROM bus_deliveries d
                     JOIN bus_messages m ON m.pos = d.pos
                     WHERE d.queue_id = ?1 AND d.pos > ?2 ORDER BY d.pos LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![queue, cursor, FETCH_BATCH], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?, r.get::<_, i64>(2)?, r.get::<_, Vec<u8>>(3)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (pos, attempts, not_before, wire) = row?;
                    out.push((pos, attempts, not_before, parse_wire(&wire)?));
                }
                Ok(out)
            })
            .await
    }
}

struct EmbeddedSubscription {
    rt: Arc<QueueRt>,
    permits: Arc<Semaphore>,
    commits: watch::Receiver<u64>,
}

impl EmbeddedSubscription {
    fn hand_out(&self, loaded: Loaded, permit: OwnedSemaphorePermit) -> Delivery {
        // Count the hand-out durably, off the hot path, so that a message that keeps crashing its
        // consumer is eventually dead-lettered by attempt count. Rows that were only loaded into
        // the buffer are not counted: a restart with a long queue must not age every message.
        let schedule = {
            let mut counts = self.rt.counts.lock().unwrap();
            counts.push(loaded.pos);
            counts.len() == 1
        };
        if schedule {
            let (counts, queue) = (self.rt.counts.clone(), self.rt.id);
            self.rt.db.write_detached("count deliveries", move |tx| {
                let positions = std::mem::take(&mut *counts.lock().unwrap());
                let mut stmt = tx.prepare_cached("UPDATE bus_deliveries SET attempts = attempts + 1 WHERE queue_id = ?1 AND pos = ?2")?;
                for pos in positions {
                    stmt.execute(params![queue, pos])?;
                }
                Ok(())
            });
        }
        let attempt = loaded.attempts + 1;
        let envelope = loaded.envelope.clone();
        Delivery::new(
            envelope,
            attempt,
            Box::new(EmbeddedAcker { rt: self.rt.clone(), loaded: Some(Loaded { attempts: attempt, ..loaded }), _permit: permit }),
        )
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| BusError::Closed)?;
        loop {
            // Register interest before looking, so a wake-up between look and wait is not lost.
            self.commits.borrow_and_update();
            let changed = self.rt.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            let now = Timestamp::now().as_micros();
            if let Some(loaded) = self.rt.state.lock().unwrap().pop(now) {
                return Ok(self.hand_out(loaded, permit));
            }
            let fetched = {
                let _fetching = self.rt.fetch.lock().await;
                let cursor = {
                    let mut state = self.rt.state.lock().unwrap();
                    if let Some(loaded) = state.pop(now) {
                        return Ok(self.hand_out(loaded, permit));
                    }
                    state.cursor
                };
                let rows = self.rt.fetch(cursor).await?;
                if let Some(&(last, ..)) = rows.last() {
                    let mut state = self.rt.state.lock().unwrap();
                    for (pos, attempts, not_before, envelope) in rows {
                        let loaded = Loaded { pos, attempts, envelope };
                        if not_before > now {
                            state.delayed.insert((not_before, pos), loaded);
                        } else {
                            state.ready.push_back(loaded);
                        }
                    }
                    state.cursor = last;
                    true
                } else {
                    false
                }
            };
            if fetched {
                continue;
            }
            let due = self.rt.state.lock().unwrap().next_due();
            let wait = match due {
                Some(due) => Duration::from_micros((due - now).max(0) as u64).min(POLL),
                None => POLL,
            };
            tokio::select! {
                _ = self.commits.changed() => {}
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

struct EmbeddedAcker {
    rt: Arc<QueueRt>,
    loaded: Option<Loaded>,
    _permit: OwnedSemaphorePermit,
}

impl EmbeddedAcker {
    async fn settle<F>(&mut self, what: &'static str, f: F) -> Result<Loaded, BusError>
    where
        F: FnOnce(&Tx<'_>, i64, i64, u32) -> Result<(), StoreError> + Send + 'static,
    {
        let loaded = self.loaded.take().expect("a delivery is settled once");
        let (queue, pos, attempts) = (self.rt.id, loaded.pos, loaded.attempts);
        match self.rt.db.write(move |tx| f(tx, queue, pos, attempts)).await {
            Ok(()) => Ok(loaded),
            Err(error) => {
                tracing::warn!(queue = %self.rt.name, pos, %error, what, "Could not settle a delivery; it returns to the queue.");
                self.rt.requeue_now(loaded);
                Err(error.into())
            }
        }
    }
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settle("ack", |tx, queue, pos, _| {
            tx.prepare_cached("DELETE FROM bus_deliveries WHERE queue_id = ?1 AND pos = ?2")?.execute(params![queue, pos])?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn retry(mut self: Box<Self>, delay: Duration, reason: String) -> Result<(), BusError> {
        let due = Timestamp::now().as_micros() + delay.as_micros() as i64;
        let loaded = self
            .settle("retry", move |tx, queue, pos, _| {
                tx.prepare_cached("UPDATE bus_deliveries SET not_before = ?3, last_error = ?4 WHERE queue_id = ?1 AND pos = ?2")?
                    .execute(params![queue, pos, due, reason])?;
                Ok(())
            })
            .await?;
        self.rt.requeue_later(loaded, due);
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, reason: String) -> Result<(), BusError> {
        self.settle("dead-letter", move |tx, queue, pos, attempts| {
            tx.prepare_cached(
                "INSERT INTO bus_dead_letters (queue_id, pos, attempts, reason, dead_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO UPDATE SET attempts = excluded.attempts, reason = excluded.reason, dead_at = excluded.dead_at",
            )?
            .execute(params![queue, pos, attempts, reason, Timestamp::now().as_micros()])?;
            tx.prepare_cached("DELETE FROM bus_deliveries WHERE queue_id = ?1 AND pos = ?2")?.execute(params![queue, pos])?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}

impl Drop for EmbeddedAcker {
    fn drop(&mut self) {
        if let Some(loaded) = self.loaded.take() {
            // Unsettled: back to the head of the queue, as a closed AMQP channel would do.
            self.rt.requeue_now(loaded);
        }
    }
}

impl EmbeddedBus {
    /// How many deliveries a queue holds (ready, delayed or handed out), for tests and status pages.
    pub async fn pending(&self, queue: &str) -> Result<u64, StoreError> {
        let queue = queue.to_string();
        self.inner
            .db
            .read(move |c| {
                let n: Option<i64> = c
                    .query_row(
                        "SELECT count(*) FROM bus_deliveries d JOIN bus_queues q ON q.id = d.queue_id WHERE q.name = ?1",
                        [queue],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(n.unwrap_or(0) as u64)
            })
            .await
    }
}
