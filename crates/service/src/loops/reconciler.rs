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
//! Every call it makes is a background call of the GitHub client: conditional where it is
//! repeated (an unchanged listing is a 304, which costs no budget), spaced out as the budget
//! drains and refused at the reserve (`github::rate_limit`), so polling never starves
//! provisioning of API calls. A refused call ends the pass; the next pass starts over.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::ReconcilerSettings;
use crate::domain::{Abandoned, JobEvent, JobId, JobStatus, LabelSet, RepoName};
use crate::github::{GitHub, GitHubError, Hook, RemoteJob};
use crate::metrics::Metrics;
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
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    GitHub(#[from] GitHubError),
}

impl ReconcileError {
    /// The pass stopped because the API budget is kept for registrations: expected while
    /// the budget is low, not a failure.
    fn is_deferred(&self) -> bool {
        matches!(self, ReconcileError::GitHub(e) if e.is_deferred())
    }
}

/// What one pass found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub jobs_seen: usize,
    pub stale_refreshed: usize,
    pub redelivered: usize,
    pub abandoned: usize,
}

/// What the reconciler remembers between passes (redelivery requests are in the store).
#[derive(Debug, Default)]
pub struct PassState {
    /// The last job the stuck-job refresh looked up: the next pass starts after it.
    refreshed_up_to: Option<JobId>,
}

/// Reconciles at start-up and then every `interval`, until `stop`.
pub async fn run(ctx: Arc<ReconcilerContext>, stop: CancellationToken) {
    let mut state = PassState::default();
    loop {
        // A pass paced by a draining budget can take minutes: stopping must not wait for it.
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = pass(&ctx, &mut state) => r,
        };
        match result {
            Ok(r) if r != PassReport::default() => tracing::info!(
                jobs = r.jobs_seen,
                stale = r.stale_refreshed,
                redelivered = r.redelivered,
                abandoned = r.abandoned,
                "reconciled with GitHub"
            ),
            Ok(_) => {}
            Err(e) if e.is_deferred() => tracing::debug!(error = %e, "reconciliation pass deferred"),
            Err(e) => tracing::warn!(error = %e, "reconciliation pass incomplete"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ctx.settings.interval) => {}
        }
    }
}

