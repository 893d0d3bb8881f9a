//! `patchbay.toml`: one file for every command and service. Every error names
//! the file, the key and the reason, because the person reading it is an
//! operator with the file open in another window.
//!
//! Relative paths in the file are relative to the file's directory; with no
//! file at all, everything has a default and data lives in `./patchbay-data`.
//! This crate reads files but opens no sockets and starts nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use patchbay_bus::{Authority, TopicPattern};
use patchbay_model::{Section, TopicRoot};
use serde::Deserialize;

pub use patchbay_ci::{DispatchSettings, MergedSettings};
pub use patchbay_history::HistorySettings;
pub use patchbay_ingest::{DEFAULT_LMTP, IngestSettings};
pub use patchbay_report::ReportSettings;
pub use patchbay_results::ResultsSettings;
pub use patchbay_runner::{Isolation, RunnerSettings};

/// The default HTTP listener: loopback only.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8025";
/// The config file looked for in the current directory when none is named.
pub const DEFAULT_FILE: &str = "patchbay.toml";

/// A config error: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The OS's words are part of the message and not a
    /// `source`, so a printed error chain says them once.
    #[error("{path}: cannot read the config file: {error}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A key is unknown, missing, of the wrong type or has a bad value.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The config file, or `(defaults)` when there is none.
        path: String,
        /// The dotted key, such as `bus.prefix`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which bus implementation to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusBackend {
    /// SQLite in the data directory, shared with the store (the default).
    Embedded,
    /// RabbitMQ, named by `bus.url`.
    Amqp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    bus: RawBus,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    signing: RawSigning,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    ingest: IngestSettings,
    #[serde(default)]
    project: Vec<RawProject>,
    #[serde(default)]
    runner: RunnerSettings,
    #[serde(default)]
    results: ResultsSettings,
    #[serde(default)]
    report: ReportSettings,
    #[serde(default)]
    history: HistorySettings,
    #[serde(default)]
    dispatch: DispatchSettings,
    #[serde(default)]
    merged: MergedSettings,
    #[serde(default)]
    authority: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    source: Vec<RawSource>,
    #[serde(default)]
    notify: Vec<patchbay_notify::RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    list_id: String,
    repository: String,
    interval_secs: Option<u64>,
}

/// A public-inbox archive followed without an MTA (`[[source]]`): fetched on a schedule, what is
/// new imported by the commit marks `import` keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// The list its mails came through (recorded for each, as `inject --list-id` does).
    pub list_id: String,
    /// A local public-inbox directory (a bare epoch, or one with `git/N.git`) kept by someone
    /// else, or a URL `git fetch` reaches (one epoch), mirrored under `<data>/sources`.
    pub repository: String,
    /// Seconds between fetches (default 300).
    pub interval_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: String,
    #[serde(default)]
    list_ids: Vec<String>,
    tag: Option<String>,
    repository: Option<String>,
    branch: Option<String>,
    list_address: Option<String>,
    #[serde(default)]
    test: Vec<RawTest>,
    #[serde(default)]
    tree: Vec<RawTree>,
    #[serde(default)]
    report: patchbay_report::ProjectReport,
    #[serde(default)]
    maintainers: Vec<String>,
    patchwork: Option<patchbay_patchwork::PatchworkSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTree {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    repository: Option<String>,
    branch: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    script: String,
    arches: Option<Vec<String>>,
    time_limit_secs: Option<u64>,
    memory_mib: Option<u64>,
    processes: Option<u64>,
    required: Option<bool>,
    #[serde(default)]
    capabilities: Vec<String>,
    retries: Option<u32>,
    #[serde(default)]
    baseline: bool,
    #[serde(default)]
    per_patch: bool,
}

/// One entry of a project's tree map (`[[project.tree]]`): series carrying one of `tags` in
/// their subject brackets (`[PATCH net-next]`), else touching one of `paths`, are applied to
/// `branch` of `repository`, as netdev's CI picks the tree from the subject prefix.
#[derive(Clone, Debug)]
pub struct TreeConfig {
    /// Subject tags, lower-cased (`net`, `net-next`, `bpf-next`).
    pub tags: Vec<String>,
    /// Path prefixes a series' diffs touch (`drivers/net/`).
    pub paths: Vec<String>,
    /// The repository (default: the project's).
    pub repository: String,
    /// The branch.
    pub branch: String,
}

pub use patchbay_ci::MAX_RETRIES;

/// One test of a project (`[[project.test]]`).
#[derive(Clone, Debug)]
pub struct TestConfig {
    /// Name: a topic word; each test has its own job queue.
    pub name: String,
    /// Shell command run in the applied tree.
    pub script: String,
    /// Arches it runs on (default: `x86_64`); each is also a capability the runner needs.
    pub arches: Vec<String>,
    /// Wall-clock limit in seconds (default 3600).
    pub time_limit_secs: u64,
    /// Memory limit in MiB (default 4096).
    pub memory_mib: u64,
    /// Process limit (default 1024).
    pub processes: u64,
    /// Whether the verdict waits for it (default true).
    pub required: bool,
    /// Runner labels needed beyond the arch (`kvm`, `big`).
    pub capabilities: Vec<String>,
    /// Times a failure is run again, on another runner when one exists (default 0, at most 5):
    /// a pass on a re-run is PASSED, marked flaky.
    pub retries: u32,
    /// A failure is also checked on the base alone (cached per base and test): one the base
    /// shows too is pre-existing and does not fail the series.
    pub baseline: bool,
    /// The script runs after each patch in turn; the first patch after which it fails is named.
    pub per_patch: bool,
}

