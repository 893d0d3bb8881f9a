//! The types patchbay serializes: the message envelope, topics, timestamps and
//! the versioned bodies carried on the bus.
//!
//! Everything here is a compatibility promise: these types are written to
//! disk, sent over the wire and signed. This crate does no IO, knows nothing of
//! tokio, SQLite or AMQP, and depends on no sibling crate.

mod body;
mod canonical;
mod envelope;
mod summary;
mod time;
mod topic;

pub use body::{
    BaseUsed, Body, BodySchema, LogMessage, MailReceived, ReportFailed, ReportSent, ResultRecorded, ResultWaived, RunnerHeartbeat,
    SeriesComplete, SeriesHead, SeriesIncomplete, SeriesNew, SeriesPatch, SeriesSuperseded, SeriesVerdict, TestCancelled, TestFinished,
    TestJob, TestLimits, TestLog, TestStarted, body_schemas, check_body, envelope_schema, free_form_schema, mbox_bytes, mbox_fields,
};
pub use canonical::write_canonical;
pub use envelope::{Envelope, EnvelopeError, SchemaRef, Sender, Signature};
pub use summary::{SUMMARY_CHARS, Summary, json_line, one_line, summarize};
pub use time::{Timestamp, TimestampError};
pub use topic::{Topic, TopicError, TopicRoot};
pub use uuid::Uuid;
