//! Notifications by rule, as Fedora's FMN did on fedmsg, kept on our own bus with nothing lost.
//! A rule (`[[notify]]`, [`rule`]) names a destination (an email address, or a webhook and its
//! secret), filters over the messages (topic patterns, project, submitter, outcome, verdict,
//! test) and a cadence (`now`, or an hourly, daily or weekly digest).
//!
//! [`Collector`] (a consumer of every message) keeps each matching message for each rule in
//! `notify_queue`, once by (rule, message id), in arrival order. [`Deliverer`] sends them:
//! - `now`: one by one, in order per rule (so per series); a failure is retried with backoff
//!   (2 s doubling, at most 5 min) before anything after it; after [`MAX_ATTEMPTS`] it is
//!   dead-lettered with the reason (state `dead`, and `notify.delivery.dead` on the bus for an
//!   admin), and the rest go on.
//! - a digest: when a period has ended, everything kept before its end goes out in one mail or
//!   POST, marked in the same transaction as the digest's row (`notify_digests`, by rule and
//!   period end). A digest due while patchbay was down goes out once when it is back,
//!   covering every period missed.
//!
//! Webhooks get a JSON POST of the signed envelope (a digest: `{"rule", "due", "events": [...]}`)
//! with `X-Patchbay-Event` (the topic, or `digest`), `X-Patchbay-Delivery` (stable per delivery:
//! receivers drop repeats) and `X-Patchbay-Signature-256: sha256=<hex HMAC-SHA256 of the
//! body>`. Mail goes through the reporter's transport (the outbox maildir, idempotent by name,
//! or SMTP): a delivery is `sending` before the first byte, and one found `sending` after a
//! restart over SMTP is not sent again (a second copy is worse than none).
//!
//! Rules come from the config and from admins over HTTP ([`Admin`]: add, list, remove, and the
//! deliveries given up, to read and send again), all in force through one [`Rules`].
//!
//! Tables (SQLite migrations 12 and 13, PostgreSQL 9): `notify_queue`, `notify_digests`,
//! `notify_rules`, on either store ([`Store`]). On PostgreSQL any number of processes collect
//! (each message kept once per rule by its key) and one delivers: the holder of an advisory
//! lock, the others standing by to take over when it goes. It knows the store, HTTP as a client and the
//! report's transports; not the config file (it owns `[[notify]]`'s shape, [`RawRule`]).

pub mod admin;
mod db;
pub mod rule;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use patchbay_bus::Outgoing;
use patchbay_model::{Envelope, Sender, TopicRoot};
use patchbay_report::Transport;
use patchbay_runtime::{Handler, HandlerError};
use patchbay_store::EmbeddedBus;

use crate::db::{DELIVERED, NotifyDb, RETRY, SENDING};
pub use admin::{Admin, AdminError, Rules};
pub use rule::{Cadence, Destination, RawRule, Rule};

/// How long a stop waits for the sends under way.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Deliveries of one notification before it is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 8;

/// The topic suffix on which a dead-lettered delivery is announced (body `patchbay.json` v1:
/// `rule`, `message_id`, `topic`, `error`, `attempts`).
pub const DEAD_TOPIC: &str = "notify.delivery.dead";

/// The store the notifications keep their state in.
#[derive(Clone)]
pub enum Store {
    /// The data directory's SQLite (`serve`, and `patchbay run notify` beside it).
    Embedded(EmbeddedBus),
    /// The shared PostgreSQL (`store.url`): any number of `patchbay run notify`, one delivering.
    Postgres(patchbay_store_pg::PgStore),
}

impl Store {
    fn db(self) -> Arc<dyn NotifyDb> {
        match self {
            Store::Embedded(bus) => Arc::new(bus),
            Store::Postgres(store) => Arc::new(store),
        }
    }
}

/// Keeps every message a rule matches, once.
pub struct Collector {
    db: Arc<dyn NotifyDb>,
    root: TopicRoot,
    rules: Rules,
}

impl Collector {
    /// A collector for `rules` over messages under `root`, keeping them in `bus`'s store.
    pub fn new(store: Store, root: TopicRoot, rules: Rules) -> Self {
        Collector { db: store.db(), root, rules }
    }
}

