//! Rebuilds what webhooks did not deliver. GitHub never redelivers a failed delivery
//! (docs/github.md §1), and nothing is delivered while the service is down, so every
//! `RECONCILE_INTERVAL_SECS` (and once at start-up) the reconciler:
//!
//! - lists the runs of each repository that are `queued` or `in_progress` and records
//!   their jobs that ask for our label, exactly as if their webhooks had arrived (docs/github.md §2.4);
//! - looks up jobs the store still thinks are open but that no polled run holds, so a job
//!   cancelled or finished during an outage does not wait forever;
//! - with `WEBHOOK_HOOK_ID`, asks GitHub to redeliver recent failed deliveries.
//!
//! It watches `x-ratelimit-remaining` and stops a pass early when headroom runs low, so
//! polling never starves provisioning of API calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::ReconcilerSettings;
use crate::domain::{JobEvent, JobId, JobStatus, LabelSet, RepoName};
use crate::github::{GitHub, GitHubError, Hook, RemoteJob};
use crate::store::{EventSource, Store, StoreError};
use crate::wake::Wake;

/// What reconciling needs.
pub struct ReconcilerContext {
    pub store: Store,
    pub github: GitHub,
    pub wake: Arc<Wake>,
    pub settings: ReconcilerSettings,
    /// Tells which stored jobs are old enough to look up and which deliveries are recent.
    pub clock: Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    #[error("GitHub rate limit low ({remaining} left); continuing next pass")]
    LowRateLimit { remaining: i64 },
}

/// What one pass found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub jobs_seen: usize,
    pub stale_refreshed: usize,
    pub redelivered: usize,
}

