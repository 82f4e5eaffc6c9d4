//! Small helpers every user of a world needs: clients, waits, what is left on the machine.

use std::path::Path;
use std::time::Duration;

use fakes::github::{FakeGitHubConfig, JobSpec, RunSpec};
use fakes::modal::FakeModal;
use modal_github_runner::backend::modal::ModalSettings;
use modal_github_runner::backend::modal::client::ModalConnection;
use modal_github_runner::backend::modal::image::ImageSettings;
use modal_github_runner::github::{Credentials, GitHub, GitHubConfig, RunnerScope};
use modal_github_runner::retry::Backoff;
use secrecy::SecretString;

use crate::world::REPO;

/// An HTTP client for talking to the service in tests.
pub fn reqwest_client() -> reqwest::Client {
    fakes::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
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
            scope: RunnerScope::Repo,
            rate_reserve: None,
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
        build_stream_retry: Backoff::new(4, Duration::from_millis(20), Duration::from_millis(80)),
        refresh_interval: Duration::from_secs(3600),
        features: Default::default(),
    }
}
