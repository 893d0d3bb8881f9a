//! Versioned message bodies: one Rust type per topic, so that producers and
//! consumers agree at compile time and outside consumers get JSON Schemas
//! (`patchbay schema`). Later issues add their bodies here and to
//! [`body_schemas`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{FailureKind, MailKind, Outcome, SchemaRef, TransportKind, VerdictKind};

/// A message body type bound to one topic suffix and one schema version.
pub trait Body: Serialize + DeserializeOwned + JsonSchema {
    /// `<service>.<object>[.<subobject>].<event>`, appended to the deployment's topic root.
    const TOPIC: &'static str;
    /// The schema name carried in the envelope.
    const SCHEMA: &'static str;
    /// The schema version; incompatible changes get a new version (and type).
    const VERSION: u32;

    /// The envelope's `schema` field for this body.
    fn schema_ref() -> SchemaRef {
        SchemaRef { name: Self::SCHEMA.to_string(), version: Self::VERSION }
    }

    /// The topic suffix of this message: [`Body::TOPIC`], unless the body routes by one of its
    /// fields (a job goes to `ci.job.<test>.<arch>.queued`, so each test and arch has its own queue).
    fn topic_suffix(&self) -> String {
        Self::TOPIC.to_string()
    }
}

/// A free-text line from a shell script, as `fedmsg-logger` sent them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogMessage {
    /// The text, as given on the command line or stdin.
    pub message: String,
}

impl Body for LogMessage {
    const TOPIC: &'static str = "shell.message.logged";
    const SCHEMA: &'static str = "patchbay.log";
    const VERSION: u32 = 1;
}

/// A mail was stored (`mail.message.received`), published in the same transaction as the
/// store write: every mail patchbay ever accepted is announced exactly once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailReceived {
    /// The store's id for the mail.
    pub mail: i64,
    /// `<id@host>`, or a synthetic `<hash@patchbay.invalid>` when the mail had none.
    pub message_id: String,
    /// The decoded subject.
    pub subject: String,
    /// Lower-cased sender address, when the From header had one.
    pub from: Option<String>,
    /// List ids the mail arrived through.
    pub lists: Vec<String>,
    /// `patch`, `cover`, `pull` or `comment`.
    pub kind: MailKind,
    /// What is wrong with the mail (empty for a clean one); it is stored regardless.
    pub problems: Vec<String>,
    /// Set when another mail with the same Message-ID but different content was stored first.
    pub conflicts_with: Option<i64>,
    /// The series the mail was placed in, if any (its public id).
    pub series: Option<i64>,
}

impl Body for MailReceived {
    const TOPIC: &'static str = "mail.message.received";
    const SCHEMA: &'static str = "patchbay.mail.received";
    const VERSION: u32 = 1;
}

/// One mail of a series, in slot order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesPatch {
    /// 1..=total (0 is the cover letter, which is listed separately).
    pub slot: u32,
    /// The mail's store id.
    pub mail: i64,
    /// Its Message-ID.
    pub message_id: String,
    /// Its subject line.
    pub subject: String,
}

/// What every series event says about the series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesHead {
    /// The series' public id: derived from its mails, so every store that saw them names the
    /// series alike (series stored before keep their local number).
    pub id: i64,
    /// The project it belongs to (series events are published for matched projects only).
    pub project: String,
    /// The series' name: the cover letter's title, else patch 1's.
    pub name: String,
    /// Lower-cased submitter address.
    pub submitter: String,
    /// The version (1 when the subjects name none).
    pub version: u32,
    /// The number of patches, N.
    pub total: u32,
}

/// A new series was seen (`series.series.new`): its first mail arrived.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesNew {
    /// The series.
    pub series: SeriesHead,
}

impl Body for SeriesNew {
    const TOPIC: &'static str = "series.series.new";
    const SCHEMA: &'static str = "patchbay.series.new";
    const VERSION: u32 = 1;
}

