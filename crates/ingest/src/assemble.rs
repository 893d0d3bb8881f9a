//! Inside one write transaction: store a mail (idempotently), place it in a
//! series, and build the messages that announce both. Everything read here is
//! read inside the same `BEGIN IMMEDIATE` transaction that writes, so any
//! number of ingesting processes see each other's series: no "look up now,
//! save later". Uniqueness is also held by the schema (`content_hash`,
//! `(series_id, slot)`, `mail_id`).

use patchbay_mail::{Kind, Parsed, subject};
use patchbay_model::{MailReceived, SeriesComplete, SeriesHead, SeriesIncomplete, SeriesMerged, SeriesNew, SeriesPatch, SeriesSuperseded};
use patchbay_series::{Arrival, Candidate, Match, Placement, Posted, ProjectMatch, Rules, Summary};
use patchbay_store::StoreError;

use crate::sql::{Sql, args};
use serde::{Deserialize, Serialize};

/// A mail on its way into the store.
#[derive(Debug)]
pub struct Incoming {
    /// The mail exactly as received.
    pub raw: Vec<u8>,
    /// What the parser made of it.
    pub parsed: Parsed,
    /// List ids the delivery names beyond the mail's own `List-Id` (`inject --list-id`).
    pub lists: Vec<String>,
    /// When patchbay received it, seconds since the epoch.
    pub received_at: i64,
}

/// What became of one mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Stored now, with this id.
    Stored {
        /// Store id.
        mail: i64,
        /// Whether the parser found problems (the mail is stored and marked regardless).
        malformed: bool,
        /// Another mail had the same Message-ID and different content.
        conflict: bool,
    },
    /// The same content was stored before (a retry, a re-import, a cross-post): linked to the lists only.
    Duplicate {
        /// The stored mail's id.
        mail: i64,
    },
}

/// One project, as ingest matches it.
#[derive(Clone, Debug)]
pub struct Project {
    /// Name.
    pub name: String,
    /// List ids.
    pub list_ids: Vec<String>,
    /// Subject tag, when required.
    pub tag: Option<String>,
}

/// Hints kept per mail for the `complete` event.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Hints {
    #[serde(skip_serializing_if = "Option::is_none")]
    base_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    based_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    supersedes: Vec<String>,
    /// The ids a patch or cover letter cites (`In-Reply-To`, then `References`), so a series'
    /// threads can be told apart later without parsing its mails again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    refs: Vec<String>,
    /// The root of the mail's thread, when it is not the mail itself ([`crate::identity::root`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    root: Option<String>,
}

/// The messages a write produces, typed; the caller turns them into `Outgoing`.
#[derive(Debug)]
pub enum Event {
    /// `mail.message.received`.
    Received(MailReceived),
    /// `series.series.new`.
    New(SeriesNew),
    /// `series.series.complete`.
    Complete(Box<Completed>),
    /// `series.series.incomplete`.
    Incomplete(SeriesIncomplete),
    /// `series.series.superseded`.
    Superseded(SeriesSuperseded),
    /// `series.series.merged`.
    Merged(SeriesMerged),
}

/// A `series.series.complete` whose mbox is still to be written from its patches' raw mails: it
/// is written where the event is shaped into its message, off the writer's thread when an
/// import's messages are sealed on a thread of their own.
#[derive(Debug)]
pub struct Completed {
    body: SeriesComplete,
    raws: Vec<Vec<u8>>,
}

impl Completed {
    /// The event's body, its mbox written.
    pub fn into_body(self) -> SeriesComplete {
        let mut mbox = Vec::with_capacity(self.raws.iter().map(|r| r.len() + 128).sum());
        for raw in &self.raws {
            patchbay_mail::write_mboxrd(&mut mbox, raw);
        }
        let (mbox, mbox_base64) = match String::from_utf8(mbox) {
            Ok(text) => (text, None),
            Err(e) => patchbay_model::mbox_fields(e.as_bytes()),
        };
        SeriesComplete { mbox, mbox_base64, ..self.body }
    }
}

/// Stores one mail and places it; appends what to publish to `events`.
pub fn accept(tx: &dyn Sql, rules: &Rules, projects: &[Project], mail: &Incoming, events: &mut Vec<Event>) -> Result<Outcome, StoreError> {
    let p = &mail.parsed;
    let start = events.len();
    let mut lists: Vec<String> = p.list_ids.clone();
    for l in &mail.lists {
        let l = l.trim().trim_start_matches('<').trim_end_matches('>').to_ascii_lowercase();
        if !l.is_empty() && !lists.contains(&l) {
            lists.push(l);
        }
    }
    let existing: Option<i64> = tx.value("SELECT id FROM mails WHERE content_hash = ?1", args![&p.content_hash[..]])?;
    if let Some(id) = existing {
        link_lists(tx, id, &lists)?;
        return Ok(Outcome::Duplicate { mail: id });
    }
    let conflicts_with: Option<i64> = tx.value("SELECT id FROM mails WHERE message_id = ?1 ORDER BY id LIMIT 1", args![p.message_id])?;
    let mut problems = p.problems.clone();
    if let Some(other) = conflicts_with {
        problems.push(format!("another mail (#{other}) has the same Message-ID and different content"));
    }
    let hints = Hints {
        base_commit: p.base_commit.clone(),
        based_on: p.based_on.clone(),
        depends_on: p.depends_on.clone(),
        change_id: p.change_id.clone(),
        supersedes: p.supersedes.clone(),
        refs: if matches!(p.kind, Kind::Patch | Kind::Cover) { cited(p) } else { Vec::new() },
        root: Some(crate::identity::root(&p.message_id, &p.in_reply_to, &p.references))
            .filter(|r| matches!(p.kind, Kind::Patch | Kind::Cover) && *r != p.message_id)
            .map(str::to_string),
    };
    let hints_json = (hints != Hints::default()).then(|| serde_json::to_string(&hints).expect("hints serialize"));
    let id: i64 = tx.insert_id(
            "INSERT INTO mails (message_id, content_hash, received_at, date, subject, from_name, from_email, kind, problems, conflicts_with, hints, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            args![
                p.message_id,
                &p.content_hash[..],
                mail.received_at,
                p.date,
                p.subject_line,
                p.from_name,
                p.from_email,
                p.kind.as_str(),
                (!problems.is_empty()).then(|| problems.join("\n")),
                conflicts_with,
                hints_json,
                mail.raw,
            ],
        )?;
    link_lists(tx, id, &lists)?;

    let mut series = None;
    if conflicts_with.is_none() && matches!(p.kind, Kind::Patch | Kind::Cover) {
        match thread(tx, (rules, projects), id, mail, &lists, events, 0)? {
            Ok(s) => series = Some(load_series(tx, s)?.uid),
            Err(stray) => {
                problems.push(stray);
                tx.exec("UPDATE mails SET problems = ?2 WHERE id = ?1", args![id, problems.join("\n")])?;
            }
        }
    }
    // The mail's own announcement goes first, before what it caused.
    events.insert(
        start,
        Event::Received(MailReceived {
            mail: id,
            message_id: p.message_id.clone(),
            subject: p.subject_line.clone(),
            from: p.from_email.clone(),
            lists,
            kind: p.kind.into(),
            problems: problems.clone(),
            conflicts_with,
            series,
        }),
    );
    Ok(Outcome::Stored { mail: id, malformed: !problems.is_empty(), conflict: conflicts_with.is_some() })
}

