//! `notify_queue` and `notify_digests` on the embedded store.

use patchbay_bus::Outgoing;
use patchbay_model::Envelope;
use patchbay_store::{EmbeddedBus, StoreError};
use rusqlite::{OptionalExtension as _, params};

use crate::now;

/// A kept message waiting for its rule.
pub(crate) struct Row {
    pub(crate) message_id: String,
    pub(crate) wire: Vec<u8>,
    pub(crate) attempts: u32,
    pub(crate) next_at: i64,
}

/// Keeps `env` for each of `rules`, once per (rule, message), after what each already keeps.
pub(crate) async fn keep(bus: &EmbeddedBus, rules: Vec<String>, env: &Envelope) -> Result<(), StoreError> {
    let (id, topic, at, wire) = (env.id.to_string(), env.topic.as_str().to_string(), env.sent_at.as_micros(), env.to_wire());
    bus.db()
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

fn rows(stmt: &mut rusqlite::CachedStatement<'_>, args: impl rusqlite::Params) -> rusqlite::Result<Vec<Row>> {
    stmt.query_map(args, |r| Ok(Row { message_id: r.get(0)?, wire: r.get(1)?, attempts: r.get(2)?, next_at: r.get(3)? }))?.collect()
}

/// A rule's undelivered messages, in order.
pub(crate) async fn pending(bus: &EmbeddedBus, rule: &str, limit: u32) -> Result<Vec<Row>, StoreError> {
    let rule = rule.to_string();
    bus.db()
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT message_id, wire, attempts, next_at FROM notify_queue WHERE rule = ?1 AND state IN ('pending', 'sending')
                 ORDER BY pos LIMIT ?2",
            )?;
            Ok(rows(&mut stmt, params![rule, limit])?)
        })
        .await
}

/// A rule's undelivered messages published before `before` (unix microseconds), in order.
pub(crate) async fn waiting_before(bus: &EmbeddedBus, rule: &str, before: i64) -> Result<Vec<Row>, StoreError> {
    let rule = rule.to_string();
    bus.db()
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT message_id, wire, attempts, next_at FROM notify_queue WHERE rule = ?1 AND state = 'pending' AND sent_at < ?2
                 ORDER BY pos LIMIT 10000",
            )?;
            Ok(rows(&mut stmt, params![rule, before])?)
        })
        .await
}

async fn set(bus: &EmbeddedBus, sql: &'static str, rule: &str, id: &str, a: i64, b: Option<String>) -> Result<(), StoreError> {
    let (rule, id) = (rule.to_string(), id.to_string());
    bus.db().write(move |tx| Ok(tx.prepare_cached(sql)?.execute(params![rule, id, a, b]).map(|_| ())?)).await
}

/// Marks a message as being sent (committed before the first byte goes out).
pub(crate) async fn mark_sending(bus: &EmbeddedBus, rule: &str, id: &str) -> Result<(), StoreError> {
    let (rule, id) = (rule.to_string(), id.to_string());
    bus.db()
        .write(move |tx| {
            tx.prepare_cached("UPDATE notify_queue SET state = 'sending' WHERE rule = ?1 AND message_id = ?2")?
                .execute(params![rule, id])?;
            Ok(())
        })
        .await
}

/// Marks a message delivered.
pub(crate) async fn delivered(bus: &EmbeddedBus, rule: &str, id: &str) -> Result<(), StoreError> {
    set(
        bus,
        "UPDATE notify_queue SET state = 'delivered', delivered_at = ?3, error = ?4 WHERE rule = ?1 AND message_id = ?2",
        rule,
        id,
        now(),
        None,
    )
    .await
}

/// Puts a message back to wait until `at`, saying why.
pub(crate) async fn retry(bus: &EmbeddedBus, rule: &str, id: &str, at: i64, why: &str) -> Result<(), StoreError> {
    set(
        bus,
        "UPDATE notify_queue SET state = 'pending', attempts = attempts + 1, next_at = ?3, error = ?4 WHERE rule = ?1 AND message_id = ?2",
        rule,
        id,
        at,
        Some(why.to_string()),
    )
    .await
}

/// Sets a message aside for good, with why, and announces it (in the same transaction).
pub(crate) async fn dead(bus: &EmbeddedBus, rule: &str, id: &str, why: &str, out: Option<Outgoing>) -> Result<(), StoreError> {
    let (rule, id, why, publisher) = (rule.to_string(), id.to_string(), why.to_string(), bus.clone());
    bus.db()
        .write(move |tx| {
            tx.prepare_cached(
                "UPDATE notify_queue SET state = 'dead', attempts = attempts + 1, error = ?3 WHERE rule = ?1 AND message_id = ?2",
            )?
            .execute(params![rule, id, why])?;
            if let Some(out) = out {
                publisher.publish_in(tx, vec![out])?;
            }
            Ok(())
        })
        .await
}

