//! One raw mail in, everything patchbay needs to know of it out. Wraps
//! mail-parser so that no other crate sees its types. Never fails and never
//! panics: whatever is wrong with a mail becomes a [`Parsed::problems`] entry.

use mail_parser::{HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use crate::diff::{self, PullRequest, Trailer};
use crate::subject::{self, Subject};

/// What kind of mail this is, for series assembly: the parser's closed decision, which the
/// wire carries as [`patchbay_model::MailKind`] (an open set of words, read back from anyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Carries a diff, is not a reply and is not numbered `0/N`: a patch of a series.
    Patch,
    /// `0/N`, whatever its body holds: a cover letter (a range-diff, a conflict walkthrough or
    /// an inline example in a cover is still a cover, never a one-patch series of its own).
    Cover,
    /// A `git request-pull` with no diff and no `0/N` counter.
    PullRequest,
    /// A reply (`Re:`) or a mail that carries nothing to test.
    Comment,
}

impl Kind {
    /// The stored and wire name of the kind, spelled once, by `MailKind`.
    pub fn as_str(self) -> &'static str {
        patchbay_model::MailKind::from(self).known().expect("every Kind maps to a word MailKind defines")
    }
}

impl From<Kind> for patchbay_model::MailKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Patch => patchbay_model::MailKind::Patch,
            Kind::Cover => patchbay_model::MailKind::Cover,
            Kind::PullRequest => patchbay_model::MailKind::Pull,
            Kind::Comment => patchbay_model::MailKind::Comment,
        }
    }
}

/// A parsed mail.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// `<id@host>`: the header's, or a synthetic one derived from the content.
    pub message_id: String,
    /// Whether `message_id` was made up because the header was missing or empty.
    pub synthetic_id: bool,
    /// SHA-256 of what the author wrote (threading headers and body), not of transport headers:
    /// the same mail cross-posted to two lists has the same content hash.
    pub content_hash: [u8; 32],
    /// `In-Reply-To` ids, bracketed.
    pub in_reply_to: Vec<String>,
    /// `References` ids, bracketed, oldest first.
    pub references: Vec<String>,
    /// The decoded subject line.
    pub subject_line: String,
    /// What the subject says.
    pub subject: Subject,
    /// Display name of the sender.
    pub from_name: Option<String>,
    /// Lower-cased sender address.
    pub from_email: Option<String>,
    /// Date header, seconds since the epoch, when it parses.
    pub date: Option<i64>,
    /// List ids from `List-Id` (the part in angle brackets).
    pub list_ids: Vec<String>,
    /// The mail's kind.
    pub kind: Kind,
    /// Commit message (for a patch) or the text (otherwise).
    pub message: String,
    /// The diff, when there is one.
    pub diff: Option<String>,
    /// Trailers of the message (or of the reply).
    pub trailers: Vec<Trailer>,
    /// `base-commit:` as git format-patch writes it.
    pub base_commit: Option<String>,
    /// `Based-on:` lines (Message-IDs or URLs of series this one applies on top of).
    pub based_on: Vec<String>,
    /// `Depends-on:` lines.
    pub depends_on: Vec<String>,
    /// b4's `change-id:`.
    pub change_id: Option<String>,
    /// `Supersedes:` lines (header or body).
    pub supersedes: Vec<String>,
    /// The repository of a pull request.
    pub pull: Option<PullRequest>,
    /// Everything wrong with the mail, for the record; empty for a clean mail.
    pub problems: Vec<String>,
}

/// The headers we read, parsed; every other header is kept raw (parsing `Received:` lines alone
/// cost 3% of an import). MIME headers must stay registered or MIME parsing breaks.
static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .with_message_ids()
        .header_address(HeaderName::From)
        .header_date(HeaderName::Date)
        .header_text(HeaderName::Subject)
});

/// Longest header value we keep as an id, like Patchwork's 255-character columns but in bytes.
const MAX_ID: usize = 998;

