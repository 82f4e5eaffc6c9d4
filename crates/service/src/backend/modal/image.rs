//! The runner image: its recipe, its build (ImageGetOrCreate, then ImageJoinStreaming
//! until a result, docs/modal.md §2.2; cached by Modal per recipe), and the image new
//! sandboxes currently start from.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::client::{ModalApi, ModalError};
use super::proto::generic_result::GenericStatus;
use super::proto::{
    EnvironmentGetOrCreateRequest, GenericResult, Image, ImageGetOrCreateRequest, ImageJoinStreamingRequest,
    ObjectCreationType,
};
use super::{BackendError, ModalSettings, classify};
use crate::runner_version::{RunnerRelease, RunnerVersion};

/// What goes into the image besides the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSettings {
    /// `SANDBOX_IMAGE`: the base image (a registry tag).
    pub base: String,
    /// `SANDBOX_IMAGE_COMMANDS`: extra Dockerfile commands run after the runner is installed.
    pub extra_commands: Vec<String>,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            base: "debian:bookworm-slim".into(),
            extra_commands: Vec::new(),
        }
    }
}

/// Builds the runner image for a release and remembers the one new sandboxes start from.
/// Cheap to clone: the refresh task holds its own, sharing the current image.
#[derive(Clone)]
pub(super) struct RunnerImage {
    api: ModalApi,
    environment: String,
    builder_version: Option<String>,
    recipe: ImageSettings,
    timeout: Duration,
    current: Arc<RwLock<Option<(RunnerVersion, String)>>>,
}

impl RunnerImage {
    pub(super) fn new(api: ModalApi, settings: &ModalSettings) -> RunnerImage {
        RunnerImage {
            api,
            environment: settings.environment.clone(),
            builder_version: settings.builder_version.clone(),
            recipe: settings.image.clone(),
            timeout: settings.build_timeout,
            current: Arc::default(),
        }
    }

    /// Builds the image of `release` in the app and makes it the current one.
    pub(super) async fn build(&self, app_id: &str, release: &RunnerRelease) -> Result<String, BackendError> {
        let builder = builder_version(&self.api, &self.environment, self.builder_version.as_deref())
            .await
            .map_err(|e| classify(&e))?;
        tracing::info!(runner.version = %release.version, builder = %builder, "building the runner image");
        let commands = dockerfile_commands(&self.recipe, release);
        let id = build(&self.api, app_id, commands, &builder, self.timeout)
            .await
            .map_err(|e| match e {
                BuildError::Modal(m) => classify(&m),
                other => BackendError::Permanent(other.to_string()),
            })?;
        if let Ok(mut slot) = self.current.write() {
            *slot = Some((release.version.clone(), id.clone()));
        }
        Ok(id)
    }

    /// The release of the current image.
    pub(super) fn version(&self) -> Option<RunnerVersion> {
        self.current
            .read()
            .ok()
            .and_then(|i| i.as_ref().map(|(v, _)| v.clone()))
    }

    /// The current image's id.
    pub(super) fn id(&self) -> Result<String, BackendError> {
        self.current
            .read()
            .ok()
            .and_then(|i| i.as_ref().map(|(_, id)| id.clone()))
            .ok_or_else(|| BackendError::Transient("the runner image is not built yet".into()))
    }
}

/// Where the runner lives in the image; the sandbox's entrypoint starts it there.
pub const RUNNER_HOME: &str = "/actions-runner";

