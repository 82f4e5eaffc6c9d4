//! Configuration: environment variables (the original system's names keep their meaning),
//! each with a command-line flag that overrides it. Everything is validated at start-up;
//! the first problem stops the service with one message that names the variable.
//!
//! Secrets (`GITHUB_TOKEN`, `WEBHOOK_SECRET`) are read from the environment or, with a
//! flag, from a file: never from a flag value, which would put them in the process list.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

use crate::backend::modal::ModalSettings;
use crate::domain::{Gpu, MachinePolicy, NamePrefix, RepoAllowList, RepoName};
use crate::github::{AppCredentials, Credentials, Hook};
use crate::runner_version::RunnerVersion;
use crate::store::Durability;

mod modal;

pub use modal::ModalArgs;

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
    /// The App's installation (default: the installation on the first ALLOWED_REPOS repository).
    #[arg(long, env = "GITHUB_APP_INSTALLATION_ID", value_name = "ID")]
    pub github_app_installation_id: Option<String>,
    /// File holding the webhook secret (default: the WEBHOOK_SECRET environment variable, required).
    #[arg(long, value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Comma-separated owner/repo allowlist; empty allows every repository.
    #[arg(long, env = "ALLOWED_REPOS", value_name = "LIST")]
    pub allowed_repos: Option<String>,
    /// Runner version for sandbox images (`modal` backend); resolved from GitHub when unset.
    #[arg(long, env = "RUNNER_VERSION", value_name = "VERSION")]
    pub runner_version: Option<String>,
    /// Runner group of JIT runners.
    #[arg(long, env = "RUNNER_GROUP_ID", default_value = "1", value_name = "ID")]
    pub runner_group_id: String,
    /// GitHub Enterprise Server host; the API base becomes https://DOMAIN/api/v3.
    #[arg(long, env = "GITHUB_ENTERPRISE_DOMAIN", value_name = "HOST")]
    pub github_enterprise_domain: Option<String>,
    /// GitHub API base URL; overrides GITHUB_ENTERPRISE_DOMAIN. http:// is allowed (tests).
    #[arg(long, env = "GITHUB_API_URL", value_name = "URL")]
    pub github_api_url: Option<String>,
    /// The label a job must request to get a runner (compared without case).
    #[arg(long, env = "RUNNER_LABEL", default_value = "modal", value_name = "LABEL")]
    pub runner_label: String,
    /// Runner names are <prefix>-<job id>-<attempt>.
    #[arg(
        long,
        env = "RUNNER_NAME_PREFIX",
        default_value = "modal",
        value_name = "PREFIX"
    )]
    pub runner_name_prefix: String,
    /// Where runners run.
    #[arg(long, env = "BACKEND", value_enum, default_value = "modal")]
    pub backend: BackendKind,
    /// The store: sqlite://PATH (created if missing) or sqlite::memory:.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://modal-github-runner.db",
        value_name = "URL"
    )]
    pub database_url: String,
    /// What an accepted webhook survives: `normal` (the process being killed) or `full` (a power cut too; one fsync per commit).
    #[arg(long, env = "STORE_SYNC", value_enum, default_value = "normal")]
    pub store_sync: Durability,
    /// HTTP port for webhooks and probes (0 = any free port).
    #[arg(long, env = "PORT", default_value = "8000")]
    pub port: String,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0", value_name = "IP")]
    pub bind_address: String,
    /// Cap on runners holding capacity at once (busy ones included).
    #[arg(long, env = "MAX_RUNNERS", default_value = "50", value_name = "N")]
    pub max_runners: String,
    /// A sandbox is stopped after this many seconds (at most 86400).
    #[arg(
        long,
        env = "SANDBOX_TIMEOUT_SECS",
        default_value = "3600",
        value_name = "SECS"
    )]
    pub sandbox_timeout_secs: String,
    /// Log output: pretty or json. The level comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Directory holding the runner's run.sh (`local` backend).
    #[arg(long, env = "LOCAL_RUNNER_DIR", value_name = "DIR")]
    pub local_runner_dir: Option<PathBuf>,
    /// Where per-runner copies live (`local` backend); default: <temp dir>/modal-github-runner.
    #[arg(long, env = "LOCAL_WORK_DIR", value_name = "DIR")]
    pub local_work_dir: Option<PathBuf>,
    /// Largest webhook body accepted.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "1048576", value_name = "BYTES")]
    pub max_body_bytes: String,
    /// Runners provisioned at once (GitHub allows 100 concurrent requests per token).
    #[arg(long, env = "PROVISION_CONCURRENCY", default_value = "32", value_name = "N")]
    pub provision_concurrency: String,
    /// Timeout of one GitHub request.
    #[arg(long, env = "GITHUB_TIMEOUT_SECS", default_value = "30", value_name = "SECS")]
    pub github_timeout_secs: String,
    /// How often the reaper checks runners and sandboxes.
    #[arg(long, env = "REAP_INTERVAL_SECS", default_value = "5", value_name = "SECS")]
    pub reap_interval_secs: String,
    /// How long a sandbox may run on after its job completed before it is stopped.
    #[arg(
        long,
        env = "RUNNER_EXIT_GRACE_SECS",
        default_value = "60",
        value_name = "SECS"
    )]
    pub runner_exit_grace_secs: String,
    /// How long shutdown waits for runners being provisioned.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value = "20", value_name = "SECS")]
    pub shutdown_grace_secs: String,
    /// How often GitHub is polled for jobs whose webhooks were lost (also once at start).
    #[arg(
        long,
        env = "RECONCILE_INTERVAL_SECS",
        default_value = "60",
        value_name = "SECS"
    )]
    pub reconcile_interval_secs: String,
    /// A runner that has not come online at GitHub this long after its sandbox started is replaced.
    #[arg(
        long,
        env = "RUNNER_REGISTRATION_TIMEOUT_SECS",
        default_value = "300",
        value_name = "SECS"
    )]
    pub runner_registration_timeout_secs: String,
    /// A runner without a job this long after its sandbox started is removed.
    #[arg(
        long,
        env = "RUNNER_IDLE_TIMEOUT_SECS",
        default_value = "600",
        value_name = "SECS"
    )]
    pub runner_idle_timeout_secs: String,
    /// Webhooks whose failed deliveries are redelivered: an id (of the one ALLOWED_REPOS
    /// repository's hook), or a list of owner/repo:ID and org:NAME:ID.
    #[arg(long, env = "WEBHOOK_HOOK_ID", value_name = "HOOKS")]
    pub webhook_hook_id: Option<String>,
    /// How far back failed deliveries are redelivered.
    #[arg(
        long,
        env = "REDELIVER_WINDOW_HOURS",
        default_value = "6",
        value_name = "HOURS"
    )]
    pub redeliver_window_hours: String,
    /// GitHub's limit on JIT registrations per minute per token (secondary limit: 900 points
    /// per endpoint, 5 per POST); registrations are paced just under it. 0 = no pacing.
    #[arg(
        long,
        env = "GITHUB_JIT_LIMIT_PER_MIN",
        default_value = "180",
        value_name = "N"
    )]
    pub github_jit_limit_per_min: String,
    /// How long provisioning pauses after GitHub refuses the token or a permission.
    #[arg(
        long,
        env = "AUTH_FAILURE_PAUSE_SECS",
        default_value = "300",
        value_name = "SECS"
    )]
    pub auth_failure_pause_secs: String,
    /// Days of history (completed jobs, ended runners, delivery GUIDs) kept in the store; at
    /// least 3, the window in which GitHub can redeliver a webhook.
    #[arg(long, env = "STORE_RETENTION_DAYS", default_value = "7", value_name = "DAYS")]
    pub store_retention_days: String,
    /// Most cores a job may ask for with a `cpu=N` label.
    #[arg(long, env = "SANDBOX_MAX_CPU", default_value = "16", value_name = "CORES")]
    pub sandbox_max_cpu: String,
    /// Most memory a job may ask for with a `memory=N` label (MiB, or GiB with a g suffix).
    #[arg(
        long,
        env = "SANDBOX_MAX_MEMORY_MIB",
        default_value = "65536",
        value_name = "MIB"
    )]
    pub sandbox_max_memory_mib: String,
    /// GPU types a job may ask for with a `gpu=TYPE[:N]` label, comma-separated (default: none).
    #[arg(long, env = "SANDBOX_GPU_TYPES", value_name = "TYPES")]
    pub sandbox_gpu_types: Option<String>,
    /// Most GPUs a job may ask for.
    #[arg(long, env = "SANDBOX_MAX_GPUS", default_value = "1", value_name = "N")]
    pub sandbox_max_gpus: String,
    #[command(flatten)]
    pub modal: ModalArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Sandboxes on Modal (production).
    Modal,
    /// Child processes on this machine (development, tests, single-host use).
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A configuration problem, naming the variable (and its flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A token (`GITHUB_TOKEN`) or a GitHub App (`GITHUB_APP_ID`, …).
    pub github: Credentials,
    pub webhook_secret: SecretString,
    pub allowed_repos: RepoAllowList,
    pub runner_version: Option<String>,
    pub runner_group_id: u64,
    pub github_api_url: String,
    pub runner_label: String,
    pub prefix: NamePrefix,
    pub backend: BackendSettings,
    pub database_url: String,
    pub store_sync: Durability,
    pub bind: (IpAddr, u16),
    pub max_runners: usize,
    pub sandbox_timeout: Duration,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub provision_concurrency: usize,
    pub github_timeout: Duration,
    pub reap_interval: Duration,
    pub runner_exit_grace: Duration,
    pub shutdown_grace: Duration,
    pub reconcile_interval: Duration,
    pub registration_timeout: Duration,
    pub idle_timeout: Duration,
    pub hooks: Vec<Hook>,
    pub redeliver_window: Duration,
    pub auth_pause: Duration,
    /// JIT registrations per minute GitHub allows; `None` = no pacing.
    pub jit_limit_per_min: Option<f64>,
    pub machine: MachinePolicy,
    pub retention: Duration,
}

