//! The runner image: its recipe, its build (ImageGetOrCreate, then ImageJoinStreaming
//! until a result, docs/modal.md §2.2; cached by Modal per recipe; a broken log stream is
//! reopened from its last entry with backoff, a few times in a row at most), and the image
//! new sandboxes currently start from.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tonic::Code;

use super::client::{ModalApi, ModalError};
use super::features::with_docker;
use super::proto::generic_result::GenericStatus;
use super::proto::{
    EnvironmentGetOrCreateRequest, GenericResult, Image, ImageGetOrCreateRequest, ImageJoinStreamingRequest,
    ObjectCreationType, TaskLogs,
};
use super::{BackendError, ModalSettings, classify};
use crate::retry::Backoff;
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
    /// `SANDBOX_DOCKER`: the image installs Docker (issue 13).
    docker: bool,
    timeout: Duration,
    stream_retry: Backoff,
    current: Arc<RwLock<Option<(RunnerVersion, String)>>>,
}

impl RunnerImage {
    pub(super) fn new(api: ModalApi, settings: &ModalSettings) -> RunnerImage {
        RunnerImage {
            api,
            environment: settings.environment.clone(),
            builder_version: settings.builder_version.clone(),
            recipe: settings.image.clone(),
            docker: settings.features.docker,
            timeout: settings.build_timeout,
            stream_retry: settings.build_stream_retry,
            current: Arc::default(),
        }
    }

