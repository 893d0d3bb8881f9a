//! The transactional outbox: messages are written in the transaction of the state change they
//! announce, and the [`Relay`] hands them to the bus afterwards.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, Outgoing, Sealer};
use patchbay_model::Envelope;

use crate::{PgError, PgStore};

/// One open transaction of the store: SQL through [`PgTx::sql`], messages through
/// [`PgTx::publish`]; both commit or roll back together.
pub struct PgTx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    sealer: &'a Sealer,
    committed: &'a tokio::sync::Notify,
}

impl<'a> PgTx<'a> {
    pub(crate) fn new(tx: deadpool_postgres::Transaction<'a>, sealer: &'a Sealer, committed: &'a tokio::sync::Notify) -> Self {
        PgTx { tx, sealer, committed }
    }

    /// Commits the change and its messages; this process's relay sends them at once. Dropping
    /// a `PgTx` without committing rolls both back.
    pub async fn commit(self) -> Result<(), PgError> {
        self.tx.commit().await?;
        self.committed.notify_one();
        Ok(())
    }

    /// The transaction, for the state change itself.
    pub fn sql(&self) -> &deadpool_postgres::Transaction<'a> {
        &self.tx
    }

    /// Seals `messages` and writes them to the outbox, to be sent once this transaction
    /// commits. Sequence numbers count per sender; the sender's row in `sender_seqs` stays
    /// locked until commit, so they rise in commit order, as consumers' gap detection expects.
    pub async fn publish(&mut self, messages: Vec<Outgoing>) -> Result<Vec<Envelope>, PgError> {
        let mut next: Vec<(String, i64)> = Vec::new();
        for out in &messages {
            let sender = out.sender.to_string();
            match next.iter_mut().find(|(s, _)| *s == sender) {
                Some((_, n)) => *n += 1,
                None => next.push((sender, 1)),
            }
        }
        // Turn each sender's count into its first sequence number.
        for (sender, n) in &mut next {
            let after: i64 = self
                .tx
                .query_one(
                    "INSERT INTO sender_seqs (sender, next) VALUES ($1, $2::BIGINT + 1)
                     ON CONFLICT (sender) DO UPDATE SET next = sender_seqs.next + $2::BIGINT RETURNING next",
                    &[&*sender, &*n],
                )
                .await?
                .get(0);
            *n = after - *n;
        }
        let mut sealed = Vec::with_capacity(messages.len());
        let (mut ids, mut senders, mut topics, mut wires) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for out in messages {
            let sender = out.sender.to_string();
            let seq = next.iter_mut().find(|(s, _)| *s == sender).map(|(_, n)| std::mem::replace(n, *n + 1)).expect("counted above");
            let envelope = self.sealer.seal(out, seq as u64);
            ids.push(envelope.id.to_string());
            senders.push(sender);
            topics.push(envelope.topic.as_str().to_string());
            wires.push(envelope.to_wire());
            sealed.push(envelope);
        }
        self.tx
            .execute(
                "INSERT INTO outbox (id, sender, topic, wire)
                 SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BYTEA[])",
                &[&ids, &senders, &topics, &wires],
            )
            .await?;
        Ok(sealed)
    }
}

/// How long relayed rows stay in the outbox.
pub const KEEP_RELAYED: Duration = Duration::from_secs(24 * 3600);
/// Rows deleted per prune.
const PRUNE_BATCH: i64 = 10_000;
/// How often a relay prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Rows taken per relay step.
const BATCH: i64 = 500;
/// How often an idle relay looks for rows other processes committed (this process's commits
/// wake it at once).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Sends committed outbox rows to the bus, in position order within a step, and marks them
/// relayed. Any number may run against one store.
pub struct Relay {
    store: PgStore,
    bus: Arc<dyn Bus>,
}

impl Relay {
    /// A relay from `store` to `bus` (RabbitMQ in the scale-out shape).
    pub fn new(store: PgStore, bus: Arc<dyn Bus>) -> Self {
        Relay { store, bus }
    }

    /// Sends one batch of waiting rows and marks them relayed; returns how many. Rows another
    /// relay holds are skipped, not waited for. If the bus fails, nothing is marked, and the
    /// rows are sent again later: at least once.
    pub async fn step(&self) -> Result<usize, PgError> {
        let mut client = self.store.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query("SELECT pos, wire FROM outbox WHERE relayed_at IS NULL ORDER BY pos LIMIT $1 FOR UPDATE SKIP LOCKED", &[&BATCH])
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut positions = Vec::with_capacity(rows.len());
        let mut envelopes = Vec::with_capacity(rows.len());
        for row in rows {
            let pos: i64 = row.get(0);
            let wire: &[u8] = row.get(1);
            envelopes.push(Envelope::from_wire(wire).map_err(|e| PgError::Corrupt { pos, why: e.to_string() })?);
            positions.push(pos);
        }
        self.bus.publish_sealed(envelopes).await?;
        tx.execute("UPDATE outbox SET relayed_at = now() WHERE pos = ANY($1)", &[&positions]).await?;
        tx.commit().await?;
        Ok(positions.len())
    }

    /// Deletes rows relayed more than `keep` ago, `PRUNE_BATCH` at a time until none is left;
    /// returns how many. A relayed row has done its work (the broker has the message, and the history keeps
    /// it), so the table holds what is waiting plus a day of what was sent, for inspection.
    pub async fn prune(&self, keep: Duration) -> Result<u64, PgError> {
        let seconds = keep.as_secs_f64();
        let client = self.store.pool.get().await?;
        let mut total = 0;
        loop {
            let deleted = client
                .execute(
                    "DELETE FROM outbox WHERE pos IN (
                         SELECT pos FROM outbox WHERE relayed_at < now() - make_interval(secs => $1) ORDER BY pos LIMIT $2)",
                    &[&seconds, &PRUNE_BATCH],
                )
                .await?;
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// How many rows wait to be relayed.
    pub async fn waiting(&self) -> Result<i64, PgError> {
        Ok(self.store.pool.get().await?.query_one("SELECT count(*) FROM outbox WHERE relayed_at IS NULL", &[]).await?.get(0))
    }

    /// Relays until `shutdown` resolves; failures (PostgreSQL or the broker away) are logged and
    /// retried with backoff, at most 30 s apart.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        // At start, then every PRUNE_EVERY: a relay restarted often still prunes.
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                match self.prune(KEEP_RELAYED).await {
                    Ok(0) => {}
                    Ok(rows) => tracing::info!(rows, "Relayed outbox rows older than a day deleted."),
                    Err(error) => tracing::warn!(%error, "Pruning the outbox failed; will retry."),
                }
            }
            let stepped = tokio::select! {
                () = &mut shutdown => return,
                stepped = self.step() => stepped,
            };
            let pause = match stepped {
                Ok(0) => IDLE_POLL,
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "Outbox relay failed; will retry.");
                    let pause = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    pause
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = self.store.committed.notified(), if pause == IDLE_POLL => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
