//! The results store's read side, behind a port ([`ResultsStore`]): what the dashboard and the
//! JSON series API ask of the tables this crate owns (`results`, `verdicts`), as
//! typed rows. The SQLite implementation is here; nothing above this crate writes SQL over those tables.

use async_trait::async_trait;
use patchbay_model::SeriesHead;
use patchbay_model::VerdictKind;
use patchbay_model::view::{Cell, TestStats};
use patchbay_store::{Db, StoreError};
use rusqlite::{OptionalExtension as _, params};

/// What readers ask of the results store; one implementation per store backend.
#[async_trait]
pub trait ResultsStore: Send + Sync + 'static {
    /// The verdict of each (series, version), in the order asked; `None` while undecided.
    async fn verdicts(&self, keys: Vec<(i64, u32)>) -> Result<Vec<Option<VerdictKind>>, StoreError>;
    /// The verdict's detail (what failed or is missing).
    async fn verdict_detail(&self, series: i64, version: u32) -> Result<Option<String>, StoreError>;
    /// The test matrix: the latest result of each (test, arch), the apply test first.
    async fn cells(&self, series: i64, version: u32) -> Result<Vec<Cell>, StoreError>;
    /// Results matching `q` (`GET /api/v1/results`), newest first.
    async fn query(&self, q: crate::Query) -> Result<Vec<crate::ResultRow>, StoreError>;
    /// Each (project, test, arch) over its history: runs, failures, flaky passes.
    async fn test_stats(&self) -> Result<Vec<TestStats>, StoreError>;
    /// The re-test rounds of a series version, in order: (round, labels, the Message-ID of the
    /// mail that asked).
    async fn rounds(&self, series: i64, version: u32) -> Result<Vec<(u32, Vec<String>, Option<String>)>, StoreError>;
    /// Claims round `round` of `head`'s version for re-running `recheck`, asked by mail
    /// `asked_by`: its verdict row, decided once its results are in or by the deadline sweep.
    /// False when the round was taken first.
    async fn claim_round(&self, head: SeriesHead, round: u32, recheck: Vec<String>, asked_by: String) -> Result<bool, StoreError>;
}

/// The statements behind [`ResultsStore::rounds`] and [`ResultsStore::claim_round`], one text
/// for both stores.
pub(crate) const ROUNDS: &str =
    "SELECT round, recheck, asked_by FROM verdicts WHERE series_id = ?1 AND version = ?2 AND round > 0 ORDER BY round";
pub(crate) const CLAIM_ROUND: &str = "INSERT INTO verdicts (series_id, version, round, project, series, since, recheck, asked_by)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING";

/// The statement behind [`ResultsStore::test_stats`], one text for both stores (flags are
/// integers on SQLite and booleans on PostgreSQL; both cast to integers).
pub(crate) const TEST_STATS: &str = "SELECT project, test, arch,
         SUM(1 - CAST(retrying AS INTEGER)),
         SUM(CASE WHEN CAST(retrying AS INTEGER) = 0 AND outcome IN ('FAILED', 'ERROR') THEN 1 ELSE 0 END),
         SUM(CAST(flaky AS INTEGER)),
         SUM(CAST(pre_existing AS INTEGER)),
         CAST(AVG(CASE WHEN CAST(retrying AS INTEGER) = 0 THEN duration_ms END) AS BIGINT)
     FROM results GROUP BY project, test, arch ORDER BY project, test, arch";

#[async_trait]
impl ResultsStore for Db {
    async fn query(&self, q: crate::Query) -> Result<Vec<crate::ResultRow>, StoreError> {
        self.read(move |c| crate::query(c, &q)).await
    }

    async fn rounds(&self, series: i64, version: u32) -> Result<Vec<(u32, Vec<String>, Option<String>)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(ROUNDS)?;
            let rows = stmt.query_map(params![series, version], |r| {
                let labels: String = r.get(1)?;
                Ok((r.get(0)?, labels.split_whitespace().map(str::to_string).collect(), r.get(2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn claim_round(&self, head: SeriesHead, round: u32, recheck: Vec<String>, asked_by: String) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&head).expect("heads serialize");
        self.write(move |tx| {
            let args = params![head.id, head.version, round, head.project, json, crate::now(), recheck.join(" "), asked_by];
            Ok(tx.prepare_cached(CLAIM_ROUND)?.execute(args)? == 1)
        })
        .await
    }

    async fn test_stats(&self) -> Result<Vec<TestStats>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(TEST_STATS)?;
            let rows = stmt.query_map([], |r| {
                Ok(TestStats {
                    project: r.get(0)?,
                    test: r.get(1)?,
                    arch: r.get(2)?,
                    runs: r.get::<_, i64>(3)?.max(0) as u64,
                    failed: r.get::<_, i64>(4)?.max(0) as u64,
                    flaky: r.get::<_, i64>(5)?.max(0) as u64,
                    pre_existing: r.get::<_, i64>(6)?.max(0) as u64,
                    mean_ms: r.get::<_, Option<i64>>(7)?.unwrap_or(0).max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn verdicts(&self, keys: Vec<(i64, u32)>) -> Result<Vec<Option<VerdictKind>>, StoreError> {
        self.read(move |c| {
            // The newest decided round (a re-test asked on the list), else the undecided first.
            let mut stmt = c.prepare_cached(
                "SELECT verdict FROM verdicts WHERE series_id = ?1 AND version = ?2 ORDER BY verdict IS NULL, round DESC LIMIT 1",
            )?;
            let mut out = Vec::with_capacity(keys.len());
            for (id, version) in keys {
                // An undecided version has its row, with no verdict yet.
                let verdict = stmt.query_row(params![id, version], |r| r.get::<_, Option<String>>(0)).optional()?.flatten();
                out.push(verdict.map(VerdictKind::from));
            }
            Ok(out)
        })
        .await
    }

    async fn verdict_detail(&self, series: i64, version: u32) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT detail FROM verdicts WHERE series_id = ?1 AND version = ?2 ORDER BY verdict IS NULL, round DESC LIMIT 1",
                params![series, version],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
        })
        .await
    }

    async fn cells(&self, series: i64, version: u32) -> Result<Vec<Cell>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT test, arch, outcome, reason, duration_ms, job, id, waived FROM results r WHERE series_id = ?1 AND version = ?2
                 AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)
                 ORDER BY test = ?3 DESC, test, arch",
            )?;
            let cells = stmt.query_map(params![series, version, patchbay_model::APPLY_TEST], |r| {
                Ok(Cell {
                    test: r.get(0)?,
                    arch: r.get(1)?,
                    outcome: r.get::<_, String>(2)?.into(),
                    reason: r.get::<_, Option<String>>(3)?.map(patchbay_model::FailureKind::from),
                    duration_ms: r.get(4)?,
                    job: r.get(5)?,
                    result_id: r.get(6)?,
                    waived: r.get(7)?,
                })
            })?;
            Ok(cells.collect::<Result<_, _>>()?)
        })
        .await
    }
}
