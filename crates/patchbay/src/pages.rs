//! What the dashboard shows, read from the embedded store, and the re-run
//! action (the job as it was queued, from the history, published again).

use std::sync::Arc;

use patchbay_bus::{Bus, Outgoing};
use patchbay_model::{Envelope, FailureKind, Sender, ServiceName, TopicRoot, VerdictKind};
use patchbay_store::Db;
use patchbay_web::dashboard::{Cell, PageFuture, PatchRow, RunnerRow, SeriesFilter, SeriesRow, SeriesView};
use rusqlite::{OptionalExtension as _, params};

/// The dashboard's view of the store.
pub struct StorePages {
    /// The store.
    pub db: Db,
    /// Topics of this deployment (for the runners' heartbeats).
    pub root: TopicRoot,
}

const SERIES_COLUMNS: &str = "s.id, s.project, s.submitter, s.name, s.version, s.total, s.state, v.verdict, s.created_at";

fn series_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SeriesRow> {
    Ok(SeriesRow {
        id: r.get(0)?,
        project: r.get(1)?,
        submitter: r.get(2)?,
        name: r.get(3)?,
        version: r.get(4)?,
        total: r.get(5)?,
        state: r.get(6)?,
        verdict: r.get::<_, Option<String>>(7)?.map(VerdictKind::from),
        created_at: r.get(8)?,
    })
}

fn text(e: patchbay_store::StoreError) -> String {
    e.to_string()
}

