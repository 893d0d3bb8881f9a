//! The series store's read side, behind a port ([`SeriesStore`]): what the dashboard, the JSON
//! series API, the dispatcher's age rule and `import`'s summary ask of the tables this crate
//! owns (`mails`, `mail_lists`, `series`, `series_mails`), as typed rows. The SQLite
//! and PostgreSQL implementations are here, beside the writes, one set of statements for both
//! (`sql.rs`); nothing above this crate writes SQL over them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use patchbay_model::view::{PatchRow, SeriesFilter, SeriesRow};
use patchbay_store::{Db, StoreError};
use patchbay_store_pg::PgStore;
use serde::Serialize;

use crate::sql::{Row, Sql, args};

/// The list id `patchbay import --test` records for every mail it imports: the wish to test
/// its series whatever their age, stored with the mails (in the transaction that completes
/// their series), so the dispatcher finds it however late it runs. `.invalid` names no list.
pub const TEST_ANYWAY_LIST: &str = "test-anyway.import.patchbay.invalid";

/// How old a series' mails are, for the dispatcher's age rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailAge {
    /// The newest mail's date (its Date: header, else its arrival), unix seconds.
    pub newest: i64,
    /// Whether one of its mails was imported with `--test` (listed on [`TEST_ANYWAY_LIST`]).
    pub test_anyway: bool,
}

/// What readers ask of the series store; one implementation per store backend. Series are
/// named by their public id (`SeriesHead::id`, [`crate::identity`]), never a local key.
#[async_trait]
pub trait SeriesStore: Send + Sync + 'static {
    /// Series newest first as `filter` narrows them (`verdict` left empty: the results store
    /// owns it), and how many match.
    async fn list(&self, filter: SeriesFilter, page: u32, per_page: u32) -> Result<(Vec<SeriesRow>, u64), StoreError>;
    /// One series (`verdict` left empty).
    async fn series(&self, id: i64) -> Result<Option<SeriesRow>, StoreError>;
    /// Its cover letter (slot 0) and patches in slot order.
    async fn patches(&self, id: i64) -> Result<Vec<PatchRow>, StoreError>;
    /// Every version of the re-roll chain `id` is in, as (id, version), oldest first (50 at most).
    async fn versions(&self, id: i64) -> Result<Vec<(i64, u32)>, StoreError>;
    /// One mail as stored.
    async fn raw_mail(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The series (public id) a mail with this Message-ID belongs to as its cover or a patch,
    /// the newest such series: what a reply to it answers.
    async fn series_of_mail(&self, message_id: String) -> Result<Option<i64>, StoreError>;
    /// The series as one mbox for `git am`: its patches in slot order, with the slots a partial
    /// re-roll takes from the version it re-rolls, as the `complete` event carries it.
    async fn mbox(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError>;
    /// How old its mails are; `None` for a series without mails.
    async fn age(&self, id: i64) -> Result<Option<MailAge>, StoreError>;
    /// Complete series of `project` first seen at or after `since` (unix seconds) and not known
    /// to be merged, newest first, at most `limit`: what the merge follower looks for upstream.
    async fn unmerged(&self, project: String, since: i64, limit: u32) -> Result<Vec<i64>, StoreError>;
    /// Series by state, and whether every numbered patch sits where it belongs.
    async fn census(&self) -> Result<(BTreeMap<String, u64>, Consistency), StoreError>;
}

/// A series' state as readers see it: `merged` once found in its branch, else the threading's.
macro_rules! state {
    () => {
        "CASE WHEN EXISTS (SELECT 1 FROM series_merged x WHERE x.series_id = s.id) THEN 'merged' ELSE s.state END"
    };
}
const STATE: &str = state!();
const SERIES_COLUMNS: &str = concat!("s.uid, s.project, s.submitter, s.name, s.version, s.total, ", state!(), ", s.created_at");

fn series_row(mut r: Row) -> Result<SeriesRow, StoreError> {
    Ok(SeriesRow {
        id: r.get(0)?,
        project: r.get(1)?,
        submitter: r.get(2)?,
        name: r.get(3)?,
        version: r.get(4)?,
        total: r.get(5)?,
        state: r.get(6)?,
        verdict: None,
        created_at: r.get(7)?,
    })
}

/// The port on the embedded store.
#[async_trait]
impl SeriesStore for Db {
    async fn list(&self, filter: SeriesFilter, page: u32, per_page: u32) -> Result<(Vec<SeriesRow>, u64), StoreError> {
        self.read(move |c| list(c, filter, page, per_page)).await
    }
    async fn series(&self, id: i64) -> Result<Option<SeriesRow>, StoreError> {
        self.read(move |c| series(c, id)).await
    }
    async fn patches(&self, id: i64) -> Result<Vec<PatchRow>, StoreError> {
        self.read(move |c| patches(c, id)).await
    }
    async fn versions(&self, id: i64) -> Result<Vec<(i64, u32)>, StoreError> {
        self.read(move |c| versions(c, id)).await
    }
    async fn raw_mail(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| raw_mail(c, id)).await
    }
    async fn series_of_mail(&self, message_id: String) -> Result<Option<i64>, StoreError> {
        self.read(move |c| series_of_mail(c, &message_id)).await
    }
    async fn mbox(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| crate::assemble::series_mbox(c, id)).await
    }
    async fn age(&self, id: i64) -> Result<Option<MailAge>, StoreError> {
        self.read(move |c| age(c, id)).await
    }
    async fn unmerged(&self, project: String, since: i64, limit: u32) -> Result<Vec<i64>, StoreError> {
        self.read(move |c| unmerged(c, &project, since, limit)).await
    }
    async fn census(&self) -> Result<(BTreeMap<String, u64>, Consistency), StoreError> {
        self.read(|c| census(c)).await
    }
}

