//! The report mail: one plain-text reply per verdict, threaded under the
//! series (`In-Reply-To` the cover letter, or patch 1 without one;
//! `References` the thread chain; `Subject: Re: <cover subject>`), with a
//! stable Message-ID so a resend is recognised, `Auto-Submitted`, and
//! `X-Patchbay-*` headers for mail filters. Pure: text in, bytes out.
//! Nothing in it names the test infrastructure.

/// Who gets the report (`report.recipients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipients {
    /// The submitter only.
    Submitter,
    /// The list only.
    List,
    /// The submitter, with the list in Cc.
    Both,
}

/// The thread a report answers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Thread {
    /// The mail the report replies to (cover letter, else patch 1).
    pub reply_to: String,
    /// Its `References` chain (oldest first), without `reply_to`.
    pub references: Vec<String>,
    /// Its subject line, as posted.
    pub subject: String,
    /// The submitter's address.
    pub submitter: String,
    /// The list's posting address, when known.
    pub list: Option<String>,
}

/// One line of the result table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Line {
    /// `test/arch` (or `apply`).
    pub what: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Why, for failures.
    pub reason: Option<FailureKind>,
    /// Seconds it took.
    pub seconds: u64,
    /// The end of its log, for failures.
    pub excerpt: Option<String>,
    /// Where its full log is served, when known.
    pub log_url: Option<String>,
    /// It passed on a re-run after failing.
    pub flaky: bool,
    /// It failed as the base alone does: not counted against the series.
    pub pre_existing: bool,
}

/// What the report says.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Series id and version, for the Message-ID and headers.
    pub series: i64,
    /// Version.
    pub version: u32,
    /// The number of patches in the series (N of `n/N`), 0 when unknown.
    pub total: u32,
    /// Project.
    pub project: String,
    /// PASSED, FAILED, INCOMPLETE or MERGED.
    pub verdict: VerdictKind,
    /// What failed (`test/arch`).
    pub failed: Vec<String>,
    /// What never reported.
    pub missing: Vec<String>,
    /// Required tests that passed only on a re-run.
    pub flaky: Vec<String>,
    /// Required tests that failed as the base alone does (not counted).
    pub pre_existing: Vec<String>,
    /// One line per test × arch.
    pub lines: Vec<Line>,
    /// The base the series was applied to, and why.
    pub base: Option<String>,
    /// A link to the series' web page, when there is one.
    pub link: Option<String>,
    /// The scripts of the tests that did not pass, by test name, for "To reproduce".
    pub reproduce: Vec<(String, String)>,
    /// A re-test asked on the list: its round (0: the version's first testing).
    pub round: u32,
    /// What the re-test re-ran.
    pub recheck: Vec<String>,
}

/// How reports are sent.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `From:`.
    pub from: String,
    /// The domain of report Message-IDs.
    pub domain: String,
    /// Who gets it.
    pub recipients: Recipients,
}

/// The stable Message-ID of the report of one series version.
pub fn message_id(series: i64, version: u32, domain: &str) -> String {
    message_id_of_round(series, version, 0, domain)
}

/// The stable Message-ID of a report: the version's first (round 0), or of a re-test asked on
/// the list (`-r<round>`), each its own mail in the same thread.
pub fn message_id_of_round(series: i64, version: u32, round: u32, domain: &str) -> String {
    match round {
        0 => format!("<patchbay-report-{series}-v{version}@{domain}>"),
        r => format!("<patchbay-report-{series}-v{version}-r{r}@{domain}>"),
    }
}

/// Wraps text at 72 columns; lines that cannot be broken (URLs, log lines) are kept whole.
pub fn wrap(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.chars().count() <= 72 || line.starts_with(' ') || line.starts_with('|') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut current = String::new();
        for word in line.split(' ') {
            if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > 72 {
                out.push_str(&current);
                out.push('\n');
                current.clear();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push_str(&current);
        out.push('\n');
    }
    out
}

/// Lines of a log excerpt kept in the mail: the last ones, where the errors are.
const EXCERPT_LINES: usize = 40;

/// Lines of the conflicting hunk kept in an apply-failure report (the rest is in the full log).
const HUNK_LINES: usize = 12;

use patchbay_model::{APPLY_TEST, FailureKind, Outcome, VerdictKind};
pub use patchbay_verdict::ALREADY_MERGED;

/// The reason of a test that could not run because its series does not apply; the word is
/// `model`'s, this name stays for callers.
pub const NOT_APPLIED: FailureKind = FailureKind::SeriesDoesNotApply;

/// The line the runner writes between `git am`'s messages and the failing patch's diff.
const PATCH_MARKER: &str = "--- the patch that failed ---";

/// What the log of a failed `git am -3` says, in the words a maintainer needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyFailure {
    /// The failing patch's number (n of `n/N`), from `Patch failed at NNNN <subject>`.
    pub patch: Option<u32>,
    /// Its subject, as `git am` printed it.
    pub subject: Option<String>,
    /// The files git named as not applying or conflicting, in order, each once.
    pub files: Vec<String>,
    /// git's own error and conflict lines (hints and progress left out).
    pub messages: Vec<String>,
    /// The conflicting hunk (the hunk git named by line, else the first hunk of the first file), at most [`HUNK_LINES`] lines.
    pub hunk: Option<String>,
    /// Whether git named the hunk (`error: patch failed: F:LINE`); a 3-way conflict names only the file.
    pub hunk_named: bool,
    /// How many hunks the failing patch has in that file.
    pub hunks_in_file: usize,
}

