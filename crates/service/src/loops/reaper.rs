//! Ends runners, one rule per runner, whatever a crash, a lost event or a misbehaving
//! runner left them in (docs/design.md §7):
//!
//! - surplus runners the planner marked `retiring`;
//! - runners whose sandbox ended (after their job, or without one);
//! - sandboxes still running long after their job completed, or past their maximum runtime;
//! - runners that never came online at GitHub within `RUNNER_REGISTRATION_TIMEOUT_SECS`;
//! - runners idle without a job for `RUNNER_IDLE_TIMEOUT_SECS`.
//!
//! Its loop also schedules the `sweeps` (sandboxes and registrations no live runner owns),
//! which share its sandbox listing.
//!
//! Removing a runner that has not taken a job always deletes its GitHub registration
//! first: a 422 "still running a job" means GitHub just gave it one, and it is kept
//! (docs/reliability.md §4). Only then is the sandbox stopped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{BackendError, FencedBackend, SandboxInfo};
use crate::clock::Clock;
use crate::config::ReaperSettings;
use crate::domain::{JobStatus, RunnerState};
use crate::failure_log;
use crate::github::{DeleteOutcome, GitHub, GitHubError};
use crate::loops::sweeps;
use crate::metrics::Metrics;
use crate::store::{LiveRunner, RunnerPatch, Store, StoreError};
use crate::wake::{Rounds, Wake};

/// What the reaper needs.
pub struct ReaperContext {
    pub store: Store,
    pub github: GitHub,
    /// Where runners are looked up and removed: REST, or the scale set (`JOB_SOURCE`).
    pub registry: super::registry::Registry,
    pub backend: FencedBackend,
    pub wake: Arc<Wake>,
    pub metrics: Arc<Metrics>,
    pub settings: ReaperSettings,
    /// The time runner ages and job completions are measured against.
    pub clock: Clock,
    /// Runners seen online at GitHub: their registration timeout no longer applies.
    pub seen_online: Mutex<HashSet<String>>,
    /// Configured secret values, masked in a failed sandbox's output before it is kept.
    pub secrets: Vec<secrecy::SecretString>,
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

/// Reaps on every wake-up and at least every `interval`, sweeping GitHub's runner list
/// every `sweep_interval`, until `stop`.
pub async fn run(ctx: Arc<ReaperContext>, stop: CancellationToken) {
    let mut last_sweep: Option<Instant> = None;
    let since = |t: Instant| ctx.clock.instant().saturating_duration_since(t);
    let mut rounds = Rounds::default();
    loop {
        if let Err(e) = pass(&ctx).await {
            tracing::warn!(error = %e, "reaping pass failed");
        }
        if last_sweep.is_none_or(|t| since(t) >= ctx.settings.sweep_interval) {
            last_sweep = Some(ctx.clock.instant());
            let swept = sweeps::delete_offline_registrations(
                &ctx.store,
                &ctx.github,
                &ctx.settings.prefix,
                &ctx.settings.deployment,
                &ctx.settings.allow,
            );
            // Paced by a draining API budget, a sweep can take minutes: stopping must not
            // wait for it.
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = swept => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not sweep GitHub's runner list");
            }
        }
        if !rounds.next(&ctx.wake.reaper, ctx.settings.interval, &stop).await {
            return;
        }
    }
}

/// One pass over every live runner, then the orphan-sandbox sweep over the same listing.
pub async fn pass(ctx: &ReaperContext) -> Result<(), StoreError> {
    let listed_at = ctx.clock.now_millis();
    let sandboxes = match ctx.backend.list().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not list sandboxes; skipping this pass");
            return Ok(());
        }
    };
    let by_name: HashMap<&str, &SandboxInfo> = sandboxes.iter().map(|s| (s.name.as_str(), s)).collect();
    let runners = ctx.store.live_runners().await?;
    for r in &runners {
        let span =
            tracing::info_span!("reap", repo = %r.row.repo, job.id = %r.row.job, runner.name = %r.row.name);
        let sandbox = by_name.get(r.row.name.as_str()).copied();
        if let Err(e) = reap_one(ctx, r, sandbox, listed_at)
            .instrument(span.clone())
            .await
        {
            span.in_scope(|| tracing::warn!(error = %e, "could not reap the runner; will retry"));
        }
    }
    let live: HashSet<&str> = runners.iter().map(|r| r.row.name.as_str()).collect();
    sweeps::stop_orphan_sandboxes(&ctx.store, &ctx.backend, &sandboxes, &live).await
}

