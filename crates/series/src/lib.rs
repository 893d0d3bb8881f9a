//! Series assembly decisions: state in, decisions out.
//!
//! The caller (the ingest service, inside its write transaction) looks up the
//! series a mail could belong to and asks this crate which one it joins, if
//! any (or whose slot it takes); whether a series is complete; whether one
//! series re-rolls another; and which project a mail belongs to. No IO, no
//! clock, no database, no dependencies: every rule here is tested
//! exhaustively with plain values.
//!
//! The rules, and where they differ from Patchwork's (see `tests/corpus.rs`
//! and `tests/shapes.rs` in the ingest crate for the real-mail checks):
//! 1. A mail is matched to a series through its own Message-ID, then its
//!    `In-Reply-To`, then its `References` newest first, against the ids each
//!    series has seen (a patch records its own id and all its references, a
//!    cover letter only its own): [`Match`]. Reference matches ignore the From
//!    address (git format-patch writes the committer on the cover, the
//!    authors on the patches).
//! 2. Failing that, a series of the same submitter, version, total and
//!    bracket tags whose first mail is within [`Rules::marker_window_secs`]
//!    matches by markers (`[PATCH -stable,5.4.x 0/5]` never heads
//!    `[PATCH 5.10.x n/5]`). Markers never join two threads no reference
//!    links: a mail citing others never joins a series holding another
//!    thread; an unthreaded mail meets a threaded series only as a lone cover
//!    (a list that rewrote the cover's Message-ID leaves it outside its
//!    patches' thread); unthreaded postings join freely.
//! 3. A placement by markers is provisional; references beat it, also when
//!    they arrive later: a mail tied to a series by references takes its slot
//!    from a holder no reference links to its thread
//!    ([`Placement::Displace`]), and a mail joining by citing a loose member
//!    sends every other thread out of the series ([`strangers`]). What moves
//!    is placed again as if it arrived then. So `A 2/2`, `B 0/2`, `B 1/2`,
//!    `B 2/2`, `A 0/2`, `A 1/2` gives A and B, each with its own mails.
//! 4. A series only takes a mail whose slot is free and within its total,
//!    with the same total and the same version. A cover whose total differs
//!    from its patches' (`0/5` over `1/6`…`6/6`) heads them when the patches
//!    reply to it and they were posted within the marker window, in either
//!    order; the patches' total stands ([`total_after_join`]).
//! 5. Versions: two named versions never mix. A version-less side takes the
//!    other's when the mail replies into the series (`[PATCH 1/4]` under a
//!    `v3` cover), when the series replies to the mail, or, in any direction
//!    of the thread, when the two were posted within the marker window (git
//!    send-email posts one series within seconds; a re-roll in reply to an
//!    older version comes hours or days later). Through one id, a series of
//!    the mail's own version goes first (`Candidate::distance`). Patchwork
//!    joins any reference match, so a v2 posted in reply to v1 only split off
//!    because a slot was taken; we split on the version itself.
//! 6. A mail with no `n/N` marker is a series of one; it never joins.
//! 7. A counter beyond the total (`[PATCH 3/2]`) joins nothing: Patchwork adds
//!    it and calls a 3-of-2 series complete, which would test a stray patch
//!    with the series; we keep the mail, flag it, and leave the series alone.
//!
//! 8. Re-rolls ([`rerolls`], [`rerolls_through`]): a higher version of one
//!    submitter and project re-rolls a series posted in its thread (a v2 in
//!    reply to v1, whatever its titles), sharing its `change-id`, naming one of
//!    its mails in `Supersedes:`, or sharing a title; and a version posted in
//!    reply to v1 also re-rolls the v2 that re-rolled v1. A `RESEND` of the
//!    same version in reply to a posting's own mail replaces that posting.
//! 9. Partial re-rolls ([`inherited_slots`], b4's rule): a `[PATCH v2 2/2]`
//!    posted in reply to v1's 2/2 re-posts only that patch; v2 takes the slots
//!    it lacks from v1 (same submitter, project and total), is complete when
//!    together they fill every slot, and re-rolls v1 by rule 8. A mail stays
//!    in one series: the taken slots are read from v1, never moved. Only a
//!    patch at slot 2 or later names its base (a full re-roll's 1/N in reply
//!    to v1's 1/N looks the same until its 2/N arrives).
//!
//! [`project_for`] finds a project's tag wherever lists put it: a bracket word
//! (`[PATCH liburing v2 1/3]`) or the title's first word before its colon
//! (`[PATCHv6 0/6] liburing: …`).

/// Tunable thresholds of the assembly rules.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// How far apart (by Date header) two mails may be to join by subject markers alone.
    pub marker_window_secs: i64,
}

impl Default for Rules {
    fn default() -> Self {
        // Patchwork's SERIES_DELAY_INTERVAL: git send-email posts a series within seconds.
        Rules { marker_window_secs: 20 * 60 }
    }
}