impl patchbay_web::dashboard::Pages for StorePages {
    fn series_list(&self, filter: SeriesFilter, page: u32, per_page: u32) -> PageFuture<'_, (Vec<SeriesRow>, u64)> {
        Box::pin(async move {
            self.db
                .read(move |c| {
                    let like = filter.search.map(|s| format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
                    let filter_sql = "WHERE (?1 IS NULL OR s.name LIKE ?1 ESCAPE '\\' OR s.submitter LIKE ?1 ESCAPE '\\')
                        AND (?2 IS NULL OR s.project = ?2) AND (?3 IS NULL OR s.state = ?3)
                        AND (?4 IS NULL OR s.submitter = ?4 COLLATE NOCASE) AND (?5 IS NULL OR s.version = ?5)
                        AND (?6 IS NULL OR s.created_at >= ?6)";
                    let args = params![like, filter.project, filter.state, filter.submitter, filter.version, filter.since];
                    let total: i64 = c.query_row(&format!("SELECT count(*) FROM series s {filter_sql}"), args, |r| r.get(0))?;
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT {SERIES_COLUMNS} FROM series s LEFT JOIN verdicts v ON v.series_id = s.id AND v.version = s.version
                         {filter_sql} ORDER BY s.id DESC LIMIT ?7 OFFSET ?8"
                    ))?;
                    let offset = i64::from(page.max(1) - 1) * i64::from(per_page);
                    let rows = stmt
                        .query_map(
                            params![like, filter.project, filter.state, filter.submitter, filter.version, filter.since, per_page, offset],
                            series_row,
                        )?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((rows, total as u64))
                })
                .await
                .map_err(text)
        })
    }

    fn series(&self, id: i64) -> PageFuture<'_, Option<SeriesView>> {
        Box::pin(async move {
            self.db
                .read(move |c| {
                    let series = c
                        .query_row(
                            &format!(
                                "SELECT {SERIES_COLUMNS} FROM series s LEFT JOIN verdicts v ON v.series_id = s.id AND v.version = s.version WHERE s.id = ?1"
                            ),
                            [id],
                            series_row,
                        )
                        .optional()?;
                    let Some(series) = series else { return Ok(None) };
                    let mut stmt = c.prepare_cached(
                        "SELECT sm.slot, m.id, m.subject, m.message_id FROM series_mails sm JOIN mails m ON m.id = sm.mail_id WHERE sm.series_id = ?1 ORDER BY sm.slot",
                    )?;
                    let patches = stmt
                        .query_map([id], |r| Ok(PatchRow { slot: r.get(0)?, mail_id: r.get(1)?, subject: r.get(2)?, message_id: r.get(3)? }))?
                        .collect::<Result<_, _>>()?;
                    // Versions: walk the supersession links both ways (bounded).
                    let link = |col: &str, from: i64| -> rusqlite::Result<Option<(i64, u32)>> {
                        c.query_row(
                            &format!("SELECT s2.id, s2.version FROM series s JOIN series s2 ON s2.id = s.{col} WHERE s.id = ?1"),
                            [from],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()
                    };
                    let mut versions = vec![(series.id, series.version)];
                    let mut at = series.id;
                    while let Some(older) = link("supersedes", at)?.filter(|_| versions.len() < 50) {
                        versions.insert(0, older);
                        at = older.0;
                    }
                    let mut at = series.id;
                    while let Some(newer) = link("superseded_by", at)?.filter(|_| versions.len() < 50) {
                        versions.push(newer);
                        at = newer.0;
                    }
                    let mut stmt = c.prepare_cached(
                        "SELECT test, arch, outcome, reason, duration_ms, job, id, waived FROM results r WHERE series_id = ?1 AND version = ?2
                         AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)
                         ORDER BY test = 'apply' DESC, test, arch",
                    )?;
                    let cells = stmt
                        .query_map(params![id, series.version], |r| {
                            Ok(Cell {
                                test: r.get(0)?,
                                arch: r.get(1)?,
                                outcome: r.get::<_, String>(2)?.into(),
                                reason: r.get::<_, Option<String>>(3)?.map(FailureKind::from),
                                duration_ms: r.get(4)?,
                                job: r.get(5)?,
                                result_id: r.get(6)?,
                                waived: r.get(7)?,
                            })
                        })?
                        .collect::<Result<_, _>>()?;
                    let report: Option<(String, Option<String>, Option<Vec<u8>>)> = c
                        .query_row(
                            "SELECT state, detail, mail FROM reports WHERE series_id = ?1 AND version = ?2",
                            params![id, series.version],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .optional()?;
                    let report_text = report.as_ref().and_then(|(_, _, mail)| mail.as_ref().map(|m| String::from_utf8_lossy(m).into_owned()));
                    let report = report.map(|(state, detail, _)| (state, detail));
                    let verdict_detail = c
                        .query_row("SELECT detail FROM verdicts WHERE series_id = ?1 AND version = ?2", params![id, series.version], |r| {
                            r.get::<_, Option<String>>(0)
                        })
                        .optional()?
                        .flatten();
                    Ok(Some(SeriesView { series, patches, versions, cells, report, report_text, verdict_detail }))
                })
                .await
                .map_err(text)
        })
    }

    fn raw_mail(&self, id: i64) -> PageFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            self.db
                .read(move |c| Ok(c.query_row("SELECT raw FROM mails WHERE id = ?1", [id], |r| r.get(0)).optional()?))
                .await
                .map_err(text)
        })
    }

    fn series_mbox(&self, id: i64) -> PageFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            // Ingest owns the series tables and the partial re-roll rule (slots taken from v1).
            self.db.read(move |c| patchbay_ingest::series_mbox(c, id)).await.map_err(text)
        })
    }

    fn runners(&self) -> PageFuture<'_, Vec<RunnerRow>> {
        Box::pin(async move {
            let topic = self.root.topic(<patchbay_model::RunnerHeartbeat as patchbay_model::Body>::TOPIC).map_err(|e| e.to_string())?;
            let since = patchbay_model::Timestamp::now().as_micros() - 10 * 60 * 1_000_000;
            let wires: Vec<Vec<u8>> = self
                .db
                .read(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT m.wire FROM history h JOIN bus_messages m ON m.pos = h.pos WHERE h.topic = ?1 AND h.ts >= ?2 ORDER BY h.pos DESC LIMIT 1000",
                    )?;
                    Ok(stmt.query_map(params![topic.as_str(), since], |r| r.get(0))?.collect::<Result<_, _>>()?)
                })
                .await
                .map_err(text)?;
            let mut rows: Vec<RunnerRow> = Vec::new();
            for w in wires {
                let Ok(env) = Envelope::from_wire(&w) else { continue };
                if rows.iter().any(|r| r.instance == env.sender.instance) {
                    continue; // newest first: the first one seen is the latest
                }
                let Ok(beat) = serde_json::from_value::<patchbay_model::RunnerHeartbeat>(env.body.clone()) else { continue };
                rows.push(RunnerRow {
                    instance: env.sender.instance.clone(),
                    capabilities: beat.capabilities,
                    jobs: beat.jobs,
                    running: beat.running,
                    seen_at: env.sent_at.as_micros() / 1_000_000,
                });
            }
            rows.sort_by(|a, b| a.instance.cmp(&b.instance));
            Ok(rows)
        })
    }
}

