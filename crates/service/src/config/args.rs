//! The `serve` options, as clap reads them from flags and environment variables. Every
//! option except the secrets has a variable (`env`) and a flag (`long`); tools that build a
//! configuration from variables (the test kit) rely on both. One value of one type is parsed
//! here by a value parser whose error names the variable; lists, values whose blank means
//! unset, and what depends on another option are checked by `Settings::from_args`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::modal::ModalArgs;
use super::parse;
use crate::domain::{NamePrefix, RepoAllowList};
use crate::store::Durability;

/// `modal-github-runner serve` options. Defaults are documented in `--help` and README.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// File holding the GitHub token (default: the GITHUB_TOKEN environment variable, required).
    #[arg(long, value_name = "PATH")]
    pub github_token_file: Option<PathBuf>,
    /// Authenticate as this GitHub App instead of with GITHUB_TOKEN.
    #[arg(long, env = "GITHUB_APP_ID", value_name = "ID")]
    pub github_app_id: Option<String>,
    /// File holding the App's private key, PEM (default: the GITHUB_APP_PRIVATE_KEY environment variable).
    #[arg(long, value_name = "PATH")]
    pub github_app_private_key_file: Option<PathBuf>,
    /// One App installation for every call (default: each ALLOWED_REPOS owner's own installation, found as needed).
    #[arg(long, env = "GITHUB_APP_INSTALLATION_ID", value_name = "ID")]
    pub github_app_installation_id: Option<String>,
    /// File holding the webhook secret (default: the WEBHOOK_SECRET environment variable, required).
    #[arg(long, value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding the status page's token (default: the STATUS_TOKEN environment variable;
    /// without one, /status answers only on loopback).
    #[arg(long, value_name = "PATH")]
    pub status_token_file: Option<PathBuf>,
    /// Accept a webhook secret shorter than 16 bytes (a warning is logged at start instead).
    #[arg(
        long,
        env = "ALLOW_WEAK_WEBHOOK_SECRET",
        value_name = "BOOL",
        default_value = "false",
        default_missing_value = "true",
        num_args = 0..=1,
        action = clap::ArgAction::Set,
        value_parser = parse::boolean("ALLOW_WEAK_WEBHOOK_SECRET")
    )]
    pub allow_weak_webhook_secret: bool,
    /// Comma-separated allowlist of owner/repo and owner/* entries; empty allows every repository.
    #[arg(long, env = "ALLOWED_REPOS", value_name = "LIST", value_parser = parse::allow_list())]
    pub allowed_repos: Option<RepoAllowList>,
    /// Runner version for sandbox images (`modal` backend); resolved from GitHub when unset.
    #[arg(long, env = "RUNNER_VERSION", value_name = "VERSION")]
    pub runner_version: Option<String>,
    /// Where runners are registered: at the job's repository, its organisation, or the enterprise.
    #[arg(long, env = "RUNNER_SCOPE", value_enum, default_value = "repo")]
    pub runner_scope: ScopeKind,
    /// The enterprise's slug, with RUNNER_SCOPE=enterprise.
    #[arg(long, env = "GITHUB_ENTERPRISE", value_name = "SLUG")]
    pub github_enterprise: Option<String>,
    /// Runner group of JIT runners, by name (organisation and enterprise runners).
    #[arg(long, env = "RUNNER_GROUP", value_name = "NAME")]
    pub runner_group: Option<String>,
    /// Runner group of JIT runners, by id (default 1, the "Default" group).
    #[arg(
        long,
        env = "RUNNER_GROUP_ID",
        value_name = "ID",
        value_parser = parse::positive::<u64>("RUNNER_GROUP_ID")
    )]
    pub runner_group_id: Option<u64>,
    /// GitHub Enterprise Server host; the API base becomes https://DOMAIN/api/v3.
    #[arg(long, env = "GITHUB_ENTERPRISE_DOMAIN", value_name = "HOST")]
    pub github_enterprise_domain: Option<String>,
    /// GitHub API base URL; overrides GITHUB_ENTERPRISE_DOMAIN. http:// is allowed (tests).
    #[arg(long, env = "GITHUB_API_URL", value_name = "URL")]
    pub github_api_url: Option<String>,
    /// The label a job must request to get a runner (compared without case).
    #[arg(
        long,
        env = "RUNNER_LABEL",
        default_value = "modal",
        value_name = "LABEL",
        value_parser = parse::label()
    )]
    pub runner_label: String,
    /// Runner names are <prefix>-<job id>-<attempt>.
    #[arg(
        long,
        env = "RUNNER_NAME_PREFIX",
        default_value = "modal",
        value_name = "PREFIX",
        value_parser = parse::name_prefix()
    )]
    pub runner_name_prefix: NamePrefix,
    /// This deployment's identity, in its sandboxes' tags and its registrations' labels
    /// (default: derived from MODAL_APP_NAME, RUNNER_NAME_PREFIX and the owners ALLOWED_REPOS names).
    #[arg(long, env = "DEPLOYMENT_ID", value_name = "ID")]
    pub deployment_id: Option<String>,
    /// Where runners run.
    #[arg(long, env = "BACKEND", value_enum, default_value = "modal")]
    pub backend: BackendKind,
    /// The store: sqlite://PATH (created if missing), sqlite::memory:, or
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (several replicas may share it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://modal-github-runner.db",
        value_name = "URL",
        value_parser = parse::database_url()
    )]
    pub database_url: String,
    /// On PostgreSQL: how long the leader's lease lasts; it is renewed every third of it, and
    /// another replica takes over within this long after the leader is lost.
    #[arg(
        long,
        env = "LEADER_LEASE_SECS",
        default_value = "15",
        value_name = "SECS",
        value_parser = parse::lease_secs()
    )]
    pub leader_lease_secs: Duration,
    /// This replica's name in the leader lease, `status` and `/metrics` (default: hostname-pid).
    #[arg(long, env = "REPLICA_ID", value_name = "ID", value_parser = parse::replica_id())]
    pub replica_id: Option<String>,
    /// What an accepted webhook survives: `normal` (the process being killed) or `full` (a power cut too; one fsync per commit).
    #[arg(long, env = "STORE_SYNC", default_value = "normal", value_parser = parse::durability())]
    pub store_sync: Durability,
    /// HTTP port for webhooks and probes (0 = any free port).
    #[arg(long, env = "PORT", default_value = "8000", value_parser = parse::number::<u16>("PORT"))]
    pub port: u16,
    /// Address to listen on.
    #[arg(
        long,
        env = "BIND_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "IP",
        value_parser = parse::ip()
    )]
    pub bind_address: IpAddr,
    /// Cap on runners holding capacity at once (busy ones included).
    #[arg(
        long,
        env = "MAX_RUNNERS",
        default_value = "50",
        value_name = "N",
        value_parser = parse::positive::<usize>("MAX_RUNNERS")
    )]
    pub max_runners: usize,
    /// Where jobs come from: signed webhooks, or a runner scale set's message queue.
    #[arg(long, env = "JOB_SOURCE", value_enum, default_value = "webhook")]
    pub job_source: JobSourceKind,
    /// The runner scale set's name (JOB_SOURCE=scaleset); workflows name it in `runs-on`.
    #[arg(
        long,
        env = "SCALE_SET_NAME",
        default_value = "modal",
        value_name = "NAME",
        value_parser = parse::scale_set_name()
    )]
    pub scale_set_name: String,
    /// Comma-separated extra labels of the scale set (JOB_SOURCE=scaleset).
    #[arg(long, env = "SCALE_SET_LABELS", value_name = "LIST")]
    pub scale_set_labels: Option<String>,
    /// Several scale sets, each with its machine: `NAME[:LABEL;LABEL…],…`, e.g.
    /// `modal,modal-big:cpu=8;memory=32768,modal-gpu:gpu=a10g` (replaces SCALE_SET_NAME).
    #[arg(long, env = "SCALE_SETS", value_name = "LIST")]
    pub scale_sets: Option<String>,
    /// Runners a job may have that never ran it (failed, or ended idle) before the job is
    /// abandoned with the reason; 0: no limit.
    #[arg(long, env = "MAX_ATTEMPTS_PER_JOB", default_value = "3", value_name = "N")]
    pub max_attempts_per_job: u32,
    /// A sandbox is stopped after this many seconds (at most 86400).
    #[arg(
        long,
        env = "SANDBOX_TIMEOUT_SECS",
        default_value = "3600",
        value_name = "SECS",
        value_parser = parse::sandbox_timeout()
    )]
    pub sandbox_timeout_secs: Duration,
    /// Log output: pretty or json. The level comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Directory holding the runner's run.sh (`local` backend).
    #[arg(long, env = "LOCAL_RUNNER_DIR", value_name = "DIR")]
    pub local_runner_dir: Option<PathBuf>,
    /// Where per-runner copies live (`local` backend); default: <temp dir>/modal-github-runner.
    #[arg(long, env = "LOCAL_WORK_DIR", value_name = "DIR")]
    pub local_work_dir: Option<PathBuf>,
    /// Run runners as this user instead of the service's own (`local` backend; the service
    /// must run as root). Runners then cannot read the service's environment or files.
    #[arg(long, env = "LOCAL_RUN_AS", value_name = "USER")]
    pub local_run_as: Option<String>,
    /// Largest webhook body accepted.
    #[arg(
        long,
        env = "MAX_BODY_BYTES",
        default_value = "1048576",
        value_name = "BYTES",
        value_parser = parse::positive::<usize>("MAX_BODY_BYTES")
    )]
    pub max_body_bytes: usize,
    /// Longest time a request head may take to arrive (also how long an idle kept-alive
    /// connection stays open); the connection is closed after it.
    #[arg(
        long,
        env = "HEADER_READ_TIMEOUT_SECS",
        default_value = "30",
        value_name = "SECS",
        value_parser = parse::nonzero_seconds("HEADER_READ_TIMEOUT_SECS")
    )]
    pub header_read_timeout_secs: Duration,
    /// HTTP connections open at once; further ones wait until one closes.
    #[arg(
        long,
        env = "MAX_CONNECTIONS",
        default_value = "1024",
        value_name = "N",
        value_parser = parse::max_connections()
    )]
    pub max_connections: usize,
    /// Serve jobs of public repositories too: there a fork's pull request chooses its own
    /// runs-on, machine labels included.
    #[arg(
        long,
        env = "ALLOW_PUBLIC_REPOS",
        default_value = "false",
        value_name = "BOOL",
        action = clap::ArgAction::Set,
        value_parser = parse::boolean("ALLOW_PUBLIC_REPOS")
    )]
    pub allow_public_repos: bool,
    /// JIT registrations under way at once (GitHub allows 100 concurrent requests per
    /// token, shared with every other call). Default 32.
    #[arg(
        long,
        env = "REGISTRATION_CONCURRENCY",
        value_name = "N",
        value_parser = parse::positive::<usize>("REGISTRATION_CONCURRENCY")
    )]
    pub registration_concurrency: Option<usize>,
    /// The old name of REGISTRATION_CONCURRENCY, still accepted.
    #[arg(
        long,
        env = "PROVISION_CONCURRENCY",
        value_name = "N",
        hide = true,
        value_parser = parse::positive::<usize>("PROVISION_CONCURRENCY")
    )]
    pub provision_concurrency: Option<usize>,
    /// Sandbox creations under way at once. Modal limits creations per second (paced by
    /// MODAL_CREATE_RATE), not at once; this only bounds connections and memory.
    #[arg(
        long,
        env = "SANDBOX_CREATE_CONCURRENCY",
        default_value = "256",
        value_name = "N",
        value_parser = parse::positive::<usize>("SANDBOX_CREATE_CONCURRENCY")
    )]
    pub sandbox_create_concurrency: usize,
    /// Timeout of one GitHub request.
    #[arg(
        long,
        env = "GITHUB_TIMEOUT_SECS",
        default_value = "30",
        value_name = "SECS",
        value_parser = parse::seconds("GITHUB_TIMEOUT_SECS")
    )]
    pub github_timeout_secs: Duration,
    /// How often the reaper checks runners and sandboxes.
    #[arg(
        long,
        env = "REAP_INTERVAL_SECS",
        default_value = "5",
        value_name = "SECS",
        value_parser = parse::seconds("REAP_INTERVAL_SECS")
    )]
    pub reap_interval_secs: Duration,
    /// How long a sandbox may run on after its job completed before it is stopped.
    #[arg(
        long,
        env = "RUNNER_EXIT_GRACE_SECS",
        default_value = "60",
        value_name = "SECS",
        value_parser = parse::seconds("RUNNER_EXIT_GRACE_SECS")
    )]
    pub runner_exit_grace_secs: Duration,
    /// How long shutdown waits for runners being provisioned.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE_SECS",
        default_value = "20",
        value_name = "SECS",
        value_parser = parse::seconds("SHUTDOWN_GRACE_SECS")
    )]
    pub shutdown_grace_secs: Duration,
    /// How often GitHub is polled for jobs whose webhooks were lost (also once at start).
    #[arg(
        long,
        env = "RECONCILE_INTERVAL_SECS",
        default_value = "60",
        value_name = "SECS",
        value_parser = parse::nonzero_seconds("RECONCILE_INTERVAL_SECS")
    )]
    pub reconcile_interval_secs: Duration,
    /// A runner that has not come online at GitHub this long after its sandbox started is replaced.
    #[arg(
        long,
        env = "RUNNER_REGISTRATION_TIMEOUT_SECS",
        default_value = "300",
        value_name = "SECS",
        value_parser = parse::nonzero_seconds("RUNNER_REGISTRATION_TIMEOUT_SECS")
    )]
    pub runner_registration_timeout_secs: Duration,
    /// A runner without a job this long after its sandbox started is removed.
    #[arg(
        long,
        env = "RUNNER_IDLE_TIMEOUT_SECS",
        default_value = "600",
        value_name = "SECS",
        value_parser = parse::nonzero_seconds("RUNNER_IDLE_TIMEOUT_SECS")
    )]
    pub runner_idle_timeout_secs: Duration,
    /// Webhooks whose failed deliveries are redelivered: an id (of the one ALLOWED_REPOS
    /// repository's hook), or a list of owner/repo:ID and org:NAME:ID.
    #[arg(long, env = "WEBHOOK_HOOK_ID", value_name = "HOOKS")]
    pub webhook_hook_id: Option<String>,
    /// How far back failed deliveries are redelivered.
    #[arg(
        long,
        env = "REDELIVER_WINDOW_HOURS",
        default_value = "6",
        value_name = "HOURS",
        value_parser = parse::hours("REDELIVER_WINDOW_HOURS")
    )]
    pub redeliver_window_hours: Duration,
    /// GitHub's limit on JIT registrations per minute per token (secondary limit: 900 points
    /// per endpoint, 5 per POST); registrations are paced just under it. 0 = no pacing.
    #[arg(
        long,
        env = "GITHUB_JIT_LIMIT_PER_MIN",
        default_value = "180",
        value_name = "N",
        value_parser = parse::rate("GITHUB_JIT_LIMIT_PER_MIN")
    )]
    pub github_jit_limit_per_min: f64,
    /// Calls of each GitHub rate-limit budget kept for registrations and deletions: polling,
    /// max-parallel lookups and sweeps stop when only this many are left (and slow down from
    /// half the budget). Default: a tenth of the limit, at least 100.
    #[arg(
        long,
        env = "GITHUB_RATE_RESERVE",
        value_name = "CALLS",
        value_parser = parse::number::<u32>("GITHUB_RATE_RESERVE")
    )]
    pub github_rate_reserve: Option<u32>,
    /// How long provisioning pauses after GitHub refuses the token or a permission.
    #[arg(
        long,
        env = "AUTH_FAILURE_PAUSE_SECS",
        default_value = "300",
        value_name = "SECS",
        value_parser = parse::seconds("AUTH_FAILURE_PAUSE_SECS")
    )]
    pub auth_failure_pause_secs: Duration,
    /// Days of history (completed jobs, ended runners, delivery GUIDs) kept in the store; at
    /// least 3, the window in which GitHub can redeliver a webhook.
    #[arg(
        long,
        env = "STORE_RETENTION_DAYS",
        default_value = "7",
        value_name = "DAYS",
        value_parser = parse::retention_days()
    )]
    pub store_retention_days: Duration,
    /// Most cores a job may ask for with a `cpu=N` label.
    #[arg(
        long,
        env = "SANDBOX_MAX_CPU",
        default_value = "16",
        value_name = "CORES",
        value_parser = parse::cores("SANDBOX_MAX_CPU")
    )]
    pub sandbox_max_cpu: f64,
    /// Most memory a job may ask for with a `memory=N` label (MiB, or GiB with a g suffix).
    #[arg(
        long,
        env = "SANDBOX_MAX_MEMORY_MIB",
        default_value = "65536",
        value_name = "MIB",
        value_parser = parse::positive::<u32>("SANDBOX_MAX_MEMORY_MIB")
    )]
    pub sandbox_max_memory_mib: u32,
    /// GPU types a job may ask for with a `gpu=TYPE[:N]` label, comma-separated (default: none).
    #[arg(long, env = "SANDBOX_GPU_TYPES", value_name = "TYPES")]
    pub sandbox_gpu_types: Option<String>,
    /// Most GPUs a job may ask for.
    #[arg(
        long,
        env = "SANDBOX_MAX_GPUS",
        default_value = "1",
        value_name = "N",
        value_parser = parse::number::<u32>("SANDBOX_MAX_GPUS")
    )]
    pub sandbox_max_gpus: u32,
    // ---- costs (issue 13 item 4) ----
    /// Rates for cost estimates, overriding the built-in table: comma-separated
    /// `NAME=USD_PER_SECOND` with names `cpu` (per physical core), `memory` (per GiB),
    /// `gpu:TYPE` (per GPU) and `factor` (multiplies the estimate).
    #[arg(
        long,
        env = "COST_RATES",
        default_value = "",
        value_name = "RATES",
        value_parser = parse::checked("COST_RATES", |raw| {
            crate::costs::CostRates::parse(raw).map_err(|e| e.to_string())
        })
    )]
    pub cost_rates: crate::costs::CostRates,
    /// New runners stop for the rest of the UTC day once the spend recorded today reaches
    /// this many US dollars (unset: no cap).
    #[arg(
        long,
        env = "MAX_SPEND_PER_DAY",
        value_name = "DOLLARS",
        value_parser = parse::checked("MAX_SPEND_PER_DAY", |raw| {
            raw.trim()
                .parse::<f64>()
                .ok()
                .filter(|d| d.is_finite() && *d >= 0.0)
                .ok_or_else(|| "must be a non-negative number of dollars".to_string())
        })
    )]
    pub max_spend_per_day: Option<f64>,
    /// How long after a sandbox ended its cost waits for Modal's statistics (they arrive a
    /// few minutes late) before it is estimated from the rates instead.
    #[arg(
        long,
        env = "COST_STATS_WAIT_SECS",
        default_value = "900",
        value_name = "SECS",
        value_parser = parse::seconds("COST_STATS_WAIT_SECS")
    )]
    pub cost_stats_wait_secs: Duration,
    /// How often ended runners without a cost are looked at.
    #[arg(
        long,
        env = "COST_POLL_SECS",
        default_value = "60",
        value_name = "SECS",
        value_parser = parse::nonzero_seconds("COST_POLL_SECS")
    )]
    pub cost_poll_secs: Duration,
    // ---- end costs ----
    // ---- warm pool (issue 13 item 3) ----
    /// Idle runners kept registered and ready per label set: `;`-separated
    /// `LABEL+LABEL…=N`, e.g. `self-hosted+modal=2; self-hosted+modal+cpu=8=1`.
    #[arg(
        long,
        env = "WARM_POOL",
        default_value = "",
        value_name = "POOLS",
        value_parser = parse::checked("WARM_POOL", |raw| {
            crate::loops::planner::warm::parse(raw).map_err(|e| e.to_string())
        })
    )]
    pub warm_pool: crate::loops::planner::warm::WarmPools,
    #[command(flatten)]
    pub modal: ModalArgs,
}

/// Where runners are registered (`RUNNER_SCOPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeKind {
    /// At the job's repository.
    Repo,
    /// At the organisation owning the job's repository.
    Org,
    /// At the enterprise `GITHUB_ENTERPRISE`.
    Enterprise,
}

/// Where jobs come from (`JOB_SOURCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobSourceKind {
    /// Signed `workflow_job` webhooks at `POST /webhook`.
    Webhook,
    /// A runner scale set's message queue, long-polled: no public endpoint.
    Scaleset,
}

/// Where runners run (`BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Sandboxes on Modal (production).
    Modal,
    /// Child processes on this machine (development, tests, single-host use).
    Local,
}

/// How log lines look (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}
