//! The trends (`/trends`, `GET /api/v1/trends`): per project and week, the series posted, the
//! share of first versions that passed, and the median time from a series' last mail to its
//! report; and the slowest and flakiest tests. Pure: rows in, figures out; the page draws them
//! with uPlot, served from `/assets` (nothing is fetched from elsewhere).

use std::collections::BTreeMap;

use patchbay_model::view::{TestStats, TrendRow};
use patchbay_model::{Timestamp, VerdictKind};
use serde::Serialize;

/// A week, in seconds.
const WEEK: i64 = 7 * 86_400;
/// The Unix epoch was a Thursday: weeks start on Monday, 00:00 UTC, 4 days later.
const MONDAY: i64 = 4 * 86_400;
/// Tests listed as slowest and as flakiest.
const TOP: usize = 10;

/// The figures, as the API gives them and the page draws them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trends {
    /// The first day (Monday, UTC) of each week, oldest first.
    pub weeks: Vec<String>,
    /// Per project, one value per week.
    pub projects: Vec<ProjectTrends>,
    /// Tests by mean duration, slowest first.
    pub slowest: Vec<TestFigure>,
    /// Tests by flake rate, flakiest first (only those that were flaky at all).
    pub flakiest: Vec<TestFigure>,
}

/// One project's weeks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectTrends {
    /// The project.
    pub project: String,
    /// Series posted (every version counts).
    pub series: Vec<u64>,
    /// Of the first versions posted that have a verdict, the share PASSED (0 to 1); `null`
    /// for a week with none.
    pub first_version_passed: Vec<Option<f64>>,
    /// Median seconds from a series' newest mail to its report; `null` for a week with none.
    pub median_report_secs: Vec<Option<f64>>,
}

/// A test's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TestFigure {
    /// Project.
    pub project: String,
    /// Test.
    pub test: String,
    /// Arch.
    pub arch: String,
    /// Final results.
    pub runs: u64,
    /// Mean seconds of a run.
    pub mean_secs: f64,
    /// Passes only on a re-run, in percent of runs.
    pub flake_rate: f64,
}

/// The Monday (00:00 UTC) starting the week of `secs`.
pub fn week_of(secs: i64) -> i64 {
    (secs - MONDAY).div_euclid(WEEK) * WEEK + MONDAY
}

/// The start of the oldest of the `weeks` weeks ending with the one holding `now`.
pub fn since(now: i64, weeks: u32) -> i64 {
    week_of(now) - i64::from(weeks.max(1) - 1) * WEEK
}

fn median(mut values: Vec<i64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] as f64 } else { (values[n / 2 - 1] + values[n / 2]) as f64 / 2.0 })
}