/// Reads an apply failure out of a `git am -3` log (or its tail): the failing patch, the files and the hunk.
///
/// Git names the file in one of several ways (`CONFLICT (content): Merge
/// conflict in F`, `error: patch failed: F:LINE`, `error: F: patch does not
/// apply`, `error: F: does not exist in index`, `error: sha1 information is
/// lacking or useless (F).`, `CONFLICT (modify/delete): F deleted in …`); the
/// hunk comes from the failing patch's diff the runner appends after
/// `--- the patch that failed ---`.
pub fn apply_failure(log: &str) -> ApplyFailure {
    let (messages_part, diff) = match log.find(PATCH_MARKER) {
        Some(i) => (&log[..i], &log[i + PATCH_MARKER.len()..]),
        None => match log.find("\ndiff --git ") {
            Some(i) => (&log[..i], &log[i..]),
            None => (log, ""),
        },
    };
    let mut f = ApplyFailure::default();
    let mut at_line: Option<(String, u32)> = None;
    for line in messages_part.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("Patch failed at ") {
            let (num, subject) = rest.split_once(' ').unwrap_or((rest, ""));
            f.patch = num.parse().ok();
            f.subject = Some(subject.trim().to_string()).filter(|s| !s.is_empty());
            f.messages.push(line.to_string());
            continue;
        }
        let file = if let Some(rest) = line.strip_prefix("CONFLICT (") {
            let rest = rest.split_once("): ").map_or("", |(_, r)| r);
            rest.strip_prefix("Merge conflict in ").map(str::to_string).or_else(|| rest.split(' ').next().map(str::to_string))
        } else if let Some(rest) = line.strip_prefix("error: patch failed: ") {
            let (file, num) = rest.rsplit_once(':').unwrap_or((rest, ""));
            if let Ok(n) = num.parse() {
                at_line.get_or_insert((file.to_string(), n));
            }
            Some(file.to_string())
        } else if let Some(rest) = line.strip_prefix("error: sha1 information is lacking or useless (") {
            Some(rest.trim_end_matches(['.', ')']).to_string())
        } else if let Some(rest) = line.strip_prefix("error: ") {
            rest.strip_suffix(": patch does not apply").or_else(|| rest.strip_suffix(": does not exist in index")).map(str::to_string)
        } else {
            None
        };
        if line.starts_with("error: ") || line.starts_with("CONFLICT ") {
            f.messages.push(line.to_string());
        }
        if let Some(file) = file.filter(|x| !x.is_empty())
            && !f.files.contains(&file)
        {
            f.files.push(file);
        }
    }
    if let Some(file) = f.files.first() {
        let line = at_line.as_ref().filter(|(f, _)| f == file).map(|(_, n)| *n);
        if let Some((hunk, named, count)) = hunk_of(diff, file, line) {
            (f.hunk, f.hunk_named, f.hunks_in_file) = (Some(hunk), named, count);
        }
    }
    f
}

/// The hunk of `file` in `diff` starting at old line `line` (else its first hunk), cut to
/// [`HUNK_LINES`]; whether it was found by its line; how many hunks the file has.
fn hunk_of(diff: &str, file: &str, line: Option<u32>) -> Option<(String, bool, usize)> {
    let header = format!("diff --git a/{file} b/");
    let start = diff.find(&header)?;
    let section = &diff[start..];
    let section = section[1..].find("\ndiff --git ").map_or(section, |end| &section[..end + 1]);
    let mut hunks: Vec<Vec<&str>> = Vec::new();
    for l in section.lines() {
        if l.starts_with("@@ ") {
            hunks.push(vec![l]);
        } else if l == "-- " {
            break;
        } else if let Some(h) = hunks.last_mut() {
            h.push(l);
        }
    }
    let starts_at = |h: &&Vec<&str>, n: u32| {
        h[0].strip_prefix("@@ -").and_then(|r| r.split([',', ' ']).next()).and_then(|x| x.parse::<u32>().ok()) == Some(n)
    };
    let named = line.and_then(|n| hunks.iter().find(|h| starts_at(h, n)));
    let hunk = named.or(hunks.first())?;
    let mut text: Vec<String> = hunk.iter().take(HUNK_LINES).map(|l| l.to_string()).collect();
    if hunk.len() > HUNK_LINES {
        text.push(format!("[... {} more lines]", hunk.len() - HUNK_LINES));
    }
    Some((text.join("\n"), named.is_some(), hunks.len()))
}

/// The line a report adds when the series named no base: how to name it.
pub const BASE_HINT: &str = "To name the base next time: `git format-patch --base=<commit>`.\n";

/// Whether a base as reports show it (`<commit> (<reason>)`) was chosen without the series
/// naming one: only the reason `base-commit` (used) or a `base-commit …` not found says it did.
pub fn names_no_base(base: &str) -> bool {
    !base.contains("base-commit")
}

