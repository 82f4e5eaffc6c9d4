//! A whole world without credentials: the fake GitHub and the fake Modal in this process,
//! the real service as a child process between them.

use std::path::PathBuf;
use std::time::Duration;

use crate::fake::github::{FakeGitHub, FakeGitHubConfig, Limits, Route, WebhookTarget};
use crate::fake::modal::{FakeModal, FakeModalConfig};

use super::service::{ServiceProcess, free_port};

/// The repository every simulated job belongs to.
pub const REPO: &str = "octo/sim";
const SECRET: &str = "simulator-webhook-secret";

/// How the world behaves.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// Latency of `generate-jitconfig` (GitHub: a few hundred ms).
    pub jit_latency: Duration,
    /// Latency of `SandboxCreate`.
    pub create_latency: Duration,
    /// GitHub's secondary limits: 100 concurrent requests, 900 points a minute per endpoint.
    pub github_limits: bool,
    /// Modal's sandbox creation limit per second (`None`: unlimited).
    pub modal_rate: Option<f64>,
    /// Whether sandboxes run the fake runner (jobs complete) or sit idle (provisioning only).
    pub run_runners: bool,
    /// Extra environment for the service (flags, limits).
    pub service_env: Vec<(String, String)>,
    /// Print the service's log lines.
    pub echo_logs: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            jit_latency: Duration::from_millis(300),
            create_latency: Duration::from_secs(1),
            github_limits: true,
            modal_rate: Some(5.0),
            run_runners: true,
            service_env: Vec::new(),
            echo_logs: false,
        }
    }
}

/// The fakes and the service.
pub struct World {
    pub github: FakeGitHub,
    pub modal: FakeModal,
    pub service: Option<ServiceProcess>,
    /// How long the service took from exec to ready.
    pub start_time: Duration,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    echo: bool,
}

impl World {
    pub async fn start(config: WorldConfig) -> std::io::Result<World> {
        let github = FakeGitHub::start(FakeGitHubConfig::default()).await?;
        github.add_repo(REPO);
        github.set_latency(Route::GenerateJitConfig, config.jit_latency);
        if config.github_limits {
            github.set_limits(Limits {
                max_concurrent: Some(100),
                points_per_minute_per_endpoint: Some(900),
                core_per_hour: 15_000,
            });
        } else {
            github.set_limits(Limits {
                core_per_hour: 1_000_000,
                ..Limits::default()
            });
        }
        let exe = std::env::current_exe()?.to_string_lossy().into_owned();
        let modal = FakeModal::start(FakeModalConfig {
            runner_command: if config.run_runners {
                vec![exe, "fake-runner".into()]
            } else {
                Vec::new()
            },
            create_rate_per_sec: config.modal_rate,
            create_latency: config.create_latency,
            image_build_time: Duration::from_millis(200),
            ..FakeModalConfig::default()
        })
        .await?;
        let dir = std::env::temp_dir().join(format!("mgr-sim-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let (token_id, token_secret) = modal.credentials();
        let mut env: Vec<(String, String)> = [
            ("GITHUB_TOKEN", FakeGitHubConfig::default().token),
            ("WEBHOOK_SECRET", SECRET.to_string()),
            ("GITHUB_API_URL", github.api_url()),
            ("BACKEND", "modal".into()),
            ("MODAL_SERVER_URL", modal.url()),
            ("MODAL_TOKEN_ID", token_id),
            ("MODAL_TOKEN_SECRET", token_secret),
            ("RUNNER_VERSION", "2.336.0".into()),
            ("MODAL_CREATE_RATE", config.modal_rate.unwrap_or(0.0).to_string()),
            (
                "GITHUB_JIT_LIMIT_PER_MIN",
                if config.github_limits { "180" } else { "0" }.into(),
            ),
            (
                "DATABASE_URL",
                format!("sqlite://{}", dir.join("store.db").display()),
            ),
            ("ALLOWED_REPOS", REPO.into()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", if config.echo_logs { "info" } else { "warn" }.into()),
            ("REAP_INTERVAL_SECS", "1".into()),
            ("RUNNER_EXIT_GRACE_SECS", "10".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(config.service_env.iter().cloned());
        let port = free_port()?;
        let mut world = World {
            github,
            modal,
            service: None,
            start_time: Duration::ZERO,
            dir,
            env,
            port,
            echo: config.echo_logs,
        };
        world.start_service().await?;
        world.github.set_webhook(WebhookTarget::json(
            format!("http://127.0.0.1:{port}/webhook"),
            SECRET,
        ));
        Ok(world)
    }

    /// Starts (or restarts) the service on the same port and store.
    pub async fn start_service(&mut self) -> std::io::Result<()> {
        let (service, took) = ServiceProcess::start(&self.env, self.port, self.echo).await?;
        self.service = Some(service);
        self.start_time = took;
        Ok(())
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.service.take() {
            s.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