fn topic_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    backend: Option<BusBackend>,
    url: Option<String>,
    exchange: Option<String>,
    prefix: Option<String>,
    env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    max_connections: Option<usize>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    instance: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    key: Option<PathBuf>,
    trusted_keys: Option<PathBuf>,
    require_signatures: Option<bool>,
    #[serde(default)]
    allow: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    max_connections: Option<usize>,
    request_timeout_secs: Option<u64>,
    #[serde(default)]
    admin_tokens: BTreeMap<String, String>,
    loopback_without_token: Option<bool>,
    #[serde(default)]
    allowed_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// Where the embedded store, keys and lock files live.
    pub data_dir: PathBuf,
    /// Bus settings.
    pub bus: BusConfig,
    /// `[store]`: where the store is (the data directory's SQLite, or PostgreSQL).
    pub store: StoreConfig,
    /// This process's sender instance name (sequence numbers count per service and instance).
    pub instance: String,
    /// Signing and verification.
    pub signing: SigningConfig,
    /// Where `serve` listens and where the other commands find it.
    pub http_listen: SocketAddr,
    /// Admin actions over HTTP (waive): a bearer token per name (`[http] admin_tokens`).
    pub admin_tokens: BTreeMap<String, String>,
    /// Who may publish over HTTP besides token holders, and from which web origins.
    pub http_publish: PublishAccess,
    /// Which service may publish which topics (the default roles plus `[authority]`).
    pub authority: Authority,
    /// Log filter (tracing's env-filter syntax) and format.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// How many LMTP and HTTP connections `serve` holds, and for how long.
    pub connections: ConnectionLimits,
    /// The projects whose series are tested, in the order they are matched.
    pub projects: Vec<ProjectConfig>,
    /// `[ingest]`: mail ingestion and series assembly (owned by `patchbay-ingest`).
    pub ingest: IngestSettings,
    /// `[runner]`: how this machine runs test jobs (owned by `patchbay-runner`).
    pub runner: RunnerSettings,
    /// `[results]`: when verdicts are decided (owned by `patchbay-results`).
    pub results: ResultsSettings,
    /// `[report]`: how verdicts are mailed (owned by `patchbay-report`).
    pub report: ReportSettings,
    /// `[history]`: how long messages are kept (owned by `patchbay-history`).
    pub history: HistorySettings,
    /// `[dispatch]`: which series are tested (owned by `patchbay-ci`).
    pub dispatch: DispatchSettings,
    /// `[merged]`: how merged series are noticed (owned by `patchbay-ci`).
    pub merged: MergedSettings,
    /// `[[source]]`: public-inbox archives followed.
    pub sources: Vec<SourceConfig>,
    /// `[[notify]]`: notification rules.
    pub notify: Vec<patchbay_notify::Rule>,
}

/// One project (`[[project]]`): which mail belongs to it.
#[derive(Clone, Debug)]
pub struct ProjectConfig {
    /// Name, as used in topics' bodies, URLs and reports.
    pub name: String,
    /// List ids (`List-Id: <qemu-devel.nongnu.org>`) whose series belong to the project.
    pub list_ids: Vec<String>,
    /// A subject tag the series must carry as well (`[PATCH liburing]`), when set.
    pub tag: Option<String>,
    /// Git repository (URL or path) series are applied to; without it nothing is tested.
    pub repository: Option<String>,
    /// Branch applied to when a series names no usable base (default `main`).
    pub branch: String,
    /// Tests run on every complete series.
    pub tests: Vec<TestConfig>,
    /// The list's posting address, for reports (never taken from mail headers a sender controls).
    pub list_address: Option<String>,
    /// The tree map, first match wins (tags before paths); empty: always `repository` and `branch`.
    pub trees: Vec<TreeConfig>,
    /// Its own report rules (`[project.report]`: `mode`, `only_on_failure`).
    pub report: patchbay_report::ProjectReport,
    /// Addresses that may ask for a re-test of any series (`Recheck-request:`), besides each
    /// series' submitter.
    pub maintainers: Vec<String>,
    /// The Patchwork instance its results are posted to as checks (`[project.patchwork]`).
    pub patchwork: Option<patchbay_patchwork::PatchworkSettings>,
}

/// Bus settings.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// Which implementation.
    pub backend: BusBackend,
    /// The broker URL, for `amqp`.
    pub url: Option<String>,
    /// The topic exchange, for `amqp` (default `patchbay`).
    pub exchange: String,
    /// `<prefix>.<env>` for every topic.
    pub root: TopicRoot,
}

/// `[store]`: the embedded SQLite in the data directory unless `url` names a PostgreSQL that
/// several processes on several hosts share.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database`; `None`: SQLite in `data_dir` (the default).
    pub url: Option<String>,
    /// Connections this process holds to PostgreSQL at most (default 16).
    pub max_connections: usize,
    /// The PEM certificates of `store.ca_file` (a private CA), trusted beside the public roots
    /// when `url` asks for TLS (`sslmode=require`); read at load, so a bad file fails at start.
    pub ca: Option<Vec<u8>>,
}

