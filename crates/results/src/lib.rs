//! The aggregator: records every `ci.test.finished` (in the spirit of
//! resultsdb) and issues exactly one `ci.series.verdict` per series version
//! (in the spirit of greenwave), when every required result is in or when the
//! deadline passes.
//!
//! Exactly once holds under redelivery and any number of aggregator
//! instances: a result is keyed by its message id (a redelivery changes
//! nothing), and the recording, the verdict decision and both announcements
//! happen in one store transaction; the verdict row's primary key
//! (series, version) makes a second decision impossible. A result equal to the
//! previous one of its (series version, test, arch) is flagged `duplicate`; a
//! failed apply's stored excerpt always names its patch (`failed_patch` is put
//! back in front when the tail lost git's `Patch failed at` line).
//! [`Aggregator::sweep`] issues verdicts past `results.verdict_deadline_secs`.
//! A result carries the runner's `retrying` (a failure run again: the verdict
//! waits) and `pre_existing` (the base fails too: not counted); a pass after a
//! retrying failure is stored `flaky`. The verdict lists both kinds apart.
//! Waivers ([`Aggregator::waive`]) mark the result, publish
//! `ci.result.waived`, and decide an undecided verdict again (a decided one
//! stays). Supersession: [`Aggregator::close`] decides a superseded version at
//! once from what it has (`results.close_superseded`), usually INCOMPLETE.
//! The policy itself is `patchbay-verdict`.
//!
//! Tables (migrations 4 and 5): `results`, `verdicts`. The report on a verdict is
//! `patchbay-report`'s. This crate knows the stores (SQLite here, PostgreSQL in `pg.rs`), not HTTP or runners;
//! it owns the shape of `[results]` ([`ResultsSettings`]) but never reads the config file.

mod pg;
mod read;
mod settings;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::Publisher;
use patchbay_model::{
    Body, Envelope, FailureKind, Outcome, ResultRecorded, ResultWaived, SeriesHead, SeriesSuperseded, SeriesVerdict, TestFinished,
};
use patchbay_runtime::{Handler, HandlerError};
use patchbay_store::{EmbeddedBus, StoreError, Tx};
use patchbay_verdict::{Latest, Required, Verdict};
use rusqlite::{OptionalExtension, params};

pub use patchbay_model::view::{ResultRow, ResultsQuery as Query};
pub use read::ResultsStore;
pub use settings::ResultsSettings;

/// Which (test, arch) each project requires; `apply` is always required.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Required pairs per project name.
    pub required: HashMap<String, Vec<Required>>,
}

impl Policy {
    fn required(&self, project: &str) -> Vec<Required> {
        let mut r = vec![Required { test: patchbay_model::APPLY_TEST.into(), arch: patchbay_model::ANY_ARCH.into() }];
        r.extend(self.required.get(project).into_iter().flatten().cloned());
        r
    }
}

/// The aggregator service.
#[derive(Clone)]
pub struct Aggregator {
    tables: Tables,
    publisher: Publisher,
    policy: Arc<Policy>,
}