/// The port on PostgreSQL: the same statements, each call on one snapshot.
#[async_trait]
impl SeriesStore for PgStore {
    async fn list(&self, filter: SeriesFilter, page: u32, per_page: u32) -> Result<(Vec<SeriesRow>, u64), StoreError> {
        crate::pg::read(self.clone(), move |c| list(c, filter, page, per_page)).await
    }
    async fn series(&self, id: i64) -> Result<Option<SeriesRow>, StoreError> {
        crate::pg::read(self.clone(), move |c| series(c, id)).await
    }
    async fn patches(&self, id: i64) -> Result<Vec<PatchRow>, StoreError> {
        crate::pg::read(self.clone(), move |c| patches(c, id)).await
    }
    async fn versions(&self, id: i64) -> Result<Vec<(i64, u32)>, StoreError> {
        crate::pg::read(self.clone(), move |c| versions(c, id)).await
    }
    async fn raw_mail(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        crate::pg::read(self.clone(), move |c| raw_mail(c, id)).await
    }
    async fn series_of_mail(&self, message_id: String) -> Result<Option<i64>, StoreError> {
        crate::pg::read(self.clone(), move |c| series_of_mail(c, &message_id)).await
    }
    async fn mbox(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        crate::pg::read(self.clone(), move |c| crate::assemble::series_mbox(c, id)).await
    }
    async fn age(&self, id: i64) -> Result<Option<MailAge>, StoreError> {
        crate::pg::read(self.clone(), move |c| age(c, id)).await
    }
    async fn unmerged(&self, project: String, since: i64, limit: u32) -> Result<Vec<i64>, StoreError> {
        crate::pg::read(self.clone(), move |c| unmerged(c, &project, since, limit)).await
    }
    async fn census(&self) -> Result<(BTreeMap<String, u64>, Consistency), StoreError> {
        crate::pg::read(self.clone(), |c| census(c)).await
    }
}