/// Every patch 1..N of a series is in (`series.series.complete`). Carries all a test runner
/// needs without reading the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesComplete {
    /// The series.
    pub series: SeriesHead,
    /// The cover letter's Message-ID, when there is one (yet).
    pub cover: Option<String>,
    /// The patches in slot order.
    pub patches: Vec<SeriesPatch>,
    /// The patches as one mboxrd, in slot order, ready for `git am`.
    pub mbox: String,
    /// The exact bytes of `mbox`, base64, when they are not UTF-8 (an 8-bit Latin-1 patch):
    /// `mbox` then holds them with replacement characters, for people only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbox_base64: Option<String>,
    /// `base-commit:` from the cover letter or a patch.
    pub base_commit: Option<String>,
    /// `Based-on:` lines (Message-IDs or URLs of series to apply first).
    pub based_on: Vec<String>,
    /// `Depends-on:` lines.
    pub depends_on: Vec<String>,
    /// The earlier version this series re-rolls, if one was found.
    pub supersedes: Option<i64>,
}

impl Body for SeriesComplete {
    const TOPIC: &'static str = "series.series.complete";
    const SCHEMA: &'static str = "patchbay.series.complete";
    const VERSION: u32 = 1;
}

/// A series still missed patches when its deadline passed (`series.series.incomplete`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesIncomplete {
    /// The series.
    pub series: SeriesHead,
    /// The slots that never arrived.
    pub missing: Vec<u32>,
}

impl Body for SeriesIncomplete {
    const TOPIC: &'static str = "series.series.incomplete";
    const SCHEMA: &'static str = "patchbay.series.incomplete";
    const VERSION: u32 = 1;
}

/// A later version replaced this series (`series.series.superseded`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesSuperseded {
    /// The superseded series.
    pub series: SeriesHead,
    /// The series that replaces it.
    pub by: i64,
    /// The replacing series' version.
    pub by_version: u32,
}

impl Body for SeriesSuperseded {
    const TOPIC: &'static str = "series.series.superseded";
    const SCHEMA: &'static str = "patchbay.series.superseded";
    const VERSION: u32 = 1;
}

/// Every patch of this series is in its project's branch (by `git patch-id --stable`), found
/// by following the branch after the series was posted (`series.series.merged`): it is done,
/// and runners set its waiting jobs aside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesMerged {
    /// The merged series.
    pub series: SeriesHead,
    /// The repository followed, without credentials.
    pub repository: String,
    /// The branch it was found in.
    pub branch: String,
    /// The commit holding each patch, in patch order.
    pub commits: Vec<String>,
}

impl Body for SeriesMerged {
    const TOPIC: &'static str = "series.series.merged";
    const SCHEMA: &'static str = "patchbay.series.merged";
    const VERSION: u32 = 1;
}

/// Limits a test runs under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestLimits {
    /// Wall-clock seconds before the whole process tree is killed.
    pub wall_secs: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Processes and threads at once.
    pub processes: u64,
    /// Largest file the script may write, in MiB.
    pub file_size_mib: u64,
    /// Output kept (head and tail), in KiB.
    pub output_kib: u64,
}

