//! The reporter: one mail per verdict, exactly once.
//!
//! The intent is recorded first (`reports`, keyed by series version, with the
//! report's stable Message-ID), then the mail is delivered, then the record
//! says `sent` and `report.email.sent` is published in the same transaction.
//! Delivery to the outbox maildir is idempotent by file name (the
//! Message-ID): a crash between delivering and recording finds the file on
//! redelivery and does not write a second mail. Over SMTP, `sending` is
//! committed before the first byte: a report found `sending` is never resent.

use std::path::{Path, PathBuf};

use crate::compose::{self as report, Line, Report, Settings, Thread};
use async_trait::async_trait;
use patchbay_bus::Publisher;
use patchbay_model::{Envelope, FailureKind, Outcome, ReportFailed, ReportSent, SeriesVerdict, TransportKind, VerdictKind};
use patchbay_runtime::{BodyHandler, HandlerError};
use patchbay_store::{EmbeddedBus, StoreError};
use rusqlite::{OptionalExtension, params};

/// Where reports go.
#[derive(Clone)]
pub enum Transport {
    /// A maildir (the embedded default when no SMTP server is configured).
    Outbox(PathBuf),
    /// An SMTP server.
    Smtp(crate::smtp::Smtp),
}

/// Which verdicts get no mail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Skip {
    /// PASSED verdicts (report only failures).
    pub passed: bool,
    /// Verdicts of a version a later one has already superseded.
    pub superseded: bool,
}

/// The reporter service.
pub struct Reporter {
    bus: EmbeddedBus,
    publisher: Publisher,
    settings: Settings,
    transport: Transport,
    link_base: Option<String>,
    skip: Skip,
    lists: std::collections::HashMap<String, String>,
    /// Test scripts by (project, test), for "To reproduce".
    scripts: std::collections::HashMap<(String, String), String>,
    template: Option<std::sync::Arc<report::Template>>,
}

/// test, arch, outcome, reason, duration in ms, base, job, excerpt.
type ResultRow = (String, String, Outcome, Option<FailureKind>, i64, Option<String>, String, String);

/// What the store knows that the report needs.
struct Facts {
    thread: Thread,
    lines: Vec<Line>,
    base: Option<String>,
}

