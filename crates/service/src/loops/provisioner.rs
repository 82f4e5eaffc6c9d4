//! Turns planned runners into running ones: JIT registration at GitHub, then a sandbox.
//!
//! The two steps are a pipeline with a budget each: registrations run under
//! `REGISTRATION_CONCURRENCY` (GitHub limits concurrent requests and registrations a
//! minute), sandbox creations under `SANDBOX_CREATE_CONCURRENCY` (Modal limits creations a
//! second, paced by the backend, and nothing else). A registered runner gives its
//! registration slot back before it waits, first come first served, for a creation slot,
//! so GitHub's budget is never held while Modal works.
//!
//! Every step is written to the store before the next begins, and every step can be
//! resumed after a crash without doing it twice: `registering` means a JIT request may have
//! reached GitHub, so recovery asks GitHub by name before trying again; `registered` means
//! the sandbox may exist, so recovery asks the backend by name. A JIT config is a
//! single-use credential that lives only in memory: if it is lost (a crash between
//! registration and sandbox creation), the registration is deleted and the runner marked
//! failed without backoff, and the planner's next pass makes the next attempt under a new
//! name. No runner name ever gets a second registration or a second sandbox.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{BackendError, FencedBackend, SandboxSpec};
use crate::clock::Clock;
use crate::config::ProvisionerSettings;
use crate::domain::{MachineSpec, RunnerState};
use crate::github::{GitHub, GitHubError, JitConfig, JitRequest, RunnerHome};
use crate::metrics::Metrics;
use crate::pace::Window;
use crate::retry::Backoff;
use crate::store::{RunnerPatch, RunnerRow, Store, StoreError};
use crate::wake::{Rounds, Wake};

/// What provisioning needs.
pub struct ProvisionerContext {
    pub store: Store,
    pub github: GitHub,
    /// Where runners are registered and removed: REST, or the scale set (`JOB_SOURCE`).
    pub registry: super::registry::Registry,
    pub backend: FencedBackend,
    pub wake: Arc<Wake>,
    pub metrics: Arc<Metrics>,
    pub settings: ProvisionerSettings,
    /// Measures the pause after an authentication failure.
    pub clock: Clock,
    /// Retries of one step on transient errors before the attempt counts as failed.
    pub retry: Backoff,
    pub interval: Duration,
    /// Until when provisioning is paused.
    pub paused_until: Mutex<Option<Instant>>,
    /// Keeps JIT registrations under GitHub's secondary limit (900 points a minute per
    /// endpoint, 5 per POST: 180 registrations a minute).
    pub jit_window: Window,
    /// Registrations (and restart recoveries) under way: `REGISTRATION_CONCURRENCY`.
    pub registration_slots: Arc<Semaphore>,
    /// Sandbox creations under way: `SANDBOX_CREATE_CONCURRENCY`. Fair (FIFO), so
    /// registered runners get their sandboxes in the order they were registered.
    pub create_slots: Arc<Semaphore>,
}