/// The chosen backend and its settings.
#[derive(Debug, Clone)]
pub enum BackendSettings {
    Local {
        runner_dir: PathBuf,
        work_dir: PathBuf,
    },
    Modal {
        settings: Box<ModalSettings>,
        runner_version: Option<RunnerVersion>,
    },
}

impl Settings {
    /// Validates `args`; secrets not given as files are looked up with `env`.
    pub fn from_args(args: ServeArgs, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let webhook_secret = secret(
            "WEBHOOK_SECRET",
            "--webhook-secret-file",
            args.webhook_secret_file.as_ref(),
            &env,
        )?;
        let allowed_repos = RepoAllowList::parse(args.allowed_repos.as_deref().unwrap_or(""))
            .map_err(|e| err("ALLOWED_REPOS", e.to_string()))?;
        let allowed_repos_for_hooks = allowed_repos.clone();
        let github = github_credentials(&args, &env, &allowed_repos)?;
        let runner_label = args.runner_label.trim().to_string();
        if runner_label.is_empty() || runner_label.contains(',') {
            return Err(err("RUNNER_LABEL", "must be one non-empty label without commas"));
        }
        let prefix = NamePrefix::parse(&args.runner_name_prefix).map_err(|m| err("RUNNER_NAME_PREFIX", m))?;
        let backend = backend(&args, &env, &prefix)?;
        let sandbox_timeout =
            Duration::from_secs(number::<u64>("SANDBOX_TIMEOUT_SECS", &args.sandbox_timeout_secs)?);
        if sandbox_timeout.is_zero() || sandbox_timeout > Duration::from_secs(86_400) {
            return Err(err(
                "SANDBOX_TIMEOUT_SECS",
                "must be between 1 and 86400 (Modal's 24 h maximum)",
            ));
        }
        let port = number::<u16>("PORT", &args.port)?;
        let ip = args.bind_address.parse::<IpAddr>().map_err(|_| {
            err(
                "BIND_ADDRESS",
                format!("`{}` is not an IP address", args.bind_address),
            )
        })?;
        Ok(Settings {
            github,
            webhook_secret,
            allowed_repos,
            runner_version: args.runner_version.clone().filter(|v| !v.trim().is_empty()),
            runner_group_id: positive("RUNNER_GROUP_ID", &args.runner_group_id)?,
            github_api_url: api_url(
                args.github_api_url.as_deref(),
                args.github_enterprise_domain.as_deref(),
            )?,
            runner_label,
            prefix,
            backend,
            database_url: database_url(&args.database_url)?,
            store_sync: args.store_sync,
            bind: (ip, port),
            max_runners: positive("MAX_RUNNERS", &args.max_runners)?,
            sandbox_timeout,
            log_format: args.log_format,
            max_body_bytes: positive("MAX_BODY_BYTES", &args.max_body_bytes)?,
            provision_concurrency: positive("PROVISION_CONCURRENCY", &args.provision_concurrency)?,
            github_timeout: seconds("GITHUB_TIMEOUT_SECS", &args.github_timeout_secs)?,
            reap_interval: seconds("REAP_INTERVAL_SECS", &args.reap_interval_secs)?,
            runner_exit_grace: seconds("RUNNER_EXIT_GRACE_SECS", &args.runner_exit_grace_secs)?,
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECS", &args.shutdown_grace_secs)?,
            reconcile_interval: nonzero("RECONCILE_INTERVAL_SECS", &args.reconcile_interval_secs)?,
            registration_timeout: nonzero(
                "RUNNER_REGISTRATION_TIMEOUT_SECS",
                &args.runner_registration_timeout_secs,
            )?,
            idle_timeout: nonzero("RUNNER_IDLE_TIMEOUT_SECS", &args.runner_idle_timeout_secs)?,
            hooks: hooks(args.webhook_hook_id.as_deref(), &allowed_repos_for_hooks)?,
            redeliver_window: Duration::from_secs_f64(
                seconds("REDELIVER_WINDOW_HOURS", &args.redeliver_window_hours)?.as_secs_f64() * 3600.0,
            ),
            auth_pause: seconds("AUTH_FAILURE_PAUSE_SECS", &args.auth_failure_pause_secs)?,
            machine: machine_policy(&args)?,
            retention: {
                let days: f64 = number("STORE_RETENTION_DAYS", &args.store_retention_days)?;
                if !(days.is_finite() && days >= 3.0) {
                    return Err(err(
                        "STORE_RETENTION_DAYS",
                        "must be at least 3 (GitHub redelivers webhooks for 3 days)",
                    ));
                }
                Duration::from_secs_f64(days * 86_400.0)
            },
            jit_limit_per_min: {
                let n: f64 = number("GITHUB_JIT_LIMIT_PER_MIN", &args.github_jit_limit_per_min)?;
                if !n.is_finite() || n < 0.0 {
                    return Err(err(
                        "GITHUB_JIT_LIMIT_PER_MIN",
                        "must be 0 (no pacing) or a positive number",
                    ));
                }
                (n > 0.0).then_some(n)
            },
        })
    }
}

