//! The report mail: one plain-text reply per verdict, threaded under the
//! series (`In-Reply-To` the cover letter, or patch 1 without one;
//! `References` the thread chain; `Subject: Re: <cover subject>`), with a
//! stable Message-ID so a resend is recognised, `Auto-Submitted`, and
//! `X-Patchbay-*` headers for mail filters. Pure: text in, bytes out.
//! Nothing in it names the test infrastructure.

/// Who gets the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub outcome: String,
    /// Why, for failures.
    pub reason: Option<String>,
    /// Seconds it took.
    pub seconds: u64,
    /// The end of its log, for failures.
    pub excerpt: Option<String>,
    /// Where its full log is served, when known.
    pub log_url: Option<String>,
}

/// What the report says.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Series id and version, for the Message-ID and headers.
    pub series: i64,
    /// Version.
    pub version: u32,
    /// Project.
    pub project: String,
    /// PASSED, FAILED or INCOMPLETE.
    pub verdict: String,
    /// What failed (`test/arch`).
    pub failed: Vec<String>,
    /// What never reported.
    pub missing: Vec<String>,
    /// One line per test × arch.
    pub lines: Vec<Line>,
    /// The base the series was applied to, and why.
    pub base: Option<String>,
    /// A link to the series' web page, when there is one.
    pub link: Option<String>,
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
    format!("<patchbay-report-{series}-v{version}@{domain}>")
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

fn body(r: &Report) -> String {
    let mut b = String::new();
    b.push_str("Hello,\n\n");
    let summary = match r.verdict.as_str() {
        "PASSED" => "patchbay applied this series and every required test passed.".to_string(),
        "FAILED" => format!("patchbay tested this series and it FAILED: {}.", r.failed.join(", ")),
        _ => format!("patchbay could not finish testing this series in time; still missing: {}.", r.missing.join(", ")),
    };
    b.push_str(&wrap(&summary));
    b.push('\n');
    let width = r.lines.iter().map(|l| l.what.len()).max().unwrap_or(4).max(4);
    for l in &r.lines {
        let reason = l.reason.as_ref().map(|x| format!(" ({x})")).unwrap_or_default();
        b.push_str(&format!("  {:width$}  {}{}  {}s\n", l.what, l.outcome, reason, l.seconds));
    }
    if let Some(base) = &r.base {
        b.push('\n');
        b.push_str(&wrap(&format!("Applied to: {base}")));
    }
    for l in r.lines.iter().filter(|l| l.outcome != "PASSED") {
        let Some(excerpt) = l.excerpt.as_ref().filter(|e| !e.trim().is_empty()) else { continue };
        b.push_str(&format!("\n--- {} ({}) ---\n", l.what, l.outcome));
        let lines: Vec<&str> = excerpt.lines().collect();
        for line in &lines[lines.len().saturating_sub(EXCERPT_LINES)..] {
            b.push_str("| ");
            b.push_str(line);
            b.push('\n');
        }
        if let Some(url) = &l.log_url {
            b.push_str(&format!("Full log: {url}\n"));
        }
    }
    if let Some(link) = &r.link {
        b.push_str(&format!("\nDetails: {link}\n"));
    }
    b.push_str("\nTo reproduce: apply the series with `git am -3` on the base above and\nrun the project's test script.\n");
    b.push_str("\n-- \npatchbay, automated testing of patches posted to this list\n");
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
            project: "sample".into(),
            verdict: "FAILED".into(),
            failed: vec!["build/x86_64".into()],
            missing: vec![],
            lines: vec![Line {
                what: "build/x86_64".into(),
                outcome: "FAILED".into(),
                reason: Some("failed".into()),
                seconds: 3,
                excerpt: Some("error: sample".into()),
                log_url: None,
            }],
            base: None,
            link: None,
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
    h.push_str(&format!("Message-ID: {}\n", message_id(r.series, r.version, &settings.domain)));
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
            project: "demo".into(),
            verdict: "FAILED".into(),
            failed: vec!["build/x86_64".into()],
            missing: vec![],
            lines: vec![
                Line { what: "apply".into(), outcome: "PASSED".into(), reason: None, seconds: 1, excerpt: None, log_url: None },
                Line {
                    what: "build/x86_64".into(),
                    outcome: "FAILED".into(),
                    reason: Some("failed".into()),
                    seconds: 42,
                    excerpt: Some("cc -c hello.c\nhello.c:3:2: error: expected ';'\n".into()),
                    log_url: Some("https://ci.example.org/api/v1/logs/7-v2-build-x86_64".into()),
                },
            ],
            base: Some("0123abcd (branch main)".into()),
            link: Some("https://ci.example.org/series/7".into()),
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
        assert!(mail.contains("build/x86_64  FAILED (failed)  42s"));
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
    fn wrapping() {
        let long = "word ".repeat(40);
        assert!(wrap(&long).lines().all(|l| l.len() <= 72));
        let url = format!("https://example.org/{}", "x".repeat(100));
        assert_eq!(wrap(&url).trim_end(), url);
    }
}