/// A job for the runners that can run one test on one arch (`ci.job.<test>.<arch>.queued`).
/// Self-contained: a runner needs the bus and git access, never the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestJob {
    /// `<series>-v<version>-<test>-<arch>`: stable, so a redelivered or re-dispatched job is recognised.
    pub job: String,
    /// The series under test.
    pub series: SeriesHead,
    /// The test's name (`apply` is the "does it apply?" job).
    pub test: String,
    /// The arch it runs on.
    pub arch: String,
    /// Runner labels the job needs (an arch, `kvm`, `big`…).
    pub capabilities: Vec<String>,
    /// Whether the verdict waits for it.
    pub required: bool,
    /// Repository URL or path.
    pub repository: String,
    /// Branch used when there is no usable `base-commit`.
    pub branch: String,
    /// The series' `base-commit:`, if any.
    pub base_commit: Option<String>,
    /// Series to apply first (`Based-on:`), as mboxes in order.
    pub dependencies: Vec<String>,
    /// The series as an mbox in patch order.
    pub mbox: String,
    /// The exact bytes of `mbox`, base64, when they are not UTF-8; runners apply these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbox_base64: Option<String>,
    /// The script (`sh -c` in the applied tree), `None` for the `apply` job.
    pub script: Option<String>,
    /// Limits for the script.
    pub limits: TestLimits,
    /// The series' date (unix seconds: the newest `Date:` of its mails), so a series that does
    /// not apply at the branch head is tried on the branch as it was then. Absent from jobs of a
    /// dispatcher that knows no dates; a runner older than this field refuses jobs carrying it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<i64>,
    /// Why `repository` and `branch`, when the project's tree map chose them (`subject tag
    /// net-next`, `it touches drivers/net/x.c`), for the report; absent for the project's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    /// The project's other repositories (its own and its tree map's, `repository` left out),
    /// where the runner looks for a `base_commit` that `repository` lacks: a series based on
    /// net-next's tree must not fall back to the head because it was mapped to net's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<String>,
    /// How many times a failure of the test is run again (`retries`), so a flaky test is told
    /// from a broken series; absent: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Which re-run this is (1 for the first); absent for the first run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry: u32,
    /// The runner instance whose run failed: another runner takes the re-run when one can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avoid: Option<String>,
    /// A failure is checked on the base alone (`baseline`): one the base shows too is
    /// pre-existing, not the series' fault.
    #[serde(default, skip_serializing_if = "is_false")]
    pub baseline: bool,
    /// The script runs after each patch in turn (`per_patch`), and the first patch after which it
    /// fails is named.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_patch: bool,
    /// A re-test asked on the list (`Recheck-request:`): its round for this version, from 1;
    /// absent for the first testing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    /// The `test/arch` labels re-run in this round, on each of the round's jobs: the round's
    /// verdict waits for all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recheck: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The topic suffix a runner re-queues a failed job on for a re-run (`retries`): within the
/// runners' role, and bound by the job's queue beside `ci.job.<test>.<arch>.queued`.
pub fn retry_topic(test: &str, arch: &str) -> String {
    format!("ci.test.{test}.{arch}.requeued")
}

impl Body for TestJob {
    const TOPIC: &'static str = "ci.job.queued";
    const SCHEMA: &'static str = "patchbay.ci.job";
    const VERSION: u32 = 1;

    fn topic_suffix(&self) -> String {
        format!("ci.job.{}.{}.queued", self.test, self.arch)
    }
}

/// A runner says it is alive (`ci.runner.heartbeat`), what it can run and what it runs now;
/// the dashboard's runners page is made of these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerHeartbeat {
    /// Its labels (arches, `kvm`…).
    pub capabilities: Vec<String>,
    /// Job slots.
    pub jobs: u32,
    /// Jobs running now.
    pub running: Vec<String>,
}

impl Body for RunnerHeartbeat {
    const TOPIC: &'static str = "ci.runner.heartbeat";
    const SCHEMA: &'static str = "patchbay.ci.heartbeat";
    const VERSION: u32 = 1;
}

/// A runner took a job (`ci.test.started`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestStarted {
    /// The job id.
    pub job: String,
    /// The series under test.
    pub series: SeriesHead,
    /// Test name.
    pub test: String,
    /// Arch.
    pub arch: String,
    /// Which attempt this is (1 on first delivery).
    pub attempt: u32,
}

impl Body for TestStarted {
    const TOPIC: &'static str = "ci.test.started";
    const SCHEMA: &'static str = "patchbay.ci.started";
    const VERSION: u32 = 1;
}

/// The base a series was applied to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseUsed {
    /// The commit.
    pub commit: String,
    /// Why that one: `base-commit`, or `branch <name>` with why (the base-commit not in the
    /// repository; `as of <date>, the series' date` when it does not apply at the head). Only
    /// `base-commit` means the series named its own base.
    pub reason: String,
}