fn list(c: &dyn Sql, filter: SeriesFilter, page: u32, per_page: u32) -> Result<(Vec<SeriesRow>, u64), StoreError> {
    let like = filter.search.map(|s| format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    // LIKE ignores ASCII case on SQLite, not on PostgreSQL: both compare lower-cased. Each
    // parameter's first use names its type, as PostgreSQL must know it to prepare the statement.
    let filter_sql = format!(
        "WHERE (CAST(?1 AS TEXT) IS NULL OR lower(s.name) LIKE lower(CAST(?1 AS TEXT)) ESCAPE '\\'
                OR lower(s.submitter) LIKE lower(CAST(?1 AS TEXT)) ESCAPE '\\')
        AND (CAST(?2 AS TEXT) IS NULL OR s.project = ?2) AND (CAST(?3 AS TEXT) IS NULL OR {STATE} = ?3)
        AND (CAST(?4 AS TEXT) IS NULL OR lower(s.submitter) = lower(CAST(?4 AS TEXT)))
        AND (CAST(?5 AS BIGINT) IS NULL OR s.version = ?5) AND (CAST(?6 AS BIGINT) IS NULL OR s.created_at >= ?6)"
    );
    let total: i64 = c
        .one(
            &format!("SELECT count(*) FROM series s {filter_sql}"),
            args![like, filter.project, filter.state, filter.submitter, filter.version, filter.since],
        )?
        .get(0)?;
    let offset = i64::from(page.max(1) - 1) * i64::from(per_page);
    let rows = c.rows(
        &format!("SELECT {SERIES_COLUMNS} FROM series s {filter_sql} ORDER BY s.id DESC LIMIT ?7 OFFSET ?8"),
        args![like, filter.project, filter.state, filter.submitter, filter.version, filter.since, per_page, offset],
    )?;
    Ok((rows.into_iter().map(series_row).collect::<Result<_, _>>()?, total as u64))
}

fn series(c: &dyn Sql, id: i64) -> Result<Option<SeriesRow>, StoreError> {
    c.row(&format!("SELECT {SERIES_COLUMNS} FROM series s WHERE s.uid = ?1"), args![id])?.map(series_row).transpose()
}

fn patches(c: &dyn Sql, id: i64) -> Result<Vec<PatchRow>, StoreError> {
    c.rows(
        "SELECT sm.slot, m.id, m.subject, m.message_id FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
         WHERE sm.series_id = (SELECT id FROM series WHERE uid = ?1) ORDER BY sm.slot",
        args![id],
    )?
    .into_iter()
    .map(|mut r| Ok(PatchRow { slot: r.get(0)?, mail_id: r.get(1)?, subject: r.get(2)?, message_id: r.get(3)? }))
    .collect()
}

fn versions(c: &dyn Sql, id: i64) -> Result<Vec<(i64, u32)>, StoreError> {
    let Some(version) = c.value::<u32>("SELECT version FROM series WHERE uid = ?1", args![id])? else {
        return Ok(Vec::new());
    };
    // Walk the supersession links both ways (bounded).
    let link = |sql: &str, from: i64| -> Result<Option<(i64, u32)>, StoreError> {
        c.row(sql, args![from])?.map(|mut r| Ok((r.get(0)?, r.get(1)?))).transpose()
    };
    const OLDER: &str = "SELECT s2.uid, s2.version FROM series s JOIN series s2 ON s2.id = s.supersedes WHERE s.uid = ?1";
    const NEWER: &str = "SELECT s2.uid, s2.version FROM series s JOIN series s2 ON s2.id = s.superseded_by WHERE s.uid = ?1";
    let mut versions = vec![(id, version)];
    let mut at = id;
    while let Some(older) = link(OLDER, at)?.filter(|_| versions.len() < 50) {
        versions.insert(0, older);
        at = older.0;
    }
    let mut at = id;
    while let Some(newer) = link(NEWER, at)?.filter(|_| versions.len() < 50) {
        versions.push(newer);
        at = newer.0;
    }
    Ok(versions)
}

fn raw_mail(c: &dyn Sql, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    c.value("SELECT raw FROM mails WHERE id = ?1", args![id])
}

fn series_of_mail(c: &dyn Sql, message_id: &str) -> Result<Option<i64>, StoreError> {
    c.value(
        "SELECT s.uid FROM mails m JOIN series_mails sm ON sm.mail_id = m.id JOIN series s ON s.id = sm.series_id
         WHERE m.message_id = ?1 ORDER BY s.id DESC LIMIT 1",
        args![message_id],
    )
}

