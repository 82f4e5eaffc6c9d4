//! Starting the service against the fakes, and the assertions every test ends with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modal_github_runner::backend::modal::ModalSettings;
use modal_github_runner::backend::modal::client::ModalConnection;
use modal_github_runner::backend::modal::image::ImageSettings;
use modal_github_runner::fake::github::{
    FakeApp, FakeGitHub, FakeGitHubConfig, JobSpec, RunSpec, WebhookTarget,
};
use modal_github_runner::fake::modal::{FakeModal, FakeModalConfig, ModalFault};
use modal_github_runner::github::{Credentials, GitHub, GitHubConfig};
use modal_github_runner::retry::Backoff;
use modal_github_runner::store::{RunnerRow, Store};
use secrecy::SecretString;

pub const SECRET: &str = "e2e-webhook-secret";
pub const REPO: &str = "octo/app";
pub const BIN: &str = env!("CARGO_BIN_EXE_modal-github-runner");
/// Sandbox creations per second the fake Modal allows in end-to-end tests.
pub const MODAL_RATE: f64 = 50.0;

/// Which sandbox backend the service uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Local,
    Modal,
}

/// Options for one environment.
#[derive(Clone, Default)]
pub struct Options {
    pub kind: Kind,
    pub env: Vec<(String, String)>,
    /// Faults the fake Modal has from the start (before the service's first call).
    pub modal_faults: Vec<ModalFault>,
    /// Authenticate as a GitHub App whose installation tokens last this long, instead of
    /// with a token.
    pub github_app: Option<Duration>,
}

/// The test App's id and installation.
pub const APP_ID: u64 = 4242;
pub const INSTALLATION_ID: u64 = 77;
const APP_KEY: &str = include_str!("../fixtures/github-app-test-key.pem");
const APP_PUBLIC_KEY: &str = include_str!("../fixtures/github-app-test-key.pub.pem");