fn bracket(id: &str) -> Option<String> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>').trim();
    if id.is_empty() || id.len() > MAX_ID || id.contains(|c: char| c.is_whitespace() || c == '<' || c == '>') {
        return None;
    }
    Some(format!("<{id}>"))
}

fn ids(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => t.split_whitespace().filter_map(bracket).collect(),
        HeaderValue::TextList(l) => l.iter().filter_map(|t| bracket(t)).collect(),
        _ => Vec::new(),
    }
}

/// Where the header block ends in `raw` (the index of the body's first byte): after the first
/// blank line, LF or CRLF. SIMD searches: a byte-at-a-time scan here was most of our own
/// parsing time on real archives.
fn body_start(raw: &[u8]) -> usize {
    let lf = memchr::memmem::find(raw, b"\n\n").map(|p| p + 2);
    // A CRLF blank line can only come first if it ends before the LF one.
    let window = lf.map_or(raw, |end| &raw[..end]);
    let crlf = memchr::memmem::find(window, b"\r\n\r\n").map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(raw.len()),
    }
}

fn content_hash(raw: &[u8], body_start: usize, msg: Option<&mail_parser::Message<'_>>) -> [u8; 32] {
    let mut h = Sha256::new();
    if let Some(msg) = msg {
        for name in ["Message-ID", "From", "Date", "Subject", "In-Reply-To", "References"] {
            for v in msg.header_as(name, mail_parser::HeaderForm::Raw) {
                if let HeaderValue::Text(t) = v {
                    h.update(name.as_bytes());
                    h.update(b":");
                    h.update(t.split_whitespace().collect::<Vec<_>>().join(" ").as_bytes());
                    h.update(b"\n");
                }
            }
        }
    }
    h.update(b"\n");
    for_each_folded_run(&raw[body_start..], |run| h.update(run));
    h.update(b"\n");
    h.finalize().into()
}