/// `[http]` settings of `POST /api/v1/publish`: every peer needs a token unless the operator
/// says otherwise for this host, and browsers' cross-site requests are refused.
#[derive(Clone, Debug, Default)]
pub struct PublishAccess {
    /// Whether a peer on this host publishes without a token (`http.loopback_without_token`,
    /// default false: any web page open in a browser here could otherwise publish).
    pub loopback_without_token: bool,
    /// Web origins (`https://ci.example.org`) whose pages may publish (`http.allowed_origins`).
    pub allowed_origins: Vec<String>,
}

/// Signing and verification settings.
#[derive(Clone, Debug)]
pub struct SigningConfig {
    /// The secret key this process signs with; `None` means `<data_dir>/keys/<host>-<instance>.key`
    /// (or the `local.key` of an older data directory),
    /// generated by `serve` on first start.
    pub key: Option<PathBuf>,
    /// Directory of trusted `*.pub` files; `None` means `<data_dir>/keys`.
    pub trusted_keys: Option<PathBuf>,
    /// Whether unsigned or unverifiable messages are refused before any handler.
    pub require_signatures: bool,
    /// Which key may publish which topics; a key's own topics default to `<prefix>.<env>.#`.
    pub allow: BTreeMap<String, Vec<TopicPattern>>,
}

impl SigningConfig {
    /// The trusted key directory to use, default applied.
    pub fn trusted_keys_dir(&self, data_dir: &Path) -> PathBuf {
        self.trusted_keys.clone().unwrap_or_else(|| data_dir.join("keys"))
    }
}

