//! Which Actions runner release the Modal image installs: decided here, on the app's side,
//! and handed to the backend as plain values, so that no backend talks to GitHub.
//!
//! A `RUNNER_VERSION` pin is handed over once. Otherwise the app asks GitHub which release
//! it currently serves (`GET …/actions/runners/downloads`, else the latest release of
//! actions/runner) before the backend starts, and again every `refresh_interval` (daily),
//! publishing each answer on a `tokio::sync::watch` channel; the backend rebuilds its image
//! when the answer changes, and the runner updates itself in between.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::modal::Releases;
use crate::github::{GitHub, GitHubError, RunnerHome};
use crate::retry::Backoff;
use crate::runner_version::{RunnerRelease, RunnerVersion};

/// Where the release comes from.
#[derive(Clone)]
pub enum ReleaseSource {
    /// `RUNNER_VERSION`.
    Pinned(RunnerVersion),
    /// What GitHub serves (where runners are registered, if one place is known).
    Served {
        github: GitHub,
        home: Option<RunnerHome>,
    },
}

/// GitHub would not say which release it serves, and retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("could not find the runner release GitHub serves ({0}); set RUNNER_VERSION to pin one")]
    Lookup(#[from] GitHubError),
    /// GitHub Enterprise Server has no actions/runner releases to fall back on.
    #[error(
        "GitHub Enterprise Server did not say which runner release it serves ({0}); \
         set RUNNER_VERSION to the runner version your server ships"
    )]
    EnterpriseServer(GitHubError),
}

impl ReleaseError {
    fn is_transient(&self) -> bool {
        match self {
            ReleaseError::Lookup(e) | ReleaseError::EnterpriseServer(e) => e.is_transient(),
        }
    }
}

/// The app's end of the release channel: asks GitHub and publishes what it serves.
pub struct ReleasePublisher {
    github: GitHub,
    home: Option<RunnerHome>,
    interval: Duration,
    sender: watch::Sender<Option<RunnerRelease>>,
}

/// The channel from the app to the backend. A pin needs no publisher: the backend gets it
/// as a fixed release. Otherwise nothing is published until `publish_first` runs.
pub fn channel(source: ReleaseSource, interval: Duration) -> (Option<ReleasePublisher>, Releases) {
    match source {
        ReleaseSource::Pinned(v) => (None, Releases::fixed(RunnerRelease::from_version(v))),
        ReleaseSource::Served { github, home } => {
            let (sender, receiver) = watch::channel(None);
            let publisher = ReleasePublisher {
                github,
                home,
                interval,
                sender,
            };
            (Some(publisher), Releases::published(receiver))
        }
    }
}

