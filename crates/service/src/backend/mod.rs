//! Sandbox backends. A backend creates, terminates and lists sandboxes and knows nothing
//! about GitHub (docs/design.md §5). Its contract:
//!
//! - `create` is idempotent on the sandbox name: creating a name that is already running
//!   returns the existing sandbox instead of making a second one;
//! - `terminate` succeeds when the sandbox is already gone;
//! - `list` returns only running sandboxes this deployment made.
//!
//! The JIT config reaches the sandbox as a secret environment variable, never as an
//! argument and never in a log line.

pub mod local;
pub mod modal;

use std::time::Duration;

use secrecy::SecretString;

use crate::domain::MachineSpec;

pub use local::{LocalBackend, LocalConfig};
pub use modal::{ModalBackend, ModalSettings};

/// What to run: one runner in one sandbox.
pub struct SandboxSpec {
    /// The runner name; also the sandbox name, which makes `create` idempotent.
    pub name: String,
    /// The job's repository (`owner/name`): a repository-scoped cache volume is its own.
    pub repo: String,
    /// The encoded JIT config (a credential).
    pub jit_config: SecretString,
    /// Tags that mark the sandbox as ours: deployment, job, runner.
    pub tags: Vec<(String, String)>,
    /// The sandbox is stopped after this long, whatever it is doing.
    pub timeout: Duration,
    /// What the job's labels asked for; unset parts take the backend's defaults. The local
    /// backend runs on the host as it is and ignores it.
    pub machine: MachineSpec,
}

/// A running sandbox as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: String,
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A failed backend call, classified by what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Retrying later may succeed (unavailable, rate limited, timeout).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (bad credentials, invalid request, missing runner directory).
    #[error("{0}")]
    Permanent(String),
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Transient(_) => "backend_transient",
            BackendError::Permanent(_) => "backend_permanent",
        }
    }
}

/// The configured backend. An enum rather than a trait object: there are two, both known
/// here, and their methods are plain `async fn`s.
pub enum Backend {
    Local(LocalBackend),
    Modal(Box<ModalBackend>),
}

/// The backend as the leader's loops use it: every call that changes or reads sandboxes
/// first passes the fence, so a replica that lost the leader lease makes none.
#[derive(Clone)]
pub struct FencedBackend {
    backend: std::sync::Arc<Backend>,
    fence: crate::leader::Fence,
}

impl FencedBackend {
    pub fn new(backend: std::sync::Arc<Backend>, fence: crate::leader::Fence) -> FencedBackend {
        FencedBackend { backend, fence }
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.fence.check().await.map_err(|e| {
            tracing::warn!(error = %e, "backend call not made: this replica does not lead");
            BackendError::Transient(format!("not made: {e}"))
        })
    }

    /// `Backend::prepare`, fenced.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        self.check().await?;
        self.backend.prepare().await
    }

    /// `Backend::create`, fenced.
    pub async fn create(&self, spec: SandboxSpec) -> Result<String, BackendError> {
        self.check().await?;
        self.backend.create(spec).await
    }

    /// `Backend::terminate`, fenced.
    pub async fn terminate(&self, id: &str) -> Result<(), BackendError> {
        self.check().await?;
        self.backend.terminate(id).await
    }

    /// `Backend::exit_status` (a read the leader makes about its own sandboxes).
    pub async fn exit_status(&self, id: &str) -> Option<String> {
        self.check().await.ok()?;
        self.backend.exit_status(id).await
    }

    /// `Backend::list`, fenced.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        self.check().await?;
        self.backend.list().await
    }

    /// `Backend::output` (a read the leader makes about its own failed sandboxes), fenced.
    pub async fn output(&self, id: &str) -> Option<String> {
        self.check().await.ok()?;
        self.backend.output(id).await
    }

    pub fn name(&self) -> &'static str {
        self.backend.name()
    }
}

impl Backend {
    /// Start-up work that must finish before the first job: adopting sandboxes that
    /// survived a restart, building the runner image.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => b.prepare().await,
            Backend::Modal(b) => b.prepare().await,
        }
    }

    /// Creates the sandbox (or finds the running one with this name); returns its id.
    pub async fn create(&self, spec: SandboxSpec) -> Result<String, BackendError> {
        match self {
            Backend::Local(b) => b.create(spec).await,
            Backend::Modal(b) => b.create(spec).await,
        }
    }

    /// Stops a sandbox; fine if it is already gone.
    pub async fn terminate(&self, id: &str) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => b.terminate(id).await,
            Backend::Modal(b) => b.terminate(id).await,
        }
    }

    /// How a sandbox ended (e.g. `exited (exit status: 1)`, `FAILURE exit 1`), for the
    /// reason recorded when a runner dies without a job; `None` if unknown.
    pub async fn exit_status(&self, id: &str) -> Option<String> {
        match self {
            Backend::Local(b) => b.exit_status(id),
            Backend::Modal(b) => b.exit_status(id).await,
        }
    }

    /// Running sandboxes this deployment made.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        match self {
            Backend::Local(b) => b.list().await,
            Backend::Modal(b) => b.list().await,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Modal(_) => "modal",
        }
    }
}

// ---- costs and failure logs (issue 13 items 4, 5) ----

/// What Modal's statistics say a finished sandbox cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatsCost {
    /// US dollars at the workspace's rates, covering the sandbox's whole life.
    Dollars(f64),
    /// Not (all) there yet: statistics arrive a few minutes late.
    NotYet,
}

impl Backend {
    /// What a sandbox made for `machine` is given, in the units rates are quoted in; `None`
    /// for the local backend, which runs on the operator's own host and reports no cost.
    pub fn resources(&self, machine: &MachineSpec) -> Option<crate::costs::Resources> {
        match self {
            Backend::Local(_) => None,
            Backend::Modal(b) => Some(b.resources(machine)),
        }
    }

    /// The backend's own figure for a finished sandbox (`ended_at`: Unix milliseconds the
    /// service saw it end); `NotYet` for a backend without one.
    pub async fn stats_cost(&self, id: &str, ended_at: i64) -> Result<StatsCost, BackendError> {
        match self {
            Backend::Local(_) => Ok(StatsCost::NotYet),
            Backend::Modal(b) => b.stats_cost(id, ended_at).await,
        }
    }

    /// What a sandbox wrote (its end, bounded), unmasked: the caller masks it before it is
    /// kept or logged. `None` if nothing could be read.
    pub async fn output(&self, id: &str) -> Option<String> {
        match self {
            Backend::Local(b) => b.output(id),
            Backend::Modal(b) => b.output(id).await,
        }
    }
}
