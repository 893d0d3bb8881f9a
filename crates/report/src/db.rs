//! Where the reporter keeps its reports (`reports`) and reads what it reports on (the mail it
//! answers, the latest results), on either store: one set of statements (`?N`, turned into
//! `$N` for PostgreSQL). A state change that announces something (`report.email.sent`,
//! `report.email.failed`) commits with its message: into the embedded log on SQLite, into the
//! outbox on PostgreSQL. The state changes are conditional (`WHERE state = …`), so reporters
//! on several hosts sharing one PostgreSQL send each report once.

use async_trait::async_trait;
use patchbay_bus::Outgoing;
use patchbay_store::{EmbeddedBus, StoreError};
use patchbay_store_pg::{PgStore, dollars};
use rusqlite::{OptionalExtension, params};

/// A mail a report may answer: the cover letter (slot 0) or patch 1.
pub(crate) struct ThreadMail {
    pub(crate) slot: i64,
    pub(crate) message_id: String,
    pub(crate) raw: Vec<u8>,
    pub(crate) subject: String,
    pub(crate) from: Option<String>,
}

/// The latest result of one (test, arch), as the report lists it.
pub(crate) struct Latest {
    pub(crate) test: String,
    pub(crate) arch: String,
    pub(crate) outcome: String,
    pub(crate) reason: Option<String>,
    pub(crate) duration_ms: i64,
    pub(crate) base: Option<String>,
    pub(crate) job: String,
    pub(crate) excerpt: String,
    pub(crate) flaky: bool,
    pub(crate) pre_existing: bool,
}

/// The reporter's store, whichever it is.
#[async_trait]
pub(crate) trait ReportDb: Send + Sync {
    /// Records the intent to report (the first time) and returns the report's state, resends
    /// and when it was claimed for delivery.
    async fn intent(&self, key: Key, message_id: String, now: i64) -> Result<(String, u32, Option<i64>), StoreError>;
    /// Claims the report for delivery (`intent` → `sending`; with `stale`, a claim a crash left,
    /// made at that time, taken over); whether this reporter got it.
    async fn claim(&self, key: Key, now: i64, stale: Option<Option<i64>>) -> Result<bool, StoreError>;
    /// Whether reporters on other hosts share this store (a claim may then be theirs, alive).
    fn shared(&self) -> bool;
    /// Moves the report from `from` to `to`; whether it was in `from`.
    async fn set_state(&self, key: Key, from: String, to: String, detail: Option<String>) -> Result<bool, StoreError>;
    /// Marks the report failed (from `from`) and announces `out` with it; whether it was in `from`.
    async fn fail(&self, key: Key, from: String, reason: String, out: Outgoing) -> Result<bool, StoreError>;
    /// Marks the report sent and announces `out` with it; whether this call did.
    async fn sent(&self, key: Key, sent: Sent, out: Outgoing) -> Result<bool, StoreError>;
    /// Whether a later version superseded the series.
    async fn superseded(&self, series: i64) -> Result<bool, StoreError>;
    /// The mails it may answer (the cover and patch 1, those it has), in slot order.
    async fn thread_mails(&self, series: i64) -> Result<Vec<ThreadMail>, StoreError>;
    /// The latest result of each (test, arch), the apply test first.
    async fn latest(&self, series: i64, version: u32) -> Result<Vec<Latest>, StoreError>;
}

/// Which report: one per series version and re-test round (0: the version's first).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key {
    pub(crate) series: i64,
    pub(crate) version: u32,
    pub(crate) round: u32,
}

/// How a report went out.
pub(crate) struct Sent {
    pub(crate) at: i64,
    pub(crate) transport: String,
    pub(crate) mail: Vec<u8>,
}

const INTENT: &str = "INSERT INTO reports (series_id, version, message_id, state, transport, created_at, round)
     VALUES (?1, ?2, ?3, 'intent', 'outbox', ?4, ?5) ON CONFLICT DO NOTHING";
const STATE: &str = "SELECT state, resends, claimed_at FROM reports WHERE series_id = ?1 AND version = ?2 AND round = ?3";
const CLAIM: &str = "UPDATE reports SET state = 'sending', claimed_at = ?3 WHERE series_id = ?1 AND version = ?2 AND round = ?6
     AND (state = 'intent' OR (CAST(?5 AS BIGINT) = 1 AND state = 'sending' AND claimed_at IS NOT DISTINCT FROM ?4))";