/// Quotes `text` with `| `, one line each.
fn quote(b: &mut String, text: &str) {
    for line in text.lines() {
        b.push_str("| ");
        b.push_str(line);
        b.push('\n');
    }
}

/// The body of a report whose series does not apply: the patch, the file, the hunk, the base, what to do.
fn apply_failure_body(r: &Report, apply: &Line) -> String {
    let f = apply_failure(apply.excerpt.as_deref().unwrap_or(""));
    let mut b = String::from("Hello,\n\n");
    let patch = match (f.patch, r.total) {
        (Some(n), total) if total > 0 => format!("patch {n}/{total}"),
        (Some(n), _) => format!("patch {n}"),
        (None, _) => "one of its patches".to_string(),
    };
    b.push_str(&wrap(&format!("patchbay could not apply this series: {patch} does not apply to the base below, so nothing was tested.")));
    b.push('\n');
    if let Some(subject) = &f.subject {
        b.push_str(&format!("  Patch:  {}{subject}\n", f.patch.map(|n| format!("[{n}/{}] ", r.total)).unwrap_or_default()));
    }
    if !f.files.is_empty() {
        b.push_str(&format!("  File:   {}\n", f.files.join(", ")));
    }
    if let Some(base) = &r.base {
        b.push_str(&format!("  Base:   {base}\n"));
    }
    let not_run: Vec<&str> =
        r.lines.iter().filter(|l| l.reason == Some(FailureKind::SeriesDoesNotApply)).map(|l| l.what.as_str()).collect();
    if not_run.is_empty() {
        b.push_str("  Tests:  not run\n");
    } else {
        b.push_str(&format!("  Tests:  not run ({})\n", not_run.join(", ")));
    }
    if !f.messages.is_empty() {
        b.push_str("\ngit am -3 said:\n");
        quote(&mut b, &f.messages.join("\n"));
    }
    match (&f.hunk, f.files.first()) {
        (Some(hunk), Some(file)) => {
            let which = match (f.hunk_named, f.hunks_in_file) {
                (true, _) => format!("The hunk of {file} that does not apply:"),
                (false, 1) => format!("The patch's change to {file}:"),
                (false, n) => format!("The first of the patch's {n} hunks in {file}:"),
            };
            b.push('\n');
            b.push_str(&which);
            b.push('\n');
            quote(&mut b, hunk);
        }
        _ if f.messages.is_empty() => {
            // Nothing git said could be read: show the end of the log, once.
            if let Some(excerpt) = apply.excerpt.as_deref().filter(|e| !e.trim().is_empty()) {
                b.push('\n');
                quote(&mut b, &last_lines(excerpt));
            }
        }
        _ => {}
    }
    if let Some(url) = &apply.log_url {
        b.push_str(&format!("Full log: {url}\n"));
    }
    if let Some(link) = &r.link {
        b.push_str(&format!("Details: {link}\n"));
    }
    b.push('\n');
    b.push_str(&wrap(
        "What to do: rebase the series onto the base above and post the next version; if it was written for another base, name it with `git format-patch --base=<commit>`.",
    ));
    b.push_str("\n-- \npatchbay, automated testing of patches posted to this list\n");
    b
}

/// The body of a report whose series is already in the branch: each patch and the commit holding it.
fn merged_body(r: &Report) -> String {
    let mut b = String::from("Hello,\n\n");
    b.push_str(&wrap(
        "patchbay did not test this series: it is already merged. Each of its patches is in the branch, as the same change (git patch-id --stable):",
    ));
    b.push('\n');
    let said = r.lines.iter().find(|l| l.what == APPLY_TEST).and_then(|l| l.excerpt.as_deref()).unwrap_or("");
    for line in said.lines().map(str::trim).filter(|l| l.contains(" already merged as ")) {
        b.push_str(&format!("  {line}\n"));
    }
    if let Some(base) = &r.base {
        b.push('\n');
        b.push_str(&wrap(&format!("Branch head: {base}")));
    }
    if let Some(link) = &r.link {
        b.push_str(&format!("\nDetails: {link}\n"));
    }
    b.push('\n');
    b.push_str(&wrap("Nothing to do, unless this was meant as a new version: then the next one needs to differ from what was merged."));
    b.push_str("\n-- \npatchbay, automated testing of patches posted to this list\n");
    b
}