/// The ids a mail cites, `In-Reply-To` first, then `References` in order, each once.
fn cited(p: &Parsed) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in p.in_reply_to.iter().chain(p.references.iter()) {
        if *id != p.message_id && !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

/// Bracket tags as markers compare them: lower-cased, sorted, once each.
fn tag_set(tags: &[String]) -> Vec<String> {
    let mut t: Vec<String> = tags.iter().map(|t| t.to_lowercase()).collect();
    t.sort();
    t.dedup();
    t
}

fn link_lists(tx: &dyn Sql, mail: i64, lists: &[String]) -> Result<(), StoreError> {
    for l in lists {
        tx.exec("INSERT INTO mail_lists (mail_id, list_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING", args![mail, l])?;
    }
    Ok(())
}

struct SeriesRow {
    id: i64,
    project: Option<String>,
    submitter: String,
    version: u32,
    version_explicit: bool,
    total: u32,
    name: String,
    state: String,
    date: i64,
    /// The public id ([`crate::identity`]); `id` is the local row key.
    uid: i64,
}

fn load_series(tx: &dyn Sql, id: i64) -> Result<SeriesRow, StoreError> {
    let mut r = tx.one(
        "SELECT id, project, submitter, version, version_explicit, total, name, state, date, uid FROM series WHERE id = ?1",
        args![id],
    )?;
    Ok(SeriesRow {
        id: r.get(0)?,
        project: r.get(1)?,
        submitter: r.get(2)?,
        version: r.get(3)?,
        version_explicit: r.get(4)?,
        total: r.get(5)?,
        name: r.get(6)?,
        state: r.get(7)?,
        date: r.get(8)?,
        uid: r.get(9)?,
    })
}

fn slots(tx: &dyn Sql, series: i64) -> Result<Vec<u32>, StoreError> {
    tx.column("SELECT slot FROM series_mails WHERE series_id = ?1 ORDER BY slot", args![series])
}

/// A series' members with what they cite, and each one's subject, in slot order.
fn threads(tx: &dyn Sql, series: i64) -> Result<Vec<(Posted, String)>, StoreError> {
    let rows = tx.rows(
        "SELECT sm.slot, m.message_id, m.hints, m.subject FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
         WHERE sm.series_id = ?1 ORDER BY sm.slot",
        args![series],
    )?;
    rows.into_iter()
        .map(|mut r| {
            let hints: Option<String> = r.get(2)?;
            let refs = hints.and_then(|h| serde_json::from_str::<Hints>(&h).ok()).unwrap_or_default().refs;
            Ok((Posted { slot: r.get(0)?, message_id: r.get(1)?, refs }, r.get(3)?))
        })
        .collect()
}

/// Whether `members` hold a cover letter that none of their patches cites (placed by markers).
fn loose_cover(members: &[Posted]) -> bool {
    members.iter().find(|m| m.slot == 0).is_some_and(|c| !members.iter().any(|m| m.slot > 0 && m.refs.contains(&c.message_id)))
}

/// The series `s` as a candidate for `arrival` (its Message-ID, what it cites, its slot).
fn candidate(tx: &dyn Sql, s: &SeriesRow, matched: Match, distance: usize, arrival: &Posted) -> Result<Candidate, StoreError> {
    let members = threads(tx, s.id)?;
    // The arrival's slot may be taken from a mail no reference links to the arrival's thread: in
    // a series not yet announced complete, or a cover the announcement left out (a loose one).
    let mut all: Vec<Posted> = members.iter().map(|(m, _)| m.clone()).collect();
    all.push(arrival.clone());
    let unlinked = patchbay_series::unlinked(&all, all.len() - 1);
    let mut displaceable = false;
    if let Some(holder) = members.iter().position(|(m, _)| m.slot == arrival.slot)
        && matched != Match::Markers
    {
        let may_move = matches!(s.state.as_str(), "new" | "incomplete") || (arrival.slot == 0 && loose_cover(&all[..members.len()]));
        displaceable = may_move && unlinked.contains(&holder);
    }
    Ok(Candidate {
        id: s.id,
        submitter: s.submitter.clone(),
        version: s.version,
        version_explicit: s.version_explicit,
        total: s.total,
        slots: members.iter().map(|(m, _)| m.slot).collect(),
        date: s.date,
        matched,
        distance,
        threaded: unlinked.iter().any(|&i| !all[i].refs.is_empty()),
        unlinked_patch: unlinked.iter().any(|&i| all[i].slot > 0),
        displaceable,
        tags: members.first().map(|(_, subj)| tag_set(&subject::parse(subj).tags)).unwrap_or_default(),
    })
}

fn head(s: &SeriesRow) -> SeriesHead {
    SeriesHead {
        id: s.uid,
        project: s.project.clone().unwrap_or_default(),
        name: s.name.clone(),
        submitter: s.submitter.clone(),
        version: s.version,
        total: s.total,
    }
}

fn project_matches(projects: &[Project]) -> Vec<ProjectMatch<'_>> {
    projects.iter().map(|pr| ProjectMatch { name: &pr.name, list_ids: &pr.list_ids, tag: pr.tag.as_deref() }).collect()
}

