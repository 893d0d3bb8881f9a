//! Test execution on a runner machine: `Runner::run(Job) -> Report`, applying
//! a series with git and running a project's script on it in a sandbox with
//! limits, the disk included: each job's tree lives on a disk of the quota's
//! size (a loop-mounted ext4 image where the runner is root, else a directory
//! measured every 50 ms or so; see [`disk`]), and the sandbox sees only the
//! part of `/etc` builds need (see [`sandbox`]).
//!
//! This crate knows git (its CLI) and the sandbox (bubblewrap, rlimits,
//! cgroups), and nothing of the bus, the store, HTTP or the config file: the
//! runner service feeds it self-contained jobs and publishes what it returns.
//!
//! [`git`]: one bare mirror per repository under `<work>/mirrors` (fetched at
//! most every `fetch_interval_secs`, and again when a `base-commit` is
//! unknown), a detached worktree per job under `<work>/work` (add, remove and
//! prune serialized per mirror), `git am -3` as a fixed identity with no host
//! configuration, and on failure the failing patch (`Patch failed at NNNN`)
//! and hunk (`am --show-current-patch=diff`), then `am --abort`.
//!
//! Choosing the base (`Base::reason` says which and why): the job's
//! `base-commit` when the mirror has it (after a fetch), or when one of the
//! project's other repositories (`Job::remotes`) has it, fetched into the
//! mirror (`base-commit (found in net-next)`); else the head of the branch the
//! tree map chose. At the head, a series that does not apply is tried again in a
//! fresh worktree on the branch as of the series' date (`Job::date`:
//! `git rev-list -1 --first-parent --before=@<date>`), with the reason
//! `branch main as of 2024-03-02, the series' date: it does not apply at the
//! head`; when it fails there too, the head's failure stands and the reason
//! says so. "Already merged" is not "does not apply": when a series does not
//! apply (or `git am -3` skipped every patch), its patches' `git patch-id
//! --stable` are looked up among the branch's last [`job::MERGED_DEPTH`] (2,000)
//! non-merge commits ([`Mirror::merged_patches`]); when all are there,
//! [`Report::merged`] names each commit, nothing is tested and no date
//! fallback is tried. A series only partly merged is an ordinary failure.
//! Dependencies (`Based-on:` mboxes) are applied first, on either base.
//!
//! Failures: [`Failure`] `Failed`, `Timeout` or `Memory` (from the cgroup's
//! OOM-kill count). A job that ends with its disk full or is stopped by the
//! measurement is `Failed` with `Execution::disk_quota_exceeded` and a last
//! log line naming `runner.disk_mib`; a checkout that does not fit is a
//! [`JobError`] naming the quota. A runner starting up unmounts disks a killed
//! predecessor left.
//!
//! Nothing returned names the host: the tree is `/build` inside the sandbox,
//! and [`git::scrub`] replaces the work directory, mirror path and host name
//! as whole tokens (paths as path prefixes, the host name as a word bounded by
//! characters other than `[A-Za-z0-9_.-]`); a plain substring replacement once
//! turned `recvmsg` into `rec<runner>sg` on a host named `vm`.

pub mod disk;
pub mod git;
pub mod job;
pub mod sandbox;
pub mod settings;

pub use disk::Disk;
pub use git::{Applied, GitError, Merged, Mirror, Worktree};
pub use job::{Base, BrokeAt, Job, JobError, Report, Runner, hostname};
pub use sandbox::{DEFAULT_DISK_QUOTA, DISK_CHECK_INTERVAL, ETC, Execution, Failure, Isolation, Limits, Sandbox, SandboxError};
pub use settings::RunnerSettings;