/// The body with CRLF folded to LF, as the runs between the dropped CRs, so that a mail's
/// hash does not depend on the line endings its transport chose.
fn for_each_folded_run(body: &[u8], mut run: impl FnMut(&[u8])) {
    let mut start = 0;
    for cr in memchr::memmem::find_iter(body, b"\r\n") {
        run(&body[start..cr]);
        start = cr + 1;
    }
    run(&body[start..]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The text we search for a diff: every plain-text body part and every attachment that holds
/// a patch (`text/x-patch`, `text/x-diff`, a text attachment, a `.patch`/`.diff` file, or a
/// generic attachment, `application/octet-stream` or of no type, whose content is a diff:
/// mail clients label an attached patch file as they please).
fn patch_text(msg: &mail_parser::Message<'_>, problems: &mut Vec<String>) -> (String, bool) {
    let mut text = String::new();
    let mut flowed = false;
    let mut bodies: Vec<u32> = msg.text_body.clone();
    bodies.extend(msg.attachments.iter().copied());
    bodies.sort_unstable();
    bodies.dedup();
    for id in bodies {
        let Some(part) = msg.parts.get(id as usize) else { continue };
        if part.is_text_html() || part.is_encoding_problem {
            if part.is_encoding_problem {
                problems.push(format!("MIME part {id} has a broken transfer encoding"));
            }
            if part.is_text_html() {
                continue;
            }
        }
        let ct = part.content_type();
        let (ctype, subtype) = (ct.map(|c| c.ctype()).unwrap_or("text"), ct.and_then(|c| c.subtype()).unwrap_or("plain"));
        let name = part.attachment_name().unwrap_or("").to_ascii_lowercase();
        let patchy_name = name.ends_with(".patch") || name.ends_with(".diff");
        let content = match &part.body {
            PartType::Text(s) if ctype.eq_ignore_ascii_case("text") => s.to_string(),
            PartType::Binary(b) | PartType::InlineBinary(b) if patchy_name || subtype.contains("patch") || subtype.contains("diff") => {
                String::from_utf8_lossy(b).into_owned()
            }
            // A generic type says nothing either way: the content decides. Text has no NUL
            // bytes, and only a real diff (hunks that count up) makes the mail a patch.
            PartType::Binary(b) | PartType::InlineBinary(b)
                if (ct.is_none() || ctype.eq_ignore_ascii_case("application")) && memchr::memchr(0, b).is_none() =>
            {
                let s = String::from_utf8_lossy(b);
                if diff::split(&s).diff.is_none() {
                    continue;
                }
                s.into_owned()
            }
            _ => continue,
        };
        if ct.and_then(|c| c.attribute("format")).is_some_and(|f| f.eq_ignore_ascii_case("flowed")) {
            flowed = true;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&content);
    }
    (text, flowed)
}

/// Parses one raw mail. Never fails: problems are recorded in the result.
pub fn parse(raw: &[u8]) -> Parsed {
    let mut problems = Vec::new();
    if memchr::memchr(0, raw).is_some() {
        problems.push("contains NUL bytes".to_string());
    }
    let msg = PARSER.parse(raw).filter(|m| !m.headers().is_empty());
    if msg.is_none() {
        problems.push("no mail headers found".to_string());
    }
    let body_start = body_start(raw);
    let hash = content_hash(raw, body_start, msg.as_ref());
    let mut p = Parsed {
        message_id: String::new(),
        synthetic_id: false,
        content_hash: hash,
        in_reply_to: Vec::new(),
        references: Vec::new(),
        subject_line: String::new(),
        subject: Subject::default(),
        from_name: None,
        from_email: None,
        date: None,
        list_ids: Vec::new(),
        kind: Kind::Comment,
        message: String::new(),
        diff: None,
        trailers: Vec::new(),
        base_commit: None,
        based_on: Vec::new(),
        depends_on: Vec::new(),
        change_id: None,
        supersedes: Vec::new(),
        pull: None,
        problems: Vec::new(),
    };
    if let Some(msg) = &msg {
        for name in ["Message-ID", "From", "Subject", "Date", "In-Reply-To"] {
            if msg.header_values(name).count() > 1 {
                problems.push(format!("{name} header appears more than once; the first is used"));
            }
        }
        // mail-parser returns the last copy of a repeated header; the first is the author's.
        let first = |name: &'static str| msg.header_values(name).next();
        match first("Message-ID").map(ids).and_then(|v| v.into_iter().next()) {
            Some(id) => p.message_id = id,
            None if first("Message-ID").is_some() => problems.push("Message-ID header is not a usable id".into()),
            None => problems.push("no Message-ID header".into()),
        }
        p.in_reply_to = first("In-Reply-To").map(ids).unwrap_or_default();
        p.references = msg.header_values("References").flat_map(ids).collect();
        match first("Subject") {
            Some(HeaderValue::Text(s)) => p.subject_line = s.trim().to_string(),
            Some(_) => {}
            None => problems.push("no Subject header".into()),
        }
        match first("From") {
            Some(HeaderValue::Address(a)) => {
                if let Some(addr) = a.first() {
                    p.from_name = addr.name().map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
                    p.from_email = addr.address().map(|a| a.trim().to_ascii_lowercase()).filter(|a| a.contains('@'));
                }
                if p.from_email.is_none() {
                    problems.push("From header has no usable address".into());
                }
            }
            _ => problems.push("no usable From header".into()),
        }
        match first("Date") {
            Some(HeaderValue::DateTime(d)) if d.is_valid() => p.date = Some(d.to_timestamp()),
            Some(_) => problems.push("Date header does not parse".into()),
            None => problems.push("no Date header".into()),
        }
        for v in msg.header_values("List-Id") {
            let raw = match v {
                HeaderValue::Address(a) => a.first().and_then(|x| x.address()).map(str::to_string),
                HeaderValue::Text(t) => Some(t.to_string()),
                _ => None,
            };
            if let Some(id) = raw {
                let id = match (id.rfind('<'), id.rfind('>')) {
                    (Some(a), Some(b)) if a < b => id[a + 1..b].to_string(),
                    _ => id,
                };
                let id = id.trim().to_ascii_lowercase();
                if !id.is_empty() && !p.list_ids.contains(&id) {
                    p.list_ids.push(id);
                }
            }
        }
        for v in msg.header_as("Supersedes", mail_parser::HeaderForm::Raw) {
            if let HeaderValue::Text(t) = v {
                p.supersedes.extend(t.split_whitespace().filter_map(bracket));
            }
        }
        let head = &raw[..body_start];
        if std::str::from_utf8(head).is_err() {
            problems.push("raw 8-bit bytes in the headers that are not UTF-8".into());
        }
        let (text, flowed) = patch_text(msg, &mut problems);
        if memchr::memchr(0, head).is_some() {
            // A NUL in a header becomes U+FFFD, as in text no store (PostgreSQL's TEXT above all)
            // can keep: ids, titles and names read the same wherever they are stored.
            let scrub = |s: &mut String| {
                if s.contains('\0') {
                    *s = s.replace('\0', "\u{fffd}");
                }
            };
            for s in [&mut p.message_id, &mut p.subject_line].into_iter().chain(p.from_name.as_mut()).chain(p.from_email.as_mut()) {
                scrub(s);
            }
            p.in_reply_to.iter_mut().chain(&mut p.references).chain(&mut p.list_ids).chain(&mut p.supersedes).for_each(scrub);
        }
        p.subject = subject::parse(&p.subject_line);
        let split = diff::split(&text);
        p.diff = split.diff;
        if p.diff.is_some() && flowed {
            problems.push("the patch is in a format=flowed part, which may have damaged its whitespace".into());
        }
        p.message = if p.diff.is_some() { split.message } else { text.clone() };
        p.trailers = diff::trailers(&p.message);
        let mut tags = diff::tagged_lines(&text, &["base-commit", "based-on", "depends-on", "change-id", "supersedes"]);
        p.base_commit = std::mem::take(&mut tags[0]).into_iter().find(|v| v.bytes().all(|b| b.is_ascii_hexdigit()));
        p.based_on = std::mem::take(&mut tags[1]);
        p.depends_on = std::mem::take(&mut tags[2]);
        p.change_id = std::mem::take(&mut tags[3]).into_iter().next();
        p.supersedes.extend(tags[4].iter().filter_map(|s| bracket(s)));
        p.pull = diff::pull_request(&text);
    }
    if p.message_id.is_empty() {
        p.message_id = format!("<{}@patchbay.invalid>", hex(&hash[..16]));
        p.synthetic_id = true;
    }
    p.kind = classify(&p);
    p.problems = problems;
    p
}

fn classify(p: &Parsed) -> Kind {
    if p.subject.reply {
        return Kind::Comment;
    }
    // The counter is the submitter's word on what the mail is: git format-patch numbers the
    // cover 0 and every patch from 1, and a cover may quote diffs (range-diff, a conflict
    // walkthrough), so a diff never turns a `0/N` into a patch.
    if matches!(p.subject.counter, Some((0, _))) {
        return Kind::Cover;
    }
    if p.diff.is_some() {
        return Kind::Patch;
    }
    if p.pull.is_some() { Kind::PullRequest } else { Kind::Comment }
}

impl Parsed {
    /// Lower-case hex of the content hash.
    pub fn content_hash_hex(&self) -> String {
        hex(&self.content_hash)
    }

    /// Every id this mail points at: `In-Reply-To` first, then `References` newest first.
    pub fn refs_nearest_first(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in self.in_reply_to.iter().chain(self.references.iter().rev()) {
            if !out.contains(id) && *id != self.message_id {
                out.push(id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_in_a_header_reads_as_a_replacement_character() {
        let raw = b"From: A \0Thor <a@example.org>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nSubject: [PATCH] foo: a\0b\nMessage-Id: <1\0@x>\nReferences: <0\0@x>\n\nbody\0\n";
        let p = parse(raw);
        assert_eq!(p.subject.title, "foo: a\u{fffd}b");
        assert_eq!(p.subject_line, "[PATCH] foo: a\u{fffd}b");
        assert_eq!(p.message_id, "<1\u{fffd}@x>");
        assert_eq!(p.references, vec!["<0\u{fffd}@x>".to_string()]);
        assert!(p.from_name.as_deref().is_some_and(|n| !n.contains('\0')), "{:?}", p.from_name);
        assert!(p.problems.iter().any(|x| x == "contains NUL bytes"), "still flagged: {:?}", p.problems);
    }

    #[test]
    fn a_git_send_email_patch() {
        let raw = b"From: A U Thor <Author@Example.org>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nSubject: [PATCH v2 1/2] foo: fix\nMessage-Id: <1@x>\nIn-Reply-To: <0@x>\nReferences: <0@x>\nList-Id: Foo devel <foo.lists.example.org>\n\nFix.\n\nSigned-off-by: A <a@x>\n---\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n-- \n2.1\n\nbase-commit: 0123abcd\n";
        let p = parse(raw);
        assert_eq!(p.kind, Kind::Patch);
        assert_eq!(p.message_id, "<1@x>");
        assert_eq!(p.from_email.as_deref(), Some("author@example.org"));
        assert_eq!(p.subject.counter, Some((1, 2)));
        assert_eq!(p.list_ids, vec!["foo.lists.example.org".to_string()]);
        assert_eq!(p.date, Some(1_704_103_200));
        assert_eq!(p.base_commit.as_deref(), Some("0123abcd"));
        assert_eq!(p.trailers.len(), 1);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.refs_nearest_first(), vec!["<0@x>".to_string()]);
    }

    #[test]
    fn a_cover_letter_quoting_a_diff_is_still_the_cover() {
        // A range-diff or a conflict walkthrough in a `0/N`: the counter decides, not the body.
        let raw = b"From: a@x\nSubject: [PATCH v2 0/2] foo: rework\nMessage-Id: <c@x>\n\nChanges since v1:\n\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n";
        let p = parse(raw);
        assert!(p.diff.is_some());
        assert_eq!(p.kind, Kind::Cover);
        let reply = parse(b"From: a@x\nSubject: Re: [PATCH v2 0/2] foo: rework\nMessage-Id: <r@x>\n\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n");
        assert_eq!(reply.kind, Kind::Comment, "a reply stays a comment");
        let patch = parse(b"From: a@x\nSubject: [PATCH v2 1/2] foo: rework\nMessage-Id: <p@x>\n\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n");
        assert_eq!(patch.kind, Kind::Patch);
    }

    /// A multipart mail whose second part is `part_headers` over a base64 `git format-patch` file.
    fn with_attachment(part_headers: &str, content: &str) -> Vec<u8> {
        format!(
            "From: a@x\nSubject: [PATCH 2/2] foo: fix\nMessage-Id: <p@x>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BB\"\n\n--BB\nContent-Type: text/plain; charset=utf-8\n\nThe fix is attached.\n\n--BB\n{part_headers}Content-Transfer-Encoding: base64\n\n{}\n--BB--\n",
            base64_for_tests(content.as_bytes())
        )
        .into_bytes()
    }

    fn base64_for_tests(b: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut o = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                o.push(if i <= c.len() { T[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
            }
        }
        o
    }

    const FORMAT_PATCH: &str = "From 1234 Mon Sep 17 00:00:00 2001\nFrom: A <a@x>\nSubject: [PATCH] foo: fix\n\nFix it.\n\nSigned-off-by: A <a@x>\n---\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n-- \n2.43.0\n";

    #[test]
    fn a_patch_attached_with_a_generic_type_is_a_patch() {
        for headers in [
            "Content-Type: application/octet-stream\nContent-Disposition: attachment\n",
            "Content-Type: application/octet-stream; name=fix.txt\nContent-Disposition: attachment; filename=fix.txt\n",
            "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=0001-foo-fix\n",
            "Content-Type: application/x-download\nContent-Disposition: attachment; filename=fix\n",
            "Content-Disposition: attachment; filename=fix\n",
        ] {
            let p = parse(&with_attachment(headers, FORMAT_PATCH));
            assert_eq!(p.kind, Kind::Patch, "{headers}");
            assert!(p.diff.as_deref().is_some_and(|d| d.starts_with("diff --git a/f b/f")), "{headers}");
        }
        // The content decides: an octet-stream that is no diff, or is binary, stays a comment.
        let notes = with_attachment("Content-Type: application/octet-stream\nContent-Disposition: attachment\n", "just notes\n--- a\n");
        assert_eq!(parse(&notes).kind, Kind::Comment);
        let binary =
            with_attachment("Content-Type: application/octet-stream\nContent-Disposition: attachment\n", &format!("\0{FORMAT_PATCH}"));
        assert_eq!(parse(&binary).kind, Kind::Comment);
        let image = with_attachment("Content-Type: image/png\nContent-Disposition: attachment\n", FORMAT_PATCH);
        assert_eq!(parse(&image).kind, Kind::Comment, "an image is never read as a patch");
    }

    /// The byte-at-a-time versions that stored hashes were made with; the fast ones must agree,
    /// or re-imports would stop deduplicating against older stores.
    fn reference_body_start(raw: &[u8]) -> usize {
        let lf = raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
        let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        match (lf, crlf) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(raw.len()),
        }
    }

    fn reference_folded_body(body: &[u8]) -> Vec<u8> {
        let (mut out, mut start) = (Vec::new(), 0);
        for (i, w) in body.windows(2).enumerate() {
            if w == b"\r\n" {
                out.extend_from_slice(&body[start..i]);
                start = i + 1;
            }
        }
        out.extend_from_slice(&body[start..]);
        out
    }

    #[test]
    fn fast_scans_agree_with_the_reference() {
        let pieces: [&[u8]; 9] = [b"a", b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r\r\n", b"Subject: x", b"\n\r\n"];
        // Every sequence of up to 4 pieces: all the ways blank lines and CRs can meet.
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> = inputs.iter().flat_map(|i| pieces.iter().map(move |p| [i.as_slice(), p].concat())).collect();
            inputs.extend(longer);
            inputs.sort();
            inputs.dedup();
        }
        for raw in &inputs {
            let start = body_start(raw);
            assert_eq!(start, reference_body_start(raw), "{raw:?}");
            let mut fast = Vec::new();
            for_each_folded_run(&raw[start..], |run| fast.extend_from_slice(run));
            assert_eq!(fast, reference_folded_body(&raw[start..]), "{raw:?}");
        }
    }

    #[test]
    fn cross_posts_share_a_content_hash_and_retries_match() {
        let a = b"Received: by a\nList-Id: <a.x>\nMessage-ID: <m@x>\nFrom: a@x\nSubject: s\n\nbody\n";
        let b = b"Received: by b\nList-Id: <b.x>\nMessage-ID: <m@x>\nFrom: a@x\nSubject: s\n\nbody\n";
        let c = b"Message-ID: <m@x>\nFrom: a@x\nSubject: s\n\nother body\n";
        assert_eq!(parse(a).content_hash, parse(b).content_hash);
        assert_ne!(parse(a).content_hash, parse(c).content_hash);
    }

    #[test]
    fn broken_mail_is_parsed_and_marked() {
        for raw in [&b""[..], b"\0\0\0", b"garbage", b"Subject: x\nSubject: y\n\n", b"From: <>\nMessage-ID: <>\n\n"] {
            let p = parse(raw);
            assert!(!p.problems.is_empty(), "{raw:?}");
            assert!(p.message_id.starts_with('<') && p.message_id.ends_with('>'));
        }
        let p = parse(b"Subject: first\nSubject: second\nFrom: a@x\n\n");
        assert_eq!(p.subject_line, "first");
        assert!(p.synthetic_id);
        assert_eq!(parse(b"Subject: first\n\n").message_id, parse(b"Subject: first\n\n").message_id, "synthetic ids are stable");
    }
}
