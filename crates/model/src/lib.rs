//! The types patchbay serializes: the message envelope, topics, timestamps and
//! the versioned bodies carried on the bus.
//!
//! Everything here is a compatibility promise: these types are written to
//! disk, sent over the wire and signed. This crate does no IO, knows nothing of
//! tokio, SQLite or AMQP, and depends on no sibling crate. The only impure
//! calls are `Timestamp::now()` and UUIDv7 generation, both made when sealing.
//!
//! - [`Envelope`]: its canonical form (every field but the signature, keys
//!   sorted by their UTF-8 bytes, written by hand in `canonical.rs` so no
//!   dependency's `preserve_order` can change the bytes) is what gets signed;
//!   `from_wire` refuses unknown fields. [`Sender`] displays as
//!   `service:instance`.
//! - [`Topic`] and [`TopicRoot`] (`<prefix>.<env>`); [`Timestamp`], one fixed
//!   spelling `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
//! - [`Body`]: one type per topic with a schema name and version, all
//!   `deny_unknown_fields`; [`body_schemas`] lists the 18 for `patchbay
//!   schema`, [`check_body`] checks shell input, and topics patchbay does not
//!   define travel as [`free_form_schema`] (`patchbay.json` v1). An
//!   incompatible change is a new version. Optional fields are added with
//!   `skip_serializing_if`, and older readers refuse them.
//!   [`mbox_fields`]/[`mbox_bytes`] carry a non-UTF-8 mbox exactly.
//! - [`APPLY_TEST`] and [`ANY_ARCH`]: the domain's fixed words, named once;
//!   [`Outcome`], [`FailureKind`], [`VerdictKind`], [`MailKind`] and
//!   [`TransportKind`]: wire words as enums that read and write exactly the strings
//!   they replaced (an unknown word is kept as `Other`), so schemas and bytes
//!   are unchanged (`tests/golden.rs` holds them to that); [`ServiceName`]:
//!   the services' sender names, which roles and reserved names are keyed on.
//! - [`Summary`]: one line per body for people (`tail`, `query`);
//!   presentation only, the wire format is untouched.
//! - [`TopicPattern`]: AMQP topic-exchange patterns (`*` one word, `#` any).
//! - The read model: [`view`] (the rows the stores' ports return and the web
//!   edge shows, and the results query) and [`messages`] (the history query
//!   and its page), parsed from URL parameters here, pure, so the web edge and
//!   the stores share typed queries without knowing each other.
//! - [`Section`]: a config section owned by the service that reads it; the
//!   config crate only reads the file and names it in errors.

mod body;
mod canonical;
mod domain;
mod envelope;
pub mod messages;
mod pattern;
pub mod section;
mod summary;
mod time;
mod topic;
pub mod view;

pub use body::{
    BaseUsed, Body, BodySchema, LogMessage, MailReceived, ReportFailed, ReportSent, ResultRecorded, ResultWaived, RunnerHeartbeat,
    SeriesComplete, SeriesHead, SeriesIncomplete, SeriesMerged, SeriesNew, SeriesPatch, SeriesSuperseded, SeriesVerdict, TestCancelled,
    TestFinished, TestJob, TestLimits, TestLog, TestStarted, body_schemas, check_body, envelope_schema, free_form_schema, mbox_bytes,
    mbox_fields, retry_topic,
};
pub use canonical::write_canonical;
pub use domain::{ANY_ARCH, APPLY_TEST, FailureKind, MailKind, Outcome, ServiceName, TransportKind, VerdictKind};
pub use envelope::{Envelope, EnvelopeError, SchemaRef, Sender, Signature};
pub use pattern::{PatternError, TopicPattern};
pub use section::{Invalid, Section};
pub use summary::{SUMMARY_CHARS, Summary, json_line, one_line, summarize};
pub use time::{Timestamp, TimestampError};
pub use topic::{Topic, TopicError, TopicRoot};
pub use uuid::Uuid;
