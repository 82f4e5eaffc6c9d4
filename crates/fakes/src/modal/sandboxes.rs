//! Sandboxes: create (with validation, name uniqueness and the creation-rate limit), look
//! up, list, wait for and terminate (docs/modal.md §2.4–2.6).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use modal_proto::generic_result::GenericStatus;
use modal_proto::{
    GenericResult, Sandbox, SandboxCreateRequest, SandboxCreateResponse, SandboxGetFromNameRequest,
    SandboxGetFromNameResponse, SandboxInfo, SandboxListRequest, SandboxListResponse, SandboxTag,
    SandboxTerminateRequest, SandboxTerminateResponse, SandboxWaitRequest, SandboxWaitResponse, TaskInfo,
};

use super::error::RpcError;
use super::lifecycle::Lifecycle;
use super::process::{self, Launch};
use super::state::{Shared, State, clamp_secs, environment_key, new_id, validate_name};
use super::types::{SandboxFinish, SandboxResources, SandboxView};

/// Longest lifetime Modal allows (24 h, docs/modal.md §5).
const MAX_TIMEOUT_SECS: u32 = 86_400;
/// Lifetime of a sandbox created with `timeout_secs = 0`.
const DEFAULT_TIMEOUT_SECS: u32 = 300;
/// Longest `SandboxWait` long-poll the fake honours.
const MAX_WAIT_SECS: f64 = 600.0;
/// How long `SandboxTerminate` waits for the processes to be gone before answering.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);

/// A sandbox as the fake stores it.
pub(crate) struct SandboxRecord {
    id: String,
    task_id: String,
    app_id: String,
    name: Option<String>,
    tags: Vec<SandboxTag>,
    definition: Sandbox,
    env: BTreeMap<String, String>,
    timeout_secs: u32,
    created_at: f64,
    created_instant: Instant,
    lifecycle: Lifecycle,
}

impl SandboxRecord {
    pub(crate) fn is_running(&self) -> bool {
        self.lifecycle.outcome().is_none()
    }

    fn has_tags(&self, wanted: &[SandboxTag]) -> bool {
        wanted.iter().all(|tag| self.tags.contains(tag))
    }

    fn holds_name(&self, app_id: &str, name: &str) -> bool {
        self.app_id == app_id && self.name.as_deref() == Some(name) && self.is_running()
    }

    /// The test-facing view.
    pub(crate) fn view(&self) -> SandboxView {
        let finished = self.lifecycle.outcome().map(|finish| SandboxFinish {
            status: GenericStatus::try_from(finish.result.status).unwrap_or(GenericStatus::Unspecified),
            exitcode: finish.result.exitcode,
            exception: finish.result.exception,
            at: finish.at,
            log_tail: self.lifecycle.stopped().and_then(|s| s.log_tail),
        });
        SandboxView {
            id: self.id.clone(),
            name: self.name.clone(),
            app_id: self.app_id.clone(),
            tags: self
                .tags
                .iter()
                .map(|t| (t.tag_name.clone(), t.tag_value.clone()))
                .collect(),
            entrypoint_args: self.definition.entrypoint_args.clone(),
            image_id: self.definition.image_id.clone(),
            secret_ids: self.definition.secret_ids.clone(),
            env: self.env.clone(),
            resources: resources_view(&self.definition),
            timeout_secs: self.timeout_secs,
            created_at: self.created_instant,
            created_at_unix: self.created_at,
            finished,
            definition: self.definition.clone(),
        }
    }

    /// The `SandboxList` entry.
    fn info(&self) -> SandboxInfo {
        let outcome = self.lifecycle.outcome();
        let task_info = TaskInfo {
            id: self.task_id.clone(),
            started_at: self.created_at,
            finished_at: outcome.as_ref().map_or(0.0, |f| f.unix),
            result: outcome.map(|f| f.result),
            enqueued_at: self.created_at,
        };
        SandboxInfo {
            id: self.id.clone(),
            created_at: self.created_at,
            task_info: Some(task_info),
            app_id: self.app_id.clone(),
            tags: self.tags.clone(),
            name: self.name.clone().unwrap_or_default(),
            timeout_secs: self.timeout_secs,
        }
    }
}

fn resources_view(definition: &Sandbox) -> SandboxResources {
    let Some(resources) = &definition.resources else {
        return SandboxResources::default();
    };
    let gpu = resources
        .gpu_config
        .as_ref()
        .filter(|g| !g.gpu_type.is_empty())
        .map(|g| match g.count {
            0 | 1 => g.gpu_type.clone(),
            count => format!("{}:{count}", g.gpu_type),
        });
    SandboxResources {
        milli_cpu: resources.milli_cpu,
        memory_mb: resources.memory_mb,
        gpu,
    }
}

/// A create that passed every check and took a rate token.
struct Admission {
    app_id: String,
    definition: Sandbox,
    tags: Vec<SandboxTag>,
    env: BTreeMap<String, String>,
    reserved_name: Option<(String, String)>,
    timeout_secs: u32,
    latency: Duration,
}

