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
    /// Puts a finished report (`sent`, `failed`, `skipped`) of the version's first testing back
    /// in `intent`, so the reporter sends it again when it hears the verdict again; `false`
    /// when there was none to put back.
    async fn ask_resend(&self, series: i64, version: u32, detail: String) -> Result<bool, StoreError>;
}

const REPORT: &str = "SELECT state, detail, mail FROM reports WHERE series_id = ?1 AND version = ?2 ORDER BY round DESC LIMIT 1";
const RESEND: &str = "UPDATE reports SET state = 'intent', detail = ?3, resends = resends + 1
     WHERE series_id = ?1 AND version = ?2 AND round = 0 AND state IN ('sent', 'failed', 'skipped')";

#[async_trait]
impl ReportStore for Db {
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