/// `GITHUB_TOKEN`, or a GitHub App: exactly one of them.
fn github_credentials(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    allowed: &RepoAllowList,
) -> Result<Credentials, ConfigError> {
    let Some(app_id) = args
        .github_app_id
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    else {
        return secret(
            "GITHUB_TOKEN",
            "--github-token-file",
            args.github_token_file.as_ref(),
            env,
        )
        .map(Credentials::Token);
    };
    if args.github_token_file.is_some() || env("GITHUB_TOKEN").is_some_and(|t| !t.trim().is_empty()) {
        return Err(err(
            "GITHUB_APP_ID",
            "set either GITHUB_TOKEN or a GitHub App, not both",
        ));
    }
    let app_id = positive("GITHUB_APP_ID", app_id)?;
    let private_key = secret(
        "GITHUB_APP_PRIVATE_KEY",
        "--github-app-private-key-file",
        args.github_app_private_key_file.as_ref(),
        env,
    )?;
    let installation_id = args
        .github_app_installation_id
        .as_deref()
        .filter(|i| !i.trim().is_empty())
        .map(|i| positive("GITHUB_APP_INSTALLATION_ID", i))
        .transpose()?;
    let discovery_repo = allowed.listed().and_then(|r| r.first().cloned());
    if installation_id.is_none() && discovery_repo.is_none() {
        return Err(err(
            "GITHUB_APP_INSTALLATION_ID",
            "is required with a GitHub App unless ALLOWED_REPOS names a repository to find it from",
        ));
    }
    let app = AppCredentials {
        app_id,
        private_key,
        installation_id,
        discovery_repo,
    };
    app.validate().map_err(|m| err("GITHUB_APP_PRIVATE_KEY", m))?;
    Ok(Credentials::App(app))
}