/// Re-runs jobs: the job as it was queued, found in the history, published again.
pub struct Rerun {
    /// The store (history).
    pub db: Db,
    /// Where the copy goes.
    pub bus: Arc<dyn Bus>,
    /// Topics of this deployment.
    pub root: TopicRoot,
    /// This process's instance name, for the sender.
    pub instance: String,
}

fn unavailable(e: impl std::fmt::Display) -> patchbay_web::QueryError {
    patchbay_web::QueryError::Unavailable(e.to_string())
}

impl Rerun {
    /// Messages of the history matching `params` (newest first, at most 100).
    async fn history(&self, params: &[(&str, String)]) -> Result<Vec<Envelope>, patchbay_web::QueryError> {
        let mut params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        params.push(("rows_per_page".into(), "100".into()));
        let q = patchbay_history::Query::from_params(&params, 0).map_err(patchbay_web::QueryError::Bad)?;
        let page = self.db.read(move |c| patchbay_history::search(c, &q)).await.map_err(unavailable)?;
        Ok(page.messages.iter().filter_map(|w| Envelope::from_wire(w).ok()).collect())
    }

    /// Publishes `original`'s body again on its topic, as the admin; returns the new message's id.
    async fn again(&self, original: &Envelope) -> Result<String, patchbay_web::QueryError> {
        let copy = Outgoing {
            sender: Sender::new(ServiceName::Admin.as_str(), &self.instance),
            topic: original.topic.clone(),
            schema: original.schema.clone(),
            body: original.body.clone(),
        };
        Ok(self.bus.publish(vec![copy]).await.map_err(unavailable)?[0].id.to_string())
    }
}

impl patchbay_web::TestJobs for Rerun {
    fn rerun(&self, job: String, by: String) -> patchbay_web::JsonFuture<'_> {
        Box::pin(async move {
            let found = self.history(&[("topic", format!("{}.ci.job.#", self.root.as_str())), ("job", job.clone())]).await?;
            // The job as the dispatcher queued it: its schema on a job topic, nothing that only mentions it.
            let queued_topic =
                |t: &str| t.strip_prefix(self.root.as_str()).is_some_and(|r| r.starts_with(".ci.job.") && r.ends_with(".queued"));
            let Some(queued) = found.into_iter().find(|e| {
                e.body["job"] == job.as_str()
                    && e.schema.name == <patchbay_model::TestJob as patchbay_model::Body>::SCHEMA
                    && queued_topic(e.topic.as_str())
            }) else {
                return Ok(serde_json::Value::Null);
            };
            tracing::info!(%job, %by, "Job re-run by an admin.");
            let message = self.again(&queued).await?;
            Ok(serde_json::json!({ "status": "queued", "job": job, "by": by, "message": message }))
        })
    }

    fn resend(&self, series: i64, version: u32, by: String) -> patchbay_web::JsonFuture<'_> {
        Box::pin(async move {
            let topic = self.root.topic(<patchbay_model::SeriesVerdict as patchbay_model::Body>::TOPIC).map_err(unavailable)?;
            let found = self.history(&[("topic", topic.as_str().to_string()), ("series", series.to_string())]).await?;
            let Some(verdict) = found.into_iter().find(|e| e.body["series"]["version"] == serde_json::json!(version)) else {
                return Ok(serde_json::Value::Null);
            };
            // The reporter acts on a report in `intent`: put it back there, then hand it the verdict again.
            let detail = format!("re-send asked by {by}");
            self.db
                .write(move |tx| {
                    tx.execute(
                        "UPDATE reports SET state = 'intent', detail = ?3, resends = resends + 1 WHERE series_id = ?1 AND version = ?2 AND state IN ('sent', 'failed', 'skipped')",
                        params![series, version, detail],
                    )?;
                    Ok(())
                })
                .await
                .map_err(unavailable)?;
            tracing::info!(series, version, %by, "Report re-send asked by an admin.");
            let message = self.again(&verdict).await?;
            Ok(serde_json::json!({ "status": "queued", "series": series, "version": version, "by": by, "message": message }))
        })
    }
}
