//! A history query from URL parameters, validated (pure; no store). Every
//! error names the parameter. Repeating a parameter ORs its values; different
//! parameters AND, as in datagrepper.

use std::str::FromStr as _;

use crate::Timestamp;

/// Rows per page unless `rows_per_page` says otherwise.
pub const DEFAULT_ROWS: u32 = 25;
/// The most rows one page may hold.
pub const MAX_ROWS: u32 = 100;

/// Newest or oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Oldest first (replay).
    Asc,
    /// Newest first (the default).
    Desc,
}

/// One sender filter: a service, optionally one instance of it (`runner` or `runner:main`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderFilter {
    /// The service word.
    pub service: String,
    /// The instance, when given.
    pub instance: Option<String>,
}

/// What to look for; empty lists mean "any".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// Exact topics or AMQP patterns (`*` one word, `#` any number).
    pub topics: Vec<String>,
    /// Topics or patterns to leave out.
    pub not_topics: Vec<String>,
    /// Service words of the topic (`ci`, `series`, `mail`…).
    pub categories: Vec<String>,
    /// Categories to leave out.
    pub not_categories: Vec<String>,
    /// Series ids.
    pub series: Vec<i64>,
    /// Series to leave out.
    pub not_series: Vec<i64>,
    /// Project names.
    pub projects: Vec<String>,
    /// Projects to leave out.
    pub not_projects: Vec<String>,
    /// Senders.
    pub senders: Vec<SenderFilter>,
    /// Senders to leave out.
    pub not_senders: Vec<SenderFilter>,
    /// Words or phrases the body must contain (all of them).
    pub contains: Vec<String>,
    /// Test jobs (`body.job`): every message about them.
    pub jobs: Vec<String>,
    /// Sent at or after, in microseconds since the epoch.
    pub start: Option<i64>,
    /// Sent before, in microseconds since the epoch.
    pub end: Option<i64>,
    /// Replay: the sender's sequence numbers from (inclusive).
    pub seq_from: Option<u64>,
    /// Replay: to (inclusive).
    pub seq_to: Option<u64>,
    /// 1-based page.
    pub page: u32,
    /// Rows per page, at most [`MAX_ROWS`].
    pub rows_per_page: u32,
    /// Order.
    pub order: Order,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            topics: vec![],
            not_topics: vec![],
            categories: vec![],
            not_categories: vec![],
            series: vec![],
            not_series: vec![],
            projects: vec![],
            not_projects: vec![],
            senders: vec![],
            not_senders: vec![],
            contains: vec![],
            jobs: vec![],
            start: None,
            end: None,
            seq_from: None,
            seq_to: None,
            page: 1,
            rows_per_page: DEFAULT_ROWS,
            order: Order::Desc,
        }
    }
}

/// Unix seconds as the OpenAPI document spells them, in microseconds: an optional `-`, 1-12
/// digits, and optionally `.` and 1-6 digits (the precision stored); exact, no float on the way.
fn unix_micros(value: &str) -> Option<i64> {
    let digits = |s: &str, most: usize| (1..=most).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let (negative, unsigned) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) if digits(f, 6) => (w, format!("{f:0<6}")),
        Some(_) => return None,
        None => (unsigned, "0".to_string()),
    };
    if !digits(whole, 12) {
        return None;
    }
    let micros = whole.parse::<i64>().ok()? * 1_000_000 + fraction.parse::<i64>().ok()?;
    Some(if negative { -micros } else { micros })
}

/// A point in time: unix seconds (fractions allowed) or `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn time(name: &str, value: &str) -> Result<i64, String> {
    if let Some(micros) = unix_micros(value) {
        return Ok(micros);
    }
    Timestamp::from_str(value)
        .map(Timestamp::as_micros)
        .map_err(|_| format!("{name}: {value:?} is neither unix seconds nor a time such as 2026-11-25T10:00:00.000000Z"))
}