fn secret(
    var: &'static str,
    flag: &str,
    file: Option<&PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<SecretString, ConfigError> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| err(var, format!("could not read {flag} {}: {e}", path.display())))?,
        None => env(var).ok_or_else(|| {
            err(
                var,
                format!("is required: set the {var} environment variable or pass {flag}"),
            )
        })?,
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(err(var, "is empty"));
    }
    Ok(SecretString::from(value.to_string()))
}

fn number<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| err(var, format!("`{value}` is not a valid number")))
}

fn positive<T: std::str::FromStr + Default + PartialOrd>(
    var: &'static str,
    value: &str,
) -> Result<T, ConfigError> {
    let n: T = number(var, value)?;
    if n <= T::default() {
        return Err(err(var, "must be greater than 0"));
    }
    Ok(n)
}

/// Seconds, fractions allowed (intervals in tests run well below a second).
fn seconds(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = number(var, value)?;
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(err(var, format!("`{value}` is not a duration in seconds")));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn machine_policy(args: &ServeArgs) -> Result<MachinePolicy, ConfigError> {
    let max_cpu: f64 = number("SANDBOX_MAX_CPU", &args.sandbox_max_cpu)?;
    if !(max_cpu.is_finite() && max_cpu > 0.0) {
        return Err(err("SANDBOX_MAX_CPU", "must be a positive number of cores"));
    }
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
        max_cpu,
        max_memory_mib: positive("SANDBOX_MAX_MEMORY_MIB", &args.sandbox_max_memory_mib)?,
        gpu_types,
        max_gpus: number("SANDBOX_MAX_GPUS", &args.sandbox_max_gpus)?,
    })
}