#[async_trait]
impl Handler for Collector {
    async fn handle(&self, env: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        let names: Vec<String> = self.rules.current().iter().filter(|r| r.matches(&self.root, env)).map(|r| r.name.clone()).collect();
        if names.is_empty() {
            return Ok(());
        }
        self.db.keep(names, env).await.map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

/// Sends what the collector kept (see the crate comment).
pub struct Deliverer {
    db: Arc<dyn NotifyDb>,
    rules: Rules,
    transport: Arc<Transport>,
    from: String,
    domain: String,
    client: reqwest::Client,
    sender: Sender,
    root: TopicRoot,
}

/// The HMAC-SHA256 of `body` under `secret`, as `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Why a delivery did not happen now.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Again(String),
    #[error("{0}")]
    Never(String),
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The delay before attempt `attempts + 1`.
fn backoff(attempts: u32) -> i64 {
    (2i64 << attempts.min(8)).min(300)
}

impl Deliverer {
    /// A deliverer for `rules`, mailing through `transport` as `from` (Message-IDs under
    /// `domain`); dead letters are announced as `sender` under `root`.
    pub fn new(store: Store, rules: Rules, transport: Transport, from: String, domain: String, sender: Sender, root: TopicRoot) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("patchbay/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with rustls and no system configuration builds");
        Deliverer { db: store.db(), rules, transport: Arc::new(transport), from, domain, client, sender, root }
    }

    /// Delivers until `shutdown` turns true: every second, what is due. Of several processes
    /// on one PostgreSQL, one delivers (the lead) and the others wait to take over.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let me = Arc::new(self);
        let mut lead: Option<Box<dyn db::Lead>> = None;
        let mut waiting_said = false;
        // Each rule's round on a task of its own: a receiver that hangs (up to the 30 s
        // timeout) holds up its own rule only.
        let mut busy: std::collections::HashMap<String, tokio::task::JoinHandle<()>> = std::collections::HashMap::new();
        loop {
            let lost = match &lead {
                None => true,
                Some(l) => l.lost().await,
            };
            if lost {
                // Whatever was under way stops with the lead: the next leader makes it again.
                busy.drain().for_each(|(_, task)| task.abort());
                lead = match me.db.lead().await {
                    Ok(l) => l,
                    Err(error) => {
                        tracing::warn!(%error, "Notifications: cannot reach the store to lead the deliveries; will try again.");
                        None
                    }
                };
                match &lead {
                    Some(_) => {
                        waiting_said = false;
                        if let Err(error) = me.taking_over().await {
                            // Sends left `sending` would be made again: lead only once they are settled.
                            tracing::warn!(%error, "Notifications: could not look at sends a stop interrupted; will try again.");
                            lead = None;
                        }
                    }
                    None if !waiting_said => {
                        tracing::info!("Notifications: another process delivers; this one stands by to take over.");
                        waiting_said = true;
                    }
                    None => {}
                }
            }
            busy.retain(|_, task| !task.is_finished());
            if lead.is_some() {
                for rule in me.rules.current().iter() {
                    if busy.contains_key(&rule.name) {
                        continue;
                    }
                    let (me, rule) = (me.clone(), rule.clone());
                    let name = rule.name.clone();
                    busy.insert(
                        name,
                        tokio::spawn(async move {
                            let done = match rule.cadence {
                                Cadence::Now => me.at_once(&rule).await,
                                cadence => me.digest(&rule, cadence).await,
                            };
                            if let Err(error) = done {
                                tracing::warn!(rule = %rule.name, %error, "Notifications: the store failed; will try again.");
                            }
                        }),
                    );
                }
            }
            let stopping = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => true,
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            if stopping {
                // Sends under way may finish (a mail the server is taking is not cut off); a
                // receiver that hangs is not waited for beyond the grace: what it had is
                // `sending`, made again after the restart under its delivery id.
                let deadline = tokio::time::Instant::now() + STOP_GRACE;
                for (_, task) in busy.drain() {
                    let abort = task.abort_handle();
                    if tokio::time::timeout_at(deadline, task).await.is_err() {
                        abort.abort();
                    }
                }
                return;
            }
        }
    }