/// A patch or cover letter looking for its series.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// Lower-cased sender address.
    pub submitter: String,
    /// The version the subject names, if any.
    pub version: Option<u32>,
    /// Slot (0 for a cover letter) and total; `None` for an unnumbered patch.
    pub counter: Option<(u32, u32)>,
    /// Date header, seconds since the epoch.
    pub date: i64,
    /// Whether the mail cites other mails (`In-Reply-To`, `References`): it sits in a thread.
    pub threaded: bool,
    /// The subject's bracket tags (tree, branch, project: `net-next`, `5.4.x`), lower-cased and sorted.
    pub tags: Vec<String>,
}

/// A series the store found for an arrival, with what the rules need to know of it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The store's id for the series.
    pub id: i64,
    /// Lower-cased submitter address.
    pub submitter: String,
    /// The series' version, and whether a mail named it explicitly.
    pub version: u32,
    /// Whether some member's subject named the version.
    pub version_explicit: bool,
    /// The total N of the series.
    pub total: u32,
    /// Slots already taken (0 is the cover letter).
    pub slots: Vec<u32>,
    /// Date of the series' first mail, seconds since the epoch.
    pub date: i64,
    /// How the series was found.
    pub matched: Match,
    /// How near the matching id is: 0 for the arrival's own Message-ID, then 1, 2, … for its
    /// `In-Reply-To` and `References` newest first, so the nearest evidence is tried first.
    pub distance: usize,
    /// Whether a member that no reference links to the arrival cites other mails: the series
    /// sits in another thread than the arrival's.
    pub threaded: bool,
    /// Whether a patch (not a cover) that no reference links to the arrival is a member.
    pub unlinked_patch: bool,
    /// The arrival's slot is held by a mail that no reference links to the arrival's thread (it
    /// was placed by markers alone) and that may still move (see [`unlinked`]): references take
    /// the slot from it.
    pub displaceable: bool,
    /// Bracket tags of its first mail, lower-cased and sorted (compared only by markers).
    pub tags: Vec<String>,
}

/// How a candidate series was found for an arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The series' mails cite the arrival's Message-ID: they reply to it.
    RepliesToArrival,
    /// The arrival replies to (or cites) one of the series' own mails.
    ArrivalRepliesToMember,
    /// Both cite the same mail outside the series (a shared thread ancestor).
    SharedAncestor,
    /// Same submitter, version and total, close in time.
    Markers,
}

/// Where an arrival goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Into this existing series.
    Join(i64),
    /// Into this existing series, at a slot whose holder moves out and is placed again: the
    /// arrival's references tie it to the series, the holder's do not.
    Displace(i64),
    /// Into a new series of its own.
    New,
    /// Nowhere: the counter is impossible (`3/2`, `0/0`); the mail is kept and flagged.
    Stray(String),
}

fn same_version(c: &Candidate, a: &Arrival) -> bool {
    a.version.unwrap_or(1) == c.version
}

fn accepts(rules: &Rules, c: &Candidate, a: &Arrival, by_reference: bool) -> bool {
    let Some((slot, total)) = a.counter else { return false };
    // A thread ties mails together even when their From differs (a cover letter written by
    // `git format-patch` carries the committer, the patches their authors); markers alone do not.
    if (c.slots.contains(&slot) && !displaces(c, a, by_reference)) || (!by_reference && c.submitter != a.submitter) {
        return false;
    }
    if c.total != total && !joins_across_totals(rules, c, a, by_reference) {
        return false;
    }
    if same_version(c, a) {
        return true;
    }
    // Both name a version and they differ: two versions of the work, never one series.
    if a.version.is_some() && c.version_explicit {
        return false;
    }
    // One side names no version: it inherits the other's down the thread (a version-less patch
    // replying into a `v3` series, a `v3` cover that version-less patches already reply to),
    // and up or across the thread only between mails posted together (a `[PATCH v2 1/4]` under
    // a `[PATCH 0/4]` cover). A v2 posted days later in reply to a version-less v1, or a
    // version-less v1 cover that v2 patches cite, stays apart.
    match (a.version, c.matched) {
        (None, Match::ArrivalRepliesToMember) | (Some(_), Match::RepliesToArrival) => true,
        _ => by_reference && (c.date - a.date).abs() <= rules.marker_window_secs,
    }
}

/// A cover letter whose total differs from its patches' (`[PATCH v3 0/5]` over `1/6`…`6/6`: a
/// patch added after the cover was written) still heads them when the thread says so: the cover
/// arriving after patches that reply to it, or a patch replying to a series that is only that
/// cover, posted within the marker window. The patches' total stands (see [`total_after_join`]).
fn joins_across_totals(rules: &Rules, c: &Candidate, a: &Arrival, by_reference: bool) -> bool {
    let Some((slot, _)) = a.counter else { return false };
    by_reference
        && (c.date - a.date).abs() <= rules.marker_window_secs
        && match c.matched {
            Match::RepliesToArrival => slot == 0,
            Match::ArrivalRepliesToMember => slot > 0 && c.slots == [0],
            _ => false,
        }
}