fn sender(name: &str, value: &str) -> Result<SenderFilter, String> {
    let (service, instance) = match value.split_once(':') {
        Some((s, i)) => (s, Some(i.to_string())),
        None => (value, None),
    };
    if service.is_empty() || instance.as_deref() == Some("") {
        return Err(format!("{name}: {value:?} is not a sender such as runner or runner:main"));
    }
    Ok(SenderFilter { service: service.to_string(), instance })
}

/// 1-255 characters (characters, not bytes: what the OpenAPI document's `maxLength` counts).
fn word(name: &str, value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().count() > 255 {
        return Err(format!("{name}: must be 1-255 characters"));
    }
    Ok(value.to_string())
}

fn topic(name: &str, value: &str) -> Result<String, String> {
    crate::TopicPattern::parse(value).map_err(|e| format!("{name}: {e}"))?;
    Ok(value.to_string())
}

impl Query {
    /// Parses URL parameters; `now` (microseconds) anchors `delta`. Unknown parameters are errors,
    /// so a typo never silently widens a query.
    pub fn from_params(params: &[(String, String)], now: i64) -> Result<Query, String> {
        let mut q = Query::default();
        let mut delta = None;
        for (name, value) in params {
            let n = name.as_str();
            // Series ids start at 1.
            let id =
                |v: &str| v.parse::<i64>().ok().filter(|id| *id >= 1).ok_or_else(|| format!("{n}: {v:?} is not a series id (1 or more)"));
            match n {
                "topic" => q.topics.push(topic(n, value)?),
                "not_topic" => q.not_topics.push(topic(n, value)?),
                "category" => q.categories.push(word(n, value)?),
                "not_category" => q.not_categories.push(word(n, value)?),
                "series" => q.series.push(id(value)?),
                "not_series" => q.not_series.push(id(value)?),
                "project" => q.projects.push(word(n, value)?),
                "not_project" => q.not_projects.push(word(n, value)?),
                "sender" => q.senders.push(sender(n, value)?),
                "not_sender" => q.not_senders.push(sender(n, value)?),
                "contains" => {
                    if value.trim().is_empty() {
                        return Err("contains: must not be empty".into());
                    }
                    q.contains.push(value.clone())
                }
                "job" => q.jobs.push(word(n, value)?),
                "start" => q.start = Some(time(n, value)?),
                "end" => q.end = Some(time(n, value)?),
                "delta" => {
                    let secs = value.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0);
                    delta = Some(secs.ok_or_else(|| format!("delta: {value:?} is not a positive number of seconds"))?);
                }
                "seq_from" | "seq_to" => {
                    let v = value.parse::<u64>().map_err(|_| format!("{n}: {value:?} is not a sequence number"))?;
                    if n == "seq_from" { q.seq_from = Some(v) } else { q.seq_to = Some(v) }
                }
                "page" => q.page = value.parse().ok().filter(|p| *p >= 1).ok_or_else(|| format!("page: {value:?} must be 1 or more"))?,
                "rows_per_page" => {
                    q.rows_per_page = value
                        .parse()
                        .ok()
                        .filter(|r| (1..=MAX_ROWS).contains(r))
                        .ok_or_else(|| format!("rows_per_page: {value:?} must be 1-{MAX_ROWS}"))?
                }
                "order" => {
                    q.order = match value.as_str() {
                        "asc" => Order::Asc,
                        "desc" => Order::Desc,
                        _ => return Err(format!("order: {value:?} must be asc or desc")),
                    }
                }
                _ => return Err(format!("{n}: unknown parameter")),
            }
        }
        if let Some(d) = delta {
            if q.start.is_some() {
                return Err("delta: give start or delta, not both".into());
            }
            q.start = Some(q.end.unwrap_or(now).saturating_sub((d * 1e6) as i64));
        }
        if (q.seq_from.is_some() || q.seq_to.is_some()) && q.senders.len() != 1 {
            return Err("seq_from: a sequence range needs exactly one sender".into());
        }
        if (q.seq_from.is_some() || q.seq_to.is_some()) && (!q.contains.is_empty() || !q.jobs.is_empty()) {
            return Err("contains: not with a sequence range (a replay takes the sender's messages as they are)".into());
        }
        if let (Some(a), Some(b)) = (q.seq_from, q.seq_to)
            && a > b
        {
            return Err("seq_to: must not be below seq_from".into());
        }
        if let (Some(a), Some(b)) = (q.start, q.end)
            && a > b
        {
            return Err("end: must not be before start".into());
        }
        Ok(q)
    }
}

