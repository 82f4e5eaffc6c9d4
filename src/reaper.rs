//! Ends runners: deregisters and stops surplus ones, cleans up after runners whose job
//! finished or whose sandbox ended, and stops sandboxes that no live runner owns.
//!
//! Order matters when removing a runner that has not taken a job: the GitHub registration
//! is deleted first, and a 422 "still running a job" answer means GitHub gave it a job a
//! moment ago, so it is kept (anchors.md §4, mechanism 4). Only then is the sandbox stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{Backend, BackendError, SandboxInfo};
use crate::domain::{JobStatus, RepoName, RunnerState, now_millis};
use crate::github::{DeleteOutcome, GitHub, GitHubError};
use crate::metrics::Metrics;
use crate::store::{LiveRunner, RunnerPatch, Store, StoreError};
use crate::wake::Wake;

/// What the reaper needs.
pub struct ReaperContext {
    pub store: Store,
    pub github: GitHub,
    pub backend: Arc<Backend>,
    pub wake: Arc<Wake>,
    pub metrics: Arc<Metrics>,
    /// How long a sandbox may keep running after its job completed before it is stopped.
    pub exit_grace: Duration,
    /// `SANDBOX_TIMEOUT_SECS`: a sandbox older than this (plus `exit_grace`) is stopped even
    /// if the backend failed to enforce it.
    pub sandbox_timeout: Duration,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
enum ReapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Reaps on every wake-up and at least every `interval`, until `stop`.
pub async fn run(ctx: Arc<ReaperContext>, stop: CancellationToken) {
    loop {
        if let Err(e) = pass(&ctx).await {
            tracing::warn!(error = %e, "reaping pass failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = ctx.wake.reaper.notified() => {}
            () = tokio::time::sleep(ctx.interval) => {}
        }
    }
}

/// One pass over every live runner and every listed sandbox.
pub async fn pass(ctx: &ReaperContext) -> Result<(), StoreError> {
    let listed_at = now_millis();
    let sandboxes = match ctx.backend.list().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not list sandboxes; skipping this pass");
            return Ok(());
        }
    };
    let by_name: HashMap<&str, &SandboxInfo> =
        sandboxes.iter().map(|s| (s.name.as_str(), s)).collect();
    let runners = ctx.store.live_runners().await?;
    for r in &runners {
        let span = tracing::info_span!("reap", repo = %r.row.repo, job.id = %r.row.job, runner.name = %r.row.name);
        let sandbox = by_name.get(r.row.name.as_str()).copied();
        if let Err(e) = reap_one(ctx, r, sandbox, listed_at)
            .instrument(span.clone())
            .await
        {
            span.in_scope(|| tracing::warn!(error = %e, "could not reap the runner; will retry"));
        }
    }
    let live: HashMap<&str, &LiveRunner> =
        runners.iter().map(|r| (r.row.name.as_str(), r)).collect();
    for sb in sandboxes
        .iter()
        .filter(|s| !live.contains_key(s.name.as_str()))
    {
        stop_orphan(ctx, sb).await?;
    }
    Ok(())
}

async fn reap_one(
    ctx: &ReaperContext,
    r: &LiveRunner,
    sandbox: Option<&SandboxInfo>,
    listed_at: i64,
) -> Result<(), ReapError> {
    match r.row.state {
        RunnerState::Retiring => retire(ctx, r).await,
        // Started after the listing: its absence from the list says nothing.
        RunnerState::Running if r.row.started_at.is_some_and(|t| t >= listed_at) => Ok(()),
        RunnerState::Running => match sandbox {
            None => sandbox_gone(ctx, r).await,
            Some(_) => check_running(ctx, r).await,
        },
        _ => Ok(()),
    }
}

/// A surplus runner: deregister, then stop its sandbox, unless GitHub just gave it a job.
async fn retire(ctx: &ReaperContext, r: &LiveRunner) -> Result<(), ReapError> {
    if let Some(id) = r.row.github_id {
        let repo = repo(r)?;
        if ctx.github.delete_runner(&repo, id).await? == DeleteOutcome::Busy {
            tracing::info!("surplus runner took a job meanwhile; keeping it");
            ctx.store
                .transition(
                    &r.row.name,
                    &[RunnerState::Retiring],
                    RunnerState::Running,
                    RunnerPatch::default(),
                )
                .await?;
            return Ok(());
        }
    }
    if let Some(sb) = &r.row.sandbox_id {
        ctx.backend.terminate(sb).await?;
    }
    let patch = RunnerPatch {
        ended: true,
        ..Default::default()
    };
    if ctx
        .store
        .transition(
            &r.row.name,
            &[RunnerState::Retiring],
            RunnerState::Done,
            patch,
        )
        .await?
    {
        ctx.metrics.runner_retired("surplus");
        tracing::info!("surplus runner removed");
    }
    Ok(())
}