/// A mail tied to the series by references takes a slot from a mail placed there by markers
/// alone: evidence from references beats markers, also when it arrives later.
fn displaces(c: &Candidate, _a: &Arrival, by_reference: bool) -> bool {
    by_reference && c.displaceable
}

/// Whether subject markers alone may put `a` in `c`: besides submitter, version, total and time,
/// the same bracket tags (`[PATCH -stable,5.4.x 0/5]` never heads `[PATCH 5.10.x n/5]`), and
/// no two threads that no reference links: a threaded mail never joins a threaded series by
/// markers (they cite different roots, so they are two postings); an unthreaded mail joins a
/// threaded series, or the reverse, only as a lone cover (a list that rewrote the cover's
/// Message-ID leaves it outside its patches' thread), and unthreaded postings join freely.
fn markers_agree(c: &Candidate, a: &Arrival) -> bool {
    let cover = a.counter.is_some_and(|(slot, _)| slot == 0);
    c.tags == a.tags
        && match (a.threaded, c.threaded) {
            (true, true) => false,
            (false, false) => true,
            (false, true) => cover,
            (true, false) => !c.unlinked_patch,
        }
}

/// The total of a series after `arrival` joined it: the patches' total, never a cover's (a lone
/// cover's series takes the total of the first patch that joins it).
pub fn total_after_join(series_total: u32, series_slots: &[u32], arrival: &Arrival) -> u32 {
    match arrival.counter {
        Some((slot, total)) if slot > 0 && series_slots.iter().all(|&s| s == 0) => total,
        _ => series_total,
    }
}

/// Decides where an arrival goes, given the series its references matched (nearest
/// reference first) and the series the subject-marker lookup found.
pub fn place(rules: &Rules, arrival: &Arrival, by_reference: &[Candidate], by_markers: &[Candidate]) -> Placement {
    let Some((slot, total)) = arrival.counter else { return Placement::New };
    if total == 0 || slot > total {
        return Placement::Stray(format!("patch counter {slot}/{total} is outside its series"));
    }
    // Nearest evidence first; through one id, a series of the arrival's own version first.
    let mut refs: Vec<&Candidate> = by_reference.iter().collect();
    refs.sort_by_key(|c| (c.distance, !same_version(c, arrival)));
    if let Some(c) = refs.into_iter().find(|c| accepts(rules, c, arrival, true)) {
        return if c.slots.contains(&slot) { Placement::Displace(c.id) } else { Placement::Join(c.id) };
    }
    by_markers
        .iter()
        .filter(|c| {
            same_version(c, arrival)
                && (c.date - arrival.date).abs() <= rules.marker_window_secs
                && markers_agree(c, arrival)
                && accepts(rules, c, arrival, false)
        })
        .min_by_key(|c| (c.date - arrival.date).abs())
        .map_or(Placement::New, |c| Placement::Join(c.id))
}

/// A member of a series as the regrouping rule sees it.
#[derive(Clone, Debug)]
pub struct Posted {
    /// Its Message-ID.
    pub message_id: String,
    /// The ids it cites (`In-Reply-To`, `References`).
    pub refs: Vec<String>,
    /// Its slot (0 for the cover letter).
    pub slot: u32,
}

/// The members no chain of references links to `members[arrival]`. Two mails are linked when
/// one cites the other or both cite one mail.
pub fn unlinked(members: &[Posted], arrival: usize) -> Vec<usize> {
    components(members, arrival).into_iter().enumerate().filter(|&(_, (mine, _))| !mine).map(|(i, _)| i).collect()
}

/// The members to move out of a series that `members[arrival]` just joined by reference: those
/// in a thread no reference links to the arrival's. Markers can put a loose mail (a lone cover,
/// an unthreaded patch) into a thread's series; when a later mail cites that loose mail, the
/// series holds two threads, and references beat markers: the other thread leaves (`A 2/2`,
/// then `B 0/2` by markers, then `B 1/2` citing `B 0/2`: A's patch leaves B's series). Loose
/// members (no references and cited by none, or a cover cited by none) stay: nothing
/// contradicts them.
pub fn strangers(members: &[Posted], arrival: usize) -> Vec<usize> {
    components(members, arrival)
        .into_iter()
        .enumerate()
        .filter(|&(i, (mine, size))| !mine && !(size == 1 && (members[i].refs.is_empty() || members[i].slot == 0)))
        .map(|(i, _)| i)
        .collect()
}

/// For each member: whether it is linked to `members[arrival]`, and the size of its thread.
fn components(members: &[Posted], arrival: usize) -> Vec<(bool, usize)> {
    let n = members.len();
    let mut root: Vec<usize> = (0..n).collect();
    fn find(root: &mut [usize], mut i: usize) -> usize {
        while root[i] != i {
            root[i] = root[root[i]];
            i = root[i];
        }
        i
    }
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&members[i], &members[j]);
            if a.refs.contains(&b.message_id) || b.refs.contains(&a.message_id) || a.refs.iter().any(|r| b.refs.contains(r)) {
                let (x, y) = (find(&mut root, i), find(&mut root, j));
                root[x] = y;
            }
        }
    }
    let mine = find(&mut root, arrival);
    let mut size = vec![0usize; n];
    for i in 0..n {
        let r = find(&mut root, i);
        size[r] += 1;
    }
    (0..n)
        .map(|i| {
            let r = find(&mut root, i);
            (r == mine, size[r])
        })
        .collect()
}