impl Config {
    /// Loads `path`, or `./patchbay.toml` when it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Self::from_file(p),
            None if Path::new(DEFAULT_FILE).is_file() => Self::from_file(Path::new(DEFAULT_FILE)),
            None => Self::from_raw(RawConfig::default(), None, Path::new("")),
        }
    }

    /// Loads and validates one file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io { path: path.to_path_buf(), error })?;
        Self::parse(&text, path)
    }

    /// Parses and validates text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
            path: shown.clone(),
            key: "(syntax)".into(),
            // toml's own display, several lines with a caret under the spot: kept whole.
            reason: e.to_string().trim().to_string(),
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let reason = e.into_inner().message().trim().to_string();
            ConfigError::Invalid { path: shown.clone(), key: if key == "." { "(top level)".into() } else { key }, reason }
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::from_raw(raw, Some(path), base)
    }

    fn from_raw(mut raw: RawConfig, source: Option<&Path>, base: &Path) -> Result<Config, ConfigError> {
        let shown = source.map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into());
        let invalid = |key: &str, reason: String| ConfigError::Invalid { path: shown.clone(), key: key.into(), reason };
        let resolve = |p: PathBuf| patchbay_model::section::resolve_path(base, &p);

        let data_dir = resolve(raw.data_dir.unwrap_or_else(|| PathBuf::from("patchbay-data")));
        let backend = raw.bus.backend.unwrap_or(BusBackend::Embedded);
        if backend == BusBackend::Amqp && raw.bus.url.is_none() {
            return Err(invalid("bus.url", "required when bus.backend = \"amqp\"".into()));
        }
        if let Some(url) = &raw.bus.url
            && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            return Err(invalid("bus.url", format!("{url:?} is not an amqp:// or amqps:// URL")));
        }
        if let Some(url) = &raw.store.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid("store.url", "not a postgres:// or postgresql:// URL (leave it out for SQLite in data_dir)".into()));
        }
        let max_connections = raw.store.max_connections.unwrap_or(16);
        if !(2..=1000).contains(&max_connections) {
            return Err(invalid("store.max_connections", format!("{max_connections} is not between 2 and 1000")));
        }
        let ca = match &raw.store.ca_file {
            Some(p) => {
                let p = resolve(p.clone());
                Some(std::fs::read(&p).map_err(|e| invalid("store.ca_file", format!("reading {}: {e}", p.display())))?)
            }
            None => None,
        };
        let store = StoreConfig { url: raw.store.url, max_connections, ca };
        let exchange = raw.bus.exchange.unwrap_or_else(|| "patchbay".into());
        if exchange.is_empty()
            || exchange.len() > 200
            || !exchange.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid("bus.exchange", format!("{exchange:?} must be 1-200 ASCII letters, digits, '.', '_' or '-'")));
        }
        let prefix = raw.bus.prefix.unwrap_or_else(|| "patchbay".into());
        let env = raw.bus.env.unwrap_or_else(|| "dev".into());
        let root = TopicRoot::new(&prefix, &env).map_err(|e| {
            let key = if env.contains('.') || TopicRoot::new(&prefix, "x").is_ok() { "bus.env" } else { "bus.prefix" };
            invalid(key, e.to_string())
        })?;

        let instance = raw.identity.instance.unwrap_or_else(|| "main".into());
        if instance.is_empty()
            || instance.len() > 64
            || !instance.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid("identity.instance", format!("{instance:?} must be 1-64 ASCII letters, digits, '.', '_' or '-'")));
        }

        let mut allow = BTreeMap::new();
        for (key_id, patterns) in raw.signing.allow {
            let parsed = patterns
                .iter()
                .map(|p| TopicPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&format!("signing.allow.{key_id}"), e.to_string()))?;
            allow.insert(key_id, parsed);
        }
        let signing = SigningConfig {
            key: raw.signing.key.map(&resolve),
            trusted_keys: raw.signing.trusted_keys.map(&resolve),
            require_signatures: raw.signing.require_signatures.unwrap_or(false),
            allow,
        };

        let listen = raw.http.listen.unwrap_or_else(|| DEFAULT_HTTP.into());
        let http_listen: SocketAddr =
            listen.parse().map_err(|e| invalid("http.listen", format!("{listen:?} is not an address such as 127.0.0.1:8025: {e}")))?;

        let mut projects: Vec<ProjectConfig> = Vec::new();
        for (i, p) in raw.project.into_iter().enumerate() {
            let key = format!("project[{i}]");
            if p.name.is_empty() || !p.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
                return Err(invalid(&format!("{key}.name"), format!("{:?} must be ASCII letters, digits, '.', '_' or '-'", p.name)));
            }
            if projects.iter().any(|q| q.name == p.name) {
                return Err(invalid(&format!("{key}.name"), format!("project {:?} is declared twice", p.name)));
            }
            if p.list_ids.is_empty() {
                return Err(invalid(&format!("{key}.list_ids"), "at least one list id is needed".into()));
            }
            let list_ids = p.list_ids.iter().map(|l| l.trim().trim_start_matches('<').trim_end_matches('>').to_ascii_lowercase()).collect();
            let mut tests: Vec<TestConfig> = Vec::new();
            for (j, t) in p.test.into_iter().enumerate() {
                let tkey = format!("{key}.test[{j}]");
                if !topic_word(&t.name) || t.name == patchbay_model::APPLY_TEST {
                    return Err(invalid(
                        &format!("{tkey}.name"),
                        format!("{:?} must be ASCII letters, digits, '_' or '-' (and not `apply`, which is built in)", t.name),
                    ));
                }
                if tests.iter().any(|x| x.name == t.name) {
                    return Err(invalid(&format!("{tkey}.name"), format!("test {:?} is declared twice", t.name)));
                }
                let retries = t.retries.unwrap_or(0);
                if retries > MAX_RETRIES {
                    return Err(invalid(&format!("{tkey}.retries"), format!("{retries}: at most {MAX_RETRIES} re-runs of a failure")));
                }
                let arches = t.arches.unwrap_or_else(|| vec!["x86_64".into()]);
                if arches.is_empty() || !arches.iter().all(|a| topic_word(a)) {
                    return Err(invalid(&format!("{tkey}.arches"), "give at least one arch, each a word such as x86_64".into()));
                }
                tests.push(TestConfig {
                    name: t.name,
                    script: t.script,
                    arches,
                    time_limit_secs: t.time_limit_secs.unwrap_or(3600).max(1),
                    memory_mib: t.memory_mib.unwrap_or(4096).max(16),
                    processes: t.processes.unwrap_or(1024).max(8),
                    required: t.required.unwrap_or(true),
                    capabilities: t.capabilities,
                    retries,
                    baseline: t.baseline,
                    per_patch: t.per_patch,
                });
            }
            if !tests.is_empty() && p.repository.is_none() {
                return Err(invalid(&format!("{key}.repository"), "tests need a repository to apply series to".into()));
            }
            if let Some(pw) = &p.patchwork
                && let Err((field, why)) = pw.validate()
            {
                return Err(invalid(&format!("{key}.patchwork.{field}"), why));
            }
            let mut trees = Vec::new();
            for (j, t) in p.tree.into_iter().enumerate() {
                let tkey = format!("{key}.tree[{j}]");
                if t.tags.is_empty() && t.paths.is_empty() {
                    return Err(invalid(&tkey, "give tags (subject prefixes such as net-next) or paths (such as drivers/net/)".into()));
                }
                if t.branch.trim().is_empty() {
                    return Err(invalid(&format!("{tkey}.branch"), "must name a branch".into()));
                }
                let Some(repository) = t.repository.or_else(|| p.repository.clone()) else {
                    return Err(invalid(&format!("{tkey}.repository"), "name one here or in the project".into()));
                };
                let tags = t.tags.iter().map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()).collect();
                let paths = t.paths.iter().map(|x| x.trim().trim_start_matches("./").to_string()).filter(|x| !x.is_empty()).collect();
                trees.push(TreeConfig { tags, paths, repository, branch: t.branch.trim().to_string() });
            }
            projects.push(ProjectConfig {
                name: p.name,
                list_ids,
                tag: p.tag,
                repository: p.repository,
                branch: p.branch.unwrap_or_else(|| "main".into()),
                list_address: p.list_address,
                tests,
                trees,
                report: p.report,
                maintainers: p.maintainers.iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect(),
                patchwork: p.patchwork,
            });
        }

        for (name, token) in &raw.http.admin_tokens {
            if token.len() < 16 {
                return Err(invalid(&format!("http.admin_tokens.{name}"), "a token needs at least 16 characters".into()));
            }
        }
        let admin_tokens = raw.http.admin_tokens.clone();
        for origin in &raw.http.allowed_origins {
            let ok = ["http://", "https://"].iter().any(|p| origin.strip_prefix(p).is_some_and(|h| !h.is_empty() && !h.contains('/')));
            if !ok {
                return Err(invalid("http.allowed_origins", format!("{origin:?} is not an origin such as https://ci.example.org")));
            }
        }
        let http_publish = PublishAccess {
            loopback_without_token: raw.http.loopback_without_token.unwrap_or(false),
            allowed_origins: raw.http.allowed_origins.clone(),
        };
        let mut authority = Authority::new(root.clone());
        for (service, patterns) in &raw.authority {
            if !topic_word(service) {
                return Err(invalid(&format!("authority.{service}"), "a service name is ASCII letters, digits, '_' or '-'".into()));
            }
            authority
                .grant(service, patterns.iter().map(String::as_str))
                .map_err(|e| invalid(&format!("authority.{service}"), format!("{e} (patterns are topic suffixes such as \"build.#\")")))?;
        }
        section(&mut raw.ingest, base, &shown)?;
        section(&mut raw.runner, base, &shown)?;
        section(&mut raw.results, base, &shown)?;
        section(&mut raw.report, base, &shown)?;
        section(&mut raw.history, base, &shown)?;
        section(&mut raw.dispatch, base, &shown)?;
        section(&mut raw.merged, base, &shown)?;

        let mut sources: Vec<SourceConfig> = Vec::new();
        for (i, s) in raw.source.iter().enumerate() {
            let key = format!("source[{i}]");
            let list_id = s.list_id.trim().trim_start_matches('<').trim_end_matches('>').to_ascii_lowercase();
            if list_id.is_empty() || list_id.contains(char::is_whitespace) {
                return Err(invalid(
                    &format!("{key}.list_id"),
                    format!("{:?} is not a list id such as linux-hwmon.vger.kernel.org", s.list_id),
                ));
            }
            let repository = s.repository.trim().to_string();
            if repository.is_empty() {
                return Err(invalid(&format!("{key}.repository"), "name a public-inbox directory or a URL git can fetch".into()));
            }
            let interval_secs = s.interval_secs.unwrap_or(300);
            if interval_secs == 0 {
                return Err(invalid(&format!("{key}.interval_secs"), "must be 1 or more".into()));
            }
            if sources.iter().any(|o| o.repository == repository) {
                return Err(invalid(&format!("{key}.repository"), format!("{repository:?} is followed twice")));
            }
            sources.push(SourceConfig { list_id, repository, interval_secs });
        }

        let mut notify: Vec<patchbay_notify::Rule> = Vec::new();
        for (i, r) in raw.notify.iter().cloned().enumerate() {
            let rule = r.check().map_err(|(field, why)| invalid(&format!("notify[{i}].{field}"), why))?;
            if notify.iter().any(|o| o.name == rule.name) {
                return Err(invalid(&format!("notify[{i}].name"), format!("rule {:?} is declared twice", rule.name)));
            }
            notify.push(rule);
        }

        let connections = connection_limits(&raw.ingest, raw.http.max_connections, raw.http.request_timeout_secs)
            .map_err(|(key, why)| invalid(key, why))?;
        let log_level = raw.log.level.unwrap_or_else(|| "info".into());
        Ok(Config {
            connections,
            admin_tokens,
            http_publish,
            authority,
            report: raw.report,
            results: raw.results,
            dispatch: raw.dispatch,
            merged: raw.merged,
            history: raw.history,
            runner: raw.runner,
            ingest: raw.ingest,
            projects,
            sources,
            notify,
            source: source.map(Path::to_path_buf),
            data_dir,
            bus: BusConfig { backend, url: raw.bus.url, exchange, root },
            store,
            instance,
            signing,
            http_listen,
            log_level,
            log_format: raw.log.format.unwrap_or(LogFormat::Text),
        })
    }

    /// Where the config came from, for messages.
    pub fn source_name(&self) -> String {
        self.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into())
    }
}