/// The sandbox ended on its own. After a job that is the normal end; without one the
/// runner failed (it counts toward the job's backoff) and its registration goes too.
async fn sandbox_gone(ctx: &ReaperContext, r: &LiveRunner) -> Result<(), ReapError> {
    if let Some(took) = &r.took {
        let patch = RunnerPatch {
            ended: true,
            ..Default::default()
        };
        if ctx
            .store
            .transition(
                &r.row.name,
                &[RunnerState::Running],
                RunnerState::Done,
                patch,
            )
            .await?
        {
            tracing::info!(took.job = %took.id, "runner finished");
        }
        return Ok(());
    }
    if let Some(id) = r.row.github_id {
        match ctx.github.delete_runner(&repo(r)?, id).await? {
            // GitHub says it runs a job: its in_progress event is on the way.
            DeleteOutcome::Busy => return Ok(()),
            // A JIT runner's registration disappears after its one job: it ran one, and
            // the job's events have not arrived yet.
            DeleteOutcome::NotFound => {
                let patch = RunnerPatch {
                    ended: true,
                    ..Default::default()
                };
                if ctx
                    .store
                    .transition(
                        &r.row.name,
                        &[RunnerState::Running],
                        RunnerState::Done,
                        patch,
                    )
                    .await?
                {
                    tracing::info!("runner finished (its job's events are still on the way)");
                }
                return Ok(());
            }
            DeleteOutcome::Deleted => {}
        }
    }
    let patch = RunnerPatch {
        failure: Some("the sandbox ended before the runner took a job".into()),
        backoff: Some(true),
        ended: true,
        ..Default::default()
    };
    if ctx
        .store
        .transition(
            &r.row.name,
            &[RunnerState::Running],
            RunnerState::Failed,
            patch,
        )
        .await?
    {
        ctx.metrics.runner_failed("sandbox_ended_idle");
        tracing::warn!("the sandbox ended before the runner took a job");
        ctx.wake.planner.notify_one();
    }
    Ok(())
}

/// A running sandbox: stop it if its job completed a while ago or it outlived its timeout.
async fn check_running(ctx: &ReaperContext, r: &LiveRunner) -> Result<(), ReapError> {
    let now = now_millis();
    let grace = millis(ctx.exit_grace);
    let finished_long_ago = r.took.as_ref().is_some_and(|t| {
        t.status == JobStatus::Completed && t.completed_at.is_some_and(|c| now - c > grace)
    });
    let too_old = r
        .row
        .started_at
        .is_some_and(|s| now - s > millis(ctx.sandbox_timeout) + grace);
    if !finished_long_ago && !too_old {
        return Ok(());
    }
    if let Some(sb) = &r.row.sandbox_id {
        ctx.backend.terminate(sb).await?;
    }
    let reason = if too_old {
        "stopped at its maximum runtime"
    } else {
        "stopped after its job completed"
    };
    let patch = RunnerPatch {
        failure: Some(reason.into()),
        ended: true,
        ..Default::default()
    };
    if ctx
        .store
        .transition(
            &r.row.name,
            &[RunnerState::Running],
            RunnerState::Done,
            patch,
        )
        .await?
    {
        tracing::info!("runner sandbox {reason}");
    }
    Ok(())
}

/// A sandbox no live runner owns: left over from a runner that ended, or from a crash.
async fn stop_orphan(ctx: &ReaperContext, sb: &SandboxInfo) -> Result<(), StoreError> {
    let row = ctx.store.runner(&sb.name).await?;
    if row.as_ref().is_some_and(|r| r.state.is_live()) {
        // Became live after the listing (a create just finished).
        return Ok(());
    }
    match ctx.backend.terminate(&sb.id).await {
        Ok(()) => {
            tracing::info!(runner.name = %sb.name, sandbox.id = %sb.id, "orphan sandbox stopped")
        }
        Err(e) => {
            tracing::warn!(runner.name = %sb.name, error = %e, "could not stop an orphan sandbox")
        }
    }
    Ok(())
}

fn repo(r: &LiveRunner) -> Result<RepoName, ReapError> {
    RepoName::parse(&r.row.repo).map_err(|e| ReapError::Store(StoreError::Corrupt(e.to_string())))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
