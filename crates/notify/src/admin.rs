//! The rules in force and what an admin does with them over HTTP: rules of the config file
//! (`[[notify]]`, changed there) beside rules added over the API (kept in `notify_rules`, so
//! they survive a restart), and the deliveries given up, to read and send again.

use std::sync::Arc;

use patchbay_bus::Outgoing;
use patchbay_model::view::{NotifyDead, NotifyRule};
use patchbay_model::{Sender, TopicRoot};
use patchbay_store::{EmbeddedBus, StoreError};
use rusqlite::params;
use tokio::sync::watch;

use crate::{RawRule, Rule};

/// The rules in force, shared by the collector, the deliverer and the admin API; a change is
/// seen by each at its next message or round.
#[derive(Clone)]
pub struct Rules(watch::Sender<Arc<Vec<Rule>>>);

impl Rules {
    /// Rules in force from now on.
    pub fn new(rules: Vec<Rule>) -> Self {
        Rules(watch::Sender::new(Arc::new(rules)))
    }

    /// The rules now.
    pub fn current(&self) -> Arc<Vec<Rule>> {
        self.0.borrow().clone()
    }

    /// Waits until at least one rule is in force (the collector starts then, not before: a
    /// queue of every message costs a write per message).
    pub async fn any(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|r| !r.is_empty()).await;
    }

    fn set(&self, rules: Vec<Rule>) {
        self.0.send_replace(Arc::new(rules));
    }
}

/// Why an admin's change was not made.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The rule is wrong: the key and why.
    #[error("{0}: {1}")]
    Invalid(String, String),
    /// It clashes with what exists (a name taken, a rule of the config file).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The admin's side of the notifications (see the module comment).
#[derive(Clone)]
pub struct Admin {
    bus: EmbeddedBus,
    rules: Rules,
    config: Arc<Vec<Rule>>,
    root: TopicRoot,
    sender: Sender,
}

