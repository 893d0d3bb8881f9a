//! The verdict policy, in the spirit of greenwave: given which (test, arch)
//! pairs a project requires and the latest result of each, is a series
//! version PASSED, FAILED, MERGED, or not decided yet; and, once its deadline
//! has passed, INCOMPLETE. Pure: no store, no clock (the caller says whether
//! the deadline passed, and passes the date); its dependencies are `model`
//! (pure too: the domain's words, such as the `apply` test).
//!
//! Rules of [`decide`]:
//! - A series already in the branch (`apply` INFO `already-merged`: every patch
//!   found there by `git patch-id --stable`) is MERGED at once: not a failure,
//!   and nothing was tested. Not FAILED, which would mail "does not apply" to
//!   authors whose work was taken; not PASSED, which would claim tests ran.
//! - A series that does not apply (`apply` FAILED) is FAILED at once, naming
//!   `apply`: nothing else can run on it. An `apply` ERROR (infrastructure)
//!   waits like any other result.
//! - A required result counts as failed when its outcome is FAILED or ERROR
//!   and it is not waived. ERROR fails too: a verdict of PASSED must mean
//!   every required test really passed.
//! - When every required result is in: FAILED naming the failed ones, else
//!   PASSED. Results of tests that are not required never change the verdict.
//! - When the deadline has passed with some still missing: FAILED if any
//!   failed, else INCOMPLETE naming the missing ones.
//! - A failure that is being run again (a test's `retries`) is not in yet; at
//!   the deadline it stands. A pass on a re-run is a pass, marked flaky.
//! - A failure the base alone shows too (a `baseline` test) is pre-existing:
//!   it does not fail the series. [`notes`] lists both kinds for the report.
//!
//! The report built on a verdict (composing, sending, re-sending) is `patchbay-report`'s.
//!
//! [`duration`] is the one way a test's duration is written (the report and
//! the dashboard alike), whole seconds to the nearest.

mod duration;

pub use duration::{duration, seconds_of};
use patchbay_model::{ANY_ARCH, APPLY_TEST, FailureKind, Outcome, VerdictKind};

/// A required (test, arch) pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Required {
    /// Test name.
    pub test: String,
    /// Arch.
    pub arch: String,
}

impl Required {
    /// `test/arch`, or just `test` for the arch-less `apply`.
    pub fn label(&self) -> String {
        if self.arch == ANY_ARCH { self.test.clone() } else { format!("{}/{}", self.test, self.arch) }
    }
}

/// The latest result of one (test, arch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latest {
    /// Which.
    pub which: Required,
    /// resultsdb outcome: PASSED, FAILED, ERROR, INFO, NEEDS_INSPECTION, QUEUED, RUNNING.
    pub outcome: Outcome,
    /// A maintainer waived it.
    pub waived: bool,
    /// Why, as published (`already-merged` with INFO: the series is in the branch).
    pub reason: Option<FailureKind>,
    /// A failure that is being run again (`retries`): not final until the deadline.
    pub retrying: bool,
    /// Passed on a re-run after failing.
    pub flaky: bool,
    /// Failed as the base alone does (`baseline`): not the series' fault.
    pub pre_existing: bool,
}

/// The reason of a result whose series is already in the branch (outcome INFO); the word is
/// `model`'s, this name stays for callers.
pub const ALREADY_MERGED: FailureKind = FailureKind::AlreadyMerged;

/// A decided verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every required result passed (or was waived).
    Passed,
    /// These required results failed.
    Failed(Vec<String>),
    /// The deadline passed with these still missing.
    Incomplete(Vec<String>),
    /// The series is already in the branch: nothing to apply, nothing tested, nothing failed.
    Merged,
}

impl Verdict {
    /// The word published, as `model` spells it.
    pub fn kind(&self) -> VerdictKind {
        match self {
            Verdict::Passed => VerdictKind::Passed,
            Verdict::Failed(_) => VerdictKind::Failed,
            Verdict::Incomplete(_) => VerdictKind::Incomplete,
            Verdict::Merged => VerdictKind::Merged,
        }
    }

