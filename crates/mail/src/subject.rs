//! Subject lines of patch mail, parsed at least as completely as b4 does:
//! `[PATCH v2 3/9]`, `[PATCHv3 1/2]`, `[RFC PATCH net-next v4 0/5]`,
//! `[PATCH RESEND 1/2]`, `[PATCH1/8]`, `[PATCH 1 of 2]` (Mercurial),
//! `[PATCHSET v4 next 0/5]`, versions after the counter or a tag
//! (`[PATCH nft 3/3,v2]`, `[PATCH 00/11 nf-next,v1]`), several
//! bracket groups, list tags such as `[Qemu-devel]`, and reply prefixes
//! (`Re:`, `RE:`, `Aw:`, `Fwd:`, `Sv:`, `Antw:`, `Re[2]:`) before or between
//! the groups. Counters are up to four digits.

/// What a subject line says about the mail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// A reply or forward (`Re:`, `Fwd:` …): a comment, never a patch.
    pub reply: bool,
    /// `PATCH` (or `PATCHv3`, `PATCH1/8`) appeared in a bracket group.
    pub patch: bool,
    /// `RFC` appeared.
    pub rfc: bool,
    /// `RESEND` appeared.
    pub resend: bool,
    /// `PULL` or `GIT PULL` appeared.
    pub pull: bool,
    /// `vN`, or `(vN)` at the end of the title; `None` when absent (version 1).
    pub version: Option<u32>,
    /// `n/N` or `n of N`: the slot and the total.
    pub counter: Option<(u32, u32)>,
    /// Every other word of the bracket groups, in order (`net-next`, `liburing`, `Qemu-devel`).
    pub tags: Vec<String>,
    /// The subject without reply prefixes and bracket groups.
    pub title: String,
}

impl Subject {
    /// The version, 1 when the subject names none.
    pub fn version_or_1(&self) -> u32 {
        self.version.unwrap_or(1)
    }

    /// The title lower-cased with whitespace collapsed, for comparing re-rolls.
    pub fn normalized_title(&self) -> String {
        self.title.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
    }
}

/// Longest counter accepted, in digits (b4 accepts up to 4).
const MAX_COUNTER_DIGITS: usize = 4;

/// Parses a decoded subject line. Never fails: an unusual subject is a title with no markers.
pub fn parse(subject: &str) -> Subject {
    let mut s = Subject::default();
    let mut rest = subject.trim();
    let mut words: Vec<String> = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = strip_reply_prefix(rest) {
            s.reply = true;
            rest = after;
            continue;
        }
        if let Some(inner_end) = rest.strip_prefix('[').and_then(|r| r.find(']')) {
            let inner = &rest[1..1 + inner_end];
            // Commas and semicolons separate words as spaces do (`[PATCH nft 3/3,v2]`,
            // `[PATCH 00/11 nf-next,v1]`; b4 strips them from each word's end).
            words.extend(inner.split(|c: char| c.is_whitespace() || c == ',' || c == ';').filter(|w| !w.is_empty()).map(str::to_string));
            // A separator between groups keeps adjacent counters apart ("[1/2][v2]").
            words.push(String::new());
            rest = &rest[inner_end + 2..];
            continue;
        }
        break;
    }
    interpret(&mut s, &words);
    // b4 and Patchwork keep "(v3)" in the name; so do we, and take the version from it.
    if s.version.is_none() {
        s.version = trailing_paren_version(rest.trim());
    }
    s.title = rest.trim().to_string();
    s
}

/// `Re:`, `RE:`, `Aw:`, `Fwd:`, `Fw:`, `Sv:`, `Antw:`, `Re[2]:`, `Re :`: the rest after it.
fn strip_reply_prefix(s: &str) -> Option<&str> {
    let word_end = s.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(s.len());
    let word = s[..word_end].to_ascii_lowercase();
    if !matches!(word.as_str(), "re" | "aw" | "fwd" | "fw" | "sv" | "antw" | "vs" | "odp" | "r") {
        return None;
    }
    let mut rest = &s[word_end..];
    if let Some(r) = rest.strip_prefix('[') {
        let close = r.find(']')?;
        if !r[..close].chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        rest = &r[close + 1..];
    }
    rest.trim_start_matches(' ').strip_prefix(':')
}