fn age(c: &dyn Sql, id: i64) -> Result<Option<MailAge>, StoreError> {
    // A mail without a Date: header counts from its arrival.
    let mut r = c.one(
        "SELECT max(coalesce(m.date, m.received_at)),
                coalesce(max(CASE WHEN EXISTS (SELECT 1 FROM mail_lists l WHERE l.mail_id = m.id AND l.list_id = ?2) THEN 1 ELSE 0 END), 0)
         FROM series_mails sm JOIN mails m ON m.id = sm.mail_id WHERE sm.series_id = (SELECT id FROM series WHERE uid = ?1)",
        args![id, TEST_ANYWAY_LIST],
    )?;
    let (newest, test_anyway): (Option<i64>, bool) = (r.get(0)?, r.get(1)?);
    Ok(newest.map(|newest| MailAge { newest, test_anyway }))
}

fn unmerged(c: &dyn Sql, project: &str, since: i64, limit: u32) -> Result<Vec<i64>, StoreError> {
    c.column(
        "SELECT s.uid FROM series s WHERE s.project = ?1 AND s.state = 'complete' AND s.created_at >= ?2
         AND NOT EXISTS (SELECT 1 FROM series_merged x WHERE x.series_id = s.id) ORDER BY s.id DESC LIMIT ?3",
        args![project, since, limit],
    )
}

fn census(c: &dyn Sql) -> Result<(BTreeMap<String, u64>, Consistency), StoreError> {
    let mut series = BTreeMap::new();
    for mut r in c.rows("SELECT state, count(*) FROM series GROUP BY state", &[])? {
        series.insert(r.get::<String>(0)?, r.get::<i64>(1)? as u64);
    }
    let mut cons = Consistency::default();
    let rows = c.rows(
        "SELECT m.subject, m.kind, sm.slot, s.total
         FROM mails m LEFT JOIN series_mails sm ON sm.mail_id = m.id LEFT JOIN series s ON s.id = sm.series_id
         WHERE m.kind IN ('patch', 'cover')",
        &[],
    )?;
    for mut r in rows {
        let (subject, kind, slot, total): (String, String, Option<u32>, Option<u32>) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let s = patchbay_mail::subject::parse(&subject);
        let Some((n, t)) = s.counter else { continue };
        if kind == "cover" && n == 0 {
            cons.covers += 1;
        }
        if kind == "patch" && n == 0 {
            continue;
        }
        cons.numbered += 1;
        match (slot, total) {
            // A cover heads its patches whatever total it names (`0/5` over `1/6`…`6/6`).
            (Some(slot), Some(total)) if slot == n && (total == t || n == 0) => cons.placed_at_their_slot += 1,
            (Some(_), _) => cons.misplaced += 1,
            (None, _) => cons.unplaced += 1,
        }
    }
    cons.complete_with_gaps = c
        .one(
            "SELECT count(*) FROM series s WHERE s.state = 'complete'
             AND (SELECT count(*) FROM series_mails sm WHERE sm.series_id = s.id AND sm.slot BETWEEN 1 AND s.total) < s.total",
            &[],
        )?
        .get::<i64>(0)? as u64;
    covers(c, &mut cons)?;
    cons.complete_citing_other_series = citing_other_series(c)?;
    Ok((series, cons))
}

/// Whether every numbered patch sits in exactly one series at its slot.
#[derive(Debug, Default, Serialize)]
pub struct Consistency {
    /// Patch and cover mails with an `n/N` subject.
    pub numbered: u64,
    /// Of those, placed in a series at slot n of a series of N.
    pub placed_at_their_slot: u64,
    /// Numbered mails in no series, with the reason (strays, conflicting ids).
    pub unplaced: u64,
    /// Placed somewhere other than their slot or total (must be 0).
    pub misplaced: u64,
    /// Series with a missing slot but state `complete` (must be 0).
    pub complete_with_gaps: u64,
    /// Cover letters (`0/N` mails), so the next three fields can be checked to add up.
    pub covers: u64,
    /// Of those, the cover of a series (one at most: a mail sits in one series), whatever total
    /// it names (`0/5` over `1/6`…`6/6` heads them).
    pub covers_placed: u64,
    /// Of those placed, the cover of a series holding no patch: shown so a drop in
    /// `covers_placed` that only moved covers into series of their own is seen.
    pub covers_alone: u64,
    /// Covers in no series, each flagged with its reason in the mail's problems (a conflicting
    /// Message-ID, a `0/0`).
    pub covers_flagged: u64,
    /// Covers in no series and not flagged (must be 0: a cover is placed or says why not).
    pub covers_lost: u64,
    /// Complete series holding a mail that cites a member of another series outside its own
    /// re-roll chain (a v2 posted in reply to v1 is legitimate): two threads assembled as one,
    /// one split, or a re-post nothing links to what it replaces (must be 0).
    pub complete_citing_other_series: u64,
}

