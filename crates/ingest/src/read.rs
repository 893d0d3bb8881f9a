//! The series store's read side, behind a port ([`SeriesStore`]): what the dashboard, the JSON
//! series API, the dispatcher's age rule and `import`'s summary ask of the tables this crate
//! owns (`mails`, `mail_lists`, `series`, `series_mails`), as typed rows. The SQLite
//! implementation is here, beside the writes; nothing above this crate writes SQL over them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use patchbay_model::view::{PatchRow, SeriesFilter, SeriesRow};
use patchbay_store::{Db, StoreError};
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

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
    /// The series as one mbox for `git am` (see [`crate::series_mbox`]).
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

fn series_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SeriesRow> {
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

#[async_trait]
impl SeriesStore for Db {
    async fn list(&self, filter: SeriesFilter, page: u32, per_page: u32) -> Result<(Vec<SeriesRow>, u64), StoreError> {
        self.read(move |c| {
            let like = filter.search.map(|s| format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
            let filter_sql = format!(
                "WHERE (?1 IS NULL OR s.name LIKE ?1 ESCAPE '\\' OR s.submitter LIKE ?1 ESCAPE '\\')
                AND (?2 IS NULL OR s.project = ?2) AND (?3 IS NULL OR {STATE} = ?3)
                AND (?4 IS NULL OR s.submitter = ?4 COLLATE NOCASE) AND (?5 IS NULL OR s.version = ?5)
                AND (?6 IS NULL OR s.created_at >= ?6)"
            );
            let args = params![like, filter.project, filter.state, filter.submitter, filter.version, filter.since];
            let total: i64 = c.query_row(&format!("SELECT count(*) FROM series s {filter_sql}"), args, |r| r.get(0))?;
            let mut stmt =
                c.prepare_cached(&format!("SELECT {SERIES_COLUMNS} FROM series s {filter_sql} ORDER BY s.id DESC LIMIT ?7 OFFSET ?8"))?;
            let offset = i64::from(page.max(1) - 1) * i64::from(per_page);
            let rows = stmt
                .query_map(
                    params![like, filter.project, filter.state, filter.submitter, filter.version, filter.since, per_page, offset],
                    series_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((rows, total as u64))
        })
        .await
    }

    async fn series(&self, id: i64) -> Result<Option<SeriesRow>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(&format!("SELECT {SERIES_COLUMNS} FROM series s WHERE s.uid = ?1"), [id], series_row).optional()?)
        })
        .await
    }

    async fn patches(&self, id: i64) -> Result<Vec<PatchRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT sm.slot, m.id, m.subject, m.message_id FROM series_mails sm JOIN mails m ON m.id = sm.mail_id
                 WHERE sm.series_id = (SELECT id FROM series WHERE uid = ?1) ORDER BY sm.slot",
            )?;
            let rows =
                stmt.query_map([id], |r| Ok(PatchRow { slot: r.get(0)?, mail_id: r.get(1)?, subject: r.get(2)?, message_id: r.get(3)? }))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn versions(&self, id: i64) -> Result<Vec<(i64, u32)>, StoreError> {
        self.read(move |c| {
            let Some(version) = c.query_row("SELECT version FROM series WHERE uid = ?1", [id], |r| r.get::<_, u32>(0)).optional()? else {
                return Ok(Vec::new());
            };
            // Walk the supersession links both ways (bounded).
            let link = |col: &str, from: i64| -> rusqlite::Result<Option<(i64, u32)>> {
                c.query_row(
                    &format!("SELECT s2.uid, s2.version FROM series s JOIN series s2 ON s2.id = s.{col} WHERE s.uid = ?1"),
                    [from],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            };
            let mut versions = vec![(id, version)];
            let mut at = id;
            while let Some(older) = link("supersedes", at)?.filter(|_| versions.len() < 50) {
                versions.insert(0, older);
                at = older.0;
            }
            let mut at = id;
            while let Some(newer) = link("superseded_by", at)?.filter(|_| versions.len() < 50) {
                versions.push(newer);
                at = newer.0;
            }
            Ok(versions)
        })
        .await
    }

    async fn raw_mail(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| Ok(c.query_row("SELECT raw FROM mails WHERE id = ?1", [id], |r| r.get(0)).optional()?)).await
    }

    async fn mbox(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| crate::series_mbox(c, id)).await
    }

    async fn age(&self, id: i64) -> Result<Option<MailAge>, StoreError> {
        self.read(move |c| {
            // A mail without a Date: header counts from its arrival.
            let row: (Option<i64>, bool) = c.query_row(
                "SELECT max(coalesce(m.date, m.received_at)),
                        coalesce(max(EXISTS (SELECT 1 FROM mail_lists l WHERE l.mail_id = m.id AND l.list_id = ?2)), 0)
                 FROM series_mails sm JOIN mails m ON m.id = sm.mail_id WHERE sm.series_id = (SELECT id FROM series WHERE uid = ?1)",
                params![id, TEST_ANYWAY_LIST],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(row.0.map(|newest| MailAge { newest, test_anyway: row.1 }))
        })
        .await
    }

    async fn unmerged(&self, project: String, since: i64, limit: u32) -> Result<Vec<i64>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT s.uid FROM series s WHERE s.project = ?1 AND s.state = 'complete' AND s.created_at >= ?2
                 AND NOT EXISTS (SELECT 1 FROM series_merged x WHERE x.series_id = s.id) ORDER BY s.id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![project, since, limit], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn census(&self) -> Result<(BTreeMap<String, u64>, Consistency), StoreError> {
        self.read(|c| {
            let mut series = BTreeMap::new();
            let mut stmt = c.prepare("SELECT state, count(*) FROM series GROUP BY state")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = row?;
                series.insert(k, v as u64);
            }
            let mut cons = Consistency::default();
            let mut stmt = c.prepare(
                "SELECT m.subject, m.kind, m.conflicts_with IS NOT NULL, sm.slot, s.total
                 FROM mails m LEFT JOIN series_mails sm ON sm.mail_id = m.id LEFT JOIN series s ON s.id = sm.series_id
                 WHERE m.kind IN ('patch', 'cover')",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<u32>>(3)?,
                    r.get::<_, Option<u32>>(4)?,
                ))
            })?;
            for row in rows {
                let (subject, kind, _conflict, slot, total) = row?;
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
            cons.complete_with_gaps = c.query_row::<i64, _, _>(
                "SELECT count(*) FROM series s WHERE s.state = 'complete'
                 AND (SELECT count(*) FROM series_mails sm WHERE sm.series_id = s.id AND sm.slot BETWEEN 1 AND s.total) < s.total",
                [],
                |r| r.get(0),
            )? as u64;
            covers(c, &mut cons)?;
            cons.complete_citing_other_series = citing_other_series(c)?;
            Ok((series, cons))
        })
        .await
    }
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
fn covers(c: &rusqlite::Connection, cons: &mut Consistency) -> rusqlite::Result<()> {
    let mut stmt = c.prepare(
        "SELECT m.subject, sm.series_id IS NOT NULL, sm.slot,
                (SELECT count(*) FROM series_mails o WHERE o.series_id = sm.series_id AND o.slot > 0), m.problems IS NOT NULL
         FROM mails m LEFT JOIN series_mails sm ON sm.mail_id = m.id WHERE m.kind = 'cover'",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, Option<u32>>(2)?, r.get::<_, i64>(3)?, r.get::<_, bool>(4)?))
    })?;
    for row in rows {
        let (subject, placed, slot, patches, flagged) = row?;
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
fn citing_other_series(c: &rusqlite::Connection) -> rusqlite::Result<u64> {
    use std::collections::{HashMap, HashSet};
    // Re-roll chains as components (union-find over both links).
    let mut root: HashMap<i64, i64> = HashMap::new();
    fn find(root: &mut HashMap<i64, i64>, mut i: i64) -> i64 {
        while let Some(&p) = root.get(&i).filter(|&&p| p != i) {
            i = p;
        }
        i
    }
    let mut stmt = c.prepare("SELECT id, supersedes, superseded_by FROM series")?;
    let links: Vec<(i64, Option<i64>, Option<i64>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    for (id, a, b) in links {
        for other in [a, b].into_iter().flatten() {
            let (x, y) = (find(&mut root, id), find(&mut root, other));
            if x != y {
                root.insert(x, y);
            }
        }
    }
    let mut stmt = c.prepare(
        "SELECT sm.series_id, m.message_id, m.hints, s.state = 'complete' FROM series_mails sm
         JOIN mails m ON m.id = sm.mail_id JOIN series s ON s.id = sm.series_id",
    )?;
    let members: Vec<(i64, String, Option<String>, bool)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<_, _>>()?;
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