async fn reap_one(
    ctx: &ReaperContext,
    r: &LiveRunner,
    sandbox: Option<&SandboxInfo>,
    listed_at: i64,
) -> Result<(), ReapError> {
    match r.row.state {
        RunnerState::Retiring => {
            if remove(
                ctx,
                r,
                RunnerState::Retiring,
                RunnerState::Done,
                RunnerPatch::ended(),
            )
            .await?
            {
                ctx.metrics.runner_retired("surplus");
                tracing::info!("surplus runner removed");
            }
            Ok(())
        }
        // Started after the listing: its absence from the list says nothing.
        RunnerState::Running if r.row.started_at.is_some_and(|t| t >= listed_at) => Ok(()),
        RunnerState::Running => match sandbox {
            None => sandbox_gone(ctx, r).await,
            Some(_) if r.took.is_some() => check_busy(ctx, r).await,
            Some(_) => check_idle(ctx, r).await,
        },
        _ => Ok(()),
    }
}

/// Deregisters (unless GitHub says the runner is busy), stops the sandbox and moves the
/// runner from `from` to `to`. Returns whether it was removed.
async fn remove(
    ctx: &ReaperContext,
    r: &LiveRunner,
    from: RunnerState,
    to: RunnerState,
    patch: RunnerPatch,
) -> Result<bool, ReapError> {
    if let Some(id) = r.row.github_id
        && ctx
            .registry
            .delete_runner(&ctx.github.home_of(&r.row.repo), id)
            .await?
            == DeleteOutcome::Busy
    {
        tracing::info!("GitHub gave the runner a job meanwhile; keeping it");
        if from != RunnerState::Running {
            ctx.store
                .transition(&r.row.name, &[from], RunnerState::Running, RunnerPatch::default())
                .await?;
        }
        return Ok(false);
    }
    if let Some(sb) = &r.row.sandbox_id {
        ctx.backend.terminate(sb).await?;
    }
    Ok(ctx.store.transition(&r.row.name, &[from], to, patch).await?)
}

/// The sandbox ended on its own. After a job that is the normal end; without one the
/// runner failed (it counts toward the job's backoff) and its registration goes too.
async fn sandbox_gone(ctx: &ReaperContext, r: &LiveRunner) -> Result<(), ReapError> {
    let finished = RunnerPatch::ended();
    if let Some(took) = &r.took {
        if ctx
            .store
            .transition(&r.row.name, &[RunnerState::Running], RunnerState::Done, finished)
            .await?
        {
            tracing::info!(took.job = %took.id, "runner finished");
            if took.status != JobStatus::Completed {
                // It ended while its job still ran (as far as GitHub has told us). A
                // sandbox that ended in success only beat the job's completed event; any
                // other end is a crash, whose last output says why.
                let how = match &r.row.sandbox_id {
                    Some(id) => ctx.backend.exit_status(id).await,
                    None => None,
                };
                if let Some(how) = how.filter(|h| !h.starts_with("SUCCESS")) {
                    let reason = format!("the sandbox ended while its job was running ({how})");
                    keep_output(ctx, r, &reason).await?;
                }
            }
        }
        return Ok(());
    }
    if let Some(id) = r.row.github_id {
        match ctx
            .registry
            .delete_runner(&ctx.github.home_of(&r.row.repo), id)
            .await?
        {
            // GitHub says it runs a job: its in_progress event is on the way.
            DeleteOutcome::Busy => return Ok(()),
            // A JIT runner's registration disappears after its one job: it ran one, and
            // the job's events have not arrived yet.
            DeleteOutcome::NotFound => {
                if ctx
                    .store
                    .transition(&r.row.name, &[RunnerState::Running], RunnerState::Done, finished)
                    .await?
                {
                    tracing::info!("runner finished (its job's events are still on the way)");
                }
                return Ok(());
            }
            DeleteOutcome::Deleted => {}
        }
    }
    let how = match &r.row.sandbox_id {
        Some(id) => ctx.backend.exit_status(id).await,
        None => None,
    };
    let reason = match how {
        Some(how) => format!("the sandbox ended before the runner took a job ({how})"),
        None => "the sandbox ended before the runner took a job".to_string(),
    };
    let patch = RunnerPatch::failed(reason.as_str(), true);
    if ctx
        .store
        .transition(&r.row.name, &[RunnerState::Running], RunnerState::Failed, patch)
        .await?
    {
        ctx.metrics.runner_failed("sandbox_ended_idle");
        tracing::warn!("{reason}");
        ctx.wake.planner.notify_one();
        keep_output(ctx, r, &reason).await?;
    }
    Ok(())
}

// ---- failure logs (issue 13 item 5) ----