/// Reconciles at start-up and then every `interval`, until `stop`.
pub async fn run(ctx: Arc<ReconcilerContext>, stop: CancellationToken) {
    let mut redelivered: HashMap<String, u32> = HashMap::new();
    loop {
        match pass(&ctx, &mut redelivered).await {
            Ok(r) if r != PassReport::default() => tracing::info!(
                jobs = r.jobs_seen,
                stale = r.stale_refreshed,
                redelivered = r.redelivered,
                "reconciled with GitHub"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciliation pass incomplete"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ctx.settings.interval) => {}
        }
    }
}

/// One pass. `redelivered` counts redelivery requests per GUID across passes, so a
/// delivery that keeps failing is not requested forever.
pub async fn pass(
    ctx: &ReconcilerContext,
    redelivered: &mut HashMap<String, u32>,
) -> Result<PassReport, ReconcileError> {
    let mut report = PassReport::default();
    let mut seen = HashSet::new();
    for repo in repos(ctx).await? {
        check_headroom(&ctx.github)?;
        report.jobs_seen += poll_repo(ctx, &repo, &mut seen).await?;
    }
    report.stale_refreshed = refresh_unseen(ctx, &seen).await?;
    for hook in &ctx.settings.hooks {
        check_headroom(&ctx.github)?;
        report.redelivered += redeliver_failed(ctx, hook, redelivered).await?;
    }
    if report.jobs_seen + report.stale_refreshed > 0 {
        ctx.wake.planner.notify_one();
        ctx.wake.strategy.notify_one();
        ctx.wake.reaper.notify_one();
    }
    Ok(report)
}

/// The repositories `ALLOWED_REPOS` names, and those the service has seen a job from that
/// it allows (every one of them without an allowlist; with `owner/*`, the owner's
/// repositories seen so far).
async fn repos(ctx: &ReconcilerContext) -> Result<Vec<RepoName>, StoreError> {
    Ok(ctx.settings.allow.poll_targets(ctx.store.known_repos().await?))
}

/// Stops the pass when fewer than a tenth of the hourly budget (and under 100 calls) is
/// left: provisioning needs those calls more.
fn check_headroom(github: &GitHub) -> Result<(), ReconcileError> {
    let rate = github.rate();
    if let (Some(remaining), Some(limit)) = (rate.remaining, rate.limit)
        && remaining < (limit / 10).min(100)
    {
        return Err(ReconcileError::LowRateLimit { remaining });
    }
    Ok(())
}

/// Records the labelled jobs of the repository's queued and in-progress runs.
async fn poll_repo(
    ctx: &ReconcilerContext,
    repo: &RepoName,
    seen: &mut HashSet<JobId>,
) -> Result<usize, ReconcileError> {
    let mut count = 0;
    let mut runs = HashSet::new();
    for status in ["queued", "in_progress"] {
        for run in ctx.github.list_runs(repo, status).await? {
            if !runs.insert(run.id) {
                continue;
            }
            check_headroom(&ctx.github)?;
            for job in ctx.github.run_jobs(repo, run.id).await? {
                if let Some(event) = to_event(repo, job, &ctx.settings.label) {
                    seen.insert(event.job_id);
                    ctx.store.record(None, event, EventSource::Poll).await?;
                    count += 1;
                }
            }
        }
    }
    Ok(count)
}

/// Open jobs of the store that no polled run held: fetched one by one (at most 50 a
/// pass, oldest first) once they are older than one interval.
async fn refresh_unseen(ctx: &ReconcilerContext, seen: &HashSet<JobId>) -> Result<usize, ReconcileError> {
    let cutoff =
        ctx.clock.now_millis() - i64::try_from(ctx.settings.interval.as_millis()).unwrap_or(i64::MAX);
    let mut refreshed = 0;
    for job in ctx
        .store
        .open_jobs()
        .await?
        .into_iter()
        .filter(|j| !seen.contains(&j.id) && j.first_seen_at < cutoff)
        .take(50)
    {
        let repo = job.repo;
        if !ctx.settings.allow.allows(&repo) {
            continue;
        }
        check_headroom(&ctx.github)?;
        match ctx.github.get_job(&repo, job.id.0).await {
            Ok(remote) => {
                if let Some(event) = to_event(&repo, remote, &ctx.settings.label) {
                    ctx.store.record(None, event, EventSource::Poll).await?;
                    refreshed += 1;
                }
            }
            Err(GitHubError::NotFound) => {
                tracing::warn!(repo = %repo, job.id = %job.id, "job no longer exists at GitHub")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(refreshed)
}

/// A polled job as an event, if it asks for our label.
fn to_event(repo: &RepoName, job: RemoteJob, label: &str) -> Option<JobEvent> {
    let labels = LabelSet::new(&job.labels);
    if !labels.contains(label) {
        return None;
    }
    let raw = job.status.unwrap_or_default();
    let status = JobStatus::parse(&raw);
    Some(JobEvent {
        action: status.as_str().to_string(),
        status,
        job_id: JobId(job.id),
        run_id: job.run_id,
        run_attempt: job.run_attempt.unwrap_or(1),
        name: job.name.unwrap_or_default(),
        workflow_name: job.workflow_name,
        head_sha: job.head_sha,
        conclusion: job.conclusion,
        labels,
        runner_name: job
            .runner_name
            .filter(|n| !n.is_empty() && status.rank() >= JobStatus::InProgress.rank()),
        repo: repo.clone(),
        queued_for: None,
    })
}

/// Redelivers `workflow_job` deliveries within the window that never succeeded; each GUID
/// at most three times.
async fn redeliver_failed(
    ctx: &ReconcilerContext,
    hook: &Hook,
    asked: &mut HashMap<String, u32>,
) -> Result<usize, ReconcileError> {
    let since =
        ctx.clock.now_millis() - i64::try_from(ctx.settings.redeliver_window.as_millis()).unwrap_or(i64::MAX);
    let mut latest_failure: HashMap<String, u64> = HashMap::new();
    let mut succeeded: HashSet<String> = HashSet::new();
    let mut cursor: Option<String> = None;
    'pages: for _ in 0..20 {
        let (page, next) = ctx.github.hook_deliveries(hook, cursor.as_deref()).await?;
        for d in page {
            if d.delivered_at
                .as_deref()
                .and_then(parse_time)
                .is_some_and(|t| t < since)
            {
                break 'pages;
            }
            if d.event.as_deref() != Some("workflow_job") {
                continue;
            }
            if d.status_code.is_some_and(|c| (200..300).contains(&c)) {
                succeeded.insert(d.guid);
            } else {
                // Newest first: the first failure seen is the latest attempt.
                latest_failure.entry(d.guid).or_insert(d.id);
            }
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut count = 0;
    for (guid, id) in latest_failure {
        if succeeded.contains(&guid) || ctx.store.delivery_seen(&guid).await? {
            continue;
        }
        let tries = asked.entry(guid.clone()).or_default();
        if *tries >= 3 {
            continue;
        }
        *tries += 1;
        ctx.github.redeliver(hook, id).await?;
        tracing::info!(hook = %hook, delivery = %guid, "asked GitHub to redeliver a failed webhook");
        count += 1;
    }
    Ok(count)
}

/// RFC 3339 (`2026-11-28T10:00:00Z`) to Unix milliseconds.
fn parse_time(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(status: &str, labels: &[&str]) -> RemoteJob {
        RemoteJob {
            id: 12_877_621_891,
            run_id: 7,
            run_attempt: Some(2),
            name: Some("build".into()),
            status: Some(status.into()),
            conclusion: None,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            runner_name: Some("modal-1-1".into()),
            workflow_name: None,
            head_sha: None,
        }
    }

    #[test]
    fn polled_jobs_become_events_only_with_our_label() {
        let repo = RepoName::parse("octo/repo").expect("valid");
        assert!(to_event(&repo, remote("queued", &["ubuntu-latest"]), "modal").is_none());
        let e = to_event(&repo, remote("queued", &["self-hosted", "Modal"]), "modal").expect("ours");
        assert_eq!((e.status, e.run_attempt), (JobStatus::Queued, 2));
        assert_eq!(e.runner_name, None, "a queued job has no runner yet");
        let e = to_event(&repo, remote("in_progress", &["modal"]), "modal").expect("ours");
        assert_eq!(e.runner_name.as_deref(), Some("modal-1-1"));
        let e = to_event(&repo, remote("pending", &["modal"]), "modal").expect("ours");
        assert_eq!(e.status, JobStatus::Waiting, "pending jobs are not runnable");
    }

    #[test]
    fn delivery_times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time("garbage"), None);
    }
}
