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
use crate::domain::RepoName;
use crate::github::{GitHub, GitHubError};
use crate::retry::Backoff;
use crate::runner_version::{RunnerRelease, RunnerVersion};

/// Where the release comes from.
#[derive(Clone)]
pub enum ReleaseSource {
    /// `RUNNER_VERSION`.
    Pinned(RunnerVersion),
    /// What GitHub serves (to this repository, if one is known).
    Served { github: GitHub, repo: Option<RepoName> },
}

/// GitHub would not say which release it serves, and retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("could not find the runner release GitHub serves ({0}); set RUNNER_VERSION to pin one")]
pub struct ReleaseError(#[from] pub GitHubError);

/// The app's end of the release channel: asks GitHub and publishes what it serves.
pub struct ReleasePublisher {
    github: GitHub,
    repo: Option<RepoName>,
    interval: Duration,
    sender: watch::Sender<Option<RunnerRelease>>,
}

/// The channel from the app to the backend. A pin needs no publisher: the backend gets it
/// as a fixed release. Otherwise nothing is published until `publish_first` runs.
pub fn channel(source: ReleaseSource, interval: Duration) -> (Option<ReleasePublisher>, Releases) {
    match source {
        ReleaseSource::Pinned(v) => (None, Releases::fixed(RunnerRelease::from_version(v))),
        ReleaseSource::Served { github, repo } => {
            let (sender, receiver) = watch::channel(None);
            let publisher = ReleasePublisher {
                github,
                repo,
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
            match resolve(&self.github, self.repo.as_ref()).await {
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
                Err(e) => return Err(e.into()),
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
            match resolve(&self.github, self.repo.as_ref()).await {
                Ok(release) => {
                    self.sender.send_replace(Some(release));
                }
                Err(e) => tracing::warn!(error = %e, "could not check for a newer runner release"),
            }
        }
    }
}

/// Asks GitHub which linux-x64 release it serves to `repo` (progressive rollouts differ
/// per repository), falling back to actions/runner's latest release.
pub async fn resolve(github: &GitHub, repo: Option<&RepoName>) -> Result<RunnerRelease, GitHubError> {
    if let Some(repo) = repo {
        match github.runner_downloads(repo).await {
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
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                tracing::info!(repo = %repo, error = %e, "runner downloads unavailable; using the latest release")
            }
        }
    }
    let latest = github.latest_runner_release().await?;
    RunnerVersion::parse(&latest)
        .map(RunnerRelease::from_version)
        .ok_or_else(|| GitHubError::Decode(format!("latest runner release tag `{latest}`")))
}

/// The version in a tarball URL like `…/actions-runner-linux-x64-2.336.0.tar.gz`.
fn version_in_url(url: &str) -> Option<RunnerVersion> {
    let file = url.rsplit('/').next()?;
    let stem = file.strip_suffix(".tar.gz")?;
    RunnerVersion::parse(stem.rsplit('-').next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_a_download_url() {
        let url = "https://github.com/actions/runner/releases/download/v2.336.0/actions-runner-linux-x64-2.336.0.tar.gz";
        assert_eq!(version_in_url(url), RunnerVersion::parse("2.336.0"));
        assert_eq!(version_in_url("https://example.com/runner.zip"), None);
    }
}