/// Connection limits of `serve` (`ingest.lmtp_*`, `http.max_connections`,
/// `http.request_timeout_secs`), so idle or slow clients cannot exhaust its descriptors.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// LMTP sessions at once (`ingest.lmtp_max_connections`); `None`: a quarter of the
    /// open-file limit, at most 1,024, which `serve` reads at start.
    pub lmtp_max_connections: Option<usize>,
    /// An LMTP command or DATA line must arrive within this long (`ingest.lmtp_idle_secs`, default 300).
    pub lmtp_idle_secs: u64,
    /// HTTP connections at once (`http.max_connections`); `None` as for LMTP.
    pub http_max_connections: Option<usize>,
    /// An HTTP request head must arrive, and its answer begin, within this long
    /// (`http.request_timeout_secs`, default 30).
    pub http_request_timeout_secs: u64,
}

/// Checks one service's section and puts the file's name and the section's in front of its error.
fn section<S: Section>(settings: &mut S, base: &Path, shown: &str) -> Result<(), ConfigError> {
    settings.resolve(base).map_err(|e| ConfigError::Invalid {
        path: shown.to_string(),
        key: format!("{}.{}", S::NAME, e.key),
        reason: e.reason,
    })
}

/// LMTP's limits as `[ingest]` checked them; HTTP's cap and request timeout, checked here.
fn connection_limits(
    ingest: &IngestSettings,
    http_cap: Option<usize>,
    http_secs: Option<u64>,
) -> Result<ConnectionLimits, (&'static str, String)> {
    if http_cap == Some(0) {
        return Err(("http.max_connections", "must be at least 1".into()));
    }
    let http_request_timeout_secs = match http_secs.unwrap_or(30) {
        s @ 1..=3_600 => s,
        _ => return Err(("http.request_timeout_secs", "must be 1 to 3600".into())),
    };
    Ok(ConnectionLimits {
        lmtp_max_connections: ingest.lmtp_max_connections,
        lmtp_idle_secs: ingest.lmtp_idle_secs,
        http_max_connections: http_cap,
        http_request_timeout_secs,
    })
}

