//! The aggregator's transactions and the read port on PostgreSQL (`store.url`), where several
//! aggregators may record at once. The rules are the SQLite path's (`lib.rs`); what differs is
//! how concurrent writers are kept apart. SQLite has one writer; here each transaction first
//! locks its series version's `verdicts` row (created on first sight), so transactions on one
//! series version run one after another. The last to record therefore sees every result
//! committed before it, and the verdict is issued exactly once. Other series versions proceed
//! in parallel.

use async_trait::async_trait;
use patchbay_model::view::Cell;
use patchbay_model::{FailureKind, Outcome, ResultWaived, SeriesHead, SeriesVerdict, TestFinished, VerdictKind};
use patchbay_store::StoreError;
use patchbay_store_pg::{PgError, PgStore, PgTx, text};
use patchbay_verdict::{Latest, Required};
use tokio_postgres::types::ToSql;

use crate::{Aggregator, Query, ResultRow, ResultsStore, Round, excerpt_naming_the_patch, label, now, recorded};

/// The port's error for a PostgreSQL failure (the pool's or a statement's).
fn pg(e: impl Into<PgError>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// The latest result of each (test, arch) of a series version, as the policy reads them.
const LATEST: &str = "SELECT test, arch, outcome, waived, reason, retrying, flaky, pre_existing FROM results r WHERE series_id = $1 AND version = $2
     AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)";

/// Records a result and, when that decides it, the verdict (see [`Aggregator::record`]).
pub(crate) async fn record(agg: &Aggregator, store: &PgStore, message_id: &str, r: &TestFinished) -> Result<(), StoreError> {
    let mut client = store.client().await.map_err(pg)?;
    let mut tx = store.begin(&mut client).await.map_err(pg)?;
    let round = Round::of(r);
    let decided = lock(&tx, &round).await?;
    let version = i64::from(r.series.version);
    let previous: Option<(Outcome, bool)> = tx
        .sql()
        .query_opt(
            "SELECT outcome, retrying FROM results WHERE series_id = $1 AND version = $2 AND test = $3 AND arch = $4 ORDER BY id DESC LIMIT 1",
            &[&r.series.id, &version, &r.test, &r.arch],
        )
        .await
        .map_err(pg)?
        .map(|row| (row.get::<_, String>(0).into(), row.get(1)));
    let flaky = crate::flaky(r, previous.as_ref());
    let previous = previous.map(|(o, _)| o);
    let base = r.base.as_ref().map(|b| text(&format!("{} ({})", b.commit, b.reason)).into_owned());
    let excerpt = excerpt_naming_the_patch(&r.excerpt, r.failed_patch.as_deref().filter(|_| r.test == patchbay_model::APPLY_TEST));
    let excerpt = text(&excerpt);
    let duplicate = previous.as_ref() == Some(&r.outcome);
    // A redelivery meets the unique message id and inserts nothing.
    let id: Option<i64> = tx
        .sql()
        .query_opt(
            "INSERT INTO results (message_id, job, series_id, version, project, test, arch, outcome, reason, duration_ms, base, recorded_at, duplicate, excerpt, retrying, flaky, pre_existing, round)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             ON CONFLICT (message_id) DO NOTHING RETURNING id",
            &[
                &message_id,
                &r.job,
                &r.series.id,
                &version,
                &r.series.project,
                &r.test,
                &r.arch,
                &r.outcome.as_str(),
                &r.reason.as_ref().map(FailureKind::as_str),
                &(r.duration_ms as i64),
                &base,
                &now(),
                &duplicate,
                &excerpt.as_ref(),
                &r.retrying,
                &flaky,
                &r.pre_existing,
                &i64::from(r.round),
            ],
        )
        .await
        .map_err(pg)?
        .map(|row| row.get(0));
    let Some(id) = id else { return Ok(()) };
    let mut out = vec![agg.outgoing(&recorded(r, id, previous, flaky))?];
    if let Some(round) = decided
        && let Some(v) = decide(agg, &tx, &round, false).await?
    {
        out.push(agg.outgoing(&v)?);
    }
    tx.publish(out).await.map_err(pg)?;
    tx.commit().await.map_err(pg)
}

