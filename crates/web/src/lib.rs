//! The HTTP edge of `patchbay serve` (axum): the JSON API, the event stream,
//! the admin actions and the dashboard, so that out-of-process commands
//! (`patchbay publish`, `patchbay tail`, shell scripts with curl) and people
//! in a browser talk to the daemon.
//!
//! Routes: `GET /healthz` (alive), `GET /readyz` (bus and store answer); `POST /api/v1/publish`; `GET /api/v1/stream`
//! (server-sent events: a `ready` event, then `message` events whose id is the
//! log position, from `Last-Event-ID` or `after`, keep-alives every 15 s);
//! `GET /api/v1/messages[/{id}]`; `GET /api/v1/logs/{job}`;
//! `GET /api/v1/results`; the series read model `GET /api/v1/series`,
//! `/api/v1/series/{id}` and `/api/v1/series/{id}/mbox` (over the typed
//! [`dashboard::Pages`] port and [`dashboard::SeriesFilter`]); and the admin
//! actions, behind a bearer token of `http.admin_tokens` (401 without a valid
//! one, 403 when none is configured): `POST /api/v1/results/{id}/waive`,
//! `/api/v1/jobs/{job}/rerun`, `/api/v1/reports/{series}/{version}/resend`,
//! `/api/v1/reload` (422 when the file does not load), and the notification rules
//! (`GET`/`POST /api/v1/notify/rules`, `DELETE /api/v1/notify/rules/{name}`, 409 for a name
//! taken or a rule of the config file) with the deliveries given up (`GET /api/v1/notify/dead`,
//! `POST /api/v1/notify/dead/{rule}/{message}/retry`) over the [`Notifications`] port. All of it is described
//! in `src/openapi.json`, served at `/api/openapi.json` with this deployment's
//! root and roles filled in ([`openapi_document`]); a unit test checks every
//! route is in it, and `scripts/openapi-check` holds the server to it.
//!
//! Handlers hold an `Arc<dyn Bus>` and an `Arc<dyn MessageLog>`; they know no
//! backend, no store and no runner. The store is reached through ports the
//! binary implements ([`TestLogs`], [`TestResults`], [`MessageHistory`],
//! [`TestJobs`], [`ConfigReload`], [`Notifications`], [`dashboard::Pages`]). Every error under
//! `/api/` is the same JSON shape, `{"error": "..."}` ([`AppError`]), with a
//! status that says whose fault it was: 400 bad input, 404 unknown path or
//! target, 405 wrong method, 503 the bus or store unavailable.
//!
//! Publishing over HTTP: the daemon seals with its own key under the service
//! name the client gives, never one of [`RESERVED_SERVICES`] (any case), and
//! only topics outside the roles' categories. The request must be JSON (415),
//! must not come from a web page (an `Origin` or `Sec-Fetch-Site` that
//! `http.allowed_origins` does not list: 403), and needs a token from every
//! peer, because any page open in a browser here reaches loopback: an admin
//! token from anywhere, or this host's publish token from loopback
//! (`http.loopback_without_token` restores token-free loopback). A loopback
//! request carrying `Forwarded`, `X-Forwarded-For` or `X-Real-IP` counts as
//! remote. [`outgoing`] is shared with `patchbay publish`'s store fallback.
//!
//! [`limits`]: hyper is driven directly for a header read timeout and a header
//! size bound; at the connection cap the longest-idle connection is closed
//! (`patchbay-listen`). [`dashboard`]: server-rendered HTML (`/`,
//! `/series/{id}`, `/mails/{id}/raw`, `/live` from 50 positions back, 500
//! with a topic filter, `/logs/{job}`, `/runners`); durations through
//! `patchbay_verdict::duration`, so the matrix and the report agree.

use patchbay_model::messages;
use patchbay_model::view::{self, ResultRow, ResultsQuery};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt as _};
use patchbay_bus::{Authority, Bus, BusError, LogEntry, MessageLog, Outgoing, TopicPattern};
use patchbay_model::{Envelope, SchemaRef, Sender, TopicRoot};
use serde::Deserialize;
use tokio::sync::watch;

pub mod dashboard;
pub mod limits;
pub mod trends;

/// What the HTTP handlers share.
pub struct AppState {
    /// Where publishes go.
    pub bus: Arc<dyn Bus>,
    /// What streams read.
    pub log: Arc<dyn MessageLog>,
    /// The deployment's topic root, to resolve topic suffixes.
    pub root: TopicRoot,
    /// Which sender may publish which topics: an HTTP publisher is never a service.
    pub authority: Authority,
    /// Who may publish over HTTP, and from which web origins.
    pub publishing: Publishing,
    /// The sender instance stamped on messages published over HTTP.
    pub instance: String,
    /// Becomes true when the server shuts down, so open streams end and shutdown completes.
    pub closing: watch::Receiver<bool>,
    /// Full test logs, when this server keeps them.
    pub logs: Option<Arc<dyn TestLogs>>,
    /// Test results, when this server keeps them.
    pub results: Option<Arc<dyn TestResults>>,
    /// Admin bearer tokens by name; admin actions are refused without one.
    pub admin_tokens: std::collections::BTreeMap<String, String>,
    /// Every bus message, queryable, when this server keeps the history.
    pub history: Option<Arc<dyn MessageHistory>>,
    /// The dashboard's data, when this server keeps the store.
    pub pages: Option<Arc<dyn dashboard::Pages>>,
    /// Test jobs, for the re-run action.
    pub jobs: Option<Arc<dyn TestJobs>>,
    /// The config reload, for the admin action (`POST /api/v1/reload`).
    pub reload: Option<Arc<dyn ConfigReload>>,
    /// What `/readyz` checks besides this server answering.
    pub ready: Option<Arc<dyn Readiness>>,
    /// The notification rules and their deliveries given up, for admins.
    pub notify: Option<Arc<dyn Notifications>>,
}

/// Where admins manage the notification rules (the binary implements it over the notify crate).
pub trait Notifications: Send + Sync + 'static {
    /// Every rule in force, with its deliveries counted.
    fn rules(&self) -> Answer<'_, Vec<view::NotifyRule>>;
    /// Adds a rule written as `[[notify]]` is (JSON) on behalf of `by`: `Bad` when it is wrong,
    /// `Conflict` when its name is taken.
    fn add(&self, rule: serde_json::Value, by: String) -> Answer<'_, view::NotifyRule>;
    /// Removes an API rule on behalf of `by`; `Ok(false)` when there is none of that name.
    fn remove(&self, name: String, by: String) -> Answer<'_, bool>;
    /// The deliveries given up, newest first, of `rule` or all.
    fn dead(&self, rule: Option<String>, limit: u32) -> Answer<'_, Vec<view::NotifyDead>>;
    /// Sends a given-up delivery again on behalf of `by`; `Ok(false)` when there is no such one.
    fn retry(&self, rule: String, message_id: String, by: String) -> Answer<'_, bool>;
}

/// What this process depends on, checked for `/readyz` (the binary implements it over the
/// bus and the store).
pub trait Readiness: Send + Sync + 'static {
    /// Each dependency by name (`bus`, `store`) with what is wrong with it, `None` when it is fine.
    fn check(&self) -> ReadyFuture<'_>;
}

/// The checks of [`Readiness::check`].
pub type ReadyFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Vec<(String, Option<String>)>> + Send + 'a>>;