/// A test's result (`ci.test.finished`). Outcomes use resultsdb's words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFinished {
    /// The job id.
    pub job: String,
    /// The series under test.
    pub series: SeriesHead,
    /// Test name (`apply` for "does it apply?").
    pub test: String,
    /// Arch.
    pub arch: String,
    /// Whether the verdict waits for it.
    pub required: bool,
    /// `PASSED`, `FAILED` or `ERROR`.
    pub outcome: Outcome,
    /// For FAILED: `failed`, `timeout`, `memory`, or `apply` (naming the patch in `failed_patch`);
    /// for ERROR: what went wrong, `series-does-not-apply` when a test could not run because of that.
    pub reason: Option<FailureKind>,
    /// For a failed `apply`: `NNNN <subject>` of the patch that failed; for a failed
    /// `per_patch` test, `NNNN/TTTT <subject>` of the first patch after which it failed.
    pub failed_patch: Option<String>,
    /// Wall time in milliseconds, git included.
    pub duration_ms: u64,
    /// The base used, when one was chosen.
    pub base: Option<BaseUsed>,
    /// The end of the log (where errors are), at most 16 KiB.
    pub excerpt: String,
    /// Size of the whole log in bytes (published in `ci.test.log` chunks).
    pub log_bytes: u64,
    /// This failure is run again (`retries`): not final, the verdict waits for the re-run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retrying: bool,
    /// The test fails on the base alone too (`baseline`): the failure is not the series'.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pre_existing: bool,
    /// The job's re-test round (absent: the first testing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    /// The labels re-run in that round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recheck: Vec<String>,
}

impl Body for TestFinished {
    const TOPIC: &'static str = "ci.test.finished";
    const SCHEMA: &'static str = "patchbay.ci.finished";
    const VERSION: u32 = 1;
}

/// A runner set a job aside without running it (`ci.test.cancelled`): its series version was
/// superseded before the job's turn came.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCancelled {
    /// The job id.
    pub job: String,
    /// The series it was for.
    pub series: SeriesHead,
    /// Test name.
    pub test: String,
    /// Arch.
    pub arch: String,
    /// Why, for people: `superseded by v3`.
    pub reason: String,
}

impl Body for TestCancelled {
    const TOPIC: &'static str = "ci.test.cancelled";
    const SCHEMA: &'static str = "patchbay.ci.cancelled";
    const VERSION: u32 = 1;
}

/// One bounded chunk of a test's full log (`ci.test.log`), for the store to keep compressed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestLog {
    /// The job id.
    pub job: String,
    /// This run of the job (a job id is stable across re-runs; the chunks of one run belong together).
    pub run: String,
    /// Chunk number, from 0.
    pub index: u32,
    /// Whether this is the last chunk.
    pub last: bool,
    /// At most 64 KiB of the log, as text (invalid UTF-8 replaced).
    pub text: String,
}

impl Body for TestLog {
    const TOPIC: &'static str = "ci.test.log";
    const SCHEMA: &'static str = "patchbay.ci.log";
    const VERSION: u32 = 1;
}

/// A result as recorded (`ci.result.recorded`): every `ci.test.finished`, once, with whether
/// it repeats the previous outcome of the same (series version, test, arch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultRecorded {
    /// The store's id for the result.
    pub result: i64,
    /// The job.
    pub job: String,
    /// The series under test.
    pub series: SeriesHead,
    /// Test.
    pub test: String,
    /// Arch.
    pub arch: String,
    /// resultsdb outcome.
    pub outcome: Outcome,
    /// Why, for FAILED and ERROR.
    pub reason: Option<FailureKind>,
    /// The same outcome as the previous result of this (series version, test, arch): a rerun
    /// or a redelivered job, not news.
    pub duplicate: bool,
    /// The previous outcome, when there was one (a flaky test shows here).
    pub previous: Option<Outcome>,
    /// A failure that is run again: not final.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retrying: bool,
    /// Passed on a re-run after failing: flaky.
    #[serde(default, skip_serializing_if = "is_false")]
    pub flaky: bool,
    /// A failure the base alone shows too: not counted against the series.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pre_existing: bool,
}

impl Body for ResultRecorded {
    const TOPIC: &'static str = "ci.result.recorded";
    const SCHEMA: &'static str = "patchbay.ci.result";
    const VERSION: u32 = 1;
}

/// A maintainer waived a result (`ci.result.waived`): it no longer fails a verdict that is
/// still to be decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultWaived {
    /// The result's id.
    pub result: i64,
    /// Its job.
    pub job: String,
    /// Its series.
    pub series: i64,
    /// Its series version.
    pub version: u32,
    /// Test.
    pub test: String,
    /// Arch.
    pub arch: String,
    /// Why, in the maintainer's words.
    pub comment: String,
    /// Who (the CLI user or the HTTP token's name).
    pub by: String,
}