/// Waives a result (see [`Aggregator::waive`]).
pub(crate) async fn waive(
    agg: &Aggregator,
    store: &PgStore,
    result: i64,
    comment: String,
    by: String,
) -> Result<Option<ResultWaived>, StoreError> {
    let mut client = store.client().await.map_err(pg)?;
    let mut tx = store.begin(&mut client).await.map_err(pg)?;
    let Some(row) =
        tx.sql().query_opt("SELECT job, series_id, version, test, arch FROM results WHERE id = $1", &[&result]).await.map_err(pg)?
    else {
        return Ok(None);
    };
    let (series, version): (i64, i64) = (row.get(1), row.get(2));
    // The verdict rows first, as every writer takes them, then the result.
    let open: Vec<(String, i64, String)> = tx
        .sql()
        .query(
            "SELECT series, round, recheck FROM verdicts WHERE series_id = $1 AND version = $2 AND verdict IS NULL ORDER BY round FOR UPDATE",
            &[&series, &version],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    tx.sql()
        .execute("UPDATE results SET waived = true, waiver = $2 WHERE id = $1", &[&result, &text(&comment).as_ref()])
        .await
        .map_err(pg)?;
    let waived = ResultWaived { result, job: row.get(0), series, version: version as u32, test: row.get(3), arch: row.get(4), comment, by };
    let mut out = vec![agg.outgoing(&waived)?];
    for (head, round, recheck) in open {
        if let Some(v) = decide(agg, &tx, &Round::stored(&head, round as u32, &recheck)?, false).await? {
            out.push(agg.outgoing(&v)?);
        }
    }
    tx.publish(out).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Some(waived))
}

/// Decides a superseded version now (see [`Aggregator::close`]).
pub(crate) async fn close(agg: &Aggregator, store: &PgStore, head: &SeriesHead) -> Result<bool, StoreError> {
    let mut client = store.client().await.map_err(pg)?;
    let mut tx = store.begin(&mut client).await.map_err(pg)?;
    let Some(round) = lock(&tx, &Round::first(head)).await? else { return Ok(false) };
    // As on SQLite, the version's row stays even when nothing is decided yet.
    let decided = match decide(agg, &tx, &round, true).await? {
        Some(v) => {
            tx.publish(vec![agg.outgoing(&v)?]).await.map_err(pg)?;
            true
        }
        None => false,
    };
    tx.commit().await.map_err(pg)?;
    Ok(decided)
}

/// Decides the versions still undecided whose first result came before `since` (see
/// [`Aggregator::sweep`]); rows another aggregator holds are left to it.
pub(crate) async fn sweep(agg: &Aggregator, store: &PgStore, since: i64) -> Result<usize, StoreError> {
    let mut client = store.client().await.map_err(pg)?;
    let mut tx = store.begin(&mut client).await.map_err(pg)?;
    let due = tx
        .sql()
        .query(
            "SELECT series, round, recheck FROM verdicts WHERE decided_at IS NULL AND since < $1 ORDER BY since LIMIT 1000 FOR UPDATE SKIP LOCKED",
            &[&since],
        )
        .await
        .map_err(pg)?;
    let mut out = Vec::new();
    for row in due {
        let round = Round::stored(row.get(0), row.get::<_, i64>(1) as u32, row.get(2))?;
        if let Some(v) = decide(agg, &tx, &round, true).await? {
            out.push(agg.outgoing(&v)?);
        }
    }
    let n = out.len();
    if n > 0 {
        tx.publish(out).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
    }
    Ok(n)
}

