//! The scale-set job source's listener (`JOB_SOURCE=scaleset`): holds the scale set's one
//! message session, long-polls its queue, and turns job messages into store events, the
//! same events webhooks produce, so the planner, provisioner and reaper work unchanged.
//!
//! Order per message (scaleset-contract §10 acknowledges first; we do not): acquire the
//! `JobAvailable` jobs, record every job message's effect in the store, and only then
//! delete (acknowledge) the message. A crash in between leaves the message undeleted; it is
//! redelivered and replayed, and replaying changes nothing, because every effect is an
//! idempotent upsert (a job's status only moves forward) deduplicated by the key
//! `scaleset:<set>:<message>:<index>`.
//!
//! Open questions of the contract (§13), resolved on the safe side:
//! - the lapse time of a crashed predecessor's session is unknown: a 409 at session create is
//!   retried with capped backoff for as long as it takes, logged once per attempt, never
//!   fatal;
//! - the relation of the scale set's `jobId` to the REST job id is unconfirmed: jobs are keyed
//!   by the scale set's `jobId` only (`job_key`), never by a guessed REST id;
//! - `lastMessageId` is not persisted: after a restart the poll starts at 0 and gets the
//!   oldest undeleted message, which is safe because replays are idempotent;
//! - unknown job message types and `result` values are recorded as far as understood and
//!   acknowledged (not redelivered forever); an unknown `result` is kept as the conclusion.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::domain::{JobEvent, JobId, JobStatus, LabelSet, RepoAllowList, RepoName};
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::scaleset::{JobMessage, QueueMessage, ScaleSetClient, ScaleSetError, Session};
use crate::store::{EventSource, Store, StoreError};
use crate::wake::Wake;

/// What the listener needs.
pub struct ListenerContext {
    pub client: ScaleSetClient,
    pub scale_set_id: u64,
    pub scale_set_name: String,
    pub store: Store,
    pub wake: Arc<Wake>,
    /// `MAX_RUNNERS`, sent as `X-ScaleSetMaxCapacity`.
    pub max_runners: usize,
    /// `ALLOWED_REPOS`: a job of another repository is not recorded.
    pub allow: RepoAllowList,
    /// The set's machine labels (`SCALE_SETS`), added to a job that asks for no such label.
    pub machine: Vec<String>,
    /// Waits between failed attempts (session create, poll, store).
    pub backoff: Backoff,
    /// Where the set's statistics are shown (`mgr_scaleset_*`).
    pub metrics: Arc<Metrics>,
}

/// Why a message could not be handled (it stays unacknowledged and comes back).
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    ScaleSet(#[from] ScaleSetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store key of a scale-set job: derived from the scale set's own `jobId` string (or,
/// without one, the runner request id), with bit 62 set so it can never equal a REST job id
/// (those are far below 2^62), and below 2^63 so SQLite stores it as is.
pub fn job_key(message: &JobMessage) -> Option<JobId> {
    let id = if message.job_id.is_empty() {
        if message.runner_request_id == 0 {
            return None;
        }
        format!("request:{}", message.runner_request_id)
    } else {
        message.job_id.clone()
    };
    let digest = Sha256::digest(id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    let low = u64::from_be_bytes(bytes) & ((1 << 62) - 1);
    Some(JobId((1 << 62) | low))
}

/// The scale set's `result` in the webhook's spelling of a conclusion.
fn conclusion(result: &str) -> String {
    match result.to_ascii_lowercase().as_str() {
        "canceled" | "cancelled" => "cancelled".into(),
        "succeeded" | "success" => "success".into(),
        "failed" | "failure" => "failure".into(),
        "" => "unknown".into(),
        other => other.into(),
    }
}

/// The job's labels, then each of the set's `machine` labels whose key (`cpu`, `memory`,
/// `gpu`) the job does not set itself: a job's own request wins.
fn labels_with_machine(requested: &[String], machine: &[String]) -> LabelSet {
    let key = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_ascii_lowercase());
    let mut labels: Vec<&str> = requested.iter().map(String::as_str).collect();
    for label in machine {
        if !requested.iter().any(|r| key(r).is_some() && key(r) == key(label)) {
            labels.push(label);
        }
    }
    LabelSet::new(labels)
}

/// The store event a job message means; `None` for messages that change nothing
/// (an unknown type, a job without any id, a repository not allowed).
pub fn job_event(message: &JobMessage, allow: &RepoAllowList, machine: &[String]) -> Option<JobEvent> {
    let (action, status) = match message.message_type.as_str() {
        "JobAvailable" | "JobAssigned" => ("queued", JobStatus::Queued),
        "JobStarted" => ("in_progress", JobStatus::InProgress),
        "JobCompleted" => ("completed", JobStatus::Completed),
        _ => return None,
    };
    let repo = RepoName::parse(&format!("{}/{}", message.owner_name, message.repository_name)).ok()?;
    if !allow.allows(&repo) {
        return None;
    }
    let started = status != JobStatus::Queued && !message.runner_name.is_empty();
    Some(JobEvent {
        action: action.into(),
        status,
        job_id: job_key(message)?,
        run_id: message.workflow_run_id,
        run_attempt: 1,
        name: message.job_display_name.clone(),
        workflow_name: None,
        head_sha: None,
        conclusion: (status == JobStatus::Completed).then(|| conclusion(&message.result)),
        labels: labels_with_machine(&message.request_labels, machine),
        runner_name: started.then(|| message.runner_name.clone()),
        repo,
        queued_for: None,
    })
}

/// Runs until `stop`: session, polls, messages; the session is deleted on the way out.
pub async fn run(ctx: Arc<ListenerContext>, stop: CancellationToken) {
    let Some(mut session) = open_session(&ctx, &stop).await else {
        return;
    };
    let mut last = 0;
    let mut failures = 0u32;
    loop {
        let polled = tokio::select! {
            () = stop.cancelled() => break,
            r = ctx.client.get_message(&session, last, ctx.max_runners) => r,
        };
        match polled {
            Ok(None) => failures = 0,
            Ok(Some(message)) => match handle(&ctx, &mut session, &message, &stop).await {
                Ok(()) => {
                    last = message.id;
                    failures = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, message_id = message.id, "scale set message not handled; it will be redelivered");
                    failures = failures.saturating_add(1);
                    pause(&ctx, failures, &stop).await;
                }
            },
            Err(ScaleSetError::Unauthorized) => match renew(&ctx, &session, &stop).await {
                Some(renewed) => session = renewed,
                None => break,
            },
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "scale set message poll failed; retrying");
                pause(&ctx, failures, &stop).await;
            }
        }
    }
    close(&ctx, &session).await;
}