impl Body for ResultWaived {
    const TOPIC: &'static str = "ci.result.waived";
    const SCHEMA: &'static str = "patchbay.ci.waived";
    const VERSION: u32 = 1;
}

/// The one verdict of a series version (`ci.series.verdict`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesVerdict {
    /// The series.
    pub series: SeriesHead,
    /// `PASSED`, `FAILED`, `INCOMPLETE`, or `MERGED` (the series is already in the branch:
    /// every patch found there by `git patch-id --stable`; nothing was tested).
    pub verdict: VerdictKind,
    /// For FAILED: the failed `test/arch` (or `apply`).
    pub failed: Vec<String>,
    /// For INCOMPLETE: the `test/arch` that never reported.
    pub missing: Vec<String>,
    /// Required `test/arch` that passed only on a re-run (flaky).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flaky: Vec<String>,
    /// Required `test/arch` that failed as the base alone does: not counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_existing: Vec<String>,
    /// A re-test asked on the list: its round (absent: the version's first verdict). Each
    /// round has its own verdict and report.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    /// What that round re-ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recheck: Vec<String>,
}

impl Body for SeriesVerdict {
    const TOPIC: &'static str = "ci.series.verdict";
    const SCHEMA: &'static str = "patchbay.ci.verdict";
    const VERSION: u32 = 1;
}

/// A verdict's report went out (`report.email.sent`): to the outbox maildir or over SMTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportSent {
    /// The series.
    pub series: SeriesHead,
    /// The verdict reported.
    pub verdict: VerdictKind,
    /// The report's Message-ID (stable per series version).
    pub message_id: String,
    /// The mail it replies to.
    pub in_reply_to: String,
    /// `outbox` or `smtp`.
    pub transport: TransportKind,
}

impl Body for ReportSent {
    const TOPIC: &'static str = "report.email.sent";
    const SCHEMA: &'static str = "patchbay.report.sent";
    const VERSION: u32 = 1;
}

/// A report could not be delivered (`report.email.failed`): the SMTP server refused it for good
/// (its words are in `reason`), or patchbay stopped while the server was taking it and will not
/// risk a second copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportFailed {
    /// The series.
    pub series: SeriesHead,
    /// The verdict that was to be reported.
    pub verdict: VerdictKind,
    /// The report's Message-ID.
    pub message_id: String,
    /// Why.
    pub reason: String,
}

impl Body for ReportFailed {
    const TOPIC: &'static str = "report.email.failed";
    const SCHEMA: &'static str = "patchbay.report.failed";
    const VERSION: u32 = 1;
}

/// One exported schema: which topic, which name and version, and the JSON Schema.
#[derive(Clone, Debug, Serialize)]
pub struct BodySchema {
    /// Topic suffix the body is published under.
    pub topic: &'static str,
    /// Schema name as carried in envelopes.
    pub name: &'static str,
    /// Schema version as carried in envelopes.
    pub version: u32,
    /// The JSON Schema (draft 2020-12) of the body.
    pub schema: serde_json::Value,
}

fn export<B: Body>() -> BodySchema {
    BodySchema {
        topic: B::TOPIC,
        name: B::SCHEMA,
        version: B::VERSION,
        schema: serde_json::to_value(schemars::schema_for!(B)).expect("schemas serialize"),
    }
}

/// An mbox for a message body: the text, and the exact bytes (base64) when they are not UTF-8.
pub fn mbox_fields(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), None),
        Err(_) => {
            use base64::Engine as _;
            (String::from_utf8_lossy(bytes).into_owned(), Some(base64::engine::general_purpose::STANDARD.encode(bytes)))
        }
    }
}

/// The exact bytes of an mbox carried by [`mbox_fields`].
pub fn mbox_bytes(text: &str, base64: Option<&str>) -> Vec<u8> {
    use base64::Engine as _;
    base64.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).unwrap_or_else(|| text.as_bytes().to_vec())
}