/// Takes the round's verdict row (creating it on first sight) for the rest of the transaction;
/// returns the round as first recorded while it is undecided, `None` once decided.
async fn lock(tx: &PgTx<'_>, round: &Round) -> Result<Option<Round>, StoreError> {
    let head = &round.head;
    let head_json = serde_json::to_string(head).expect("heads serialize");
    let version = i64::from(head.version);
    let n = i64::from(round.round);
    tx.sql()
        .execute(
            "INSERT INTO verdicts (series_id, version, round, project, series, since, recheck) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT DO NOTHING",
            &[&head.id, &version, &n, &head.project, &head_json, &now(), &round.recheck.join(" ")],
        )
        .await
        .map_err(pg)?;
    let row = tx
        .sql()
        .query_one(
            "SELECT verdict, recheck FROM verdicts WHERE series_id = $1 AND version = $2 AND round = $3 FOR UPDATE",
            &[&head.id, &version, &n],
        )
        .await
        .map_err(pg)?;
    let decided: Option<String> = row.get(0);
    Ok(decided.is_none().then(|| Round::stored_with(head.clone(), round.round, row.get(1))))
}

/// With the round's verdict row held and undecided: the verdict, if this is the moment it is decided.
async fn decide(agg: &Aggregator, tx: &PgTx<'_>, round: &Round, deadline_passed: bool) -> Result<Option<SeriesVerdict>, StoreError> {
    let head = &round.head;
    let version = i64::from(head.version);
    let n = i64::from(round.round);
    if round.round > 0 && !deadline_passed {
        let done: Vec<String> = tx
            .sql()
            .query(
                "SELECT test, arch FROM results WHERE series_id = $1 AND version = $2 AND round = $3 AND NOT retrying",
                &[&head.id, &version, &n],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| label(r.get(0), r.get(1)))
            .collect();
        if !round.recheck.iter().all(|l| done.contains(l)) {
            return Ok(None);
        }
    }
    let latest: Vec<Latest> = tx
        .sql()
        .query(LATEST, &[&head.id, &version])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| Latest {
            which: Required { test: r.get(0), arch: r.get(1) },
            outcome: r.get::<_, String>(2).into(),
            waived: r.get(3),
            reason: r.get::<_, Option<String>>(4).map(FailureKind::from),
            retrying: r.get(5),
            flaky: r.get(6),
            pre_existing: r.get(7),
        })
        .collect();
    let Some((verdict, detail)) = agg.verdict(round, &latest, deadline_passed) else { return Ok(None) };
    tx.sql()
        .execute(
            "UPDATE verdicts SET verdict = $3, detail = $4, decided_at = $5 WHERE series_id = $1 AND version = $2 AND round = $6 AND verdict IS NULL",
            &[&head.id, &version, &verdict.verdict.as_str(), &detail, &now(), &n],
        )
        .await
        .map_err(pg)?;
    Ok(Some(verdict))
}

