//! What the checks service keeps, on either store: which (result, patch) got its check, and the
//! Message-IDs of a series' patches. One statement text each (`?N`, `$N` on PostgreSQL).

use async_trait::async_trait;
use patchbay_bus::Outgoing;
use patchbay_store::{EmbeddedBus, StoreError};
use patchbay_store_pg::{PgStore, dollars};
use rusqlite::{OptionalExtension as _, params};

/// The checks service's store, whichever it is.
#[async_trait]
pub(crate) trait ChecksDb: Send + Sync {
    /// The Message-IDs of series `id`'s patches (its public id), in slot order.
    async fn patches(&self, series: i64) -> Result<Vec<String>, StoreError>;
    /// Whether result `result` is done on the patch `message_id`.
    async fn posted(&self, result: i64, message_id: String) -> Result<bool, StoreError>;
    /// Records it done (`patchwork_id` 0: given up) and announces `out` with it.
    async fn record(&self, result: i64, message_id: String, patchwork_id: i64, out: Outgoing) -> Result<(), StoreError>;
}

const PATCHES: &str = "SELECT m.message_id FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
     WHERE sm.series_id = (SELECT id FROM series WHERE uid = ?1) AND sm.slot >= 1 ORDER BY sm.slot";
const POSTED: &str = "SELECT 1 FROM patchwork_checks WHERE result_id = ?1 AND message_id = ?2";
const RECORD: &str = "INSERT INTO patchwork_checks (result_id, message_id, patchwork_id, posted_at) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT DO NOTHING";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[async_trait]
impl ChecksDb for EmbeddedBus {
    async fn patches(&self, series: i64) -> Result<Vec<String>, StoreError> {
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(PATCHES)?;
                let rows = stmt.query_map([series], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn posted(&self, result: i64, message_id: String) -> Result<bool, StoreError> {
        self.db().read(move |c| Ok(c.query_row(POSTED, params![result, message_id], |_| Ok(())).optional()?.is_some())).await
    }

    async fn record(&self, result: i64, message_id: String, patchwork_id: i64, out: Outgoing) -> Result<(), StoreError> {
        let bus = self.clone();
        self.db()
            .write(move |tx| {
                if tx.prepare_cached(RECORD)?.execute(params![result, message_id, patchwork_id, now()])? == 1 {
                    bus.publish_in(tx, vec![out])?;
                }
                Ok(())
            })
            .await
    }
}

fn pg(e: impl Into<patchbay_store_pg::PgError>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

#[async_trait]
impl ChecksDb for PgStore {
    async fn patches(&self, series: i64) -> Result<Vec<String>, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(client.query(&dollars(PATCHES), &[&series]).await.map_err(pg)?.iter().map(|r| r.get(0)).collect())
    }

    async fn posted(&self, result: i64, message_id: String) -> Result<bool, StoreError> {
        let client = self.client().await.map_err(pg)?;
        Ok(client.query_opt(&dollars(POSTED), &[&result, &message_id]).await.map_err(pg)?.is_some())
    }

    async fn record(&self, result: i64, message_id: String, patchwork_id: i64, out: Outgoing) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(pg)?;
        let mut tx = self.begin(&mut client).await.map_err(pg)?;
        if tx.sql().execute(&dollars(RECORD), &[&result, &message_id, &patchwork_id, &now()]).await.map_err(pg)? == 1 {
            tx.publish(vec![out]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }
}