const SET_STATE: &str = "UPDATE reports SET state = ?4, detail = ?5 WHERE series_id = ?1 AND version = ?2 AND state = ?3 AND round = ?6";
const FAIL: &str = "UPDATE reports SET state = 'failed', detail = ?4 WHERE series_id = ?1 AND version = ?2 AND state = ?3 AND round = ?5";
const SENT: &str = "UPDATE reports SET state = 'sent', transport = ?4, sent_at = ?3, mail = ?5
     WHERE series_id = ?1 AND version = ?2 AND state IN ('intent', 'sending') AND round = ?6";
const SUPERSEDED: &str = "SELECT state = 'superseded' FROM series WHERE uid = ?1";
const THREAD_MAILS: &str =
    "SELECT sm.slot, m.message_id, m.raw, m.subject, m.from_email FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
     WHERE sm.series_id = (SELECT id FROM series WHERE uid = ?1) AND sm.slot IN (0, 1) ORDER BY sm.slot";
const LATEST: &str = "SELECT test, arch, outcome, reason, duration_ms, base, job, excerpt, flaky, pre_existing FROM results r WHERE series_id = ?1 AND version = ?2
     AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)
     ORDER BY test = ?3 DESC, test, arch";

/// The embedded store: the bus is the database, so announcing is `publish_in`.
#[async_trait]
impl ReportDb for EmbeddedBus {
    async fn intent(&self, key: Key, message_id: String, now: i64) -> Result<(String, u32, Option<i64>), StoreError> {
        self.db()
            .write(move |tx| {
                tx.prepare_cached(INTENT)?.execute(params![key.series, key.version, message_id, now, key.round])?;
                Ok(tx.query_row(STATE, params![key.series, key.version, key.round], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?)
            })
            .await
    }

    async fn claim(&self, key: Key, now: i64, stale: Option<Option<i64>>) -> Result<bool, StoreError> {
        let (takeover, at) = (i64::from(stale.is_some()), stale.flatten());
        self.db()
            .write(move |tx| Ok(tx.prepare_cached(CLAIM)?.execute(params![key.series, key.version, now, at, takeover, key.round])? == 1))
            .await
    }

    fn shared(&self) -> bool {
        false
    }

    async fn set_state(&self, key: Key, from: String, to: String, detail: Option<String>) -> Result<bool, StoreError> {
        self.db()
            .write(move |tx| Ok(tx.prepare_cached(SET_STATE)?.execute(params![key.series, key.version, from, to, detail, key.round])? == 1))
            .await
    }

    async fn fail(&self, key: Key, from: String, reason: String, out: Outgoing) -> Result<bool, StoreError> {
        let bus = self.clone();
        self.db()
            .write(move |tx| {
                let changed = tx.prepare_cached(FAIL)?.execute(params![key.series, key.version, from, reason, key.round])? == 1;
                if changed {
                    bus.publish_in(tx, vec![out])?;
                }
                Ok(changed)
            })
            .await
    }

    async fn sent(&self, key: Key, sent: Sent, out: Outgoing) -> Result<bool, StoreError> {
        let bus = self.clone();
        self.db()
            .write(move |tx| {
                let changed =
                    tx.prepare_cached(SENT)?.execute(params![key.series, key.version, sent.at, sent.transport, sent.mail, key.round])? == 1;
                if changed {
                    bus.publish_in(tx, vec![out])?;
                }
                Ok(changed)
            })
            .await
    }

    async fn superseded(&self, series: i64) -> Result<bool, StoreError> {
        self.db().read(move |c| Ok(c.query_row(SUPERSEDED, [series], |r| r.get::<_, bool>(0)).optional()?.unwrap_or(false))).await
    }

    async fn thread_mails(&self, series: i64) -> Result<Vec<ThreadMail>, StoreError> {
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(THREAD_MAILS)?;
                let rows = stmt.query_map([series], |r| {
                    Ok(ThreadMail { slot: r.get(0)?, message_id: r.get(1)?, raw: r.get(2)?, subject: r.get(3)?, from: r.get(4)? })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn latest(&self, series: i64, version: u32) -> Result<Vec<Latest>, StoreError> {
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(LATEST)?;
                let rows = stmt.query_map(params![series, version, patchbay_model::APPLY_TEST], |r| {
                    Ok(Latest {
                        test: r.get(0)?,
                        arch: r.get(1)?,
                        outcome: r.get(2)?,
                        reason: r.get(3)?,
                        duration_ms: r.get(4)?,
                        base: r.get(5)?,
                        job: r.get(6)?,
                        excerpt: r.get(7)?,
                        flaky: r.get(8)?,
                        pre_existing: r.get(9)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }
}

pub(crate) fn pg(e: impl Into<patchbay_store_pg::PgError>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// PostgreSQL: the reports beside ingest's and the aggregator's tables, announcements in the outbox.
#[async_trait]
impl ReportDb for PgStore {
    async fn intent(&self, key: Key, message_id: String, now: i64) -> Result<(String, u32, Option<i64>), StoreError> {
        let client = self.client().await.map_err(pg)?;
        let (series, version, round) = (key.series, i64::from(key.version), i64::from(key.round));
        client.execute(&dollars(INTENT), &[&series, &version, &message_id, &now, &round]).await.map_err(pg)?;
        let row = client.query_one(&dollars(STATE), &[&series, &version, &round]).await.map_err(pg)?;
        Ok((row.get(0), row.get::<_, i64>(1) as u32, row.get(2)))
    }

    async fn claim(&self, key: Key, now: i64, stale: Option<Option<i64>>) -> Result<bool, StoreError> {
        let (takeover, at) = (i64::from(stale.is_some()), stale.flatten());
        let client = self.client().await.map_err(pg)?;
        let (series, version, round) = (key.series, i64::from(key.version), i64::from(key.round));
        Ok(client.execute(&dollars(CLAIM), &[&series, &version, &now, &at, &takeover, &round]).await.map_err(pg)? == 1)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn set_state(&self, key: Key, from: String, to: String, detail: Option<String>) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let (series, version, round) = (key.series, i64::from(key.version), i64::from(key.round));
        let n = client.execute(&dollars(SET_STATE), &[&series, &version, &from, &to, &detail, &round]).await.map_err(pg)?;
        Ok(n == 1)
    }

    async fn fail(&self, key: Key, from: String, reason: String, out: Outgoing) -> Result<bool, StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let mut tx = self.begin(&mut client).await.map_err(pg)?;
        let (series, version, round) = (key.series, i64::from(key.version), i64::from(key.round));
        let changed = tx.sql().execute(&dollars(FAIL), &[&series, &version, &from, &reason, &round]).await.map_err(pg)? == 1;
        if changed {
            tx.publish(vec![out]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(changed)
    }

    async fn sent(&self, key: Key, sent: Sent, out: Outgoing) -> Result<bool, StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let mut tx = self.begin(&mut client).await.map_err(pg)?;
        let (series, version, round) = (key.series, i64::from(key.version), i64::from(key.round));
        let changed =
            tx.sql().execute(&dollars(SENT), &[&series, &version, &sent.at, &sent.transport, &sent.mail, &round]).await.map_err(pg)? == 1;
        if changed {
            tx.publish(vec![out]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(changed)
    }

    async fn superseded(&self, series: i64) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let row = client.query_opt(&dollars(SUPERSEDED), &[&series]).await.map_err(pg)?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn thread_mails(&self, series: i64) -> Result<Vec<ThreadMail>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let rows = client.query(&dollars(THREAD_MAILS), &[&series]).await.map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| ThreadMail { slot: r.get(0), message_id: r.get(1), raw: r.get(2), subject: r.get(3), from: r.get(4) })
            .collect())
    }

    async fn latest(&self, series: i64, version: u32) -> Result<Vec<Latest>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let rows = client.query(&dollars(LATEST), &[&series, &i64::from(version), &patchbay_model::APPLY_TEST]).await.map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| Latest {
                test: r.get(0),
                arch: r.get(1),
                outcome: r.get(2),
                reason: r.get(3),
                duration_ms: r.get(4),
                base: r.get(5),
                job: r.get(6),
                excerpt: r.get(7),
                flaky: r.get(8),
                pre_existing: r.get(9),
            })
            .collect())
    }
}