/// Keeps the masked tail of a failed sandbox's output with `reason`, and logs it once
/// (the store keeps the first; a later call for the same runner neither stores nor logs).
async fn keep_output(ctx: &ReaperContext, r: &LiveRunner, reason: &str) -> Result<(), ReapError> {
    let Some(id) = &r.row.sandbox_id else {
        return Ok(());
    };
    let Some(output) = ctx.backend.output(id).await else {
        return Ok(());
    };
    let secrets: Vec<&str> = ctx
        .secrets
        .iter()
        .map(secrecy::ExposeSecret::expose_secret)
        .collect();
    let tail = failure_log::tail(&output, &secrets);
    if ctx
        .store
        .record_failure_log(r.row.name.as_str(), reason, &tail)
        .await?
    {
        tracing::warn!(output.tail = %tail, "the failed sandbox's last output (secrets masked)");
    }
    Ok(())
}

/// A busy runner's sandbox: stop it if its job completed a while ago or it outlived its
/// maximum runtime.
async fn check_busy(ctx: &ReaperContext, r: &LiveRunner) -> Result<(), ReapError> {
    let now = ctx.clock.now_millis();
    let grace = millis(ctx.settings.exit_grace);
    let finished_long_ago = r
        .took
        .as_ref()
        .is_some_and(|t| t.status == JobStatus::Completed && t.completed_at.is_some_and(|c| now - c > grace));
    if finished_long_ago {
        return stop(ctx, r, "stopped after its job completed").await;
    }
    if age(r, now) > millis(ctx.settings.sandbox_timeout) + grace {
        return stop(ctx, r, "stopped at its maximum runtime").await;
    }
    Ok(())
}

/// A runner without a job: it must come online at GitHub in time, and not idle forever.
async fn check_idle(ctx: &ReaperContext, r: &LiveRunner) -> Result<(), ReapError> {
    let age = age(r, ctx.clock.now_millis());
    if age > millis(ctx.settings.registration_timeout) && !online(ctx, r).await? {
        let reason = format!(
            "never came online at GitHub within {}s",
            ctx.settings.registration_timeout.as_secs()
        );
        let patch = RunnerPatch::failed(reason.clone(), true);
        if remove(ctx, r, RunnerState::Running, RunnerState::Failed, patch).await? {
            ctx.metrics.runner_failed("registration_timeout");
            tracing::warn!("runner {reason}; removed");
            ctx.wake.planner.notify_one();
        }
        return Ok(());
    }
    // A warm runner waits for a job by design: the planner retires it beyond its pool's
    // size, the idle rule does not.
    if age > millis(ctx.settings.idle_timeout) && r.row.job != crate::loops::planner::WARM_JOB {
        // Its job is still queued (a surplus runner is retired by the planner long before),
        // so an idle end is a failed attempt: it backs off and counts toward
        // MAX_ATTEMPTS_PER_JOB.
        let reason = format!("idle without a job for {}s", ctx.settings.idle_timeout.as_secs());
        let patch = RunnerPatch::failed(reason.clone(), true);
        if remove(ctx, r, RunnerState::Running, RunnerState::Failed, patch).await? {
            ctx.metrics.runner_retired("idle");
            tracing::info!("runner {reason}; removed");
            ctx.wake.planner.notify_one();
        }
    }
    Ok(())
}

/// Whether GitHub has seen the runner online (remembered once true).
async fn online(ctx: &ReaperContext, r: &LiveRunner) -> Result<bool, ReapError> {
    if lock(&ctx.seen_online).contains(r.row.name.as_str()) {
        return Ok(true);
    }
    let Some(id) = r.row.github_id else {
        return Ok(false);
    };
    let up = ctx
        .registry
        .get_runner(&ctx.github.home_of(&r.row.repo), id)
        .await?
        .is_some_and(|info| info.status == "online" || info.busy);
    if up {
        lock(&ctx.seen_online).insert(r.row.name.to_string());
    }
    Ok(up)
}

async fn stop(ctx: &ReaperContext, r: &LiveRunner, reason: &str) -> Result<(), ReapError> {
    if let Some(sb) = &r.row.sandbox_id {
        ctx.backend.terminate(sb).await?;
    }
    let patch = RunnerPatch::ended_because(reason);
    if ctx
        .store
        .transition(&r.row.name, &[RunnerState::Running], RunnerState::Done, patch)
        .await?
    {
        tracing::info!("runner sandbox {reason}");
    }
    Ok(())
}

fn age(r: &LiveRunner, now: i64) -> i64 {
    now - r.row.started_at.unwrap_or(r.row.created_at)
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
