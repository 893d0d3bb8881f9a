//! The report, whole: one reply mail per verdict, exactly once. The policy that decides the
//! verdict is `patchbay-verdict`'s; everything after it is here, so a change to the report
//! touches this crate alone.
//!
//! [`compose`] builds the reply mail for a verdict without IO:
//! `Re: <subject>`, threaded under the cover letter (patch 1 without one),
//! a stable Message-ID `<patchbay-report-<series>-v<version>@<domain>>`,
//! `Auto-Submitted`, `X-Patchbay-{Verdict,Project,Series}`, and a 72-column
//! body: one line per test × arch, the base and why (`Applied to: <commit>
//! (<reason>)`, and [`compose::BASE_HINT`] when the series named no base), the
//! failing excerpts (last 40 lines, each log once), the link to the series
//! page and logs, and "To reproduce" with the failing tests' own scripts. A
//! MERGED series gets a short body naming each patch's commit. A series that
//! does not apply gets its own body under 40 lines ([`compose::apply_failure`]
//! reads git's words: the patch as `n/N`, the file, the hunk, the base, the
//! tests not run, what to do); `tests/golden/` holds whole mails
//! (`PATCHBAY_BLESS=1` rewrites them). A maintainer's minijinja template
//! ([`compose::Template`]) sees `report`, `thread` and `default_body`; headers
//! stay ours.
//!
//! [`Reporter`] (on `ci.series.verdict`, see `reporter.rs`, a `BodyHandler`): records the intent
//! (`reports`, with the stable Message-ID), composes the mail from the store
//! (the cover or patch 1 and its References, the latest results, log tails,
//! links to the series page and the logs, the failing tests' scripts),
//! delivers it, then marks it sent and publishes `report.email.sent` in one
//! transaction. Recipients: the submitter and the project's `list_address`; a
//! `List-Post` header never decides where reports go, and header values from
//! mail are stripped of control characters. Without `report.smtp_url` mail
//! goes to the outbox maildir `<data>/outbox`, idempotent by file name. Over
//! SMTP ([`smtp`]) the state goes `intent` → `sending` (committed before the
//! first byte) → `sent`: failures before the text are retried, a 5xx is
//! `failed` (`report.email.failed`), and anything ambiguous after the text is
//! `failed` and never resent: the rare lost report over a duplicate. The body
//! is the built-in text or the maintainer's template, checked at start and by
//! `config check`; a template failing at run time falls back with a warning.
//! Verdicts that get no mail ([`Skip`]: `report.only_on_failure` for PASSED
//! and MERGED, `report.skip_superseded`; a project's `[project.report]` with
//! `mode = "none"`, even on re-send) are recorded as `skipped`. `mode =
//! "submitter"` mails the submitter alone.
//!
//! Re-send: [`ReportStore::ask_resend`] puts a finished report back in `intent`, and the
//! reporter sends it again when it hears the verdict again (the admin action publishes it).
//!
//! Table (SQLite migration 7, PostgreSQL migration 6): `reports` (with the mail as sent), on
//! either store (`db.rs`: one statement text each; [`Reporter::on_postgres`] for reporters on
//! several hosts). This crate knows the stores, not HTTP or runners; it owns the shape of `[report]` ([`ReportSettings`]) but never
//! reads the config file.

pub mod compose;
mod db;
mod read;
mod reporter;
mod settings;
pub mod smtp;

pub use read::{ReportRow, ReportStore};
pub use reporter::{ReportError, Reporter, Skip, Transport, deliver_to_maildir};
pub use settings::{ProjectReport, ReportMode, ReportSettings};