fn counter(word: &str) -> Option<(u32, u32)> {
    let (n, total) = word.split_once('/')?;
    Some((digits(n)?, digits(total)?))
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > MAX_COUNTER_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn version_word(word: &str) -> Option<u32> {
    let v = word.strip_prefix(['v', 'V'])?;
    if v.is_empty() || v.len() > 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn interpret(s: &mut Subject, words: &[String]) {
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let upper = w.to_ascii_uppercase();
        let next = words.get(i + 1).map(String::as_str).unwrap_or("");
        if w.is_empty() {
            // group separator
        } else if upper == "PATCH" {
            s.patch = true;
        } else if let Some(tail) = upper.strip_prefix("PATCH").filter(|t| !t.is_empty()) {
            // PATCHv3, PATCH1/8, PATCH-v2, PATCHSET, PATCH-next: like b4, any word that begins
            // with PATCH says the mail is a patch; what follows is a version, a counter or a tag.
            s.patch = true;
            let tail = tail.trim_start_matches(['-', '_']);
            let orig_tail = &w[w.len() - tail.len()..];
            if let Some(v) = version_word(orig_tail) {
                s.version = Some(v);
            } else if let Some(c) = counter(orig_tail) {
                s.counter = Some(c);
            } else if !tail.is_empty() && tail != "SET" && tail != "ES" {
                s.tags.push(orig_tail.to_string());
            }
        } else if upper == "RFC" {
            s.rfc = true;
        } else if upper == "RESEND" {
            s.resend = true;
        } else if upper == "GIT" && next.eq_ignore_ascii_case("PULL") {
            s.pull = true;
            i += 1;
        } else if upper == "PULL" {
            s.pull = true;
        } else if let Some(v) = version_word(w) {
            s.version = Some(v);
        } else if let Some(c) = counter(w) {
            s.counter = Some(c);
        } else if let (Some(n), true, Some(total)) = (digits(w), next.eq_ignore_ascii_case("of"), words.get(i + 2).and_then(|t| digits(t)))
        {
            s.counter = Some((n, total));
            i += 2;
        } else {
            s.tags.push(w.to_string());
        }
        i += 1;
    }
}

/// `... (v3)` at the end of a title, as some submitters write it.
fn trailing_paren_version(title: &str) -> Option<u32> {
    let inner = title.trim_end().strip_suffix(')')?;
    let open = inner.rfind('(')?;
    version_word(inner[open + 1..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> (bool, Option<u32>, Option<(u32, u32)>, String) {
        let s = parse(s);
        (s.patch, s.version, s.counter, s.title)
    }

    #[test]
    fn the_forms_b4_knows() {
        assert_eq!(p("[PATCH v2 3/9] foo: bar"), (true, Some(2), Some((3, 9)), "foo: bar".into()));
        assert_eq!(p("[PATCH v2 03/12] x"), (true, Some(2), Some((3, 12)), "x".into()));
        assert_eq!(p("[PATCHv3 1/2] x"), (true, Some(3), Some((1, 2)), "x".into()));
        assert_eq!(p("[PATCH1/8] x"), (true, None, Some((1, 8)), "x".into()));
        assert_eq!(p("[PATCH 1 of 2] hg"), (true, None, Some((1, 2)), "hg".into()));
        assert_eq!(p("[PATCH 0001/1024] big"), (true, None, Some((1, 1024)), "big".into()));
        assert_eq!(p("[PATCH 1/12345] too big").2, None);
        assert_eq!(p("[PATCH] lone"), (true, None, None, "lone".into()));
        assert_eq!(p("plain words"), (false, None, None, "plain words".into()));
        assert_eq!(p(""), (false, None, None, "".into()));
    }

    #[test]
    fn rfc_resend_tags_and_groups() {
        let s = parse("[RFC PATCH net-next v4 0/5] net: thing");
        assert!(s.rfc && s.patch && !s.reply);
        assert_eq!((s.version, s.counter, s.tags.clone()), (Some(4), Some((0, 5)), vec!["net-next".to_string()]));
        let s = parse("[PATCH RESEND 1/2] again");
        assert!(s.resend && s.patch);
        assert_eq!(s.counter, Some((1, 2)));
        let s = parse("[Qemu-devel] [PATCH v2 2/3] hw: fix");
        assert_eq!((s.version, s.counter, s.tags.clone()), (Some(2), Some((2, 3)), vec!["Qemu-devel".to_string()]));
        let s = parse("[PATCH liburing 1/3] test");
        assert_eq!(s.tags, vec!["liburing".to_string()]);
        let s = parse("[PATCH,v2,1/2] commas");
        assert_eq!((s.version, s.counter), (Some(2), Some((1, 2))));
        let s = parse("[PATCH] [v2] [1/2] split groups");
        assert_eq!((s.version, s.counter, s.title.as_str()), (Some(2), Some((1, 2)), "split groups"));
    }

    #[test]
    fn versions_written_elsewhere() {
        // Netfilter writes the version after the counter or the tree, joined by a comma.
        let s = parse("[PATCH nft 3/3,v2] src: fix");
        assert!(s.patch);
        assert_eq!((s.version, s.counter, s.tags.clone()), (Some(2), Some((3, 3)), vec!["nft".to_string()]));
        let s = parse("[PATCH 00/11 nf-next,v1] netfilter: updates");
        assert_eq!((s.version, s.counter, s.tags.clone()), (Some(1), Some((0, 11)), vec!["nf-next".to_string()]));
        let s = parse("[PATCH nft,v2 1/3] x");
        assert_eq!((s.version, s.counter, s.tags.clone()), (Some(2), Some((1, 3)), vec!["nft".to_string()]));
        let s = parse("[PATCH v2;3/4] semicolons");
        assert_eq!((s.version, s.counter), (Some(2), Some((3, 4))));
        // PATCHSET (and any word that begins with PATCH) is the patch word.
        let s = parse("[PATCHSET v4 next 0/5] sched: thing");
        assert!(s.patch);
        assert_eq!((s.version, s.counter, s.tags.clone()), (Some(4), Some((0, 5)), vec!["next".to_string()]));
        let s = parse("[PATCH-next 00/23] x");
        assert!(s.patch);
        assert_eq!((s.counter, s.tags.clone()), (Some((0, 23)), vec!["next".to_string()]));
        let s = parse("[PATCHES 1/2] x");
        assert!(s.patch && s.tags.is_empty());
        let s = parse("[PATCH_v3 1/2] x");
        assert_eq!(s.version, Some(3));
    }

    #[test]
    fn pull_requests() {
        let s = parse("[GIT PULL] hwmon fixes for v6.8");
        assert!(s.pull && !s.patch);
        let s = parse("[PULL 03/10] target/arm: x");
        assert!(s.pull);
        assert_eq!(s.counter, Some((3, 10)));
        let s = parse("[PULL v2 00/10] queue");
        assert_eq!((s.version, s.counter), (Some(2), Some((0, 10))));
    }

    #[test]
    fn replies() {
        for subj in ["Re: [PATCH 1/2] x", "RE: [PATCH 1/2] x", "Aw: [PATCH 1/2] x", "Fwd: [PATCH 1/2] x", "re[2]: [PATCH 1/2] x"] {
            let s = parse(subj);
            assert!(s.reply, "{subj}");
            assert_eq!(s.counter, Some((1, 2)), "{subj}");
        }
        let s = parse("[Qemu-devel] Re: [PATCH] x");
        assert!(s.reply && s.patch);
        assert!(!parse("Reviewing: [PATCH] x").reply);
        assert!(!parse("[PATCH] Re-do the thing").reply);
    }

    #[test]
    fn version_in_parentheses() {
        let s = parse("[PATCH net-next 0/4] net: dsa: Multi-CPU ground work (v3)");
        assert_eq!(s.version, Some(3));
        assert_eq!(s.title, "net: dsa: Multi-CPU ground work (v3)");
        assert_eq!(parse("[PATCH v2 0/4] x (v3)").version, Some(2));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for subj in
            ["[", "]", "[]", "[[]]", "[PATCH", "Re:", "[PATCH v] x", "[PATCH /] x", "[PATCH 1/] x", "[é 1/2] ü", "Re[: x", "[PATCHv] x"]
        {
            let _ = parse(subj);
        }
    }
}