    /// On taking the lead: what a stop (or a lost leader) left under way.
    async fn taking_over(&self) -> Result<(), patchbay_store::StoreError> {
        let smtp_rules: Vec<String> = match *self.transport {
            Transport::Smtp(_) => {
                self.rules.current().iter().filter(|r| matches!(r.destination, Destination::Email(_))).map(|r| r.name.clone()).collect()
            }
            Transport::Outbox(_) => Vec::new(),
        };
        self.db.abandon_smtp_sends(smtp_rules).await
    }

    /// Sends a rule's waiting messages at once, in order, up to the first that must wait.
    async fn at_once(&self, rule: &Rule) -> Result<(), patchbay_store::StoreError> {
        for row in self.db.pending(&rule.name, 100).await? {
            if row.next_at > now() {
                return Ok(()); // In order: nothing overtakes a message waiting for its retry.
            }
            let env = match Envelope::from_wire(&row.wire) {
                Ok(env) => env,
                Err(e) => {
                    // Stored by an older build and no longer read: set aside, the rest go on.
                    self.db.dead(&rule.name, &row.message_id, &format!("the stored message does not read: {e}"), None).await?;
                    continue;
                }
            };
            let delivery = format!("{}:{}", rule.name, row.message_id);
            self.db.set(SENDING, &rule.name, &row.message_id, 0, None).await?;
            let sent = match &rule.destination {
                Destination::Webhook { url, secret } => self.post(url, secret, env.topic.as_str(), &delivery, row.wire.clone()).await,
                Destination::Email(to) => {
                    let subject =
                        format!("[patchbay] {}: {}", rule.name, self.root.suffix_of(env.topic.as_str()).unwrap_or(env.topic.as_str()));
                    let text = format!("{}\n", line(&env));
                    self.mail(to, &delivery, &subject, &text).await
                }
            };
            match sent {
                Ok(()) => self.db.set(DELIVERED, &rule.name, &row.message_id, now(), None).await?,
                Err(SendError::Again(why)) if row.attempts + 1 < MAX_ATTEMPTS => {
                    tracing::info!(rule = %rule.name, message = %row.message_id, %why, "Notification not delivered; will retry.");
                    self.db.set(RETRY, &rule.name, &row.message_id, now() + backoff(row.attempts), Some(why)).await?;
                    return Ok(());
                }
                Err(SendError::Again(why) | SendError::Never(why)) => {
                    tracing::warn!(rule = %rule.name, message = %row.message_id, %why, "Notification dead-lettered.");
                    let body = serde_json::json!({"rule": rule.name, "message_id": row.message_id, "topic": env.topic.as_str(), "error": why, "attempts": row.attempts + 1});
                    self.db.dead(&rule.name, &row.message_id, &why, self.announce(body)).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends a rule's digest when a period has ended and something waits from before its end.
    async fn digest(&self, rule: &Rule, cadence: Cadence) -> Result<(), patchbay_store::StoreError> {
        let Some(due) = cadence.due(now()) else { return Ok(()) };
        let rows = self.db.waiting_before(&rule.name, due * 1_000_000).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let state = self.db.digest_state(&rule.name, due).await?;
        match &state {
            // Kept after this period's digest went out (a collector behind): the next period's.
            Some((s, _, _)) if s == "sent" || s == "dead" => return Ok(()),
            Some((_, next_at, _)) if *next_at > now() => return Ok(()),
            _ => {}
        }
        let attempts = state.as_ref().map_or(0, |(_, _, a)| *a);
        let envs: Vec<Envelope> = rows.iter().filter_map(|r| Envelope::from_wire(&r.wire).ok()).collect();
        let delivery = format!("{}:digest:{due}", rule.name);
        let sent = match &rule.destination {
            Destination::Webhook { url, secret } => {
                let events: Vec<serde_json::Value> =
                    rows.iter().filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.wire).ok()).collect();
                let body = serde_json::to_vec(&serde_json::json!({"rule": rule.name, "due": due, "events": events})).expect("JSON");
                self.post(url, secret, "digest", &delivery, body).await
            }
            Destination::Email(to) => {
                let subject = format!("[patchbay] {}: {} messages until {}", rule.name, envs.len(), patchbay_model::Timestamp::day_of(due));
                let mut text = format!("{} messages matched the rule {} before {} UTC:\n\n", envs.len(), rule.name, hms(due));
                for env in &envs {
                    text.push_str(&line(env));
                    text.push('\n');
                }
                self.mail(to, &delivery, &subject, &text).await
            }
        };
        let ids: Vec<String> = rows.iter().map(|r| r.message_id.clone()).collect();
        match sent {
            Ok(()) => self.db.digest_sent(&rule.name, due, ids).await,
            Err(SendError::Again(why)) if attempts + 1 < MAX_ATTEMPTS => {
                tracing::info!(rule = %rule.name, due, %why, "Digest not delivered; will retry.");
                self.db.digest_wait(&rule.name, due, now() + backoff(attempts), &why).await
            }
            Err(SendError::Again(why) | SendError::Never(why)) => {
                tracing::warn!(rule = %rule.name, due, %why, "Digest dead-lettered.");
                let body = serde_json::json!({"rule": rule.name, "message_id": delivery, "topic": "digest", "error": why, "attempts": 1});
                self.db.digest_dead(&rule.name, due, ids, &why, self.announce(body)).await
            }
        }
    }

    fn announce(&self, body: serde_json::Value) -> Option<Outgoing> {
        Outgoing::free_form(&self.root, &self.sender, DEAD_TOPIC, body).ok()
    }

    async fn post(&self, url: &str, secret: &str, event: &str, delivery: &str, body: Vec<u8>) -> Result<(), SendError> {
        let answer = self
            .client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Patchbay-Event", event)
            .header("X-Patchbay-Delivery", delivery)
            .header("X-Patchbay-Signature-256", signature(secret, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Again(format!("{url}: {e}")))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let said = format!("{url} answered {status}");
        // A receiver that is down or overloaded may come back; one that refuses will not.
        Err(if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            SendError::Again(said)
        } else {
            SendError::Never(said)
        })
    }

    async fn mail(&self, to: &str, delivery: &str, subject: &str, text: &str) -> Result<(), SendError> {
        let id = format!("<patchbay-notify-{}@{}>", delivery.replace([':', '<', '>', '@', '/'], "-"), self.domain);
        let mail = format!(
            "From: {}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {id}\r\nAuto-Submitted: auto-generated\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}",
            self.from,
            text.replace('\n', "\r\n")
        );
        match &*self.transport {
            Transport::Outbox(dir) => {
                let name = id.trim_matches(['<', '>']).replace(['/', '@'], "_");
                patchbay_report::deliver_to_maildir(dir, &name, mail.as_bytes())
                    .map(|_| ())
                    .map_err(|e| SendError::Again(format!("{}: {e}", dir.display())))
            }
            Transport::Smtp(smtp) => {
                let address = |m: &str| patchbay_report::compose::address(m).to_string();
                smtp.send(&address(&self.from), &[address(to)], mail.as_bytes()).await.map_err(|e| match e {
                    patchbay_report::smtp::SendError::Permanent(why) => SendError::Never(why),
                    // The server may have taken it: a second copy is worse than none.
                    patchbay_report::smtp::SendError::Ambiguous(why) => SendError::Never(format!("{why}; not resent")),
                    patchbay_report::smtp::SendError::Transient(why) => SendError::Again(why),
                })
            }
        }
    }
}

/// One line for a message in a mail: when, what, and its summary.
fn line(env: &Envelope) -> String {
    format!("{}  {}  {}", env.sent_at, env.topic, patchbay_model::summarize(&env.schema.name, &env.body))
}

/// `HH:MM:SS` of a day's `secs`.
fn hms(secs: i64) -> String {
    let s = secs.rem_euclid(86_400);
    format!("{} {:02}:{:02}:{:02}", patchbay_model::Timestamp::day_of(secs), s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!((backoff(0), backoff(1), backoff(20)), (2, 4, 300));
    }
}
