//! Images: recipe-cached builds that take `image_build_time`, and the log stream clients
//! follow until the build's result (docs/modal.md §2.2).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use modal_proto::generic_result::GenericStatus;
use modal_proto::{
    GenericResult, Image, ImageGetOrCreateRequest, ImageGetOrCreateResponse, ImageJoinStreamingRequest,
    ImageJoinStreamingResponse, TaskLogs,
};

use super::error::RpcError;
use super::state::{Shared, State, clamp_secs, new_id, unix_now};

/// Shortest and longest server-side wait of one `ImageJoinStreaming` call.
const MIN_JOIN_WAIT_SECS: f64 = 0.05;
const MAX_JOIN_WAIT_SECS: f64 = 600.0;
/// `file_descriptor` of build output (Modal's INFO stream).
const FD_INFO: i32 = 3;

/// The stream `ImageJoinStreaming` answers with.
pub(crate) type JoinStream = ReceiverStream<Result<ImageJoinStreamingResponse, Status>>;

/// What makes two image requests the same image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Recipe {
    dockerfile_commands: Vec<String>,
    base_images: Vec<(String, String)>,
    builder_version: String,
    gpu: Option<(i32, u32, String)>,
}

impl Recipe {
    fn of(image: &Image, builder_version: &str) -> Self {
        Self {
            dockerfile_commands: image.dockerfile_commands.clone(),
            base_images: image
                .base_images
                .iter()
                .map(|b| (b.image_id.clone(), b.docker_tag.clone()))
                .collect(),
            builder_version: builder_version.to_owned(),
            gpu: image
                .gpu_config
                .as_ref()
                .map(|g| (g.r#type, g.count, g.gpu_type.clone())),
        }
    }
}

/// Progress of one build: its log lines (entry id n = line n, 1-based) and its result.
#[derive(Debug, Default)]
pub(crate) struct BuildProgress {
    logs: Vec<TaskLogs>,
    result: Option<GenericResult>,
}

/// An image. Its progress is a watch channel so log streams wake on every new line.
pub(crate) struct ImageRecord {
    progress: Arc<watch::Sender<BuildProgress>>,
}

impl ImageRecord {
    fn result(&self) -> Option<GenericResult> {
        self.progress.borrow().result.clone()
    }

    /// Whether the build ended in anything but SUCCESS (such images are not reused).
    fn failed(&self) -> bool {
        self.progress
            .borrow()
            .result
            .as_ref()
            .is_some_and(|r| r.status != GenericStatus::Success as i32)
    }

    /// Whether sandboxes may be created from it.
    pub(crate) fn succeeded(&self) -> bool {
        self.progress
            .borrow()
            .result
            .as_ref()
            .is_some_and(|r| r.status == GenericStatus::Success as i32)
    }
}

/// A build to run in the background.
struct BuildJob {
    image_id: String,
    commands: Vec<String>,
    failure: Option<String>,
    progress: Arc<watch::Sender<BuildProgress>>,
}

/// `ImageGetOrCreate`: the cached image for this recipe, or a new background build.
pub(crate) fn get_or_create(
    shared: &Arc<Shared>,
    request: ImageGetOrCreateRequest,
) -> Result<ImageGetOrCreateResponse, RpcError> {
    let image = request
        .image
        .ok_or_else(|| RpcError::InvalidArgument("image is required".to_owned()))?;
    validate_commands(&image.dockerfile_commands)?;
    let recipe = Recipe::of(&image, &request.builder_version);
    let outcome = shared.with_state(|state| {
        state.require_app(&request.app_id)?;
        check_base_images(state, &image)?;
        if !request.force_build
            && let Some(found) = cached(state, &recipe)
        {
            return Ok(Err(found));
        }
        Ok(Ok(start_build(state, recipe, image.dockerfile_commands)))
    })?;
    match outcome {
        Err(cached) => Ok(cached),
        Ok(job) => {
            let image_id = job.image_id.clone();
            shared.tracker.spawn(run_build(Arc::clone(shared), job));
            Ok(ImageGetOrCreateResponse {
                image_id,
                result: None,
            })
        }
    }
}

/// INVALID_ARGUMENT unless the recipe starts with a `FROM` instruction.
fn validate_commands(commands: &[String]) -> Result<(), RpcError> {
    let starts_with_from = commands.first().is_some_and(|first| {
        let mut words = first.split_whitespace();
        words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) && words.next().is_some()
    });
    if starts_with_from {
        Ok(())
    } else {
        Err(RpcError::InvalidArgument(
            "the first Dockerfile command must be 'FROM <image>'".to_owned(),
        ))
    }
}

/// NOT_FOUND for a base image the fake never built.
fn check_base_images(state: &State, image: &Image) -> Result<(), RpcError> {
    match image
        .base_images
        .iter()
        .find(|base| !state.images.contains_key(&base.image_id))
    {
        Some(base) => Err(RpcError::NotFound(format!("Image {} not found", base.image_id))),
        None => Ok(()),
    }
}

/// The answer for a recipe whose image is built or building; failed builds are retried.
fn cached(state: &State, recipe: &Recipe) -> Option<ImageGetOrCreateResponse> {
    let image_id = state.recipes.get(recipe)?;
    let image = state.images.get(image_id)?;
    (!image.failed()).then(|| ImageGetOrCreateResponse {
        image_id: image_id.clone(),
        result: image.result(),
    })
}

fn start_build(state: &mut State, recipe: Recipe, commands: Vec<String>) -> BuildJob {
    let image_id = new_id("im-");
    let (progress, _) = watch::channel(BuildProgress::default());
    let progress = Arc::new(progress);
    let record = ImageRecord {
        progress: Arc::clone(&progress),
    };
    state.images.insert(image_id.clone(), record);
    state.recipes.insert(recipe, image_id.clone());
    state.image_builds += 1;
    BuildJob {
        image_id,
        commands,
        failure: state.fail_builds.clone(),
        progress,
    }
}

/// Plays a build: one "Step i/n" line per command spread over the build time, then the
/// result. Stops silently if the fake shuts down.
async fn run_build(shared: Arc<Shared>, job: BuildJob) {
    let steps = job.commands.len();
    let pause = step_pause(shared.settings.image_build_time, steps);
    for (index, command) in job.commands.iter().enumerate() {
        if !shared.sleep(pause).await {
            return;
        }
        push_log(&job.progress, format!("Step {}/{steps} : {command}", index + 1));
    }
    if !shared.sleep(pause).await {
        return;
    }
    let result = match job.failure {
        Some(message) => {
            push_log(&job.progress, format!("ERROR: {message}"));
            GenericResult {
                status: GenericStatus::Failure as i32,
                exception: message,
                exitcode: 1,
                ..GenericResult::default()
            }
        }
        None => {
            push_log(&job.progress, format!("Built image {}", job.image_id));
            GenericResult {
                status: GenericStatus::Success as i32,
                ..GenericResult::default()
            }
        }
    };
    job.progress.send_modify(|p| p.result = Some(result));
}

/// The build time split evenly between the steps and the final result.
fn step_pause(build_time: Duration, steps: usize) -> Duration {
    let parts = u32::try_from(steps.saturating_add(1)).unwrap_or(u32::MAX);
    build_time / parts
}

fn push_log(progress: &watch::Sender<BuildProgress>, data: String) {
    let line = TaskLogs {
        data: format!("{data}\n"),
        task_state: 0,
        timestamp: unix_now(),
        file_descriptor: FD_INFO,
    };
    progress.send_modify(|p| p.logs.push(line));
}

/// `ImageJoinStreaming`: logs after `last_entry_id`, then the result with `eof`; ends
/// without a result once the request's `timeout` passes (the client reopens).
pub(crate) fn join(shared: &Arc<Shared>, request: ImageJoinStreamingRequest) -> Result<JoinStream, RpcError> {
    let after = parse_entry_id(&request.last_entry_id)?;
    let progress = shared.with_state(|state| {
        state
            .images
            .get(&request.image_id)
            .map(|image| image.progress.subscribe())
            .ok_or_else(|| RpcError::NotFound(format!("Image {} not found", request.image_id)))
    })?;
    let follow = Follow {
        progress,
        sent: after,
        deadline: Instant::now() + clamp_secs(request.timeout, MIN_JOIN_WAIT_SECS, MAX_JOIN_WAIT_SECS),
        include_logs_for_finished: request.include_logs_for_finished,
    };
    let (tx, rx) = mpsc::channel(16);
    let shutdown = shared.shutdown.clone();
    shared.tracker.spawn(async move {
        tokio::select! {
            () = follow.run(&tx) => {}
            () = shutdown.cancelled() => {}
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// `stream` cut short by an injected fault: its first `after_messages` messages, then `end`
/// (a status) or nothing (a clean, early end). Dropping the rest closes the original stream,
/// whose server side then stops following the build.
pub(crate) fn cut(
    shared: &Arc<Shared>,
    mut stream: JoinStream,
    after_messages: usize,
    end: Option<Status>,
) -> JoinStream {
    let (tx, rx) = mpsc::channel(16);
    shared.tracker.spawn(async move {
        for _ in 0..after_messages {
            let Some(message) = stream.next().await else {
                return;
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
        drop(stream);
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
    });
    ReceiverStream::new(rx)
}

/// `""` or `"n-m"` → n (entries before and including n have been seen).
fn parse_entry_id(entry_id: &str) -> Result<usize, RpcError> {
    if entry_id.is_empty() {
        return Ok(0);
    }
    let head = entry_id.split_once('-').map_or(entry_id, |(head, _)| head);
    head.parse()
        .map_err(|_| RpcError::InvalidArgument(format!("invalid last_entry_id {entry_id:?}")))
}

fn entry_id(line: usize) -> String {
    format!("{line}-0")
}

/// One open `ImageJoinStreaming` call.
struct Follow {
    progress: watch::Receiver<BuildProgress>,
    /// Entry id of the last log line sent.
    sent: usize,
    deadline: Instant,
    include_logs_for_finished: bool,
}

impl Follow {
    async fn run(mut self, tx: &mpsc::Sender<Result<ImageJoinStreamingResponse, Status>>) {
        let finished_at_open = self.progress.borrow().result.is_some();
        if finished_at_open && !self.include_logs_for_finished && self.sent == 0 {
            self.sent = self.progress.borrow().logs.len();
        }
        loop {
            let (messages, done) = self.next_messages();
            for message in messages {
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                changed = self.progress.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(self.deadline) => return,
                () = tx.closed() => return,
            }
        }
    }

    /// The unsent log lines as one batch, then the result if there is one.
    fn next_messages(&mut self) -> (Vec<ImageJoinStreamingResponse>, bool) {
        let progress = self.progress.borrow_and_update();
        let mut messages = Vec::new();
        if let Some(unsent) = progress.logs.get(self.sent..)
            && !unsent.is_empty()
        {
            self.sent = progress.logs.len();
            messages.push(ImageJoinStreamingResponse {
                task_logs: unsent.to_vec(),
                entry_id: entry_id(self.sent),
                ..ImageJoinStreamingResponse::default()
            });
        }
        let done = progress.result.is_some();
        if let Some(result) = &progress.result {
            messages.push(ImageJoinStreamingResponse {
                result: Some(result.clone()),
                entry_id: entry_id(self.sent),
                eof: true,
                ..ImageJoinStreamingResponse::default()
            });
        }
        (messages, done)
    }
}
