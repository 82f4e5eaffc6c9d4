//! The validated settings, nested by consumer: each part holds everything its consumer reads,
//! so the application hands a loop its part whole. A value several consumers need
//! (`ALLOWED_REPOS`, `RUNNER_LABEL`, `RUNNER_NAME_PREFIX`, `SANDBOX_TIMEOUT_SECS`,
//! `RECONCILE_INTERVAL_SECS`) is parsed once and copied into each part that uses it.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use super::args::{LogFormat, ServeArgs};
use super::backend::{self, BackendSettings};
use super::github::{self, GitHubSettings};
use super::{ConfigError, err};
use crate::domain::{DeploymentId, Gpu, MachinePolicy, NamePrefix, RepoAllowList};
use crate::github::{Hook, RunnerGroups};
use crate::loops::planner::Limits;
use crate::store::Durability;

/// How long a job waits for its run's max-parallel lookup before it is planned as unlimited
/// anyway (not an option: the lookup failing must not strand a job, and 10 s covers a slow
/// GitHub answer).
const STRATEGY_GRACE: Duration = Duration::from_secs(10);

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub github: GitHubSettings,
    pub webhook: WebhookSettings,
    pub store: StoreSettings,
    /// The planner's limits: `MAX_RUNNERS`, the name prefix, what machines jobs may ask for.
    pub limits: Limits,
    pub provisioner: ProvisionerSettings,
    pub reaper: ReaperSettings,
    pub reconciler: ReconcilerSettings,
    pub backend: BackendSettings,
}

/// The process: where it listens, how it logs, how long it waits when stopped.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `BIND_ADDRESS` and `PORT`.
    pub bind: SocketAddr,
    pub log_format: LogFormat,
    /// `SHUTDOWN_GRACE_SECS`: how long shutdown waits for runners being provisioned.
    pub shutdown_grace: Duration,
}

/// The webhook endpoint.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `WEBHOOK_SECRET`: the HMAC key of the signatures.
    pub secret: SecretString,
    /// `RUNNER_LABEL`: the label a job must request.
    pub label: String,
    /// `ALLOWED_REPOS`.
    pub allow: RepoAllowList,
    /// `MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
}

/// The store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `DATABASE_URL`: `sqlite://PATH` or `sqlite::memory:`.
    pub database_url: String,
    /// `STORE_SYNC`: what an answered webhook survives.
    pub sync: Durability,
    /// `STORE_RETENTION_DAYS`: history older than this is pruned.
    pub retention: Duration,
}

/// What the provisioner reads.
#[derive(Debug, Clone)]
pub struct ProvisionerSettings {
    /// `RUNNER_GROUP_ID`, or `RUNNER_GROUP` (resolved at start-up, per organisation).
    pub runner_groups: RunnerGroups,
    /// `SANDBOX_TIMEOUT_SECS`: the lifetime asked of each sandbox.
    pub sandbox_timeout: Duration,
    /// `PROVISION_CONCURRENCY`: runners provisioned at once.
    pub concurrency: usize,
    /// `DEPLOYMENT_ID`: the tag value that marks sandboxes as this deployment's, and the
    /// label that marks its registrations.
    pub deployment: DeploymentId,
    /// `AUTH_FAILURE_PAUSE_SECS`: after GitHub rejects the token or a permission,
    /// provisioning pauses this long: every attempt would fail the same way, and hammering
    /// GitHub helps no one.
    pub auth_pause: Duration,
    /// `GITHUB_JIT_LIMIT_PER_MIN`: JIT registrations per minute GitHub allows; `None` = no
    /// pacing.
    pub jit_limit_per_min: Option<f64>,
}

/// What the reaper reads.
#[derive(Debug, Clone)]
pub struct ReaperSettings {
    /// `REAP_INTERVAL_SECS`: how often runners and sandboxes are checked.
    pub interval: Duration,
    /// `RECONCILE_INTERVAL_SECS`: how often GitHub's runner list is swept for orphan
    /// registrations.
    pub sweep_interval: Duration,
    /// `RUNNER_EXIT_GRACE_SECS`: how long a sandbox may keep running after its job completed
    /// before it is stopped.
    pub exit_grace: Duration,
    /// `SANDBOX_TIMEOUT_SECS`: a sandbox older than this (plus `exit_grace`) is stopped even
    /// if the backend failed to enforce it.
    pub sandbox_timeout: Duration,
    /// `RUNNER_REGISTRATION_TIMEOUT_SECS`.
    pub registration_timeout: Duration,
    /// `RUNNER_IDLE_TIMEOUT_SECS`.
    pub idle_timeout: Duration,
    /// `RUNNER_NAME_PREFIX`: which registrations are this deployment's, with
    /// `deployment`'s label.
    pub prefix: NamePrefix,
    /// `DEPLOYMENT_ID`.
    pub deployment: DeploymentId,
    /// `ALLOWED_REPOS`: the repositories whose registrations are swept.
    pub allow: RepoAllowList,
}