/// Fills the cover fields of `cons` but `covers`: where each `0/N` cover letter went.
fn covers(c: &dyn Sql, cons: &mut Consistency) -> Result<(), StoreError> {
    let rows = c.rows(
        "SELECT m.subject, sm.series_id IS NOT NULL, sm.slot,
                (SELECT count(*) FROM series_mails o WHERE o.series_id = sm.series_id AND o.slot > 0), m.problems IS NOT NULL
         FROM mails m LEFT JOIN series_mails sm ON sm.mail_id = m.id WHERE m.kind = 'cover'",
        &[],
    )?;
    for mut r in rows {
        let (subject, placed, slot, patches, flagged): (String, bool, Option<u32>, i64, bool) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        if patchbay_mail::subject::parse(&subject).counter.is_none_or(|(n, _)| n != 0) {
            continue;
        }
        match (placed, slot) {
            (true, Some(0)) => {
                cons.covers_placed += 1;
                if patches == 0 {
                    cons.covers_alone += 1;
                }
            }
            (true, _) => {} // counted as misplaced by the slot check
            (false, _) if flagged => cons.covers_flagged += 1,
            (false, _) => cons.covers_lost += 1,
        }
    }
    Ok(())
}

/// Complete series one of whose mails cites (`refs` in its hints) a member of another series
/// that is not in its re-roll chain (linked by `supersedes`/`superseded_by`, transitively).
fn citing_other_series(c: &dyn Sql) -> Result<u64, StoreError> {
    use std::collections::{HashMap, HashSet};
    // Re-roll chains as components (union-find over both links).
    let mut root: HashMap<i64, i64> = HashMap::new();
    fn find(root: &mut HashMap<i64, i64>, mut i: i64) -> i64 {
        while let Some(&p) = root.get(&i).filter(|&&p| p != i) {
            i = p;
        }
        i
    }
    let links: Vec<(i64, Option<i64>, Option<i64>)> = c
        .rows("SELECT id, supersedes, superseded_by FROM series", &[])?
        .into_iter()
        .map(|mut r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .collect::<Result<_, StoreError>>()?;
    for (id, a, b) in links {
        for other in [a, b].into_iter().flatten() {
            let (x, y) = (find(&mut root, id), find(&mut root, other));
            if x != y {
                root.insert(x, y);
            }
        }
    }
    let members: Vec<(i64, String, Option<String>, bool)> = c
        .rows(
            "SELECT sm.series_id, m.message_id, m.hints, s.state = 'complete' FROM series_mails sm
             JOIN mails m ON m.id = sm.mail_id JOIN series s ON s.id = sm.series_id",
            &[],
        )?
        .into_iter()
        .map(|mut r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .collect::<Result<_, StoreError>>()?;
    let mut series_of: HashMap<&str, Vec<i64>> = HashMap::new();
    for (sid, mid, _, _) in &members {
        series_of.entry(mid.as_str()).or_default().push(*sid);
    }
    let mut crossing = HashSet::new();
    for (sid, _, hints, complete) in &members {
        let Some(hints) = hints.as_deref().filter(|_| *complete) else { continue };
        let refs = serde_json::from_str::<serde_json::Value>(hints).ok().and_then(|h| h.get("refs").cloned());
        let refs: Vec<String> = refs.and_then(|r| serde_json::from_value(r).ok()).unwrap_or_default();
        let mine = find(&mut root, *sid);
        for r in &refs {
            for &other in series_of.get(r.as_str()).into_iter().flatten() {
                if other != *sid && find(&mut root, other) != mine {
                    crossing.insert(*sid);
                }
            }
        }
    }
    Ok(crossing.len() as u64)
}