/// Where the running config is read again (the binary implements it in `serve`).
pub trait ConfigReload: Send + Sync + 'static {
    /// Re-reads the config file on behalf of `by`: what applied and what needs a restart, or
    /// (`QueryError::Bad`) why the file was not taken, the running config staying in place.
    fn reload(&self, by: String) -> Answer<'_, view::Reloaded>;
}

/// Where test jobs are run again (the binary implements it over the history and the bus).
pub trait TestJobs: Send + Sync + 'static {
    /// Queues job `job` again on behalf of `by`; `Ok(None)` when no such job was ever queued.
    fn rerun(&self, job: String, by: String) -> Answer<'_, Option<view::Requeued>>;
    /// Sends the report of a series version again on behalf of `by`; `Ok(None)` when it
    /// has no verdict yet.
    fn resend(&self, series: i64, version: u32, by: String) -> Answer<'_, Option<view::Requeued>>;
}

/// One page of the message history, or why not.
pub type PageFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<messages::Page, QueryError>> + Send + 'a>>;
/// Results, or why not.
pub type ResultsFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Vec<ResultRow>, QueryError>> + Send + 'a>>;
/// One stored message, exactly as received (`None`: no such message), or why not.
pub type MessageFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, QueryError>> + Send + 'a>>;

/// Where the message history is queried (the binary implements it over the store).
pub trait MessageHistory: Send + Sync + 'static {
    /// One page of the messages `q` asks for (`GET /api/v1/messages`).
    fn query(&self, q: messages::Query) -> PageFuture<'_>;
    /// One message by id.
    fn message(&self, id: String) -> MessageFuture<'_>;
}

/// Why a query could not be answered.
#[derive(Debug)]
pub enum QueryError {
    /// The request is wrong (400), with why.
    Bad(String),
    /// The store failed (503).
    Unavailable(String),
    /// The request clashes with what exists (409), with why.
    Conflict(String),
}

/// An admin action's typed answer, or why not.
pub type Answer<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, QueryError>> + Send + 'a>>;

/// Where test results are queried and waived (the binary implements it over the store).
pub trait TestResults: Send + Sync + 'static {
    /// The results `q` asks for (`GET /api/v1/results`), newest first.
    fn query(&self, q: ResultsQuery) -> ResultsFuture<'_>;
    /// Waives result `id` with `comment` on behalf of `by`: the `ci.result.waived` it published,
    /// `Ok(None)` when there is no such result.
    fn waive(&self, id: i64, comment: String, by: String) -> Answer<'_, Option<patchbay_model::ResultWaived>>;
}

/// Compares without an early exit, so the time taken says nothing about a token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The name of the admin whose bearer token the request carries.
fn admin(st: &AppState, headers: &HeaderMap) -> Result<String, AppError> {
    if st.admin_tokens.is_empty() {
        return Err(AppError { status: StatusCode::FORBIDDEN, message: "admin actions are off: no http.admin_tokens configured".into() });
    }
    admin_named(&st.admin_tokens, headers)
}

/// The name of the token the request carries, among `tokens`.
fn admin_named(tokens: &std::collections::BTreeMap<String, String>, headers: &HeaderMap) -> Result<String, AppError> {
    let given =
        headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    tokens
        .iter()
        .find(|(_, token)| same(token, given))
        .map(|(name, _)| name.clone())
        .ok_or(AppError { status: StatusCode::UNAUTHORIZED, message: "a valid admin bearer token is required".into() })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaiveRequest {
    comment: String,
}

/// `POST /api/v1/results/{id}/waive` with `{"comment": "…"}` and `Authorization: Bearer <token>`.
async fn waive_result(
    State(st): State<Arc<AppState>>,
    path: PathParams,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<patchbay_model::ResultWaived>, AppError> {
    let id: i64 = path.id("id")?;
    let by = admin(&st, &headers)?;
    let req: WaiveRequest = serde_json::from_slice(&body).map_err(|e| AppError::bad(format!("body: {e}")))?;
    if req.comment.trim().is_empty() {
        return Err(AppError::bad("comment: say why the result is waived"));
    }
    let Some(results) = &st.results else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server keeps no results".into() });
    };
    match results.waive(id, req.comment, by).await {
        Ok(None) => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no result {id}") }),
        Ok(Some(w)) => Ok(Json(w)),
        Err(e) => Err(query_error(e)),
    }
}

/// A job's whole log and whether all of it has arrived (`None`: nothing stored), or why not.
pub type LogFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Option<(String, bool)>, String>> + Send + 'a>>;

/// Where full test logs are read from (the binary implements it over the store).
pub trait TestLogs: Send + Sync + 'static {
    /// Reads one job's log.
    fn get(&self, job: String) -> LogFuture<'_>;
}

/// The router, built apart from any socket so tests can call it directly.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/logs/{job}", get(test_log))
        .route("/api/v1/results", get(test_results))
        .route("/api/v1/results/{id}/waive", post(waive_result))
        .route("/api/v1/messages", get(messages))
        .route("/api/v1/messages/{id}", get(message))
        .route("/api/v1/jobs/{job}/rerun", post(rerun_job))
        .route("/api/v1/reports/{series}/{version}/resend", post(resend_report))
        .route("/api/v1/reload", post(reload_config))
        .route("/api/v1/notify/rules", get(notify_rules).post(notify_add))
        .route("/api/v1/notify/rules/{name}", axum::routing::delete(notify_remove))
        .route("/api/v1/notify/dead", get(notify_dead))
        .route("/api/v1/notify/dead/{rule}/{message}/retry", post(notify_retry))
        .route("/", get(page_series_list))
        .route("/series/{id}", get(page_series))
        .route("/series/{id}/mbox", get(page_series_mbox))
        .route("/api/v1/series", get(api_series_list))
        .route("/api/v1/series/{id}", get(api_series))
        .route("/api/v1/series/{id}/mbox", get(api_series_mbox))
        .route("/mails/{id}/raw", get(page_raw_mail))
        .route("/live", get(page_live))
        .route("/logs/{job}", get(page_log))
        .route("/runners", get(page_runners))
        .route("/tests", get(page_tests))
        .route("/sources", get(page_sources))
        .route("/trends", get(page_trends))
        .route("/api/v1/trends", get(api_trends))
        .route("/assets/uplot.min.js", get(asset_uplot_js))
        .route("/assets/uplot.min.css", get(asset_uplot_css))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(state)
}

/// The probes alone (`/healthz`, `/readyz` over `ready`, `/metrics`), for a process that runs
/// one service other than the web edge (`patchbay run <service> --http`): what an operator's
/// orchestrator and Prometheus ask of every process. Anything else is the JSON 404.
pub fn probes(ready: Option<Arc<dyn Readiness>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(move || async move { ready_answer(ready.as_ref()).await }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            AppError { status: StatusCode::NOT_FOUND, message: "this process serves /healthz, /readyz and /metrics only".into() }
        })
}

/// Serves [`probes`] on `listener` until `shutdown` resolves.
pub async fn serve_probes(
    listener: tokio::net::TcpListener,
    ready: Option<Arc<dyn Readiness>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    limits::serve(listener, probes(ready), limits::Limits::new(64), shutdown).await
}

/// Serves `app` on `listener` within `limits` (connections, header and body sizes, request
/// timeout; see [`limits`]) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    limits: limits::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Requests carry the peer's address as `ConnectInfo`, as with `axum::serve`: it decides
    // whether a publish needs a token (see `may_publish`).
    limits::serve(listener, app(state), limits, shutdown).await
}

