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