    /// Builds the image of `release` in the app and makes it the current one.
    pub(super) async fn build(&self, app_id: &str, release: &RunnerRelease) -> Result<String, BackendError> {
        let builder = builder_version(&self.api, &self.environment, self.builder_version.as_deref())
            .await
            .map_err(|e| classify(&e))?;
        tracing::info!(runner.version = %release.version, builder = %builder, "building the runner image");
        let commands = with_docker(dockerfile_commands(&self.recipe, release), self.docker);
        let id = build(
            &self.api,
            app_id,
            commands,
            &builder,
            self.timeout,
            self.stream_retry,
        )
        .await
        .map_err(backend_error)?;
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

/// A failed build as the backend reports it.
pub(super) fn backend_error(e: BuildError) -> BackendError {
    match &e {
        BuildError::Modal(m) => classify(m),
        // A stream that kept breaking may be followed again later (the build goes on
        // at Modal's); the error keeps the end of the log.
        BuildError::StreamFailed { error, .. } if error.is_transient() => {
            BackendError::Transient(e.to_string())
        }
        _ => BackendError::Permanent(e.to_string()),
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
    /// The build log stream failed `errors` times in a row (or once with a permanent code).
    #[error(
        "the runner image build could not be followed: its log stream failed {errors} time(s) in a row, last: {error}\n--- last lines of the build log ---\n{log_tail}"
    )]
    StreamFailed {
        errors: u32,
        error: ModalError,
        log_tail: String,
    },
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

/// Lines of the build log an error carries.
const LOG_TAIL: usize = 40;
/// Modal's long-poll: the server holds a join for this long...
const JOIN_POLL_SECS: f32 = 55.0;
/// ...so the client waits longer than that before giving up on one stream.
const JOIN_DEADLINE: Duration = Duration::from_secs(70);
/// A stream that ends cleanly without a result and without bringing anything before half
/// of the long-poll passed was not ended by the poll: it counts as an error.
const EARLY_END: Duration = Duration::from_millis((JOIN_POLL_SECS * 500.0) as u64);

/// Builds (or finds the cached build of) an image; returns its id. `stream_retry` bounds
/// the consecutive errors of the build log stream (see [`join`]).
pub async fn build(
    api: &ModalApi,
    app_id: &str,
    commands: Vec<String>,
    builder_version: &str,
    timeout: Duration,
    stream_retry: Backoff,
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
    let mut log = BuildLog::new(LOG_TAIL);
    let result = match resp.result.filter(finished) {
        Some(r) => r,
        None => join(api, &image_id, timeout, stream_retry, &mut log).await?,
    };
    if result.status == GenericStatus::Success as i32 {
        tracing::info!(image.id = %image_id, "runner image ready");
        Ok(image_id)
    } else {
        Err(BuildError::Failed {
            message: failure_message(&result),
            log_tail: log.tail(),
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

/// The build log as it streams in: every line goes to the debug log, the last `cap` are
/// kept for the error of a failed build.
#[derive(Debug)]
struct BuildLog {
    tail: VecDeque<String>,
    cap: usize,
}

impl BuildLog {
    fn new(cap: usize) -> BuildLog {
        BuildLog {
            tail: VecDeque::with_capacity(cap),
            cap,
        }
    }

    fn extend(&mut self, image_id: &str, logs: &[TaskLogs]) {
        for line in logs.iter().flat_map(|l| l.data.lines()) {
            tracing::debug!(image.id = %image_id, "build: {line}");
            if self.tail.len() == self.cap {
                self.tail.pop_front();
            }
            self.tail.push_back(line.to_string());
        }
    }

    fn tail(&self) -> String {
        self.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// How one `ImageJoinStreaming` call ended.
enum StreamEnd {
    /// The build's result arrived.
    Finished(GenericResult),
    /// The long-poll ended without a result: reopen at once.
    PollOver,
    /// The call failed, the stream broke, or it ended early with nothing.
    Broke(ModalError),
}

/// Follows the build log until a result arrives (docs/modal.md §2.2), reopening the stream
/// from the last entry seen when the long-poll ends. A stream error (the call refused with a
/// transient code, the stream breaking, or ending early with nothing) reopens it after a
/// backoff (`retry.delay`); `retry.attempts` errors in a row, without a message in between,
/// fail the build with the end of its log, as does a permanent code at once.
async fn join(
    api: &ModalApi,
    image_id: &str,
    timeout: Duration,
    retry: Backoff,
    log: &mut BuildLog,
) -> Result<GenericResult, BuildError> {
    let started = Instant::now();
    let mut last_entry = String::new();
    let mut errors = 0u32;
    while started.elapsed() < timeout {
        let (end, progressed) = follow(api, image_id, &mut last_entry, log).await;
        if progressed {
            errors = 0;
        }
        let error = match end {
            StreamEnd::Finished(result) => return Ok(result),
            StreamEnd::PollOver => continue,
            StreamEnd::Broke(error) => error,
        };
        errors += 1;
        if !error.is_transient() || errors >= retry.attempts {
            return Err(BuildError::StreamFailed {
                errors,
                error,
                log_tail: log.tail(),
            });
        }
        let wait = retry.delay(errors - 1);
        tracing::warn!(
            image.id = %image_id,
            error = %error,
            errors,
            retry_in_ms = wait.as_millis() as u64,
            "the build log stream failed; reopening it from the last entry"
        );
        tokio::time::sleep(wait).await;
    }
    Err(BuildError::TimedOut(timeout))
}

/// One `ImageJoinStreaming` call from `last_entry` (updated as entries arrive), the log
/// lines into `log`; returns how it ended and whether any message arrived.
async fn follow(
    api: &ModalApi,
    image_id: &str,
    last_entry: &mut String,
    log: &mut BuildLog,
) -> (StreamEnd, bool) {
    let req = ImageJoinStreamingRequest {
        image_id: image_id.to_string(),
        timeout: JOIN_POLL_SECS,
        last_entry_id: last_entry.clone(),
        include_logs_for_finished: true,
    };
    let opened = Instant::now();
    let (mut client, req) = api.streaming_request(req, JOIN_DEADLINE);
    let mut stream = match client.image_join_streaming(req).await {
        Ok(s) => s.into_inner(),
        Err(status) => {
            return (
                StreamEnd::Broke(join_error(status.code(), status.message())),
                false,
            );
        }
    };
    let mut progressed = false;
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                progressed = true;
                if !msg.entry_id.is_empty() {
                    *last_entry = msg.entry_id;
                }
                log.extend(image_id, &msg.task_logs);
                if let Some(result) = msg.result.filter(finished) {
                    return (StreamEnd::Finished(result), true);
                }
            }
            Ok(None) if progressed || opened.elapsed() >= EARLY_END => {
                return (StreamEnd::PollOver, progressed);
            }
            Ok(None) => {
                let error = join_error(
                    Code::Unavailable,
                    "the stream ended early without a result or a log entry",
                );
                return (StreamEnd::Broke(error), false);
            }
            Err(status) => {
                return (
                    StreamEnd::Broke(join_error(status.code(), status.message())),
                    progressed,
                );
            }
        }
    }
}

fn join_error(code: Code, message: &str) -> ModalError {
    ModalError {
        rpc: "ImageJoinStreaming",
        code,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::modal::client::ModalConnection;
    use crate::backend::modal::proto::AppGetOrCreateRequest;
    use fakes::modal::{FakeModal, FakeModalConfig, FaultKind, ModalFault};
    use secrecy::SecretString;

    const RECIPE: [&str; 3] = ["FROM alpine:3.21", "RUN a", "RUN b"];
    /// Quick reopens: 4 errors in a row fail, as in production, without the seconds.
    const RETRY: Backoff = Backoff::new(4, Duration::from_millis(10), Duration::from_millis(40));

    /// A fake Modal whose builds take 400 ms, a client of it and an app.
    async fn fake() -> (FakeModal, ModalApi, String) {
        let fake = FakeModal::start(FakeModalConfig {
            image_build_time: Duration::from_millis(400),
            create_rate_per_sec: None,
            ..FakeModalConfig::default()
        })
        .await
        .expect("fake Modal");
        let (token_id, secret) = fake.credentials();
        let api = ModalApi::new(ModalConnection {
            server_url: fake.url(),
            token_id,
            token_secret: SecretString::from(secret),
            max_throttle_wait: Duration::from_secs(5),
            retry: Backoff::new(2, Duration::from_millis(10), Duration::from_millis(20)),
        })
        .expect("client");
        let req = AppGetOrCreateRequest {
            app_name: "image-test".into(),
            environment_name: String::new(),
            object_creation_type: ObjectCreationType::CreateIfMissing as i32,
        };
        let app = api
            .unary(
                "AppGetOrCreate",
                req,
                Duration::from_secs(5),
                |mut c, r| async move { c.app_get_or_create(r).await },
            )
            .await
            .expect("app");
        (fake, api, app.app_id)
    }

    fn break_join(fake: &FakeModal, times: usize, after_messages: usize, code: Option<tonic::Code>) {
        let fault = FaultKind::BreakStream { after_messages, code };
        fake.inject(ModalFault::new("ImageJoinStreaming", times, fault));
    }

    async fn build_recipe(api: &ModalApi, app_id: &str) -> Result<String, BuildError> {
        let commands = RECIPE.iter().map(|c| c.to_string()).collect();
        let builder = fakes::modal::IMAGE_BUILDER_VERSION;
        build(api, app_id, commands, builder, Duration::from_secs(20), RETRY).await
    }

    /// The `last_entry_id` of every `ImageJoinStreaming` request the fake received.
    fn join_entries(fake: &FakeModal) -> Vec<String> {
        fake.requests()
            .into_iter()
            .filter(|c| c.rpc == "ImageJoinStreaming")
            .map(|c| {
                let (_, rest) = c.request.split_once("last_entry_id: \"").expect("field");
                rest.split('"').next().unwrap_or_default().to_string()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_build_log_stream_that_breaks_twice_is_reopened_from_its_last_entry_and_loses_no_line() {
        let (fake, api, app_id) = fake().await;
        break_join(&fake, 2, 1, Some(tonic::Code::Unavailable));
        let req = ImageGetOrCreateRequest {
            image: Some(Image {
                dockerfile_commands: RECIPE.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            app_id,
            force_build: false,
            builder_version: fakes::modal::IMAGE_BUILDER_VERSION.into(),
        };
        let image_id = api
            .unary(
                "ImageGetOrCreate",
                req,
                Duration::from_secs(5),
                |mut c, r| async move { c.image_get_or_create(r).await },
            )
            .await
            .expect("build started")
            .image_id;

        let mut log = BuildLog::new(100);
        let result = join(&api, &image_id, Duration::from_secs(20), RETRY, &mut log)
            .await
            .expect("the build is followed to its end");

        assert_eq!(result.status, GenericStatus::Success as i32);
        let lines: Vec<&String> = log.tail.iter().collect();
        assert_eq!(
            lines,
            [
                "Step 1/3 : FROM alpine:3.21",
                "Step 2/3 : RUN a",
                "Step 3/3 : RUN b",
                &format!("Built image {image_id}"),
            ],
            "every line once, in order"
        );
        let entries = join_entries(&fake);
        assert!(entries.len() >= 3, "two breaks, then the rest: {entries:?}");
        assert_eq!(entries[0], "", "the first join starts at the beginning");
        let heads: Vec<u32> = entries[1..]
            .iter()
            .map(|e| {
                e.split('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("an entry id")
            })
            .collect();
        assert!(
            heads[0] >= 1,
            "a reopened join resumes after the entry seen: {entries:?}"
        );
        assert!(heads[1] > heads[0], "each reopen resumes further on: {entries:?}");
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn a_build_survives_two_stream_breaks_through_the_public_build() {
        let (fake, api, app_id) = fake().await;
        break_join(&fake, 2, 1, Some(tonic::Code::Unavailable));

        let image_id = build_recipe(&api, &app_id).await.expect("built");

        assert!(image_id.starts_with("im-"), "{image_id}");
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn a_build_log_stream_that_breaks_four_times_in_a_row_fails_with_the_end_of_the_log() {
        let (fake, api, app_id) = fake().await;
        // One line arrives, then the stream breaks; then three reopens break at once.
        break_join(&fake, 1, 1, Some(tonic::Code::Unavailable));
        break_join(&fake, 3, 0, Some(tonic::Code::Unavailable));

        let err = build_recipe(&api, &app_id).await.expect_err("gave up");

        let BuildError::StreamFailed { errors, error, .. } = &err else {
            panic!("not a stream failure: {err}")
        };
        assert_eq!(*errors, 4);
        assert!(error.is_transient());
        let text = err.to_string();
        assert!(text.contains("failed 4 time(s) in a row"), "{text}");
        assert!(text.contains("last lines of the build log"), "{text}");
        assert!(text.contains("Step 1/3 : FROM alpine:3.21"), "{text}");
        assert!(
            !text.contains(&fake.credentials().1),
            "the token secret leaked: {text}"
        );
        assert_eq!(join_entries(&fake).len(), 4, "no fifth stream");
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn stream_errors_separated_by_log_lines_do_not_add_up() {
        let (fake, api, app_id) = fake().await;
        // Four breaks, each after a message: never two errors in a row.
        break_join(&fake, 4, 1, Some(tonic::Code::Unavailable));
        let commands: Vec<String> = std::iter::once("FROM alpine:3.21".to_string())
            .chain((1..8).map(|i| format!("RUN step-{i}")))
            .collect();
        let builder = fakes::modal::IMAGE_BUILDER_VERSION;

        let built = build(&api, &app_id, commands, builder, Duration::from_secs(20), RETRY).await;

        assert!(built.is_ok(), "{built:?}");
        assert!(join_entries(&fake).len() >= 5, "{:?}", join_entries(&fake));
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn streams_that_end_early_with_nothing_count_as_errors() {
        let (fake, api, app_id) = fake().await;
        break_join(&fake, 4, 0, None);

        let err = build_recipe(&api, &app_id).await.expect_err("gave up");

        assert!(matches!(err, BuildError::StreamFailed { errors: 4, .. }), "{err}");
        assert!(err.to_string().contains("ended early"), "{err}");
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn a_permanent_stream_error_fails_the_build_at_once() {
        let (fake, api, app_id) = fake().await;
        break_join(&fake, 1, 1, Some(tonic::Code::PermissionDenied));

        let err = build_recipe(&api, &app_id).await.expect_err("refused");

        assert!(matches!(err, BuildError::StreamFailed { errors: 1, .. }), "{err}");
        assert_eq!(join_entries(&fake).len(), 1);
        fake.shutdown().await;
    }

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
