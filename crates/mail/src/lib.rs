//! Mail as patchbay reads it: subjects, diffs, trailers, threading headers,
//! pull requests, and mbox splitting.
//!
//! Pure: no files, no sockets, no clock, no bus, no store. Input is bytes,
//! output is plain values; whatever is wrong with a mail becomes a recorded
//! problem, never a panic or an error (`cargo fuzz` targets in `fuzz/` hold
//! this). mail-parser 0.11 (`full_encoding`) does the MIME work behind
//! [`parse`]; its types do not leak out of this crate.
//!
//! [`parse`] gives the Message-ID (or a stable synthetic
//! `<hash@patchbay.invalid>`), threading headers, decoded subject, sender,
//! date, List-Id, [`Kind`], commit message, diff, trailers, `base-commit:`,
//! `Based-on:`, `Depends-on:`, `change-id:`, `Supersedes:`, pull requests and
//! a list of problems. Kinds: a `0/N` that is not a reply is a `cover`
//! whatever its body holds (a range-diff or conflict walkthrough included);
//! any other mail with a diff that is not a reply is a `patch`; a
//! `git request-pull` without a diff is a `pull`; everything else, replies
//! included, is a `comment`.
//!
//! The diff is looked for in the plain-text parts and in attachments that
//! hold one: a patch or diff type, a `.patch`/`.diff` name, or a generic
//! attachment (`application/*`, `application/octet-stream`, or untyped) whose
//! content has no NUL byte and holds a diff ([`diff::split`] finds counted
//! hunks); mail clients label attached patch files as they please.
//!
//! The content hash covers what the author wrote (Message-ID, From, Date,
//! Subject, In-Reply-To, References, and the body with CRLF folded), not
//! transport headers, so a cross-post hashes the same. The header/body split
//! and the CRLF folding use SIMD searches (memchr).
//!
//! Subjects: [`subject::parse`], b4's forms and more (see `subject.rs`).
//! Diffs: [`diff::split`], a line state machine (see `diff.rs`). Mbox:
//! [`MboxReader`] (streaming, mboxrd unquoting) and [`write_mboxrd`].

pub mod diff;
pub mod mbox;
mod parse;
pub mod subject;

pub use diff::{PullRequest, Trailer};
pub use mbox::{MboxMail, MboxReader, write_mboxrd};
pub use parse::{Kind, Parsed, parse};
pub use subject::Subject;
