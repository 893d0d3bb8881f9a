//! `notify_queue`, `notify_digests` and `notify_rules` on either store: one statement text
//! each where the two agree (`?N`, `$N` on PostgreSQL), the store's own where they do not.

use async_trait::async_trait;
use patchbay_bus::Outgoing;
use patchbay_model::Envelope;
use patchbay_model::view::NotifyDead;
use patchbay_store::{EmbeddedBus, StoreError};
use patchbay_store_pg::{PgStore, dollars};
use rusqlite::{OptionalExtension as _, params};

use crate::now;

/// A kept message waiting for its rule.
pub(crate) struct Row {
    pub(crate) message_id: String,
    pub(crate) wire: Vec<u8>,
    pub(crate) attempts: u32,
    pub(crate) next_at: i64,
}

/// Held while this process is the one that delivers (see [`NotifyDb::lead`]).
#[async_trait]
pub(crate) trait Lead: Send + Sync {
    /// Whether the lead may have passed to another process.
    async fn lost(&self) -> bool;
}

/// The notifications' store, whichever it is.
#[async_trait]
pub(crate) trait NotifyDb: Send + Sync {
    /// Keeps `env` for each of `rules`, once per (rule, message), after what each already keeps.
    async fn keep(&self, rules: Vec<String>, env: &Envelope) -> Result<(), StoreError>;
    /// A rule's undelivered messages, in order.
    async fn pending(&self, rule: &str, limit: u32) -> Result<Vec<Row>, StoreError>;
    /// A rule's undelivered messages published before `before` (unix microseconds), in order.
    async fn waiting_before(&self, rule: &str, before: i64) -> Result<Vec<Row>, StoreError>;
    /// Runs one of the updates below on (rule, message id) with two more values.
    async fn set(&self, sql: &'static str, rule: &str, id: &str, a: i64, b: Option<String>) -> Result<(), StoreError>;
    /// Sets a message aside for good, with why, and announces it (in the same transaction).
    async fn dead(&self, rule: &str, id: &str, why: &str, out: Option<Outgoing>) -> Result<(), StoreError>;
    /// After a stop: sends over SMTP that were under way are not made again (the server may
    /// have taken them), they are dead-lettered; the others are simply made again.
    async fn abandon_smtp_sends(&self, smtp_rules: Vec<String>) -> Result<(), StoreError>;
    /// The state of a rule's digest due at `due`, when it may be tried again, and its attempts.
    async fn digest_state(&self, rule: &str, due: i64) -> Result<Option<(String, i64, u32)>, StoreError>;
    /// Records the digest due at `due` sent, and the messages it carried digested, at once.
    async fn digest_sent(&self, rule: &str, due: i64, ids: Vec<String>) -> Result<(), StoreError>;
    /// The digest due at `due` waits until `at`, saying why.
    async fn digest_wait(&self, rule: &str, due: i64, at: i64, why: &str) -> Result<(), StoreError>;
    /// The digest due at `due` is given up: its messages are dead-lettered with it.
    async fn digest_dead(&self, rule: &str, due: i64, ids: Vec<String>, why: &str, out: Option<Outgoing>) -> Result<(), StoreError>;
    /// The rules added over HTTP: name, rule as written (JSON), who added it, when (unix
    /// microseconds); oldest first.
    async fn stored_rules(&self) -> Result<Vec<(String, String, String, i64)>, StoreError>;
    /// Kept messages counted by (rule, state).
    async fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError>;
    /// Adds a rule (`false`: the name is taken), announcing `out` with it.
    async fn add_rule(&self, name: String, text: String, by: String, out: Option<Outgoing>) -> Result<bool, StoreError>;
    /// Removes a rule and what it had left to send (`false`: none of that name), announcing `out`.
    async fn remove_rule(&self, name: String, out: Option<Outgoing>) -> Result<bool, StoreError>;
    /// The deliveries given up, newest first, of `rule` or all.
    async fn given_up(&self, rule: Option<String>, limit: u32) -> Result<Vec<NotifyDead>, StoreError>;
    /// A given-up delivery back in its queue (`false`: no such one).
    async fn requeue(&self, rule: &str, id: &str) -> Result<bool, StoreError>;
    /// The lead of delivering, when this process may take it (`None`: another holds it).
    async fn lead(&self) -> Result<Option<Box<dyn Lead>>, StoreError>;
}

const PENDING: &str = "SELECT message_id, wire, attempts, next_at FROM notify_queue WHERE rule = ?1 AND state IN ('pending', 'sending')
     ORDER BY pos LIMIT ?2";
const WAITING_BEFORE: &str =
    "SELECT message_id, wire, attempts, next_at FROM notify_queue WHERE rule = ?1 AND state = 'pending' AND sent_at < ?2
     ORDER BY pos LIMIT 10000";
/// Marks a message as being sent (committed before the first byte goes out).
/// (`?3` 0 and `?4` null: a send under way waits for nothing.)
pub(crate) const SENDING: &str =
    "UPDATE notify_queue SET state = 'sending', next_at = ?3, error = coalesce(?4, error) WHERE rule = ?1 AND message_id = ?2";
/// Marks a message delivered.
pub(crate) const DELIVERED: &str =
    "UPDATE notify_queue SET state = 'delivered', delivered_at = ?3, error = ?4 WHERE rule = ?1 AND message_id = ?2";
/// Puts a message back to wait until `?3`, saying why.
pub(crate) const RETRY: &str =
    "UPDATE notify_queue SET state = 'pending', attempts = attempts + 1, next_at = ?3, error = ?4 WHERE rule = ?1 AND message_id = ?2";
const DEAD: &str = "UPDATE notify_queue SET state = 'dead', attempts = attempts + 1, error = ?3 WHERE rule = ?1 AND message_id = ?2";
const ABANDON: &str = "UPDATE notify_queue SET state = 'dead', error = 'patchbay stopped while the SMTP server was taking this; not resent'
     WHERE state = 'sending' AND rule = ?1";
const RESEND: &str = "UPDATE notify_queue SET state = 'pending' WHERE state = 'sending'";
const DIGEST_STATE: &str = "SELECT state, next_at, attempts FROM notify_digests WHERE rule = ?1 AND due = ?2";
const DIGEST_SENT: &str = "INSERT INTO notify_digests (rule, due, state, events, sent_at, next_at) VALUES (?1, ?2, 'sent', ?3, ?4, 0)
     ON CONFLICT (rule, due) DO UPDATE SET state = 'sent', events = ?3, sent_at = ?4";
const DIGESTED: &str = "UPDATE notify_queue SET state = 'delivered', delivered_at = ?3, digest = ?4 WHERE rule = ?1 AND message_id = ?2";
const DIGEST_WAIT: &str =
    "INSERT INTO notify_digests (rule, due, state, events, next_at, error, attempts) VALUES (?1, ?2, 'waiting', 0, ?3, ?4, 1)
     ON CONFLICT (rule, due) DO UPDATE SET state = 'waiting', next_at = ?3, error = ?4, attempts = notify_digests.attempts + 1";
const DIGEST_DEAD: &str = "INSERT INTO notify_digests (rule, due, state, events, next_at, error) VALUES (?1, ?2, 'dead', ?3, 0, ?4)
     ON CONFLICT (rule, due) DO UPDATE SET state = 'dead', error = ?4";
const DEAD_WITH_DIGEST: &str = "UPDATE notify_queue SET state = 'dead', error = ?3 WHERE rule = ?1 AND message_id = ?2";
const RULES: &str = "SELECT name, rule, created_by, created_at FROM notify_rules ORDER BY created_at, name";
const COUNTS: &str = "SELECT rule, state, count(*) FROM notify_queue GROUP BY rule, state";
const ADD_RULE: &str =
    "INSERT INTO notify_rules (name, rule, created_by, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING";
const REMOVE_RULE: &str = "DELETE FROM notify_rules WHERE name = ?1";
/// Delivered and given-up rows stay, as the rule's record; nothing more goes out (and a rule
/// added later under the name does not inherit what a collector kept after the removal).
const DROP_WAITING: &str = "DELETE FROM notify_queue WHERE rule = ?1 AND state IN ('pending', 'sending')";
const REQUEUE: &str = "UPDATE notify_queue SET state = 'pending', attempts = 0, next_at = 0, error = NULL
     WHERE rule = ?1 AND message_id = ?2 AND state = 'dead'";
const GIVEN_UP: &str = "SELECT rule, message_id, topic, error, attempts, sent_at FROM notify_queue
     WHERE state = 'dead' AND (?1 IS NULL OR rule = ?1) ORDER BY sent_at DESC, pos DESC LIMIT ?2";

fn micros() -> i64 {
    patchbay_model::Timestamp::now().as_micros()
}

/// On the embedded store, the process holding `<data>/locks/notify-deliver.lock` delivers
/// (`serve`, or one `patchbay run notify` on the data directory); the lock is the file's, freed
/// when the process ends however it ends.
struct Alone(#[allow(dead_code)] std::fs::File);

#[async_trait]
impl Lead for Alone {
    async fn lost(&self) -> bool {
        false
    }
}

fn rows(stmt: &mut rusqlite::CachedStatement<'_>, args: impl rusqlite::Params) -> rusqlite::Result<Vec<Row>> {
    stmt.query_map(args, |r| Ok(Row { message_id: r.get(0)?, wire: r.get(1)?, attempts: r.get(2)?, next_at: r.get(3)? }))?.collect()
}

#[async_trait]
impl NotifyDb for EmbeddedBus {
    async fn keep(&self, rules: Vec<String>, env: &Envelope) -> Result<(), StoreError> {
        let (id, topic, at, wire) = (env.id.to_string(), env.topic.as_str().to_string(), env.sent_at.as_micros(), env.to_wire());
        self.db()
            .write(move |tx| {
                for rule in &rules {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO notify_queue (rule, message_id, pos, sent_at, topic, wire)
                         VALUES (?1, ?2, (SELECT coalesce(max(pos), 0) + 1 FROM notify_queue WHERE rule = ?1), ?3, ?4, ?5)",
                    )?
                    .execute(params![rule, id, at, topic, wire])?;
                }
                Ok(())
            })
            .await
    }

    async fn pending(&self, rule: &str, limit: u32) -> Result<Vec<Row>, StoreError> {
        let rule = rule.to_string();
        self.db().read(move |c| Ok(rows(&mut c.prepare_cached(PENDING)?, params![rule, limit])?)).await
    }

    async fn waiting_before(&self, rule: &str, before: i64) -> Result<Vec<Row>, StoreError> {
        let rule = rule.to_string();
        self.db().read(move |c| Ok(rows(&mut c.prepare_cached(WAITING_BEFORE)?, params![rule, before])?)).await
    }

    async fn set(&self, sql: &'static str, rule: &str, id: &str, a: i64, b: Option<String>) -> Result<(), StoreError> {
        let (rule, id) = (rule.to_string(), id.to_string());
        self.db().write(move |tx| Ok(tx.prepare_cached(sql)?.execute(params![rule, id, a, b]).map(|_| ())?)).await
    }

    async fn dead(&self, rule: &str, id: &str, why: &str, out: Option<Outgoing>) -> Result<(), StoreError> {
        let (rule, id, why, publisher) = (rule.to_string(), id.to_string(), why.to_string(), self.clone());
        self.db()
            .write(move |tx| {
                tx.prepare_cached(DEAD)?.execute(params![rule, id, why])?;
                publisher.publish_in(tx, out.into_iter().collect())?;
                Ok(())
            })
            .await
    }

    async fn abandon_smtp_sends(&self, smtp_rules: Vec<String>) -> Result<(), StoreError> {
        self.db()
            .write(move |tx| {
                let mut dead = tx.prepare_cached(ABANDON)?;
                for rule in &smtp_rules {
                    dead.execute([rule])?;
                }
                tx.execute(RESEND, [])?;
                Ok(())
            })
            .await
    }

    async fn digest_state(&self, rule: &str, due: i64) -> Result<Option<(String, i64, u32)>, StoreError> {
        let rule = rule.to_string();
        self.db()
            .read(move |c| Ok(c.query_row(DIGEST_STATE, params![rule, due], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?))
            .await
    }

    async fn digest_sent(&self, rule: &str, due: i64, ids: Vec<String>) -> Result<(), StoreError> {
        let rule = rule.to_string();
        self.db()
            .write(move |tx| {
                tx.prepare_cached(DIGEST_SENT)?.execute(params![rule, due, ids.len() as i64, now()])?;
                let mut mark = tx.prepare_cached(DIGESTED)?;
                for id in &ids {
                    mark.execute(params![rule, id, now(), due])?;
                }
                Ok(())
            })
            .await
    }

    async fn digest_wait(&self, rule: &str, due: i64, at: i64, why: &str) -> Result<(), StoreError> {
        let (rule, why) = (rule.to_string(), why.to_string());
        self.db().write(move |tx| Ok(tx.prepare_cached(DIGEST_WAIT)?.execute(params![rule, due, at, why]).map(|_| ())?)).await
    }

    async fn digest_dead(&self, rule: &str, due: i64, ids: Vec<String>, why: &str, out: Option<Outgoing>) -> Result<(), StoreError> {
        let (rule, why, publisher) = (rule.to_string(), why.to_string(), self.clone());
        self.db()
            .write(move |tx| {
                tx.prepare_cached(DIGEST_DEAD)?.execute(params![rule, due, ids.len() as i64, why])?;
                let mut mark = tx.prepare_cached(DEAD_WITH_DIGEST)?;
                for id in &ids {
                    mark.execute(params![rule, id, why])?;
                }
                publisher.publish_in(tx, out.into_iter().collect())?;
                Ok(())
            })
            .await
    }

    async fn stored_rules(&self) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        self.db()
            .read(|c| {
                let mut stmt = c.prepare_cached(RULES)?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.db()
            .read(|c| {
                let mut stmt = c.prepare_cached(COUNTS)?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn add_rule(&self, name: String, text: String, by: String, out: Option<Outgoing>) -> Result<bool, StoreError> {
        let publisher = self.clone();
        self.db()
            .write(move |tx| {
                let added = tx.prepare_cached(ADD_RULE)?.execute(params![name, text, by, micros()])? == 1;
                if added {
                    tx.prepare_cached(DROP_WAITING)?.execute([&name])?;
                    publisher.publish_in(tx, out.into_iter().collect())?;
                }
                Ok(added)
            })
            .await
    }

    async fn remove_rule(&self, name: String, out: Option<Outgoing>) -> Result<bool, StoreError> {
        let publisher = self.clone();
        self.db()
            .write(move |tx| {
                let removed = tx.prepare_cached(REMOVE_RULE)?.execute([&name])? == 1;
                if removed {
                    tx.prepare_cached(DROP_WAITING)?.execute([&name])?;
                    publisher.publish_in(tx, out.into_iter().collect())?;
                }
                Ok(removed)
            })
            .await
    }

    async fn given_up(&self, rule: Option<String>, limit: u32) -> Result<Vec<NotifyDead>, StoreError> {
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(GIVEN_UP)?;
                let rows = stmt
                    .query_map(params![rule, limit], |r| {
                        Ok(NotifyDead {
                            rule: r.get(0)?,
                            message_id: r.get(1)?,
                            topic: r.get(2)?,
                            error: r.get(3)?,
                            attempts: r.get(4)?,
                            sent_at: r.get(5)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    async fn requeue(&self, rule: &str, id: &str) -> Result<bool, StoreError> {
        let (rule, id) = (rule.to_string(), id.to_string());
        self.db().write(move |tx| Ok(tx.prepare_cached(REQUEUE)?.execute(params![rule, id])? == 1)).await
    }

    async fn lead(&self) -> Result<Option<Box<dyn Lead>>, StoreError> {
        let dir = self.db().path().parent().unwrap_or(std::path::Path::new(".")).join("locks");
        let path = dir.join("notify-deliver.lock");
        let io = |source| StoreError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(Alone(file)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

fn pg(e: impl Into<patchbay_store_pg::PgError>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// Any number, the same in every process: the advisory lock of the one delivering process.
const DELIVERY_LOCK: i64 = 0x6e6f_7469_6679_0001; // "notify"

#[async_trait]
impl Lead for patchbay_store_pg::Leader {
    async fn lost(&self) -> bool {
        self.is_lost().await
    }
}

fn pg_rows(rows: Vec<tokio_postgres::Row>) -> Vec<Row> {
    rows.iter()
        .map(|r| Row {
            message_id: r.get(0),
            wire: r.get(1),
            attempts: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
            next_at: r.get(3),
        })
        .collect()
}

#[async_trait]
impl NotifyDb for PgStore {
    async fn keep(&self, rules: Vec<String>, env: &Envelope) -> Result<(), StoreError> {
        let (id, topic, at, wire) = (env.id.to_string(), env.topic.as_str().to_string(), env.sent_at.as_micros(), env.to_wire());
        let mut client = self.client().await.map_err(pg)?;
        let tx = self.begin(&mut client).await.map_err(pg)?;
        for rule in &rules {
            // `pos` from the table's sequence: the order of keeping.
            tx.sql()
                .execute(
                    "INSERT INTO notify_queue (rule, message_id, sent_at, topic, wire) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[rule, &id, &at, &topic, &wire],
                )
                .await
                .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn pending(&self, rule: &str, limit: u32) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(pg_rows(client.query(&dollars(PENDING), &[&rule, &i64::from(limit)]).await.map_err(pg)?))
    }

    async fn waiting_before(&self, rule: &str, before: i64) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(pg_rows(client.query(&dollars(WAITING_BEFORE), &[&rule, &before]).await.map_err(pg)?))
    }

    async fn set(&self, sql: &'static str, rule: &str, id: &str, a: i64, b: Option<String>) -> Result<(), StoreError> {
        let client = self.client().await.map_err(pg)?;
        client.execute(&dollars(sql), &[&rule, &id, &a, &b]).await.map_err(pg)?;
        Ok(())
    }

    async fn dead(&self, rule: &str, id: &str, why: &str, out: Option<Outgoing>) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let mut tx = self.begin(&mut client).await.map_err(pg)?;
        tx.sql().execute(&dollars(DEAD), &[&rule, &id, &why]).await.map_err(pg)?;
        tx.publish(out.into_iter().collect()).await.map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn abandon_smtp_sends(&self, smtp_rules: Vec<String>) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let tx = self.begin(&mut client).await.map_err(pg)?;
        for rule in &smtp_rules {
            tx.sql().execute(&dollars(ABANDON), &[rule]).await.map_err(pg)?;
        }
        tx.sql().execute(RESEND, &[]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn digest_state(&self, rule: &str, due: i64) -> Result<Option<(String, i64, u32)>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let row = client.query_opt(&dollars(DIGEST_STATE), &[&rule, &due]).await.map_err(pg)?;
        Ok(row.map(|r| (r.get(0), r.get(1), u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX))))
    }

    async fn digest_sent(&self, rule: &str, due: i64, ids: Vec<String>) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let tx = self.begin(&mut client).await.map_err(pg)?;
        tx.sql().execute(&dollars(DIGEST_SENT), &[&rule, &due, &(ids.len() as i64), &now()]).await.map_err(pg)?;
        let mark = dollars(DIGESTED);
        for id in &ids {
            tx.sql().execute(&mark, &[&rule, id, &now(), &due]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn digest_wait(&self, rule: &str, due: i64, at: i64, why: &str) -> Result<(), StoreError> {
        let client = self.client().await.map_err(pg)?;
        client.execute(&dollars(DIGEST_WAIT), &[&rule, &due, &at, &why]).await.map_err(pg)?;
        Ok(())
    }

    async fn digest_dead(&self, rule: &str, due: i64, ids: Vec<String>, why: &str, out: Option<Outgoing>) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let mut tx = self.begin(&mut client).await.map_err(pg)?;
        tx.sql().execute(&dollars(DIGEST_DEAD), &[&rule, &due, &(ids.len() as i64), &why]).await.map_err(pg)?;
        let mark = dollars(DEAD_WITH_DIGEST);
        for id in &ids {
            tx.sql().execute(&mark, &[&rule, id, &why]).await.map_err(pg)?;
        }
        tx.publish(out.into_iter().collect()).await.map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn stored_rules(&self) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(client.query(RULES, &[]).await.map_err(pg)?.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    async fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(client.query(COUNTS, &[]).await.map_err(pg)?.iter().map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64)).collect())
    }

    async fn add_rule(&self, name: String, text: String, by: String, out: Option<Outgoing>) -> Result<bool, StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let mut tx = self.begin(&mut client).await.map_err(pg)?;
        let added = tx.sql().execute(&dollars(ADD_RULE), &[&name, &text, &by, &micros()]).await.map_err(pg)? == 1;
        if added {
            tx.sql().execute(&dollars(DROP_WAITING), &[&name]).await.map_err(pg)?;
            tx.publish(out.into_iter().collect()).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(added)
    }

    async fn remove_rule(&self, name: String, out: Option<Outgoing>) -> Result<bool, StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let mut tx = self.begin(&mut client).await.map_err(pg)?;
        let removed = tx.sql().execute(&dollars(REMOVE_RULE), &[&name]).await.map_err(pg)? == 1;
        if removed {
            tx.sql().execute(&dollars(DROP_WAITING), &[&name]).await.map_err(pg)?;
            tx.publish(out.into_iter().collect()).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(removed)
    }

    async fn given_up(&self, rule: Option<String>, limit: u32) -> Result<Vec<NotifyDead>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let sql = dollars(GIVEN_UP).replace("$1 IS NULL", "$1::TEXT IS NULL");
        let rows = client.query(&sql, &[&rule, &i64::from(limit)]).await.map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| NotifyDead {
                rule: r.get(0),
                message_id: r.get(1),
                topic: r.get(2),
                error: r.get(3),
                attempts: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
                sent_at: r.get(5),
            })
            .collect())
    }

    async fn requeue(&self, rule: &str, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(client.execute(&dollars(REQUEUE), &[&rule, &id]).await.map_err(pg)? == 1)
    }

    async fn lead(&self) -> Result<Option<Box<dyn Lead>>, StoreError> {
        Ok(PgStore::lead(self, DELIVERY_LOCK).await.map_err(pg)?.map(|l| Box::new(l) as Box<dyn Lead>))
    }
}
