//! Finding the diff in a mail's text, and what surrounds it: the commit
//! message, its trailers, base hints and git pull requests.
//!
//! The diff is found with a line state machine that counts hunk lines from the
//! `@@ -a,b +c,d @@` headers, so a removed line that reads `-- ` is still part
//! of the diff while git's `-- ` signature after it is not. Git diffs
//! (including rename-only, mode-only, new empty files and `GIT binary patch`
//! blocks), plain unified diffs and CVS `Index:` diffs are recognised.

/// The parts of a patch mail's text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// The commit message: the text before git's `---` line or before the diff.
    pub message: String,
    /// The diff, exactly as it appeared, when there is one.
    pub diff: Option<String>,
}

fn is_header_line(line: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "diff ",
        "index ",
        "--- ",
        "+++ ",
        "old mode ",
        "new mode ",
        "deleted file mode ",
        "new file mode ",
        "similarity index ",
        "dissimilarity index ",
        "rename from ",
        "rename to ",
        "copy from ",
        "copy to ",
        "Binary files ",
        "GIT binary patch",
        "Index: ",
        "RCS file: ",
        "retrieving revision ",
        "===================================================================",
    ];
    PREFIXES.iter().any(|p| line.starts_with(p))
}

fn starts_diff(line: &str, next: Option<&str>) -> bool {
    line.starts_with("diff --git ")
        || (line.starts_with("Index: ") && next.is_some_and(|n| n.starts_with("====") || n.starts_with("--- ")))
        || (line.starts_with("diff -") && next.is_some_and(|n| n.starts_with("--- ") || n.starts_with("Binary") || n.starts_with("index ")))
        || (line.starts_with("--- ") && next.is_some_and(|n| n.starts_with("+++ ")))
}

/// `@@ -a[,b] +c[,d] @@`: the old and new line counts.
fn hunk_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("@@ -")?;
    let (old, rest) = rest.split_once(" +")?;
    let (new, _) = rest.split_once(" @@")?;
    let count = |r: &str| -> Option<u64> {
        match r.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => r.parse::<u64>().ok().map(|_| 1),
        }
    };
    Some((count(old)?, count(new)?))
}

enum State {
    Message,
    Header,
    Hunk { old: u64, new: u64 },
    Binary,
    After,
}

/// Splits a mail's text into commit message and diff.
pub fn split(text: &str) -> Split {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut message_end = None;
    let mut diff = String::new();
    let mut state = State::Message;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let bare = line.trim_end_matches(['\n', '\r']);
        match state {
            State::Message => {
                if message_end.is_none() && bare == "---" {
                    message_end = Some(i);
                }
                if starts_diff(bare, lines.get(i + 1).map(|l| l.trim_end_matches(['\n', '\r']))) {
                    message_end.get_or_insert(i);
                    diff.push_str(line);
                    state = State::Header;
                }
                i += 1;
            }
            State::Header => {
                if let Some((old, new)) = hunk_counts(bare) {
                    diff.push_str(line);
                    state = State::Hunk { old, new };
                } else if bare.starts_with("literal ") || bare.starts_with("delta ") {
                    diff.push_str(line);
                    state = State::Binary;
                } else if is_header_line(bare) {
                    diff.push_str(line);
                } else {
                    state = State::After;
                    continue;
                }
                i += 1;
            }
            State::Hunk { old, new } => {
                if old == 0 && new == 0 {
                    state = State::Header;
                    continue;
                }
                let (old, new) = match bare.as_bytes().first() {
                    // An empty line is a context line whose trailing space a mailer removed.
                    None | Some(b' ') => (old.saturating_sub(1), new.saturating_sub(1)),
                    Some(b'-') => (old.saturating_sub(1), new),
                    Some(b'+') => (old, new.saturating_sub(1)),
                    Some(b'\\') => (old, new),
                    _ => {
                        // The hunk is shorter than its header says: the diff is damaged here.
                        state = State::Header;
                        continue;
                    }
                };
                diff.push_str(line);
                // "\ No newline at end of file" may follow the hunk's last line.
                state = State::Hunk { old, new };
                if old == 0 && new == 0 && lines.get(i + 1).is_some_and(|l| l.starts_with('\\')) {
                    diff.push_str(lines[i + 1]);
                    i += 1;
                }
                i += 1;
            }
            State::Binary => {
                diff.push_str(line);
                if bare.is_empty() {
                    state = State::Header;
                }
                i += 1;
            }
            State::After => break,
        }
    }
    let message = lines[..message_end.unwrap_or(lines.len())].concat();
    Split { message, diff: (!diff.is_empty()).then_some(diff) }
}