/// Where `results` and `verdicts` live: the transactions differ per store, the rules do not.
#[derive(Clone)]
enum Tables {
    /// The embedded SQLite store, whose bus the messages join in the same write.
    Sqlite(EmbeddedBus),
    /// PostgreSQL, whose outbox the messages join in the same transaction.
    Pg(patchbay_store_pg::PgStore),
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Aggregator {
    /// Aggregates into the store under `bus`, publishing as `publisher` (sender `aggregator`).
    pub fn new(bus: EmbeddedBus, publisher: Publisher, policy: Policy) -> Self {
        Aggregator { tables: Tables::Sqlite(bus), publisher, policy: Arc::new(policy) }
    }

    /// Aggregates into PostgreSQL (`store.url`), several instances at once if need be; what it
    /// publishes goes through the store's outbox and its relays.
    pub fn on_postgres(store: patchbay_store_pg::PgStore, publisher: Publisher, policy: Policy) -> Self {
        Aggregator { tables: Tables::Pg(store), publisher, policy: Arc::new(policy) }
    }

    /// Records one result and, when that decides it, the verdict; all in one transaction.
    pub async fn record(&self, message_id: String, result: TestFinished) -> Result<(), StoreError> {
        let bus = match &self.tables {
            Tables::Sqlite(bus) => bus.clone(),
            Tables::Pg(store) => return pg::record(self, store, &message_id, &result).await,
        };
        let this = self.clone();
        bus.db()
            .clone()
            .write(move |tx| {
                let mut out = Vec::new();
                if let Some(recorded) = insert_result(tx, &message_id, &result)? {
                    out.push(this.outgoing(&recorded)?);
                    if let Some(v) = this.decide(tx, &Round::of(&result), false)? {
                        out.push(this.outgoing(&v)?);
                    }
                }
                if !out.is_empty() {
                    bus.publish_in(tx, out)?;
                }
                Ok(())
            })
            .await
    }

    /// Waives a result with a comment; the verdict of its series version, if still undecided, is
    /// decided again with the waiver (and may be issued now). `Ok(None)`: no such result.
    pub async fn waive(&self, result: i64, comment: String, by: String) -> Result<Option<ResultWaived>, StoreError> {
        let bus = match &self.tables {
            Tables::Sqlite(bus) => bus.clone(),
            Tables::Pg(store) => return pg::waive(self, store, result, comment, by).await,
        };
        let this = self.clone();
        bus.db()
            .clone()
            .write(move |tx| {
                let row: Option<(String, i64, u32, String, String, String)> = tx
                    .prepare_cached("SELECT job, series_id, version, test, arch, project FROM results WHERE id = ?1")?
                    .query_row([result], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
                    .optional()?;
                let Some((job, series, version, test, arch, _project)) = row else { return Ok(None) };
                tx.prepare_cached("UPDATE results SET waived = 1, waiver = ?2 WHERE id = ?1")?.execute(params![result, comment])?;
                let waived = ResultWaived { result, job, series, version, test, arch, comment, by };
                let mut out = vec![this.outgoing(&waived)?];
                let open: Vec<(String, u32, String)> = tx
                    .prepare_cached(
                        "SELECT series, round, recheck FROM verdicts WHERE series_id = ?1 AND version = ?2 AND verdict IS NULL",
                    )?
                    .query_map(params![series, version], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                for (head, round, recheck) in open {
                    if let Some(v) = this.decide(tx, &Round::stored(&head, round, &recheck)?, false)? {
                        out.push(this.outgoing(&v)?);
                    }
                }
                bus.publish_in(tx, out)?;
                Ok(Some(waived))
            })
            .await
    }

    /// Decides a superseded version now, with the results it has (a later version replaced
    /// it: waiting for the rest would only delay its one verdict); false if already decided.
    pub async fn close(&self, head: SeriesHead) -> Result<bool, StoreError> {
        if !self.policy.required.contains_key(&head.project) {
            return Ok(false); // Not a tested project: it never gets a verdict.
        }
        let bus = match &self.tables {
            Tables::Sqlite(bus) => bus.clone(),
            Tables::Pg(store) => return pg::close(self, store, &head).await,
        };
        let this = self.clone();
        bus.db()
            .clone()
            .write(move |tx| {
                let Some(v) = this.decide(tx, &Round::first(&head), true)? else { return Ok(false) };
                bus.publish_in(tx, vec![this.outgoing(&v)?])?;
                Ok(true)
            })
            .await
    }

    /// Decides series versions still undecided `deadline_secs` after their first result.
    pub async fn sweep(&self, at: i64, deadline_secs: i64) -> Result<usize, StoreError> {
        let bus = match &self.tables {
            Tables::Sqlite(bus) => bus.clone(),
            Tables::Pg(store) => return pg::sweep(self, store, at - deadline_secs).await,
        };
        let this = self.clone();
        bus.db()
            .clone()
            .write(move |tx| {
                let due: Vec<(String, u32, String)> = tx
                    .prepare_cached("SELECT series, round, recheck FROM verdicts WHERE decided_at IS NULL AND since < ?1 LIMIT 1000")?
                    .query_map([at - deadline_secs], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                let mut out = Vec::new();
                for (head, round, recheck) in &due {
                    if let Some(v) = this.decide(tx, &Round::stored(head, *round, recheck)?, true)? {
                        out.push(this.outgoing(&v)?);
                    }
                }
                let n = out.len();
                if !out.is_empty() {
                    bus.publish_in(tx, out)?;
                }
                Ok(n)
            })
            .await
    }

    fn outgoing<B: Body>(&self, body: &B) -> Result<patchbay_bus::Outgoing, StoreError> {
        self.publisher.outgoing(body).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Inside the transaction: the verdict of a round, if this is the moment it is decided.
    fn decide(&self, tx: &Tx<'_>, round: &Round, deadline_passed: bool) -> Result<Option<SeriesVerdict>, StoreError> {
        let head = &round.head;
        let head_json = serde_json::to_string(head).expect("heads serialize");
        tx.prepare_cached(
            "INSERT OR IGNORE INTO verdicts (series_id, version, round, project, series, since, recheck) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![head.id, head.version, round.round, head.project, head_json, now(), round.recheck.join(" ")])?;
        let (decided, recheck): (Option<String>, String) = tx
            .prepare_cached("SELECT verdict, recheck FROM verdicts WHERE series_id = ?1 AND version = ?2 AND round = ?3")?
            .query_row(params![head.id, head.version, round.round], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if decided.is_some() {
            return Ok(None);
        }
        // The round as first recorded: its labels came with its first result.
        let round = Round::stored_with(head.clone(), round.round, &recheck);
        if round.round > 0 && !deadline_passed {
            let done: Vec<String> = tx
                .prepare_cached("SELECT test, arch FROM results WHERE series_id = ?1 AND version = ?2 AND round = ?3 AND retrying = 0")?
                .query_map(params![head.id, head.version, round.round], |r| Ok(label(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?)))?
                .collect::<Result<_, _>>()?;
            if !round.recheck.iter().all(|l| done.contains(l)) {
                return Ok(None);
            }
        }
        let mut stmt = tx.prepare_cached(
            "SELECT test, arch, outcome, waived, reason, retrying, flaky, pre_existing FROM results r WHERE series_id = ?1 AND version = ?2
             AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)",
        )?;
        let latest: Vec<Latest> = stmt
            .query_map(params![head.id, head.version], |r| {
                Ok(Latest {
                    which: Required { test: r.get(0)?, arch: r.get(1)? },
                    outcome: r.get::<_, String>(2)?.into(),
                    waived: r.get(3)?,
                    reason: r.get::<_, Option<String>>(4)?.map(FailureKind::from),
                    retrying: r.get(5)?,
                    flaky: r.get(6)?,
                    pre_existing: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let Some((verdict, detail)) = self.verdict(&round, &latest, deadline_passed) else { return Ok(None) };
        tx.prepare_cached(
            "UPDATE verdicts SET verdict = ?3, detail = ?4, decided_at = ?5 WHERE series_id = ?1 AND version = ?2 AND round = ?6 AND verdict IS NULL",
        )?
        .execute(params![head.id, head.version, verdict.verdict.as_str(), detail, now(), round.round])?;
        Ok(Some(verdict))
    }

    /// The verdict the latest results give, if they decide one, and its stored detail (what
    /// failed or is missing): the policy, the same on every store.
    fn verdict(&self, round: &Round, latest: &[Latest], deadline_passed: bool) -> Option<(SeriesVerdict, String)> {
        let head = &round.head;
        let required = self.policy.required(&head.project);
        let verdict = patchbay_verdict::decide(&required, latest, deadline_passed)?;
        let (failed, missing) = match &verdict {
            Verdict::Passed | Verdict::Merged => (vec![], vec![]),
            Verdict::Failed(f) => (f.clone(), vec![]),
            Verdict::Incomplete(m) => (vec![], m.clone()),
        };
        let (flaky, pre_existing) = if verdict == Verdict::Merged { (vec![], vec![]) } else { patchbay_verdict::notes(&required, latest) };
        let detail = failed.iter().chain(missing.iter()).cloned().collect::<Vec<_>>().join(" ");
        let v = SeriesVerdict {
            series: head.clone(),
            verdict: verdict.kind(),
            failed,
            missing,
            flaky,
            pre_existing,
            round: round.round,
            recheck: round.recheck.clone(),
        };
        Some((v, detail))
    }
}

/// What one verdict is about: a series version's first testing (round 0), or a re-test asked
/// on the list (round 1, 2…) of the `recheck` labels, decided once all of them are in again.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    pub(crate) head: SeriesHead,
    pub(crate) round: u32,
    pub(crate) recheck: Vec<String>,
}

impl Round {
    /// A version's first testing.
    pub(crate) fn first(head: &SeriesHead) -> Round {
        Round { head: head.clone(), round: 0, recheck: Vec::new() }
    }

    /// The round a result belongs to.
    pub(crate) fn of(r: &TestFinished) -> Round {
        Round { head: r.series.clone(), round: r.round, recheck: if r.round == 0 { Vec::new() } else { r.recheck.clone() } }
    }

    /// A round as its verdict row keeps it (the head as JSON, the labels space-separated).
    pub(crate) fn stored(head: &str, round: u32, recheck: &str) -> Result<Round, StoreError> {
        let head: SeriesHead = serde_json::from_str(head).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Round::stored_with(head, round, recheck))
    }

    /// A round with the labels its row keeps.
    pub(crate) fn stored_with(head: SeriesHead, round: u32, recheck: &str) -> Round {
        Round { head, round, recheck: recheck.split_whitespace().map(str::to_string).collect() }
    }
}

/// A result's label, as verdicts and re-test requests name it (`test/arch`, `apply`).
pub(crate) fn label(test: &str, arch: &str) -> String {
    Required { test: test.into(), arch: arch.into() }.label()
}

/// The excerpt to store: a failed apply's always names its patch, so the report can (callers
/// pass `failed_patch` for `apply` only: a per-patch test's names its patch in its own words).
///
/// The excerpt is the end of the log; when a long rejected diff pushed git's
/// `Patch failed at NNNN <subject>` line out of it, the line is put back in
/// front from `failed_patch` (what the runner read from that same line).
fn excerpt_naming_the_patch<'a>(excerpt: &'a str, failed_patch: Option<&str>) -> std::borrow::Cow<'a, str> {
    match failed_patch {
        Some(patch) if !excerpt.lines().any(|l| l.starts_with("Patch failed at ")) => format!("Patch failed at {patch}\n{excerpt}").into(),
        _ => excerpt.into(),
    }
}

/// Records a result; `None` when this message was recorded before (a redelivery).
fn insert_result(tx: &Tx<'_>, message_id: &str, r: &TestFinished) -> Result<Option<ResultRecorded>, StoreError> {
    let previous: Option<(Outcome, bool)> = tx
        .prepare_cached(
            "SELECT outcome, retrying FROM results WHERE series_id = ?1 AND version = ?2 AND test = ?3 AND arch = ?4 ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![r.series.id, r.series.version, r.test, r.arch], |row| {
            Ok((row.get::<_, String>(0).map(Outcome::from)?, row.get(1)?))
        })
        .optional()?;
    let flaky = flaky(r, previous.as_ref());
    let previous = previous.map(|(o, _)| o);
    let duplicate = previous.as_ref() == Some(&r.outcome);
    let base = r.base.as_ref().map(|b| format!("{} ({})", b.commit, b.reason));
    let excerpt = excerpt_naming_the_patch(&r.excerpt, r.failed_patch.as_deref().filter(|_| r.test == patchbay_model::APPLY_TEST));
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO results (message_id, job, series_id, version, project, test, arch, outcome, reason, duration_ms, base, recorded_at, duplicate, excerpt, retrying, flaky, pre_existing, round)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?
        .execute(params![
            message_id,
            r.job,
            r.series.id,
            r.series.version,
            r.series.project,
            r.test,
            r.arch,
            r.outcome.as_str(),
            r.reason.as_ref().map(FailureKind::as_str),
            r.duration_ms as i64,
            base,
            now(),
            duplicate,
            excerpt,
            r.retrying,
            flaky,
            r.pre_existing,
            r.round
        ])?;
    if inserted == 0 {
        return Ok(None);
    }
    Ok(Some(recorded(r, tx.last_insert_rowid(), previous, flaky)))
}

/// Whether a result is a pass on a re-run: the previous result of its (series version, test,
/// arch) was a failure being run again.
fn flaky(r: &TestFinished, previous: Option<&(Outcome, bool)>) -> bool {
    r.outcome == Outcome::Passed && previous.is_some_and(|(_, retrying)| *retrying)
}

/// The announcement of a result stored as `id`; `previous` is the outcome its (series version,
/// test, arch) had before, which makes it a `duplicate` when equal.
fn recorded(r: &TestFinished, id: i64, previous: Option<Outcome>, flaky: bool) -> ResultRecorded {
    ResultRecorded {
        result: id,
        job: r.job.clone(),
        series: r.series.clone(),
        test: r.test.clone(),
        arch: r.arch.clone(),
        outcome: r.outcome.clone(),
        reason: r.reason.clone(),
        duplicate: previous.as_ref() == Some(&r.outcome),
        previous,
        retrying: r.retrying,
        flaky,
        pre_existing: r.pre_existing,
    }
}

#[async_trait]
impl Handler for Aggregator {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        if envelope.schema.name == SeriesSuperseded::SCHEMA {
            let s: SeriesSuperseded = patchbay_runtime::decode::<SeriesSuperseded>(envelope)?;
            return self.close(s.series).await.map(|_| ()).map_err(|e| HandlerError::Transient(e.to_string()));
        }
        let result: TestFinished = patchbay_runtime::decode::<TestFinished>(envelope)?;
        self.record(envelope.id.to_string(), result).await.map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

/// Runs a results query on a read connection.
pub fn query(conn: &rusqlite::Connection, q: &Query) -> Result<Vec<ResultRow>, StoreError> {
    let mut sql = String::from(
        "SELECT id, job, series_id, version, project, test, arch, outcome, reason, duration_ms, base, recorded_at, duplicate, waived, waiver
         FROM results r WHERE 1 = 1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |cond: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ?{}", args.len()));
    };
    if let Some(s) = q.series {
        add("series_id =", s.into());
    }
    if let Some(v) = q.version {
        add("version =", (v as i64).into());
    }
    if let Some(t) = &q.test {
        add("test =", t.clone().into());
    }
    if let Some(a) = &q.arch {
        add("arch =", a.clone().into());
    }
    if let Some(o) = &q.outcome {
        add("outcome =", o.clone().into());
    }
    if let Some(b) = q.before {
        add("id <", b.into());
    }
    if q.latest {
        sql.push_str(
            " AND id = (SELECT max(id) FROM results x WHERE x.series_id = r.series_id AND x.version = r.version AND x.test = r.test AND x.arch = r.arch)",
        );
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", q.limit.clamp(1, 500)));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(ResultRow {
            id: r.get(0)?,
            job: r.get(1)?,
            series: r.get(2)?,
            version: r.get(3)?,
            project: r.get(4)?,
            test: r.get(5)?,
            arch: r.get(6)?,
            outcome: r.get::<_, String>(7)?.into(),
            reason: r.get::<_, Option<String>>(8)?.map(FailureKind::from),
            duration_ms: r.get(9)?,
            base: r.get(10)?,
            recorded_at: r.get(11)?,
            duplicate: r.get(12)?,
            waived: r.get(13)?,
            waiver: r.get(14)?,
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_apply_excerpt_names_its_patch() {
        // The tail of a long rejected diff: git's line was cut off.
        let tail = "[...]\n+\tint x;\n";
        assert_eq!(excerpt_naming_the_patch(tail, Some("0002 foo: bar")), "Patch failed at 0002 foo: bar\n[...]\n+\tint x;\n");
        let whole = "Applying: a\nPatch failed at 0002 foo: bar\n";
        assert_eq!(excerpt_naming_the_patch(whole, Some("0002 foo: bar")), whole);
        assert_eq!(excerpt_naming_the_patch(tail, None), tail);
    }
}