/// Why one provisioning attempt stopped.
#[derive(Debug, thiserror::Error)]
enum ProvisionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("JIT registration failed: {0}")]
    GitHub(#[from] GitHubError),
    #[error("sandbox creation failed: {0}")]
    Backend(#[from] BackendError),
    #[error("RUNNER_GROUP was not resolved for the {0}")]
    NoGroup(String),
}

/// Provisions pending runners (and recovers half-provisioned ones) until `stop`; then lets
/// the attempts under way finish, for at most `drain`.
pub async fn run(ctx: Arc<ProvisionerContext>, stop: CancellationToken, drain: Duration) {
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut rounds = Rounds::default();
    loop {
        while tasks.try_join_next().is_some() {}
        if let Err(e) = dispatch(&ctx, &in_flight, &mut tasks).await {
            tracing::error!(error = %e, "provisioning pass failed");
        }
        if !rounds.next(&ctx.wake.provisioner, ctx.interval, &stop).await {
            break;
        }
    }
    if !tasks.is_empty() {
        tracing::info!(in_flight = tasks.len(), "waiting for runners being provisioned");
        let _ = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    }
}

async fn dispatch(
    ctx: &Arc<ProvisionerContext>,
    in_flight: &Arc<Mutex<HashSet<String>>>,
    tasks: &mut JoinSet<()>,
) -> Result<(), StoreError> {
    if !pause_left(ctx).is_zero() {
        return Ok(());
    }
    let states = [
        RunnerState::Pending,
        RunnerState::Registering,
        RunnerState::Registered,
    ];
    for row in ctx.store.runners_in(&states).await? {
        let Ok(permit) = ctx.registration_slots.clone().try_acquire_owned() else {
            break;
        };
        let name = row.name.to_string();
        if !lock(in_flight).insert(name.clone()) {
            continue;
        }
        let (ctx, in_flight) = (ctx.clone(), in_flight.clone());
        let span =
            tracing::info_span!("provision", repo = %row.repo, job.id = %row.job, runner.name = %row.name);
        tasks.spawn(
            async move {
                provision(&ctx, row, permit).await;
                lock(&in_flight).remove(&name);
                ctx.wake.provisioner.notify_one();
            }
            .instrument(span),
        );
    }
    Ok(())
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Advances one runner as far as it goes; failures end in a `failed` row, never a panic.
/// `slot` is its registration slot, given back as soon as the registration is done.
pub(crate) async fn provision(ctx: &ProvisionerContext, row: RunnerRow, slot: OwnedSemaphorePermit) {
    let outcome = match row.state {
        RunnerState::Pending => start(ctx, &row, slot).await,
        RunnerState::Registering => recover_registering(ctx, &row).await,
        RunnerState::Registered => recover_registered(ctx, &row).await,
        _ => Ok(()),
    };
    if let Err(e) = outcome {
        fail(ctx, &row, &e).await;
    }
}

async fn start(
    ctx: &ProvisionerContext,
    row: &RunnerRow,
    registration_slot: OwnedSemaphorePermit,
) -> Result<(), ProvisionError> {
    if !ctx
        .store
        .transition(
            &row.name,
            &[RunnerState::Pending],
            RunnerState::Registering,
            RunnerPatch::default(),
        )
        .await?
    {
        return Ok(());
    }
    let home = ctx.github.home_of(&row.repo);
    let Some(jit) = register(ctx, row, &home).await? else {
        return Ok(());
    };
    let runner_id = jit.runner_id;
    let patch = RunnerPatch {
        github_id: Some(runner_id),
        ..Default::default()
    };
    ctx.store
        .transition(
            &row.name,
            &[RunnerState::Registering],
            RunnerState::Registered,
            patch,
        )
        .await?;
    tracing::info!(github.runner_id = runner_id, "runner registered");
    drop(registration_slot);
    ctx.wake.provisioner.notify_one();
    // The semaphore is never closed; if it were, creating without a slot is still safe.
    let _create_slot = ctx.create_slots.acquire().await.ok();
    match create_sandbox(ctx, row, jit).await {
        Ok(id) => mark_running(ctx, row, id).await,
        Err(e) => {
            deregister(ctx, &home, runner_id).await;
            Err(e.into())
        }
    }
}

/// Registers the runner, retrying transient failures. Before each retry it asks GitHub
/// whether the failed try registered the name anyway (a 5xx or a timeout can hide a
/// success); if so that registration is deleted — its JIT config was never seen — and the
/// attempt ends without backoff (`None`) so the planner moves on to the next name.
async fn register(
    ctx: &ProvisionerContext,
    row: &RunnerRow,
    home: &RunnerHome,
) -> Result<Option<JitConfig>, ProvisionError> {
    let runner_group_id = ctx
        .settings
        .runner_groups
        .id_for(home)
        .ok_or_else(|| ProvisionError::NoGroup(home.to_string()))?;
    let mut labels = row.labels.labels().to_vec();
    labels.push(ctx.settings.deployment.label());
    let request = JitRequest {
        name: row.name.to_string(),
        runner_group_id,
        labels,
        work_folder: "_work".into(),
    };
    let mut attempt = 0;
    loop {
        ctx.jit_window.wait().await;
        wait_out_pause(ctx).await;
        match ctx.registry.generate_jitconfig(home, &request).await {
            Ok(jit) => return Ok(Some(jit)),
            Err(GitHubError::Conflict { .. }) => {
                abandon_registration(ctx, row, home, "an earlier try registered this name").await?;
                return Ok(None);
            }
            Err(e) if e.is_transient() && attempt + 1 < ctx.retry.attempts => {
                let wait = ctx.retry.delay(attempt).max(e.retry_after().unwrap_or_default());
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "JIT registration failed; will retry");
                tokio::time::sleep(wait).await;
                if ctx
                    .registry
                    .runner_by_name(home, row.name.as_str())
                    .await?
                    .is_some()
                {
                    abandon_registration(ctx, row, home, "a failed try registered this name").await?;
                    return Ok(None);
                }
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Deletes a registration whose JIT config we do not have and ends this attempt without
/// backoff. A registration of that name without this deployment's label is another
/// deployment's: it is left alone, and the next attempt's name differs anyway.
async fn abandon_registration(
    ctx: &ProvisionerContext,
    row: &RunnerRow,
    home: &RunnerHome,
    why: &str,
) -> Result<(), ProvisionError> {
    let mut outcome = "registration deleted";
    if let Some(found) = ctx.registry.runner_by_name(home, row.name.as_str()).await? {
        if found.has_label(&ctx.settings.deployment.label()) {
            ctx.registry.delete_runner(home, found.id).await?;
        } else {
            outcome = "the registration is another deployment's and was left alone";
        }
    }
    tracing::warn!("{why}; {outcome}; the next attempt gets a new name");
    let patch = RunnerPatch::failed(format!("{why}; {outcome}"), false);
    ctx.store
        .transition(&row.name, &[RunnerState::Registering], RunnerState::Failed, patch)
        .await?;
    ctx.wake.planner.notify_one();
    Ok(())
}

async fn create_sandbox(
    ctx: &ProvisionerContext,
    row: &RunnerRow,
    jit: JitConfig,
) -> Result<String, BackendError> {
    let machine = MachineSpec::from_labels(&row.labels).unwrap_or_default();
    let spec = || SandboxSpec {
        name: row.name.to_string(),
        repo: row.repo.to_string(),
        jit_config: jit.encoded.clone(),
        tags: vec![
            ("modal-github-runner".into(), ctx.settings.deployment.to_string()),
            ("job".into(), row.job.to_string()),
            ("runner".into(), row.name.to_string()),
        ],
        timeout: ctx.settings.sandbox_timeout,
        machine: machine.clone(),
    };
    let mut attempt = 0;
    loop {
        match ctx.backend.create(spec()).await {
            Ok(id) => return Ok(id),
            Err(e) if e.is_transient() && attempt + 1 < ctx.retry.attempts => {
                let wait = ctx.retry.delay(attempt);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "sandbox creation failed; will retry");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn mark_running(
    ctx: &ProvisionerContext,
    row: &RunnerRow,
    sandbox_id: String,
) -> Result<(), ProvisionError> {
    let patch = RunnerPatch {
        sandbox_id: Some(sandbox_id.clone()),
        started: true,
        ..Default::default()
    };
    if ctx
        .store
        .transition(&row.name, &[RunnerState::Registered], RunnerState::Running, patch)
        .await?
    {
        ctx.metrics.runner_created();
        tracing::info!(sandbox.id = %sandbox_id, "runner sandbox started");
    }
    Ok(())
}

/// A `registering` runner nobody works on: the process that started it died. If GitHub
/// has the name with this deployment's label, its JIT config is lost with that process;
/// otherwise start over.
async fn recover_registering(ctx: &ProvisionerContext, row: &RunnerRow) -> Result<(), ProvisionError> {
    let home = ctx.github.home_of(&row.repo);
    if ctx
        .registry
        .runner_by_name(&home, row.name.as_str())
        .await?
        .is_some_and(|found| found.has_label(&ctx.settings.deployment.label()))
    {
        return abandon_registration(ctx, row, &home, "registered before a restart").await;
    }
    if ctx
        .store
        .transition(
            &row.name,
            &[RunnerState::Registering],
            RunnerState::Pending,
            RunnerPatch::default(),
        )
        .await?
    {
        tracing::info!("registration interrupted by a restart; starting over");
        ctx.wake.provisioner.notify_one();
    }
    Ok(())
}

/// A `registered` runner nobody works on: if its sandbox exists the create went through
/// before the restart; otherwise its JIT config is lost and the registration must go.
async fn recover_registered(ctx: &ProvisionerContext, row: &RunnerRow) -> Result<(), ProvisionError> {
    let sandboxes = ctx.backend.list().await?;
    if let Some(sb) = sandboxes.into_iter().find(|s| s.name == row.name.as_str()) {
        tracing::info!("sandbox created before a restart found");
        return mark_running(ctx, row, sb.id).await;
    }
    if let Some(id) = row.github_id {
        deregister(ctx, &ctx.github.home_of(&row.repo), id).await;
    }
    let patch = RunnerPatch::failed(
        "JIT config lost in a restart before the sandbox was created; registration deleted",
        false,
    );
    if ctx
        .store
        .transition(&row.name, &[RunnerState::Registered], RunnerState::Failed, patch)
        .await?
    {
        tracing::warn!("JIT config lost in a restart; the next attempt gets a new name");
        ctx.wake.planner.notify_one();
    }
    Ok(())
}

/// Best-effort removal of a registration that will never get a runner.
async fn deregister(ctx: &ProvisionerContext, home: &RunnerHome, runner_id: u64) {
    if let Err(e) = ctx.registry.delete_runner(home, runner_id).await {
        tracing::warn!(error = %e, github.runner_id = runner_id, "could not delete the registration; the reaper will retry");
    }
}

/// Records a failed attempt; the planner retries the job after a backoff.
async fn fail(ctx: &ProvisionerContext, row: &RunnerRow, e: &ProvisionError) {
    let kind = match e {
        ProvisionError::Store(_) => "store",
        ProvisionError::GitHub(g) => g.kind(),
        ProvisionError::Backend(b) => b.kind(),
        ProvisionError::NoGroup(_) => "runner_group",
    };
    ctx.metrics.runner_failed(kind);
    tracing::error!(error = %e, kind, "runner failed");
    if let ProvisionError::GitHub(GitHubError::Unauthorized | GitHubError::Forbidden { .. }) = e {
        pause(ctx, e);
    }
    let patch = RunnerPatch::failed(e.to_string(), true);
    let from = [
        RunnerState::Pending,
        RunnerState::Registering,
        RunnerState::Registered,
    ];
    match ctx
        .store
        .transition(&row.name, &from, RunnerState::Failed, patch)
        .await
    {
        Ok(_) => ctx.wake.planner.notify_one(),
        Err(store) => tracing::error!(error = %store, "could not record the failure"),
    }
}

/// Stops provisioning for `auth_pause` after GitHub refused the token or a permission.
fn pause(ctx: &ProvisionerContext, e: &ProvisionError) {
    if let Ok(mut until) = ctx.paused_until.lock() {
        *until = Some(ctx.clock.instant() + ctx.settings.auth_pause);
    }
    tracing::error!(
        error = %e,
        pause_secs = ctx.settings.auth_pause.as_secs(),
        "GitHub refused the token or a permission: provisioning paused. Check that GITHUB_TOKEN is valid and may \
         administer the runners (repository: fine-grained Administration read/write, classic repo; organisation: \
         Self-hosted runners read/write, classic admin:org; enterprise: classic manage_runners:enterprise), or that \
         the GitHub App is installed on the account"
    );
}

/// How much of an auth-failure pause is left (zero when provisioning is not paused).
fn pause_left(ctx: &ProvisionerContext) -> Duration {
    let until = *ctx.paused_until.lock().unwrap_or_else(|p| p.into_inner());
    until.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(ctx.clock.instant())
    })
}

/// Holds an attempt that was already under way when a pause began until the pause ends,
/// so that no registration reaches GitHub during it.
async fn wait_out_pause(ctx: &ProvisionerContext) {
    loop {
        let left = pause_left(ctx);
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left).await;
    }
}

#[cfg(test)]
mod tests;