/// After a stop: sends over SMTP that were under way are not made again (the server may have
/// taken them), they are dead-lettered; to the maildir or a webhook (whose receiver drops a
/// repeated delivery id) they are simply made again.
pub(crate) async fn abandon_smtp_sends(bus: &EmbeddedBus, smtp_rules: Vec<String>) -> Result<(), StoreError> {
    bus.db()
        .write(move |tx| {
            let mut dead = tx.prepare_cached(
                "UPDATE notify_queue SET state = 'dead', error = 'patchbay stopped while the SMTP server was taking this; not resent'
                 WHERE state = 'sending' AND rule = ?1",
            )?;
            for rule in &smtp_rules {
                dead.execute([rule])?;
            }
            tx.execute("UPDATE notify_queue SET state = 'pending' WHERE state = 'sending'", [])?;
            Ok(())
        })
        .await
}

/// The state of a rule's digest due at `due`, when it may be tried again, and its attempts.
pub(crate) async fn digest_state(bus: &EmbeddedBus, rule: &str, due: i64) -> Result<Option<(String, i64, u32)>, StoreError> {
    let rule = rule.to_string();
    bus.db()
        .read(move |c| {
            Ok(c.query_row("SELECT state, next_at, attempts FROM notify_digests WHERE rule = ?1 AND due = ?2", params![rule, due], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
        })
        .await
}

/// Records the digest due at `due` sent, and the messages it carried digested, at once.
pub(crate) async fn digest_sent(bus: &EmbeddedBus, rule: &str, due: i64, ids: Vec<String>) -> Result<(), StoreError> {
    let rule = rule.to_string();
    bus.db()
        .write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO notify_digests (rule, due, state, events, sent_at, next_at) VALUES (?1, ?2, 'sent', ?3, ?4, 0)
                 ON CONFLICT (rule, due) DO UPDATE SET state = 'sent', events = ?3, sent_at = ?4",
            )?
            .execute(params![rule, due, ids.len() as i64, now()])?;
            let mut mark = tx.prepare_cached(
                "UPDATE notify_queue SET state = 'delivered', delivered_at = ?3, digest = ?4 WHERE rule = ?1 AND message_id = ?2",
            )?;
            for id in &ids {
                mark.execute(params![rule, id, now(), due])?;
            }
            Ok(())
        })
        .await
}

/// The digest due at `due` waits until `at`, saying why.
pub(crate) async fn digest_wait(bus: &EmbeddedBus, rule: &str, due: i64, at: i64, why: &str) -> Result<(), StoreError> {
    let (rule, why) = (rule.to_string(), why.to_string());
    bus.db()
        .write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO notify_digests (rule, due, state, events, next_at, error, attempts) VALUES (?1, ?2, 'waiting', 0, ?3, ?4, 1)
                 ON CONFLICT (rule, due) DO UPDATE SET state = 'waiting', next_at = ?3, error = ?4, attempts = attempts + 1",
            )?
            .execute(params![rule, due, at, why])?;
            Ok(())
        })
        .await
}

/// The digest due at `due` is given up: its messages are dead-lettered with it.
pub(crate) async fn digest_dead(
    bus: &EmbeddedBus,
    rule: &str,
    due: i64,
    ids: Vec<String>,
    why: &str,
    out: Option<Outgoing>,
) -> Result<(), StoreError> {
    let (rule, why, publisher) = (rule.to_string(), why.to_string(), bus.clone());
    bus.db()
        .write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO notify_digests (rule, due, state, events, next_at, error) VALUES (?1, ?2, 'dead', ?3, 0, ?4)
                 ON CONFLICT (rule, due) DO UPDATE SET state = 'dead', error = ?4",
            )?
            .execute(params![rule, due, ids.len() as i64, why])?;
            let mut mark = tx.prepare_cached("UPDATE notify_queue SET state = 'dead', error = ?3 WHERE rule = ?1 AND message_id = ?2")?;
            for id in &ids {
                mark.execute(params![rule, id, why])?;
            }
            if let Some(out) = out {
                publisher.publish_in(tx, vec![out])?;
            }
            Ok(())
        })
        .await
}
