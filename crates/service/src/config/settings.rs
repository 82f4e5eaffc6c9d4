//! The validated settings, nested by consumer: each part holds everything its consumer reads,
//! so the application hands a loop its part whole. A value several consumers need
//! (`ALLOWED_REPOS`, `RUNNER_LABEL`, `RUNNER_NAME_PREFIX`, `SANDBOX_TIMEOUT_SECS`,
//! `RECONCILE_INTERVAL_SECS`) is parsed once and copied into each part that uses it.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use super::args::{BackendKind, LogFormat, ServeArgs};
use super::backend::{self, BackendSettings};
use super::github::{self, GitHubSettings};
use super::security::{self, ConfigWarning};
use super::{ConfigError, err};
use crate::domain::{DeploymentId, Gpu, MachinePolicy, NamePrefix, RepoAllowList};
use crate::github::{Hook, RunnerGroups, RunnerScope};
use crate::loops::planner::{Limits, PoolScope};
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
    /// Costs and the daily spend cap (issue 13 item 4).
    pub costs: CostSettings,
    /// `JOB_SOURCE`: webhooks, or a runner scale set's message queue.
    pub source: super::scaleset::JobSource,
}

impl Settings {
    /// Every configured secret value, for masking a sandbox's output before it is kept
    /// (issue 13 item 5). Only for that: never log or store what this returns.
    pub fn secret_values(&self) -> Vec<SecretString> {
        use crate::github::Credentials;
        let mut out = vec![self.webhook.secret.clone()];
        match &self.github.credentials {
            Credentials::Token(t) => out.push(t.clone()),
            Credentials::App(app) => out.push(app.private_key.clone()),
        }
        if let BackendSettings::Modal { settings, .. } = &self.backend {
            out.push(settings.connection.token_secret.clone());
        }
        out
    }
}

/// What runners cost and how much may be spent per day.
#[derive(Debug, Clone)]
pub struct CostSettings {
    /// `COST_RATES` over the built-in table: what estimates use.
    pub rates: crate::costs::CostRates,
    /// `MAX_SPEND_PER_DAY` in US dollars; `None`: no cap.
    pub max_per_day: Option<f64>,
    /// `COST_STATS_WAIT_SECS`: how long a cost waits for Modal's statistics.
    pub stats_wait: Duration,
    /// `COST_POLL_SECS`: how often costs are looked for.
    pub poll: Duration,
}

/// The process: where it listens, how it logs, how long it waits when stopped.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `BIND_ADDRESS` and `PORT`.
    pub bind: SocketAddr,
    pub log_format: LogFormat,
    /// `SHUTDOWN_GRACE_SECS`: how long shutdown waits for runners being provisioned.
    pub shutdown_grace: Duration,
    /// `HEADER_READ_TIMEOUT_SECS`: a request head slower than this closes its connection.
    pub header_read_timeout: Duration,
    /// `MAX_CONNECTIONS`: HTTP connections open at once.
    pub max_connections: usize,
    /// `STATUS_TOKEN`: what `/status` asks for; `None`: it answers only on loopback.
    pub status_token: Option<SecretString>,
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
    /// `ALLOW_PUBLIC_REPOS`: whether jobs of public repositories get runners.
    pub allow_public: bool,
}

/// The store.
#[derive(Clone)]
pub struct StoreSettings {
    /// `DATABASE_URL`: `sqlite://PATH`, `sqlite::memory:` or `postgres://…` (which can hold
    /// a password: `Debug` prints it redacted).
    pub database_url: String,
    /// `LEADER_LEASE_SECS`: the leader lease's length (PostgreSQL only).
    pub leader_lease: Duration,
    /// `REPLICA_ID`, or `hostname-pid`.
    pub replica_id: String,
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
    /// `REGISTRATION_CONCURRENCY` (or its old name `PROVISION_CONCURRENCY`): JIT
    /// registrations under way at once.
    pub registration_concurrency: usize,
    /// `SANDBOX_CREATE_CONCURRENCY`: sandbox creations under way at once.
    pub create_concurrency: usize,
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
    /// `ALLOW_PUBLIC_REPOS`: whether polled jobs of public repositories are recorded.
    pub allow_public: bool,
}

/// JIT registrations under way at once unless configured: a third of GitHub's 100
/// concurrent requests, leaving room for every other call.
const DEFAULT_REGISTRATION_CONCURRENCY: usize = 32;