/// Complete means every slot 1..=total is filled (the cover letter is optional).
pub fn is_complete(total: u32, slots: &[u32]) -> bool {
    (1..=total).all(|s| slots.contains(&s))
}

/// A partial re-roll (b4's rule: a `[PATCH v2 2/2]` in reply to v1's 2/2 is v1's 1/2 plus the
/// new 2/2): the slots of `total` that a re-roll holding `own` takes from the version it
/// re-rolls, which holds `base` (of the same total), in order, when together they fill every
/// slot; `None` when they do not, or when `own` fills them alone.
pub fn inherited_slots(total: u32, own: &[u32], base: &[u32]) -> Option<Vec<u32>> {
    let taken: Vec<u32> = (1..=total).filter(|s| !own.contains(s)).collect();
    (!taken.is_empty() && taken.iter().all(|s| base.contains(s))).then_some(taken)
}

/// What decides whether one series re-rolls another.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Store id.
    pub id: i64,
    /// Lower-cased submitter address.
    pub submitter: String,
    /// The series' version.
    pub version: u32,
    /// The project it belongs to, if any.
    pub project: Option<String>,
    /// b4's `change-id:`, when the submitter used b4.
    pub change_id: Option<String>,
    /// Normalized titles of the cover letter and every patch.
    pub titles: Vec<String>,
    /// Message-IDs the series names in `Supersedes:` lines.
    pub supersedes: Vec<String>,
    /// Message-IDs of the series' own mails.
    pub message_ids: Vec<String>,
    /// The ids its mails cite (`In-Reply-To`, `References`): a re-roll posted in reply to an
    /// older version names it by threading even when every title changed.
    pub cites: Vec<String>,
    /// Whether a subject says `RESEND`: a re-post of the same version, which replaces the
    /// posting it replies to.
    pub resend: bool,
}

/// Whether `new` is a later version of `old`: same submitter and project, a higher
/// version, and one of: new posted in old's thread (a v2 in reply to v1, whatever its
/// titles), the same `change-id`, a `Supersedes:` naming one of old's mails, or
/// a shared cover or patch title.
pub fn rerolls(new: &Summary, old: &Summary) -> bool {
    if new.id == old.id {
        return false;
    }
    if new.supersedes.iter().any(|id| old.message_ids.contains(id)) {
        return true;
    }
    if new.submitter != old.submitter || new.project != old.project {
        return false;
    }
    // A RESEND of the same version posted in reply to one of old's own mails replaces it.
    if new.resend && new.version == old.version && new.cites.iter().any(|id| old.message_ids.contains(id)) {
        return true;
    }
    if new.version <= old.version {
        return false;
    }
    if replies_into(new, old) {
        return true;
    }
    if let (Some(a), Some(b)) = (&new.change_id, &old.change_id) {
        return a == b;
    }
    new.titles.iter().any(|t| !t.is_empty() && old.titles.contains(t))
}

/// Whether a mail of `new` cites one of `old`'s or a mail `old`'s cite: `new` sits in old's
/// thread (its cover may not have arrived yet, so citing what old's patches cite counts).
fn replies_into(new: &Summary, old: &Summary) -> bool {
    new.cites.iter().any(|id| old.message_ids.contains(id) || old.cites.contains(id))
}

/// [`rerolls`], or `new` posted in reply to an `earlier` version that `old` re-rolls (v3 in
/// reply to v1, whose titles changed in v2 and again in v3, still replaces v2): threading
/// names the work a re-roll continues, whichever version it replies to.
pub fn rerolls_through(new: &Summary, old: &Summary, earlier: &[Summary]) -> bool {
    rerolls(new, old)
        || (new.id != old.id
            && new.submitter == old.submitter
            && new.project == old.project
            && new.version > old.version
            && earlier.iter().any(|x| x.id != old.id && x.version < old.version && replies_into(new, x) && rerolls(old, x)))
}

/// A project as the assembly rules see it.
#[derive(Clone, Debug)]
pub struct ProjectMatch<'a> {
    /// Project name.
    pub name: &'a str,
    /// List ids (`qemu-devel.nongnu.org`) whose mail belongs to the project.
    pub list_ids: &'a [String],
    /// A subject tag (`liburing`) the mail must carry as well, when set.
    pub tag: Option<&'a str>,
}

