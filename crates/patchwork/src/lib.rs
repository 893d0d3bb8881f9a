//! Patchwork checks: where netdev, DPDK and b4 users already look. For a project that names a
//! Patchwork instance (`[project.patchwork]`: `url`, `token`), every recorded result
//! (`ci.result.recorded`) is posted as a check on every patch of its series, through
//! Patchwork's REST API (1.4): the patch is found by its Message-ID
//! (`GET /api/1.4/patches/?msgid=`), the check created with `POST
//! /api/1.4/patches/{id}/checks/` (state, context `patchbay-<test>-<arch>`, the log page as
//! target URL, a one-line description), authenticated by `Authorization: Token`.
//!
//! Each result is posted once per patch: a row in `patchwork_checks` (result, Message-ID)
//! commits with the `report.check.posted` announcement after Patchwork said 201, so a
//! redelivery posts nothing new; a crash between the two posts that check again, which
//! Patchwork shows as the same state in the same context. A re-run is a new result, so a new
//! check in the same context, the one Patchwork shows. A failure being run again (`retrying`)
//! posts nothing: its re-run will. A Patchwork that is down, or that has not seen the patch
//! yet, is retried with backoff (the runtime's); a refusal (4xx) is not, and is announced on
//! `report.check.failed` with Patchwork's words.
//!
//! Table (SQLite migration 12, PostgreSQL 8): `patchwork_checks`, on either store (`db.rs`).
//! This crate knows the stores, HTTP as a client and the runtime; not the config file (it
//! owns the shape of `[project.patchwork]`, [`PatchworkSettings`]), runners or the report.

mod db;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::{Outgoing, Publisher};
use patchbay_model::{ANY_ARCH, Envelope, Outcome, ResultRecorded};
use patchbay_runtime::{BodyHandler, HandlerError};
use patchbay_store::{EmbeddedBus, StoreError};
use patchbay_store_pg::PgStore;
use serde::Deserialize;

use crate::db::ChecksDb;

/// The topic suffix of a check posted (body `patchbay.json` v1: `result`, `series`, `patch`
/// (its Message-ID), `patchwork_id`, `context`, `state`); within the reporter's role.
pub const POSTED_TOPIC: &str = "report.check.posted";

/// The topic suffix of a check Patchwork refused (body `patchbay.json` v1: `result`, `series`,
/// `patch`, `context`, `reason`).
pub const FAILED_TOPIC: &str = "report.check.failed";

/// Deliveries of a result for which Patchwork has not found a patch before the check is given
/// up (with the runtime's backoff, capped at a minute, about half an hour).
pub const PATCH_WAIT_ATTEMPTS: u32 = 40;

/// A project's Patchwork instance (`[project.patchwork]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchworkSettings {
    /// The instance's base URL (`https://patchwork.kernel.org`).
    pub url: String,
    /// An API token of a user allowed to create checks (Patchwork: a maintainer of the project).
    pub token: String,
    /// The Patchwork project's link name or id (`netdevbpf`): a patch cross-posted to several
    /// lists is in several projects, and the check belongs on this one's. Unset: the first found.
    #[serde(default)]
    pub project: Option<String>,
}

impl PatchworkSettings {
    /// Whether the settings can work; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return Err(("url", format!("{:?} must start with https:// or http://", self.url)));
        }
        if self.token.trim().is_empty() || self.token.contains(['\r', '\n']) {
            return Err(("token", "must be a Patchwork API token (one line)".into()));
        }
        Ok(())
    }
}

/// The check context of a test on an arch: `patchbay-<test>-<arch>`, in the characters
/// Patchwork allows (`[-a-zA-Z0-9_]`).
pub fn context(test: &str, arch: &str) -> String {
    let raw = format!("patchbay-{test}-{arch}");
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(255).collect()
}

/// Patchwork's state for a result: a pass (flaky or not) is `success`, a failure the base
/// shows too `warning`, a failure or error `fail`, anything else (INFO: already merged)
/// `warning`.
pub fn state(r: &ResultRecorded) -> &'static str {
    match &r.outcome {
        Outcome::Passed => "success",
        o if o.fails() && r.pre_existing => "warning",
        o if o.fails() => "fail",
        _ => "warning",
    }
}