fn body(r: &Report) -> String {
    if r.verdict == VerdictKind::Merged {
        return merged_body(r);
    }
    if r.verdict == VerdictKind::Failed
        && let Some(apply) =
            r.lines.iter().find(|l| l.what == APPLY_TEST && l.outcome == Outcome::Failed && l.reason == Some(FailureKind::Apply))
    {
        return apply_failure_body(r, apply);
    }
    let mut b = String::new();
    b.push_str("Hello,\n\n");
    let summary = match r.verdict {
        VerdictKind::Passed => "patchbay applied this series and every required test passed.".to_string(),
        VerdictKind::Failed => format!("patchbay tested this series and it FAILED: {}.", r.failed.join(", ")),
        _ => format!("patchbay could not finish testing this series in time; still missing: {}.", r.missing.join(", ")),
    };
    b.push_str(&wrap(&summary));
    if r.round > 0 {
        b.push_str(&wrap(&format!("Re-tested on request (round {}): {}.", r.round, r.recheck.join(", "))));
    }
    if !r.pre_existing.is_empty() {
        let old = format!("Failing on the base alone too, so not counted against this series: {}.", r.pre_existing.join(", "));
        b.push_str(&wrap(&old));
    }
    if !r.flaky.is_empty() {
        b.push_str(&wrap(&format!("Flaky (failed, then passed when run again): {}.", r.flaky.join(", "))));
    }
    b.push('\n');
    let not_applied = |l: &&Line| l.reason == Some(FailureKind::SeriesDoesNotApply);
    let width = r.lines.iter().map(|l| l.what.len()).max().unwrap_or(4).max(4);
    for l in r.lines.iter().filter(|l| !not_applied(l)) {
        // The reason once: `FAILED (timeout)`, but `FAILED`, not `FAILED (failed)`.
        let reason = l
            .reason
            .as_ref()
            .filter(|x| !x.as_str().eq_ignore_ascii_case(l.outcome.as_str()))
            .map(|x| format!(" ({x})"))
            .unwrap_or_default();
        let mark = match (l.flaky, l.pre_existing) {
            (true, _) => "  flaky",
            (_, true) => "  pre-existing",
            _ => "",
        };
        b.push_str(&format!("  {:width$}  {}{}  {}{mark}\n", l.what, l.outcome, reason, patchbay_verdict::duration(l.seconds)));
    }
    // Tests that never ran because the series does not apply: one line, whatever their number.
    let not_run: Vec<&str> = r.lines.iter().filter(not_applied).map(|l| l.what.as_str()).collect();
    if !not_run.is_empty() {
        b.push_str(&format!("  not run, the series does not apply: {}\n", not_run.join(", ")));
    }
    if let Some(base) = &r.base {
        b.push('\n');
        b.push_str(&wrap(&format!("Applied to: {base}")));
        if names_no_base(base) {
            b.push_str(BASE_HINT);
        }
    }
    // Each excerpt once: a second test with the same log points to the first.
    let mut shown: Vec<(&str, String)> = Vec::new();
    for l in r.lines.iter().filter(|l| l.outcome != Outcome::Passed && !not_applied(l)) {
        let Some(excerpt) = l.excerpt.as_ref().filter(|e| !e.trim().is_empty()) else { continue };
        let excerpt = last_lines(excerpt);
        if let Some((first, _)) = shown.iter().find(|(_, e)| *e == excerpt) {
            b.push_str(&format!("\n--- {} ({}): the same log as {first} ---\n", l.what, l.outcome));
            continue;
        }
        let old = if l.pre_existing { ", pre-existing: the base alone fails too" } else { "" };
        b.push_str(&format!("\n--- {} ({}{old}) ---\n", l.what, l.outcome));
        quote(&mut b, &excerpt);
        if let Some(url) = &l.log_url {
            b.push_str(&format!("Full log: {url}\n"));
        }
        shown.push((l.what.as_str(), excerpt));
    }
    if let Some(link) = &r.link {
        b.push_str(&format!("\nDetails: {link}\n"));
    }
    b.push_str(&reproduce(&r.reproduce));
    b.push_str("\n-- \npatchbay, automated testing of patches posted to this list\n");
    b
}

/// "To reproduce": the steps, with the failing tests' own scripts when they are known.
fn reproduce(scripts: &[(String, String)]) -> String {
    if scripts.is_empty() {
        return "\nTo reproduce: apply the series with `git am -3` on the base above and\nrun the project's test script.\n".into();
    }
    let mut b = String::from("\nTo reproduce: apply the series with `git am -3` on the base above,\nthen in the tree:\n");
    for (test, script) in scripts {
        b.push_str(&format!("  # {test}\n"));
        for line in script.lines() {
            b.push_str(&format!("  {line}\n"));
        }
    }
    b
}

/// `To:` and `Cc:` of the report, as `report.recipients` says (the list only when known).
pub fn recipients(thread: &Thread, settings: &Settings) -> (String, Option<String>) {
    match (settings.recipients, &thread.list) {
        (Recipients::Submitter, _) | (_, None) => (thread.submitter.clone(), None),
        (Recipients::List, Some(list)) => (list.clone(), None),
        (Recipients::Both, Some(list)) => (thread.submitter.clone(), Some(list.clone())),
    }
}

/// The bare address of `Name <addr>` (or the text itself).
pub fn address(mailbox: &str) -> &str {
    match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(a), Some(b)) if a < b => &mailbox[a + 1..b],
        _ => mailbox.trim(),
    }
}

/// A header value from mail we did not write: control characters (CR, LF above all, which
/// would start a header of the sender's choosing) become spaces.
fn clean(value: &str) -> String {
    value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_string()
}

