//! The fakes and the service between them: starting, restarting, killing and stopping it.

use std::path::PathBuf;
use std::time::Duration;

use fakes::github::{FakeApp, FakeGitHub, FakeGitHubConfig, Route, TEST_APP_PRIVATE_KEY_PEM, WebhookTarget};
use fakes::modal::{FakeModal, FakeModalConfig};
use modal_github_runner::app::Application;
use modal_github_runner::clock::{Clock, ManualClock};
use modal_github_runner::store::{RunnerRow, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::subscriber::DefaultGuard;

use crate::checks::{free_port, processes_under, reqwest_client};
use crate::fake_runner_command;
use crate::logs::LogSink;
use crate::options::{Kind, Options, ServiceMode};
use crate::service::ServiceProcess;
use crate::settings::settings_from_vars;

/// The webhook secret of every world.
pub const SECRET: &str = "e2e-webhook-secret";
/// The repository a world's jobs belong to unless told otherwise.
pub const REPO: &str = "octo/app";
/// The test App's id and installation.
pub const APP_ID: u64 = 4242;
pub const INSTALLATION_ID: u64 = 77;
/// The runner release the service is pinned to with the Modal backend (no lookup).
const RUNNER_VERSION: &str = "2.336.0";

/// The service, running.
enum Running {
    InProcess {
        stop: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
    },
    Process(ServiceProcess),
}

/// A fake GitHub, maybe a fake Modal, a work directory and the service under test.
pub struct World {
    pub github: FakeGitHub,
    /// The fake Modal, when the service runs with `BACKEND=modal`.
    pub modal: Option<FakeModal>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// How long the service took, the last time it started, to answer `/readyz`.
    pub start_time: Duration,
    options: Options,
    service: Option<Running>,
    logs: LogSink,
    /// Routes this thread's events (the in-process service's) into `logs`.
    _log_guard: Option<DefaultGuard>,
}

impl World {
    /// Starts the fakes and the service, and points GitHub's webhook at it.
    pub async fn start(options: Options) -> World {
        let mut world = World::prepare(options).await;
        world.start_service().await;
        world
    }

    /// The fakes and the directory, without the service (`start_service` starts it): for
    /// jobs queued while the service is down.
    pub async fn prepare(options: Options) -> World {
        let github = start_github(&options).await;
        let dir = tempfile::tempdir().expect("tempdir");
        if options.run_runners {
            fakes::runner::make_runner_dir(&dir.path().join("runner"), &runner_command(&options))
                .expect("run.sh");
        } else {
            std::fs::create_dir_all(dir.path().join("runner")).expect("runner dir");
        }
        let modal = match options.kind {
            Kind::Local => None,
            Kind::Modal => Some(start_modal(&options).await),
        };
        let port = free_port();
        github.set_webhook(WebhookTarget::json(
            format!("http://127.0.0.1:{port}/webhook"),
            SECRET,
        ));
        let logs = LogSink::new(options.echo_logs);
        let log_guard =
            matches!(options.mode, ServiceMode::InProcess).then(|| logs.install(&rust_log(&options)));
        World {
            github,
            modal,
            dir,
            port,
            start_time: Duration::ZERO,
            options,
            service: None,
            logs,
            _log_guard: log_guard,
        }
    }

    /// What the world is made of.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The fake Modal (a Modal world's).
    pub fn fake_modal(&self) -> &FakeModal {
        self.modal
            .as_ref()
            .expect("this world has no fake Modal (Kind::Local)")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The service's store: the test's `DATABASE_URL` (a PostgreSQL database replicas
    /// share), else a SQLite file in the world's directory.
    pub fn database_url(&self) -> String {
        self.options
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "DATABASE_URL")
            .map_or_else(
                || format!("sqlite://{}", self.dir.path().join("store.db").display()),
                |(_, v)| v.clone(),
            )
    }

    /// The service's whole environment: the world's, then the test's.
    pub(crate) fn service_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("RUST_LOG".into(), rust_log(&self.options)),
            ("LOG_FORMAT".into(), "json".into()),
            ("WEBHOOK_SECRET".into(), SECRET.into()),
            ("GITHUB_API_URL".into(), self.github.api_url()),
            (
                "LOCAL_RUNNER_DIR".into(),
                self.dir.path().join("runner").display().to_string(),
            ),
            ("LOCAL_WORK_DIR".into(), self.work_dir().display().to_string()),
            ("DATABASE_URL".into(), self.database_url()),
            ("BIND_ADDRESS".into(), "127.0.0.1".into()),
            ("PORT".into(), self.port.to_string()),
            ("REAP_INTERVAL_SECS".into(), "0.2".into()),
            ("RUNNER_EXIT_GRACE_SECS".into(), "5".into()),
            ("GITHUB_TIMEOUT_SECS".into(), "5".into()),
        ];
        env.extend(self.github_credentials());
        match &self.modal {
            None => env.push(("BACKEND".into(), "local".into())),
            Some(modal) => {
                let (id, secret) = modal.credentials();
                env.extend([
                    ("BACKEND".into(), "modal".into()),
                    ("MODAL_SERVER_URL".into(), modal.url()),
                    ("MODAL_TOKEN_ID".into(), id),
                    ("MODAL_TOKEN_SECRET".into(), secret),
                    ("RUNNER_VERSION".into(), RUNNER_VERSION.into()),
                    (
                        "MODAL_CREATE_RATE".into(),
                        self.options.modal_rate.unwrap_or(0.0).to_string(),
                    ),
                ]);
            }
        }
        env.extend(self.options.env.iter().cloned());
        last_wins(env)
    }

    /// A token, or the test App's id and key (the installation is found from the
    /// repository).
    fn github_credentials(&self) -> Vec<(String, String)> {
        match self.options.github_app {
            None => vec![("GITHUB_TOKEN".into(), FakeGitHubConfig::default().token)],
            Some(_) => vec![
                ("GITHUB_APP_ID".into(), APP_ID.to_string()),
                (
                    "GITHUB_APP_PRIVATE_KEY".into(),
                    TEST_APP_PRIVATE_KEY_PEM.to_string(),
                ),
                ("ALLOWED_REPOS".into(), self.options.repo.clone()),
            ],
        }
    }

    /// Sets one more variable of the service's environment for its next start (a
    /// restart with a changed configuration).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.options.env.push((key.into(), value.into()));
    }

    /// Makes the in-process service read `clock` from its next start on.
    pub fn set_clock(&mut self, clock: ManualClock) {
        self.options.clock = Some(clock);
    }

    /// Starts (or restarts) the service on the same port, store and work directory, and
    /// waits until it is ready.
    pub async fn start_service(&mut self) {
        let started = tokio::time::Instant::now();
        match self.options.mode.clone() {
            ServiceMode::Process { command } => {
                let env = self.service_env();
                let (process, _) = ServiceProcess::start(&command, &env, self.port, self.logs.clone())
                    .await
                    .unwrap_or_else(|e| panic!("the service did not start: {e}"));
                self.service = Some(Running::Process(process));
            }
            ServiceMode::InProcess => {
                self.launch_service().await;
                self.wait_ready().await;
            }
        }
        self.start_time = started.elapsed();
    }

    /// The settings the service would start with now (what `check` reads).
    pub fn settings(&self) -> Result<modal_github_runner::config::Settings, String> {
        settings_from_vars(&self.service_env())
    }

    /// The service's whole environment, for running its binary (`check`) as `serve` would
    /// be run.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        self.service_env()
    }

    /// Builds the service as `start_service` would, without running it: for what must fail
    /// at start-up (a configuration or a lookup refused).
    pub async fn build_service(&self) -> anyhow::Result<Application> {
        let settings = settings_from_vars(&self.service_env()).map_err(anyhow::Error::msg)?;
        Application::build(settings).await
    }

    /// Starts the service in this process and returns as soon as it serves, before it is
    /// ready (`/readyz` may still answer 503): for what happens during start-up.
    pub async fn launch_service(&mut self) {
        assert!(
            matches!(self.options.mode, ServiceMode::InProcess),
            "launch_service runs the service in this process"
        );
        let settings = settings_from_vars(&self.service_env())
            .unwrap_or_else(|e| panic!("the configuration is refused: {e}"));
        let clock = self.options.clock.clone().map_or(Clock::System, Clock::from);
        let app = Application::build_with_clock(settings, clock)
            .await
            .unwrap_or_else(|e| panic!("the service did not start: {e:#}"));
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(app.run_until_stopped(async move { signal.cancelled().await }));
        self.service = Some(Running::InProcess { stop, task });
    }

    /// Waits until `/readyz` answers 200 (the in-process service; a process is waited for
    /// when it starts).
    pub async fn wait_ready(&mut self) {
        let url = self.url("/readyz");
        let client = reqwest_client();
        for _ in 0..1200 {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Running::InProcess { task, .. }) = &self.service
                && task.is_finished()
            {
                panic!("the service stopped during start-up:\n{}", self.logs().join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the service did not become ready in 30 s:\n{}",
            self.logs().join("\n")
        );
    }

    /// Stops the service as SIGTERM would and waits; its exit code (0: a clean stop).
    pub async fn stop_service(&mut self) -> Option<i32> {
        match self.service.take()? {
            Running::Process(process) => process.stop().await,
            Running::InProcess { stop, task } => {
                stop.cancel();
                match tokio::time::timeout(Duration::from_secs(30), task).await {
                    Ok(Ok(Ok(()))) => Some(0),
                    Ok(Ok(Err(_)) | Err(_)) => Some(1),
                    Err(_) => panic!("the service did not stop within 30 s"),
                }
            }
        }
    }

    /// SIGKILL: no chance to clean up. Needs `ServiceMode::Process`.
    pub fn kill_service(&mut self) {
        match self.service.take() {
            Some(Running::Process(process)) => process.kill(),
            Some(Running::InProcess { .. }) => {
                panic!("SIGKILL needs the service as a process (Options::process)")
            }
            None => {}
        }
    }

    /// The service's process, when it runs as one.
    pub fn process(&self) -> Option<&ServiceProcess> {
        match &self.service {
            Some(Running::Process(process)) => Some(process),
            _ => None,
        }
    }

    /// Takes the service's process out of the world (to SIGKILL it and look at what it left).
    pub fn take_process(&mut self) -> Option<ServiceProcess> {
        match self.service.take() {
            Some(Running::Process(process)) => Some(process),
            other => {
                self.service = other;
                None
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    pub fn tail_logs(&self, n: usize) -> String {
        let logs = self.logs();
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// A read handle on the service's store.
    pub async fn store(&self) -> Store {
        Store::open(&self.database_url()).await.expect("the store opens")
    }

    pub async fn runners(&self) -> Vec<RunnerRow> {
        let store = self.store().await;
        let rows = store.all_runners().await.expect("runners");
        store.close().await;
        rows
    }

    /// Stops the service and the fakes, waiting for each.
    pub async fn shutdown(mut self) {
        self.stop_service().await;
        if let Some(modal) = self.modal.take() {
            modal.shutdown().await;
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        match self.service.take() {
            Some(Running::Process(process)) => process.kill(),
            Some(Running::InProcess { stop, task }) => {
                stop.cancel();
                task.abort();
            }
            None => {}
        }
        // Leave no runner behind even when a test fails.
        for pid in processes_under(&self.work_dir()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn start_github(options: &Options) -> FakeGitHub {
    let app = options.github_app.map(|ttl| {
        let single = FakeApp::single(APP_ID, INSTALLATION_ID, ttl);
        if options.app_installations.is_empty() {
            single
        } else {
            FakeApp {
                installation_id: None,
                owner_installations: options.app_installations.clone(),
                ..single
            }
        }
    });
    let github = FakeGitHub::start(FakeGitHubConfig {
        app,
        ..FakeGitHubConfig::default()
    })
    .await
    .expect("fake GitHub starts");
    github.add_repo(&options.repo);
    if let Some(latency) = options.jit_latency {
        github.set_latency(Route::GenerateJitConfig, latency);
    }
    if let Some(limits) = options.github_limits {
        github.set_limits(limits);
    }
    github
}

async fn start_modal(options: &Options) -> FakeModal {
    let defaults = FakeModalConfig::default();
    let modal = FakeModal::start(FakeModalConfig {
        runner_command: if options.run_runners {
            runner_command(options)
        } else {
            Vec::new()
        },
        create_rate_per_sec: options.modal_rate,
        create_latency: options.create_latency.unwrap_or(defaults.create_latency),
        image_build_time: options.image_build_time.unwrap_or(defaults.image_build_time),
        ..defaults
    })
    .await
    .expect("fake Modal starts");
    for fault in &options.modal_faults {
        modal.inject(fault.clone());
    }
    modal
}

fn runner_command(options: &Options) -> Vec<String> {
    options.runner_command.clone().unwrap_or_else(fake_runner_command)
}

/// The service's `RUST_LOG`: the test's if it set one.
fn rust_log(options: &Options) -> String {
    options
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "RUST_LOG")
        .map_or_else(
            || "info,modal_github_runner=debug".to_string(),
            |(_, v)| v.clone(),
        )
}

/// One entry per name, the last one given.
fn last_wins(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (k, v) in env {
        out.retain(|(ek, _)| *ek != k);
        out.push((k, v));
    }
    out
}
