//! Mail as patchbay reads it: subjects, diffs, trailers, threading headers,
//! pull requests, and mbox splitting.
//!
//! Pure: no files, no sockets, no clock, no bus, no store. Input is bytes,
//! output is plain values; whatever is wrong with a mail becomes a recorded
//! problem, never a panic or an error (`cargo fuzz` targets in `fuzz/` hold
//! this). mail-parser 0.11 does the MIME work behind [`parse`]; its types do
//! not leak out of this crate.

pub mod diff;
pub mod mbox;
mod parse;
pub mod subject;

pub use diff::{PullRequest, Trailer};
pub use mbox::{MboxMail, MboxReader, write_mboxrd};
pub use parse::{Kind, Parsed, parse};
pub use subject::Subject;