impl Admin {
    /// Loads the rules added over the API beside `config`'s, and puts both in force. A stored
    /// rule whose name the config now uses, or that no longer reads, is left out with a warning.
    pub async fn load(bus: EmbeddedBus, config: Vec<Rule>, root: TopicRoot, sender: Sender) -> Result<Admin, StoreError> {
        let admin = Admin { bus, rules: Rules::new(config.clone()), config: Arc::new(config), root, sender };
        admin.refresh().await?;
        Ok(admin)
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    async fn stored(&self) -> Result<Vec<(RawRule, String)>, StoreError> {
        let rows: Vec<(String, String, String)> = self
            .bus
            .db()
            .read(|c| {
                let mut stmt = c.prepare_cached("SELECT name, rule, created_by FROM notify_rules ORDER BY created_at, name")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        let mut out = Vec::new();
        for (name, text, by) in rows {
            match serde_json::from_str::<RawRule>(&text) {
                Ok(raw) => out.push((raw, by)),
                Err(error) => tracing::warn!(rule = %name, %error, "A notification rule added over the API no longer reads; left out."),
            }
        }
        Ok(out)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        let mut rules: Vec<Rule> = self.config.to_vec();
        for (raw, _) in self.stored().await? {
            let name = raw.name.clone();
            match raw.check() {
                Ok(rule) if rules.iter().any(|r| r.name == rule.name) => {
                    tracing::warn!(rule = %name, "A notification rule added over the API has the name of one in the config; the config's is in force.")
                }
                Ok(rule) => rules.push(rule),
                Err((key, why)) => {
                    tracing::warn!(rule = %name, key, %why, "A notification rule added over the API is no longer valid; left out.")
                }
            }
        }
        self.rules.set(rules);
        Ok(())
    }

    /// Every rule in force, the config's first, with its deliveries counted.
    pub async fn list(&self) -> Result<Vec<NotifyRule>, StoreError> {
        let counts: Vec<(String, String, i64)> = self
            .bus
            .db()
            .read(|c| {
                let mut stmt = c.prepare_cached("SELECT rule, state, count(*) FROM notify_queue GROUP BY rule, state")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        let by: std::collections::HashMap<String, String> = self.stored().await?.into_iter().map(|(r, by)| (r.name, by)).collect();
        let count = |rule: &str, states: &[&str]| -> u64 {
            counts.iter().filter(|(r, s, _)| r == rule && states.contains(&s.as_str())).map(|(_, _, n)| *n as u64).sum()
        };
        Ok(self
            .rules
            .current()
            .iter()
            .map(|r| {
                let from_config = self.config.iter().any(|c| c.name == r.name);
                NotifyRule {
                    name: r.name.clone(),
                    source: if from_config { "config" } else { "api" }.into(),
                    rule: r.shown(),
                    created_by: if from_config { None } else { by.get(&r.name).cloned() },
                    pending: count(&r.name, &["pending", "sending"]),
                    delivered: count(&r.name, &["delivered"]),
                    dead: count(&r.name, &["dead"]),
                }
            })
            .collect())
    }

    /// Adds `raw` on behalf of `by`, in force at once; announced on `notify.rule.added`. It sees
    /// the messages published from now on.
    pub async fn add(&self, raw: RawRule, by: &str) -> Result<NotifyRule, AdminError> {
        let text = serde_json::to_string(&raw).expect("a rule serializes");
        let rule = raw.check().map_err(|(key, why)| AdminError::Invalid(key.to_string(), why))?;
        if self.config.iter().any(|r| r.name == rule.name) {
            return Err(AdminError::Conflict(format!("rule {:?} is in the config file; change it there", rule.name)));
        }
        let shown = rule.shown();
        let announce = self.announce("notify.rule.added", serde_json::json!({"rule": rule.name, "by": by, "written": shown}));
        let (name, by_) = (rule.name.clone(), by.to_string());
        let publisher = self.bus.clone();
        let added = self
            .bus
            .db()
            .write(move |tx| {
                let n = tx
                    .prepare_cached("INSERT INTO notify_rules (name, rule, created_by, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING")?
                    .execute(params![name, text, by_, patchbay_model::Timestamp::now().as_micros()])?;
                if n == 1 {
                    publisher.publish_in(tx, announce.into_iter().collect())?;
                }
                Ok(n == 1)
            })
            .await?;
        if !added {
            return Err(AdminError::Conflict(format!("a rule named {:?} exists; remove it first", rule.name)));
        }
        self.refresh().await?;
        tracing::info!(rule = %rule.name, by, "Notification rule added.");
        Ok(NotifyRule {
            name: rule.name,
            source: "api".into(),
            rule: shown,
            created_by: Some(by.to_string()),
            pending: 0,
            delivered: 0,
            dead: 0,
        })
    }

    /// Removes the API rule `name` on behalf of `by`, and what it still had to deliver;
    /// announced on `notify.rule.removed`. `Ok(false)`: no such rule.
    pub async fn remove(&self, name: &str, by: &str) -> Result<bool, AdminError> {
        if self.config.iter().any(|r| r.name == name) {
            return Err(AdminError::Conflict(format!("rule {name:?} is in the config file; remove it there")));
        }
        let announce = self.announce("notify.rule.removed", serde_json::json!({"rule": name, "by": by}));
        let name_ = name.to_string();
        let publisher = self.bus.clone();
        let removed = self
            .bus
            .db()
            .write(move |tx| {
                let n = tx.prepare_cached("DELETE FROM notify_rules WHERE name = ?1")?.execute([&name_])?;
                if n == 1 {
                    // Delivered and given-up rows stay, as the rule's record; nothing more goes out.
                    tx.prepare_cached("DELETE FROM notify_queue WHERE rule = ?1 AND state IN ('pending', 'sending')")?.execute([&name_])?;
                    publisher.publish_in(tx, announce.into_iter().collect())?;
                }
                Ok(n == 1)
            })
            .await?;
        if removed {
            self.refresh().await?;
            tracing::info!(rule = name, by, "Notification rule removed.");
        }
        Ok(removed)
    }

    /// The deliveries given up, newest first, of one rule or all, at most `limit`.
    pub async fn dead(&self, rule: Option<String>, limit: u32) -> Result<Vec<NotifyDead>, StoreError> {
        self.bus
            .db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT rule, message_id, topic, error, attempts, sent_at FROM notify_queue
                     WHERE state = 'dead' AND (?1 IS NULL OR rule = ?1) ORDER BY sent_at DESC, pos DESC LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![rule, limit], |r| {
                        Ok(NotifyDead {
                            rule: r.get(0)?,
                            message_id: r.get(1)?,
                            topic: r.get(2)?,
                            error: r.get(3)?,
                            attempts: r.get(4)?,
                            sent_at: r.get(5)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    /// Puts a given-up delivery back in its rule's queue, its tries counted afresh (a digest
    /// rule's goes in its next digest). `Ok(false)`: no such dead delivery.
    pub async fn retry(&self, rule: &str, message_id: &str, by: &str) -> Result<bool, StoreError> {
        let (rule_, id) = (rule.to_string(), message_id.to_string());
        let again = self
            .bus
            .db()
            .write(move |tx| {
                Ok(tx
                    .prepare_cached(
                        "UPDATE notify_queue SET state = 'pending', attempts = 0, next_at = 0, error = NULL
                         WHERE rule = ?1 AND message_id = ?2 AND state = 'dead'",
                    )?
                    .execute(params![rule_, id])?
                    == 1)
            })
            .await?;
        if again {
            tracing::info!(rule, message = message_id, by, "Notification given up before is sent again.");
        }
        Ok(again)
    }

    fn announce(&self, suffix: &str, body: serde_json::Value) -> Option<Outgoing> {
        Outgoing::free_form(&self.root, &self.sender, suffix, body).ok()
    }
}
