//! The read model's rows: what the dashboard and the JSON series API show, and what the
//! stores that own those tables return, so neither side names the other's types.

use crate::{FailureKind, Outcome, VerdictKind};

/// One line of the series list.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeriesRow {
    /// Store id.
    pub id: i64,
    /// Project, when the series belongs to one.
    pub project: Option<String>,
    /// Submitter's address.
    pub submitter: String,
    /// Title (cover letter, else patch 1).
    pub name: String,
    /// Version.
    pub version: u32,
    /// Patches.
    pub total: u32,
    /// new, complete, incomplete, superseded, or merged (found in its branch upstream).
    pub state: String,
    /// PASSED, FAILED, INCOMPLETE or MERGED once decided.
    pub verdict: Option<VerdictKind>,
    /// When it was first seen (unix seconds).
    pub created_at: i64,
}

/// One patch (or the cover letter, slot 0) of a series.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchRow {
    /// 0 for the cover letter.
    pub slot: u32,
    /// The stored mail.
    pub mail_id: i64,
    /// Its subject.
    pub subject: String,
    /// Its Message-ID, as b4 and Patchwork name a patch.
    pub message_id: String,
}

/// One cell of the test matrix: the latest result of a (test, arch).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cell {
    /// Test.
    pub test: String,
    /// Arch (`any` for apply).
    pub arch: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Why, for failures.
    pub reason: Option<FailureKind>,
    /// Milliseconds.
    pub duration_ms: i64,
    /// The job, for its log and re-run.
    pub job: String,
    /// The result's id, for waiving.
    pub result_id: i64,
    /// Waived by a maintainer.
    pub waived: bool,
}

/// Everything the series page shows.
#[derive(Clone, Debug)]
pub struct SeriesView {
    /// The series itself.
    pub series: SeriesRow,
    /// Cover letter and patches in order.
    pub patches: Vec<PatchRow>,
    /// Every version of this series (id, version), oldest first.
    pub versions: Vec<(i64, u32)>,
    /// The test matrix.
    pub cells: Vec<Cell>,
    /// The report: state and detail.
    pub report: Option<(String, Option<String>)>,
    /// The report mail itself, as sent.
    pub report_text: Option<String>,
    /// The verdict's detail (what failed or is missing).
    pub verdict_detail: Option<String>,
    /// Re-tests asked on the list, oldest first, with what came of each.
    pub rechecks: Vec<RecheckRow>,
}

/// A re-test asked on the list (`Recheck-request:`) and its answer, which is never mailed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecheckRow {
    /// When it was answered (unix seconds).
    pub at: i64,
    /// Who asked.
    pub by: String,
    /// The round it started, when accepted.
    pub round: Option<u32>,
    /// What the round re-runs.
    pub recheck: Vec<String>,
    /// Why it was refused, when it was.
    pub refused: Option<String>,
}

/// One series as the trends see it: when it was posted and how testing went for its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrendRow {
    /// Project.
    pub project: String,
    /// When it was posted (its mails' date, unix seconds).
    pub date: i64,
    /// Its version.
    pub version: u32,
    /// Its version's first verdict, once decided.
    pub verdict: Option<VerdictKind>,
    /// Its newest mail's date (arrival when undated).
    pub newest_mail: Option<i64>,
    /// When its first report was sent.
    pub reported_at: Option<i64>,
}

/// A public-inbox archive followed (`[[source]]`), as its follower last said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRow {
    /// The list.
    pub list_id: String,
    /// The archive (a URL without credentials, or a path).
    pub repository: String,
    /// When it last said anything (unix seconds).
    pub at: i64,
    /// Why the last round failed, when it did.
    pub error: Option<String>,
    /// Failures in a row, and when the next try is (seconds after `at`).
    pub failures: u64,
    /// Seconds after `at` until the next try, after a failure.
    pub retry_in_secs: u64,
    /// When a round last worked, and the mails it stored.
    pub last_ok: Option<(i64, u64)>,
}

/// A runner as it last announced itself.
#[derive(Clone, Debug)]
pub struct RunnerRow {
    /// Instance name.
    pub instance: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Job slots.
    pub jobs: u32,
    /// Jobs running now.
    pub running: Vec<String>,
    /// When it last spoke (unix seconds).
    pub seen_at: i64,
}

/// One test's record over its history (the dashboard's tests page): how often it ran, failed,
/// and passed only on a re-run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestStats {
    /// Project.
    pub project: String,
    /// Test.
    pub test: String,
    /// Arch.
    pub arch: String,
    /// Final results (a failure that was run again is not one).
    pub runs: u64,
    /// Final results that failed (FAILED or ERROR), pre-existing ones included.
    pub failed: u64,
    /// Passes on a re-run after a failure.
    pub flaky: u64,
    /// Mean wall time of its final results, in milliseconds.
    pub mean_ms: u64,
    /// Failures the base alone showed too.
    pub pre_existing: u64,
}

impl TestStats {
    /// The share of runs that passed only when run again, in percent.
    pub fn flake_rate(&self) -> f64 {
        if self.runs == 0 { 0.0 } else { 100.0 * self.flaky as f64 / self.runs as f64 }
    }
}

/// Which series a list shows: every field narrows it (`GET /api/v1/series`, the dashboard's search).
#[derive(Clone, Debug, Default)]
pub struct SeriesFilter {
    /// Title or submitter containing this text.
    pub search: Option<String>,
    /// Series of this project.
    pub project: Option<String>,
    /// In this state (`new`, `complete`, `incomplete`, `superseded`, `merged`).
    pub state: Option<String>,
    /// Sent by this address (any case).
    pub submitter: Option<String>,
    /// This version.
    pub version: Option<u32>,
    /// First seen at or after this time (unix seconds).
    pub since: Option<i64>,
}

