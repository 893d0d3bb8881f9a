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
use patchbay_store_pg::PgStore;

use crate::db::{Key, ReportDb, Sent};

/// The report a verdict asks for: its series version and re-test round.
fn key(v: &SeriesVerdict) -> Key {
    Key { series: v.series.id, version: v.series.version, round: v.round }
}

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
    db: std::sync::Arc<dyn ReportDb>,
    publisher: Publisher,
    settings: Settings,
    transport: Transport,
    link_base: Option<String>,
    skip: Skip,
    lists: std::collections::HashMap<String, String>,
    /// Each project's own rules (`[project.report]`).
    projects: std::collections::HashMap<String, crate::ProjectReport>,
    /// Test scripts by (project, test), for "To reproduce".
    scripts: std::collections::HashMap<(String, String), String>,
    template: Option<std::sync::Arc<report::Template>>,
}

/// What the store knows that the report needs.
struct Facts {
    thread: Thread,
    lines: Vec<Line>,
    base: Option<String>,
}

async fn facts(db: &dyn ReportDb, v: &SeriesVerdict, link_base: Option<&str>) -> Result<Option<Facts>, StoreError> {
    // The mail to answer: the cover letter, else patch 1. A cover patch 1 does not cite was
    // placed by markers alone and may be another posting's (eight sent in one second): the
    // report goes under patch 1 then, as the `complete` event leaves such a cover out.
    let mut mails = db.thread_mails(v.series.id).await?;
    let cites_cover = match (mails.iter().find(|m| m.slot == 0), mails.iter().find(|m| m.slot == 1)) {
        (Some(cover), Some(first)) => {
            let first = patchbay_mail::parse(&first.raw);
            first.in_reply_to.iter().chain(&first.references).any(|id| *id == cover.message_id)
        }
        _ => true,
    };
    if !cites_cover {
        mails.retain(|m| m.slot != 0);
    }
    let Some(mail) = mails.into_iter().next() else { return Ok(None) };
    let parsed = patchbay_mail::parse(&mail.raw);
    let thread = Thread {
        reply_to: mail.message_id,
        references: parsed.references.clone(),
        subject: mail.subject,
        submitter: mail.from.unwrap_or_else(|| v.series.submitter.clone()),
        list: None,
    };
    let mut base = None;
    let mut lines = Vec::new();
    for r in db.latest(v.series.id, v.series.version).await? {
        if base.is_none() {
            base = r.base;
        }
        let outcome: Outcome = r.outcome.into();
        // The result's own excerpt: the full log is recorded by another service, maybe later.
        let excerpt = (outcome != Outcome::Passed).then_some(r.excerpt);
        // The log page (colours, a link back to the series), not the raw API text.
        let log_url = link_base.map(|b| format!("{}/logs/{}", b.trim_end_matches('/'), r.job));
        let what = if r.arch == patchbay_model::ANY_ARCH { r.test } else { format!("{}/{}", r.test, r.arch) };
        lines.push(Line {
            what,
            outcome,
            reason: r.reason.map(FailureKind::from),
            seconds: patchbay_verdict::seconds_of(r.duration_ms as u64),
            excerpt,
            log_url,
            flaky: r.flaky,
            pre_existing: r.pre_existing,
        });
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
        for l in lines.iter().filter(|l| l.outcome != Outcome::Passed && !l.pre_existing) {
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
        Self::with_db(std::sync::Arc::new(bus), publisher, settings, transport, link_base)
    }

    /// Reports from a shared PostgreSQL store: reporters on several hosts share the verdicts'
    /// queue and the `reports` table, and each report goes out once; what a reporter announces
    /// waits in the outbox for a relay (`publisher` only shapes it).
    pub fn on_postgres(store: PgStore, publisher: Publisher, settings: Settings, transport: Transport, link_base: Option<String>) -> Self {
        Self::with_db(std::sync::Arc::new(store), publisher, settings, transport, link_base)
    }

    fn with_db(
        db: std::sync::Arc<dyn ReportDb>,
        publisher: Publisher,
        settings: Settings,
        transport: Transport,
        link_base: Option<String>,
    ) -> Self {
        Reporter {
            db,
            publisher,
            settings,
            transport,
            link_base,
            skip: Skip::default(),
            lists: Default::default(),
            projects: Default::default(),
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

    /// Each project's own report rules (`[project.report]`): who hears, and whether passes are mailed.
    pub fn projects(mut self, projects: std::collections::HashMap<String, crate::ProjectReport>) -> Self {
        self.projects = projects;
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

    async fn set_state(&self, key: Key, from: &str, to: &str, detail: Option<String>) -> Result<bool, StoreError> {
        self.db.set_state(key, from.to_string(), to.to_string(), detail).await
    }

    async fn fail(&self, v: &SeriesVerdict, message_id: &str, from_state: &str, reason: String) -> Result<(), ReportError> {
        let body =
            ReportFailed { series: v.series.clone(), verdict: v.verdict.clone(), message_id: message_id.into(), reason: reason.clone() };
        let out = self.publisher.outgoing(&body).map_err(|e| ReportError::Build(e.to_string()))?;
        tracing::warn!(%message_id, %reason, "Report not delivered.");
        self.db.fail(key(v), from_state.to_string(), reason, out).await?;
        Ok(())
    }

    /// Reports one verdict, exactly once.
    /// `published`: when the verdict was published, for the time-to-report metric.
    pub async fn report(&self, v: SeriesVerdict, published: Option<patchbay_model::Timestamp>) -> Result<(), ReportError> {
        let message_id = report::message_id_of_round(v.series.id, v.series.version, v.round, &self.settings.domain);
        // 1. The intent, before anything leaves.
        let key = key(&v);
        let (state, resends, claimed_at) = self.db.intent(key, message_id.clone(), now()).await?;
        // A claim a crash left behind, to take over (maildir delivery only).
        let mut stale = None;
        match state.as_str() {
            "intent" => {}
            // Reporters on other hosts share this store: the claim may be one that is sending
            // right now. Look again later; a claim older than the lease was left by a crash.
            "sending" if self.db.shared() && now() - claimed_at.unwrap_or(0) < CLAIM_LEASE_SECS => {
                return Err(ReportError::Claimed(key.series, key.version));
            }
            // The maildir takes a report's file once: delivering again is safe.
            "sending" if matches!(self.transport, Transport::Outbox(_)) => stale = Some(claimed_at),
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
        let superseded = self.db.superseded(v.series.id).await?;
        let project = self.projects.get(&v.series.project).copied().unwrap_or_default();
        // An admin's re-send goes out whatever the skip rules say, but never to a project that
        // wants no mail.
        let skip = if project.mode == crate::ReportMode::None {
            Some("report.mode = \"none\" for this project: the verdict is on the bus and the dashboard only")
        } else if resends > 0 {
            None
        } else if project.only_on_failure.unwrap_or(self.skip.passed) && matches!(v.verdict, VerdictKind::Passed | VerdictKind::Merged) {
            Some("not a failure, and only failures are reported")
        } else if self.skip.superseded && superseded {
            Some("a later version superseded this one before it was reported")
        } else {
            None
        };
        if let Some(why) = skip {
            tracing::info!(%message_id, why, "Report skipped.");
            self.set_state(key, "intent", "skipped", Some(why.into())).await?;
            return Ok(());
        }
        let Some(mut facts) = facts(self.db.as_ref(), &v, self.link_base.as_deref()).await? else {
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
            flaky: v.flaky.clone(),
            pre_existing: v.pre_existing.clone(),
            lines: facts.lines,
            base: facts.base,
            // The series' page on the dashboard: its matrix, logs, report and other versions.
            link: self.link_base.as_deref().map(|b| format!("{}/series/{}", b.trim_end_matches('/'), v.series.id)),
            reproduce,
            round: v.round,
            recheck: v.recheck.clone(),
        };
        let date = rfc5322_now();
        let private;
        let settings = if project.mode == crate::ReportMode::Submitter {
            private = report::Settings { recipients: report::Recipients::Submitter, ..self.settings.clone() };
            &private
        } else {
            &self.settings
        };
        let mail = match report::compose_with(&r, &facts.thread, settings, &date, self.template.as_deref()) {
            Ok(mail) => mail,
            Err(error) => {
                // It rendered a sample at start; a report it cannot render still goes out, plainly.
                tracing::warn!(%message_id, %error, "report.template failed for this report; the built-in text is used.");
                report::compose(&r, &facts.thread, settings, &date)
            }
        };
        // 2. Delivery, by the one reporter that claims it (`sending` is committed before the
        // first byte goes out, for every transport: reporters on several hosts send it once).
        if !self.db.claim(key, now(), stale).await? {
            return Ok(());
        }
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
                // A crash from the claim to the record in 3. leaves `sending`, and the next
                // attempt reports instead of resending. That window (the SMTP exchange, usually
                // milliseconds) is the only one left.
                let (to, cc) = report::recipients(&facts.thread, settings);
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
                        self.set_state(key, "sending", "intent", Some(e.clone())).await?;
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
        let sent_now = self.db.sent(key, Sent { at: now(), transport: transport.as_str().to_string(), mail }, out).await?;
        if sent_now && let Some(published) = published {
            let waited = patchbay_model::Timestamp::now().as_micros().saturating_sub(published.as_micros());
            patchbay_metrics::metrics().report_seconds.observe(waited.max(0) as f64 / 1e6);
        }
        Ok(())
    }
}

/// How long a claim to send a report stands before it counts as left by a crash: longer than
/// any SMTP exchange (the client gives up far sooner).
const CLAIM_LEASE_SECS: i64 = 600;

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
    /// Another reporter claimed the report and may be sending it now: look again later.
    #[error("the report of series {0} v{1} is being sent by another reporter; looking again later")]
    Claimed(i64, u32),
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