fn facts(conn: &rusqlite::Connection, v: &SeriesVerdict, link_base: Option<&str>) -> Result<Option<Facts>, StoreError> {
    // The mail to answer: the cover letter, else patch 1.
    let row: Option<(String, Vec<u8>, String, Option<String>)> = conn
        .query_row(
            "SELECT m.message_id, m.raw, m.subject, m.from_email FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
             WHERE sm.series_id = (SELECT id FROM series WHERE uid = ?1) AND sm.slot IN (0, 1) ORDER BY sm.slot LIMIT 1",
            [v.series.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((reply_to, raw, subject, from)) = row else { return Ok(None) };
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let parsed = patchbay_mail::parse(raw.as_bytes());
    let thread = Thread {
        reply_to,
        references: parsed.references.clone(),
        subject,
        submitter: from.unwrap_or_else(|| v.series.submitter.clone()),
        list: None,
    };
    let mut stmt = conn.prepare(
        "SELECT test, arch, outcome, reason, duration_ms, base, job, excerpt FROM results r WHERE series_id = ?1 AND version = ?2
         AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)
         ORDER BY test = ?3 DESC, test, arch",
    )?;
    let mut base = None;
    let rows: Vec<ResultRow> = stmt
        .query_map(params![v.series.id, v.series.version, patchbay_model::APPLY_TEST], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, String>(2)?.into(),
                r.get::<_, Option<String>>(3)?.map(FailureKind::from),
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut lines = Vec::new();
    for (test, arch, outcome, reason, ms, b, job, excerpt) in rows {
        if base.is_none() {
            base = b;
        }
        // The result's own excerpt: the full log is recorded by another service, maybe later.
        let excerpt = (outcome != Outcome::Passed).then_some(excerpt);
        // The log page (colours, a link back to the series), not the raw API text.
        let log_url = link_base.map(|b| format!("{}/logs/{job}", b.trim_end_matches('/')));
        let what = if arch == patchbay_model::ANY_ARCH { test } else { format!("{test}/{arch}") };
        lines.push(Line { what, outcome, reason, seconds: patchbay_verdict::seconds_of(ms as u64), excerpt, log_url });
    }
    Ok(Some(Facts { thread, lines, base }))
}

/// Writes `mail` into the maildir `outbox` as `name`, once: tmp/ then rename into new/.
pub fn deliver_to_maildir(outbox: &Path, name: &str, mail: &[u8]) -> std::io::Result<bool> {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(outbox.join(sub))?;
    }
    let target = outbox.join("new").join(name);
    if target.exists() || outbox.join("cur").join(name).exists() {
        return Ok(false);
    }
    let tmp = outbox.join("tmp").join(format!("{name}.{}", std::process::id()));
    std::fs::write(&tmp, mail)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &target)?;
    Ok(true)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// RFC 5322 date of now, in UTC.
fn rfc5322_now() -> String {
    let secs = now();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(m - 1) as usize];
    format!("{weekday}, {d} {month} {y} {:02}:{:02}:{:02} +0000", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Reporter {
    /// The scripts of the tests that did not pass (each test once, whatever its arches).
    fn reproduce(&self, project: &str, lines: &[report::Line]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for l in lines.iter().filter(|l| l.outcome != Outcome::Passed) {
            let test = l.what.split('/').next().unwrap_or(&l.what);
            if out.iter().any(|(t, _)| t == test) {
                continue;
            }
            if let Some(script) = self.scripts.get(&(project.to_string(), test.to_string())) {
                out.push((test.to_string(), script.clone()));
            }
        }
        out
    }

    /// Reports through `transport`, with `settings`; failing tests' full logs are linked
    /// as `<link_base>/logs/<job>`, the log page.
    pub fn new(bus: EmbeddedBus, publisher: Publisher, settings: Settings, transport: Transport, link_base: Option<String>) -> Self {
        Reporter {
            bus,
            publisher,
            settings,
            transport,
            link_base,
            skip: Skip::default(),
            lists: Default::default(),
            scripts: Default::default(),
            template: None,
        }
    }

    /// The posting address of each project's list (from the config: a `List-Post` header is
    /// the sender's to write, so it never decides where reports go).
    pub fn lists(mut self, lists: std::collections::HashMap<String, String>) -> Self {
        self.lists = lists;
        self
    }

    /// The projects' test scripts by (project, test), so a report shows how to reproduce a failure.
    pub fn scripts(mut self, scripts: std::collections::HashMap<(String, String), String>) -> Self {
        self.scripts = scripts;
        self
    }

    /// The maintainer's template for the body (`report.template`), instead of the built-in one.
    pub fn template(mut self, template: Option<std::sync::Arc<report::Template>>) -> Self {
        self.template = template;
        self
    }

    /// Verdicts that get no mail.
    pub fn skipping(mut self, skip: Skip) -> Self {
        self.skip = skip;
        self
    }

    async fn set_state(&self, id: i64, ver: u32, from: &str, to: &str, detail: Option<String>) -> Result<bool, StoreError> {
        let (from, to) = (from.to_string(), to.to_string());
        self.bus
            .db()
            .write(move |tx| {
                Ok(tx
                    .prepare_cached("UPDATE reports SET state = ?4, detail = ?5 WHERE series_id = ?1 AND version = ?2 AND state = ?3")?
                    .execute(params![id, ver, from, to, detail])?
                    == 1)
            })
            .await
    }

    async fn fail(&self, v: &SeriesVerdict, message_id: &str, from_state: &str, reason: String) -> Result<(), ReportError> {
        let (id, ver) = (v.series.id, v.series.version);
        let body =
            ReportFailed { series: v.series.clone(), verdict: v.verdict.clone(), message_id: message_id.into(), reason: reason.clone() };
        let out = self.publisher.outgoing(&body).map_err(|e| ReportError::Build(e.to_string()))?;
        let (bus, from_state) = (self.bus.clone(), from_state.to_string());
        tracing::warn!(%message_id, %reason, "Report not delivered.");
        self.bus
            .db()
            .write(move |tx| {
                let changed = tx
                    .prepare_cached(
                        "UPDATE reports SET state = 'failed', detail = ?4 WHERE series_id = ?1 AND version = ?2 AND state = ?3",
                    )?
                    .execute(params![id, ver, from_state, reason])?;
                if changed == 1 {
                    bus.publish_in(tx, vec![out])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Reports one verdict, exactly once.
    /// `published`: when the verdict was published, for the time-to-report metric.
    pub async fn report(&self, v: SeriesVerdict, published: Option<patchbay_model::Timestamp>) -> Result<(), ReportError> {
        let message_id = report::message_id(v.series.id, v.series.version, &self.settings.domain);
        // 1. The intent, before anything leaves.
        let (id, ver, mid) = (v.series.id, v.series.version, message_id.clone());
        let (state, resends): (String, u32) = self
            .bus
            .db()
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO reports (series_id, version, message_id, state, transport, created_at) VALUES (?1, ?2, ?3, 'intent', 'outbox', ?4)",
                )?
                .execute(params![id, ver, mid, now()])?;
                Ok(tx.query_row("SELECT state, resends FROM reports WHERE series_id = ?1 AND version = ?2", params![id, ver], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .await?;
        match state.as_str() {
            "intent" => {}
            // We stopped while the SMTP server was taking this mail: it may have been accepted.
            // A second copy is worse than none, so say so instead of resending.
            "sending" => {
                return self
                    .fail(
                        &v,
                        &message_id,
                        "sending",
                        "patchbay stopped while the SMTP server was taking this report; not resent, to avoid a second copy".into(),
                    )
                    .await;
            }
            _ => return Ok(()),
        }
        let superseded = {
            let id = v.series.id;
            self.bus
                .db()
                .read(move |c| {
                    Ok(c.query_row("SELECT state = 'superseded' FROM series WHERE uid = ?1", [id], |r| r.get::<_, bool>(0))
                        .optional()?
                        .unwrap_or(false))
                })
                .await?
        };
        // An admin's re-send goes out whatever the skip rules say.
        let skip = if resends > 0 {
            None
        } else if self.skip.passed && matches!(v.verdict, VerdictKind::Passed | VerdictKind::Merged) {
            Some("not a failure, and only failures are reported")
        } else if self.skip.superseded && superseded {
            Some("a later version superseded this one before it was reported")
        } else {
            None
        };
        if let Some(why) = skip {
            tracing::info!(%message_id, why, "Report skipped.");
            self.set_state(id, ver, "intent", "skipped", Some(why.into())).await?;
            return Ok(());
        }
        let (verdict, link) = (v.clone(), self.link_base.clone());
        let Some(mut facts) = self.bus.db().read(move |c| facts(c, &verdict, link.as_deref())).await? else {
            return Err(ReportError::NoThread(v.series.id));
        };
        facts.thread.list = self.lists.get(&v.series.project).cloned();
        let reproduce = self.reproduce(&v.series.project, &facts.lines);
        let r = Report {
            series: v.series.id,
            version: v.series.version,
            total: v.series.total,
            project: v.series.project.clone(),
            verdict: v.verdict.clone(),
            failed: v.failed.clone(),
            missing: v.missing.clone(),
            lines: facts.lines,
            base: facts.base,
            // The series' page on the dashboard: its matrix, logs, report and other versions.
            link: self.link_base.as_deref().map(|b| format!("{}/series/{}", b.trim_end_matches('/'), v.series.id)),
            reproduce,
        };
        let date = rfc5322_now();
        let mail = match report::compose_with(&r, &facts.thread, &self.settings, &date, self.template.as_deref()) {
            Ok(mail) => mail,
            Err(error) => {
                // It rendered a sample at start; a report it cannot render still goes out, plainly.
                tracing::warn!(%message_id, %error, "report.template failed for this report; the built-in text is used.");
                report::compose(&r, &facts.thread, &self.settings, &date)
            }
        };
        // 2. Delivery.
        let transport = match &self.transport {
            Transport::Outbox(outbox) => {
                // Idempotent by name, so a crash after it and before 3. sends nothing twice.
                // A re-send is a new file (same Message-ID: mail clients thread it as the same report).
                let mut name = message_id.trim_matches(['<', '>']).replace(['/', '@'], "_");
                if resends > 0 {
                    name.push_str(&format!(".resend{resends}"));
                }
                deliver_to_maildir(outbox, &name, &mail).map_err(|e| ReportError::Outbox { path: outbox.clone(), source: e })?;
                TransportKind::Outbox
            }
            Transport::Smtp(smtp) => {
                // `sending` is committed before the first byte goes out: a crash from here to
                // the record in 3. leaves it, and the next attempt reports instead of resending.
                // That window (the SMTP exchange, usually milliseconds) is the only one left.
                if !self.set_state(id, ver, "intent", "sending", None).await? {
                    return Ok(());
                }
                let (to, cc) = report::recipients(&facts.thread, &self.settings);
                let rcpts: Vec<String> = std::iter::once(to).chain(cc).map(|a| report::address(&a).to_string()).collect();
                match smtp.send(report::address(&self.settings.from), &rcpts, &mail).await {
                    Ok(()) => {}
                    Err(crate::smtp::SendError::Permanent(words)) => {
                        return self.fail(&v, &message_id, "sending", format!("the SMTP server refused it: {words}")).await;
                    }
                    Err(crate::smtp::SendError::Ambiguous(e)) => {
                        // The server may hold the mail: a second copy is worse than none.
                        let reason =
                            format!("the SMTP exchange broke off after the text was sent ({e}); not resent, to avoid a second copy");
                        return self.fail(&v, &message_id, "sending", reason).await;
                    }
                    Err(crate::smtp::SendError::Transient(e)) => {
                        self.set_state(id, ver, "sending", "intent", Some(e.clone())).await?;
                        return Err(ReportError::SmtpUnavailable(e));
                    }
                }
                TransportKind::Smtp
            }
        };
        // 3. Recorded and announced together.
        let sent = ReportSent {
            series: v.series.clone(),
            verdict: v.verdict.clone(),
            message_id: message_id.clone(),
            in_reply_to: facts.thread.reply_to.clone(),
            transport: transport.clone(),
        };
        let out = self.publisher.outgoing(&sent).map_err(|e| ReportError::Build(e.to_string()))?;
        let bus = self.bus.clone();
        let sent_now = self.bus
            .db()
            .write(move |tx| {
                let changed = tx
                    .prepare_cached(
                        "UPDATE reports SET state = 'sent', transport = ?4, sent_at = ?3, mail = ?5 WHERE series_id = ?1 AND version = ?2 AND state IN ('intent', 'sending')",
                    )?
                    .execute(params![id, ver, now(), transport.as_str(), mail])?;
                if changed == 1 {
                    bus.publish_in(tx, vec![out])?;
                }
                Ok(changed == 1)
            })
            .await?;
        if sent_now && let Some(published) = published {
            let waited = patchbay_model::Timestamp::now().as_micros().saturating_sub(published.as_micros());
            patchbay_metrics::metrics().report_seconds.observe(waited.max(0) as f64 / 1e6);
        }
        Ok(())
    }
}

/// Why a report was not (yet) sent; all but [`ReportError::Build`] may work later.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed (busy, full, gone): try again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The SMTP server could not be reached or answered "later" before the text went out.
    #[error("SMTP not available, will retry: {0}")]
    SmtpUnavailable(String),
    /// The series' mails are not in this store (yet): nothing to thread the reply under.
    #[error("series {0} has no mail to reply to")]
    NoThread(i64),
    /// The outbox maildir could not be written.
    #[error("writing the outbox {path}: {source}")]
    Outbox {
        /// The maildir.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A report event could not be built: a bug, which retrying does not mend.
    #[error("building a report event: {0}")]
    Build(String),
}

impl From<ReportError> for HandlerError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Build(_) => HandlerError::Permanent(e.to_string()),
            _ => HandlerError::Transient(e.to_string()),
        }
    }
}

#[async_trait]
impl BodyHandler<SeriesVerdict> for Reporter {
    async fn handle_body(&self, envelope: &Envelope, v: SeriesVerdict, _attempt: u32) -> Result<(), HandlerError> {
        Ok(self.report(v, Some(envelope.sent_at)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildir_delivery_happens_once_per_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(deliver_to_maildir(dir.path(), "r-1", b"first").unwrap());
        assert!(!deliver_to_maildir(dir.path(), "r-1", b"second").unwrap(), "a redelivered report writes nothing");
        assert_eq!(std::fs::read(dir.path().join("new/r-1")).unwrap(), b"first");
        // Read by a mail client (moved to cur/): still not written again.
        std::fs::rename(dir.path().join("new/r-1"), dir.path().join("cur/r-1")).unwrap();
        assert!(!deliver_to_maildir(dir.path(), "r-1", b"third").unwrap());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "nothing left in tmp/");
    }

    #[test]
    fn dates_are_rfc5322() {
        let d = rfc5322_now();
        assert!(d.ends_with(" +0000") && d.len() >= 29, "{d}");
        assert!(["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"].iter().any(|w| d.starts_with(w)));
    }
}
