//! Test execution on a runner machine: applying a series with git and
//! running a project's script on it in a sandbox with limits, the disk
//! included: each job's tree lives on a disk of the quota's size (a
//! loop-mounted ext4 image where the runner is root, else a directory
//! measured every 50 ms or so; see [`disk`]), and the sandbox sees only the part
//! of `/etc` builds need.
//!
//! This crate knows git (its CLI) and the sandbox (bubblewrap, rlimits,
//! cgroups), and nothing of the bus, the store or HTTP: the runner service
//! feeds it self-contained jobs and publishes what it returns. Nothing it
//! returns names the host: the tree is `/build` inside the sandbox, and the
//! runner's paths and host name are scrubbed from git's output.

pub mod disk;
pub mod git;
pub mod job;
pub mod sandbox;

pub use disk::Disk;
pub use git::{Applied, GitError, Merged, Mirror, Worktree};
pub use job::{Base, Job, JobError, Report, Runner};
pub use sandbox::{DEFAULT_DISK_QUOTA, DISK_CHECK_INTERVAL, ETC, Execution, Failure, Isolation, Limits, Sandbox, SandboxError};