/// One page of results.
#[derive(Debug)]
pub struct Page {
    /// Messages matching the query, all pages together.
    pub total: u64,
    /// The messages of this page, each exactly as stored (signed wire JSON).
    pub messages: Vec<Vec<u8>>,
}

/// The JSON text of a page: `{"total", "page", "pages", "rows_per_page", "messages": [...]}`,
/// with each message spliced in byte for byte, so its signature still verifies.
pub fn page_json(q: &Query, page: &Page) -> String {
    let pages = page.total.div_ceil(u64::from(q.rows_per_page));
    let mut out =
        format!("{{\"total\":{},\"page\":{},\"pages\":{},\"rows_per_page\":{},\"messages\":[", page.total, q.page, pages, q.rows_per_page);
    for (i, m) in page.messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&String::from_utf8_lossy(m));
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn repeated_parameters_collect_and_defaults_hold() {
        let q = Query::from_params(&p(&[("category", "ci"), ("category", "series"), ("not_sender", "runner:r1")]), 0).unwrap();
        assert_eq!(q.categories, ["ci", "series"]);
        assert_eq!(q.not_senders, [SenderFilter { service: "runner".into(), instance: Some("r1".into()) }]);
        assert_eq!((q.page, q.rows_per_page, q.order), (1, DEFAULT_ROWS, Order::Desc));
    }

    #[test]
    fn times_and_delta() {
        let q = Query::from_params(&p(&[("start", "1700000000.5"), ("end", "2023-11-14T22:13:21.000000Z")]), 0).unwrap();
        assert_eq!(q.start, Some(1_700_000_000_500_000));
        assert_eq!(q.end, Some(1_700_000_001_000_000));
        let q = Query::from_params(&p(&[("start", "-0.000001"), ("end", "2000-02-29T00:00:00.000000Z")]), 0).unwrap();
        assert_eq!((q.start, q.end), (Some(-1), Some(951_782_400_000_000)));
        let q = Query::from_params(&p(&[("project", "é".repeat(255).as_str())]), 0).unwrap();
        assert_eq!(q.projects[0].chars().count(), 255, "255 characters, though 510 bytes");
        let q = Query::from_params(&p(&[("delta", "60")]), 100_000_000).unwrap();
        assert_eq!(q.start, Some(40_000_000));
    }

    #[test]
    fn errors_name_the_parameter() {
        for (bad, name) in [
            (vec![("rows_per_page", "101")], "rows_per_page"),
            (vec![("page", "0")], "page"),
            (vec![("order", "up")], "order"),
            (vec![("series", "x")], "series"),
            (vec![("not_series", "0")], "not_series"),
            (vec![("category", "")], "category"),
            (vec![("project", "é".repeat(256).as_str())], "project"),
            (vec![("start", "1e9")], "start"),
            (vec![("start", "1234567890123")], "start"),
            (vec![("end", "1.1234567")], "end"),
            (vec![("start", "1900-02-29T00:00:00.000000Z")], "start"),
            (vec![("contains", " \u{3000}\t")], "contains"),
            (vec![("topic", "a..b")], "topic"),
            (vec![("start", "yesterday")], "start"),
            (vec![("seq_from", "3")], "seq_from"),
            (vec![("sender", "a"), ("seq_from", "5"), ("seq_to", "4")], "seq_to"),
            (vec![("start", "10"), ("end", "5")], "end"),
            (vec![("colour", "red")], "colour"),
            (vec![("sender", ":x")], "sender"),
        ] {
            let e = Query::from_params(&p(&bad), 0).unwrap_err();
            assert!(e.starts_with(&format!("{name}:")), "{bad:?}: {e}");
        }
    }
}