/// What the reconciler reads.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// `RUNNER_LABEL`.
    pub label: String,
    /// `ALLOWED_REPOS`.
    pub allow: RepoAllowList,
    /// `RECONCILE_INTERVAL_SECS`.
    pub interval: Duration,
    /// `WEBHOOK_HOOK_ID`: webhooks whose failed deliveries are redelivered.
    pub hooks: Vec<Hook>,
    /// `REDELIVER_WINDOW_HOURS`: how far back failed deliveries are redelivered.
    pub redeliver_window: Duration,
}

impl Settings {
    /// Validates `args`; secrets not given as files are looked up with `env`.
    pub fn from_args(args: ServeArgs, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let secret = github::secret(
            "WEBHOOK_SECRET",
            "--webhook-secret-file",
            args.webhook_secret_file.as_ref(),
            &env,
        )?;
        let allow = args.allowed_repos.clone().unwrap_or_default();
        let github = github::settings(&args, &env, &allow)?;
        let runner_groups = github::runner_groups(&args)?;
        let deployment = deployment_id(&args, &allow)?;
        let backend = backend::settings(&args, &env, &deployment)?;
        let hooks = github::hooks(args.webhook_hook_id.as_deref(), &allow)?;
        let machine = machine_policy(&args)?;
        let prefix = args.runner_name_prefix;
        let label = args.runner_label;
        Ok(Settings {
            server: ServerSettings {
                bind: SocketAddr::new(args.bind_address, args.port),
                log_format: args.log_format,
                shutdown_grace: args.shutdown_grace_secs,
            },
            github,
            webhook: WebhookSettings {
                secret,
                label: label.clone(),
                allow: allow.clone(),
                max_body_bytes: args.max_body_bytes,
            },
            store: StoreSettings {
                database_url: args.database_url,
                sync: args.store_sync,
                retention: args.store_retention_days,
            },
            limits: Limits {
                max_runners: args.max_runners,
                prefix: prefix.clone(),
                strategy_grace: STRATEGY_GRACE,
                machine,
            },
            provisioner: ProvisionerSettings {
                runner_groups,
                sandbox_timeout: args.sandbox_timeout_secs,
                concurrency: args.provision_concurrency,
                deployment: deployment.clone(),
                auth_pause: args.auth_failure_pause_secs,
                jit_limit_per_min: Some(args.github_jit_limit_per_min).filter(|n| *n > 0.0),
            },
            reaper: ReaperSettings {
                interval: args.reap_interval_secs,
                sweep_interval: args.reconcile_interval_secs,
                exit_grace: args.runner_exit_grace_secs,
                sandbox_timeout: args.sandbox_timeout_secs,
                registration_timeout: args.runner_registration_timeout_secs,
                idle_timeout: args.runner_idle_timeout_secs,
                prefix,
                deployment,
                allow: allow.clone(),
            },
            reconciler: ReconcilerSettings {
                label,
                allow,
                interval: args.reconcile_interval_secs,
                hooks,
                redeliver_window: args.redeliver_window_hours,
            },
            backend,
        })
    }
}

/// `DEPLOYMENT_ID`, or the id derived from the Modal app, the runner name prefix and the
/// owners served. Blank is unset.
fn deployment_id(args: &ServeArgs, allow: &RepoAllowList) -> Result<DeploymentId, ConfigError> {
    let given = super::parse::optional(
        "DEPLOYMENT_ID",
        args.deployment_id.as_deref(),
        DeploymentId::parse,
    )?;
    Ok(given.unwrap_or_else(|| {
        DeploymentId::derive(
            &args.modal.modal_app_name,
            args.runner_name_prefix.as_str(),
            allow.owners(),
        )
    }))
}

/// What machines jobs may ask for with `cpu=`, `memory=` and `gpu=` labels.
fn machine_policy(args: &ServeArgs) -> Result<MachinePolicy, ConfigError> {
    let mut gpu_types = Vec::new();
    for t in args
        .sandbox_gpu_types
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let gpu = Gpu::parse(t).map_err(|m| err("SANDBOX_GPU_TYPES", m))?;
        gpu_types.push(gpu.kind);
    }
    Ok(MachinePolicy {
        max_cpu: args.sandbox_max_cpu,
        max_memory_mib: args.sandbox_max_memory_mib,
        gpu_types,
        max_gpus: args.sandbox_max_gpus,
    })
}