fn nonzero(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let d = seconds(var, value)?;
    if d.is_zero() {
        return Err(err(var, "must be greater than 0"));
    }
    Ok(d)
}

/// `WEBHOOK_HOOK_ID`: `ID` (the hook of the single allowed repository), or a comma list of
/// `owner/repo:ID` and `org:NAME:ID`.
fn hooks(raw: Option<&str>, allowed: &RepoAllowList) -> Result<Vec<Hook>, ConfigError> {
    const VAR: &str = "WEBHOOK_HOOK_ID";
    let mut out = Vec::new();
    for entry in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let id = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| err(VAR, format!("`{s}` is not a hook id")))
        };
        if let Some(rest) = entry.strip_prefix("org:") {
            let (org, hook) = rest
                .rsplit_once(':')
                .ok_or_else(|| err(VAR, format!("`{entry}` is not org:NAME:ID")))?;
            out.push(Hook::Org {
                org: org.to_string(),
                id: id(hook)?,
            });
        } else if let Some((repo, hook)) = entry.rsplit_once(':') {
            let repo = RepoName::parse(repo).map_err(|e| err(VAR, e.to_string()))?;
            out.push(Hook::Repo { repo, id: id(hook)? });
        } else {
            let repo = match allowed.listed() {
                Some([only]) => only.clone(),
                _ => {
                    return Err(err(
                        VAR,
                        "a bare hook id needs exactly one repository in ALLOWED_REPOS; use owner/repo:ID entries",
                    ));
                }
            };
            out.push(Hook::Repo { repo, id: id(entry)? });
        }
    }
    Ok(out)
}