/// `GET /api/v1/logs/{job}`: a test's whole log as plain text; `X-Patchbay-Log-Complete`
/// says whether every chunk has arrived.
async fn test_log(State(st): State<Arc<AppState>>, path: PathParams) -> Result<Response, AppError> {
    let job = path.text("job");
    let Some(logs) = &st.logs else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server keeps no test logs".into() });
    };
    match logs.get(job.clone()).await {
        Err(e) => Err(AppError { status: StatusCode::SERVICE_UNAVAILABLE, message: e }),
        Ok(None) => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no log for job {job}") }),
        Ok(Some((text, complete))) => Ok((
            [
                (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (axum::http::HeaderName::from_static("x-patchbay-log-complete"), if complete { "true" } else { "false" }),
            ],
            text,
        )
            .into_response()),
    }
}

/// `GET /api/v1/results?series=&version=&test=&arch=&outcome=&latest=&before=&limit=`.
async fn test_results(
    State(st): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, AppError> {
    let Some(results) = &st.results else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server keeps no results".into() });
    };
    let q = ResultsQuery::from_params(&params).map_err(AppError::bad)?;
    let rows = results.query(q).await.map_err(query_error)?;
    Ok(Json(serde_json::json!({ "results": rows })))
}

fn json_text(text: impl Into<axum::body::Body>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], text.into()).into_response()
}

fn query_error(e: QueryError) -> AppError {
    match e {
        QueryError::Bad(m) => AppError::bad(m),
        QueryError::Unavailable(m) => AppError { status: StatusCode::SERVICE_UNAVAILABLE, message: m },
        QueryError::Conflict(m) => AppError { status: StatusCode::CONFLICT, message: m },
    }
}

/// `GET /api/v1/messages?topic=&category=&series=&project=&sender=&start=&end=&delta=&contains=&not_*=&seq_from=&seq_to=&page=&rows_per_page=&order=`.
async fn messages(
    State(st): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let Some(history) = &st.history else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server keeps no message history".into() });
    };
    let q = messages::Query::from_params(&params, patchbay_model::Timestamp::now().as_micros()).map_err(AppError::bad)?;
    let page = history.query(q.clone()).await.map_err(query_error)?;
    Ok(json_text(messages::page_json(&q, &page)))
}

/// `GET /api/v1/messages/{id}`: one message, byte for byte as stored (its signature verifies).
async fn message(State(st): State<Arc<AppState>>, path: PathParams) -> Result<Response, AppError> {
    let id = path.text("id");
    let Some(history) = &st.history else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server keeps no message history".into() });
    };
    match history.message(id.clone()).await.map_err(query_error)? {
        Some(wire) => Ok(json_text(wire)),
        None => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no message {id}") }),
    }
}

/// `POST /api/v1/jobs/{job}/rerun` with `Authorization: Bearer <token>`: the job is queued again.
async fn rerun_job(State(st): State<Arc<AppState>>, path: PathParams, headers: HeaderMap) -> Result<Json<view::Requeued>, AppError> {
    let job = path.text("job");
    let by = admin(&st, &headers)?;
    let Some(jobs) = &st.jobs else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server runs no test jobs".into() });
    };
    match jobs.rerun(job.clone(), by).await.map_err(query_error)? {
        None => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no job {job}") }),
        Some(q) => Ok(Json(q)),
    }
}

/// `POST /api/v1/reports/{series}/{version}/resend` with `Authorization: Bearer <token>`.
async fn resend_report(State(st): State<Arc<AppState>>, path: PathParams, headers: HeaderMap) -> Result<Json<view::Requeued>, AppError> {
    let (series, version): (i64, u32) = (path.id("series")?, path.id("version")?);
    let by = admin(&st, &headers)?;
    let Some(jobs) = &st.jobs else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server sends no reports".into() });
    };
    match jobs.resend(series, version, by).await.map_err(query_error)? {
        None => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("series {series} v{version} has no verdict") }),
        Some(q) => Ok(Json(q)),
    }
}

/// `POST /api/v1/reload` with `Authorization: Bearer <token>`: the config file read again, as
/// `SIGHUP` does; 422 with why when it does not load (the running config stays).
async fn reload_config(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<view::Reloaded>, AppError> {
    let by = admin(&st, &headers)?;
    let Some(reload) = &st.reload else {
        return Err(AppError { status: StatusCode::NOT_FOUND, message: "this server has no config to reload".into() });
    };
    match reload.reload(by).await {
        Ok(r) => Ok(Json(r)),
        Err(QueryError::Bad(why)) => Err(AppError { status: StatusCode::UNPROCESSABLE_ENTITY, message: why }),
        Err(e) => Err(query_error(e)),
    }
}

/// The notifications' admin port, or 404 when this server runs none.
fn notifications<'a>(st: &'a AppState, headers: &HeaderMap) -> Result<(&'a Arc<dyn Notifications>, String), AppError> {
    let by = admin(st, headers)?;
    let notify =
        st.notify.as_ref().ok_or(AppError { status: StatusCode::NOT_FOUND, message: "this server sends no notifications".into() })?;
    Ok((notify, by))
}