#[async_trait]
impl ResultsStore for PgStore {
    async fn rounds(&self, series: i64, version: u32) -> Result<Vec<(u32, Vec<String>, Option<String>)>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let rows = client.query(&patchbay_store_pg::dollars(crate::read::ROUNDS), &[&series, &i64::from(version)]).await.map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u32, r.get::<_, String>(1).split_whitespace().map(str::to_string).collect(), r.get(2)))
            .collect())
    }

    async fn claim_round(&self, head: SeriesHead, round: u32, recheck: Vec<String>, asked_by: String) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let json = serde_json::to_string(&head).expect("heads serialize");
        let n = client
            .execute(
                &patchbay_store_pg::dollars(crate::read::CLAIM_ROUND),
                &[&head.id, &i64::from(head.version), &i64::from(round), &head.project, &json, &now(), &recheck.join(" "), &asked_by],
            )
            .await
            .map_err(pg)?;
        Ok(n == 1)
    }

    async fn test_stats(&self) -> Result<Vec<patchbay_model::view::TestStats>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let rows = client.query(crate::read::TEST_STATS, &[]).await.map_err(pg)?;
        let n = |r: &tokio_postgres::Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
        Ok(rows
            .iter()
            .map(|r| patchbay_model::view::TestStats {
                project: r.get(0),
                test: r.get(1),
                arch: r.get(2),
                runs: n(r, 3),
                failed: n(r, 4),
                flaky: n(r, 5),
                pre_existing: n(r, 6),
                mean_ms: r.get::<_, Option<i64>>(7).unwrap_or(0).max(0) as u64,
            })
            .collect())
    }

    async fn verdicts(&self, keys: Vec<(i64, u32)>) -> Result<Vec<Option<VerdictKind>>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let (ids, versions): (Vec<i64>, Vec<i64>) = keys.iter().map(|&(id, v)| (id, i64::from(v))).unzip();
        let rows = client
            .query(
                "SELECT v.verdict FROM unnest($1::BIGINT[], $2::BIGINT[]) WITH ORDINALITY AS k (series_id, version, n)
                 LEFT JOIN LATERAL (SELECT verdict FROM verdicts x WHERE x.series_id = k.series_id AND x.version = k.version
                                    ORDER BY x.verdict IS NULL, x.round DESC LIMIT 1) v ON true
                 ORDER BY k.n",
                &[&ids, &versions],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get::<_, Option<String>>(0).map(VerdictKind::from)).collect())
    }

    async fn verdict_detail(&self, series: i64, version: u32) -> Result<Option<String>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let row = client
            .query_opt(
                "SELECT detail FROM verdicts WHERE series_id = $1 AND version = $2 ORDER BY verdict IS NULL, round DESC LIMIT 1",
                &[&series, &i64::from(version)],
            )
            .await
            .map_err(pg)?;
        Ok(row.and_then(|r| r.get(0)))
    }

    async fn cells(&self, series: i64, version: u32) -> Result<Vec<Cell>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let rows = client
            .query(
                "SELECT test, arch, outcome, reason, duration_ms, job, id, waived FROM results r WHERE series_id = $1 AND version = $2
                 AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)
                 ORDER BY test = $3 DESC, test, arch",
                &[&series, &i64::from(version), &patchbay_model::APPLY_TEST],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| Cell {
                test: r.get(0),
                arch: r.get(1),
                outcome: r.get::<_, String>(2).into(),
                reason: r.get::<_, Option<String>>(3).map(FailureKind::from),
                duration_ms: r.get(4),
                job: r.get(5),
                result_id: r.get(6),
                waived: r.get(7),
            })
            .collect())
    }

    async fn query(&self, q: Query) -> Result<Vec<ResultRow>, StoreError> {
        let mut text = String::from(
            "SELECT id, job, series_id, version, project, test, arch, outcome, reason, duration_ms, base, recorded_at, duplicate, waived, waiver
             FROM results r WHERE true",
        );
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |cond: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            text.push_str(&format!(" AND {cond} ${}", args.len()));
        };
        if let Some(s) = q.series {
            add("series_id =", Box::new(s));
        }
        if let Some(v) = q.version {
            add("version =", Box::new(i64::from(v)));
        }
        for (column, value) in [("test =", &q.test), ("arch =", &q.arch), ("outcome =", &q.outcome)] {
            if let Some(value) = value {
                add(column, Box::new(value.clone()));
            }
        }
        if let Some(b) = q.before {
            add("id <", Box::new(b));
        }
        if q.latest {
            text.push_str(
                " AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)",
            );
        }
        text.push_str(&format!(" ORDER BY id DESC LIMIT {}", q.limit.clamp(1, 500)));
        let client = self.client().await.map_err(pg)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&text, &params).await.map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| ResultRow {
                id: r.get(0),
                job: r.get(1),
                series: r.get(2),
                version: r.get::<_, i64>(3) as u32,
                project: r.get(4),
                test: r.get(5),
                arch: r.get(6),
                outcome: r.get::<_, String>(7).into(),
                reason: r.get::<_, Option<String>>(8).map(FailureKind::from),
                duration_ms: r.get(9),
                base: r.get(10),
                recorded_at: r.get(11),
                duplicate: r.get(12),
                waived: r.get(13),
                waiver: r.get(14),
            })
            .collect())
    }
}