/// A maintainer's template for the report's body (minijinja), checked when it is loaded.
///
/// The template sees `report` (series, version, project, verdict, failed, missing, lines
/// with what/outcome/reason/seconds/excerpt/log_url, base, link), `thread` (subject,
/// submitter) and `default_body`, the built-in text, to wrap or replace. Undefined names
/// are errors, and the template is rendered against a sample (a FAILED report) when it is
/// loaded, so syntax errors and typos on the paths that sample takes show then; a typo in
/// a branch it does not take shows at run time, where the built-in text is used instead.
/// The output is wrapped at 72 columns like the built-in body; headers stay ours.
#[derive(Debug)]
pub struct Template {
    env: minijinja::Environment<'static>,
}

/// Renders a minijinja error as `line N: what`, for a maintainer to find it.
fn describe(e: &minijinja::Error) -> String {
    let what = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => format!("line {line}: {what}"),
        None => what,
    }
}

impl Template {
    /// Compiles `source` and renders it once against a sample report, so errors surface now.
    pub fn new(source: String) -> Result<Template, String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let syntax = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build().map_err(|e| describe(&e))?;
        env.set_syntax(syntax);
        env.add_template_owned("report", source).map_err(|e| describe(&e))?;
        let t = Template { env };
        let sample = Report {
            series: 1,
            version: 2,
            total: 3,
            project: "sample".into(),
            verdict: "FAILED".into(),
            failed: vec!["build/x86_64".into()],
            missing: vec![],
            flaky: vec![],
            pre_existing: vec![],
            lines: vec![Line {
                what: "build/x86_64".into(),
                outcome: "FAILED".into(),
                reason: Some("failed".into()),
                seconds: 3,
                excerpt: Some("error: sample".into()),
                log_url: None,
                flaky: false,
                pre_existing: false,
            }],
            base: None,
            link: None,
            reproduce: vec![],
            round: 0,
            recheck: vec![],
        };
        let thread = Thread {
            reply_to: "<a@b>".into(),
            references: vec![],
            subject: "[PATCH 0/1] sample".into(),
            submitter: "A <a@b>".into(),
            list: None,
        };
        t.render(&sample, &thread)?;
        Ok(t)
    }

    /// The body for `r`, wrapped at 72 columns.
    pub fn render(&self, r: &Report, thread: &Thread) -> Result<String, String> {
        let mut shown = r.clone();
        for l in &mut shown.lines {
            l.excerpt = l.excerpt.as_deref().map(last_lines);
        }
        let ctx = minijinja::context! {
            report => minijinja::Value::from(minijinja::value::Serde(&shown)),
            thread => minijinja::context! { subject => thread.subject.clone(), submitter => thread.submitter.clone() },
            default_body => body(r),
        };
        let tmpl = self.env.get_template("report").map_err(|e| describe(&e))?;
        Ok(wrap(&tmpl.render(ctx).map_err(|e| describe(&e))?))
    }
}

/// The last [`EXCERPT_LINES`] lines of a log excerpt.
fn last_lines(excerpt: &str) -> String {
    let lines: Vec<&str> = excerpt.lines().collect();
    lines[lines.len().saturating_sub(EXCERPT_LINES)..].join("\n")
}

/// The whole mail with the built-in body, ready to send or to drop in a maildir.
pub fn compose(r: &Report, thread: &Thread, settings: &Settings, date: &str) -> Vec<u8> {
    compose_with(r, thread, settings, date, None).expect("the built-in body always renders")
}