/// A trailer line such as `Signed-off-by: A U Thor <a@example.org>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The key as written (`Reviewed-by`).
    pub key: String,
    /// The value, trimmed.
    pub value: String,
}

const KNOWN_TRAILERS: &[&str] = &[
    "signed-off-by",
    "reviewed-by",
    "acked-by",
    "tested-by",
    "reported-by",
    "suggested-by",
    "co-developed-by",
    "fixes",
    "link",
    "closes",
    "cc",
    "nacked-by",
    "reviewed-and-tested-by",
    "message-id",
];

fn trailer(line: &str) -> Option<Trailer> {
    // Keys are short: look for the colon in the first 41 bytes only, not along a long line.
    let colon = line.as_bytes().iter().take(41).position(|&b| b == b':')?;
    let (key, value) = (&line[..colon], &line[colon + 1..]);
    if key.is_empty() || key.len() > 40 || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let value = value.trim();
    if value.is_empty() || !line[key.len() + 1..].starts_with([' ', '\t']) {
        return None;
    }
    Some(Trailer { key: key.to_string(), value: value.to_string() })
}

/// Trailers of a commit message or a review reply: every unquoted line with a known key,
/// and every `Key: value` line of the message's last paragraph.
pub fn trailers(text: &str) -> Vec<Trailer> {
    let lines: Vec<&str> = text.lines().collect();
    let last_para_start = lines.iter().rposition(|l| l.trim().is_empty()).map_or(0, |p| p + 1);
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(t) = trailer(line.trim_end())
            && (i >= last_para_start || KNOWN_TRAILERS.contains(&t.key.to_ascii_lowercase().as_str()))
        {
            out.push(t);
        }
    }
    out
}

/// For each key (lower-case), the values of every unquoted `Key: value` line with that key
/// (matched case-insensitively), in one pass over the text.
pub fn tagged_lines(text: &str, keys: &[&str]) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); keys.len()];
    for line in text.lines() {
        let Some(colon) = line.as_bytes().iter().take(21).position(|&b| b == b':') else { continue };
        let (k, v) = (&line[..colon], &line[colon + 1..]);
        if let Some(i) = keys.iter().position(|key| k.eq_ignore_ascii_case(key))
            && !v.trim().is_empty()
        {
            out[i].push(v.trim().to_string());
        }
    }
    out
}

/// A `git request-pull` message: where to pull from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// The repository URL.
    pub url: String,
    /// The branch or tag, when given.
    pub branch: Option<String>,
}

