//! GitHub REST client for the endpoints of github-contract.md §2: JIT registration, runner
//! lookup and removal, runs and jobs for reconciliation, workflow files for max-parallel.
//!
//! Built on reqwest rather than octocrab because the service needs exact control over
//! retries: octocrab retries every method, POST included, and a retried generate-jitconfig
//! is exactly how duplicate registrations (`409 Already exists`) happen (§5, §6.2).
//! Idempotent calls (GET, DELETE) retry transient failures here; the JIT POST never
//! retries blindly (see `provisioner`).

mod auth;
mod client;
mod error;
mod types;

pub use auth::{AppCredentials, Credentials};
pub use client::{GitHub, GitHubConfig, RateSnapshot};
pub use error::GitHubError;
pub use types::{
    DeleteOutcome, Hook, HookDelivery, JitConfig, JitRequest, RemoteJob, RemoteRun, RunnerDownload,
    RunnerInfo,
};