/// Places a stored patch or cover letter; `Err(reason)` for a stray that joins nothing.
fn thread(
    tx: &dyn Sql,
    (rules, projects): (&Rules, &[Project]),
    mail_id: i64,
    mail: &Incoming,
    lists: &[String],
    events: &mut Vec<Event>,
    depth: usize,
) -> Result<Result<i64, String>, StoreError> {
    let p = &mail.parsed;
    let counter = p.subject.counter;
    let date = p.date.unwrap_or(mail.received_at);
    let refs = cited(p);
    let posted = Posted { message_id: p.message_id.clone(), refs: refs.clone(), slot: counter.map_or(1, |(n, _)| n) };
    let arrival = Arrival {
        submitter: p.from_email.clone().unwrap_or_default(),
        version: p.subject.version,
        counter,
        date,
        threaded: !refs.is_empty(),
        tags: tag_set(&p.subject.tags),
    };

    let mut by_reference = Vec::new();
    {
        let mut seen = Vec::new();
        for (n, id) in std::iter::once(&p.message_id).chain(p.refs_nearest_first().iter()).enumerate() {
            let rows = tx.rows("SELECT series_id, member FROM series_refs WHERE message_id = ?1 ORDER BY series_id", args![id])?;
            for mut r in rows {
                let (sid, member): (i64, bool) = (r.get(0)?, r.get(1)?);
                if !seen.contains(&sid) {
                    seen.push(sid);
                    let matched = match (n, member) {
                        (0, _) => Match::RepliesToArrival,
                        (_, true) => Match::ArrivalRepliesToMember,
                        (_, false) => Match::SharedAncestor,
                    };
                    by_reference.push(candidate(tx, &load_series(tx, sid)?, matched, n, &posted)?);
                }
            }
        }
    }
    // Markers are looked at only when no reference placed the mail.
    let mut placement = patchbay_series::place(rules, &arrival, &by_reference, &[]);
    let mut by_markers = Vec::new();
    if let (Placement::New, Some((_, total))) = (&placement, counter) {
        let ids: Vec<i64> = tx.column(
            "SELECT id FROM series WHERE submitter = ?1 AND total = ?2 AND version = ?3 AND date BETWEEN ?4 AND ?5 ORDER BY id",
            args![arrival.submitter, total, p.subject.version_or_1(), date - rules.marker_window_secs, date + rules.marker_window_secs],
        )?;
        for sid in ids {
            by_markers.push(candidate(tx, &load_series(tx, sid)?, Match::Markers, 0, &posted)?);
        }
        if !by_markers.is_empty() {
            placement = patchbay_series::place(rules, &arrival, &by_reference, &by_markers);
        }
    }
    // Mails that references moved out of the series this one joins, placed again at the end.
    let mut moved: Vec<i64> = Vec::new();
    if depth > 4 && matches!(placement, Placement::Displace(_)) {
        placement = Placement::New; // a chain of displacements this long is not a real posting
    }
    let slot = counter.map_or(1, |(n, _)| n);
    let series_id = match placement {
        Placement::Stray(reason) => return Ok(Err(reason)),
        Placement::Join(sid) | Placement::Displace(sid) => {
            if matches!(placement, Placement::Displace(_)) {
                let holder: i64 =
                    tx.one("SELECT mail_id FROM series_mails WHERE series_id = ?1 AND slot = ?2", args![sid, posted.slot])?.get(0)?;
                evict(tx, sid, &[holder])?;
                moved.push(holder);
            }
            let before = load_series(tx, sid)?;
            let total = patchbay_series::total_after_join(before.total, &slots(tx, sid)?, &arrival);
            if total != before.total {
                tx.exec("UPDATE series SET total = ?2 WHERE id = ?1", args![sid, total])?;
            }
            tx.exec("INSERT INTO series_mails (series_id, slot, mail_id) VALUES (?1, ?2, ?3)", args![sid, slot, mail_id])?;
            let s = load_series(tx, sid)?;
            if p.subject.version.is_some() && !s.version_explicit {
                tx.exec("UPDATE series SET version = ?2, version_explicit = 1 WHERE id = ?1", args![sid, p.subject.version_or_1()])?;
            }
            rekey(tx, sid)?;
            // The project may be named by a later mail only (the cover's `liburing: …` after
            // patches titled `test: …`): a series no project claimed yet is claimed now, and
            // one that completed unclaimed is taken back to `new`, so it completes (supersession
            // and announcement included) as the project's below.
            if s.project.is_none()
                && let Some(project) = patchbay_series::project_for(&project_matches(projects), lists, &p.subject.tags, &p.subject.title)
            {
                tx.exec(
                    "UPDATE series SET project = ?2, state = CASE WHEN state = 'complete' THEN 'new' ELSE state END WHERE id = ?1",
                    args![sid, project],
                )?;
                events.push(Event::New(SeriesNew { series: head(&load_series(tx, sid)?) }));
            }
            if slot == 0 || (slot == 1 && !slots(tx, sid)?.contains(&0)) {
                tx.exec("UPDATE series SET name = ?2 WHERE id = ?1", args![sid, p.subject.title])?;
            }
            tx.exec("UPDATE series SET updated_at = ?2 WHERE id = ?1", args![sid, mail.received_at])?;
            sid
        }
        Placement::New => {
            let matches = project_matches(projects);
            let project = patchbay_series::project_for(&matches, lists, &p.subject.tags, &p.subject.title);
            let total = counter.map_or(1, |(_, t)| t);
            let sid: i64 = tx.insert_id(
                "INSERT INTO series (project, submitter, version, version_explicit, total, name, state, date, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'new', ?7, ?8, ?8)",
                args![
                    project,
                    arrival.submitter,
                    p.subject.version_or_1(),
                    p.subject.version.is_some(),
                    total,
                    p.subject.title,
                    date,
                    mail.received_at
                ],
            )?;
            tx.exec("INSERT INTO series_mails (series_id, slot, mail_id) VALUES (?1, ?2, ?3)", args![sid, slot, mail_id])?;
            rekey(tx, sid)?;
            let s = load_series(tx, sid)?;
            if s.project.is_some() {
                events.push(Event::New(SeriesNew { series: head(&s) }));
            }
            sid
        }
    };
    // What later mails may find this series by: a patch records its references too, a cover
    // letter only its own id (a cover in reply to v1 must not pull v1's patches in).
    add_ref(tx, &p.message_id, series_id, true)?;
    if p.kind == Kind::Patch {
        for r in p.in_reply_to.iter().chain(p.references.iter()) {
            add_ref(tx, r, series_id, false)?;
        }
    }
    // A loose mail (placed by markers) that this one cites ties this one's thread to the series;
    // any other thread in it leaves, before the series can complete with it.
    if depth <= 4 {
        let members: Vec<Posted> = threads(tx, series_id)?.into_iter().map(|(m, _)| m).collect();
        if let Some(me) = members.iter().position(|m| m.message_id == p.message_id) {
            let out = patchbay_series::strangers(&members, me);
            if !out.is_empty() {
                let mut ids = Vec::new();
                for i in out {
                    ids.push(
                        tx.one("SELECT mail_id FROM series_mails WHERE series_id = ?1 AND slot = ?2", args![series_id, members[i].slot])?
                            .get(0)?,
                    );
                }
                evict(tx, series_id, &ids)?;
                moved.extend(ids);
            }
        }
    }
    let s = load_series(tx, series_id)?;
    if matches!(s.state.as_str(), "new" | "incomplete") && has_every_slot(tx, &s)? {
        complete(tx, &s, mail.received_at, events)?;
    } else if matches!(s.state.as_str(), "complete" | "superseded") && has_every_slot(tx, &s)? {
        reconsider(tx, &s, mail.received_at, events)?;
    }
    // A partial re-roll of this series (a v2 2/2 in reply to its 2/2) may now have every slot.
    for d in partial_rerolls_of(tx, series_id)? {
        let d = load_series(tx, d)?;
        if matches!(d.state.as_str(), "new" | "incomplete") && has_every_slot(tx, &d)? {
            complete(tx, &d, mail.received_at, events)?;
        }
    }
    for m in moved {
        place_again(tx, rules, projects, m, events, depth + 1)?;
    }
    Ok(Ok(series_id))
}

