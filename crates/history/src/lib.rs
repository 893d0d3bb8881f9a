//! Message history, in the spirit of datagrepper, without its slow queries.
//!
//! Every bus message is already kept, exactly as received, in the store's
//! `bus_messages` (the embedded bus writes it there; on RabbitMQ, `serve`'s
//! recorder copies each message there unchanged). Nothing here rewrites it:
//! a message read back from history is the signed wire form and verifies.
//!
//! The [`Indexer`] (a task in `serve`; `patchbay query` catches up itself)
//! follows `bus_messages` by position and adds, in batches of 2,000 through
//! the store's writer, one row per message to `history` (time, topic,
//! category, service, instance, seq, series, project) and one row of the
//! contentless FTS5 table `history_text`: column `body` holds the body's
//! string values (at most 32 KiB), column `tags` one token per filter value
//! (`zz<kind><hex>`), so a body cannot pose as a project or topic; new topics
//! go to `history_topics` (migration 6). It reads before it writes, so its
//! own empty writes never wake it.
//!
//! [`search`] answers [`Query`]s ([`Query::from_params`] is pure; every error
//! names its parameter; unknown parameters are errors):
//! - the time kept is the sender's, made monotone in store order and never
//!   later than now, so a time range is a position range and pages walk each
//!   filter's index (which ends in the position) in time order;
//! - topic patterns and negations become lists of exact topics: index seeks;
//! - `contains` and `job` are answered inside FTS5 alone, the other filters
//!   as tag tokens, the time as a rowid range;
//! - each search reads one snapshot, so the total and the page agree;
//! - replay (`sender` + `seq_from`/`seq_to`) walks the (service, instance,
//!   seq) index. [`page_json`] splices each stored message in byte for byte.
//!
//! Retention (`history.keep_days`): `serve` runs [`prune_batch`] hourly,
//! deleting from `bus_messages`, `history` and `history_text` together, never
//! a message still queued or dead-lettered, nor past any `bus_meta` position
//! (the RabbitMQ relay's), nor the indexer's mark. Migration 8 made the FTS
//! table deletable; an upgraded store is re-indexed in the background.
//!
//! Knows the embedded store and PostgreSQL (`pg.rs`: the RabbitMQ recorder's table and the
//! same port over it); no HTTP, no services. It owns the shape of `[history]`
//! ([`HistorySettings`]) but never reads the config file.

mod pg;
mod settings;

use std::time::Duration;

pub use patchbay_model::messages::{MAX_ROWS, Order, Page, Query, SenderFilter, page_json};
use patchbay_store::{Db, StoreError};
pub use pg::{prune as prune_postgres, record as record_in_postgres};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension as _, params_from_iter};
pub use settings::HistorySettings;

/// Messages indexed per write.
const BATCH: usize = 2000;
/// Bytes of a body's text that go into the full-text index.
const TEXT_LIMIT: usize = 32 << 10;

/// The strings of a JSON body (values, not keys), space-separated and bounded: what `contains` searches.
fn body_text(v: &serde_json::Value, out: &mut String) {
    if out.len() >= TEXT_LIMIT {
        return;
    }
    match v {
        serde_json::Value::String(s) => {
            let room = TEXT_LIMIT - out.len();
            let mut end = s.len().min(room);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&s[..end]);
            out.push(' ');
        }
        serde_json::Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push(' ');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| body_text(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| body_text(x, out)),
        _ => {}
    }
}

/// The fields history filters on, taken from one stored message.
struct Row {
    ts: i64,
    topic: String,
    category: String,
    service: String,
    instance: String,
    seq: i64,
    series: Option<i64>,
    project: Option<String>,
    job: Option<String>,
    text: String,
}