/// The first project whose list id matches the mail and whose tag, when it has one, the
/// subject carries wherever lists put it: a bracket word (`[PATCH liburing v2 1/3]`, given in
/// `tags`) or the first word of the `title` before its colon (`[PATCHv6 0/6] liburing: …`).
pub fn project_for<'a>(projects: &[ProjectMatch<'a>], list_ids: &[String], tags: &[String], title: &str) -> Option<&'a str> {
    // Only a word that ends in ':' is a prefix: "liburing: fix" names the project, "liburing
    // fix" is prose. A kernel subsystem (`io_uring/net:`) never equals a project tag.
    let prefix = title.split_whitespace().next().and_then(|w| w.strip_suffix(':')).filter(|w| !w.is_empty());
    projects
        .iter()
        .find(|p| {
            p.list_ids.iter().any(|l| list_ids.iter().any(|m| m.eq_ignore_ascii_case(l)))
                && p.tag.is_none_or(|t| tags.iter().any(|x| x.eq_ignore_ascii_case(t)) || prefix.is_some_and(|w| w.eq_ignore_ascii_case(t)))
        })
        .map(|p| p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(version: Option<u32>, slot: u32, total: u32) -> Arrival {
        Arrival { submitter: "a@x".into(), version, counter: Some((slot, total)), date: 1000, threaded: false, tags: vec![] }
    }

    fn cand(id: i64, version: u32, total: u32, slots: &[u32]) -> Candidate {
        Candidate {
            id,
            submitter: "a@x".into(),
            version,
            version_explicit: version > 1,
            total,
            slots: slots.to_vec(),
            date: 1000,
            matched: Match::ArrivalRepliesToMember,
            distance: 1,
            threaded: false,
            unlinked_patch: slots.iter().any(|&s| s > 0),
            displaceable: false,
            tags: vec![],
        }
    }

    #[test]
    fn joins_the_nearest_acceptable_reference() {
        let r = Rules::default();
        let refs = [cand(1, 1, 2, &[1]), cand(2, 1, 2, &[])];
        assert_eq!(place(&r, &arrival(None, 1, 2), &refs, &[]), Placement::Join(2), "slot 1 of series 1 is taken");
        assert_eq!(place(&r, &arrival(None, 2, 2), &refs, &[]), Placement::Join(1));
    }

    const DAY: i64 = 24 * 3600;

    #[test]
    fn a_reroll_in_reply_to_v1_is_a_new_series() {
        let r = Rules::default();
        // v1 was posted a day before the v2 that replies to it.
        let mut v1 = cand(1, 1, 2, &[0]);
        v1.date -= DAY;
        assert_eq!(place(&r, &arrival(Some(2), 1, 2), &[v1], &[]), Placement::New);
        // An unversioned patch under a v3 cover joins it.
        assert_eq!(place(&r, &arrival(None, 1, 4), &[cand(3, 3, 4, &[0])], &[]), Placement::Join(3));
        // A v3 cover over unversioned patches joins them.
        let mut implicit = cand(4, 1, 4, &[1, 2]);
        implicit.version_explicit = false;
        implicit.date -= DAY;
        assert_eq!(place(&r, &arrival(Some(3), 0, 4), &[implicit.clone()], &[]), Placement::New, "it does not reply to the v3");
        implicit.matched = Match::RepliesToArrival;
        assert_eq!(place(&r, &arrival(Some(3), 0, 4), &[implicit], &[]), Placement::Join(4));
        // A version-less v1 cover that v2 patches cite (they reply to it) stays out of v2.
        let mut v2 = cand(5, 2, 3, &[1]);
        v2.matched = Match::RepliesToArrival;
        v2.distance = 0;
        v2.date += DAY;
        let mut v1 = cand(6, 1, 3, &[1, 2, 3]);
        v1.version_explicit = false;
        v1.matched = Match::RepliesToArrival;
        v1.distance = 0;
        assert_eq!(place(&r, &arrival(None, 0, 3), &[v2.clone(), v1.clone()], &[]), Placement::Join(6));
        // Through the same id, the series of the mail's own version goes first, even when the
        // other was posted just as close.
        v2.date -= DAY;
        assert_eq!(place(&r, &arrival(None, 0, 3), &[v2.clone(), v1], &[]), Placement::Join(6));
        // A version-less v1 patch sharing only the v1 cover (cited by v2's patches) stays out too.
        v2.date += DAY;
        v2.matched = Match::SharedAncestor;
        v2.slots = vec![3];
        assert_eq!(place(&r, &arrival(None, 1, 3), &[v2], &[]), Placement::New);
        // Two named versions never mix, however close in time and thread.
        let v1named = cand(7, 1, 2, &[0]);
        let mut v1named = Candidate { version_explicit: true, ..v1named };
        assert_eq!(place(&r, &arrival(Some(2), 1, 2), &[v1named.clone()], &[]), Placement::New);
        v1named.matched = Match::RepliesToArrival;
        assert_eq!(place(&r, &arrival(Some(2), 1, 2), &[v1named], &[]), Placement::New);
    }

    #[test]
    fn a_version_on_only_some_mails_of_one_posting() {
        let r = Rules::default();
        // `[PATCH 0/3]` cover, `[PATCH v2 n/3]` patches replying to it, minutes apart, in
        // either order: one series (the version comes from the mails that name one).
        let mut cover = cand(1, 1, 3, &[0]);
        cover.version_explicit = false;
        assert_eq!(place(&r, &arrival(Some(2), 1, 3), &[cover.clone()], &[]), Placement::Join(1));
        let mut patches = cand(2, 2, 3, &[1, 2]);
        patches.matched = Match::RepliesToArrival;
        patches.distance = 0;
        patches.date += 60;
        assert_eq!(place(&r, &arrival(None, 0, 3), &[patches.clone()], &[]), Placement::Join(2));
        // Shallow threading without the cover: two patches citing the same missing cover.
        patches.matched = Match::SharedAncestor;
        patches.distance = 2;
        assert_eq!(place(&r, &arrival(None, 3, 3), &[patches.clone()], &[]), Placement::Join(2));
        // Markers alone never bridge a version difference.
        assert_eq!(place(&r, &arrival(None, 3, 3), &[], &[Candidate { matched: Match::Markers, ..patches }]), Placement::New);
    }

    #[test]
    fn a_cover_whose_total_differs_from_its_patches() {
        let r = Rules::default();
        // `[PATCH v3 0/5]` arriving after `1/6`…`6/6` that reply to it: it joins them.
        let mut patches = cand(1, 1, 6, &[1, 2, 3, 4, 5, 6]);
        patches.version_explicit = false;
        patches.matched = Match::RepliesToArrival;
        patches.distance = 0;
        assert_eq!(place(&r, &arrival(Some(3), 0, 5), &[patches.clone()], &[]), Placement::Join(1));
        // A patch replying to a series that is only the cover joins it, and its total stands.
        let mut cover = cand(2, 3, 5, &[0]);
        cover.matched = Match::ArrivalRepliesToMember;
        let a = arrival(None, 1, 6);
        assert_eq!(place(&r, &a, &[cover.clone()], &[]), Placement::Join(2));
        assert_eq!(total_after_join(5, &[0], &a), 6);
        assert_eq!(total_after_join(6, &[0, 1], &arrival(None, 2, 6)), 6);
        assert_eq!(total_after_join(6, &[1], &arrival(None, 0, 5)), 6, "a cover never sets the total");
        // Not once the cover has patches of its own total, not by markers, not days apart.
        let mut with_patch = cover.clone();
        with_patch.slots = vec![0, 1];
        assert_eq!(place(&r, &arrival(None, 2, 6), &[with_patch], &[]), Placement::New);
        assert_eq!(place(&r, &a, &[], &[Candidate { matched: Match::Markers, ..cover.clone() }]), Placement::New);
        let mut late = cover;
        late.date -= DAY;
        assert_eq!(place(&r, &a, &[late], &[]), Placement::New);
        patches.matched = Match::SharedAncestor;
        assert_eq!(place(&r, &arrival(Some(3), 0, 5), &[patches], &[]), Placement::New);
    }

    #[test]
    fn a_thread_joins_across_identities() {
        let r = Rules::default();
        let mut cover = cand(1, 1, 2, &[0]);
        cover.submitter = "committer@x".into();
        assert_eq!(place(&r, &arrival(None, 1, 2), &[cover.clone()], &[]), Placement::Join(1));
        assert_eq!(place(&r, &arrival(None, 1, 2), &[], &[cover]), Placement::New);
    }

    #[test]
    fn markers_need_same_submitter_version_total_and_time() {
        let r = Rules::default();
        let mut far = cand(1, 2, 3, &[1]);
        far.date = 1000 + 3600;
        let near = cand(2, 2, 3, &[1]);
        let mut other = cand(3, 2, 3, &[1]);
        other.submitter = "b@x".into();
        assert_eq!(place(&r, &arrival(Some(2), 2, 3), &[], &[far.clone(), other.clone(), near]), Placement::Join(2));
        assert_eq!(place(&r, &arrival(Some(2), 2, 3), &[], &[far, other]), Placement::New);
        assert_eq!(place(&r, &arrival(Some(1), 2, 3), &[], &[cand(5, 2, 3, &[1])]), Placement::New, "version differs");
        assert_eq!(place(&r, &arrival(Some(2), 2, 4), &[], &[cand(5, 2, 3, &[1])]), Placement::New, "total differs");
    }

    #[test]
    fn markers_never_join_two_threads_nor_two_trees() {
        let r = Rules::default();
        let threaded = |slot| Arrival { threaded: true, ..arrival(None, slot, 2) };
        // A threaded `2/2` never joins another thread's series by markers …
        let b = Candidate { matched: Match::Markers, threaded: true, ..cand(1, 1, 2, &[0, 1]) };
        // (`threaded` and `unlinked_patch` say what no reference links to the arrival.)
        assert_eq!(place(&r, &threaded(2), &[], std::slice::from_ref(&b)), Placement::New);
        // … nor an unthreaded patch's, but it joins a lone cover (a rewritten Message-ID).
        let loose_patch = Candidate { matched: Match::Markers, ..cand(2, 1, 2, &[1]) };
        assert_eq!(place(&r, &threaded(2), &[], std::slice::from_ref(&loose_patch)), Placement::New);
        let lone_cover = Candidate { matched: Match::Markers, ..cand(3, 1, 2, &[0]) };
        assert_eq!(place(&r, &threaded(2), &[], &[lone_cover]), Placement::Join(3));
        // An unthreaded cover joins a threaded series; unthreaded postings join freely.
        let a = Candidate { matched: Match::Markers, threaded: true, ..cand(4, 1, 2, &[2]) };
        assert_eq!(place(&r, &arrival(None, 0, 2), &[], std::slice::from_ref(&a)), Placement::Join(4));
        assert_eq!(place(&r, &arrival(None, 1, 2), &[], &[a]), Placement::New, "an unthreaded patch 1/2 is another thread's root");
        assert_eq!(place(&r, &arrival(None, 2, 2), &[], &[loose_patch]), Placement::Join(2));
        // Tags differ: `-stable,5.4.x` is not `5.10.x`.
        let tagged = Candidate { matched: Match::Markers, tags: vec!["5.10.x".into()], ..cand(5, 1, 2, &[1, 2]) };
        let cover = Arrival { tags: vec!["-stable".into(), "5.4.x".into()], ..arrival(None, 0, 2) };
        assert_eq!(place(&r, &cover, &[], std::slice::from_ref(&tagged)), Placement::New);
        let cover = Arrival { tags: vec!["5.10.x".into()], ..arrival(None, 0, 2) };
        assert_eq!(place(&r, &cover, &[], &[tagged]), Placement::Join(5));
    }

    #[test]
    fn references_take_a_slot_from_a_loose_cover() {
        let r = Rules::default();
        // A 2/2 founded the series, B 0/2 joined it by markers; A 0/2 arrives, cited by A 2/2.
        let c = Candidate { matched: Match::RepliesToArrival, distance: 0, threaded: true, displaceable: true, ..cand(1, 1, 2, &[0, 2]) };
        assert_eq!(place(&r, &arrival(None, 0, 2), std::slice::from_ref(&c), &[]), Placement::Displace(1));
        // A holder that references tie to the arrival's thread, or that may not move, stays.
        assert_eq!(place(&r, &arrival(None, 0, 2), &[Candidate { displaceable: false, ..c.clone() }], &[]), Placement::New);
        // Markers never displace.
        assert_eq!(place(&r, &arrival(None, 0, 2), &[], &[Candidate { matched: Match::Markers, ..c }]), Placement::New);
        let p = |id: &str, slot, refs: &[&str]| Posted { message_id: id.into(), slot, refs: refs.iter().map(|s| s.to_string()).collect() };
        assert_eq!(unlinked(&[p("a2", 2, &["a0"]), p("b0", 0, &[]), p("a0", 0, &[])], 2), vec![1]);
    }

    #[test]
    fn a_second_thread_leaves_when_references_tie_the_loose_mail_to_the_arrival() {
        let p = |id: &str, slot, refs: &[&str]| Posted { message_id: id.into(), slot, refs: refs.iter().map(|s| s.to_string()).collect() };
        // A 2/2 (citing A 0/2), B 0/2 by markers, then B 1/2 citing B 0/2: A 2/2 leaves.
        let m = [p("a2", 2, &["a0"]), p("b0", 0, &[]), p("b1", 1, &["b0"])];
        assert_eq!(strangers(&m, 2), vec![0]);
        // A rewritten cover nobody cites, patches citing the missing original: nothing moves.
        let m = [p("x", 0, &[]), p("p1", 1, &["y"]), p("p2", 2, &["y", "p1"])];
        assert!(strangers(&m, 2).is_empty());
        // An unthreaded posting: nothing moves.
        let m = [p("u0", 0, &[]), p("u1", 1, &[]), p("u2", 2, &[])];
        assert!(strangers(&m, 2).is_empty());
        // A cover with references that nobody cites stays (it is only loose).
        let m = [p("c", 0, &["v1"]), p("p1", 1, &["y"]), p("p2", 2, &["y"])];
        assert!(strangers(&m, 1).is_empty());
    }

    #[test]
    fn unnumbered_duplicates_and_strays() {
        let r = Rules::default();
        let un = Arrival { submitter: "a@x".into(), version: None, counter: None, date: 0, threaded: false, tags: vec![] };
        assert_eq!(place(&r, &un, &[cand(1, 1, 1, &[])], &[]), Placement::New);
        assert_eq!(place(&r, &arrival(None, 1, 2), &[cand(1, 1, 2, &[1])], &[cand(1, 1, 2, &[1])]), Placement::New);
        assert!(matches!(place(&r, &arrival(None, 3, 2), &[cand(1, 1, 2, &[])], &[]), Placement::Stray(_)));
        assert!(matches!(place(&r, &arrival(None, 0, 0), &[], &[]), Placement::Stray(_)));
    }

    #[test]
    fn completeness_ignores_the_cover() {
        assert!(is_complete(2, &[2, 1]));
        assert!(is_complete(2, &[0, 1, 2]));
        assert!(!is_complete(2, &[0, 1]));
        assert!(!is_complete(3, &[]));
    }

    #[test]
    fn a_partial_reroll_takes_the_slots_it_lacks() {
        assert_eq!(inherited_slots(2, &[2], &[1, 2]), Some(vec![1]));
        assert_eq!(inherited_slots(3, &[0, 2], &[1, 3]), Some(vec![1, 3]));
        assert_eq!(inherited_slots(2, &[2], &[0, 2]), None, "the base lacks 1/2 too");
        assert_eq!(inherited_slots(2, &[1, 2], &[1, 2]), None, "complete on its own");
    }

    #[test]
    fn rerolls_by_change_id_title_or_supersedes() {
        let v1 = Summary {
            id: 1,
            submitter: "a@x".into(),
            version: 1,
            titles: vec!["fix the thing".into()],
            message_ids: vec!["<v1@x>".into()],
            ..Summary::default()
        };
        let mut v2 = Summary { id: 2, version: 2, ..v1.clone() };
        v2.message_ids = vec!["<v2@x>".into()];
        assert!(rerolls(&v2, &v1));
        assert!(!rerolls(&v1, &v2), "a lower version never supersedes");
        let mut other_title = v2.clone();
        other_title.titles = vec!["something else".into()];
        assert!(!rerolls(&other_title, &v1));
        let mut by_change = other_title.clone();
        by_change.change_id = Some("20240101-x".into());
        let mut v1c = v1.clone();
        v1c.change_id = Some("20240101-x".into());
        assert!(rerolls(&by_change, &v1c));
        let mut sup = other_title.clone();
        sup.supersedes = vec!["<v1@x>".into()];
        assert!(rerolls(&sup, &v1));
        // A v2 in reply to v1 with every title changed re-rolls it; a v1 citing v2 does not.
        let mut in_reply = other_title.clone();
        in_reply.cites = vec!["<v1@x>".into()];
        assert!(rerolls(&in_reply, &v1));
        let mut v1_citing = v1.clone();
        v1_citing.cites = vec!["<v2@x>".into()];
        assert!(!rerolls(&v1_citing, &other_title));
        // v3 in reply to v1 replaces v2, which re-rolled v1 by title, though v3 shares none.
        let v3 = Summary { id: 3, version: 3, titles: vec!["new words".into()], cites: vec!["<v1@x>".into()], ..v1.clone() };
        assert!(!rerolls(&v3, &v2));
        assert!(rerolls_through(&v3, &v2, std::slice::from_ref(&v1)));
        assert!(!rerolls_through(&v3, &v2, &[]));
        // A RESEND in reply to the same version's posting replaces it; in reply to its thread
        // only, or without RESEND, it does not.
        let resend = Summary { id: 4, resend: true, titles: vec!["other words".into()], cites: vec!["<v1@x>".into()], ..v1.clone() };
        assert!(rerolls(&resend, &v1));
        assert!(!rerolls(&v1, &resend));
        assert!(!rerolls(&Summary { resend: false, ..resend.clone() }, &v1));
        assert!(!rerolls(&Summary { cites: vec!["<root@x>".into()], ..resend }, &Summary { cites: vec!["<root@x>".into()], ..v1.clone() }));
        let mut stranger = v2.clone();
        stranger.submitter = "b@x".into();
        assert!(!rerolls(&stranger, &v1));
    }

    #[test]
    fn projects_by_list_and_tag() {
        let lists = vec!["io-uring.vger.kernel.org".to_string()];
        let qemu = vec!["qemu-devel.nongnu.org".to_string()];
        let projects = [
            ProjectMatch { name: "liburing", list_ids: &lists, tag: Some("liburing") },
            ProjectMatch { name: "kernel-io", list_ids: &lists, tag: None },
            ProjectMatch { name: "qemu", list_ids: &qemu, tag: None },
        ];
        assert_eq!(project_for(&projects, &lists, &["liburing".into()], "test: x"), Some("liburing"));
        assert_eq!(project_for(&projects, &lists, &[], "io_uring/net: x"), Some("kernel-io"));
        assert_eq!(project_for(&projects, &["QEMU-devel.nongnu.org".into()], &[], "x"), Some("qemu"));
        assert_eq!(project_for(&projects, &["other".into()], &[], "liburing: x"), None);
    }

    #[test]
    fn a_project_tag_as_the_first_word_after_the_brackets() {
        let lists = vec!["io-uring.vger.kernel.org".to_string()];
        let projects = [ProjectMatch { name: "liburing", list_ids: &lists, tag: Some("liburing") }];
        assert_eq!(project_for(&projects, &lists, &[], "liburing: add a test"), Some("liburing"));
        assert_eq!(project_for(&projects, &lists, &[], "LibUring: add a test"), Some("liburing"));
        assert_eq!(project_for(&projects, &lists, &[], "liburing fix, no prefix"), None, "only a prefix with a colon names it");
        assert_eq!(project_for(&projects, &lists, &[], "io_uring: liburing: x"), None, "only the first word");
        assert_eq!(project_for(&projects, &lists, &[], ": x"), None);
        assert_eq!(project_for(&projects, &lists, &[], ""), None);
    }
}