/// Records that `message_id` finds `series` (`member`: it is one of its mails, not only cited).
fn add_ref(tx: &dyn Sql, message_id: &str, series: i64, member: bool) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO series_refs (message_id, series_id, member) VALUES (?1, ?2, ?3)
         ON CONFLICT (message_id, series_id) DO UPDATE SET member = CASE WHEN excluded.member > series_refs.member THEN excluded.member ELSE series_refs.member END",
        args![message_id, series, member],
    )?;
    Ok(())
}

/// Whether `s` has every slot 1..=total, its own or, for a partial re-roll, taken from the
/// version it re-rolls ([`inherited`]).
fn has_every_slot(tx: &dyn Sql, s: &SeriesRow) -> Result<bool, StoreError> {
    Ok(patchbay_series::is_complete(s.total, &slots(tx, s.id)?) || inherited(tx, s)?.is_some())
}

/// A partial re-roll (b4's rule): when one of `s`'s patches at slot k ≥ 2 replies directly to
/// k/N of an earlier version of the same submitter, project and total, `s` re-posts only some
/// patches of that version; the slots it lacks come from it. Returns that version and the
/// slots taken from it, when together they fill every slot; `None` when `s` has every slot
/// itself or nothing fills it. Slot 1 is left out: a full re-roll's 1/N posted in reply to
/// v1's 1/N looks the same until its 2/N arrives.
fn inherited(tx: &dyn Sql, s: &SeriesRow) -> Result<Option<(i64, Vec<u32>)>, StoreError> {
    let own = slots(tx, s.id)?;
    if patchbay_series::is_complete(s.total, &own) {
        return Ok(None);
    }
    for (m, _) in threads(tx, s.id)? {
        let Some(parent) = m.refs.first().filter(|_| m.slot >= 2) else { continue };
        let base: Option<i64> = tx.value(
            "SELECT b.id FROM mails m JOIN series_mails sm ON sm.mail_id = m.id JOIN series b ON b.id = sm.series_id
             WHERE m.message_id = ?1 AND sm.slot = ?2 AND b.id != ?3 AND b.submitter = ?4 AND b.project IS NOT DISTINCT FROM ?5
             AND b.total = ?6 AND b.version < ?7 ORDER BY b.version DESC, b.id DESC LIMIT 1",
            args![parent, m.slot, s.id, s.submitter, s.project, s.total, s.version],
        )?;
        if let Some(b) = base {
            return Ok(patchbay_series::inherited_slots(s.total, &own, &slots(tx, b)?).map(|taken| (b, taken)));
        }
    }
    Ok(None)
}

/// Series other than `series` whose patches cite one of its mails: those that may be partial
/// re-rolls of it ([`inherited`] decides).
fn partial_rerolls_of(tx: &dyn Sql, series: i64) -> Result<Vec<i64>, StoreError> {
    tx.column(
        "SELECT DISTINCT r.series_id FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
         JOIN series_refs r ON r.message_id = m.message_id AND r.member = 0
         WHERE sm.series_id = ?1 AND sm.slot >= 2 AND r.series_id != ?1 ORDER BY r.series_id",
        args![series],
    )
}

/// A series' patches (slot > 0) in slot order, with the slots a partial re-roll takes from the
/// version it re-rolls; raw bytes when `with_raw`.
fn patches_of(tx: &dyn Sql, s: &SeriesRow, with_raw: bool) -> Result<Vec<Member>, StoreError> {
    let mut ms: Vec<Member> = members(tx, s.id, with_raw)?.into_iter().filter(|m| m.slot > 0).collect();
    if let Some((base, taken)) = inherited(tx, s)? {
        ms.extend(members(tx, base, with_raw)?.into_iter().filter(|m| taken.contains(&m.slot)));
        ms.sort_by_key(|m| m.slot);
    }
    Ok(ms)
}

/// Takes `mails` out of `series` (the thread they were placed in by markers turned out to be
/// another's): the series' references and first Date are rebuilt from the mails that stay, and
/// a series left empty is deleted (it never completed, so nothing was announced for it but
/// `new`).
fn evict(tx: &dyn Sql, series: i64, mails: &[i64]) -> Result<(), StoreError> {
    for m in mails {
        tx.exec("DELETE FROM series_mails WHERE mail_id = ?1", args![m])?;
    }
    tx.exec("DELETE FROM series_refs WHERE series_id = ?1", args![series])?;
    let members = threads(tx, series)?;
    if members.is_empty() {
        // Nothing may name it any more: a version it replaced while incomplete keeps its state.
        tx.exec("UPDATE series SET supersedes = NULL WHERE supersedes = ?1", args![series])?;
        tx.exec("UPDATE series SET superseded_by = NULL WHERE superseded_by = ?1", args![series])?;
        tx.exec("DELETE FROM series WHERE id = ?1", args![series])?;
        return Ok(());
    }
    for (m, _) in &members {
        add_ref(tx, &m.message_id, series, true)?;
        if m.slot > 0 {
            for r in &m.refs {
                add_ref(tx, r, series, false)?;
            }
        }
    }
    let (_, first) = &members[0];
    tx.exec(
        "UPDATE series SET name = ?2, date = (SELECT min(coalesce(m.date, m.received_at)) FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
         WHERE sm.series_id = ?1) WHERE id = ?1",
        args![series, subject::parse(first).title],
    )?;
    rekey(tx, series)
}

