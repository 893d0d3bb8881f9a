//! Test execution on a runner machine: applying a series with git and
//! running a project's script on it in a sandbox with limits.
//!
//! This crate knows git (its CLI) and the sandbox (bubblewrap, rlimits,
//! cgroups), and nothing of the bus, the store or HTTP: the runner service
//! feeds it self-contained jobs and publishes what it returns. Nothing it
//! returns names the host: the tree is `/build` inside the sandbox, and the
//! runner's paths and host name are scrubbed from git's output.

pub mod git;
pub mod job;
pub mod sandbox;

pub use git::{Applied, GitError, Mirror, Worktree};
pub use job::{Base, Job, JobError, Report, Runner};
pub use sandbox::{Execution, Failure, Isolation, Limits, Sandbox, SandboxError};