/// One pass.
pub async fn pass(ctx: &ReconcilerContext, state: &mut PassState) -> Result<PassReport, ReconcileError> {
    let mut report = PassReport {
        abandoned: close_unreachable(ctx).await?,
        ..PassReport::default()
    };
    let mut seen = HashSet::new();
    for repo in repos(ctx).await? {
        report.jobs_seen += poll_repo(ctx, &repo, &mut seen).await?;
    }
    report.stale_refreshed = refresh_unseen(ctx, &seen, &mut state.refreshed_up_to).await?;
    for hook in &ctx.settings.hooks {
        report.redelivered += redeliver_failed(ctx, hook).await?;
    }
    if report.jobs_seen + report.stale_refreshed + report.abandoned > 0 {
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

/// Records the labelled jobs of the repository's queued and in-progress runs; a public
/// repository's only with `ALLOW_PUBLIC_REPOS` (as webhooks).
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
            if run.visibility().is_public() && !ctx.settings.allow_public {
                tracing::warn!(
                    repo = %repo,
                    "repository is public; its jobs are not polled (set ALLOW_PUBLIC_REPOS=true to serve it)"
                );
                return Ok(count);
            }
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

/// How long GitHub lets a job wait in its queue before failing it (docs/github.md §2.4).
const GITHUB_QUEUE_LIMIT_MS: i64 = 24 * 60 * 60 * 1000;

/// Abandons open jobs no event will ever complete: those of repositories that left the
/// allowlist (their `completed` webhook is refused) and those queued longer than GitHub
/// keeps a job queued.
async fn close_unreachable(ctx: &ReconcilerContext) -> Result<usize, ReconcileError> {
    let now = ctx.clock.now_millis();
    let mut closed = 0;
    for job in ctx.store.open_jobs().await? {
        let why = if !ctx.settings.allow.allows(&job.repo) {
            Abandoned::RepoNotAllowed
        } else if job.status != JobStatus::InProgress && now - job.first_seen_at > GITHUB_QUEUE_LIMIT_MS {
            Abandoned::QueuedTooLong
        } else {
            continue;
        };
        closed += usize::from(abandon(ctx, &job.repo, job.id, &why).await?);
    }
    Ok(closed)
}

/// Closes a job with the reason, counting and logging it once.
async fn abandon(
    ctx: &ReconcilerContext,
    repo: &RepoName,
    job: JobId,
    why: &Abandoned,
) -> Result<bool, StoreError> {
    let closed = ctx.store.abandon_job(job, why).await?;
    if closed {
        ctx.metrics.job_abandoned(why.kind());
        tracing::warn!(repo = %repo, job.id = %job, "job abandoned: {why}");
    }
    Ok(closed)
}

/// Most stuck jobs looked up one by one in a pass.
const REFRESH_PER_PASS: usize = 50;

/// Open jobs of the store that no polled run held, looked up one by one once they are
/// older than one interval: at most [`REFRESH_PER_PASS`] a pass, in turn, so jobs that
/// never change cannot keep the others from being looked up.
async fn refresh_unseen(
    ctx: &ReconcilerContext,
    seen: &HashSet<JobId>,
    up_to: &mut Option<JobId>,
) -> Result<usize, ReconcileError> {
    let cutoff =
        ctx.clock.now_millis() - i64::try_from(ctx.settings.interval.as_millis()).unwrap_or(i64::MAX);
    let stale: Vec<(JobId, RepoName)> = ctx
        .store
        .open_jobs()
        .await?
        .into_iter()
        .filter(|j| !seen.contains(&j.id) && j.first_seen_at < cutoff && ctx.settings.allow.allows(&j.repo))
        .map(|j| (j.id, j.repo))
        .collect();
    let mut refreshed = 0;
    for (id, repo) in in_turn(stale, *up_to, REFRESH_PER_PASS) {
        *up_to = Some(id);
        match ctx.github.get_job(&repo, id.0).await {
            Ok(remote) => {
                if let Some(event) = to_event(&repo, remote, &ctx.settings.label) {
                    ctx.store.record(None, event, EventSource::Poll).await?;
                    refreshed += 1;
                }
            }
            Err(GitHubError::NotFound) => {
                abandon(ctx, &repo, id, &Abandoned::GoneAtGitHub).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(refreshed)
}

/// Up to `n` of `items`, in job id order, starting after `after` and wrapping around.
fn in_turn<T>(mut items: Vec<(JobId, T)>, after: Option<JobId>, n: usize) -> Vec<(JobId, T)> {
    items.sort_by_key(|(id, _)| *id);
    let start = after.map_or(0, |a| items.partition_point(|(id, _)| *id <= a));
    items.rotate_left(start);
    items.truncate(n);
    items
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

/// Most redelivery requests for one delivery, across restarts.
const MAX_REDELIVERIES: u32 = 3;

/// Redelivers `workflow_job` deliveries within the window that failed in transit; each GUID
/// at most [`MAX_REDELIVERIES`] times.
async fn redeliver_failed(ctx: &ReconcilerContext, hook: &Hook) -> Result<usize, ReconcileError> {
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
            } else if failed_in_transit(d.status_code) {
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
        if ctx.store.redelivery_asks(&guid).await? >= MAX_REDELIVERIES {
            continue;
        }
        ctx.store.note_redelivery(&guid).await?;
        ctx.github.redeliver(hook, id).await?;
        tracing::info!(hook = %hook, delivery = %guid, "asked GitHub to redeliver a failed webhook");
        count += 1;
    }
    Ok(count)
}

/// Whether a failed delivery is worth redelivering: it never got an answer (GitHub records
/// 0 for a timeout or a refused connection), or the service failed to record it (5xx).
/// A 4xx is a refusal on purpose (a bad signature, a repository not allowed, a body too
/// large): the same body would be refused again.
fn failed_in_transit(status: Option<u16>) -> bool {
    match status {
        None | Some(0) => true,
        Some(code) => code >= 500 || code == 408 || code == 429,
    }
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
    fn stuck_jobs_are_looked_up_in_turn_not_always_the_oldest() {
        let ids = |v: Vec<(JobId, ())>| v.into_iter().map(|(id, ())| id.0).collect::<Vec<_>>();
        let items = || (1..=7).rev().map(|i| (JobId(i), ())).collect::<Vec<_>>();
        assert_eq!(ids(in_turn(items(), None, 3)), [1, 2, 3]);
        assert_eq!(ids(in_turn(items(), Some(JobId(3)), 3)), [4, 5, 6]);
        assert_eq!(ids(in_turn(items(), Some(JobId(6)), 3)), [7, 1, 2]);
        // The job the cursor named may have closed meanwhile.
        let without_4: Vec<_> = items().into_iter().filter(|(id, ())| id.0 != 4).collect();
        assert_eq!(ids(in_turn(without_4, Some(JobId(4)), 2)), [5, 6]);
        assert_eq!(ids(in_turn(items(), Some(JobId(99)), 2)), [1, 2]);
    }

    #[test]
    fn only_deliveries_that_failed_in_transit_are_redelivered() {
        for lost in [
            None,
            Some(0),
            Some(500),
            Some(502),
            Some(503),
            Some(408),
            Some(429),
        ] {
            assert!(failed_in_transit(lost), "{lost:?}");
        }
        for refused in [400, 401, 403, 404, 413, 415, 422] {
            assert!(!failed_in_transit(Some(refused)), "{refused}");
        }
    }

    #[tokio::test]
    async fn jobs_queued_past_githubs_limit_or_of_repositories_no_longer_allowed_are_abandoned() {
        // Arrange: a job of an allowed repository, and one of a repository that left the list.
        let f = crate::fixture::Fixture::start().await;
        f.queued(1, crate::fixture::REPO).await;
        f.queued(2, "octo/removed").await;
        let ctx = f.reconciler(crate::fixture::REPO);

        // Act + Assert: the removed repository's job closes at once...
        assert_eq!(close_unreachable(&ctx).await.expect("pass"), 1);
        let removed = f.store.job(JobId(2)).await.expect("read").expect("job");
        assert_eq!(removed.conclusion.as_deref(), Some("abandoned"));
        assert_eq!(removed.closed_reason, Some(Abandoned::RepoNotAllowed.to_string()));
        // ...the other only once it has been queued longer than GitHub keeps a job queued.
        f.clock.advance(std::time::Duration::from_secs(24 * 3600 - 60));
        assert_eq!(close_unreachable(&ctx).await.expect("pass"), 0);
        f.clock.advance(std::time::Duration::from_secs(120));
        assert_eq!(close_unreachable(&ctx).await.expect("pass"), 1);
        let stale = f.store.job(JobId(1)).await.expect("read").expect("job");
        assert_eq!(stale.closed_reason, Some(Abandoned::QueuedTooLong.to_string()));
        assert!(f.store.open_jobs().await.expect("read").is_empty());
        f.finish().await;
    }

    #[test]
    fn delivery_times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time("garbage"), None);
    }
}