/// The figures of the `weeks` weeks ending with `now`'s, from `rows` (series) and `tests`.
pub fn figures(rows: &[TrendRow], tests: &[TestStats], now: i64, weeks: u32) -> Trends {
    let first = since(now, weeks);
    let n = weeks.max(1) as usize;
    let index = |date: i64| -> Option<usize> {
        let i = (week_of(date) - first).div_euclid(WEEK);
        (0..n as i64).contains(&i).then_some(i as usize)
    };
    #[derive(Default)]
    struct Acc {
        series: Vec<u64>,
        firsts: Vec<(u64, u64)>,
        delays: Vec<Vec<i64>>,
    }
    let mut by_project: BTreeMap<&str, Acc> = BTreeMap::new();
    for r in rows {
        let Some(i) = index(r.date) else { continue };
        let acc = by_project.entry(&r.project).or_insert_with(|| Acc {
            series: vec![0; n],
            firsts: vec![(0, 0); n],
            delays: vec![Vec::new(); n],
        });
        acc.series[i] += 1;
        if r.version == 1
            && let Some(v) = &r.verdict
        {
            acc.firsts[i].1 += 1;
            acc.firsts[i].0 += u64::from(*v == VerdictKind::Passed);
        }
        if let (Some(mail), Some(report)) = (r.newest_mail, r.reported_at) {
            acc.delays[i].push((report - mail).max(0));
        }
    }
    let projects = by_project
        .into_iter()
        .map(|(project, acc)| ProjectTrends {
            project: project.to_string(),
            series: acc.series,
            first_version_passed: acc.firsts.iter().map(|&(p, t)| (t > 0).then(|| p as f64 / t as f64)).collect(),
            median_report_secs: acc.delays.into_iter().map(median).collect(),
        })
        .collect();
    let figure = |t: &TestStats| TestFigure {
        project: t.project.clone(),
        test: t.test.clone(),
        arch: t.arch.clone(),
        runs: t.runs,
        mean_secs: t.mean_ms as f64 / 1000.0,
        flake_rate: t.flake_rate(),
    };
    let mut slowest: Vec<TestFigure> = tests.iter().filter(|t| t.runs > 0).map(figure).collect();
    slowest.sort_by(|a, b| b.mean_secs.total_cmp(&a.mean_secs));
    slowest.truncate(TOP);
    let mut flakiest: Vec<TestFigure> = tests.iter().filter(|t| t.flaky > 0).map(figure).collect();
    flakiest.sort_by(|a, b| b.flake_rate.total_cmp(&a.flake_rate));
    flakiest.truncate(TOP);
    Trends { weeks: (0..n).map(|i| Timestamp::day_of(first + i as i64 * WEEK)).collect(), projects, slowest, flakiest }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(project: &str, date: i64, version: u32, verdict: Option<&str>, delay: Option<i64>) -> TrendRow {
        TrendRow {
            project: project.into(),
            date,
            version,
            verdict: verdict.map(VerdictKind::from),
            newest_mail: delay.map(|_| date),
            reported_at: delay.map(|d| date + d),
        }
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-12-07 is a Monday.
        let monday = 1_796_601_600;
        assert_eq!(Timestamp::day_of(monday), "2026-12-07");
        assert_eq!(week_of(monday), monday);
        assert_eq!(week_of(monday + 6 * 86_400 + 86_399), monday, "Sunday night is the same week");
        assert_eq!(week_of(monday - 1), monday - WEEK);
        assert_eq!(since(monday + 3600, 3), monday - 2 * WEEK);
    }

    #[test]
    fn series_first_version_passes_and_report_delays_by_week() {
        let monday = 1_796_601_600;
        let now = monday + 86_400;
        let last = monday - WEEK;
        let rows = [
            row("net", last + 10, 1, Some("PASSED"), Some(60)),
            row("net", last + 20, 1, Some("FAILED"), Some(120)),
            row("net", last + 30, 2, Some("FAILED"), Some(600)),
            row("net", last + 40, 1, None, None),
            row("net", monday + 5, 1, Some("PASSED"), Some(30)),
            row("hwmon", monday + 5, 1, Some("MERGED"), None),
            row("net", monday - 10 * WEEK, 1, Some("PASSED"), Some(1)),
        ];
        let tests = [
            TestStats {
                project: "net".into(),
                test: "build".into(),
                arch: "x86_64".into(),
                runs: 4,
                failed: 1,
                flaky: 1,
                pre_existing: 0,
                mean_ms: 90_000,
            },
            TestStats {
                project: "net".into(),
                test: "lint".into(),
                arch: "x86_64".into(),
                runs: 4,
                failed: 0,
                flaky: 0,
                pre_existing: 0,
                mean_ms: 2_000,
            },
        ];
        let t = figures(&rows, &tests, now, 2);
        assert_eq!(t.weeks, ["2026-11-30", "2026-12-07"]);
        let net = t.projects.iter().find(|p| p.project == "net").unwrap();
        assert_eq!(net.series, [4, 1], "the old one is out of range");
        assert_eq!(net.first_version_passed, [Some(0.5), Some(1.0)], "only first versions with a verdict");
        assert_eq!(net.median_report_secs, [Some(120.0), Some(30.0)]);
        let hwmon = t.projects.iter().find(|p| p.project == "hwmon").unwrap();
        assert_eq!((hwmon.series.clone(), hwmon.first_version_passed.clone()), (vec![0, 1], vec![None, Some(0.0)]));
        assert_eq!(hwmon.median_report_secs, [None, None]);
        assert_eq!(t.slowest.iter().map(|f| f.test.as_str()).collect::<Vec<_>>(), ["build", "lint"]);
        assert_eq!(t.slowest[0].mean_secs, 90.0);
        assert_eq!((t.flakiest.len(), t.flakiest[0].flake_rate), (1, 25.0));
    }
}