/// Every body type patchbay publishes, for `patchbay schema` and for validating shell input.
pub fn body_schemas() -> Vec<BodySchema> {
    vec![
        export::<LogMessage>(),
        export::<MailReceived>(),
        export::<SeriesNew>(),
        export::<SeriesComplete>(),
        export::<SeriesIncomplete>(),
        export::<SeriesSuperseded>(),
        export::<SeriesMerged>(),
        export::<TestJob>(),
        export::<TestStarted>(),
        export::<TestFinished>(),
        export::<TestCancelled>(),
        export::<RunnerHeartbeat>(),
        export::<TestLog>(),
        export::<ResultRecorded>(),
        export::<SeriesVerdict>(),
        export::<ReportSent>(),
        export::<ReportFailed>(),
        export::<ResultWaived>(),
    ]
}

fn check<B: Body>(body: &serde_json::Value) -> Result<SchemaRef, String> {
    B::deserialize(body).map(|_| B::schema_ref()).map_err(|e| format!("body does not fit {} v{}: {e}", B::SCHEMA, B::VERSION))
}

/// For a known topic suffix, checks that `body` fits its type and returns the schema to stamp;
/// `None` for topics patchbay does not define (they travel as `patchbay.json` v1, unchecked).
pub fn check_body(topic_suffix: &str, body: &serde_json::Value) -> Option<Result<SchemaRef, String>> {
    match topic_suffix {
        LogMessage::TOPIC => Some(check::<LogMessage>(body)),
        MailReceived::TOPIC => Some(check::<MailReceived>(body)),
        SeriesNew::TOPIC => Some(check::<SeriesNew>(body)),
        SeriesComplete::TOPIC => Some(check::<SeriesComplete>(body)),
        SeriesIncomplete::TOPIC => Some(check::<SeriesIncomplete>(body)),
        SeriesSuperseded::TOPIC => Some(check::<SeriesSuperseded>(body)),
        SeriesMerged::TOPIC => Some(check::<SeriesMerged>(body)),
        TestStarted::TOPIC => Some(check::<TestStarted>(body)),
        TestFinished::TOPIC => Some(check::<TestFinished>(body)),
        TestCancelled::TOPIC => Some(check::<TestCancelled>(body)),
        RunnerHeartbeat::TOPIC => Some(check::<RunnerHeartbeat>(body)),
        TestLog::TOPIC => Some(check::<TestLog>(body)),
        ResultRecorded::TOPIC => Some(check::<ResultRecorded>(body)),
        SeriesVerdict::TOPIC => Some(check::<SeriesVerdict>(body)),
        ReportSent::TOPIC => Some(check::<ReportSent>(body)),
        ReportFailed::TOPIC => Some(check::<ReportFailed>(body)),
        ResultWaived::TOPIC => Some(check::<ResultWaived>(body)),
        s if s == TestJob::TOPIC || (s.starts_with("ci.job.") && s.ends_with(".queued")) => Some(check::<TestJob>(body)),
        s if s.starts_with("ci.test.") && s.ends_with(".requeued") => Some(check::<TestJob>(body)),
        _ => None,
    }
}

/// The schema of bodies on topics patchbay does not define: any JSON object.
pub fn free_form_schema() -> SchemaRef {
    SchemaRef { name: "patchbay.json".into(), version: 1 }
}

/// The JSON Schema of the envelope itself.
pub fn envelope_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(crate::Envelope)).expect("schemas serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_has_a_unique_topic_and_an_object_schema() {
        let all = body_schemas();
        let mut topics: Vec<_> = all.iter().map(|b| b.topic).collect();
        topics.sort();
        topics.dedup();
        assert_eq!(topics.len(), all.len());
        for b in &all {
            assert_eq!(b.schema["type"], "object", "{}", b.name);
            assert!(b.topic.split('.').count() >= 3);
        }
        assert_eq!(envelope_schema()["type"], "object");
        // Every exported body is also checked on publish.
        for b in &all {
            assert!(check_body(b.topic, &serde_json::json!({})).is_some(), "{} is not checked", b.topic);
        }
        assert!(check_body("shell.message.logged", &serde_json::json!({"message": "hi"})).unwrap().is_ok());
        assert!(check_body("shell.message.logged", &serde_json::json!({"msg": "hi"})).unwrap().is_err());
        assert!(check_body("any.thing.else", &serde_json::json!({})).is_none());
    }
}
