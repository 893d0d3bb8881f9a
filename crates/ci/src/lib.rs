//! The dispatcher and runner services.
//!
//! The dispatcher turns each `series.series.complete` of a project with a
//! repository into self-contained jobs: one `apply` job ("does it apply?",
//! reported once per series version) and one job per (test, arch), each
//! published on `ci.job.<test>.<arch>.queued`. Every (test, arch) has its own
//! durable queue (`ci-job.<test>.<arch>`), and runners that have the arch and
//! the test's capabilities compete on it, as patchq's workers did.
//!
//! The runner service takes jobs from those queues, publishes
//! `ci.test.started`, runs the job with `patchbay-runner` (mirror, worktree,
//! `git am -3`, sandbox) and publishes the log in bounded `ci.test.log`
//! chunks and one `ci.test.finished`. A test whose series does not apply is
//! reported as ERROR `series-does-not-apply`: the `apply` job already says
//! FAILED once, naming the patch.
//!
//! `runner.jobs` slots are shared by all of a runner's queues through the
//! runtime's `ServiceSpec::slots`: a queue takes a job only while a slot is
//! free, and an idle queue gives its slot back, so jobs are not held by a busy
//! runner while another could run them (on the embedded bus exactly; over
//! RabbitMQ the broker still pushes up to `jobs` per queue ahead).
//!
//! Delivery is at least once: a runner killed mid-job leaves the job unacked
//! and another runner takes it; a job that has been delivered more than
//! `max_attempts` times is reported as ERROR and dead-lettered.
//! This crate knows no backend and no store: dependencies (`Based-on:`) come
//! through the [`Dependencies`] trait the binary implements, and the dates of
//! a series' mails through [`SeriesDates`]: a series whose newest mail is
//! older than `dispatch.max_age_secs` is history, not work, and gets no job.

mod dispatcher;
mod runner;

pub use dispatcher::{
    Dependencies, Dispatcher, MailDates, NoDependencies, ProjectTests, SKIPPED_TOPIC, SeriesDates, TestDef, Tree, pick_tree, too_old,
};
pub use runner::{ALREADY_MERGED, RunnerService, SupersededListener, job_queue, job_topic};

/// The arch word of the `apply` job, which any runner can take.
pub const ANY_ARCH: &str = "any";
