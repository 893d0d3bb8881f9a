//! The history on PostgreSQL (`store.url`): one table, `history`, holds each message's wire
//! form beside the fields the filters read, filled by the RabbitMQ recorder (`record`); several
//! recorders may share it (a message is kept once, by id). The rules are the SQLite side's:
//! the row's fields ([`crate::row`]), time monotone in store order (recorders take turns under
//! an advisory lock, so positions and times rise together), topic patterns expanded against the
//! topics seen, the same WHERE clause ([`crate::sql_filter`]). Text (`contains`) is a phrase
//! query on a `tsvector` of the body's strings, split into words as FTS5's unicode61 splits
//! them ([`words`], then the `simple` configuration, lower-cased), `job` a column.

use std::time::Duration;

use async_trait::async_trait;
use patchbay_model::Envelope;
use patchbay_store::StoreError;
use patchbay_store_pg::{PgStore, text};
use rusqlite::types::Value as Sql;
use tokio_postgres::types::ToSql;

use crate::{HistoryStore, Order, Page, Plan, Query, row, sql_filter};

/// The lock recorders take turns under ("history" in ASCII).
const RECORD_LOCK: i64 = 0x0068_6973_746f_7279;
/// Messages looked at per prune step.
const PRUNE_BATCH: i64 = 5000;

/// The port's error for a PostgreSQL failure (the pool's or a statement's).
fn pg(e: impl Into<patchbay_store_pg::PgError>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// Text as FTS5's unicode61 tokenizer splits it: letters and digits kept, everything else a
/// word break. PostgreSQL's own parser would keep `foo.c`, `dev@example.org` or `a/b` whole,
/// so `contains=foo` would find less than on SQLite. (unicode61 also folds diacritics; this
/// does not.)
fn words(s: &str) -> String {
    s.chars().map(|c| if c.is_alphanumeric() { c } else { ' ' }).collect()
}

/// Keeps `envelopes`, in order, each once (a redelivery or a second recorder changes nothing);
/// returns how many were new, and how many of those say a mail was stored (counted in the
/// `mails_stored` metric once committed).
pub async fn record(store: &PgStore, envelopes: &[Envelope]) -> Result<(usize, u64), StoreError> {
    let mut client = store.client().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECORD_LOCK]).await.map_err(pg)?;
    let mut last: i64 =
        tx.query_one("SELECT coalesce((SELECT ts FROM history ORDER BY pos DESC LIMIT 1), 0)", &[]).await.map_err(pg)?.get(0);
    let now = patchbay_model::Timestamp::now().as_micros();
    let mail_topic = format!(".{}", <patchbay_model::MailReceived as patchbay_model::Body>::TOPIC);
    let (mut new, mut mails) = (0, 0);
    for envelope in envelopes {
        let wire = envelope.to_wire();
        let mut r = row(envelope.topic.as_str(), &wire);
        r.ts = r.ts.max(last).min(now.max(last));
        let inserted = tx
            .execute(
                "INSERT INTO history (id, wire, ts, topic, category, service, instance, seq, series, project, job, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, to_tsvector('simple', $12)) ON CONFLICT (id) DO NOTHING",
                &[
                    &envelope.id.to_string(),
                    &wire,
                    &r.ts,
                    &r.topic,
                    &r.category,
                    &r.service,
                    &r.instance,
                    &r.seq,
                    &r.series,
                    &r.project.as_deref().map(text),
                    &r.job.as_deref().map(text),
                    &words(&r.text),
                ],
            )
            .await
            .map_err(pg)?;
        if inserted == 1 {
            last = r.ts;
            new += 1;
            mails += u64::from(r.topic.ends_with(&mail_topic));
            tx.execute("INSERT INTO history_topics (topic) VALUES ($1) ON CONFLICT DO NOTHING", &[&r.topic]).await.map_err(pg)?;
        }
    }
    tx.commit().await.map_err(pg)?;
    patchbay_metrics::metrics().mails_stored.inc_by(mails);
    Ok((new, mails))
}

/// Deletes what is older than `keep` (history time), in steps, always keeping the newest
/// message (the time the next one is held to); returns how many went.
pub async fn prune(store: &PgStore, keep: Duration) -> Result<u64, StoreError> {
    let cutoff = patchbay_model::Timestamp::now().as_micros() - keep.as_micros().min(i64::MAX as u128) as i64;
    let client = store.client().await.map_err(pg)?;
    let mut total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM history WHERE pos IN (SELECT pos FROM history WHERE ts < $1
                 AND pos < (SELECT max(pos) FROM history) ORDER BY pos LIMIT $2)",
                &[&cutoff, &PRUNE_BATCH],
            )
            .await
            .map_err(pg)?;
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// `sql` with its `?`s numbered `$first`, `$first + 1`, … (the WHERE clauses hold no literal `?`).
fn numbered(sql: &str, first: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = first;
    for c in sql.chars() {
        if c == '?' {
            out.push_str(&format!("${n}"));
            n += 1;
        } else {
            out.push(c);
        }
    }
    out
}