/// The Dockerfile commands of the image: the original system's recipe (debian-slim, curl,
/// git, ca-certificates, sudo, jq, the runner tarball and its dependency script) for the
/// given release, then the user's extra steps.
pub fn dockerfile_commands(settings: &ImageSettings, release: &RunnerRelease) -> Vec<String> {
    let verify = release
        .sha256
        .as_ref()
        .map(|sum| format!(" && echo '{sum}  runner.tar.gz' | sha256sum -c -"))
        .unwrap_or_default();
    let mut commands = vec![
        format!("FROM {}", settings.base),
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         bash ca-certificates curl git jq sudo tar gzip && rm -rf /var/lib/apt/lists/*"
            .to_string(),
        format!(
            "RUN mkdir -p {RUNNER_HOME} && cd {RUNNER_HOME} && curl -fsSL -o runner.tar.gz '{}'{verify} \
             && tar xzf runner.tar.gz && rm runner.tar.gz && ./bin/installdependencies.sh && rm -rf /var/lib/apt/lists/*",
            release.url
        ),
    ];
    commands.extend(settings.extra_commands.iter().cloned());
    commands
}

/// A failed build, with the end of its log.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Modal(#[from] ModalError),
    #[error("the runner image build failed: {message}\n--- last lines of the build log ---\n{log_tail}")]
    Failed { message: String, log_tail: String },
    #[error("the runner image build did not finish within {0:?}")]
    TimedOut(Duration),
}

/// The image builder version: `MODAL_IMAGE_BUILDER_VERSION`, else the environment's.
pub async fn builder_version(
    api: &ModalApi,
    environment: &str,
    configured: Option<&str>,
) -> Result<String, ModalError> {
    if let Some(v) = configured {
        return Ok(v.to_string());
    }
    let req = EnvironmentGetOrCreateRequest {
        deployment_name: environment.to_string(),
        object_creation_type: ObjectCreationType::Unspecified as i32,
    };
    let resp = api
        .unary(
            "EnvironmentGetOrCreate",
            req,
            Duration::from_secs(30),
            |mut c, r| async move { c.environment_get_or_create(r).await },
        )
        .await?;
    Ok(resp
        .metadata
        .and_then(|m| m.settings)
        .map(|s| s.image_builder_version)
        .unwrap_or_default())
}

const LOG_TAIL: usize = 40;
/// Modal's long-poll: the server holds a join for this long...
const JOIN_POLL_SECS: f32 = 55.0;
/// ...so the client waits longer than that before giving up on one stream.
const JOIN_DEADLINE: Duration = Duration::from_secs(70);

/// Builds (or finds the cached build of) an image; returns its id.
pub async fn build(
    api: &ModalApi,
    app_id: &str,
    commands: Vec<String>,
    builder_version: &str,
    timeout: Duration,
) -> Result<String, BuildError> {
    let req = ImageGetOrCreateRequest {
        image: Some(Image {
            dockerfile_commands: commands,
            ..Default::default()
        }),
        app_id: app_id.to_string(),
        force_build: false,
        builder_version: builder_version.to_string(),
    };
    let resp = api
        .unary(
            "ImageGetOrCreate",
            req,
            Duration::from_secs(60),
            |mut c, r| async move { c.image_get_or_create(r).await },
        )
        .await?;
    let image_id = resp.image_id;
    let result = match resp.result.filter(finished) {
        Some(r) => r,
        None => join(api, &image_id, timeout).await?,
    };
    if result.status == GenericStatus::Success as i32 {
        tracing::info!(image.id = %image_id, "runner image ready");
        Ok(image_id)
    } else {
        Err(BuildError::Failed {
            message: failure_message(&result),
            log_tail: String::new(),
        })
    }
}

fn finished(r: &GenericResult) -> bool {
    r.status != GenericStatus::Unspecified as i32
}

fn failure_message(r: &GenericResult) -> String {
    let status = GenericStatus::try_from(r.status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN");
    if r.exception.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {}", r.exception)
    }
}

/// Follows the build log until a result arrives, reopening the stream from the last entry
/// when the server ends it (every 55 s) or it breaks.
async fn join(api: &ModalApi, image_id: &str, timeout: Duration) -> Result<GenericResult, BuildError> {
    let started = Instant::now();
    let mut last_entry = String::new();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(LOG_TAIL);
    let mut failures = 0u32;
    while started.elapsed() < timeout {
        let req = ImageJoinStreamingRequest {
            image_id: image_id.to_string(),
            timeout: JOIN_POLL_SECS,
            last_entry_id: last_entry.clone(),
            include_logs_for_finished: true,
        };
        let (mut client, req) = api.streaming_request(req, JOIN_DEADLINE);
        let mut stream = match client.image_join_streaming(req).await {
            Ok(s) => s.into_inner(),
            Err(status) => {
                let err = ModalError {
                    rpc: "ImageJoinStreaming",
                    code: status.code(),
                    message: status.message().into(),
                };
                failures += 1;
                if !err.is_transient() || failures > 10 {
                    return Err(err.into());
                }
                tokio::time::sleep(Duration::from_millis(500) * failures).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    if !msg.entry_id.is_empty() {
                        last_entry = msg.entry_id;
                    }
                    for line in msg.task_logs.iter().flat_map(|l| l.data.lines()) {
                        tracing::debug!(image.id = %image_id, "build: {line}");
                        if tail.len() == LOG_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line.to_string());
                    }
                    if let Some(result) = msg.result.filter(finished) {
                        if result.status == GenericStatus::Success as i32 {
                            return Ok(result);
                        }
                        let log_tail = tail.iter().cloned().collect::<Vec<_>>().join("\n");
                        return Err(BuildError::Failed {
                            message: failure_message(&result),
                            log_tail,
                        });
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(image.id = %image_id, error = %status, "build log stream broke; reopening");
                    break;
                }
            }
        }
    }
    Err(BuildError::TimedOut(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_installs_the_runner_release_and_then_the_extra_steps() {
        let release = RunnerRelease {
            sha256: Some("abc123".into()),
            ..RunnerRelease::from_version(RunnerVersion::parse("2.336.0").expect("version"))
        };
        let settings = ImageSettings {
            base: "ubuntu:24.04".into(),
            extra_commands: vec!["RUN pip install uv".into()],
        };
        let commands = dockerfile_commands(&settings, &release);
        assert_eq!(commands[0], "FROM ubuntu:24.04");
        assert!(commands[1].contains("git") && commands[1].contains("jq") && commands[1].contains("sudo"));
        assert!(commands[2].contains("actions-runner-linux-x64-2.336.0.tar.gz"));
        assert!(commands[2].contains("sha256sum -c") && commands[2].contains("installdependencies.sh"));
        assert_eq!(commands.last().map(String::as_str), Some("RUN pip install uv"));
    }
}