/// The whole mail, its body from `template` when given; a template that fails to render is
/// an error (the caller decides whether to fall back to [`compose`]).
pub fn compose_with(r: &Report, thread: &Thread, settings: &Settings, date: &str, template: Option<&Template>) -> Result<Vec<u8>, String> {
    let thread = &Thread {
        reply_to: clean(&thread.reply_to),
        references: thread.references.iter().map(|x| clean(x)).collect(),
        subject: clean(&thread.subject),
        submitter: clean(&thread.submitter),
        list: thread.list.as_ref().map(|l| clean(l)),
    };
    let text = match template {
        Some(t) => t.render(r, thread)?,
        None => body(r),
    };
    let (to, cc) = recipients(thread, settings);
    let subject = thread.subject.trim();
    let subject = if subject.to_ascii_lowercase().starts_with("re:") { subject.to_string() } else { format!("Re: {subject}") };
    let mut refs = thread.references.clone();
    refs.push(thread.reply_to.clone());
    let mut h = String::new();
    h.push_str(&format!("From: {}\n", settings.from));
    h.push_str(&format!("To: {to}\n"));
    if let Some(cc) = cc {
        h.push_str(&format!("Cc: {cc}\n"));
    }
    h.push_str(&format!("Subject: {}\n", encode_header(&subject)));
    h.push_str(&format!("Date: {date}\n"));
    h.push_str(&format!("Message-ID: {}\n", message_id_of_round(r.series, r.version, r.round, &settings.domain)));
    h.push_str(&format!("In-Reply-To: {}\n", thread.reply_to));
    h.push_str(&format!("References: {}\n", refs.join("\n ")));
    h.push_str("Auto-Submitted: auto-generated\n");
    h.push_str(&format!("X-Patchbay-Verdict: {}\n", r.verdict));
    h.push_str(&format!("X-Patchbay-Project: {}\n", r.project));
    h.push_str(&format!("X-Patchbay-Series: {} v{}\n", r.series, r.version));
    h.push_str("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n");
    let mut out = h.into_bytes();
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// RFC 2047 for a header with non-ASCII text (UTF-8, base64, one encoded word per 45 bytes).
fn encode_header(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut words = Vec::new();
    let mut chunk = String::new();
    let flush = |chunk: &str, words: &mut Vec<String>| {
        let bytes = chunk.as_bytes();
        let mut enc = String::new();
        for c in bytes.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    enc.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    enc.push('=');
                }
            }
        }
        words.push(format!("=?UTF-8?B?{enc}?="));
    };
    for ch in text.chars() {
        if chunk.len() + ch.len_utf8() > 45 {
            flush(&chunk, &mut words);
            chunk.clear();
        }
        chunk.push(ch);
    }
    if !chunk.is_empty() {
        flush(&chunk, &mut words);
    }
    words.join("\n ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            series: 7,
            version: 2,
            total: 3,
            project: "demo".into(),
            verdict: "FAILED".into(),
            failed: vec!["build/x86_64".into()],
            missing: vec![],
            flaky: vec![],
            pre_existing: vec![],
            lines: vec![
                Line {
                    what: "apply".into(),
                    outcome: "PASSED".into(),
                    reason: None,
                    seconds: 1,
                    excerpt: None,
                    log_url: None,
                    flaky: false,
                    pre_existing: false,
                },
                Line {
                    what: "build/x86_64".into(),
                    outcome: "FAILED".into(),
                    reason: Some("failed".into()),
                    seconds: 42,
                    excerpt: Some("cc -c hello.c\nhello.c:3:2: error: expected ';'\n".into()),
                    log_url: Some("https://ci.example.org/api/v1/logs/7-v2-build-x86_64".into()),
                    flaky: false,
                    pre_existing: false,
                },
            ],
            base: Some("0123abcd (branch main)".into()),
            link: Some("https://ci.example.org/series/7".into()),
            reproduce: vec![],
            round: 0,
            recheck: vec![],
        }
    }

    fn thread() -> Thread {
        Thread {
            reply_to: "<cover@x>".into(),
            references: vec!["<v1@x>".into()],
            subject: "[PATCH v2 0/3] hwmon: add a driver".into(),
            submitter: "dev@example.org".into(),
            list: Some("linux-hwmon@vger.kernel.org".into()),
        }
    }

    #[test]
    fn a_template_replaces_the_body_and_keeps_our_headers() {
        let settings = Settings { from: "patchbay <ci@example.org>".into(), domain: "ci.example.org".into(), recipients: Recipients::Both };
        let long = "word ".repeat(30);
        let t = Template::new(format!(
            "{{{{ report.verdict }}}} for {{{{ thread.subject }}}}\n{{% for l in report.lines %}}{{{{ l.what }}}} {{{{ l.outcome }}}}{{% if l.excerpt %}}\n| {{{{ l.excerpt }}}}{{% endif %}}\n{{% endfor %}}{long}\n"
        ))
        .unwrap();
        let mail =
            String::from_utf8(compose_with(&report(), &thread(), &settings, "Mon, 1 Jan 2024 00:00:00 +0000", Some(&t)).unwrap()).unwrap();
        let (head, body) = mail.split_once("\n\n").unwrap();
        assert!(head.contains("In-Reply-To: <cover@x>") && head.contains("X-Patchbay-Verdict: FAILED"), "{head}");
        assert!(
            body.starts_with("FAILED for [PATCH v2 0/3] hwmon: add a driver\napply PASSED\nbuild/x86_64 FAILED\n| cc -c hello.c"),
            "{body}"
        );
        assert!(body.lines().all(|l| l.chars().count() <= 72 || l.starts_with('|')), "wrapped: {body}");
        // The built-in text is there for templates that only add to it.
        let t = Template::new("Hi.\n{{ default_body }}".into()).unwrap();
        let body = t.render(&report(), &thread()).unwrap();
        assert!(body.starts_with("Hi.\nHello,\n") && body.contains("hello.c:3:2: error"), "{body}");
    }

    #[test]
    fn template_errors_name_the_line_when_loaded() {
        let e = Template::new("ok\n{{ report.verdikt }}".into()).unwrap_err();
        assert!(e.starts_with("line 2: undefined value"), "{e}");
        let e = Template::new("{% for x in %}".into()).unwrap_err();
        assert!(e.starts_with("line 1: syntax error"), "{e}");
    }

    #[test]
    fn threads_under_the_series_and_names_each_result() {
        let settings = Settings { from: "patchbay <ci@example.org>".into(), domain: "ci.example.org".into(), recipients: Recipients::Both };
        let mail = String::from_utf8(compose(&report(), &thread(), &settings, "Mon, 1 Jan 2024 00:00:00 +0000")).unwrap();
        assert!(mail.contains("\nSubject: Re: [PATCH v2 0/3] hwmon: add a driver\n"));
        assert!(mail.contains("\nIn-Reply-To: <cover@x>\n"));
        assert!(mail.contains("\nReferences: <v1@x>\n <cover@x>\n"));
        assert!(mail.contains("\nMessage-ID: <patchbay-report-7-v2@ci.example.org>\n"));
        assert!(mail.contains("\nTo: dev@example.org\nCc: linux-hwmon@vger.kernel.org\n"));
        assert!(mail.contains("\nAuto-Submitted: auto-generated\n") && mail.contains("\nX-Patchbay-Verdict: FAILED\n"));
        assert!(mail.contains("build/x86_64  FAILED  42 s\n"), "the reason once, the duration as the dashboard writes it: {mail}");
        assert!(mail.contains("| hello.c:3:2: error: expected ';'\nFull log: https://ci.example.org/api/v1/logs/7-v2-build-x86_64\n"));
        let body = mail.split("\n\n").skip(1).collect::<Vec<_>>().join("\n\n");
        assert!(body.lines().all(|l| l.chars().count() <= 72 || l.starts_with("| ")), "wrapped at 72");
    }

    #[test]
    fn recipients_and_encoded_subjects() {
        let mut settings = Settings { from: "ci@x".into(), domain: "x".into(), recipients: Recipients::Submitter };
        let mail = String::from_utf8(compose(&report(), &thread(), &settings, "d")).unwrap();
        assert!(mail.contains("\nTo: dev@example.org\n") && !mail.contains("\nCc:"));
        settings.recipients = Recipients::List;
        let mail = String::from_utf8(compose(&report(), &thread(), &settings, "d")).unwrap();
        assert!(mail.contains("\nTo: linux-hwmon@vger.kernel.org\n"));
        let mut t = thread();
        t.subject = "[PATCH] ü".into();
        let mail = String::from_utf8(compose(&report(), &t, &settings, "d")).unwrap();
        assert!(mail.contains("Subject: =?UTF-8?B?UmU6IFtQQVRDSF0gw7w=?="), "{mail}");
    }

    #[test]
    fn headers_from_mail_cannot_add_headers() {
        let settings = Settings { from: "ci@x".into(), domain: "x".into(), recipients: Recipients::Both };
        let mut t = thread();
        t.subject = "x\nBcc: victim@example.org\n\nforged body".into();
        t.list = Some("list@x\r\nBcc: v@x".into());
        let mail = String::from_utf8(compose(&report(), &t, &settings, "d")).unwrap();
        let head = mail.split("\n\n").next().unwrap();
        assert!(!head.lines().any(|l| l.starts_with("Bcc:")), "{head}");
    }

    #[test]
    fn apply_failures_are_read_in_each_of_gits_wordings() {
        let diff = "\n--- the patch that failed ---\ndiff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1,2 +1,2 @@\n-x\n+y\n@@ -40,3 +40,3 @@ f()\n-old\n+new\n-- \n2.47\n";
        // No blob to merge with: the file is named in a sha1 complaint.
        let f = apply_failure(&format!(
            "Applying: one\nApplying: two\nPatch failed at 0002 two\nerror: sha1 information is lacking or useless (a.c).\nerror: could not build fake ancestor\nhint: Use 'git am --show-current-patch=diff'\n{diff}"
        ));
        assert_eq!((f.patch, f.subject.as_deref(), f.files.clone()), (Some(2), Some("two"), vec!["a.c".to_string()]));
        assert_eq!(f.messages.len(), 3, "{:?}", f.messages);
        assert_eq!((f.hunk.as_deref(), f.hunk_named, f.hunks_in_file), (Some("@@ -1,2 +1,2 @@\n-x\n+y"), false, 2));
        // git named the line: that hunk, not the first.
        let f = apply_failure(&format!("error: patch failed: a.c:40\nerror: a.c: patch does not apply\nPatch failed at 0001 one\n{diff}"));
        assert_eq!((f.files.clone(), f.hunk_named), (vec!["a.c".to_string()], true));
        assert_eq!(f.hunk.as_deref(), Some("@@ -40,3 +40,3 @@ f()\n-old\n+new"));
        // Deleted upstream.
        let f = apply_failure("error: b/c.h: does not exist in index\nPatch failed at 0003 three\n");
        assert_eq!((f.files.clone(), f.hunk), (vec!["b/c.h".to_string()], None));
        let f = apply_failure("CONFLICT (modify/delete): d.c deleted in HEAD and modified in two.\nPatch failed at 0001 x y z\n");
        assert_eq!((f.files.clone(), f.subject.as_deref()), (vec!["d.c".to_string()], Some("x y z")));
        // An old runner's tail without the marker still finds the diff.
        let f = apply_failure(
            "[...]\nCONFLICT (content): Merge conflict in a.c\nPatch failed at 0001 one\ndiff --git a/a.c b/a.c\n@@ -5 +5 @@\n-a\n+b\n",
        );
        assert_eq!(f.hunk.as_deref(), Some("@@ -5 +5 @@\n-a\n+b"));
        assert_eq!(apply_failure("fatal: something else"), ApplyFailure::default());
    }

    #[test]
    fn tests_that_never_ran_take_one_line_and_each_log_shows_once() {
        let mut r = report();
        let failing = r.lines[1].clone();
        r.lines.push(Line { what: "build/arm64".into(), ..failing.clone() });
        for what in ["check/x86_64", "check/arm64"] {
            r.lines.push(Line { what: what.into(), outcome: "ERROR".into(), reason: Some(NOT_APPLIED), ..failing.clone() });
        }
        let b = body(&r);
        assert_eq!(b.matches("hello.c:3:2: error").count(), 1, "{b}");
        assert!(
            b.contains("--- build/x86_64 (FAILED): the same log as build/arm64 ---") || b.contains("the same log as build/x86_64"),
            "{b}"
        );
        assert_eq!(b.lines().filter(|l| l.contains("check/")).count(), 1, "{b}");
        assert!(b.contains("  not run, the series does not apply: check/x86_64, check/arm64\n"), "{b}");
        // A failed apply with nothing readable still shows its log, once.
        let mut r = report();
        r.failed = vec!["apply".into()];
        r.lines = vec![Line {
            what: "apply".into(),
            outcome: "FAILED".into(),
            reason: Some("apply".into()),
            seconds: 1,
            excerpt: Some("fatal: odd\n".into()),
            log_url: None,
            flaky: false,
            pre_existing: false,
        }];
        let b = body(&r);
        assert!(
            b.contains("one of its patches does not apply") && b.contains("| fatal: odd\n") && b.contains("  Tests:  not run\n"),
            "{b}"
        );
    }

    #[test]
    fn the_base_and_its_reason_are_named_with_a_hint_when_the_series_named_none() {
        let mut r = report();
        r.base = Some("0123abcd (branch main as of 2024-03-02, the series' date: it does not apply at the head)".into());
        let b = body(&r);
        assert!(
            b.contains("Applied to: 0123abcd (branch main as of 2024-03-02, the series' date: it\ndoes not apply at the head)\n"),
            "{b}"
        );
        assert_eq!(b.matches("git format-patch --base").count(), 1, "{b}");
        assert!(b.contains("\nTo name the base next time: `git format-patch --base=<commit>`.\n"), "{b}");
        for named in ["0123abcd (base-commit)", "0123abcd (branch main (base-commit 4567 is not in the repository))"] {
            r.base = Some(named.into());
            assert!(!body(&r).contains("--base"), "{named}");
        }
    }

    #[test]
    fn a_series_already_merged_gets_its_own_short_report() {
        let mut r = report();
        r.verdict = "MERGED".into();
        r.failed.clear();
        r.base = Some("89abcdef (branch main)".into());
        let said = "Every patch of the series is already in branch main (the same change by git patch-id --stable):\n  1/2 already merged as 0123456789ab hwmon: one\n  2/2 already merged as 123456789abc hwmon: two\n";
        r.lines = vec![
            Line {
                what: "apply".into(),
                outcome: "INFO".into(),
                reason: Some(ALREADY_MERGED),
                seconds: 1,
                excerpt: Some(said.into()),
                log_url: None,
                flaky: false,
                pre_existing: false,
            },
            Line {
                what: "build/x86_64".into(),
                outcome: "INFO".into(),
                reason: Some(ALREADY_MERGED),
                seconds: 1,
                excerpt: Some(said.into()),
                log_url: None,
                flaky: false,
                pre_existing: false,
            },
        ];
        let settings = Settings { from: "ci@x".into(), domain: "x".into(), recipients: Recipients::Both };
        let mail = String::from_utf8(compose(&r, &thread(), &settings, "d")).unwrap();
        assert!(mail.contains("\nX-Patchbay-Verdict: MERGED\n"), "{mail}");
        let body = mail.split_once("\n\n").unwrap().1;
        assert!(body.contains("it is already merged"), "{body}");
        assert!(
            body.contains("\n  1/2 already merged as 0123456789ab hwmon: one\n  2/2 already merged as 123456789abc hwmon: two\n"),
            "{body}"
        );
        assert_eq!(body.matches("already merged as").count(), 2, "each patch once: {body}");
        assert!(!body.contains("FAILED") && !body.contains("does not apply"), "{body}");
        assert!(body.contains("Branch head: 89abcdef (branch main)"), "{body}");
        assert!(body.lines().count() < 20 && body.lines().all(|l| l.chars().count() <= 72), "{body}");
    }

    #[test]
    fn wrapping() {
        let long = "word ".repeat(40);
        assert!(wrap(&long).lines().all(|l| l.len() <= 72));
        let url = format!("https://example.org/{}", "x".repeat(100));
        assert_eq!(wrap(&url).trim_end(), url);
    }

    #[test]
    fn to_reproduce_shows_the_failing_tests_scripts() {
        let settings = Settings { from: "patchbay <ci@example.org>".into(), domain: "ci.example.org".into(), recipients: Recipients::Both };
        let mut r = report();
        let plain = String::from_utf8(compose(&r, &thread(), &settings, "Mon, 1 Jan 2024 00:00:00 +0000")).unwrap();
        assert!(plain.contains("run the project's test script."), "{plain}");
        r.reproduce = vec![("build".into(), "make -j4\nmake check".into())];
        let shown = String::from_utf8(compose(&r, &thread(), &settings, "Mon, 1 Jan 2024 00:00:00 +0000")).unwrap();
        assert!(shown.contains("then in the tree:\n  # build\n  make -j4\n  make check\n"), "{shown}");
    }
}