fn row(topic: &str, wire: &[u8]) -> Row {
    // The category is the service word: `<prefix>.<env>.<service>.<object>.<event>`.
    let category = topic.split('.').nth(2).unwrap_or("").to_string();
    let mut r = Row {
        ts: 0,
        topic: topic.to_string(),
        category,
        service: String::new(),
        instance: String::new(),
        seq: 0,
        series: None,
        project: None,
        job: None,
        text: String::new(),
    };
    // A message we cannot read is still listed (by topic), never dropped from history.
    let Ok(env) = patchbay_model::Envelope::from_wire(wire) else { return r };
    r.ts = env.sent_at.as_micros();
    r.service = env.sender.service.clone();
    r.instance = env.sender.instance.clone();
    r.seq = env.seq as i64;
    let body = &env.body;
    match body.get("series") {
        Some(serde_json::Value::Object(head)) => {
            r.series = head.get("id").and_then(serde_json::Value::as_i64);
            r.project = head.get("project").and_then(|p| p.as_str()).map(str::to_string);
        }
        Some(serde_json::Value::Number(n)) => r.series = n.as_i64(),
        _ => {}
    }
    if r.project.is_none() {
        r.project = body.get("project").and_then(|p| p.as_str()).map(str::to_string);
    }
    r.job = body.get("job").and_then(|j| j.as_str()).map(str::to_string);
    body_text(body, &mut r.text);
    r
}

/// A filter value as one full-text token: a kind letter and the value in hex, so any value is
/// one alphanumeric word. Tokens live in their own column (`tags`), which text searches never
/// look at, so a body cannot pose as another project or topic.
fn token(kind: &str, value: &str) -> String {
    let mut t = String::with_capacity(4 + value.len() * 2);
    t.push_str("zz");
    t.push_str(kind);
    for b in value.bytes() {
        t.push_str(&format!("{b:02x}"));
    }
    t
}

/// The tokens a message carries besides its text: what the structured filters match when a
/// query also searches text, so the whole query is answered inside the full-text index.
fn tokens(r: &Row) -> String {
    let mut t =
        vec![token("t", &r.topic), token("c", &r.category), token("s", &r.service), token("i", &format!("{}:{}", r.service, r.instance))];
    if let Some(series) = r.series {
        t.push(token("n", &series.to_string()));
    }
    if let Some(p) = &r.project {
        t.push(token("p", p));
    }
    if let Some(j) = &r.job {
        t.push(token("j", j));
    }
    t.join(" ")
}

/// Indexes the next batch of stored messages; returns how many, and how many of them say a
/// mail was stored (`mail.message.received`), for the `mails_stored` metric.
///
/// The time kept is the sender's, made monotone in store order and never later than now
/// (`min(max(sent_at, previous), now)`): a skewed clock cannot reorder history, and a time
/// range is a position range, which every index and the full-text index can seek.
pub fn index_batch(tx: &Connection) -> Result<(usize, u64), StoreError> {
    let (mark, mut last): (i64, i64) = tx.query_row(
        "SELECT coalesce(max(pos), 0), coalesce((SELECT ts FROM history ORDER BY pos DESC LIMIT 1), 0) FROM history",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let now = patchbay_model::Timestamp::now().as_micros();
    let mut read = tx.prepare_cached("SELECT pos, topic, wire FROM bus_messages WHERE pos > ?1 ORDER BY pos LIMIT ?2")?;
    let rows: Vec<(i64, String, Vec<u8>)> =
        read.query_map(rusqlite::params![mark, BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    let mut put = tx.prepare_cached(
        "INSERT INTO history (pos, ts, topic, category, service, instance, seq, series, project) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut text = tx.prepare_cached("INSERT INTO history_text (rowid, body, tags) VALUES (?1, ?2, ?3)")?;
    let mut counts: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut mails = 0;
    let mail_topic = format!(".{}", <patchbay_model::MailReceived as patchbay_model::Body>::TOPIC);
    for (pos, topic, wire) in &rows {
        mails += u64::from(topic.ends_with(&mail_topic));
        let mut r = row(topic, wire);
        r.ts = r.ts.max(last).min(now.max(last));
        last = r.ts;
        put.execute(rusqlite::params![pos, r.ts, r.topic, r.category, r.service, r.instance, r.seq, r.series, r.project])?;
        text.execute(rusqlite::params![pos, r.text, tokens(&r)])?;
        *counts.entry(r.topic).or_default() += 1;
    }
    let mut topics =
        tx.prepare_cached("INSERT INTO history_topics (topic, n) VALUES (?1, ?2) ON CONFLICT (topic) DO UPDATE SET n = n + excluded.n")?;
    for (topic, n) in counts {
        topics.execute(rusqlite::params![topic, n])?;
    }
    Ok((rows.len(), mails))
}

/// What readers ask of the history, behind a port: one implementation per store backend.
#[async_trait::async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// One page of messages matching `q` (see [`search`]).
    async fn search(&self, q: Query) -> Result<Page, StoreError>;
    /// One message's wire form by id.
    async fn message(&self, id: String) -> Result<Option<Vec<u8>>, StoreError>;
    /// The wire forms on exactly `topic` since `since` (unix microseconds), newest first, at
    /// most `limit` (the dashboard's runners, from their heartbeats).
    async fn latest(&self, topic: String, since: i64, limit: u32) -> Result<Vec<Vec<u8>>, StoreError>;
}

#[async_trait::async_trait]
impl HistoryStore for Db {
    async fn search(&self, q: Query) -> Result<Page, StoreError> {
        self.read(move |c| search(c, &q)).await
    }

    async fn message(&self, id: String) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |c| message(c, &id)).await
    }

    async fn latest(&self, topic: String, since: i64, limit: u32) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.wire FROM history h JOIN bus_messages m ON m.pos = h.pos WHERE h.topic = ?1 AND h.ts >= ?2 ORDER BY h.pos DESC LIMIT ?3",
            )?;
            Ok(stmt.query_map(rusqlite::params![topic, since, limit], |r| r.get(0))?.collect::<Result<_, _>>()?)
        })
        .await
    }
}