/// `SandboxCreate`. Once admitted, the create finishes in a detached task, so a caller
/// that gives up during the latency still leaves a sandbox behind, as on Modal.
pub(crate) async fn create(
    shared: &Arc<Shared>,
    request: SandboxCreateRequest,
) -> Result<SandboxCreateResponse, RpcError> {
    let definition = request
        .definition
        .ok_or_else(|| RpcError::InvalidArgument("definition is required".to_owned()))?;
    validate_definition(&definition)?;
    let admission = shared.with_state(|state| admit(state, request.app_id, definition, request.tags))?;
    let (answer, answered) = oneshot::channel();
    let shared_for_task = Arc::clone(shared);
    shared.tracker.spawn(async move {
        let _ = answer.send(complete(&shared_for_task, admission).await);
    });
    answered.await.map_err(|_| RpcError::shutting_down())?
}

fn validate_definition(definition: &Sandbox) -> Result<(), RpcError> {
    if definition.timeout_secs > MAX_TIMEOUT_SECS {
        return Err(RpcError::InvalidArgument(format!(
            "timeout_secs must be at most {MAX_TIMEOUT_SECS} (24 hours), got {}",
            definition.timeout_secs
        )));
    }
    if let Some(name) = &definition.name {
        validate_name("Sandbox", name)?;
    }
    super::volumes::check_runtime(definition)?;
    if let Some(workdir) = &definition.workdir
        && !workdir.starts_with('/')
    {
        return Err(RpcError::InvalidArgument(format!(
            "workdir must be an absolute path, got {workdir:?}"
        )));
    }
    Ok(())
}

/// The checks of `SandboxCreate` in Modal's order, then the rate token.
fn admit(
    state: &mut State,
    app_id: String,
    definition: Sandbox,
    tags: Vec<SandboxTag>,
) -> Result<Admission, RpcError> {
    state.require_app(&app_id)?;
    check_image(state, &definition.image_id)?;
    super::volumes::check_mounts(state, &definition)?;
    let env = merged_env(state, &definition.secret_ids)?;
    let reserved_name = check_name_free(state, &app_id, definition.name.as_deref())?;
    let now = Instant::now();
    if let Err(refusal) = state.rate.try_admit(now) {
        state.rate_limit_errors += 1;
        return Err(refusal);
    }
    state.create_times.push(now);
    if let Some(key) = &reserved_name {
        state.reserved_names.insert(key.clone());
    }
    let timeout_secs = match definition.timeout_secs {
        0 => DEFAULT_TIMEOUT_SECS,
        secs => secs,
    };
    Ok(Admission {
        app_id,
        definition,
        tags,
        env,
        reserved_name,
        timeout_secs,
        latency: state.create_latency,
    })
}

fn check_image(state: &State, image_id: &str) -> Result<(), RpcError> {
    match state.images.get(image_id) {
        None => Err(RpcError::FailedPrecondition(format!(
            "Image {image_id} not found"
        ))),
        Some(image) if !image.succeeded() => Err(RpcError::FailedPrecondition(format!(
            "Image {image_id} has not been built successfully"
        ))),
        Some(_) => Ok(()),
    }
}