#[cfg(test)]
mod connection_limit_tests {
    use super::*;

    #[test]
    fn connection_limits_default_and_name_the_bad_key() {
        let parse = |text: &str| Config::parse(text, Path::new("p.toml"));
        let d = parse("").unwrap().connections;
        assert_eq!((d.lmtp_max_connections, d.lmtp_idle_secs, d.http_max_connections, d.http_request_timeout_secs), (None, 300, None, 30));
        let set = parse("[ingest]\nlmtp_max_connections = 8\nlmtp_idle_secs = 5\n[http]\nmax_connections = 9\nrequest_timeout_secs = 7\n")
            .unwrap()
            .connections;
        assert_eq!(
            (set.lmtp_max_connections, set.lmtp_idle_secs, set.http_max_connections, set.http_request_timeout_secs),
            (Some(8), 5, Some(9), 7)
        );
        for (text, key) in [
            ("[ingest]\nlmtp_max_connections = 0\n", "ingest.lmtp_max_connections"),
            ("[ingest]\nlmtp_idle_secs = 0\n", "ingest.lmtp_idle_secs"),
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[http]\nrequest_timeout_secs = 99999\n", "http.request_timeout_secs"),
        ] {
            assert!(parse(text).unwrap_err().to_string().contains(key), "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/patchbay/patchbay.toml")).unwrap_err().to_string()
    }