/// Keeps `history` up to date with `bus_messages`.
#[derive(Clone)]
pub struct Indexer {
    db: Db,
}

impl Indexer {
    /// An indexer on `db`.
    pub fn new(db: Db) -> Self {
        Indexer { db }
    }

    /// Indexes everything stored so far; returns how many messages it indexed.
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            // A read first: a write, even an empty one, is a commit, and a commit wakes `run`
            // again, so writing only to find nothing new would spin.
            let behind = self
                .db
                .read(|c| {
                    Ok(c.query_row(
                        "SELECT coalesce((SELECT max(pos) FROM bus_messages), 0) > coalesce((SELECT max(pos) FROM history), 0)",
                        [],
                        |r| r.get::<_, bool>(0),
                    )?)
                })
                .await?;
            if !behind {
                return Ok(total);
            }
            // Counted once committed: every mail stored in this store, by any process (`inject`
            // and `import` too), is indexed exactly once.
            let (n, mails) = self.db.write(|tx| index_batch(tx)).await?;
            patchbay_metrics::metrics().mails_stored.inc_by(mails);
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// Indexes as messages are committed, until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut commits = self.db.commits();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.catch_up().await {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "History indexing failed; retrying.");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                // Commits by this process wake it at once; other processes' by the timer.
                _ = commits.changed() => {}
                () = tokio::time::sleep(backoff.max(Duration::from_millis(250))) => {}
            }
        }
    }
}

/// Which `history` rows may be pruned, given `?1` (after this position) and `?2` (older than
/// this time): see [`prune_batch`].
const PRUNABLE: &str = "pos > ?1 AND ts < ?2 AND pos < (SELECT max(pos) FROM history) AND pos <= coalesce((SELECT min(value) FROM bus_meta WHERE key LIKE '%\\_pos' ESCAPE '\\'), pos)";

/// Messages looked at per prune step.
const PRUNE_BATCH: i64 = 5000;