    /// The word published, for SQL and logs.
    pub fn word(&self) -> &'static str {
        self.kind().known().unwrap_or_default()
    }
}

fn fails(l: &Latest) -> bool {
    !l.waived && !l.pre_existing && l.outcome.fails()
}

/// The required results that passed only on a re-run (flaky), and those whose failure the base
/// shows too (pre-existing), as labels: what a report lists apart.
pub fn notes(required: &[Required], latest: &[Latest]) -> (Vec<String>, Vec<String>) {
    let of = |r: &Required| latest.iter().find(|l| &l.which == r);
    let flaky = required.iter().filter_map(|r| of(r).filter(|l| l.flaky && l.outcome == Outcome::Passed)).map(|l| l.which.label());
    let old = required.iter().filter_map(|r| of(r).filter(|l| l.pre_existing && !l.waived && l.outcome.fails())).map(|l| l.which.label());
    (flaky.collect(), old.collect())
}

/// Decides, or `None` while required results are still missing and the deadline has not passed.
pub fn decide(required: &[Required], latest: &[Latest], deadline_passed: bool) -> Option<Verdict> {
    // A failure being run again is not final, until the deadline: then it stands.
    let of = |r: &Required| latest.iter().find(|l| &l.which == r && l.outcome.is_final() && (!l.retrying || deadline_passed));
    if latest.iter().any(|l| l.which.test == APPLY_TEST && l.outcome == Outcome::Info && l.reason == Some(FailureKind::AlreadyMerged)) {
        return Some(Verdict::Merged);
    }
    if let Some(apply) = latest.iter().find(|l| l.which.test == APPLY_TEST && l.outcome == Outcome::Failed && !l.waived) {
        return Some(Verdict::Failed(vec![apply.which.label()]));
    }
    let mut failed: Vec<String> = required.iter().filter_map(|r| of(r).filter(|l| fails(l)).map(|l| l.which.label())).collect();
    let mut missing: Vec<String> = required.iter().filter(|r| of(r).is_none()).map(Required::label).collect();
    failed.sort();
    missing.sort();
    if missing.is_empty() {
        return Some(if failed.is_empty() { Verdict::Passed } else { Verdict::Failed(failed) });
    }
    if !deadline_passed {
        return None;
    }
    Some(if failed.is_empty() { Verdict::Incomplete(missing) } else { Verdict::Failed(failed) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: &str, a: &str) -> Required {
        Required { test: t.into(), arch: a.into() }
    }

    fn got(t: &str, a: &str, outcome: &str) -> Latest {
        Latest {
            which: req(t, a),
            outcome: outcome.into(),
            waived: false,
            reason: None,
            retrying: false,
            flaky: false,
            pre_existing: false,
        }
    }

    fn required() -> Vec<Required> {
        vec![req("apply", "any"), req("build", "x86_64"), req("build", "aarch64")]
    }

    #[test]
    fn waits_then_passes() {
        let r = required();
        assert_eq!(decide(&r, &[got("apply", "any", "PASSED")], false), None);
        assert_eq!(decide(&r, &[got("apply", "any", "PASSED"), got("build", "x86_64", "RUNNING")], false), None);
        let all = [got("apply", "any", "PASSED"), got("build", "x86_64", "PASSED"), got("build", "aarch64", "PASSED")];
        assert_eq!(decide(&r, &all, false), Some(Verdict::Passed));
        // An optional test's failure changes nothing.
        let mut more = all.to_vec();
        more.push(got("lint", "x86_64", "FAILED"));
        assert_eq!(decide(&r, &more, false), Some(Verdict::Passed));
    }

    #[test]
    fn failures_errors_and_waivers() {
        let r = required();
        let mut all = vec![got("apply", "any", "PASSED"), got("build", "x86_64", "FAILED"), got("build", "aarch64", "ERROR")];
        assert_eq!(decide(&r, &all, false), Some(Verdict::Failed(vec!["build/aarch64".into(), "build/x86_64".into()])));
        all[1].waived = true;
        all[2].waived = true;
        assert_eq!(decide(&r, &all, false), Some(Verdict::Passed));
    }

    #[test]
    fn not_applying_fails_at_once() {
        assert_eq!(decide(&required(), &[got("apply", "any", "FAILED")], false), Some(Verdict::Failed(vec!["apply".into()])));
    }

    #[test]
    fn a_series_already_merged_is_decided_merged_at_once_and_not_failed() {
        let merged = Latest { reason: Some(ALREADY_MERGED), ..got("apply", "any", "INFO") };
        assert_eq!(decide(&required(), std::slice::from_ref(&merged), false), Some(Verdict::Merged));
        // The tests' own results (not run, or said merged too) change nothing.
        let with_tests = [merged.clone(), got("build", "x86_64", "ERROR"), got("build", "aarch64", "INFO")];
        assert_eq!(decide(&required(), &with_tests, false).map(|v| v.word()), Some("MERGED"));
        // INFO for another reason, or on another test, decides nothing.
        let other = Latest { reason: Some("note".into()), ..got("apply", "any", "INFO") };
        assert_eq!(decide(&required(), &[other], false), None);
        let on_a_test = Latest { reason: Some(ALREADY_MERGED), ..got("build", "x86_64", "INFO") };
        assert_eq!(decide(&required(), &[on_a_test], false), None);
    }

    #[test]
    fn the_deadline_decides_what_is_missing() {
        let r = required();
        let some = [got("apply", "any", "PASSED"), got("build", "x86_64", "PASSED")];
        assert_eq!(decide(&r, &some, false), None);
        assert_eq!(decide(&r, &some, true), Some(Verdict::Incomplete(vec!["build/aarch64".into()])));
        let failing = [got("apply", "any", "PASSED"), got("build", "x86_64", "FAILED")];
        assert_eq!(decide(&r, &failing, true), Some(Verdict::Failed(vec!["build/x86_64".into()])));
        assert_eq!(decide(&r, &[], true), Some(Verdict::Incomplete(vec!["apply".into(), "build/aarch64".into(), "build/x86_64".into()])));
    }

    #[test]
    fn a_failure_run_again_waits_and_a_pass_on_the_re_run_is_flaky() {
        let r = required();
        let apply = got("apply", "any", "PASSED");
        let retrying = |a: &str| Latest { retrying: true, ..got("build", a, "FAILED") };
        let passed = [apply.clone(), got("build", "x86_64", "PASSED"), retrying("aarch64")];
        assert_eq!(decide(&r, &passed, false), None, "the re-run is not in");
        assert_eq!(decide(&r, &passed, true), Some(Verdict::Failed(vec!["build/aarch64".into()])), "at the deadline it stands");
        let flaky = Latest { flaky: true, ..got("build", "aarch64", "PASSED") };
        let all = [apply, got("build", "x86_64", "PASSED"), flaky];
        assert_eq!(decide(&r, &all, false), Some(Verdict::Passed));
        assert_eq!(notes(&r, &all), (vec!["build/aarch64".to_string()], vec![]));
    }

    #[test]
    fn a_failure_the_base_shows_too_does_not_fail_the_series() {
        let r = required();
        let old = Latest { pre_existing: true, ..got("build", "aarch64", "FAILED") };
        let results = [got("apply", "any", "PASSED"), got("build", "x86_64", "PASSED"), old.clone()];
        assert_eq!(decide(&r, &results, false), Some(Verdict::Passed));
        assert_eq!(notes(&r, &results), (vec![], vec!["build/aarch64".to_string()]));
        let new = [got("apply", "any", "PASSED"), got("build", "x86_64", "FAILED"), old];
        assert_eq!(decide(&r, &new, false), Some(Verdict::Failed(vec!["build/x86_64".into()])), "a new failure still fails");
    }
}