    #[test]
    fn ingest_and_projects_name_the_bad_key() {
        let ok = Config::parse(
            "[ingest]\nlmtp_listen = \"\"\n[[project]]\nname = \"qemu\"\nlist_ids = [\"<QEMU-devel.nongnu.org>\"]\ntag = \"x\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(ok.ingest.lmtp_listen, None);
        assert_eq!(ok.projects[0].list_ids, vec!["qemu-devel.nongnu.org".to_string()]);
        assert_eq!(ok.history.keep_days, 0, "history is kept by default");
        assert_eq!(ok.ingest.incomplete_after_secs, 86_400);
        assert!(err("[ingest]\nlmtp_listen = \"nowhere\"\n").contains("ingest.lmtp_listen"));
        assert!(err("[ingest]\nmax_mail_bytes = 10\n").contains("ingest.max_mail_bytes"));
        assert!(err("[[project]]\nname = \"a\"\n").contains("project[0].list_ids"));
        assert!(err("[[project]]\nname = \"a b\"\nlist_ids = [\"l\"]\n").contains("project[0].name"));
        assert!(
            err("[[project]]\nname = \"a\"\nlist_ids = [\"l\"]\n[[project]]\nname = \"a\"\nlist_ids = [\"m\"]\n")
                .contains("declared twice")
        );
        assert!(err("[[project]]\nname = \"a\"\nlists = [\"l\"]\n").contains("lists"));
        let t = Config::parse(
            "[[project]]\nname = \"p\"\nlist_ids = [\"l\"]\nrepository = \"/srv/p.git\"\n[[project.test]]\nname = \"build\"\nscript = \"make\"\n[runner]\njobs = 2\n",
            Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(t.projects[0].tests[0].arches, vec!["x86_64".to_string()]);
        assert_eq!(t.projects[0].branch, "main");
        assert_eq!(t.runner.jobs, 2);
        assert_eq!(t.runner.isolation, Isolation::Bubblewrap);
        assert!(
            err("[[project]]\nname = \"p\"\nlist_ids = [\"l\"]\n[[project.test]]\nname = \"b\"\nscript = \"x\"\n")
                .contains("project[0].repository")
        );
        assert!(
            err("[[project]]\nname = \"p\"\nlist_ids = [\"l\"]\nrepository = \"r\"\n[[project.test]]\nname = \"apply\"\nscript = \"x\"\n")
                .contains("project[0].test[0].name")
        );
        assert!(err("[runner]\nisolation = \"chroot\"\n").contains("runner.isolation"));
        assert!(err("[runner]\njobs = 0\n").contains("runner.jobs"));
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_raw(RawConfig::default(), None, Path::new("")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("patchbay-data"));
        assert_eq!(c.bus.backend, BusBackend::Embedded);
        assert_eq!(c.bus.root.as_str(), "patchbay.dev");
        assert_eq!(c.http_listen.to_string(), DEFAULT_HTTP);
        assert!(!c.signing.require_signatures);
        assert_eq!(c.signing.trusted_keys_dir(Path::new("/elsewhere")), PathBuf::from("/elsewhere/keys"));
        let in_file = Config::parse("", Path::new("/srv/pb/patchbay.toml")).unwrap();
        assert_eq!(in_file.data_dir, PathBuf::from("/srv/pb/patchbay-data"), "the default data_dir is beside the file");
    }

    #[test]
    fn a_full_file_parses_with_paths_relative_to_it() {
        let c = Config::parse(
            r#"
            data_dir = "data"
            [bus]
            backend = "amqp"
            url = "amqps://pb:secret@mq.example.org:5671/patchbay"
            exchange = "org.example.patchbay"
            prefix = "org.example"
            env = "prod"
            [identity]
            instance = "box-1"
            [signing]
            key = "keys/serve.key"
            trusted_keys = "/etc/patchbay/trusted"
            require_signatures = true
            allow = { serve = ["org.example.prod.#"], runner = ["org.example.prod.ci.#"] }
            [http]
            listen = "0.0.0.0:9000"
            [log]
            level = "debug"
            format = "json"
            "#,
            Path::new("/srv/pb/patchbay.toml"),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/pb/data"));
        assert_eq!(c.signing.key, Some(PathBuf::from("/srv/pb/keys/serve.key")));
        assert_eq!(c.signing.trusted_keys, Some(PathBuf::from("/etc/patchbay/trusted")));
        assert_eq!(c.signing.allow["runner"][0].as_str(), "org.example.prod.ci.#");
        assert_eq!(c.bus.root.as_str(), "org.example.prod");
        assert_eq!((c.bus.backend, c.bus.exchange.as_str()), (BusBackend::Amqp, "org.example.patchbay"));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = err("[bus]\nprefx = \"x\"\n");
        assert!(e.starts_with("/etc/patchbay/patchbay.toml: bus.prefx: unknown field `prefx`"), "{e}");
        let e = err("[bus]\nenv = \"pro.d\"\n");
        assert!(e.starts_with("/etc/patchbay/patchbay.toml: bus.env: "), "{e}");
        let e = err("[bus]\nprefix = \"a b\"\n");
        assert!(e.starts_with("/etc/patchbay/patchbay.toml: bus.prefix: "), "{e}");
        let e = err("[http]\nlisten = \"localhost\"\n");
        assert!(e.contains("http.listen: \"localhost\" is not an address"), "{e}");
        let e = err("[signing]\nrequire_signatures = \"yes\"\n");
        assert!(e.contains("signing.require_signatures: invalid type"), "{e}");
        let e = err("[signing.allow]\nserve = [\"a.#b\"]\n");
        assert!(e.contains("signing.allow.serve: topic pattern"), "{e}");
        let e = err("[authority]\nnightly = [\"build.#x\"]\n");
        assert!(e.contains("authority.nightly: topic pattern"), "{e}");
        let e = err("[authority]\n\"no way\" = [\"build.#\"]\n");
        assert!(e.contains("authority.no way"), "{e}");
        let e = err("[http]\nallowed_origins = [\"evil.example\"]\n");
        assert!(e.contains("http.allowed_origins"), "{e}");
        let c = Config::parse(
            "[authority]\nnightly = [\"build.#\"]\n[http]\nallowed_origins = [\"https://ci.example.org\"]\n",
            Path::new("/x/p.toml"),
        )
        .unwrap();
        assert!(c.authority.is_role("nightly") && c.authority.owner("patchbay.dev.build.a.b") == Some("nightly"));
        assert!(!c.http_publish.loopback_without_token, "tokens from this host too, unless the operator says otherwise");
        assert_eq!(c.http_publish.allowed_origins, vec!["https://ci.example.org".to_string()]);
        let e = err("[bus]\nbackend = \"amqp\"\n");
        assert!(e.contains("bus.url: required"), "{e}");
        let e = err("[bus]\nbackend = \"kafka\"\n");
        assert!(e.contains("bus.backend: unknown variant `kafka`"), "{e}");
        let e = err("[bus]\nbackend = \"amqp\"\nurl = \"amqp://h\"\nexchange = \"a b\"\n");
        assert!(e.contains("bus.exchange: "), "{e}");
        let e = err("[history]\nkeep_days = -1\n");
        assert!(e.contains("history.keep_days: must be 0 (keep everything) to 36500"), "{e}");
        let e = err("[bus\n");
        assert!(e.contains("(syntax)"), "{e}");
    }

    #[test]
    fn service_sections_are_read_by_their_owners_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("body.j2"), "{{ default_body }}").unwrap();
        let file = dir.path().join("patchbay.toml");
        let c = Config::parse("[report]\ntemplate = \"body.j2\"\nrecipients = \"list\"\n[runner]\nwork_dir = \"work\"\n", &file).unwrap();
        assert_eq!(c.report.template.as_deref(), Some(dir.path().join("body.j2").as_path()), "relative to the file");
        assert_eq!(c.report.template_text.as_deref(), Some("{{ default_body }}"), "read at load");
        assert_eq!(c.report.recipients, patchbay_report::compose::Recipients::List);
        assert_eq!(c.runner.work_dir, Some(dir.path().join("work")));
        assert_eq!((c.results.verdict_deadline_secs, c.results.close_superseded), (6 * 3600, true));
        for (text, key) in [
            ("[report]\ntemplate = \"missing.j2\"\n", "report.template: reading"),
            ("[report]\nsmtp_user = \"u\"\n", "report.smtp_user: give both"),
            ("[report]\nsmtp_url = \"http://x\"\n", "report.smtp_url"),
            ("[report]\nfrm = \"x\"\n", "report.frm: unknown field"),
            ("[report]\nrecipients = \"all\"\n", "report.recipients: unknown variant"),
            ("[runner]\ndisk_mib = 1\n", "runner.disk_mib: 1 is too small"),
            ("[runner]\nmax_attempts = 0\n", "runner.max_attempts"),
            ("[results]\nverdict_deadline_secs = 0\n", "results.verdict_deadline_secs: must be at least 1"),
            ("[results]\nclose = true\n", "results.close: unknown field"),
            ("[ingest]\nmarker_window_secs = -1\n", "ingest.marker_window_secs"),
            ("[ingest]\nlmtp_idle_secs = 0\n", "ingest.lmtp_idle_secs"),
            ("[store]\nurl = \"mysql://db/pb\"\n", "store.url: not a postgres://"),
            ("[store]\nmax_connections = 1\n", "store.max_connections"),
            ("[store]\npath = \"x\"\n", "store.path: unknown field"),
        ] {
            let e = Config::parse(text, &file).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: ", file.display())) && e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn a_project_chooses_who_hears_of_its_verdicts() {
        let project = "[[project]]\nname = \"net\"\nlist_ids = [\"netdev.vger.kernel.org\"]\n";
        let c = Config::parse(project, Path::new("p.toml")).unwrap();
        assert_eq!(c.projects[0].report, patchbay_report::ProjectReport::default(), "on the list, as [report] says");
        let c =
            Config::parse(&format!("{project}[project.report]\nmode = \"none\"\nonly_on_failure = true\n"), Path::new("p.toml")).unwrap();
        assert_eq!(c.projects[0].report.mode, patchbay_report::ReportMode::None);
        assert_eq!(c.projects[0].report.only_on_failure, Some(true));
        let e = err(&format!("{project}[project.report]\nmode = \"loud\"\n"));
        assert!(e.contains("project") && e.contains("report.mode") && e.contains("unknown variant `loud`"), "{e}");
    }

    #[test]
    fn retries_patchwork_and_maintainers_are_checked() {
        let project = "[[project]]\nname = \"net\"\nlist_ids = [\"netdev.vger.kernel.org\"]\nrepository = \"/r\"\nmaintainers = [\" Bob <bob@example.org> \"]\n";
        let test = "[[project.test]]\nname = \"build\"\nscript = \"make\"\n";
        let c = Config::parse(&format!("{project}{test}retries = 2\nbaseline = true\nper_patch = true\n"), Path::new("p.toml")).unwrap();
        let t = &c.projects[0].tests[0];
        assert_eq!((t.retries, t.baseline, t.per_patch), (2, true, true));
        assert_eq!(c.projects[0].maintainers, ["Bob <bob@example.org>"]);
        assert!(err(&format!("{project}{test}retries = 9\n")).contains("project[0].test[0].retries: 9: at most 5"));
        let pw = "[project.patchwork]\nurl = \"https://patchwork.kernel.org\"\ntoken = \"t\"\n";
        let c = Config::parse(&format!("{project}{pw}"), Path::new("p.toml")).unwrap();
        assert_eq!(c.projects[0].patchwork.as_ref().map(|p| p.url.as_str()), Some("https://patchwork.kernel.org"));
        let e = err(&format!("{project}[project.patchwork]\nurl = \"patchwork.kernel.org\"\ntoken = \"t\"\n"));
        assert!(e.contains("project[0].patchwork.url"), "{e}");
        assert!(err(&format!("{project}[project.patchwork]\nurl = \"https://x\"\n")).contains("token"), "the token is required");
        assert!(Config::parse("[dispatch]\nmax_rechecks = 0\n", Path::new("p.toml")).unwrap().dispatch.max_rechecks == 0);
    }

    #[test]
    fn old_mail_is_left_alone_after_three_days_by_default() {
        let parse = |text: &str| Config::parse(text, Path::new("p.toml"));
        assert_eq!(parse("").unwrap().dispatch.max_age(), 3 * 86_400);
        assert_eq!(parse("[dispatch]\nmax_age_secs = 0\n").unwrap().dispatch.max_age(), 0);
        assert_eq!((parse("").unwrap().merged.interval_secs, parse("").unwrap().merged.window_days), (600, 90));
        assert_eq!(parse("[merged]\ninterval_secs = 0\n").unwrap().merged.interval_secs, 0);
        assert!(err("[merged]\ninterval_secs = -5\n").contains("merged.interval_secs: must be 0 (off)"));
        assert!(err("[merged]\nwindow_days = 0\n").contains("merged.window_days: must be 1"));
        assert_eq!(parse("[dispatch]\nmax_age_secs = 3600\n").unwrap().dispatch.max_age(), 3600);
        let e = err("[dispatch]\nmax_age_secs = -1\n");
        assert!(e.contains("dispatch.max_age_secs: must be 0"), "{e}");
        assert!(err("[dispatch]\nmax_age = 1\n").contains("dispatch"), "unknown keys are errors");
    }
}