/// The secrets' variables in `secret_ids` order, later secrets winning.
fn merged_env(state: &State, secret_ids: &[String]) -> Result<BTreeMap<String, String>, RpcError> {
    let mut env = BTreeMap::new();
    for id in secret_ids {
        let secret = state
            .secrets
            .get(id)
            .ok_or_else(|| RpcError::NotFound(format!("Secret {id} not found")))?;
        env.extend(secret.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(env)
}

/// ALREADY_EXISTS if a running (or admitted) sandbox of the App holds `name`.
fn check_name_free(
    state: &State,
    app_id: &str,
    name: Option<&str>,
) -> Result<Option<(String, String)>, RpcError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let key = (app_id.to_owned(), name.to_owned());
    let taken =
        state.reserved_names.contains(&key) || state.sandboxes.iter().any(|s| s.holds_name(app_id, name));
    if taken {
        return Err(RpcError::AlreadyExists(format!(
            "Sandbox with name {name} already exists"
        )));
    }
    Ok(Some(key))
}

/// After the simulated latency: store the sandbox and start its entrypoint.
async fn complete(shared: &Arc<Shared>, admission: Admission) -> Result<SandboxCreateResponse, RpcError> {
    let alive = admission.latency.is_zero() || shared.sleep(admission.latency).await;
    let launch = shared.with_state(|state| {
        if let Some(key) = &admission.reserved_name {
            state.reserved_names.remove(key);
        }
        alive.then(|| insert(state, admission))
    });
    let launch = launch.ok_or_else(RpcError::shutting_down)?;
    let sandbox_id = launch.sandbox_id.clone();
    process::launch(shared, launch);
    Ok(SandboxCreateResponse { sandbox_id })
}

fn insert(state: &mut State, admission: Admission) -> Launch {
    let id = new_id("sb-");
    let lifecycle = Lifecycle::new();
    let record = SandboxRecord {
        id: id.clone(),
        task_id: new_id("ta-"),
        app_id: admission.app_id,
        name: admission.definition.name.clone(),
        tags: admission.tags,
        definition: admission.definition,
        env: admission.env.clone(),
        timeout_secs: admission.timeout_secs,
        created_at: state.next_created_at(),
        created_instant: Instant::now(),
        lifecycle: lifecycle.clone(),
    };
    state.sandbox_index.insert(id.clone(), state.sandboxes.len());
    state.sandboxes.push(record);
    state.peak_running = state.peak_running.max(state.running_count());
    Launch {
        sandbox_id: id,
        env: admission.env,
        timeout: Duration::from_secs(admission.timeout_secs.into()),
        lifecycle,
    }
}

/// `SandboxGetFromName`: the running sandbox with that name in the named App.
pub(crate) fn get_from_name(
    shared: &Shared,
    request: SandboxGetFromNameRequest,
) -> Result<SandboxGetFromNameResponse, RpcError> {
    let environment = environment_key(&request.environment_name);
    shared.with_state(|state| {
        let key = (environment, request.app_name);
        let app_id = state.app_names.get(&key).ok_or_else(|| {
            RpcError::NotFound(format!("App '{}' not found in environment '{}'", key.1, key.0))
        })?;
        state
            .sandboxes
            .iter()
            .find(|s| s.holds_name(app_id, &request.sandbox_name))
            .map(|s| SandboxGetFromNameResponse {
                sandbox_id: s.id.clone(),
            })
            .ok_or_else(|| {
                RpcError::NotFound(format!("Sandbox with name {} not found", request.sandbox_name))
            })
    })
}

/// `SandboxList`: newest first, filtered by tags, state and `before_timestamp`, one page.
pub(crate) fn list(shared: &Shared, request: SandboxListRequest) -> Result<SandboxListResponse, RpcError> {
    let page_size = shared.settings.list_page_size;
    shared.with_state(|state| {
        state.require_app(&request.app_id)?;
        let before = (request.before_timestamp > 0.0).then_some(request.before_timestamp);
        let sandboxes = state
            .sandboxes
            .iter()
            .rev()
            .filter(|s| s.app_id == request.app_id)
            .filter(|s| before.is_none_or(|before| s.created_at < before))
            .filter(|s| s.has_tags(&request.tags))
            .filter(|s| request.include_finished || s.is_running())
            .take(page_size)
            .map(SandboxRecord::info)
            .collect();
        Ok(SandboxListResponse { sandboxes })
    })
}

/// `SandboxTerminate`: TERMINATED for a running sandbox (answered once its processes are
/// gone); a finished one keeps its result, which is returned as `existing_result`.
pub(crate) async fn terminate(
    shared: &Shared,
    request: SandboxTerminateRequest,
) -> Result<SandboxTerminateResponse, RpcError> {
    let lifecycle =
        shared.with_state(|state| state.sandbox(&request.sandbox_id).map(|s| s.lifecycle.clone()))?;
    let existing = lifecycle.outcome();
    if existing.is_none() {
        lifecycle.finish(GenericResult {
            status: GenericStatus::Terminated as i32,
            exception: "Sandbox terminated".to_owned(),
            ..GenericResult::default()
        });
        lifecycle.wait_stopped(TERMINATE_WAIT).await;
    }
    Ok(SandboxTerminateResponse {
        existing_result: existing.map(|f| f.result),
    })
}

/// `SandboxWait`: the result once there is one, or none after `timeout` seconds.
pub(crate) async fn wait(
    shared: &Shared,
    request: SandboxWaitRequest,
) -> Result<SandboxWaitResponse, RpcError> {
    let lifecycle =
        shared.with_state(|state| state.sandbox(&request.sandbox_id).map(|s| s.lifecycle.clone()))?;
    let limit = clamp_secs(request.timeout, 0.0, MAX_WAIT_SECS);
    let finish = tokio::select! {
        finish = lifecycle.wait_outcome(limit) => finish,
        () = shared.shutdown.cancelled() => {
            lifecycle.outcome().ok_or_else(RpcError::shutting_down).map(Some)?
        }
    };
    Ok(SandboxWaitResponse {
        result: finish.map(|f| f.result),
    })
}

// ---- costs and failure logs (issue 13 items 4, 5) ----

impl SandboxRecord {
    /// What `SandboxGetStats` and `SandboxGetLogs` read: when it lived, what it asked for,
    /// and its lifecycle (for the output tail).
    pub(crate) fn usage(&self) -> super::usage::UsageInput {
        super::usage::UsageInput {
            created_at: self.created_at,
            finished_at: self.lifecycle.outcome().map(|f| f.unix),
            resources: resources_view(&self.definition),
            lifecycle: self.lifecycle.clone(),
        }
    }
}