impl Options {
    pub fn backend(kind: Kind) -> Options {
        Options {
            kind,
            ..Options::default()
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// The service as a child process, with its log lines captured.
pub struct Service {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

/// A fake GitHub, a work directory and the service under test.
pub struct TestEnv {
    pub github: FakeGitHub,
    /// The fake Modal, when the service runs with `BACKEND=modal`.
    pub modal: Option<FakeModal>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    options: Options,
    service: Option<Service>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl TestEnv {
    /// Starts the fake GitHub and the service, and points GitHub's webhook at it.
    pub async fn start(options: Options) -> TestEnv {
        let app = options.github_app.map(|ttl| FakeApp {
            id: APP_ID,
            public_key_pem: APP_PUBLIC_KEY.into(),
            installation_id: INSTALLATION_ID,
            token_ttl: ttl,
        });
        let github = FakeGitHub::start(FakeGitHubConfig {
            app,
            ..FakeGitHubConfig::default()
        })
        .await
        .expect("fake GitHub starts");
        github.add_repo(REPO);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("runner")).expect("runner dir");
        modal_github_runner::fake::runner::make_runner_dir(&dir.path().join("runner"), Path::new(BIN))
            .expect("run.sh");
        let port = free_port();
        let modal = match options.kind {
            Kind::Local => None,
            Kind::Modal => Some(
                FakeModal::start(FakeModalConfig {
                    runner_command: vec![BIN.into(), "fake-runner".into()],
                    // Modal's default is 5/s; tests run faster, with the service told the same.
                    create_rate_per_sec: Some(MODAL_RATE),
                    ..FakeModalConfig::default()
                })
                .await
                .expect("fake Modal starts"),
            ),
        };
        if let Some(fake) = &modal {
            for fault in &options.modal_faults {
                fake.inject(fault.clone());
            }
        }
        let mut env = TestEnv {
            github,
            modal,
            dir,
            port,
            options,
            service: None,
            logs: Arc::default(),
        };
        env.start_service().await;
        env.github.set_webhook(WebhookTarget::json(
            format!("http://127.0.0.1:{port}/webhook"),
            SECRET,
        ));
        env
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("store.db").display())
    }

    /// Starts (or restarts) the service on the same port, store and work directory.
    pub async fn start_service(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,modal_github_runner=debug")
            .env("LOG_FORMAT", "json")
            .envs(self.github_credentials())
            .env("WEBHOOK_SECRET", SECRET)
            .env("GITHUB_API_URL", self.github.api_url())
            .env("LOCAL_RUNNER_DIR", self.dir.path().join("runner"))
            .env("LOCAL_WORK_DIR", self.work_dir())
            .env("DATABASE_URL", self.database_url())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .env("REAP_INTERVAL_SECS", "0.2")
            .env("RUNNER_EXIT_GRACE_SECS", "5")
            .env("GITHUB_TIMEOUT_SECS", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match &self.modal {
            None => {
                cmd.env("BACKEND", "local");
            }
            Some(modal) => {
                let (id, secret) = modal.credentials();
                cmd.env("BACKEND", "modal")
                    .env("MODAL_SERVER_URL", modal.url())
                    .env("MODAL_TOKEN_ID", id)
                    .env("MODAL_TOKEN_SECRET", secret)
                    .env("RUNNER_VERSION", "2.336.0")
                    .env("MODAL_CREATE_RATE", MODAL_RATE.to_string());
            }
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the service starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("E2E_LOG").is_some() {
                    eprintln!("{line}");
                }
                logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        self.service = Some(Service {
            child,
            logs: self.logs.clone(),
        });
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest_client();
        for _ in 0..400 {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(s) = self.service.as_mut()
                && let Ok(Some(status)) = s.child.try_wait()
            {
                panic!(
                    "the service exited during start-up ({status}):\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the service did not become ready:\n{}", self.logs().join("\n"));
    }

    /// A token, or the test App's id and key (the installation is found from the
    /// repository).
    fn github_credentials(&self) -> Vec<(&'static str, String)> {
        match self.options.github_app {
            None => vec![("GITHUB_TOKEN", FakeGitHubConfig::default().token)],
            Some(_) => vec![
                ("GITHUB_APP_ID", APP_ID.to_string()),
                ("GITHUB_APP_PRIVATE_KEY", APP_KEY.to_string()),
                ("ALLOWED_REPOS", REPO.to_string()),
            ],
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub async fn stop_service(&mut self) -> Option<i32> {
        let mut service = self.service.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(service.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..600 {
            if let Ok(Some(status)) = service.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = service.child.kill();
        panic!("the service did not stop within 30 s of SIGTERM");
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_service(&mut self) {
        if let Some(mut s) = self.service.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

    /// Waits until every job the fake GitHub knows is completed.
    pub async fn wait_all_completed(&self, timeout: Duration) {
        let done = self
            .github
            .wait_until(timeout, |gh| {
                gh.jobs().iter().all(|j| j.status.as_str() == "completed")
            })
            .await;
        if !done {
            let pending: Vec<String> = self
                .github
                .jobs()
                .iter()
                .filter(|j| j.status.as_str() != "completed")
                .map(|j| format!("{} {} {:?}", j.id, j.name, j.status))
                .collect();
            panic!("jobs not completed: {pending:?}\n{}", self.tail_logs(60));
        }
    }

    /// Waits until nothing is left: no registration at GitHub, no sandbox directory, no
    /// runner process, and every runner in the store ended.
    pub async fn assert_nothing_left(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let registrations = self.github.runners();
            let sandboxes = self.live_sandboxes();
            let processes = processes_under(&self.work_dir());
            let live: Vec<String> = self
                .runners()
                .await
                .into_iter()
                .filter(|r| r.state.is_live())
                .map(|r| format!("{} {}", r.name, r.state))
                .collect();
            if registrations.is_empty() && sandboxes.is_empty() && processes.is_empty() && live.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "left behind: registrations {:?}, sandboxes {sandboxes:?}, processes {processes:?}, live runners {live:?}\n{}",
                    registrations.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                    self.tail_logs(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Names of the sandboxes running now, whatever the backend.
    pub fn live_sandboxes(&self) -> Vec<String> {
        match &self.modal {
            None => sandbox_entries(&self.work_dir()),
            Some(m) => m
                .sandboxes()
                .into_iter()
                .filter(|s| s.is_running())
                .map(|s| s.name.unwrap_or(s.id))
                .collect(),
        }
    }

    /// No log line holds a JIT config or a token.
    pub fn assert_no_secret_in_logs(&self) {
        let logs = self.logs();
        let token = FakeGitHubConfig::default().token;
        for line in &logs {
            assert!(!line.contains(&token), "the GitHub token leaked: {line}");
            assert!(!line.contains(SECRET), "the webhook secret leaked: {line}");
            if let Some(m) = &self.modal {
                assert!(
                    !line.contains(&m.credentials().1),
                    "the Modal token secret leaked: {line}"
                );
            }
            assert!(
                !line.contains("eyJ"),
                "something base64-JSON-like (a JIT config?) leaked: {line}"
            );
        }
    }

    pub fn tail_logs(&self, n: usize) -> String {
        let logs = self.logs();
        logs[logs.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill_service();
        // Leave no runner behind even when a test fails.
        for pid in processes_under(&self.work_dir()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.logs;
    }
}

pub fn reqwest_client() -> reqwest::Client {
    modal_github_runner::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Runs a scenario once per backend: `name::local` and `name::modal`.
#[macro_export]
macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn local() {
                super::$scenario($crate::helpers::Kind::Local).await
            }
            #[tokio::test]
            async fn modal() {
                super::$scenario($crate::helpers::Kind::Modal).await
            }
        }
    )*};
}

/// Runner copies in the local backend's work directory.
pub fn sandbox_entries(work: &Path) -> Vec<String> {
    std::fs::read_dir(work)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose working directory is inside `dir`.
pub fn processes_under(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// `n` jobs with our labels, each running `ms` milliseconds, in one run.
pub fn jobs(n: usize, ms: u64) -> RunSpec {
    RunSpec::new(
        REPO,
        (0..n)
            .map(|i| {
                JobSpec::new(format!("job {i}"), ["self-hosted", "modal"]).duration(Duration::from_millis(ms))
            })
            .collect(),
    )
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn wait(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A GitHub client for the fake, as a test would make leftovers with it.
pub fn github_client(api_url: String) -> GitHub {
    GitHub::new(
        GitHubConfig {
            api_url,
            credentials: Credentials::Token(SecretString::from(FakeGitHubConfig::default().token)),
            timeout: Duration::from_secs(5),
            retry: Backoff::new(2, Duration::from_millis(10), Duration::from_millis(50)),
        },
        None,
    )
    .expect("client")
}

/// Modal backend settings pointing at a fake, for the app and deployment tag given.
pub fn modal_settings(fake: &FakeModal, rate: Option<f64>, app: &str, deployment: &str) -> ModalSettings {
    let (id, secret) = fake.credentials();
    ModalSettings {
        connection: ModalConnection {
            server_url: fake.url(),
            token_id: id,
            token_secret: SecretString::from(secret),
            max_throttle_wait: Duration::from_secs(30),
            retry: Backoff::new(6, Duration::from_millis(50), Duration::from_secs(1)),
        },
        environment: String::new(),
        app_name: app.into(),
        image: ImageSettings::default(),
        cpu: 2.0,
        memory_mib: 4096,
        gpu: None,
        create_rate: rate,
        deployment: deployment.into(),
        builder_version: None,
        build_timeout: Duration::from_secs(30),
        refresh_interval: Duration::from_secs(3600),
    }
}