/// A results query (`GET /api/v1/results`): every filter optional, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultsQuery {
    /// One series.
    pub series: Option<i64>,
    /// One version of it.
    pub version: Option<u32>,
    /// One test.
    pub test: Option<String>,
    /// One arch.
    pub arch: Option<String>,
    /// One outcome (PASSED, FAILED, ERROR, …).
    pub outcome: Option<String>,
    /// Only the latest result of each (series version, test, arch).
    pub latest: bool,
    /// Results with an id below this (paging: pass the last id seen).
    pub before: Option<i64>,
    /// At most this many (1-500, default 100).
    pub limit: u32,
}

impl ResultsQuery {
    /// Parses URL query parameters; an unknown key or a bad value is an error naming it.
    pub fn from_params(params: &[(String, String)]) -> Result<ResultsQuery, String> {
        let mut q = ResultsQuery { limit: 100, ..ResultsQuery::default() };
        for (k, v) in params {
            let bad = |what: &str| format!("{k}: {v:?} is not {what}");
            match k.as_str() {
                // Ids and versions start at 1, as the OpenAPI document says.
                "series" => q.series = Some(v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| bad("a series id (1 or more)"))?),
                "version" => q.version = Some(v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| bad("a version number (1 or more)"))?),
                "test" => q.test = Some(v.clone()),
                "arch" => q.arch = Some(v.clone()),
                "outcome" => {
                    let o = v.to_ascii_uppercase();
                    if !["PASSED", "FAILED", "ERROR", "INFO", "NEEDS_INSPECTION", "QUEUED", "RUNNING"].contains(&o.as_str()) {
                        return Err(bad("an outcome (PASSED, FAILED, ERROR, INFO, NEEDS_INSPECTION, QUEUED, RUNNING)"));
                    }
                    q.outcome = Some(o);
                }
                "latest" => q.latest = v.parse().map_err(|_| bad("true or false"))?,
                "before" => q.before = Some(v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| bad("a result id (1 or more)"))?),
                "limit" => {
                    q.limit = v.parse().ok().filter(|n| (1..=500).contains(n)).ok_or_else(|| bad("a number from 1 to 500"))?;
                }
                _ => return Err(format!("{k}: unknown parameter (series, version, test, arch, outcome, latest, before, limit)")),
            }
        }
        Ok(q)
    }
}

/// One recorded result, as `GET /api/v1/results` lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ResultRow {
    /// The result's id (for waivers and paging).
    pub id: i64,
    /// The job it came from.
    pub job: String,
    /// The series.
    pub series: i64,
    /// Its version.
    pub version: u32,
    /// The project.
    pub project: String,
    /// The test.
    pub test: String,
    /// The arch (`any` for apply).
    pub arch: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Why, for failures.
    pub reason: Option<FailureKind>,
    /// How long it ran.
    pub duration_ms: i64,
    /// The commit it was applied to.
    pub base: Option<String>,
    /// When it was recorded (unix seconds).
    pub recorded_at: i64,
    /// Equal to the previous result of its (series version, test, arch).
    pub duplicate: bool,
    /// Waived by a maintainer.
    pub waived: bool,
    /// The waiver's comment.
    pub waiver: Option<String>,
}

/// What an admin's re-run or re-send queued (`POST /api/v1/jobs/{job}/rerun`,
/// `/api/v1/reports/{series}/{version}/resend`): the work is on the bus again, not yet done.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Requeued {
    /// Always `queued`.
    pub status: String,
    /// The job run again (a re-run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The series whose report is sent again (a re-send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<i64>,
    /// Its version (a re-send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The admin who asked.
    pub by: String,
    /// The id of the message that carries the work again.
    pub message: String,
}

impl Requeued {
    /// A job queued again by `by` in message `message`.
    pub fn job(job: String, by: String, message: String) -> Self {
        Requeued { status: "queued".into(), job: Some(job), series: None, version: None, by, message }
    }

    /// A series version's report to be sent again, asked by `by`, its verdict in message `message`.
    pub fn report(series: i64, version: u32, by: String, message: String) -> Self {
        Requeued { status: "queued".into(), job: None, series: Some(series), version: Some(version), by, message }
    }
}

/// What a config reload did (`POST /api/v1/reload`, `SIGHUP`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reloaded {
    /// The file read.
    pub file: String,
    /// The parts that changed and now apply (`projects`, `report`, …).
    pub applied: Vec<String>,
    /// The parts that changed but apply only after a restart (`http.listen`, `bus`, …).
    pub needs_restart: Vec<String>,
}

/// A notification rule as an admin sees it (`GET /api/v1/notify/rules`): where it came from,
/// its written form without the webhook's secret, and how its deliveries stand.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NotifyRule {
    /// The rule's name.
    pub name: String,
    /// `config` (a `[[notify]]` of the file; changed there) or `api` (added over HTTP).
    pub source: String,
    /// The rule as written (`email` or `webhook`, filters, `cadence`); a secret is never shown.
    pub rule: serde_json::Value,
    /// The admin who added it (an `api` rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Messages kept and not yet delivered.
    pub pending: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages given up (dead-lettered).
    pub dead: u64,
}

/// A notification given up after its retries or refused by its receiver
/// (`GET /api/v1/notify/dead`), for an admin to read and send again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NotifyDead {
    /// The rule it was kept for.
    pub rule: String,
    /// The bus message it is about.
    pub message_id: String,
    /// That message's topic.
    pub topic: String,
    /// Why it was given up.
    pub error: Option<String>,
    /// Deliveries tried.
    pub attempts: u32,
    /// When the message was published (unix microseconds).
    pub sent_at: i64,
}
