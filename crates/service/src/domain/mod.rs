//! Parsed, validated values that every other module shares. Nothing here does IO, so each
//! type can be trusted once constructed: a `RepoName` is well formed, a `LabelSet` is
//! normalised, a `RunnerName` fits GitHub's 64-character limit.

mod deployment;
mod event;
#[cfg(test)]
mod fuzz;
mod job;
mod labels;
mod machine;
mod repo;
mod runner;
mod visibility;

pub use deployment::DeploymentId;
pub use event::JobEvent;
pub use job::{Abandoned, JobId, JobStatus};
pub use labels::LabelSet;
pub use machine::{DOCKER_LABEL, FeaturePolicy, Gpu, MachinePolicy, MachineSpec, image_name};
pub use repo::{RepoAllowList, RepoName, RepoNameError};
pub use runner::{InvalidRunnerName, NamePrefix, RunnerName, RunnerState};
pub use visibility::Visibility;

/// Milliseconds since the Unix epoch: the one clock every row in the store uses, so that
/// times survive restarts and compare across processes.
pub type Millis = i64;

/// The operating system's wall-clock time in milliseconds, for times that belong to the
/// outside world (a local process's deadline, GitHub's rate-limit reset). The store and the
/// loops read the injected `clock::Clock` instead, so tests can move their time.
pub fn now_millis() -> Millis {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
