//! One line per message for people: each body type says what it means in a
//! short sentence (`patchbay tail`, `patchbay query`), so a
//! reader never has to parse JSON by eye. Presentation only: the wire format
//! is untouched.

use crate::body::{
    Body, LogMessage, MailReceived, ReportFailed, ReportSent, ResultRecorded, ResultWaived, RunnerHeartbeat, SeriesComplete, SeriesHead,
    SeriesIncomplete, SeriesMerged, SeriesNew, SeriesSuperseded, SeriesVerdict, TestCancelled, TestFinished, TestJob, TestLog, TestStarted,
};

/// Longest summary, in characters: one terminal line with the time, topic and sender before it.
pub const SUMMARY_CHARS: usize = 160;

/// A one-line summary of a body, so the human forms of the bus agree on what a message says.
pub trait Summary: Body {
    /// One line, no newline; by default the body's compact JSON, cut to [`SUMMARY_CHARS`].
    fn summary(&self) -> String {
        serde_json::to_value(self).map(|v| json_line(&v)).unwrap_or_default()
    }
}

/// A JSON value on one line, cut to [`SUMMARY_CHARS`] with `…`.
pub fn json_line(value: &serde_json::Value) -> String {
    one_line(&value.to_string())
}

/// Text on one line (line breaks and tabs become spaces), cut to [`SUMMARY_CHARS`] with `…`.
pub fn one_line(text: &str) -> String {
    let flat: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= SUMMARY_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(SUMMARY_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn head(s: &SeriesHead) -> String {
    format!(
        "series {} v{} ({}, {} patch{}) {:?} by {}",
        s.id,
        s.version,
        s.project,
        s.total,
        if s.total == 1 { "" } else { "es" },
        s.name,
        s.submitter
    )
}

impl Summary for LogMessage {
    fn summary(&self) -> String {
        one_line(&self.message)
    }
}

impl Summary for MailReceived {
    fn summary(&self) -> String {
        let series = self.series.map(|s| format!(", series {s}")).unwrap_or_default();
        let problems = if self.problems.is_empty() { String::new() } else { format!(", {} problem(s)", self.problems.len()) };
        one_line(&format!("{} {:?} from {}{series}{problems}", self.kind, self.subject, self.from.as_deref().unwrap_or("(no From)")))
    }
}

impl Summary for SeriesNew {
    fn summary(&self) -> String {
        one_line(&format!("new {}", head(&self.series)))
    }
}

impl Summary for SeriesComplete {
    fn summary(&self) -> String {
        one_line(&format!("complete {}", head(&self.series)))
    }
}

impl Summary for SeriesIncomplete {
    fn summary(&self) -> String {
        let missing: Vec<String> = self.missing.iter().map(u32::to_string).collect();
        one_line(&format!("incomplete, missing patch(es) {}: {}", missing.join(", "), head(&self.series)))
    }
}

impl Summary for SeriesSuperseded {
    fn summary(&self) -> String {
        one_line(&format!("superseded by series {} v{}: {}", self.by, self.by_version, head(&self.series)))
    }
}

impl Summary for SeriesMerged {
    fn summary(&self) -> String {
        let last = self.commits.last().map_or("", |c| &c[..c.len().min(12)]);
        one_line(&format!("merged in {} (last patch {last}): {}", self.branch, head(&self.series)))
    }
}

impl Summary for TestJob {
    fn summary(&self) -> String {
        one_line(&format!("job {} queued: {} on {} for series {} v{}", self.job, self.test, self.arch, self.series.id, self.series.version))
    }
}

impl Summary for RunnerHeartbeat {
    fn summary(&self) -> String {
        let running = if self.running.is_empty() { "idle".to_string() } else { format!("running {}", self.running.join(", ")) };
        one_line(&format!("runner alive: {} slot(s), {running}; can {}", self.jobs, self.capabilities.join(", ")))
    }
}

impl Summary for TestStarted {
    fn summary(&self) -> String {
        one_line(&format!("job {} started (attempt {})", self.job, self.attempt))
    }
}

impl Summary for TestFinished {
    fn summary(&self) -> String {
        let reason = match &self.reason {
            Some(r) if !r.as_str().eq_ignore_ascii_case(self.outcome.as_str()) => format!(" ({r})"),
            _ => String::new(),
        };
        let patch = self.failed_patch.as_ref().map(|p| format!(" at {p:?}")).unwrap_or_default();
        one_line(&format!("job {} {}{reason}{patch} in {:.1} s", self.job, self.outcome, self.duration_ms as f64 / 1000.0))
    }
}

impl Summary for TestCancelled {
    fn summary(&self) -> String {
        one_line(&format!("job {} cancelled: {}", self.job, self.reason))
    }
}

impl Summary for TestLog {
    fn summary(&self) -> String {
        let last = if self.last { ", the last" } else { "" };
        one_line(&format!("log of job {}: chunk {}{last}, {} bytes", self.job, self.index, self.text.len()))
    }
}

impl Summary for ResultRecorded {
    fn summary(&self) -> String {
        let reason = match &self.reason {
            Some(r) if !r.as_str().eq_ignore_ascii_case(self.outcome.as_str()) => format!(" ({r})"),
            _ => String::new(),
        };
        let again = if self.duplicate { ", as before" } else { "" };
        one_line(&format!("result {}: job {} {}{reason}{again}", self.result, self.job, self.outcome))
    }
}

impl Summary for ResultWaived {
    fn summary(&self) -> String {
        one_line(&format!("result {} (job {}) waived by {}: {}", self.result, self.job, self.by, self.comment))
    }
}

impl Summary for SeriesVerdict {
    fn summary(&self) -> String {
        let mut what = String::new();
        if !self.failed.is_empty() {
            what += &format!(": failed {}", self.failed.join(", "));
        }
        if !self.missing.is_empty() {
            what += &format!("; missing {}", self.missing.join(", "));
        }
        one_line(&format!("{} for series {} v{}{what}", self.verdict, self.series.id, self.series.version))
    }
}

impl Summary for ReportSent {
    fn summary(&self) -> String {
        one_line(&format!("report {} for series {} v{} sent by {}", self.verdict, self.series.id, self.series.version, self.transport))
    }
}

impl Summary for ReportFailed {
    fn summary(&self) -> String {
        one_line(&format!("report {} for series {} v{} not sent: {}", self.verdict, self.series.id, self.series.version, self.reason))
    }
}

fn decoded<B: Summary>(body: &serde_json::Value) -> Option<String> {
    B::deserialize(body).ok().map(|b| b.summary())
}

/// The summary of a body by its schema name, whatever its type; a body that does not decode
/// (an unknown or newer schema, free-form JSON) is its JSON on one line.
pub fn summarize(schema: &str, body: &serde_json::Value) -> String {
    let typed = match schema {
        LogMessage::SCHEMA => decoded::<LogMessage>(body),
        MailReceived::SCHEMA => decoded::<MailReceived>(body),
        SeriesNew::SCHEMA => decoded::<SeriesNew>(body),
        SeriesComplete::SCHEMA => decoded::<SeriesComplete>(body),
        SeriesIncomplete::SCHEMA => decoded::<SeriesIncomplete>(body),
        SeriesSuperseded::SCHEMA => decoded::<SeriesSuperseded>(body),
        SeriesMerged::SCHEMA => decoded::<SeriesMerged>(body),
        TestJob::SCHEMA => decoded::<TestJob>(body),
        RunnerHeartbeat::SCHEMA => decoded::<RunnerHeartbeat>(body),
        TestStarted::SCHEMA => decoded::<TestStarted>(body),
        TestFinished::SCHEMA => decoded::<TestFinished>(body),
        TestCancelled::SCHEMA => decoded::<TestCancelled>(body),
        TestLog::SCHEMA => decoded::<TestLog>(body),
        ResultRecorded::SCHEMA => decoded::<ResultRecorded>(body),
        ResultWaived::SCHEMA => decoded::<ResultWaived>(body),
        SeriesVerdict::SCHEMA => decoded::<SeriesVerdict>(body),
        ReportSent::SCHEMA => decoded::<ReportSent>(body),
        ReportFailed::SCHEMA => decoded::<ReportFailed>(body),
        _ => None,
    };
    typed.unwrap_or_else(|| json_line(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_as_one_line_each() {
        assert_eq!(summarize("patchbay.log", &serde_json::json!({"message": "nightly\nbuild done"})), "nightly build done");
        assert_eq!(summarize("patchbay.json", &serde_json::json!({"n": 1})), "{\"n\":1}");
        let long = "x".repeat(500);
        assert_eq!(summarize("patchbay.log", &serde_json::json!({ "message": long })).chars().count(), SUMMARY_CHARS);
        let beat = serde_json::json!({"capabilities": ["x86_64"], "jobs": 2, "running": []});
        assert_eq!(summarize("patchbay.ci.heartbeat", &beat), "runner alive: 2 slot(s), idle; can x86_64");
    }
}