/// The check's one-line description.
pub fn description(r: &ResultRecorded) -> String {
    let what = if r.arch == ANY_ARCH { r.test.clone() } else { format!("{} on {}", r.test, r.arch) };
    let mut d = format!("{what}: {}", r.outcome);
    if let Some(reason) = r.reason.as_ref().filter(|x| !x.as_str().eq_ignore_ascii_case(r.outcome.as_str())) {
        d.push_str(&format!(" ({reason})"));
    }
    if r.flaky {
        d.push_str(", passed when run again (flaky)");
    }
    if r.pre_existing {
        d.push_str(", as the base alone does (pre-existing)");
    }
    d
}

/// Why a check was not posted.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// Down, slow, 5xx, or the patch is not there yet: try again later.
    #[error("{0}")]
    Later(String),
    /// Patchwork refused the request (4xx): trying again would not help.
    #[error("{0}")]
    Refused(String),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The Patchwork checks service (see the crate comment).
pub struct Checks {
    db: Arc<dyn ChecksDb>,
    publisher: Publisher,
    client: reqwest::Client,
    projects: HashMap<String, PatchworkSettings>,
    link_base: Option<String>,
}

impl Checks {
    /// Posts for `projects` (by project name), recording in the embedded store; `publisher`
    /// shapes the announcements (sender `reporter`); logs are linked as `<link_base>/logs/<job>`.
    pub fn new(bus: EmbeddedBus, publisher: Publisher, projects: HashMap<String, PatchworkSettings>, link_base: Option<String>) -> Self {
        Self::with_db(Arc::new(bus), publisher, projects, link_base)
    }

    /// The same, recording in a shared PostgreSQL store (any number of instances).
    pub fn on_postgres(
        store: PgStore,
        publisher: Publisher,
        projects: HashMap<String, PatchworkSettings>,
        link_base: Option<String>,
    ) -> Self {
        Self::with_db(Arc::new(store), publisher, projects, link_base)
    }

    fn with_db(
        db: Arc<dyn ChecksDb>,
        publisher: Publisher,
        projects: HashMap<String, PatchworkSettings>,
        link_base: Option<String>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("patchbay/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with rustls and no system configuration builds");
        Checks { db, publisher, client, projects, link_base }
    }

    fn api(pw: &PatchworkSettings, path: &str) -> String {
        format!("{}/api/1.4/{path}", pw.url.trim_end_matches('/'))
    }

    /// Patchwork's id of the patch with this Message-ID.
    async fn patch_id(&self, pw: &PatchworkSettings, message_id: &str) -> Result<i64, PostError> {
        let bare = message_id.trim().trim_start_matches('<').trim_end_matches('>');
        let mut query = vec![("msgid", bare)];
        if let Some(project) = &pw.project {
            query.push(("project", project.as_str()));
        }
        let answer = self
            .client
            .get(Self::api(pw, "patches/"))
            .query(&query)
            .header("Authorization", format!("Token {}", pw.token))
            .send()
            .await
            .map_err(|e| PostError::Later(format!("Patchwork at {}: {e}", pw.url)))?;
        let status = answer.status();
        if !status.is_success() {
            let text = answer.text().await.unwrap_or_default();
            let said = format!("Patchwork answered {status} to the patch lookup: {}", text.trim());
            return Err(if status.is_server_error() { PostError::Later(said) } else { PostError::Refused(said) });
        }
        let found: serde_json::Value = answer.json().await.map_err(|e| PostError::Later(format!("Patchwork's patch list: {e}")))?;
        found
            .as_array()
            .and_then(|a| a.iter().find_map(|p| p["id"].as_i64()))
            .ok_or_else(|| PostError::Later(format!("Patchwork has no patch {message_id} yet")))
    }

    /// Creates the check on patch `id`.
    async fn post(&self, pw: &PatchworkSettings, id: i64, body: &serde_json::Value) -> Result<(), PostError> {
        let answer = self
            .client
            .post(Self::api(pw, &format!("patches/{id}/checks/")))
            .header("Authorization", format!("Token {}", pw.token))
            .json(body)
            .send()
            .await
            .map_err(|e| PostError::Later(format!("Patchwork at {}: {e}", pw.url)))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let said = format!("Patchwork answered {status} to the check: {}", answer.text().await.unwrap_or_default().trim());
        Err(if status.is_server_error() || status.as_u16() == 429 { PostError::Later(said) } else { PostError::Refused(said) })
    }

    fn announce(&self, suffix: &str, body: serde_json::Value) -> Result<Outgoing, HandlerError> {
        self.publisher.free_form(suffix, body).map_err(|e| HandlerError::Permanent(e.to_string()))
    }

