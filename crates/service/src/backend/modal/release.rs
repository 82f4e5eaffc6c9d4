//! The runner release the image installs, as the app hands it over.
//!
//! A backend knows nothing of GitHub, so it does not decide which release to install: the
//! app does (a `RUNNER_VERSION` pin, or what GitHub serves, see `runner_release`) and
//! publishes the result on a `tokio::sync::watch` channel. The backend builds its image for
//! the first published release and, while the app keeps publishing, rebuilds whenever a
//! published release differs from the one its image holds. A channel rather than a
//! callback keeps the dependency one-way: the backend only ever reads plain values.

use tokio::sync::watch;

use super::BackendError;
use super::image::RunnerImage;
use crate::runner_version::RunnerRelease;

/// The backend's end of the release channel: `None` until the app has published one.
#[derive(Clone)]
pub struct Releases(watch::Receiver<Option<RunnerRelease>>);

impl Releases {
    /// One release for good (`RUNNER_VERSION`): nothing is ever published after it, so the
    /// image is built once.
    pub fn fixed(release: RunnerRelease) -> Releases {
        let (_, receiver) = watch::channel(Some(release));
        Releases(receiver)
    }

    /// The releases the app publishes on `receiver`, each time it checks (an unchanged
    /// release too, so an image build that failed is tried again at the next check).
    pub fn published(receiver: watch::Receiver<Option<RunnerRelease>>) -> Releases {
        Releases(receiver)
    }

    /// The release to build first: the current one, or the first the app publishes.
    pub(super) async fn first(&mut self) -> Result<RunnerRelease, BackendError> {
        match self.0.wait_for(Option::is_some).await {
            Ok(release) => release
                .clone()
                .ok_or_else(|| BackendError::Permanent("no runner release to install".into())),
            Err(_) => Err(BackendError::Permanent(
                "the service stopped before choosing a runner release".into(),
            )),
        }
    }

    /// The release the app published last, if any (issue 13: `image=` images are built
    /// for it on first use).
    pub(super) fn current(&self) -> Option<RunnerRelease> {
        self.0.borrow().clone()
    }

    /// The next release the app publishes; `None` once it stops publishing (a pin, or the
    /// service shutting down).
    async fn next(&mut self) -> Option<RunnerRelease> {
        self.0.changed().await.ok()?;
        self.0.borrow_and_update().clone()
    }
}

/// Rebuilds the image whenever the app publishes a release other than the image's, so new
/// sandboxes never start with a release GitHub no longer accepts (runners also update
/// themselves in between). Ends when the app stops publishing.
pub(super) fn spawn_refresh(image: RunnerImage, app_id: String, mut releases: Releases) {
    tokio::spawn(async move {
        while let Some(release) = releases.next().await {
            if image.version().as_ref() == Some(&release.version) {
                continue;
            }
            match image.build(&app_id, &release).await {
                Ok(id) => {
                    tracing::info!(runner.version = %release.version, image.id = %id, "runner image updated")
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not build the image of a newer runner release")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner_version::RunnerVersion;

    fn release(v: &str) -> RunnerRelease {
        RunnerRelease::from_version(RunnerVersion::parse(v).expect("version"))
    }

    #[tokio::test]
    async fn a_fixed_release_is_first_and_nothing_follows() {
        let mut fixed = Releases::fixed(release("2.336.0"));
        assert_eq!(fixed.first().await.expect("first"), release("2.336.0"));
        assert_eq!(fixed.next().await, None);
    }

    #[tokio::test]
    async fn every_publication_arrives_even_an_unchanged_one() {
        let (tx, rx) = watch::channel(None);
        let mut releases = Releases::published(rx);
        let waiting = tokio::spawn({
            let mut releases = releases.clone();
            async move { releases.first().await }
        });
        tx.send_replace(Some(release("2.336.0")));
        assert_eq!(
            waiting.await.expect("no panic").expect("first"),
            release("2.336.0"),
            "the first release is awaited"
        );
        assert_eq!(releases.first().await.expect("first"), release("2.336.0"));
        tx.send_replace(Some(release("2.336.0")));
        assert_eq!(releases.next().await, Some(release("2.336.0")));
        tx.send_replace(Some(release("2.340.1")));
        assert_eq!(releases.next().await, Some(release("2.340.1")));
        drop(tx);
        assert_eq!(releases.next().await, None, "the app stopped publishing");
    }

    #[tokio::test]
    async fn a_channel_closed_before_any_release_is_a_permanent_error() {
        let (tx, rx) = watch::channel(None);
        drop(tx);
        let err = Releases::published(rx)
            .first()
            .await
            .expect_err("nothing published");
        assert!(!err.is_transient());
    }
}
