//! The report store's read side, behind a port ([`ReportStore`]): the dashboard's view of a
//! report and the admin's re-send (a report put back in `intent` for the reporter). Both
//! stores' implementations are here, beside the reporter's writes, one statement text each;
//! nothing above this crate writes SQL over `reports`.

use async_trait::async_trait;
use patchbay_store::{Db, StoreError};
use patchbay_store_pg::{PgStore, dollars};
use rusqlite::{OptionalExtension as _, params};

use crate::db::pg;

/// A report as the reporter left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// `intent`, `sending`, `sent`, `failed` or `skipped`.
    pub state: String,
    /// Why it failed or was skipped, or who asked for a re-send.
    pub detail: Option<String>,
    /// The mail as sent (or about to be).
    pub mail: Option<Vec<u8>>,
}

/// What readers and the admin ask of the report store; one implementation per store backend.
#[async_trait]
pub trait ReportStore: Send + Sync + 'static {
    /// The report of a series version: of its latest re-test round, when it had one.
    async fn report(&self, series: i64, version: u32) -> Result<Option<ReportRow>, StoreError>;
    /// The projects' series posted at or after `since` (unix seconds), newest first, at most
    /// 100,000: what the trends are drawn from (the series' tables are ingest's, the verdicts
    /// the aggregator's; the report, which joins them, is this crate's).
    async fn trend_rows(&self, since: i64) -> Result<Vec<patchbay_model::view::TrendRow>, StoreError>;
    /// Puts a finished report (`sent`, `failed`, `skipped`) of the version's first testing back
    /// in `intent`, so the reporter sends it again when it hears the verdict again; `false`
    /// when there was none to put back.
    async fn ask_resend(&self, series: i64, version: u32, detail: String) -> Result<bool, StoreError>;
}

const REPORT: &str = "SELECT state, detail, mail FROM reports WHERE series_id = ?1 AND version = ?2 ORDER BY round DESC LIMIT 1";
const RESEND: &str = "UPDATE reports SET state = 'intent', detail = ?3, resends = resends + 1
     WHERE series_id = ?1 AND version = ?2 AND round = 0 AND state IN ('sent', 'failed', 'skipped')";

const TREND_ROWS: &str = "SELECT s.project, s.date, s.version, v.verdict,
         (SELECT max(coalesce(m.date, m.received_at)) FROM series_mails sm JOIN mails m ON m.id = sm.mail_id WHERE sm.series_id = s.id),
         r.sent_at
     FROM series s
     LEFT JOIN verdicts v ON v.series_id = s.uid AND v.version = s.version AND v.round = 0
     LEFT JOIN reports r ON r.series_id = s.uid AND r.version = s.version AND r.round = 0 AND r.state = 'sent'
     WHERE s.project IS NOT NULL AND s.date >= ?1 ORDER BY s.date DESC LIMIT 100000";

#[async_trait]
impl ReportStore for Db {
    async fn trend_rows(&self, since: i64) -> Result<Vec<patchbay_model::view::TrendRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(TREND_ROWS)?;
            let rows = stmt.query_map([since], |r| {
                Ok(patchbay_model::view::TrendRow {
                    project: r.get(0)?,
                    date: r.get(1)?,
                    version: r.get(2)?,
                    verdict: r.get::<_, Option<String>>(3)?.map(patchbay_model::VerdictKind::from),
                    newest_mail: r.get(4)?,
                    reported_at: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn report(&self, series: i64, version: u32) -> Result<Option<ReportRow>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(REPORT, params![series, version], |r| Ok(ReportRow { state: r.get(0)?, detail: r.get(1)?, mail: r.get(2)? }))
                .optional()?)
        })
        .await
    }

    async fn ask_resend(&self, series: i64, version: u32, detail: String) -> Result<bool, StoreError> {
        self.write(move |tx| Ok(tx.execute(RESEND, params![series, version, detail])? > 0)).await
    }
}

#[async_trait]
impl ReportStore for PgStore {
    async fn trend_rows(&self, since: i64) -> Result<Vec<patchbay_model::view::TrendRow>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let rows = client.query(&*dollars(TREND_ROWS), &[&since]).await.map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| patchbay_model::view::TrendRow {
                project: r.get(0),
                date: r.get(1),
                version: r.get::<_, i64>(2) as u32,
                verdict: r.get::<_, Option<String>>(3).map(patchbay_model::VerdictKind::from),
                newest_mail: r.get(4),
                reported_at: r.get(5),
            })
            .collect())
    }

    async fn report(&self, series: i64, version: u32) -> Result<Option<ReportRow>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        let row = client.query_opt(&*dollars(REPORT), &[&series, &i64::from(version)]).await.map_err(pg)?;
        Ok(row.map(|r| ReportRow { state: r.get(0), detail: r.get(1), mail: r.get(2) }))
    }

    async fn ask_resend(&self, series: i64, version: u32, detail: String) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(client.execute(&*dollars(RESEND), &[&series, &i64::from(version), &detail]).await.map_err(pg)? > 0)
    }
}
