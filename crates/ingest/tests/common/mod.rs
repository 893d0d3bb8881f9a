//! Shared helpers for the ingest tests: a scratch store, the corpus location, and queries.
#![allow(dead_code)]

use std::path::PathBuf;

use patchbay_bus::{MessageLog, Sealer};
use patchbay_ingest::{Ingest, Project, Rules, Settings};
use patchbay_model::TopicRoot;
use patchbay_store::EmbeddedBus;

/// A scratch store with one project that takes every list used in the tests.
pub fn scratch(dir: &std::path::Path, lists: &[&str]) -> Ingest {
    let bus = EmbeddedBus::open(dir, Sealer::default()).unwrap();
    let projects = vec![Project { name: "test".into(), list_ids: lists.iter().map(|s| s.to_string()).collect(), tag: None }];
    Ingest::new(bus, TopicRoot::new("pbtest", "ingest").unwrap(), "t", Settings { rules: Rules::default(), projects })
}

/// `../shared/corpus/<sub>`, or `None` with a note (see `patchbay_fixtures::corpus`).
pub fn corpus(sub: &str) -> Option<PathBuf> {
    patchbay_fixtures::corpus(sub)
}

/// One stored series as the tests compare it.
#[derive(Debug, Clone)]
pub struct SeriesRow {
    pub id: i64,
    pub version: u32,
    pub total: u32,
    pub state: String,
    pub cover: Option<String>,
    /// (slot, message id), slot order, cover excluded.
    pub patches: Vec<(u32, String)>,
    pub name: String,
    pub supersedes: Option<i64>,
}

pub async fn all_series(ingest: &Ingest) -> Vec<SeriesRow> {
    ingest
        .embedded()
        .unwrap()
        .db()
        .read(|c| {
            let mut out = Vec::new();
            // Public ids, as the events carry them; members by the local key.
            let mut stmt = c.prepare(
                "SELECT s.id, s.uid, s.version, s.total, s.state, s.name, p.uid FROM series s
                 LEFT JOIN series p ON p.id = s.supersedes ORDER BY s.id",
            )?;
            type Row = (i64, i64, u32, u32, String, String, Option<i64>);
            let rows: Vec<Row> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))?
                .collect::<Result<_, _>>()?;
            for (local, id, version, total, state, name, supersedes) in rows {
                let mut m = c.prepare(
                    "SELECT sm.slot, m.message_id FROM series_mails sm JOIN mails m ON m.id = sm.mail_id WHERE sm.series_id = ?1 ORDER BY sm.slot",
                )?;
                let members: Vec<(u32, String)> = m.query_map([local], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
                let cover = members.iter().find(|(s, _)| *s == 0).map(|(_, id)| id.clone());
                let patches = members.into_iter().filter(|(s, _)| *s > 0).collect();
                out.push(SeriesRow { id, version, total, state, cover, patches, name, supersedes });
            }
            Ok(out)
        })
        .await
        .unwrap()
}

/// Count of stored mails by kind.
pub async fn kinds(ingest: &Ingest) -> std::collections::BTreeMap<String, i64> {
    ingest
        .embedded()
        .unwrap()
        .db()
        .read(|c| {
            let mut stmt = c.prepare("SELECT kind, count(*) FROM mails GROUP BY kind")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap()
}

/// Splits an mbox held in memory.
pub fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    patchbay_mail::MboxReader::new(data).map(|m| m.unwrap().raw).collect()
}

/// Every published message as (topic suffix, body).
pub async fn events(ingest: &Ingest) -> Vec<(String, serde_json::Value)> {
    let bus = ingest.embedded().unwrap().clone();
    let (mut out, mut after) = (Vec::new(), 0);
    loop {
        let batch = bus.read_after(after, 1000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        for e in batch {
            after = e.position;
            let env = patchbay_model::Envelope::from_wire(&e.wire).unwrap();
            out.push((env.topic.as_str().trim_start_matches("pbtest.ingest.").to_string(), env.body));
        }
    }
}