/// `STATUS_TOKEN` (or `--status-token-file`), when set; blank counts as unset.
fn status_token(
    file: Option<&std::path::PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<SecretString>, ConfigError> {
    let set = file.is_some() || env("STATUS_TOKEN").is_some_and(|v| !v.trim().is_empty());
    if !set {
        return Ok(None);
    }
    github::secret("STATUS_TOKEN", "--status-token-file", file, env).map(Some)
}

impl Settings {
    /// Validates `args`; secrets not given as files are looked up with `env`.
    pub fn from_args(args: ServeArgs, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let secret = webhook_secret(&args, &env)?;
        let allow = args.allowed_repos.clone().unwrap_or_default();
        let github = github::settings(&args, &env, &allow)?;
        let source = super::scaleset::source(&args, &github.scope, &allow)?;
        let pools = match github.scope {
            RunnerScope::Repo => PoolScope::Repository,
            RunnerScope::Org => PoolScope::Owner,
            RunnerScope::Enterprise(_) => PoolScope::Everything,
        };
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
                header_read_timeout: args.header_read_timeout_secs,
                max_connections: args.max_connections,
                status_token: status_token(args.status_token_file.as_ref(), &env)?,
            },
            github,
            webhook: WebhookSettings {
                secret,
                label: label.clone(),
                allow: allow.clone(),
                max_body_bytes: args.max_body_bytes,
                allow_public: args.allow_public_repos,
            },
            store: StoreSettings {
                database_url: args.database_url,
                leader_lease: args.leader_lease_secs,
                replica_id: args.replica_id.unwrap_or_else(default_replica_id),
                sync: args.store_sync,
                retention: args.store_retention_days,
            },
            limits: Limits {
                max_runners: args.max_runners,
                prefix: prefix.clone(),
                strategy_grace: STRATEGY_GRACE,
                machine,
                max_attempts: args.max_attempts_per_job,
                pools,
                warm: args.warm_pool.0.clone(),
            },
            provisioner: ProvisionerSettings {
                runner_groups,
                sandbox_timeout: args.sandbox_timeout_secs,
                registration_concurrency: args
                    .registration_concurrency
                    .or(args.provision_concurrency)
                    .unwrap_or(DEFAULT_REGISTRATION_CONCURRENCY),
                create_concurrency: args.sandbox_create_concurrency,
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
                allow_public: args.allow_public_repos,
            },
            backend,
            costs: CostSettings {
                rates: args.cost_rates,
                max_per_day: args.max_spend_per_day,
                stats_wait: args.cost_stats_wait_secs,
                poll: args.cost_poll_secs,
            },
            source,
        })
    }
}

/// `WEBHOOK_SECRET`: required for webhooks; with a scale set, where `POST /webhook` answers
/// 404, an unset secret is replaced by a random one nobody knows.
fn webhook_secret(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<SecretString, ConfigError> {
    let given =
        args.webhook_secret_file.is_some() || env("WEBHOOK_SECRET").is_some_and(|v| !v.trim().is_empty());
    if args.job_source == super::args::JobSourceKind::Scaleset && !given {
        return Ok(SecretString::from(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )));
    }
    let secret = github::secret(
        "WEBHOOK_SECRET",
        "--webhook-secret-file",
        args.webhook_secret_file.as_ref(),
        env,
    )?;
    security::check_webhook_secret(&secret, args.allow_weak_webhook_secret)?;
    Ok(secret)
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

impl Settings {
    /// What is accepted but weakens the deployment (a weak webhook secret that
    /// `ALLOW_WEAK_WEBHOOK_SECRET` let through, plaintext API URLs outside this machine):
    /// `serve` logs each as a warning at start.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        if security::is_weak(&self.webhook.secret) {
            out.push(security::weak_secret_warning());
        }
        out.extend(security::plaintext_warning(
            "GITHUB_API_URL",
            &self.github.api_url,
            "the GitHub token and JIT runner configurations",
        ));
        if let BackendSettings::Modal { settings, .. } = &self.backend {
            out.extend(security::plaintext_warning(
                "MODAL_SERVER_URL",
                &settings.connection.server_url,
                "the Modal token and the runners' JIT configurations",
            ));
        }
        out
    }
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
    // Issue 13: `docker` and `image=` are Modal sandbox features; the local backend runs
    // on the host as it is and ignores those labels, as it ignores the machine labels.
    let default_gpu = args
        .modal
        .sandbox_gpu
        .as_deref()
        .is_some_and(|g| !g.trim().is_empty());
    let features = (args.backend == BackendKind::Modal)
        .then(|| super::features::policy(&args.modal.features, default_gpu));
    Ok(MachinePolicy {
        max_cpu: args.sandbox_max_cpu,
        max_memory_mib: args.sandbox_max_memory_mib,
        gpu_types,
        max_gpus: args.sandbox_max_gpus,
        features,
    })
}

/// `hostname-pid`: unique among replicas on one host and across hosts.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_string());
    format!("{host}-{}", std::process::id())
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("database_url", &crate::store::redacted_url(&self.database_url))
            .field("leader_lease", &self.leader_lease)
            .field("replica_id", &self.replica_id)
            .field("sync", &self.sync)
            .field("retention", &self.retention)
            .finish()
    }
}