/// `GET /api/v1/notify/rules` (admin): every rule in force, the config's and the API's.
async fn notify_rules(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<serde_json::Value>, AppError> {
    let (notify, _) = notifications(&st, &headers)?;
    let rules = notify.rules().await.map_err(query_error)?;
    Ok(Json(serde_json::json!({ "rules": rules })))
}

/// `POST /api/v1/notify/rules` (admin) with a rule written as `[[notify]]` is, in JSON: 201.
async fn notify_add(State(st): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, AppError> {
    let (notify, by) = notifications(&st, &headers)?;
    let rule: serde_json::Value = serde_json::from_slice(&body).map_err(|e| AppError::bad(format!("body: {e}")))?;
    let added = notify.add(rule, by).await.map_err(query_error)?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

/// `DELETE /api/v1/notify/rules/{name}` (admin): an API rule removed, with what it had left to send.
async fn notify_remove(State(st): State<Arc<AppState>>, path: PathParams, headers: HeaderMap) -> Result<Json<serde_json::Value>, AppError> {
    let name = path.text("name");
    let (notify, by) = notifications(&st, &headers)?;
    match notify.remove(name.clone(), by).await.map_err(query_error)? {
        true => Ok(Json(serde_json::json!({ "removed": name }))),
        false => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no notification rule {name}") }),
    }
}

/// `GET /api/v1/notify/dead?rule=&limit=` (admin): deliveries given up, newest first.
async fn notify_dead(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, AppError> {
    let (notify, _) = notifications(&st, &headers)?;
    let mut rule = None;
    let mut limit = 100u32;
    for (k, v) in params {
        match k.as_str() {
            "rule" => rule = Some(v),
            "limit" => {
                limit = v.parse().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| AppError::bad("limit: a number from 1 to 1000"))?
            }
            other => return Err(AppError::bad(format!("unknown parameter {other}"))),
        }
    }
    let dead = notify.dead(rule, limit).await.map_err(query_error)?;
    Ok(Json(serde_json::json!({ "dead": dead })))
}

/// `POST /api/v1/notify/dead/{rule}/{message}/retry` (admin): a given-up delivery sent again.
async fn notify_retry(State(st): State<Arc<AppState>>, path: PathParams, headers: HeaderMap) -> Result<Json<serde_json::Value>, AppError> {
    let (rule, message) = (path.text("rule"), path.text("message"));
    let (notify, by) = notifications(&st, &headers)?;
    match notify.retry(rule.clone(), message.clone(), by).await.map_err(query_error)? {
        true => Ok(Json(serde_json::json!({ "status": "queued", "rule": rule, "message_id": message }))),
        false => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no delivery of {message} given up for rule {rule}") }),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn html(status: StatusCode, page: String) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

fn html_error(status: StatusCode, message: &str) -> Response {
    html(status, dashboard::layout("Error", &format!("<h1>{}</h1><p>{}</p>", status.as_u16(), dashboard::esc(message))))
}

fn no_pages() -> Response {
    html_error(StatusCode::NOT_FOUND, "this server keeps no series")
}

/// `GET /`: the series list, newest first, with search and paging.
async fn page_series_list(
    State(st): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let Some(pages) = &st.pages else { return no_pages() };
    let value = |name: &str| params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let search = value("q").filter(|q| !q.trim().is_empty());
    let page = match value("page").filter(|p| !p.is_empty()).map(|p| p.parse::<u32>()) {
        None => 1,
        Some(Ok(p)) => p.max(1),
        Some(Err(_)) => return html_error(StatusCode::BAD_REQUEST, "page: not a page number"),
    };
    let filter = dashboard::SeriesFilter { search: search.clone(), ..Default::default() };
    match pages.series_list(filter, page, 50).await {
        Ok((rows, total)) => html(StatusCode::OK, dashboard::series_list(&rows, total, search.as_deref(), page, 50, now_secs())),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// `GET /series/{id}`.
async fn page_series(State(st): State<Arc<AppState>>, path: PathParams) -> Response {
    let id: i64 = match path.id("id") {
        Ok(id) => id,
        Err(e) => return html_error(e.status, &e.message),
    };
    let Some(pages) = &st.pages else { return no_pages() };
    match pages.series(id).await {
        Ok(Some(v)) => html(StatusCode::OK, dashboard::series_page(&v, now_secs())),
        Ok(None) => html_error(StatusCode::NOT_FOUND, &format!("no series {id}")),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

fn raw(content_type: &'static str, bytes: Vec<u8>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, content_type)], bytes).into_response()
}

/// `GET /series/{id}/mbox`: the patches, ready for `git am`.
async fn page_series_mbox(State(st): State<Arc<AppState>>, path: PathParams) -> Response {
    let id: i64 = match path.id("id") {
        Ok(id) => id,
        Err(e) => return html_error(e.status, &e.message),
    };
    let Some(pages) = &st.pages else { return no_pages() };
    match pages.series_mbox(id).await {
        Ok(Some(m)) => raw("application/mbox", m),
        Ok(None) => html_error(StatusCode::NOT_FOUND, &format!("no series {id}")),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// The store's series read model, or a 404 saying this server keeps none.
fn series_pages(st: &AppState) -> Result<&Arc<dyn dashboard::Pages>, AppError> {
    st.pages.as_ref().ok_or(AppError { status: StatusCode::NOT_FOUND, message: "this server keeps no series".into() })
}

/// The states a series can be in, as `GET /api/v1/series?state=` takes them.
const SERIES_STATES: &[&str] = &["new", "complete", "incomplete", "superseded", "merged"];

/// An integer query parameter within `min..=max`, or a 400 naming it.
fn int_param<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(name: &str, value: &str, min: T, max: T) -> Result<T, AppError> {
    match value.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(AppError::bad(format!("{name}: {value:?} is not an integer from {min} to {max}"))),
    }
}

/// A text query parameter of 1 to 255 characters, or a 400 naming it.
fn text_param(name: &str, value: String) -> Result<String, AppError> {
    match value.chars().count() {
        1..=255 => Ok(value),
        _ => Err(AppError::bad(format!("{name}: must be 1 to 255 characters"))),
    }
}

/// `GET /api/v1/series`: series newest first, narrowed by project, state, submitter, version,
/// since (unix seconds) and `q` (title or submitter contains), a page at a time.
async fn api_series_list(
    State(st): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, AppError> {
    let pages = series_pages(&st)?;
    let mut filter = dashboard::SeriesFilter::default();
    let (mut page, mut per_page) = (1u32, 50u32);
    for (name, value) in params {
        match name.as_str() {
            "project" => filter.project = Some(text_param(&name, value)?),
            "submitter" => filter.submitter = Some(text_param(&name, value)?),
            "q" => filter.search = Some(text_param(&name, value)?),
            "state" if SERIES_STATES.contains(&value.as_str()) => filter.state = Some(value),
            "state" => return Err(AppError::bad(format!("state: {value:?} is not one of {}", SERIES_STATES.join(", ")))),
            "version" => filter.version = Some(int_param(&name, &value, 1, u32::MAX)?),
            "since" => filter.since = Some(int_param(&name, &value, 0, i64::MAX)?),
            "page" => page = int_param(&name, &value, 1, 1_000_000)?,
            "per_page" => per_page = int_param(&name, &value, 1, 500)?,
            _ => return Err(AppError::bad(format!("unknown parameter {name:?}"))),
        }
    }
    let (rows, total) =
        pages.series_list(filter, page, per_page).await.map_err(|e| AppError { status: StatusCode::SERVICE_UNAVAILABLE, message: e })?;
    Ok(Json(serde_json::json!({ "series": rows, "total": total, "page": page, "per_page": per_page })))
}

/// `GET /api/v1/series/{id}`: one series with its versions, patches (slots and Message-IDs),
/// latest results, verdict and report, and where its page and mbox are.
async fn api_series(State(st): State<Arc<AppState>>, path: PathParams) -> Result<Json<serde_json::Value>, AppError> {
    let id: i64 = path.id("id")?;
    let pages = series_pages(&st)?;
    let view = pages.series(id).await.map_err(|e| AppError { status: StatusCode::SERVICE_UNAVAILABLE, message: e })?;
    let Some(v) = view else { return Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no series {id}") }) };
    Ok(Json(serde_json::json!({
        "series": v.series,
        "versions": v.versions.iter().map(|(id, version)| serde_json::json!({ "id": id, "version": version })).collect::<Vec<_>>(),
        "patches": v.patches,
        "results": v.cells,
        "verdict_detail": v.verdict_detail,
        "report": v.report.map(|(state, detail)| serde_json::json!({ "state": state, "detail": detail })),
        "links": { "page": format!("/series/{id}"), "mbox": format!("/api/v1/series/{id}/mbox") },
    })))
}

/// `GET /api/v1/series/{id}/mbox`: the series as `git am` takes it (the patches in order, no cover).
async fn api_series_mbox(State(st): State<Arc<AppState>>, path: PathParams) -> Result<Response, AppError> {
    let id: i64 = path.id("id")?;
    let pages = series_pages(&st)?;
    match pages.series_mbox(id).await {
        Ok(Some(m)) => Ok(raw("application/mbox", m)),
        Ok(None) => Err(AppError { status: StatusCode::NOT_FOUND, message: format!("no series {id}") }),
        Err(e) => Err(AppError { status: StatusCode::SERVICE_UNAVAILABLE, message: e }),
    }
}

/// `GET /mails/{id}/raw`: one mail exactly as received.
async fn page_raw_mail(State(st): State<Arc<AppState>>, path: PathParams) -> Response {
    let id: i64 = match path.id("id") {
        Ok(id) => id,
        Err(e) => return html_error(e.status, &e.message),
    };
    let Some(pages) = &st.pages else { return no_pages() };
    match pages.raw_mail(id).await {
        // text/plain, never HTML: mail is the sender's text.
        Ok(Some(m)) => raw("text/plain; charset=utf-8", m),
        Ok(None) => html_error(StatusCode::NOT_FOUND, &format!("no mail {id}")),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// How far back `/live` starts, in log positions: the last 50 messages.
const LIVE_BACKLOG: u64 = 50;
/// With a topic filter, the matching messages among the last 500 (the page keeps 500).
const LIVE_BACKLOG_FILTERED: u64 = 500;

/// `GET /live`: the live stream page, opening on the recent past.
async fn page_live(State(st): State<Arc<AppState>>, axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>) -> Response {
    let filter = params.into_iter().rev().find(|(k, _)| k == "topic").map(|(_, t)| t).filter(|t| !t.trim().is_empty());
    if let Some(f) = &filter
        && let Err(e) = TopicPattern::parse(f)
    {
        return html_error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let back = if filter.is_some() { LIVE_BACKLOG_FILTERED } else { LIVE_BACKLOG };
    let start = match st.log.head().await {
        Ok(head) => head.saturating_sub(back),
        Err(e) => return html_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    html(StatusCode::OK, dashboard::live_page(filter.as_deref(), start))
}

/// `GET /logs/{job}`: the log viewer.
async fn page_log(State(st): State<Arc<AppState>>, path: PathParams) -> Response {
    let job = path.text("job");
    let Some(logs) = &st.logs else { return html_error(StatusCode::NOT_FOUND, "this server keeps no test logs") };
    match logs.get(job.clone()).await {
        Ok(Some((text, complete))) => {
            let pieces = dashboard::log_page_pieces(&job, text, complete).map(Ok::<_, Infallible>);
            (
                [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                axum::body::Body::from_stream(futures_util::stream::iter(pieces)),
            )
                .into_response()
        }
        Ok(None) => html_error(StatusCode::NOT_FOUND, &format!("no log for job {job}")),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// `GET /runners`.
async fn page_runners(State(st): State<Arc<AppState>>) -> Response {
    let Some(pages) = &st.pages else { return no_pages() };
    match pages.runners().await {
        Ok(rows) => html(StatusCode::OK, dashboard::runners_page(&rows, now_secs())),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// The trends of `weeks` weeks ending now, from the store.
async fn trends_of(st: &AppState, weeks: u32) -> Result<trends::Trends, AppError> {
    let pages = series_pages(st)?;
    let now = now_secs();
    let (rows, tests) =
        pages.trend_data(trends::since(now, weeks)).await.map_err(|e| AppError { status: StatusCode::SERVICE_UNAVAILABLE, message: e })?;
    Ok(trends::figures(&rows, &tests, now, weeks))
}

/// Weeks the trends cover unless `weeks` says otherwise.
const TREND_WEEKS: u32 = 26;

/// The `weeks` parameter (1 to 104); any other is a 400 naming it.
fn trend_weeks(params: &[(String, String)]) -> Result<u32, AppError> {
    let mut weeks = TREND_WEEKS;
    for (name, value) in params {
        match name.as_str() {
            "weeks" => weeks = int_param(name, value, 1, 104)?,
            _ => return Err(AppError::bad(format!("unknown parameter {name:?}"))),
        }
    }
    Ok(weeks)
}

/// `GET /api/v1/trends`: the trends page's figures.
async fn api_trends(
    State(st): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Result<Json<trends::Trends>, AppError> {
    Ok(Json(trends_of(&st, trend_weeks(&params)?).await?))
}

/// `GET /trends`.
async fn page_trends(
    State(st): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    if st.pages.is_none() {
        return no_pages();
    }
    let weeks = match trend_weeks(&params) {
        Ok(w) => w,
        Err(e) => return html_error(StatusCode::BAD_REQUEST, &e.message),
    };
    match trends_of(&st, weeks).await {
        Ok(t) => html(StatusCode::OK, dashboard::trends_page(&t)),
        Err(e) => html_error(e.status, &e.message),
    }
}

/// The chart library, served with the pages (a day's cache).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(axum::http::header::CONTENT_TYPE, content_type), (axum::http::header::CACHE_CONTROL, "public, max-age=86400")], body).into_response()
}

/// `GET /assets/uplot.min.js`.
async fn asset_uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../assets/uplot/uPlot.iife.min.js"))
}

/// `GET /assets/uplot.min.css`.
async fn asset_uplot_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("../assets/uplot/uPlot.min.css"))
}

/// `GET /sources`.
async fn page_sources(State(st): State<Arc<AppState>>) -> Response {
    let Some(pages) = &st.pages else { return no_pages() };
    match pages.sources().await {
        Ok(rows) => html(StatusCode::OK, dashboard::sources_page(&rows, now_secs())),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// `GET /tests`.
async fn page_tests(State(st): State<Arc<AppState>>) -> Response {
    let Some(pages) = &st.pages else { return no_pages() };
    match pages.tests().await {
        Ok(rows) => html(StatusCode::OK, dashboard::tests_page(&rows)),
        Err(e) => html_error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// Path parameters by name, taken raw: a bad one answers the documented JSON 400 naming it
/// (a page, an HTML 400), never axum's plain-text rejection.
struct PathParams(Vec<(String, String)>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParams {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(params)) => Ok(PathParams(params)),
            Err(e) => Err(AppError { status: e.status(), message: e.body_text() }),
        }
    }
}

impl PathParams {
    /// The parameter as given (the router matched it, so it is there).
    fn text(&self, name: &str) -> String {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// An id or a version: a whole number from 1 to the type's maximum, as the document says.
    fn id<T: std::str::FromStr + PartialOrd + From<u8>>(&self, name: &str) -> Result<T, AppError> {
        let text = self.text(name);
        text.parse::<T>()
            .ok()
            .filter(|n| *n >= T::from(1))
            .ok_or_else(|| AppError::bad(format!("{name}: {text:?} is not a whole number from 1")))
    }
}

/// No route: the documented JSON 404 under `/api/` and for `/healthz`, an HTML page elsewhere.
async fn no_route(uri: axum::http::Uri) -> Response {
    if is_api(uri.path()) {
        return AppError { status: StatusCode::NOT_FOUND, message: format!("no such endpoint: {}", uri.path()) }.into_response();
    }
    html_error(StatusCode::NOT_FOUND, "no such page")
}

/// A route without this method: 405 (axum adds `Allow`), as JSON under `/api/`.
async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let message = format!("{method} is not allowed on {}", uri.path());
    if is_api(uri.path()) {
        return AppError { status: StatusCode::METHOD_NOT_ALLOWED, message }.into_response();
    }
    html_error(StatusCode::METHOD_NOT_ALLOWED, &message)
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/api" || path == "/healthz" || path == "/readyz"
}

/// One error shape for every endpoint.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    message: String,
}

impl AppError {
    fn bad(message: impl Into<String>) -> Self {
        AppError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AppError {}

impl From<BusError> for AppError {
    fn from(e: BusError) -> Self {
        let status = match e {
            BusError::Invalid(_) => StatusCode::BAD_REQUEST,
            BusError::Unavailable(_) | BusError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        };
        AppError { status, message: e.to_string() }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// `GET /metrics`: the process's metrics, for a Prometheus server to scrape.
async fn metrics() -> Response {
    ([(axum::http::header::CONTENT_TYPE, patchbay_metrics::CONTENT_TYPE)], patchbay_metrics::metrics().encode()).into_response()
}

/// `GET /readyz`: 200 when every dependency answers (within 5 s), else 503; each one named.
async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    ready_answer(st.ready.as_ref()).await
}

/// The `/readyz` answer for `ready`'s checks.
async fn ready_answer(ready: Option<&Arc<dyn Readiness>>) -> Response {
    let checks = match ready {
        Some(r) => tokio::time::timeout(std::time::Duration::from_secs(5), r.check())
            .await
            .unwrap_or_else(|_| vec![("checks".to_string(), Some("no answer within 5 s".to_string()))]),
        None => Vec::new(),
    };
    let ready = checks.iter().all(|(_, e)| e.is_none());
    let named: serde_json::Map<String, serde_json::Value> =
        checks.into_iter().map(|(k, e)| (k, serde_json::Value::String(e.unwrap_or_else(|| "ok".into())))).collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "status": if ready { "ready" } else { "not ready" }, "checks": named }))).into_response()
}

/// The OpenAPI description of every endpoint here (`crates/web/src/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`: [`openapi_document`] for this deployment.
async fn openapi(State(st): State<Arc<AppState>>) -> Response {
    json_text(openapi_document(&st.authority).to_string())
}

/// The OpenAPI document as this deployment answers it: which publish topics and service names
/// are accepted depends on the topic root and the configured roles, so those two schemas are
/// made here ([`OPENAPI`] holds them for the default root and roles, checked by a test).
pub fn openapi_document(authority: &Authority) -> serde_json::Value {
    let mut doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let schemas = &mut doc["components"]["schemas"];
    schemas["PublishTopic"] = publish_topic_schema(authority.root());
    schemas["ServiceName"] = service_name_schema(authority);
    doc
}

/// What `TopicRoot::resolve` accepts: a suffix of three or more words not starting with the
/// root (the whole topic at most 255 bytes), or a topic under the root.
fn publish_topic_schema(root: &TopicRoot) -> serde_json::Value {
    const WORD: &str = "[A-Za-z0-9_-]+";
    let root = root.as_str();
    let escaped = root.replace('.', "\\.");
    serde_json::json!({
        "description": format!("A full topic under this deployment's root ({root} here), or its <service>.<object>[.<subobject>].<event> suffix; at most 255 bytes in full."),
        "oneOf": [
            { "type": "string", "pattern": format!("^{WORD}(?:\\.{WORD}){{2,}}$"), "maxLength": 254 - root.len(), "not": { "pattern": format!("^{escaped}\\.") } },
            { "type": "string", "pattern": format!("^{escaped}(?:\\.{WORD}){{3,}}$"), "maxLength": 255 }
        ]
    })
}

/// The service names a publish may not use ([`RESERVED_SERVICES`] and every role), any case.
fn service_name_schema(authority: &Authority) -> serde_json::Value {
    let mut names: Vec<String> = RESERVED_SERVICES.iter().map(|s| s.to_ascii_lowercase()).collect();
    for (role, _) in authority.roles() {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(role)) {
            names.push(role.to_ascii_lowercase());
        }
    }
    let any_case = |name: &String| -> String {
        name.chars().map(|c| if c.is_ascii_alphabetic() { format!("[{}{}]", c.to_ascii_uppercase(), c) } else { c.to_string() }).collect()
    };
    let alternatives: Vec<String> = names.iter().map(any_case).collect();
    serde_json::json!({
        "description": "patchbay's own services, compared without case (and any role the config adds).",
        "type": "string",
        "pattern": format!("^(?:{})$", alternatives.join("|"))
    })
}

/// The body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// A full topic under this deployment's root, or its `<service>.<object>.<event>` suffix.
    pub topic: String,
    /// A JSON object; checked against its type when the topic is one patchbay defines.
    pub body: serde_json::Value,
    /// The sender's service name (default `shell`).
    #[serde(default)]
    pub service: Option<String>,
    /// The schema to stamp on topics patchbay does not define (default `patchbay.json` v1).
    #[serde(default, deserialize_with = "requested_schema")]
    pub schema: Option<SchemaRef>,
}

/// A publish request's `schema`, or `null`. Its version is any JSON number without a fraction
/// from 0 to `u32::MAX`: to JSON Schema, and so to the OpenAPI document, `3.0` is an integer.
fn requested_schema<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SchemaRef>, D::Error> {
    use serde::de::Error as _;
    let Some(value) = Option::<serde_json::Value>::deserialize(d)? else { return Ok(None) };
    let object = value.as_object().ok_or_else(|| D::Error::custom("schema: expected an object with name and version"))?;
    let name = object.get("name").and_then(|n| n.as_str()).ok_or_else(|| D::Error::custom("schema.name: expected a string"))?;
    let version = object
        .get("version")
        .and_then(|v| {
            v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX)).map(|f| f as u64))
        })
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| D::Error::custom("schema.version: expected a whole number from 0 to 4294967295"))?;
    Ok(Some(SchemaRef { name: name.to_string(), version }))
}

/// The senders patchbay's own services use: nobody else publishes under their names, or
/// their sequence numbers would collide and consumers would take a shell's message for theirs.
pub const RESERVED_SERVICES: &[&str] = &patchbay_model::ServiceName::NAMES;

/// Checks a publish request and turns it into an outgoing message: a shell's sender and a
/// topic outside every service's categories (`authority`), or a 400/403 saying why not.
pub fn outgoing(authority: &Authority, instance: &str, req: PublishRequest) -> Result<Outgoing, AppError> {
    let root = authority.root();
    let topic = root.resolve(&req.topic).map_err(|e| AppError::bad(e.to_string()))?;
    if !req.body.is_object() {
        return Err(AppError::bad("body must be a JSON object"));
    }
    let service = req.service.unwrap_or_else(|| "shell".into());
    if service.is_empty() || service.len() > 64 || !service.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')) {
        return Err(AppError::bad(format!("service {service:?} must be 1-64 ASCII letters, digits, '_' or '-'")));
    }
    if RESERVED_SERVICES.iter().any(|r| r.eq_ignore_ascii_case(&service)) || authority.is_role(&service) {
        return Err(AppError::bad(format!(
            "service {service:?} is one of patchbay's own; messages under its name come from that service alone (its sequence numbers, the RabbitMQ relay)"
        )));
    }
    let sender = Sender::new(service, instance);
    authority.check(&sender, &topic).map_err(|e| AppError { status: StatusCode::FORBIDDEN, message: e.to_string() })?;
    let suffix = root.suffix_of(topic.as_str()).unwrap_or_default();
    let schema = match patchbay_model::check_body(suffix, &req.body) {
        Some(checked) => checked.map_err(AppError::bad)?,
        None => req.schema.unwrap_or_else(patchbay_model::free_form_schema),
    };
    Ok(Outgoing { sender, topic, schema, body: req.body })
}

/// Who may publish over HTTP. The daemon signs what it accepts with its own key, so a publish
/// is an act of the daemon: every peer needs a token, this host included, because any web page
/// open in a browser here can reach loopback.
#[derive(Clone, Debug, Default)]
pub struct Publishing {
    /// A peer on this host publishes without a token (`http.loopback_without_token`).
    pub loopback_without_token: bool,
    /// Web origins whose pages may publish (`http.allowed_origins`); any other `Origin` is refused.
    pub allowed_origins: Vec<String>,
    /// Tokens that may publish from this host only, by name: `serve`'s own, in the data
    /// directory, which `patchbay publish` reads (whoever reads it could write the store anyway).
    pub local_tokens: std::collections::BTreeMap<String, String>,
}

fn forbidden(message: String) -> AppError {
    AppError { status: StatusCode::FORBIDDEN, message }
}

/// Whether this request may publish: not from a web page of a foreign origin, and with a token
/// (an admin's from anywhere, a local one from this host) unless the operator lets this host
/// publish without. No peer address means an in-process caller.
fn may_publish(
    access: &Publishing,
    admin_tokens: &std::collections::BTreeMap<String, String>,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), AppError> {
    // A browser names the page's origin; a page elsewhere must never publish here (a text/plain
    // POST needs no preflight). Fetch metadata catches browsers that omit Origin.
    let origin = headers.get(axum::http::header::ORIGIN).map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let listed = origin.as_deref().is_some_and(|o| access.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
    if let Some(origin) = &origin
        && !listed
    {
        return Err(forbidden(format!("publishing from a web page of origin {origin} is refused (http.allowed_origins)")));
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).unwrap_or("none");
    if site != "none" && !listed {
        return Err(forbidden(format!("publishing from a web page (Sec-Fetch-Site: {site}) is refused (http.allowed_origins)")));
    }
    // Behind a reverse proxy on this host every peer is loopback: a forwarded request is
    // treated as coming from elsewhere.
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|h| headers.contains_key(*h));
    let local = match peer {
        None => return Ok(()),
        Some(p) => p.ip().to_canonical().is_loopback() && !forwarded,
    };
    if local && access.loopback_without_token {
        return Ok(());
    }
    if local && admin_named(&access.local_tokens, headers).is_ok() {
        return Ok(());
    }
    if admin_tokens.is_empty() {
        let whence = match peer {
            Some(p) if local => format!("this host ({})", p.ip()),
            Some(p) => format!("another host ({})", p.ip()),
            None => "here".into(),
        };
        let hint = if local { "; `patchbay publish` sends the data directory's local token" } else { "" };
        return Err(forbidden(format!("publishing from {whence} needs an admin bearer token; no http.admin_tokens are configured{hint}")));
    }
    admin_named(admin_tokens, headers).map(|_| ())
}

/// `POST /api/v1/publish`: `application/json` only, so a plain form or `text/plain` POST from a
/// web page never gets as far as the body.
async fn publish(
    State(st): State<Arc<AppState>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Envelope>, AppError> {
    may_publish(&st.publishing, &st.admin_tokens, peer.map(|p| p.0.0), &headers)?;
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(AppError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "a publish request is JSON: Content-Type: application/json".into(),
        });
    }
    let req: PublishRequest = serde_json::from_slice(&body).map_err(|e| AppError::bad(format!("bad publish request: {e}")))?;
    let out = outgoing(&st.authority, &st.instance, req)?;
    let mut sealed = st.bus.publish(vec![out]).await?;
    let env = sealed.pop().ok_or_else(|| AppError::from(BusError::Unavailable("nothing sealed".into())))?;
    tracing::debug!(id = %env.id, topic = %env.topic, "Published over HTTP.");
    Ok(Json(env))
}

/// Query of `GET /api/v1/stream`: `topic` (repeatable pattern) and `after` (a position).
struct StreamQuery {
    patterns: Vec<TopicPattern>,
    after: Option<u64>,
}

fn parse_stream_query(q: Option<&str>) -> Result<StreamQuery, AppError> {
    let mut sq = StreamQuery { patterns: Vec::new(), after: None };
    // form_urlencoded (the WHATWG parser axum's own Query uses) decodes; a broken escape stays
    // literal and then fails the pattern or the number, which names it.
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "topic" => sq.patterns.push(TopicPattern::parse(&v).map_err(|e| AppError::bad(e.to_string()))?),
            "after" => sq.after = Some(v.parse().map_err(|_| AppError::bad(format!("after={v:?} is not a position")))?),
            other => return Err(AppError::bad(format!("unknown query parameter {other:?}; use topic and after"))),
        }
    }
    Ok(sq)
}

struct Cursor {
    st: Arc<AppState>,
    position: u64,
    patterns: Vec<TopicPattern>,
    buffer: VecDeque<LogEntry>,
    closing: watch::Receiver<bool>,
}

impl Cursor {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            while let Some(entry) = self.buffer.pop_front() {
                self.position = entry.position;
                if self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches_str(&entry.topic)) {
                    // Wire bytes are compact JSON (no raw newlines), exactly as stored and signed.
                    let data = String::from_utf8_lossy(&entry.wire).into_owned();
                    return Some(Event::default().id(entry.position.to_string()).event("message").data(data));
                }
            }
            if *self.closing.borrow() {
                return None;
            }
            match self.st.log.read_after(self.position, 256).await {
                Ok(entries) if !entries.is_empty() => self.buffer.extend(entries),
                Ok(_) => {
                    tokio::select! {
                        () = self.st.log.wait_after(self.position, Duration::from_secs(15)) => {}
                        _ = self.closing.changed() => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Stream read failed; closing the stream so the client resumes.");
                    return None;
                }
            }
        }
    }
}

async fn stream(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let query = parse_stream_query(q.as_deref())?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| AppError::bad("Last-Event-ID is not a position"))?,
        ),
        None => None,
    };
    let position = match resume.or(query.after) {
        Some(p) => p,
        None => st.log.head().await?,
    };
    let cursor = Cursor { closing: st.closing.clone(), st, position, patterns: query.patterns, buffer: VecDeque::new() };
    // A first event carries the start position as its id, so a client that loses the
    // connection before any message arrives still resumes from where it started.
    let ready = Event::default().id(position.to_string()).event("ready").data(format!("{{\"position\":{position}}}"));
    let events = futures_util::stream::once(async move { Ok(ready) })
        .chain(futures_util::stream::unfold(cursor, |mut c| async move { c.next_event().await.map(|e| (Ok(e), c)) }));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().unwrap();
        let source = include_str!("lib.rs");
        let mut routes: Vec<&str> = source
            .split(".route(\"")
            .skip(1)
            .filter_map(|r| r.split('"').next())
            .filter(|r| r.starts_with("/api") || ["/healthz", "/readyz", "/metrics"].contains(r))
            .collect();
        // `probes` serves the same three as `app`.
        routes.sort_unstable();
        routes.dedup();
        assert!(routes.len() >= 9, "{routes:?}");
        for r in &routes {
            assert!(paths.contains_key(*r), "route {r} is missing from openapi.json");
        }
        assert_eq!(paths.len(), routes.len(), "openapi.json describes a route that does not exist");
    }

    #[test]
    fn the_served_document_is_the_file_for_the_default_root_and_roles() {
        let file: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let served = openapi_document(&Authority::new(TopicRoot::new("patchbay", "dev").unwrap()));
        for name in ["PublishTopic", "ServiceName"] {
            let at = format!("/components/schemas/{name}");
            assert_eq!(served.pointer(&at), file.pointer(&at), "openapi.json's {name} is stale");
        }
        assert!(served == file, "only those two schemas depend on the deployment");
        let other = openapi_document(&Authority::new(TopicRoot::new("org.example", "prod").unwrap()));
        let topic = &other["components"]["schemas"]["PublishTopic"]["oneOf"];
        assert_eq!(topic[0]["maxLength"], 254 - "org.example.prod".len());
        assert_eq!(topic[1]["pattern"], "^org\\.example\\.prod(?:\\.[A-Za-z0-9_-]+){3,}$");
    }

    #[test]
    fn stream_queries_parse() {
        let q = parse_stream_query(Some("topic=patchbay.dev.%23&topic=a.*.c&after=42")).unwrap();
        assert_eq!(q.patterns.len(), 2);
        assert_eq!(q.patterns[0].as_str(), "patchbay.dev.#");
        assert_eq!(q.after, Some(42));
        assert!(parse_stream_query(Some("topic=a.%2")).is_err());
        assert!(parse_stream_query(Some("topic=a.%zz")).is_err());
        assert!(parse_stream_query(Some("after=x")).is_err());
        assert!(parse_stream_query(Some("since=1")).is_err());
        assert!(parse_stream_query(None).unwrap().patterns.is_empty());
    }

    #[test]
    fn every_peer_needs_a_token_and_web_pages_never_publish() {
        let none = std::collections::BTreeMap::new();
        let tokens: std::collections::BTreeMap<String, String> = [("ops".to_string(), "s3cret-token-0123".to_string())].into();
        let local: std::collections::BTreeMap<String, String> = [("local".to_string(), "local-token-456789".to_string())].into();
        let strict = Publishing { local_tokens: local.clone(), ..Default::default() };
        let open = Publishing { loopback_without_token: true, ..Default::default() };
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
            h
        };
        let (v4, v6, mapped) = ("127.0.0.1:5000".parse().ok(), "[::1]:5000".parse().ok(), "[::ffff:127.0.0.1]:5000".parse().ok());
        let remote: Option<std::net::SocketAddr> = "192.0.2.7:5000".parse().ok();
        let status = |r: Result<(), AppError>| r.unwrap_err().status;
        for here in [v4, v6, mapped] {
            assert_eq!(status(may_publish(&strict, &none, here, &HeaderMap::new())), StatusCode::FORBIDDEN, "{here:?}");
            assert!(may_publish(&strict, &none, here, &with("local-token-456789")).is_ok(), "{here:?}");
            assert!(may_publish(&strict, &tokens, here, &with("s3cret-token-0123")).is_ok(), "{here:?}");
            assert_eq!(status(may_publish(&strict, &tokens, here, &with("wrong"))), StatusCode::UNAUTHORIZED);
            assert!(may_publish(&open, &none, here, &HeaderMap::new()).is_ok(), "the operator turned tokens off for loopback");
        }
        assert!(may_publish(&strict, &none, None, &HeaderMap::new()).is_ok(), "in-process callers");
        // The local token is for this host only; another host needs an admin's.
        assert_eq!(status(may_publish(&strict, &none, remote, &with("local-token-456789"))), StatusCode::FORBIDDEN);
        assert_eq!(status(may_publish(&open, &none, remote, &HeaderMap::new())), StatusCode::FORBIDDEN);
        assert_eq!(status(may_publish(&strict, &tokens, remote, &with("local-token-456789"))), StatusCode::UNAUTHORIZED);
        assert!(may_publish(&strict, &tokens, remote, &with("s3cret-token-0123")).is_ok());
        // A reverse proxy on this host: loopback, but forwarded for someone else.
        let mut proxied = with("local-token-456789");
        proxied.insert("x-forwarded-for", "198.51.100.4".parse().unwrap());
        assert_eq!(status(may_publish(&strict, &tokens, v4, &proxied)), StatusCode::UNAUTHORIZED);
        assert_eq!(status(may_publish(&open, &tokens, v4, &proxied)), StatusCode::UNAUTHORIZED);
        proxied.insert(axum::http::header::AUTHORIZATION, "Bearer s3cret-token-0123".parse().unwrap());
        assert!(may_publish(&strict, &tokens, v4, &proxied).is_ok());
        // Web pages: a foreign Origin or any cross-site fetch is refused, token or not.
        let mut page = with("s3cret-token-0123");
        page.insert(axum::http::header::ORIGIN, "http://evil.example".parse().unwrap());
        assert_eq!(status(may_publish(&open, &tokens, v4, &page)), StatusCode::FORBIDDEN);
        let mut fetch = with("s3cret-token-0123");
        fetch.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert_eq!(status(may_publish(&open, &tokens, v4, &fetch)), StatusCode::FORBIDDEN);
        fetch.insert("sec-fetch-site", "none".parse().unwrap());
        assert!(may_publish(&open, &tokens, v4, &fetch).is_ok(), "typed into the address bar: no site");
        let listed = Publishing { allowed_origins: vec!["https://ci.example.org".into()], ..open.clone() };
        let mut ours = with("s3cret-token-0123");
        ours.insert(axum::http::header::ORIGIN, "https://ci.example.org".parse().unwrap());
        ours.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(may_publish(&listed, &tokens, remote, &ours).is_ok());
        assert_eq!(status(may_publish(&listed, &tokens, v4, &page)), StatusCode::FORBIDDEN);
    }

    #[test]
    fn publish_requests_are_checked() {
        let root = Authority::new(TopicRoot::new("patchbay", "dev").unwrap());
        let req = |v: serde_json::Value| serde_json::from_value::<PublishRequest>(v).unwrap();
        let ok = outgoing(&root, "main", req(serde_json::json!({"topic": "shell.message.logged", "body": {"message": "hi"}}))).unwrap();
        assert_eq!(ok.schema.name, "patchbay.log");
        assert_eq!(ok.topic.as_str(), "patchbay.dev.shell.message.logged");
        assert_eq!(ok.sender, Sender::new("shell", "main"));
        let free =
            outgoing(&root, "main", req(serde_json::json!({"topic": "patchbay.dev.my.thing.done", "body": {"x": 1}, "service": "cron"})))
                .unwrap();
        assert_eq!(free.schema.name, "patchbay.json");
        for bad in [
            serde_json::json!({"topic": "shell.message.logged", "body": {"msg": "hi"}}),
            serde_json::json!({"topic": "x.y", "body": {}}),
            serde_json::json!({"topic": "a.b.c", "body": [1]}),
            serde_json::json!({"topic": "a.b.c", "body": {}, "service": "no spaces"}),
            serde_json::json!({"topic": "a.b.c", "body": {}, "service": "aggregator"}),
            serde_json::json!({"topic": "a.b.c", "body": {}, "service": "RUNNER"}),
            serde_json::json!({"topic": "a.b.c", "body": {}, "service": "Admin"}),
        ] {
            assert_eq!(outgoing(&root, "main", req(bad.clone())).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
        // A shell never speaks in a service's categories, whatever it calls itself.
        for forged in [
            serde_json::json!({"topic": "ci.test.finished", "body": {}}),
            serde_json::json!({"topic": "patchbay.dev.ci.job.build.any.queued", "body": {}, "service": "cron"}),
            serde_json::json!({"topic": "ci.series.verdict", "body": {}}),
            serde_json::json!({"topic": "mail.message.received", "body": {}}),
        ] {
            let e = outgoing(&root, "main", req(forged.clone())).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{forged}");
            assert!(e.message.contains("only the"), "{}", e.message);
        }
    }
}