async fn pause(ctx: &ListenerContext, failures: u32, stop: &CancellationToken) {
    let wait = ctx.backoff.delay(failures.saturating_sub(1));
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
}

/// Creates the session, waiting out a conflicting one (another replica, or a crashed
/// predecessor whose session has not lapsed) with backoff; `None` if stopped first.
async fn open_session(ctx: &ListenerContext, stop: &CancellationToken) -> Option<Session> {
    let mut attempt = 0u32;
    loop {
        match ctx.client.create_session(ctx.scale_set_id).await {
            Ok(session) => {
                ctx.metrics
                    .set_scale_set_statistics(&ctx.scale_set_name, &session.statistics);
                tracing::info!(
                    scale_set = %ctx.scale_set_name,
                    assigned_jobs = session.statistics.total_assigned_jobs,
                    "scale set message session open"
                );
                ctx.wake.planner.notify_one();
                return Some(session);
            }
            Err(ScaleSetError::SessionConflict { .. }) => tracing::warn!(
                scale_set = %ctx.scale_set_name,
                attempt = attempt + 1,
                "another listener holds the scale set's session (a second replica, or a crashed one's session that has not lapsed yet); waiting for it"
            ),
            Err(e) => {
                tracing::warn!(error = %e, scale_set = %ctx.scale_set_name, "could not open the scale set session; retrying")
            }
        }
        attempt = attempt.saturating_add(1);
        let wait = ctx.backoff.delay(attempt.saturating_sub(1));
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// After a 401: refresh the session's queue token; a session the service forgot (404)
/// is replaced by a new one.
async fn renew(ctx: &ListenerContext, session: &Session, stop: &CancellationToken) -> Option<Session> {
    match ctx.client.refresh_session(ctx.scale_set_id, session).await {
        Ok(renewed) => {
            tracing::debug!("scale set queue token refreshed");
            Some(renewed)
        }
        Err(ScaleSetError::SessionGone) => {
            tracing::warn!("the scale set session is gone (refresh answered 404); opening a new one");
            open_session(ctx, stop).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not refresh the scale set session; opening a new one");
            open_session(ctx, stop).await
        }
    }
}

/// Acquires, records, then acknowledges one message.
async fn handle(
    ctx: &ListenerContext,
    session: &mut Session,
    message: &QueueMessage,
    stop: &CancellationToken,
) -> Result<(), HandleError> {
    ctx.metrics
        .set_scale_set_statistics(&ctx.scale_set_name, &message.statistics);
    let available: Vec<u64> = message
        .jobs
        .iter()
        .filter(|j| j.message_type == "JobAvailable" && j.runner_request_id > 0)
        .map(|j| j.runner_request_id)
        .collect();
    let acquired = if available.is_empty() {
        Vec::new()
    } else {
        match ctx
            .client
            .acquire_jobs(ctx.scale_set_id, session, &available)
            .await
        {
            Err(ScaleSetError::Unauthorized) => {
                *session = renew(ctx, session, stop)
                    .await
                    .ok_or(ScaleSetError::Unauthorized)?;
                ctx.client
                    .acquire_jobs(ctx.scale_set_id, session, &available)
                    .await?
            }
            other => other?,
        }
    };
    let mut recorded = 0;
    for (index, job) in message.jobs.iter().enumerate() {
        // A job offered but acquired by another scale set is not ours.
        if job.message_type == "JobAvailable" && !acquired.contains(&job.runner_request_id) {
            continue;
        }
        let Some(event) = job_event(job, &ctx.allow, &ctx.machine) else {
            tracing::debug!(message_type = %job.message_type, "scale set job message without effect");
            continue;
        };
        let key = format!("scaleset:{}:{}:{index}", ctx.scale_set_id, message.id);
        ctx.store.record(Some(key), event, EventSource::ScaleSet).await?;
        recorded += 1;
    }
    if recorded > 0 {
        // As a webhook would: demand changed, and new runs' max-parallel must be looked up
        // (the planner holds a new run's jobs until then).
        ctx.wake.planner.notify_one();
        ctx.wake.strategy.notify_one();
        ctx.wake.reaper.notify_one();
    }
    tracing::debug!(
        message_id = message.id,
        jobs = message.jobs.len(),
        recorded,
        assigned = message.statistics.total_assigned_jobs,
        "scale set message recorded"
    );
    match ctx.client.delete_message(session, message.id).await {
        Err(ScaleSetError::Unauthorized) => {
            *session = renew(ctx, session, stop)
                .await
                .ok_or(ScaleSetError::Unauthorized)?;
            ctx.client.delete_message(session, message.id).await?;
        }
        other => other?,
    }
    Ok(())
}

/// Deletes the session so a successor need not wait for it to lapse (bounded: shutdown
/// must not hang on an unreachable service).
async fn close(ctx: &ListenerContext, session: &Session) {
    let deleted = tokio::time::timeout(
        Duration::from_secs(10),
        ctx.client.delete_session(ctx.scale_set_id, session),
    )
    .await;
    match deleted {
        Ok(Ok(())) => tracing::info!("scale set message session closed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not delete the scale set session; it will lapse"),
        Err(_) => tracing::warn!("deleting the scale set session timed out; it will lapse"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: &str) -> JobMessage {
        JobMessage {
            message_type: kind.into(),
            runner_request_id: 5,
            repository_name: "widgets".into(),
            owner_name: "acme".into(),
            job_id: "8f0c-job".into(),
            job_display_name: "build".into(),
            workflow_run_id: 77,
            request_labels: vec!["modal".into(), "cpu=4".into()],
            ..JobMessage::default()
        }
    }

    #[test]
    fn a_job_is_keyed_by_the_scale_sets_job_id_apart_from_any_rest_job_id() {
        let a = job_key(&message("JobAssigned")).expect("key");
        let mut other = message("JobAssigned");
        other.runner_request_id = 99;
        assert_eq!(job_key(&other), Some(a), "the request id does not change the key");
        other.job_id = "another".into();
        assert_ne!(job_key(&other), Some(a));
        assert!(
            a.0 >= 1 << 62 && a.0 < 1 << 63,
            "above every REST id, within SQLite's range"
        );
        other.job_id.clear();
        other.runner_request_id = 0;
        assert_eq!(job_key(&other), None, "a message naming no job has no key");
    }

    #[test]
    fn job_messages_become_the_events_webhooks_would_have_sent() {
        let allow = RepoAllowList::default();
        let queued = job_event(&message("JobAvailable"), &allow, &[]).expect("event");
        assert_eq!(
            (queued.status, queued.action.as_str()),
            (JobStatus::Queued, "queued")
        );
        assert!(queued.labels.contains("cpu=4"), "machine labels pass through");
        let machine = ["cpu=8".to_owned(), "gpu=a10g".to_owned()];
        let shaped = job_event(&message("JobAssigned"), &allow, &machine).expect("event");
        assert!(shaped.labels.contains("gpu=a10g"), "the set's machine is added");
        assert!(!shaped.labels.contains("cpu=8"), "the job's own cpu= wins");
        let mut started = message("JobStarted");
        started.runner_name = "modal-1-1".into();
        let started = job_event(&started, &allow, &[]).expect("event");
        assert_eq!(started.runner_name.as_deref(), Some("modal-1-1"));
        let mut done = message("JobCompleted");
        done.result = "canceled".into();
        let done = job_event(&done, &allow, &[]).expect("event");
        assert_eq!(
            (done.status, done.conclusion.as_deref()),
            (JobStatus::Completed, Some("cancelled"))
        );
        assert!(job_event(&message("Whatever"), &allow, &[]).is_none());
        let other_only = RepoAllowList::parse("acme/other").expect("list");
        assert!(
            job_event(&message("JobAssigned"), &other_only, &[]).is_none(),
            "repositories outside ALLOWED_REPOS are ignored"
        );
    }
}