/// Finds the repository of a `git request-pull` mail (any git version's wording, a wrapped
/// URL, trailing spaces).
pub fn pull_request(text: &str) -> Option<PullRequest> {
    const NEEDLE: &str = "are available in the git repository at";
    // One substring search over the whole text, then a case-insensitive check of that line.
    let mut from = 0;
    let after = loop {
        let hit = from + text[from..].find("vailable in the")?;
        let line_start = text[..hit].rfind('\n').map_or(0, |p| p + 1);
        let line_end = text[hit..].find('\n').map_or(text.len(), |p| hit + p);
        let line = &text.as_bytes()[line_start..line_end];
        if line.windows(NEEDLE.len()).any(|w| w.eq_ignore_ascii_case(NEEDLE.as_bytes())) {
            break &text[(line_end + 1).min(text.len())..];
        }
        from = line_end.min(text.len());
        if from >= text.len() {
            return None;
        }
    };
    let mut rest = after.lines().map(|l| l.trim()).skip_while(|l| l.is_empty());
    let first = rest.next()?;
    let mut words = first.split_whitespace();
    let url = words.next()?;
    if !(url.contains("://") || url.contains('@') || url.contains(':')) {
        return None;
    }
    let branch = match words.next() {
        Some(b) => Some(b.to_string()),
        None => rest.next().filter(|l| !l.is_empty() && l.split_whitespace().count() == 1).map(str::to_string),
    };
    Some(PullRequest { url: url.to_string(), branch })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCH: &str = "Fix the thing.\n\nSigned-off-by: A <a@x>\n---\n foo.c | 2 +-\n 1 file changed\n\ndiff --git a/foo.c b/foo.c\nindex 1..2 100644\n--- a/foo.c\n+++ b/foo.c\n@@ -1,3 +1,3 @@\n a\n-- \n+b\n c\n-- \n2.39.0\n";

    #[test]
    fn message_diff_and_signature() {
        let s = split(PATCH);
        assert_eq!(s.message, "Fix the thing.\n\nSigned-off-by: A <a@x>\n");
        let d = s.diff.unwrap();
        assert!(d.starts_with("diff --git a/foo.c b/foo.c\n"));
        assert!(d.ends_with(" c\n"), "the removed '-- ' line stays, the signature goes: {d:?}");
        assert!(d.contains("\n-- \n+b\n"));
    }

    #[test]
    fn header_only_diffs() {
        let rename = "x\n---\ndiff --git a/a b/b\nsimilarity index 100%\nrename from a\nrename to b\n-- \n2.1\n";
        assert_eq!(split(rename).diff.unwrap(), "diff --git a/a b/b\nsimilarity index 100%\nrename from a\nrename to b\n");
        let mode = "m\n\ndiff --git a/s b/s\nold mode 100644\nnew mode 100755\n";
        assert_eq!(split(mode).diff.unwrap(), "diff --git a/s b/s\nold mode 100644\nnew mode 100755\n");
        let empty = "diff --git a/e b/e\nnew file mode 100644\nindex 0000000..e69de29\ndiff --git a/f b/f\nnew file mode 100644\n";
        assert_eq!(split(empty).diff.unwrap(), empty);
    }

    #[test]
    fn no_newline_and_binary() {
        let t = "m\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\nthanks\n";
        let d = split(t).diff.unwrap();
        assert!(d.ends_with("+b\n\\ No newline at end of file\n"), "{d:?}");
        let bin = "m\ndiff --git a/p.bmp b/p.bmp\nnew file mode 100644\nindex 0..1\nGIT binary patch\nliteral 142\nzcmZ\n\nliteral 0\nHcmV?d00001\n\n-- \n2.35.3\n";
        let d = split(bin).diff.unwrap();
        assert!(d.contains("literal 142\nzcmZ\n\nliteral 0\nHcmV?d00001\n\n"));
        assert!(!d.contains("2.35.3"));
    }

    #[test]
    fn cvs_and_plain_unified() {
        let cvs = "msg\nIndex: bfd/elf-bfd.h\n===================================================================\nRCS file: /cvs/x,v\nretrieving revision 1.1\ndiff -u -r1.1 elf-bfd.h\n--- a\t1\n+++ b\t2\n@@ -1 +1 @@\n-x\n+y\n";
        assert!(split(cvs).diff.unwrap().starts_with("Index: bfd/elf-bfd.h\n"));
        assert_eq!(split("no diff here\n--- just dashes\n").diff, None);
    }

    #[test]
    fn trailers_and_tags() {
        let t = trailers("Subject line body\n\nLink: https://x\nSigned-off-by: A <a@x>\nReviewed-by: B <b@x>\n");
        assert_eq!(t.len(), 3);
        assert_eq!(t[2], Trailer { key: "Reviewed-by".into(), value: "B <b@x>".into() });
        let reply = "> Signed-off-by: quoted <q@x>\nLooks good.\n\nReviewed-by: R <r@x>\n\nThanks\n";
        assert_eq!(trailers(reply), vec![Trailer { key: "Reviewed-by".into(), value: "R <r@x>".into() }]);
        assert!(trailers("Note: this is prose in the middle\n\nend\n").is_empty());
        assert_eq!(
            tagged_lines("x\nBase-Commit: abc123\nbased-on: <a@b>\n", &["base-commit", "based-on", "x"]),
            vec![vec!["abc123".to_string()], vec!["<a@b>".to_string()], vec![]]
        );
    }

    #[test]
    fn pull_requests() {
        let t = "are available in the Git repository at:\n\n  https://git.kernel.org/a/linux.git/\ntags/v5.4-next-soc\n\nfor you";
        assert_eq!(
            pull_request(t).unwrap(),
            PullRequest { url: "https://git.kernel.org/a/linux.git/".into(), branch: Some("tags/v5.4-next-soc".into()) }
        );
        let t = "are available in the git repository at:\n  git://x/net \n\nfor you to fetch changes up to ccc:\n";
        assert_eq!(pull_request(t).unwrap().branch, None);
        let t = "are available in the git repository at:\n  git://x/p.git next\n";
        assert_eq!(pull_request(t).unwrap().branch.as_deref(), Some("next"));
        assert_eq!(pull_request("nothing"), None);
    }
}