/// Deletes up to [`PRUNE_BATCH`] indexed messages older than `cutoff` (microseconds, history
/// time) with positions after `after`, from the log (`bus_messages`), `history` and the
/// full-text index together. Kept: messages still waiting in a queue or set aside as dead
/// letters (a consumer or an operator still needs them), the newest indexed message (the
/// indexer's mark), and anything after the position of a reader that must see every message
/// (such as the RabbitMQ relay): such readers keep their position in `bus_meta` under a key
/// ending in `_pos`. Returns the last position looked at (the next step's `after`; `None`
/// when there is nothing older left) and how many were deleted.
pub fn prune_batch(tx: &Connection, cutoff: i64, after: i64) -> Result<(Option<i64>, usize), StoreError> {
    let positions: Vec<(i64, String)> = tx
        .prepare_cached(&format!("SELECT pos, topic FROM history WHERE {PRUNABLE} ORDER BY pos LIMIT ?3"))?
        .query_map(rusqlite::params![after, cutoff, PRUNE_BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let (Some(&(first, _)), Some(&(last, _))) = (positions.first(), positions.last()) else { return Ok((None, 0)) };
    // One look at each table per step (their keys start with the queue, not the position).
    let held: std::collections::HashSet<i64> = tx
        .prepare_cached(
            "SELECT pos FROM bus_deliveries WHERE pos BETWEEN ?1 AND ?2 UNION SELECT pos FROM bus_dead_letters WHERE pos BETWEEN ?1 AND ?2",
        )?
        .query_map([first, last], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut deleted = 0;
    let mut counts: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for (pos, topic) in positions.into_iter().filter(|(p, _)| !held.contains(p)) {
        tx.prepare_cached("DELETE FROM history_text WHERE rowid = ?1")?.execute([pos])?;
        if tx.prepare_cached("DELETE FROM history WHERE pos = ?1")?.execute([pos])? > 0 {
            *counts.entry(topic).or_default() += 1;
        }
        deleted += tx.prepare_cached("DELETE FROM bus_messages WHERE pos = ?1")?.execute([pos])?;
    }
    // The topics' counts go down in the same write (a topic with none left stays known).
    for (topic, n) in counts {
        tx.prepare_cached("UPDATE history_topics SET n = n - ?2 WHERE topic = ?1")?.execute(rusqlite::params![topic, n])?;
    }
    Ok((Some(last), deleted))
}

/// Deletes what is older than `keep` from the log and history, in steps (each its own write,
/// so ingest is never held up long); returns how many messages went.
pub async fn prune(db: &Db, keep: Duration) -> Result<usize, StoreError> {
    let cutoff = patchbay_model::Timestamp::now().as_micros() - keep.as_micros().min(i64::MAX as u128) as i64;
    let (mut after, mut total) = (0, 0);
    loop {
        // A read first, so that an idle store sees no empty commits (they wake every consumer).
        let older = db
            .read(move |c| {
                Ok(c.query_row(
                    &format!("SELECT EXISTS (SELECT 1 FROM history WHERE {PRUNABLE})"),
                    rusqlite::params![after, cutoff],
                    |r| r.get::<_, bool>(0),
                )?)
            })
            .await?;
        if !older {
            return Ok(total);
        }
        let (last, deleted) = db.write(move |tx| prune_batch(tx, cutoff, after)).await?;
        total += deleted;
        match last {
            Some(last) => after = last,
            None => return Ok(total),
        }
    }
}

/// Whether a topic filter is an AMQP pattern rather than one topic.
fn is_pattern(t: &str) -> bool {
    t.split('.').any(|w| w == "*" || w == "#")
}

/// Topic filters as exact topics: patterns are matched against `known`, the topics history
/// has seen (a short list), so every topic filter is an index lookup.
fn expand(filters: &[String], known: &[String]) -> Vec<String> {
    let mut out: Vec<String> = filters.iter().filter(|t| !is_pattern(t)).cloned().collect();
    let patterns: Vec<patchbay_bus::TopicPattern> =
        filters.iter().filter(|t| is_pattern(t)).filter_map(|t| patchbay_bus::TopicPattern::parse(t).ok()).collect();
    if !patterns.is_empty() {
        out.extend(known.iter().filter(|t| patterns.iter().any(|p| p.matches_str(t))).cloned());
    }
    out.sort();
    out.dedup();
    out
}

/// A phrase for FTS5: the words, quoted, so no query syntax is taken from the user.
fn fts_phrase(text: &str) -> String {
    // FTS5 reads a query only up to a NUL ("unterminated string"); to the unicode61 tokenizer a
    // NUL separates words, as a space does.
    format!("\"{}\"", text.replace('"', "\"\"").replace('\0', " "))
}

/// The position range a time range covers (times are monotone in store order); `None` when empty.
fn pos_range(conn: &Connection, start: Option<i64>, end: Option<i64>) -> Result<Option<(i64, i64)>, StoreError> {
    let lo = match start {
        None => 0,
        Some(s) => match conn.query_row("SELECT pos FROM history WHERE ts >= ?1 ORDER BY ts, pos LIMIT 1", [s], |r| r.get(0)).optional()? {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let hi = match end {
        None => i64::MAX,
        Some(e) => match conn
            .query_row("SELECT pos FROM history WHERE ts < ?1 ORDER BY ts DESC, pos DESC LIMIT 1", [e], |r| r.get(0))
            .optional()?
        {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    Ok((lo <= hi).then_some((lo, hi)))
}

/// A query made ready to run: topic filters and negations as one list of exact topics, time
/// as positions.
struct Plan {
    topics: Option<Vec<String>>,
    range: Option<(i64, i64)>,
}

impl Plan {
    /// Negations become the topics that remain (a positive list an index can seek), since
    /// history knows every topic it holds.
    fn new(conn: &Connection, q: &Query, range: Option<(i64, i64)>) -> Result<Plan, StoreError> {
        let known: Vec<String> = if Plan::needs_topics(q) {
            conn.prepare_cached("SELECT topic FROM history_topics")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(Plan::with_topics(q, range, &known))
    }

    /// Whether planning `q` needs the topics history has seen.
    fn needs_topics(q: &Query) -> bool {
        q.topics.iter().any(|t| is_pattern(t)) || !q.not_topics.is_empty() || !q.not_categories.is_empty()
    }

    /// The plan, given every topic history holds (`known`, needed only when
    /// [`Plan::needs_topics`]): the same for every store.
    fn with_topics(q: &Query, range: Option<(i64, i64)>, known: &[String]) -> Plan {
        let mut topics = if q.topics.is_empty() { None } else { Some(expand(&q.topics, known)) };
        if !q.not_topics.is_empty() || !q.not_categories.is_empty() {
            let excluded = expand(&q.not_topics, known);
            let all = topics.take().unwrap_or_else(|| known.to_vec());
            let category = |t: &str| t.split('.').nth(2).unwrap_or("").to_string();
            topics = Some(all.into_iter().filter(|t| !excluded.contains(t) && !q.not_categories.contains(&category(t))).collect());
        }
        Plan { topics, range }
    }
}

/// The WHERE clause over `history` and its arguments (`sqlite`: with its planner hints).
fn sql_filter(q: &Query, plan: &Plan, sqlite: bool) -> (String, Vec<Sql>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Sql> = Vec::new();
    // Only a real time range: an open one would make the planner walk the table by position.
    if let Some((lo, hi)) = plan.range {
        clauses.push("pos BETWEEN ? AND ?".into());
        args.extend([Sql::Integer(lo), Sql::Integer(hi)]);
    }
    let mut list = |column: &str, values: Vec<Sql>, negate: bool| {
        if values.is_empty() {
            return;
        }
        let marks = vec!["?"; values.len()].join(", ");
        clauses.push(if negate { format!("({column} IS NULL OR {column} NOT IN ({marks}))") } else { format!("{column} IN ({marks})") });
        args.extend(values);
    };
    let texts = |v: &[String]| v.iter().map(|s| Sql::Text(s.clone())).collect::<Vec<_>>();
    let ints = |v: &[i64]| v.iter().map(|s| Sql::Integer(*s)).collect::<Vec<_>>();
    if let Some(t) = &plan.topics {
        if t.is_empty() {
            list("pos", vec![Sql::Integer(-1)], false); // no known topic matches: nothing does
        } else {
            list("topic", texts(t), false);
        }
    }
    list("category", texts(&q.categories), false);
    list("series", ints(&q.series), false);
    list("series", ints(&q.not_series), true);
    list("project", texts(&q.projects), false);
    list("project", texts(&q.not_projects), true);
    // With a time range the positions bound the walk; the sender's index (a sender's messages
    // in log order) would walk all of that sender's instead (3.5 ms became 78 ms): SQLite's `+`
    // keeps its planner off it.
    let plus = if sqlite && plan.range.is_some() { "+" } else { "" };
    let senders = |v: &[SenderFilter], args: &mut Vec<Sql>| {
        v.iter()
            .map(|s| {
                args.push(Sql::Text(s.service.clone()));
                match &s.instance {
                    Some(i) => {
                        args.push(Sql::Text(i.clone()));
                        format!("({plus}service = ? AND instance = ?)")
                    }
                    None => format!("{plus}service = ?"),
                }
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    if !q.senders.is_empty() {
        let c = senders(&q.senders, &mut args);
        clauses.push(format!("({c})"));
    }
    if !q.not_senders.is_empty() {
        let c = senders(&q.not_senders, &mut args);
        clauses.push(format!("NOT ({c})"));
    }
    if let Some(s) = q.seq_from {
        clauses.push("seq >= ?".into());
        args.push(Sql::Integer(s as i64));
    }
    if let Some(s) = q.seq_to {
        clauses.push("seq <= ?".into());
        args.push(Sql::Integer(s as i64));
    }
    if clauses.is_empty() {
        return (String::new(), args);
    }
    (format!("WHERE {}", clauses.join(" AND ")), args)
}

/// The whole query as one FTS5 expression: the phrases (in the text), and every structured
/// filter as tokens (in the tags).
fn fts_filter(q: &Query, plan: &Plan) -> String {
    let any = |ts: Vec<String>| format!("tags : ({})", ts.join(" OR "));
    let mut and: Vec<String> = q.contains.iter().map(|c| format!("body : {}", fts_phrase(c))).collect();
    let mut not: Vec<String> = Vec::new();
    let mut group = |kind: &str, values: Vec<String>, negate: bool| {
        if values.is_empty() {
            return;
        }
        let g = any(values.iter().map(|v| token(kind, v)).collect());
        if negate { not.push(g) } else { and.push(g) }
    };
    if let Some(t) = &plan.topics {
        // No known topic matches: a token nothing carries.
        group("t", if t.is_empty() { vec![String::new()] } else { t.clone() }, false);
    }
    group("c", q.categories.clone(), false);
    group("n", q.series.iter().map(i64::to_string).collect(), false);
    group("n", q.not_series.iter().map(i64::to_string).collect(), true);
    group("p", q.projects.clone(), false);
    group("p", q.not_projects.clone(), true);
    group("j", q.jobs.clone(), false);
    let sender = |s: &SenderFilter| match &s.instance {
        Some(i) => token("i", &format!("{}:{i}", s.service)),
        None => token("s", &s.service),
    };
    if !q.senders.is_empty() {
        and.push(any(q.senders.iter().map(sender).collect()));
    }
    if !q.not_senders.is_empty() {
        not.push(any(q.not_senders.iter().map(sender).collect()));
    }
    let mut expr = and.join(" AND ");
    for n in not {
        expr.push_str(" NOT ");
        expr.push_str(&n);
    }
    expr
}

/// One page of messages matching `q`, and how many match in all, read from one snapshot (so the
/// total and the page agree).
pub fn search(conn: &Connection, q: &Query) -> Result<Page, StoreError> {
    let snapshot = conn.unchecked_transaction()?;
    let page = search_in(&snapshot, q)?;
    snapshot.commit()?;
    Ok(page)
}

fn search_in(conn: &Connection, q: &Query) -> Result<Page, StoreError> {
    let range = if q.start.is_some() || q.end.is_some() {
        match pos_range(conn, q.start, q.end)? {
            Some(r) => Some(r),
            None => return Ok(Page { total: 0, messages: vec![] }),
        }
    } else {
        None
    };
    let plan = Plan::new(conn, q, range)?;
    let dir = if q.order == Order::Asc { "ASC" } else { "DESC" };
    let limit = i64::from(q.rows_per_page);
    let offset = i64::from(q.page - 1) * limit;
    let replay = q.seq_from.is_some() || q.seq_to.is_some();
    let (total, sql, mut args): (i64, String, Vec<Sql>) = if (!q.contains.is_empty() || !q.jobs.is_empty()) && !replay {
        // Text search with everything else as tokens and the time as a rowid range: FTS5
        // answers it alone, without touching one history row per text match.
        let (lo, hi) = range.unwrap_or((0, i64::MAX));
        let args = vec![Sql::Text(fts_filter(q, &plan)), Sql::Integer(lo), Sql::Integer(hi)];
        let total = conn
            .prepare_cached("SELECT count(*) FROM history_text WHERE history_text MATCH ? AND rowid BETWEEN ? AND ?")?
            .query_row(params_from_iter(&args), |r| r.get(0))?;
        let sql = format!(
            "SELECT m.wire FROM (SELECT rowid AS pos FROM history_text WHERE history_text MATCH ? AND rowid BETWEEN ? AND ?
             ORDER BY rowid {dir} LIMIT ? OFFSET ?) h JOIN bus_messages m ON m.pos = h.pos ORDER BY h.pos {dir}"
        );
        (total, sql, args)
    } else {
        let (filter, args) = sql_filter(q, &plan, true);
        let total = match topics_only(q, &plan) {
            // By topics alone: the sum of the topics' counts (kept with every index and prune).
            Some(None) => conn.query_row("SELECT coalesce(sum(n), 0) FROM history_topics", [], |r| r.get(0))?,
            Some(Some([])) => 0,
            Some(Some(topics)) => {
                let marks = vec!["?"; topics.len()].join(", ");
                conn.prepare_cached(&format!("SELECT coalesce(sum(n), 0) FROM history_topics WHERE topic IN ({marks})"))?
                    .query_row(params_from_iter(topics.iter().map(|t| Sql::Text(t.clone()))), |r| r.get(0))?
            }
            None => {
                conn.prepare_cached(&format!("SELECT count(*) FROM history {filter}"))?.query_row(params_from_iter(&args), |r| r.get(0))?
            }
        };
        // Replay by sequence runs in sequence order; everything else in store (= time) order.
        let key = if replay { "seq" } else { "pos" };
        let sql = format!(
            "SELECT m.wire FROM (SELECT pos, {key} AS k FROM history {filter} ORDER BY {key} {dir}, pos {dir} LIMIT ? OFFSET ?) h
             JOIN bus_messages m ON m.pos = h.pos ORDER BY h.k {dir}, h.pos {dir}"
        );
        (total, sql, args)
    };
    args.push(Sql::Integer(limit));
    args.push(Sql::Integer(offset));
    let mut stmt = conn.prepare_cached(&sql)?;
    let messages = stmt.query_map(params_from_iter(&args), |r| r.get::<_, Vec<u8>>(0))?.collect::<Result<_, _>>()?;
    Ok(Page { total: total as u64, messages })
}

/// When `q` filters by topics alone (after planning: negations are topic lists too), those
/// topics (`None`: every topic), so its total is a sum of the topics' counts; else `None`.
fn topics_only<'a>(q: &Query, plan: &'a Plan) -> Option<Option<&'a [String]>> {
    let alone = plan.range.is_none()
        && q.categories.is_empty()
        && q.series.is_empty()
        && q.not_series.is_empty()
        && q.projects.is_empty()
        && q.not_projects.is_empty()
        && q.senders.is_empty()
        && q.not_senders.is_empty()
        && q.seq_from.is_none()
        && q.seq_to.is_none();
    match &plan.topics {
        // No known topic matches: an empty list, which sums to nothing.
        Some(t) if alone => Some(Some(t.as_slice())),
        None if alone => Some(None),
        _ => None,
    }
}

/// One message by id, exactly as stored.
pub fn message(conn: &Connection, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn.prepare_cached("SELECT wire FROM bus_messages WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_become_single_words() {
        assert_eq!(token("c", "ci"), "zzc6369");
        assert!(token("t", "a.b c\"d").chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn a_text_query_carries_every_filter() {
        let mut q = Query { contains: vec!["oops".into()], categories: vec!["ci".into()], ..Query::default() };
        q.not_projects = vec!["qemu".into()];
        q.senders = vec![SenderFilter { service: "runner".into(), instance: Some("a".into()) }];
        let plan = Plan { topics: Some(vec![]), range: None };
        let e = fts_filter(&q, &plan);
        assert_eq!(
            e,
            format!(
                "body : \"oops\" AND tags : (zzt) AND tags : (zzc6369) AND tags : ({}) NOT tags : ({})",
                token("i", "runner:a"),
                token("p", "qemu")
            )
        );
    }

    #[test]
    fn body_text_keeps_values_and_is_bounded() {
        let mut t = String::new();
        body_text(&serde_json::json!({"a": "hello", "b": [1, {"c": "world"}], "d": null}), &mut t);
        assert_eq!(t, "hello 1 world ");
        let mut t = String::new();
        body_text(&serde_json::json!({"big": "é".repeat(TEXT_LIMIT)}), &mut t);
        assert!(t.len() <= TEXT_LIMIT + 1);
    }

    #[test]
    fn fts_phrases_take_no_syntax_from_users() {
        assert_eq!(fts_phrase("a \"b\" OR c*"), "\"a \"\"b\"\" OR c*\"");
        assert_eq!(fts_phrase("a\0b"), "\"a b\"", "a NUL would end the query");
    }
}