impl ReleasePublisher {
    /// Publishes the release GitHub serves, retrying transient failures (GitHub briefly
    /// unreachable) with backoff; a permanent one (bad token, no such release) is returned,
    /// since without a release there is no image.
    pub async fn publish_first(&self) -> Result<RunnerRelease, ReleaseError> {
        let backoff = Backoff::new(u32::MAX, Duration::from_secs(1), Duration::from_secs(60));
        let mut attempt = 0;
        loop {
            match resolve(&self.github, self.home.as_ref()).await {
                Ok(release) => {
                    self.sender.send_replace(Some(release.clone()));
                    return Ok(release);
                }
                Err(e) if e.is_transient() => {
                    let wait = backoff.delay(attempt);
                    tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "could not find the runner release GitHub serves yet");
                    tokio::time::sleep(wait).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every `interval`, publishes the release GitHub serves, changed or not (so a rebuild
    /// that failed is tried again), until `stop` or until the backend is gone. A failed
    /// check is logged and waits for the next interval.
    pub async fn follow(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.sender.closed() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            match resolve(&self.github, self.home.as_ref()).await {
                Ok(release) => {
                    self.sender.send_replace(Some(release));
                }
                Err(e) => tracing::warn!(error = %e, "could not check for a newer runner release"),
            }
        }
    }
}

/// Asks GitHub which linux-x64 release it serves at `home` (progressive rollouts differ
/// per repository and organisation), falling back to actions/runner's latest release. A
/// GitHub Enterprise Server serves its own runner and has no actions/runner to fall back
/// on: there, without an answer, `RUNNER_VERSION` must be pinned.
pub async fn resolve(github: &GitHub, home: Option<&RunnerHome>) -> Result<RunnerRelease, ReleaseError> {
    let ghes = github.is_enterprise_server();
    if let Some(home) = home {
        match github.runner_downloads(home).await {
            Ok(downloads) => {
                if let Some(release) = downloads
                    .into_iter()
                    .filter(|d| d.os == "linux" && d.architecture == "x64")
                    .find_map(|d| {
                        let version = version_in_url(&d.download_url)?;
                        Some(RunnerRelease {
                            version,
                            url: d.download_url,
                            sha256: d.sha256_checksum,
                        })
                    })
                {
                    return Ok(release);
                }
            }
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) if ghes => return Err(ReleaseError::EnterpriseServer(e)),
            Err(e) => {
                tracing::info!(home = %home, error = %e, "runner downloads unavailable; using the latest release")
            }
        }
    }
    if ghes {
        let why = GitHubError::Decode("its runner downloads list has no linux-x64 runner".into());
        return Err(ReleaseError::EnterpriseServer(why));
    }
    let latest = github.latest_runner_release().await?;
    RunnerVersion::parse(&latest)
        .map(RunnerRelease::from_version)
        .ok_or_else(|| GitHubError::Decode(format!("latest runner release tag `{latest}`")).into())
}

/// The version in a tarball URL like `…/actions-runner-linux-x64-2.336.0.tar.gz`.
fn version_in_url(url: &str) -> Option<RunnerVersion> {
    let file = url.rsplit('/').next()?;
    let stem = file.strip_suffix(".tar.gz")?;
    RunnerVersion::parse(stem.rsplit('-').next()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fakes::github::{DEFAULT_RUNNER_VERSION, FakeGitHub, FakeGitHubConfig, Fault, FaultRule, Route};
    use secrecy::SecretString;

    use super::*;
    use crate::domain::RepoName;
    use crate::github::{Credentials, GitHubConfig, RunnerScope};
    use crate::retry::Backoff;

    #[tokio::test]
    async fn on_enterprise_server_a_missing_downloads_list_asks_for_runner_version() {
        let config = FakeGitHubConfig {
            api_prefix: "/api/v3".into(),
            ..FakeGitHubConfig::default()
        };
        let fake = FakeGitHub::start(config.clone()).await.expect("fake GitHub");
        fake.add_repo("acme/app");
        let github = GitHub::new(
            GitHubConfig {
                api_url: fake.api_url(),
                credentials: Credentials::Token(SecretString::from(config.token)),
                timeout: Duration::from_secs(5),
                retry: Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1)),
                scope: RunnerScope::Org,
                rate_reserve: None,
            },
            None,
        )
        .expect("client");
        assert!(github.is_enterprise_server());
        let home = github.home_of(&RepoName::parse("acme/app").expect("valid"));

        let served = resolve(&github, Some(&home)).await.expect("served");
        assert_eq!(Some(served.version), RunnerVersion::parse(DEFAULT_RUNNER_VERSION));
        fake.inject(FaultRule::new(Route::RunnerDownloads, Fault::status(404)));
        let err = resolve(&github, Some(&home))
            .await
            .expect_err("no downloads list");
        assert!(matches!(err, ReleaseError::EnterpriseServer(_)), "{err}");
        assert!(err.to_string().contains("set RUNNER_VERSION"), "{err}");

        let paths: Vec<String> = fake.calls().into_iter().map(|c| c.path).collect();
        assert_eq!(
            paths, ["/api/v3/orgs/acme/actions/runners/downloads"; 2],
            "the organisation's list, under /api/v3, and never actions/runner's releases"
        );
        fake.shutdown().await;
    }

    #[test]
    fn the_version_is_read_from_a_download_url() {
        let url = "https://github.com/actions/runner/releases/download/v2.336.0/actions-runner-linux-x64-2.336.0.tar.gz";
        assert_eq!(version_in_url(url), RunnerVersion::parse("2.336.0"));
        assert_eq!(version_in_url("https://example.com/runner.zip"), None);
    }
}
