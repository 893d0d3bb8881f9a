//! The rules in force and what an admin does with them over HTTP: rules of the config file
//! (`[[notify]]`, changed there) beside rules added over the API (kept in `notify_rules`, so
//! they survive a restart), and the deliveries given up, to read and send again.

use std::sync::Arc;

use patchbay_bus::Outgoing;
use patchbay_model::view::{NotifyDead, NotifyRule};
use patchbay_model::{Sender, TopicRoot};
use patchbay_store::StoreError;
use tokio::sync::watch;

use crate::db::NotifyDb;
use crate::{RawRule, Rule, Store};

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
    db: Arc<dyn NotifyDb>,
    rules: Rules,
    config: Arc<Vec<Rule>>,
    root: TopicRoot,
    sender: Sender,
}

impl Admin {
    /// Loads the rules added over the API beside `config`'s, and puts both in force. A stored
    /// rule whose name the config now uses, or that no longer reads, is left out with a warning.
    pub async fn load(store: Store, config: Vec<Rule>, root: TopicRoot, sender: Sender) -> Result<Admin, StoreError> {
        let admin = Admin { db: store.db(), rules: Rules::new(config.clone()), config: Arc::new(config), root, sender };
        admin.refresh().await?;
        Ok(admin)
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    async fn stored(&self) -> Result<Vec<(RawRule, String, i64)>, StoreError> {
        let mut out = Vec::new();
        for (name, text, by, at) in self.db.stored_rules().await? {
            match serde_json::from_str::<RawRule>(&text) {
                Ok(raw) => out.push((raw, by, at)),
                Err(error) => tracing::warn!(rule = %name, %error, "A notification rule added over the API no longer reads; left out."),
            }
        }
        Ok(out)
    }

    /// Reads the rules added over the API again (another process's admin may have changed
    /// them) and puts them in force beside the config's.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        self.reload().await.map(drop)
    }

    /// [`Admin::refresh`], returning the stored rules it read (with who added each, and when).
    async fn reload(&self) -> Result<Vec<(RawRule, String, i64)>, StoreError> {
        let stored = self.stored().await?;
        let mut rules: Vec<Rule> = self.config.to_vec();
        for (raw, _, at) in stored.iter().cloned() {
            let name = raw.name.clone();
            match raw.check().map(|rule| Rule { since: Some(at), ..rule }) {
                Ok(rule) if rules.iter().any(|r| r.name == rule.name) => {
                    tracing::warn!(rule = %name, "A notification rule added over the API has the name of one in the config; the config's is in force.")
                }
                Ok(rule) => rules.push(rule),
                Err((key, why)) => {
                    tracing::warn!(rule = %name, key, %why, "A notification rule added over the API is no longer valid; left out.")
                }
            }
        }
        let changed = {
            let now = self.rules.current();
            now.len() != rules.len() || now.iter().zip(&rules).any(|(a, b)| (&a.written, a.since) != (&b.written, b.since))
        };
        if changed {
            self.rules.set(rules);
        }
        Ok(stored)
    }

    /// Every rule in force, the config's first, with its deliveries counted.
    pub async fn list(&self) -> Result<Vec<NotifyRule>, StoreError> {
        // Another process (another `run web`) may have changed them.
        let stored = self.reload().await?;
        let counts = self.db.counts().await?;
        let by: std::collections::HashMap<String, String> = stored.into_iter().map(|(r, by, _)| (r.name, by)).collect();
        let count = |rule: &str, states: &[&str]| -> u64 {
            counts.iter().filter(|(r, s, _)| r == rule && states.contains(&s.as_str())).map(|(_, _, n)| n).sum()
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
        // Not where it goes: the bus's history is public, and a webhook's URL may be a credential.
        let announce = self.announce("notify.rule.added", serde_json::json!({"rule": rule.name, "by": by}));
        if !self.db.add_rule(rule.name.clone(), text, by.to_string(), announce).await? {
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
        let removed = self.db.remove_rule(name.to_string(), announce).await?;
        if removed {
            self.refresh().await?;
            tracing::info!(rule = name, by, "Notification rule removed.");
        }
        Ok(removed)
    }

    /// The deliveries given up, newest first, of one rule or all, at most `limit`.
    pub async fn dead(&self, rule: Option<String>, limit: u32) -> Result<Vec<NotifyDead>, StoreError> {
        self.db.given_up(rule, limit).await
    }

    /// Puts a given-up delivery back in its rule's queue, its tries counted afresh (a digest
    /// rule's goes in its next digest). `Ok(false)`: no such dead delivery.
    pub async fn retry(&self, rule: &str, message_id: &str, by: &str) -> Result<bool, StoreError> {
        let again = self.db.requeue(rule, message_id).await?;
        if again {
            tracing::info!(rule, message = message_id, by, "Notification given up before is sent again.");
        }
        Ok(again)
    }

    fn announce(&self, suffix: &str, body: serde_json::Value) -> Option<Outgoing> {
        Outgoing::free_form(&self.root, &self.sender, suffix, body).ok()
    }
}
