//! GitHub REST client for the endpoints of docs/github.md §2: JIT registration, runner
//! lookup and removal, runs and jobs for reconciliation, workflow files for max-parallel.
//!
//! Built on reqwest rather than octocrab because the service needs exact control over
//! retries: octocrab retries every method, POST included, and a retried generate-jitconfig
//! is exactly how duplicate registrations (`409 Already exists`) happen (docs/github.md §2.1).
//! Idempotent calls (GET, DELETE) retry transient failures here; the JIT POST never
//! retries blindly (see `provisioner`).
//!
//! - `endpoints`: one method per REST call the service makes;
//! - `scope`: where runners are registered (repository, organisation, enterprise) and the
//!   runner group they join;
//! - `transport`: authenticated exchanges, retries of idempotent calls, decoding;
//! - `conditional`: the ETags of polled URLs, so an unchanged answer costs no budget;
//! - `auth`: tokens and GitHub App installation tokens;
//! - `rate_limit`: one budget per credential: the rate-limit headers seen, blocks, and
//!   background calls giving way to registrations as the budget drains;
//! - `error`: what a failed call means for the caller;
//! - `probe`: the read-only calls of `modal-github-runner check`.

mod auth;
mod conditional;
mod endpoints;
mod error;
mod probe;
mod rate_limit;
mod scope;
mod transport;
mod types;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;

pub use auth::{AppCredentials, Credentials};
pub use error::GitHubError;
pub use probe::{HookConfig, HookSetup};
pub use rate_limit::{BudgetKey, Priority, RateSnapshot};
pub use scope::{GroupError, RunnerGroups, RunnerHome, RunnerScope};
pub use types::{
    DeleteOutcome, Hook, HookDelivery, JitConfig, JitRequest, RemoteJob, RemoteRun, RunRepository,
    RunnerDownload, RunnerInfo, RunnerLabel,
};

use self::auth::Auth;
use self::conditional::EtagCache;
use self::rate_limit::Budgets;
use crate::metrics::Metrics;
use crate::retry::Backoff;

/// How to reach GitHub.
#[derive(Clone)]
pub struct GitHubConfig {
    /// `https://api.github.com`, `https://HOST/api/v3`, or a test server.
    pub api_url: String,
    pub credentials: Credentials,
    /// Per-request timeout (connect + answer).
    pub timeout: Duration,
    /// Retries of idempotent calls.
    pub retry: Backoff,
    /// `RUNNER_SCOPE`: where runners are registered, looked up and removed.
    pub scope: RunnerScope,
    /// `GITHUB_RATE_RESERVE`: calls of each budget kept for registrations and deletions;
    /// `None` = a tenth of the limit, at least 100.
    pub rate_reserve: Option<u32>,
}

/// A GitHub REST client; cheap to clone.
#[derive(Clone)]
pub struct GitHub {
    inner: Arc<Inner>,
    /// Checked before every request of the leader's loops: a replica that lost the leader
    /// lease sends nothing (`GitHubError::Fenced`).
    fence: Option<crate::leader::Fence>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
    retry: Backoff,
    scope: RunnerScope,
    budgets: Mutex<Budgets>,
    etags: Mutex<EtagCache>,
    metrics: Option<Arc<Metrics>>,
}

impl GitHub {
    /// Whether the API is a GitHub Enterprise Server's (`https://HOST/api/v3`), which
    /// serves its own runner release and no actions/runner repository.
    pub fn is_enterprise_server(&self) -> bool {
        self.inner.base.path().trim_end_matches('/').ends_with("/api/v3")
    }

    /// This client, sending only while `fence` passes: what the leader's loops use.
    pub fn fenced(&self, fence: crate::leader::Fence) -> GitHub {
        GitHub {
            inner: self.inner.clone(),
            fence: Some(fence),
        }
    }

    pub fn new(config: GitHubConfig, metrics: Option<Arc<Metrics>>) -> Result<GitHub, GitHubError> {
        crate::tls::install_crypto_provider();
        let base = Url::parse(config.api_url.trim_end_matches('/'))
            .map_err(|e| GitHubError::Transport(format!("invalid API URL: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("modal-github-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GitHubError::Transport(e.to_string()))?;
        Ok(GitHub {
            inner: Arc::new(Inner {
                http,
                base,
                auth: Auth::new(config.credentials)?,
                retry: config.retry,
                scope: config.scope,
                budgets: Mutex::new(Budgets::with_reserve(config.rate_reserve)),
                etags: Mutex::new(EtagCache::default()),
                metrics,
            }),
            fence: None,
        })
    }
}

#[cfg(test)]
mod tests;