fn param(v: &Sql) -> Box<dyn ToSql + Sync + Send> {
    match v {
        Sql::Integer(i) => Box::new(*i),
        Sql::Text(s) => Box::new(s.clone()),
        other => unreachable!("history filters are integers and text, not {other:?}"),
    }
}

#[async_trait]
impl HistoryStore for PgStore {
    async fn search(&self, q: Query) -> Result<Page, StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        // One snapshot, so the total and the page agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let range = if q.start.is_some() || q.end.is_some() {
            let lo = match q.start {
                None => 0,
                Some(s) => {
                    match tx.query_opt("SELECT pos FROM history WHERE ts >= $1 ORDER BY ts, pos LIMIT 1", &[&s]).await.map_err(pg)? {
                        Some(r) => r.get(0),
                        None => return Ok(Page { total: 0, messages: vec![] }),
                    }
                }
            };
            let hi = match q.end {
                None => i64::MAX,
                Some(e) => {
                    match tx
                        .query_opt("SELECT pos FROM history WHERE ts < $1 ORDER BY ts DESC, pos DESC LIMIT 1", &[&e])
                        .await
                        .map_err(pg)?
                    {
                        Some(r) => r.get(0),
                        None => return Ok(Page { total: 0, messages: vec![] }),
                    }
                }
            };
            if lo > hi {
                return Ok(Page { total: 0, messages: vec![] });
            }
            Some((lo, hi))
        } else {
            None
        };
        let known: Vec<String> = if Plan::needs_topics(&q) {
            tx.query("SELECT topic FROM history_topics", &[]).await.map_err(pg)?.iter().map(|r| r.get(0)).collect()
        } else {
            Vec::new()
        };
        let plan = Plan::with_topics(&q, range, &known);
        let replay = q.seq_from.is_some() || q.seq_to.is_some();
        let (mut filter, mut args) = sql_filter(&q, &plan, false);
        if !replay {
            // SQLite answers these in its full-text index; here they are two more conditions.
            let mut extra: Vec<String> = Vec::new();
            for phrase in &q.contains {
                extra.push("body @@ phraseto_tsquery('simple', ?)".into());
                args.push(Sql::Text(words(phrase)));
            }
            if !q.jobs.is_empty() {
                extra.push(format!("job IN ({})", vec!["?"; q.jobs.len()].join(", ")));
                args.extend(q.jobs.iter().map(|j| Sql::Text(text(j).into_owned())));
            }
            if !extra.is_empty() {
                let joined = extra.join(" AND ");
                filter = if filter.is_empty() { format!("WHERE {joined}") } else { format!("{filter} AND {joined}") };
            }
        }
        let filter = numbered(&filter, 1);
        let params: Vec<Box<dyn ToSql + Sync + Send>> = args.iter().map(param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let total: i64 = tx.query_one(&format!("SELECT count(*) FROM history {filter}"), &refs).await.map_err(pg)?.get(0);
        let dir = if q.order == Order::Asc { "ASC" } else { "DESC" };
        let key = if replay { "seq" } else { "pos" };
        let (limit, offset) = (i64::from(q.rows_per_page), i64::from(q.page - 1) * i64::from(q.rows_per_page));
        let n = refs.len();
        let sql = format!("SELECT wire FROM history {filter} ORDER BY {key} {dir}, pos {dir} LIMIT ${} OFFSET ${}", n + 1, n + 2);
        let mut refs = refs;
        refs.push(&limit);
        refs.push(&offset);
        let messages = tx.query(&sql, &refs).await.map_err(pg)?.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect();
        tx.commit().await.map_err(pg)?;
        Ok(Page { total: total as u64, messages })
    }

    async fn message(&self, id: String) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(client.query_opt("SELECT wire FROM history WHERE id = $1", &[&id]).await.map_err(pg)?.map(|r| r.get(0)))
    }

    async fn latest(&self, topic: String, since: i64, limit: u32) -> Result<Vec<Vec<u8>>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let rows = client
            .query(
                "SELECT wire FROM history WHERE topic = $1 AND ts >= $2 ORDER BY pos DESC LIMIT $3",
                &[&topic, &since, &i64::from(limit)],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(super::numbered("WHERE a IN (?, ?) AND b = ?", 1), "WHERE a IN ($1, $2) AND b = $3");
        assert_eq!(super::numbered("x", 4), "x");
    }
}