    /// Posts `r` on every patch of its series that has not got it yet.
    async fn post_result(&self, pw: &PatchworkSettings, r: &ResultRecorded, attempt: u32) -> Result<(), HandlerError> {
        let patches = self.db.patches(r.series.id).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
        let context = context(&r.test, &r.arch);
        let target_url =
            self.link_base.as_deref().map(|b| format!("{}/logs/{}", b.trim_end_matches('/'), r.job)).filter(|u| u.len() <= 200);
        let body = serde_json::json!({
            "state": state(r),
            "target_url": target_url,
            "context": context,
            "description": description(r),
        });
        for message_id in patches {
            if self.db.posted(r.result, message_id.clone()).await.map_err(|e| HandlerError::Transient(e.to_string()))? {
                continue;
            }
            let posted = async {
                let id = self.patch_id(pw, &message_id).await?;
                self.post(pw, id, &body).await?;
                Ok::<i64, PostError>(id)
            };
            match posted.await {
                Ok(id) => {
                    let out = self.announce(
                        POSTED_TOPIC,
                        serde_json::json!({"result": r.result, "series": r.series, "patch": message_id, "patchwork_id": id, "context": context, "state": state(r)}),
                    )?;
                    self.db.record(r.result, message_id, id, out).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
                }
                Err(PostError::Later(why)) if attempt < PATCH_WAIT_ATTEMPTS || !why.contains("no patch") => {
                    tracing::info!(result = r.result, patch = %message_id, %why, "Patchwork check not posted yet; will retry.");
                    return Err(HandlerError::Transient(why));
                }
                Err(PostError::Store(e)) => return Err(HandlerError::Transient(e.to_string())),
                Err(PostError::Later(why) | PostError::Refused(why)) => {
                    tracing::warn!(result = r.result, patch = %message_id, %why, "Patchwork check given up.");
                    let out = self.announce(
                        FAILED_TOPIC,
                        serde_json::json!({"result": r.result, "series": r.series, "patch": message_id, "context": context, "reason": why}),
                    )?;
                    // Recorded as done (id 0), so a redelivery does not try it again.
                    self.db.record(r.result, message_id, 0, out).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BodyHandler<ResultRecorded> for Checks {
    async fn handle_body(&self, _envelope: &Envelope, r: ResultRecorded, attempt: u32) -> Result<(), HandlerError> {
        let Some(pw) = self.projects.get(&r.series.project) else { return Ok(()) };
        if r.retrying {
            return Ok(()); // Its re-run is the result to show.
        }
        self.post_result(pw, &r, attempt).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: &str) -> ResultRecorded {
        ResultRecorded {
            result: 1,
            job: "7-v1-build-x86_64".into(),
            series: patchbay_model::SeriesHead {
                id: 7,
                project: "net".into(),
                name: "x".into(),
                submitter: "a@b".into(),
                version: 1,
                total: 1,
            },
            test: "build".into(),
            arch: "x86_64".into(),
            outcome: outcome.into(),
            reason: None,
            duplicate: false,
            previous: None,
            retrying: false,
            flaky: false,
            pre_existing: false,
        }
    }

    #[test]
    fn results_become_patchwork_states_contexts_and_descriptions() {
        assert_eq!(context("build", "x86_64"), "patchbay-build-x86_64");
        assert_eq!(context("apply", "any"), "patchbay-apply-any");
        assert_eq!(context("a.b", "x/y"), "patchbay-a_b-x_y", "only what Patchwork allows");
        assert_eq!(state(&result("PASSED")), "success");
        assert_eq!(state(&result("FAILED")), "fail");
        assert_eq!(state(&result("ERROR")), "fail");
        assert_eq!(state(&ResultRecorded { pre_existing: true, ..result("FAILED") }), "warning");
        assert_eq!(state(&result("INFO")), "warning");
        let timeout = ResultRecorded { reason: Some("timeout".into()), ..result("FAILED") };
        assert_eq!(description(&timeout), "build on x86_64: FAILED (timeout)");
        assert_eq!(
            description(&ResultRecorded { flaky: true, ..result("PASSED") }),
            "build on x86_64: PASSED, passed when run again (flaky)"
        );
    }

    #[test]
    fn settings_name_what_is_wrong() {
        let ok = PatchworkSettings { url: "https://patchwork.kernel.org".into(), token: "abc".into(), project: None };
        assert!(ok.validate().is_ok());
        assert_eq!(PatchworkSettings { url: "patchwork.kernel.org".into(), ..ok.clone() }.validate().unwrap_err().0, "url");
        assert_eq!(PatchworkSettings { token: " ".into(), ..ok }.validate().unwrap_err().0, "token");
    }
}
