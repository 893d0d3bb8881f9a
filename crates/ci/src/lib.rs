//! The dispatcher and runner services.
//!
//! The dispatcher turns each `series.series.complete` of a project with a
//! repository into self-contained jobs (repository, branch, base hints,
//! dependency mboxes, the series mbox, the script, limits; id
//! `<series>-v<version>-<test>-<arch>`): one `apply` job ("does it apply?",
//! arch [`ANY_ARCH`], reported once per series version) and one job per
//! (test, arch), each published on `ci.job.<test>.<arch>.queued`. Every
//! (test, arch) has its own durable queue (`ci-job.<test>.<arch>`), declared
//! before anything is dispatched so jobs wait for runners that come later;
//! runners with the arch and the test's capabilities compete on it, as
//! patchq's workers did.
//!
//! Which tree: a project's tree map (`[[project.tree]]`, [`pick_tree`]) sends
//! a series to the first entry one of whose tags is a word in a patch
//! subject's brackets (`[PATCH net-next v2 1/3]`), else the first whose path
//! prefix a file of its `diff --git` lines starts with, else the project's
//! repository and branch; the job says why (`TestJob::tree`) and a
//! `base-commit:` still wins. Every job carries the series' date
//! (`TestJob::date`) for the runner's fallback to the branch as of that date.
//!
//! Old mail is history, not work: a series whose newest mail (from
//! [`SeriesDates`]) is older than `dispatch.max_age_secs` ([`too_old`]) gets no
//! job, only a log line and `ci.job.skipped` ([`SKIPPED_TOPIC`], free-form).
//! A series with a mail on the list `test-anyway.import.patchbay.invalid`
//! (`import --test`) is tested whatever its age.
//!
//! The runner service takes jobs from those queues, publishes
//! `ci.test.started`, runs the job with `patchbay-runner` and publishes the
//! log in `ci.test.log` chunks of at most 64 KiB and one `ci.test.finished`
//! (outcome, base used, a tail excerpt of at most 16 KiB; when the series does
//! not apply, git's messages whole and then the failing patch's diff). A test
//! whose series does not apply is ERROR `series-does-not-apply`: the `apply`
//! job already says FAILED once, naming the patch. A series already in the
//! branch is INFO [`ALREADY_MERGED`] on every job. On
//! `series.series.superseded` ([`SupersededListener`]) it sets aside the
//! superseded version's jobs not yet started (`ci.test.cancelled`); running
//! jobs finish. (The binary sends `ci.runner.heartbeat` from
//! `RunnerService::running` at start and every 30 s.)
//!
//! `runner.jobs` slots are shared by all of a runner's queues through the
//! runtime's `ServiceSpec::slots`: a queue takes a job only while a slot is
//! free, and an idle queue gives its slot back; on RabbitMQ such queues take
//! one message at a time (`on_demand`), so the broker holds nothing ahead.
//!
//! A test's `retries` re-queue a failure (on `ci.test.<test>.<arch>.requeued`, which
//! its queue binds too) for another runner first; `baseline` runs a failing test on the
//! base alone, once per base and test definition, and marks a failure the base shows too
//! `pre_existing` ([`BASELINE_TOPIC`] announces each base run, and every runner's
//! [`BaselineListener`] keeps what it hears, so one run serves all); `per_patch` runs the script
//! after each patch. Re-tests asked on the list are [`recheck`]'s.
//!
//! Delivery is at least once: a runner killed mid-job leaves the job unacked
//! and another runner takes it; a job that has been delivered more than
//! `max_attempts` times is reported as ERROR and dead-lettered.
//! This crate knows no backend, no store and no config file (it owns the shape of
//! `[dispatch]` and `[merged]`, [`DispatchSettings`] and [`MergedSettings`]): dependencies
//! (`Based-on:`) come through the [`Dependencies`] trait the binary
//! implements, and the dates of a series' mails through [`SeriesDates`].

mod dispatcher;
pub mod recheck;
mod runner;
mod settings;

pub use dispatcher::{
    Dependencies, Dispatcher, MailDates, NoDependencies, ProjectTests, SKIPPED_TOPIC, SeriesDates, TestDef, Tree, other_repositories,
    pick_tree, too_old,
};
pub use recheck::{RecheckPorts, Rechecker};
pub use runner::{ALREADY_MERGED, BASELINE_TOPIC, BaselineListener, MAX_RETRIES, RunnerService, SupersededListener, job_queue, job_topic};
pub use settings::{DEFAULT_DISPATCH_MAX_AGE_SECS, DispatchSettings, MergedSettings};

/// The arch word of the `apply` job, which any runner can take; defined in `model`, where every
/// crate that reads results finds it too.
pub use patchbay_model::ANY_ARCH;