/// Derives series `id`'s public id again from its members ([`crate::identity`]) while it is
/// still incomplete: a lower slot arrived or left, or its version became known. Fixed from
/// completion on. On a collision with another series' id, the key's next id is taken.
fn rekey(tx: &dyn Sql, id: i64) -> Result<(), StoreError> {
    let mut r = tx.one("SELECT state, version, uid_key FROM series WHERE id = ?1", args![id])?;
    let (state, version, old_key): (String, u32, Option<String>) = (r.get(0)?, r.get(1)?, r.get(2)?);
    if !matches!(state.as_str(), "new" | "incomplete") {
        return Ok(());
    }
    let rows: Vec<(u32, String, Option<String>, i64, String)> = tx
        .rows(
            "SELECT sm.slot, m.message_id, m.hints, m.id, m.subject FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
             WHERE sm.series_id = ?1 ORDER BY sm.slot",
            args![id],
        )?
        .into_iter()
        .map(|mut r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .collect::<Result<_, StoreError>>()?;
    let Some(keyed) = crate::identity::keyed_slot(rows.iter().map(|r| r.0)) else { return Ok(()) };
    let Some((_, message_id, hints, mail, subject)) = rows.into_iter().find(|r| r.0 == keyed) else { return Ok(()) };
    let hints: Hints = hints.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default();
    let root = match (hints.root, hints.refs.is_empty()) {
        (Some(root), _) => root,
        (None, true) => message_id,
        // Stored before roots were kept: read from the mail itself.
        (None, false) => {
            let raw: Vec<u8> = tx.one("SELECT raw FROM mails WHERE id = ?1", args![mail])?.get(0)?;
            let p = patchbay_mail::parse(&raw);
            crate::identity::root(&p.message_id, &p.in_reply_to, &p.references).to_string()
        }
    };
    let key = crate::identity::key(&root, version, subject::parse(&subject).resend);
    if old_key.as_deref() == Some(key.as_str()) {
        return Ok(());
    }
    for n in 0.. {
        let uid = crate::identity::uid(&key, n);
        let holder: Option<i64> = tx.value("SELECT id FROM series WHERE uid = ?1", args![uid])?;
        if holder.is_none_or(|h| h == id) {
            tx.exec("UPDATE series SET uid = ?2, uid_key = ?3 WHERE id = ?1", args![id, uid, key])?;
            break;
        }
    }
    Ok(())
}

/// Places a stored mail again, as if it arrived now (after `evict`).
fn place_again(
    tx: &dyn Sql,
    rules: &Rules,
    projects: &[Project],
    mail: i64,
    events: &mut Vec<Event>,
    depth: usize,
) -> Result<(), StoreError> {
    let mut r = tx.one("SELECT raw, received_at FROM mails WHERE id = ?1", args![mail])?;
    let (raw, received_at): (Vec<u8>, i64) = (r.get(0)?, r.get(1)?);
    // Sorted here, by bytes: the stores' collations differ.
    let mut lists: Vec<String> = tx.column("SELECT list_id FROM mail_lists WHERE mail_id = ?1", args![mail])?;
    lists.sort();
    let parsed = patchbay_mail::parse(&raw);
    let incoming = Incoming { raw, parsed, lists: Vec::new(), received_at };
    if let Err(stray) = thread(tx, (rules, projects), mail, &incoming, &lists, events, depth)? {
        tracing::warn!(mail, %stray, "a mail moved out of a series is now a stray");
    }
    Ok(())
}

struct Member {
    slot: u32,
    mail: i64,
    message_id: String,
    subject: String,
    hints: Hints,
    raw: Vec<u8>,
}

fn members(tx: &dyn Sql, series: i64, with_raw: bool) -> Result<Vec<Member>, StoreError> {
    let sql = if with_raw {
        "SELECT sm.slot, m.id, m.message_id, m.subject, m.hints, m.raw
         FROM series_mails sm JOIN mails m ON m.id = sm.mail_id WHERE sm.series_id = ?1 ORDER BY sm.slot"
    } else {
        "SELECT sm.slot, m.id, m.message_id, m.subject, m.hints
         FROM series_mails sm JOIN mails m ON m.id = sm.mail_id WHERE sm.series_id = ?1 ORDER BY sm.slot"
    };
    tx.rows(sql, args![series])?
        .into_iter()
        .map(|mut r| {
            let hints: Option<String> = r.get(4)?;
            Ok(Member {
                slot: r.get(0)?,
                mail: r.get(1)?,
                message_id: r.get(2)?,
                subject: r.get(3)?,
                hints: hints.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
                raw: if with_raw { r.get(5)? } else { Vec::new() },
            })
        })
        .collect()
}

fn summary(tx: &dyn Sql, s: &SeriesRow) -> Result<Summary, StoreError> {
    let ms = members(tx, s.id, false)?;
    Ok(Summary {
        id: s.id,
        submitter: s.submitter.clone(),
        version: s.version,
        project: s.project.clone(),
        change_id: ms.iter().find_map(|m| m.hints.change_id.clone()),
        titles: ms.iter().map(|m| subject::parse(&m.subject).normalized_title()).collect(),
        supersedes: ms.iter().flat_map(|m| m.hints.supersedes.clone()).collect(),
        message_ids: ms.iter().map(|m| m.message_id.clone()).collect(),
        cites: ms.iter().flat_map(|m| m.hints.refs.iter().cloned()).collect(),
        resend: ms.iter().any(|m| subject::parse(&m.subject).resend),
    })
}

/// What decides re-rolls, read once per decision. `complete` and `reconsider` change no
/// series' members and add no series, so a series' summary, and the list of its earlier
/// versions, read during one of them holds until it ends. Without this a prolific submitter's
/// every completion read each of their series' members about a hundred times over (the newer
/// versions to reconsider, each with its earlier and older ones): 45 ms per mail at 200 series.
#[derive(Default)]
struct Summaries {
    one: std::cell::RefCell<std::collections::HashMap<i64, std::rc::Rc<Summary>>>,
    earlier: std::cell::RefCell<std::collections::HashMap<i64, std::rc::Rc<Vec<Summary>>>>,
}

impl Summaries {
    /// `s`'s summary.
    fn of(&self, tx: &dyn Sql, s: &SeriesRow) -> Result<std::rc::Rc<Summary>, StoreError> {
        if let Some(known) = self.one.borrow().get(&s.id) {
            return Ok(known.clone());
        }
        let made = std::rc::Rc::new(summary(tx, s)?);
        self.one.borrow_mut().insert(s.id, made.clone());
        Ok(made)
    }

    /// Series `id`'s summary; its row is read only when the summary is not known yet.
    fn of_id(&self, tx: &dyn Sql, id: i64) -> Result<std::rc::Rc<Summary>, StoreError> {
        if let Some(known) = self.one.borrow().get(&id) {
            return Ok(known.clone());
        }
        self.of(tx, &load_series(tx, id)?)
    }

    /// Earlier versions of `s`'s submitter and project, in any state: a re-roll posted in reply
    /// to one of them continues the work of every version that re-rolled it (`rerolls_through`).
    fn earlier(&self, tx: &dyn Sql, s: &SeriesRow) -> Result<std::rc::Rc<Vec<Summary>>, StoreError> {
        if let Some(known) = self.earlier.borrow().get(&s.id) {
            return Ok(known.clone());
        }
        let ids: Vec<i64> = tx.column(
            "SELECT id FROM series WHERE submitter = ?1 AND version < ?2 AND project IS NOT DISTINCT FROM ?3 AND id != ?4
             ORDER BY version DESC, id DESC LIMIT 50",
            args![s.submitter, s.version, s.project, s.id],
        )?;
        let made = std::rc::Rc::new(ids.into_iter().map(|id| Ok((*self.of_id(tx, id)?).clone())).collect::<Result<Vec<_>, StoreError>>()?);
        self.earlier.borrow_mut().insert(s.id, made.clone());
        Ok(made)
    }
}

fn complete(tx: &dyn Sql, s: &SeriesRow, now: i64, events: &mut Vec<Event>) -> Result<(), StoreError> {
    tx.exec("UPDATE series SET state = 'complete', updated_at = ?2 WHERE id = ?1", args![s.id, now])?;
    let memo = Summaries::default();
    let me = memo.of(tx, s)?;
    let earlier = memo.earlier(tx, s)?;
    let replaced = replaced_by_newer(tx, s, &me, &earlier, now, events, &memo)?;
    let supersedes = replace_older(tx, s, &me, &earlier, now, events, &memo)?;
    newer_reconsider(tx, s, now, events, &memo)?;
    if replaced || s.project.is_none() {
        return Ok(());
    }
    // Headers and hints only: the raw mails are read once, by `patches_of`, for the mbox.
    let ms = members(tx, s.id, false)?;
    let patches = patches_of(tx, s, true)?;
    let first = |f: fn(&Hints) -> Option<&String>| ms.iter().find_map(|m| f(&m.hints).cloned());
    let mut based_on: Vec<String> = Vec::new();
    let mut depends_on: Vec<String> = Vec::new();
    for m in &ms {
        based_on.extend(m.hints.based_on.iter().filter(|b| !based_on.contains(b)).cloned().collect::<Vec<_>>());
        depends_on.extend(m.hints.depends_on.iter().filter(|b| !depends_on.contains(b)).cloned().collect::<Vec<_>>());
    }
    // A cover none of the patches cites was placed by markers alone: it may yet move (to the
    // posting whose patches cite it), so it is not announced as this series' cover, nor does it
    // name the series: its first patch does (eight postings sent in one second would otherwise
    // lend one's title to another).
    let loose = loose_cover(&threads(tx, s.id)?.into_iter().map(|(m, _)| m).collect::<Vec<_>>());
    if loose && let Some(first) = ms.iter().find(|m| m.slot > 0) {
        tx.exec("UPDATE series SET name = ?2 WHERE id = ?1", args![s.id, subject::parse(&first.subject).title])?;
    }
    let s = load_series(tx, s.id)?;
    // A version replaced at once because this one was already posted (it completed first, as a
    // partial re-roll's v1 whose 1/2 arrives late) is named as in date order.
    let supersedes = match supersedes {
        Some(id) => Some(id),
        None => tx.one("SELECT supersedes FROM series WHERE id = ?1", args![s.id])?.get(0)?,
    };
    let supersedes = supersedes.map(|id| load_series(tx, id).map(|o| o.uid)).transpose()?;
    let cover = if loose { None } else { ms.iter().find(|m| m.slot == 0).map(|m| m.message_id.clone()) };
    let body = SeriesComplete {
        series: head(&s),
        cover,
        patches: patches
            .iter()
            .map(|m| SeriesPatch { slot: m.slot, mail: m.mail, message_id: m.message_id.clone(), subject: m.subject.clone() })
            .collect(),
        mbox: String::new(),
        mbox_base64: None,
        base_commit: first(|h| h.base_commit.as_ref()),
        based_on,
        depends_on,
        supersedes,
    };
    events.push(Event::Complete(Box::new(Completed { body, raws: patches.into_iter().map(|m| m.raw).collect() })));
    Ok(())
}

/// Supersedes `s` (summarized as `me`) by the nearest newer version that re-rolls it, if any;
/// says whether one did.
fn replaced_by_newer(
    tx: &dyn Sql,
    s: &SeriesRow,
    me: &Summary,
    earlier: &[Summary],
    now: i64,
    events: &mut Vec<Event>,
    memo: &Summaries,
) -> Result<bool, StoreError> {
    // Completed after a re-roll of it was posted (mail arrives in any order): superseded at once,
    // and not announced as complete, so nothing tests a version that is already replaced. Every
    // later version counts, whatever its state: one still missing patches, or one already
    // superseded in turn (a v2 replaced by v3 must not hide v3, nor itself, from a late v1);
    // the nearest that re-rolls this one replaces it, as in date order (v2 replaces v1 before
    // v3 is posted). So do series whose own mails name one of this one's in `Supersedes:`,
    // whatever their version.
    let mut newer = newer_than(tx, s, "", false)?;
    for id in naming_supersedes(tx, s)? {
        if !newer.contains(&id) {
            newer.push(id);
        }
    }
    for nid in newer {
        if patchbay_series::rerolls_through(&*memo.of_id(tx, nid)?, me, earlier) {
            let n = load_series(tx, nid)?;
            tx.exec("UPDATE series SET state = 'superseded', superseded_by = ?2, updated_at = ?3 WHERE id = ?1", args![s.id, nid, now])?;
            // It names its nearest predecessor: this one, unless it already names a nearer one.
            tx.exec(
                "UPDATE series SET supersedes = ?2 WHERE id = ?1
                 AND (supersedes IS NULL OR (SELECT p.version FROM series p WHERE p.id = series.supersedes) < ?3)",
                args![nid, s.id, s.version],
            )?;
            if s.project.is_some() {
                events.push(Event::Superseded(SeriesSuperseded { series: head(s), by: n.uid, by_version: n.version }));
            }
            return Ok(true);
        }
    }
    Ok(false)
}

/// A mail joined `s` after it had completed (or was superseded once complete): what decides
/// re-rolls (titles, ids, what its mails cite) grew, so supersession is decided again for it
/// and for every newer version holding all its patches, as date order, with every mail of a
/// posting present at completion, decides it. Re-roll relations only grow as mails join, so
/// the outcome is the same whatever the arrival order.
fn reconsider(tx: &dyn Sql, s: &SeriesRow, now: i64, events: &mut Vec<Event>) -> Result<(), StoreError> {
    let memo = Summaries::default();
    let me = memo.of(tx, s)?;
    let earlier = memo.earlier(tx, s)?;
    if s.state == "complete" {
        replaced_by_newer(tx, s, &me, &earlier, now, events, &memo)?;
    }
    replace_older(tx, s, &me, &earlier, now, events, &memo)?;
    newer_reconsider(tx, s, now, events, &memo)
}

/// The series of `s`'s submitter and project at `s`'s version or above (`and`: a further
/// condition), nearest first, up to 200, leaving out (unless `every`) those at `s`'s own
/// version that can re-roll nothing at that version. At the same version only a `Supersedes:`
/// line, or a RESEND citing one of its mails, re-rolls (`series::rerolls`); `s` is not among a
/// same-version series' earlier versions, so it lends it no chain either. So only series with a
/// mail that says either stay, found by a superset (the words anywhere in a subject or hints),
/// and the others' members are never read: a prolific submitter's every completion read all of
/// their series. A caller whose decision also acts on lower versions passes `every` when there
/// are any.
fn newer_than(tx: &dyn Sql, s: &SeriesRow, and: &str, every: bool) -> Result<Vec<i64>, StoreError> {
    let rows = tx.rows(
        &format!(
            "SELECT id, version FROM series WHERE submitter = ?1 AND version >= ?2 AND project IS NOT DISTINCT FROM ?3 AND id != ?4
             {and} ORDER BY version, id LIMIT 200"
        ),
        args![s.submitter, s.version, s.project, s.id],
    )?;
    let mut newer = Vec::with_capacity(rows.len());
    let mut may_reroll: Option<Vec<i64>> = None;
    for mut r in rows {
        let (id, version): (i64, u32) = (r.get(0)?, r.get(1)?);
        if version == s.version && !every {
            let may = match &may_reroll {
                Some(ids) => ids,
                None => may_reroll.insert(tx.column(
                    "SELECT DISTINCT o.id FROM series o JOIN series_mails sm ON sm.series_id = o.id JOIN mails m ON m.id = sm.mail_id
                     WHERE o.submitter = ?1 AND o.version = ?2 AND o.project IS NOT DISTINCT FROM ?3 AND o.id != ?4
                     AND (m.hints LIKE '%\"supersedes\"%' OR lower(m.subject) LIKE '%resend%')",
                    args![s.submitter, s.version, s.project, s.id],
                )?),
            };
            if !may.contains(&id) {
                continue;
            }
        }
        newer.push(id);
    }
    Ok(newer)
}

/// Every newer version of `s`'s work holding all its patches decides again which versions it
/// replaces: `s` changed (completed, or a mail joined it), and a re-roll posted in reply to
/// `s` may now continue the work of a version between them (`rerolls_through`).
fn newer_reconsider(tx: &dyn Sql, s: &SeriesRow, now: i64, events: &mut Vec<Event>, memo: &Summaries) -> Result<(), StoreError> {
    // A same-version series that cannot re-roll `s` can still supersede a lower version whose
    // state changed since it last decided (one that arrived later): so the narrowing holds only
    // when there is no lower version to act on.
    let lower: Option<i64> = tx.value(
        "SELECT 1 FROM series WHERE submitter = ?1 AND version < ?2 AND project IS NOT DISTINCT FROM ?3 LIMIT 1",
        args![s.submitter, s.version, s.project],
    )?;
    for nid in newer_than(tx, s, "AND state IN ('complete', 'superseded')", lower.is_some())? {
        let n = load_series(tx, nid)?;
        if has_every_slot(tx, &n)? {
            let summary = memo.of(tx, &n)?;
            let _ = replace_older(tx, &n, &summary, &memo.earlier(tx, &n)?, now, events, memo)?;
        }
    }
    Ok(())
}

/// Supersedes, by `s` (summarized as `me`), the earlier versions it re-rolls; returns the
/// nearest, which `s` names as its predecessor.
fn replace_older(
    tx: &dyn Sql,
    s: &SeriesRow,
    me: &Summary,
    earlier: &[Summary],
    now: i64,
    events: &mut Vec<Event>,
    memo: &Summaries,
) -> Result<Option<i64>, StoreError> {
    // Re-rolls: every earlier version of the same work not yet replaced, or replaced by a
    // version newer than this one (a late v2 stands between v1 and v3, as in date order), is
    // superseded by this one (v3 completing replaces v1 and a v2 that never completed alike),
    // also when this one is itself replaced at once, and so is every
    // series of the project holding a mail this one's own mails name in `Supersedes:` (the
    // submitter's word links two series even when their subjects differ; a reply is never a
    // member, so someone else's `Supersedes:` counts for nothing).
    let mut older: Vec<i64> = tx.column(
        "SELECT id FROM series WHERE submitter = ?1 AND version <= ?2 AND project IS NOT DISTINCT FROM ?3 AND id != ?4
         AND (superseded_by IS NULL OR (SELECT b.version FROM series b WHERE b.id = series.superseded_by) > ?2)
         ORDER BY version DESC, id DESC LIMIT 50",
        args![s.submitter, s.version, s.project, s.id],
    )?;
    for mid in &me.supersedes {
        let named: Vec<i64> = tx.column(
            "SELECT s.id FROM mails m JOIN series_mails sm ON sm.mail_id = m.id JOIN series s ON s.id = sm.series_id
             WHERE m.message_id = ?1 AND s.project IS NOT DISTINCT FROM ?2 AND s.superseded_by IS NULL AND s.id != ?3 ORDER BY s.id",
            args![mid, s.project, s.id],
        )?;
        for id in named {
            if !older.contains(&id) {
                older.push(id);
            }
        }
    }
    let mut supersedes = None;
    for oid in older {
        if patchbay_series::rerolls_through(me, &*memo.of_id(tx, oid)?, earlier) {
            // Its row as it stands now (an earlier decision may have moved it).
            let o = load_series(tx, oid)?;
            tx.exec("UPDATE series SET state = 'superseded', superseded_by = ?2, updated_at = ?3 WHERE id = ?1", args![oid, s.id, now])?;
            // Announced once: one only moved to a nearer successor was announced already.
            if o.project.is_some() && o.state != "superseded" {
                events.push(Event::Superseded(SeriesSuperseded { series: head(&o), by: s.uid, by_version: s.version }));
            }
            // The nearest version replaced is the one this series names as its predecessor.
            supersedes.get_or_insert(oid);
        }
    }
    if let Some(oid) = supersedes {
        tx.exec("UPDATE series SET supersedes = ?2 WHERE id = ?1", args![s.id, oid])?;
    }
    Ok(supersedes)
}

/// Series of `s`'s submitter and project, other than `s`, one of whose mails carries a
/// `Supersedes:` line: those that may name one of `s`'s mails (`rerolls` decides).
fn naming_supersedes(tx: &dyn Sql, s: &SeriesRow) -> Result<Vec<i64>, StoreError> {
    tx.column(
        "SELECT DISTINCT o.id FROM series o JOIN series_mails sm ON sm.series_id = o.id JOIN mails m ON m.id = sm.mail_id
         WHERE o.submitter = ?1 AND o.project IS NOT DISTINCT FROM ?2 AND o.id != ?3 AND m.hints LIKE '%\"supersedes\"%'
         ORDER BY o.id DESC LIMIT 50",
        args![s.submitter, s.project, s.id],
    )
}

/// What a deadline sweep measures a series' age by.
#[derive(Clone, Copy, Debug)]
pub enum Age {
    /// When patchbay received its first mail (the wall clock, as `serve` runs it).
    Received,
    /// The Date of its first mail (an archive's own time, as `import` runs it).
    Dated,
}

/// The newest mail Date in the store, not counting Dates after the mail was received (a sender's
/// clock a day or more ahead): the "now" of an imported archive.
pub fn newest_date(tx: &dyn Sql) -> Result<Option<i64>, StoreError> {
    Ok(tx.value::<Option<i64>>("SELECT max(date) FROM mails WHERE date <= received_at + 86400", &[])?.flatten())
}

/// Series still `new` whose first mail is older than `cutoff` (by `age`) become `incomplete`.
pub fn sweep(tx: &dyn Sql, age: Age, cutoff: i64, now: i64, events: &mut Vec<Event>) -> Result<usize, StoreError> {
    let sql = match age {
        Age::Received => "SELECT id FROM series WHERE state = 'new' AND created_at < ?1 ORDER BY id LIMIT 1000",
        Age::Dated => "SELECT id FROM series WHERE state = 'new' AND date < ?1 ORDER BY id LIMIT 1000",
    };
    let ids: Vec<i64> = tx.column(sql, args![cutoff])?;
    for &id in &ids {
        tx.exec("UPDATE series SET state = 'incomplete', updated_at = ?2 WHERE id = ?1", args![id, now])?;
        let s = load_series(tx, id)?;
        if s.project.is_some() {
            let have = slots(tx, id)?;
            let missing = (1..=s.total).filter(|n| !have.contains(n)).collect();
            events.push(Event::Incomplete(SeriesIncomplete { series: head(&s), missing }));
        }
    }
    Ok(ids.len())
}

/// The mbox of series `id`, its patches in slot order with the slots a partial re-roll takes
/// from the version it re-rolls (what `git am` needs), complete or not; `None` for no such
/// series. The HTTP API's `/series/{id}/mbox` reads it, so it matches the `complete` event.
pub fn series_mbox(conn: &dyn Sql, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(id) = local_id(conn, id)? else { return Ok(None) };
    Ok(Some(mbox_of(&patches_of(conn, &load_series(conn, id)?, true)?)))
}

/// The local row key of the series whose public id is `uid`, if this store has it.
pub(crate) fn local_id(conn: &dyn Sql, uid: i64) -> Result<Option<i64>, StoreError> {
    conn.value("SELECT id FROM series WHERE uid = ?1", args![uid])
}

/// Patches as one mbox, in the order given, as `git am` takes it.
fn mbox_of(patches: &[Member]) -> Vec<u8> {
    let mut mbox = Vec::new();
    for m in patches {
        patchbay_mail::write_mboxrd(&mut mbox, &m.raw);
    }
    mbox
}

/// The mbox of the complete (or superseded-after-completion) series holding `message_id`.
pub fn complete_series_mbox(conn: &dyn Sql, message_id: &str) -> Result<Option<String>, StoreError> {
    let series: Option<i64> = conn.value(
        "SELECT sm.series_id FROM mails m JOIN series_mails sm ON sm.mail_id = m.id JOIN series s ON s.id = sm.series_id
         WHERE m.message_id = ?1 AND s.state IN ('complete', 'superseded') ORDER BY s.id DESC LIMIT 1",
        args![message_id],
    )?;
    let Some(series) = series else { return Ok(None) };
    let s = load_series(conn, series)?;
    let patches = patches_of(conn, &s, true)?;
    if !patchbay_series::is_complete(s.total, &patches.iter().map(|m| m.slot).collect::<Vec<_>>()) {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&mbox_of(&patches)).into_owned()))
}

/// Records series `id` (public) as merged (`commits` in patch order, found in `branch` of `repository`)
/// and announces it, once: `None` when it was recorded before or there is no such series.
pub(crate) fn mark_merged(
    tx: &dyn Sql,
    id: i64,
    repository: &str,
    branch: &str,
    commits: &[String],
    now: i64,
    events: &mut Vec<Event>,
) -> Result<Option<SeriesMerged>, StoreError> {
    let Some(id) = local_id(tx, id)? else { return Ok(None) };
    let json = serde_json::to_string(commits).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let added = tx.exec(
        "INSERT INTO series_merged (series_id, repository, branch, commits, merged_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (series_id) DO NOTHING",
        args![id, repository, branch, json, now],
    )?;
    if added == 0 {
        return Ok(None);
    }
    let merged = SeriesMerged {
        series: head(&load_series(tx, id)?),
        repository: repository.to_string(),
        branch: branch.to_string(),
        commits: commits.to_vec(),
    };
    events.push(Event::Merged(merged.clone()));
    Ok(Some(merged))
}