fn api_url(explicit: Option<&str>, ghes: Option<&str>) -> Result<String, ConfigError> {
    if let Some(url) = explicit.map(str::trim).filter(|u| !u.is_empty()) {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| err("GITHUB_API_URL", format!("`{url}` is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(err(
                "GITHUB_API_URL",
                "must be an http:// or https:// URL with a host",
            ));
        }
        return Ok(url.trim_end_matches('/').to_string());
    }
    match ghes.map(str::trim).filter(|d| !d.is_empty()) {
        None => Ok("https://api.github.com".into()),
        Some(domain) => {
            let url = format!("https://{domain}/api/v3");
            match reqwest::Url::parse(&url) {
                Ok(u) if u.host_str().is_some() && !domain.contains('/') => Ok(url),
                _ => Err(err(
                    "GITHUB_ENTERPRISE_DOMAIN",
                    format!("`{domain}` is not a host name (give it without https://)"),
                )),
            }
        }
    }
}

fn database_url(url: &str) -> Result<String, ConfigError> {
    if url.starts_with("sqlite:") {
        Ok(url.to_string())
    } else {
        Err(err(
            "DATABASE_URL",
            "must be a sqlite: URL (sqlite://PATH or sqlite::memory:)",
        ))
    }
}

fn backend(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    prefix: &NamePrefix,
) -> Result<BackendSettings, ConfigError> {
    match args.backend {
        BackendKind::Modal => {
            let runner_version = args
                .runner_version
                .as_deref()
                .filter(|v| !v.trim().is_empty())
                .map(RunnerVersion::pinned)
                .transpose()
                .map_err(|m| err("RUNNER_VERSION", m))?;
            // The deployment tag: sandboxes of two deployments sharing an app never mix.
            let settings = modal::settings(&args.modal, env, prefix.as_str())?;
            Ok(BackendSettings::Modal {
                settings: Box::new(settings),
                runner_version,
            })
        }
        BackendKind::Local => {
            let runner_dir = args.local_runner_dir.clone().ok_or_else(|| {
                err(
                    "LOCAL_RUNNER_DIR",
                    "is required with BACKEND=local: a directory holding the runner's run.sh",
                )
            })?;
            if !runner_dir.join("run.sh").is_file() {
                return Err(err(
                    "LOCAL_RUNNER_DIR",
                    format!("{} has no run.sh", runner_dir.display()),
                ));
            }
            let work_dir = args
                .local_work_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("modal-github-runner"));
            Ok(BackendSettings::Local { runner_dir, work_dir })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn runner_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("run.sh"), "#!/bin/sh\n").expect("run.sh");
        d
    }

    fn parse(extra: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = runner_dir();
        let mut argv = vec!["x"];
        if !extra.contains(&"--backend") {
            argv.extend(["--backend", "local"]);
        }
        if !extra.contains(&"--local-runner-dir") {
            argv.extend(["--local-runner-dir", dir.path().to_str().expect("utf-8")]);
        }
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).expect("clap parses");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_args(cli.args, |k| {
            env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
        })
    }

    const SECRETS: &[(&str, &str)] = &[("GITHUB_TOKEN", "ghp_x"), ("WEBHOOK_SECRET", "s")];

    #[test]
    fn defaults_match_the_original_system() {
        let s = parse(&[], SECRETS).expect("valid");
        assert_eq!(s.runner_group_id, 1);
        assert_eq!(s.runner_label, "modal");
        assert_eq!(s.github_api_url, "https://api.github.com");
        assert!(s.allowed_repos.listed().is_none());
        assert_eq!(s.bind.1, 8000);
        assert_eq!(s.max_runners, 50);
        assert_eq!(s.sandbox_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn a_missing_secret_names_its_variable() {
        let e = parse(&[], &[("WEBHOOK_SECRET", "s")]).expect_err("no token");
        assert_eq!(e.var, "GITHUB_TOKEN");
        let e = parse(&[], &[("GITHUB_TOKEN", "t")]).expect_err("no secret");
        assert_eq!(e.var, "WEBHOOK_SECRET");
        assert!(e.to_string().starts_with("WEBHOOK_SECRET: is required"));
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "ghp_from_file\n").expect("write");
        let s = parse(
            &["--github-token-file", token.to_str().expect("utf-8")],
            &[("WEBHOOK_SECRET", "s")],
        )
        .expect("valid");
        use secrecy::ExposeSecret;
        let Credentials::Token(token) = &s.github else {
            panic!("a token")
        };
        assert_eq!(token.expose_secret(), "ghp_from_file");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--allowed-repos", "octo/ok,not a repo"], "ALLOWED_REPOS"),
            (&["--runner-group-id", "zero"], "RUNNER_GROUP_ID"),
            (&["--runner-group-id", "0"], "RUNNER_GROUP_ID"),
            (&["--port", "70000"], "PORT"),
            (&["--max-runners=-1"], "MAX_RUNNERS"),
            (&["--sandbox-timeout-secs", "90000"], "SANDBOX_TIMEOUT_SECS"),
            (&["--runner-name-prefix", "has space"], "RUNNER_NAME_PREFIX"),
            (&["--runner-label", ""], "RUNNER_LABEL"),
            (&["--github-api-url", "ftp://x"], "GITHUB_API_URL"),
            (
                &["--github-enterprise-domain", "https://ghe.example.com"],
                "GITHUB_ENTERPRISE_DOMAIN",
            ),
            (&["--database-url", "mysql://x"], "DATABASE_URL"),
            (&["--bind-address", "localhost"], "BIND_ADDRESS"),
            (&["--reap-interval-secs", "soon"], "REAP_INTERVAL_SECS"),
            (&["--local-runner-dir", "/nonexistent"], "LOCAL_RUNNER_DIR"),
            (&["--reconcile-interval-secs", "0"], "RECONCILE_INTERVAL_SECS"),
            (&["--sandbox-gpu-types", "T4,not a gpu"], "SANDBOX_GPU_TYPES"),
            (&["--sandbox-max-cpu", "0"], "SANDBOX_MAX_CPU"),
            (&["--store-retention-days", "1"], "STORE_RETENTION_DAYS"),
            (&["--runner-idle-timeout-secs", "x"], "RUNNER_IDLE_TIMEOUT_SECS"),
            (&["--webhook-hook-id", "12"], "WEBHOOK_HOOK_ID"),
            (&["--webhook-hook-id", "octo/repo:x"], "WEBHOOK_HOOK_ID"),
            (
                &[
                    "--runner-version",
                    "2.311.0",
                    "--backend",
                    "modal",
                    "--modal-token-id",
                    "ak",
                ],
                "RUNNER_VERSION",
            ),
        ];
        for (flags, var) in cases {
            let e = parse(flags, SECRETS).expect_err("invalid");
            assert_eq!(&e.var, var, "{flags:?} gave {e}");
        }
    }

    #[test]
    fn a_github_app_replaces_the_token() {
        let key = fakes::github::TEST_APP_PRIVATE_KEY_PEM;
        let env = [("WEBHOOK_SECRET", "s"), ("GITHUB_APP_PRIVATE_KEY", key)];
        let s = parse(
            &["--github-app-id", "42", "--github-app-installation-id", "7"],
            &env,
        )
        .expect("valid");
        let Credentials::App(app) = &s.github else {
            panic!("an App")
        };
        assert_eq!((app.app_id, app.installation_id), (42, Some(7)));
        let s = parse(&["--github-app-id", "42", "--allowed-repos", "octo/one"], &env).expect("valid");
        let Credentials::App(app) = &s.github else {
            panic!("an App")
        };
        assert_eq!(app.discovery_repo.as_ref().map(|r| r.as_str()), Some("octo/one"));
    }

    #[test]
    fn a_github_app_misconfiguration_names_its_variable() {
        let key = fakes::github::TEST_APP_PRIVATE_KEY_PEM;
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                &["--github-app-id", "42", "--github-app-installation-id", "7"],
                &[("WEBHOOK_SECRET", "s")],
                "GITHUB_APP_PRIVATE_KEY",
            ),
            (
                &["--github-app-id", "42", "--github-app-installation-id", "7"],
                &[("WEBHOOK_SECRET", "s"), ("GITHUB_APP_PRIVATE_KEY", "junk")],
                "GITHUB_APP_PRIVATE_KEY",
            ),
            (
                &["--github-app-id", "42"],
                &[("WEBHOOK_SECRET", "s"), ("GITHUB_APP_PRIVATE_KEY", key)],
                "GITHUB_APP_INSTALLATION_ID",
            ),
            (
                &["--github-app-id", "x", "--github-app-installation-id", "7"],
                &[("WEBHOOK_SECRET", "s"), ("GITHUB_APP_PRIVATE_KEY", key)],
                "GITHUB_APP_ID",
            ),
            (
                &["--github-app-id", "42", "--github-app-installation-id", "7"],
                &[
                    ("WEBHOOK_SECRET", "s"),
                    ("GITHUB_APP_PRIVATE_KEY", key),
                    ("GITHUB_TOKEN", "t"),
                ],
                "GITHUB_APP_ID",
            ),
        ];
        for (flags, env, var) in cases {
            let e = parse(flags, env).expect_err("invalid");
            assert_eq!(&e.var, var, "{flags:?}: {e}");
        }
    }

    #[test]
    fn webhook_hooks_are_repo_or_org_hooks() {
        let s = parse(
            &["--allowed-repos", "octo/one", "--webhook-hook-id", "7"],
            SECRETS,
        )
        .expect("valid");
        assert_eq!(
            s.hooks,
            [Hook::Repo {
                repo: RepoName::parse("octo/one").expect("repo"),
                id: 7
            }]
        );
        let s = parse(&["--webhook-hook-id", "octo/two:8, org:octo:9"], SECRETS).expect("valid");
        assert_eq!(
            s.hooks,
            [
                Hook::Repo {
                    repo: RepoName::parse("octo/two").expect("repo"),
                    id: 8
                },
                Hook::Org {
                    org: "octo".into(),
                    id: 9
                }
            ]
        );
    }

    #[test]
    fn enterprise_domain_and_api_url_set_the_api_base() {
        let s = parse(&["--github-enterprise-domain", "ghe.example.com"], SECRETS).expect("valid");
        assert_eq!(s.github_api_url, "https://ghe.example.com/api/v3");
        let s = parse(
            &[
                "--github-enterprise-domain",
                "ghe.example.com",
                "--github-api-url",
                "http://127.0.0.1:9/",
            ],
            SECRETS,
        )
        .expect("valid");
        assert_eq!(s.github_api_url, "http://127.0.0.1:9");
    }
}
