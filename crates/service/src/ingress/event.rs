//! Parsing a `workflow_job` delivery into a `JobEvent`: only the parts the service uses,
//! read leniently.
//!
//! Real deliveries break GitHub's own schema (docs/github.md §0.1): `action` and
//! `workflow_job.status` can disagree (`queued` while `waiting`), old payloads lack fields the
//! schema calls required, queued payloads can carry runner fields, ids exceed 2^32, and new
//! fields appear without notice. So only the fields we use are read, each optional unless the
//! service cannot work without it (job id, run id, repository), and unknown fields are ignored.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::Deserialize;

use crate::domain::{JobEvent, JobId, JobStatus, LabelSet, RepoName, Visibility};

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    workflow_job: RawJob<'a>,
    repository: RawRepository<'a>,
}

#[derive(Deserialize)]
struct RawJob<'a> {
    id: u64,
    run_id: u64,
    #[serde(default)]
    run_attempt: Option<u32>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    conclusion: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    labels: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    runner_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    workflow_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    head_sha: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    created_at: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    started_at: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    completed_at: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawRepository<'a> {
    #[serde(borrow)]
    full_name: Cow<'a, str>,
    #[serde(default)]
    private: Option<bool>,
    #[serde(default, borrow)]
    visibility: Option<Cow<'a, str>>,
}

/// A `workflow_job` delivery: the event the store records, and what the webhook filter
/// alone needs to know about the delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDelivery {
    pub job: JobEvent,
    /// The repository's visibility (`repository.private` / `repository.visibility`).
    pub visibility: Visibility,
    /// The newest of the job's `created_at`, `started_at` and `completed_at` that parse:
    /// how old the delivery's news is, whenever it is (re)sent. `None` when none parses.
    pub newest_at: Option<SystemTime>,
}

/// Why a body is not a usable `workflow_job` event. The message is safe to log; it never
/// quotes the body.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the body is not a workflow_job event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("repository.full_name is invalid: {0}")]
    Repo(#[from] crate::domain::RepoNameError),
    #[error("the body has no action")]
    MissingAction,
}

/// Parses a JSON `workflow_job` delivery into the event the rest of the service uses.
pub fn parse(body: &[u8]) -> Result<JobEvent, EventError> {
    parse_delivery(body).map(|d| d.job)
}

/// Parses a JSON `workflow_job` delivery into its event, the repository's visibility and
/// the age of its news.
pub fn parse_delivery(body: &[u8]) -> Result<JobDelivery, EventError> {
    let raw: RawEvent<'_> = serde_json::from_slice(body)?;
    let visibility = Visibility::from_fields(raw.repository.private, raw.repository.visibility.as_deref());
    let action = raw.action.ok_or(EventError::MissingAction)?.into_owned();
    let status = effective_status(&action, raw.workflow_job.status.as_deref());
    let job = raw.workflow_job;
    let newest_at = [&job.created_at, &job.started_at, &job.completed_at]
        .into_iter()
        .filter_map(|t| humantime::parse_rfc3339_weak(t.as_deref()?).ok())
        .max();
    let queued_for = (status == JobStatus::InProgress)
        .then(|| waited(job.created_at.as_deref()?, job.started_at.as_deref()?))
        .flatten();
    let runner_name = job
        .runner_name
        .filter(|n| !n.is_empty() && status.rank() >= JobStatus::InProgress.rank())
        .map(Cow::into_owned);
    let job = JobEvent {
        status,
        job_id: JobId(job.id),
        run_id: job.run_id,
        run_attempt: job.run_attempt.unwrap_or(1),
        name: job.name.map(Cow::into_owned).unwrap_or_default(),
        workflow_name: job.workflow_name.map(Cow::into_owned),
        head_sha: job.head_sha.map(Cow::into_owned),
        conclusion: job.conclusion.map(Cow::into_owned),
        labels: LabelSet::new(job.labels.unwrap_or_default()),
        runner_name,
        repo: RepoName::parse(&raw.repository.full_name)?,
        action,
        queued_for,
    };
    Ok(JobDelivery {
        job,
        visibility,
        newest_at,
    })
}

/// `started - created` for two RFC 3339 times, if both parse and are in order.
fn waited(created: &str, started: &str) -> Option<std::time::Duration> {
    let created = humantime::parse_rfc3339_weak(created).ok()?;
    humantime::parse_rfc3339_weak(started)
        .ok()?
        .duration_since(created)
        .ok()
}

/// Reconciles the action with the payload's status: the later of the two wins, except that
/// between the two not-started states the payload's status is the truth (`queued` with status
/// `waiting` means the job waits for an approval: docs/github.md §0.1).
fn effective_status(action: &str, status: Option<&str>) -> JobStatus {
    let from_action = JobStatus::parse(action);
    let Some(status) = status.map(JobStatus::parse) else {
        return from_action;
    };
    if status.rank() >= from_action.rank() {
        status
    } else {
        from_action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(action: &str, status: Option<&str>) -> serde_json::Value {
        let mut job = json!({
            "id": 12_877_621_891_u64,
            "run_id": 4_747_967_848_u64,
            "run_attempt": 1,
            "name": "build",
            "labels": ["self-hosted", "k8s"],
            "runner_id": null,
            "runner_name": null,
            "head_sha": "abc",
            "workflow_name": "CI",
            "steps": [],
            "future_field": {"nested": true}
        });
        if let Some(status) = status {
            job["status"] = json!(status);
        }
        json!({
            "action": action,
            "workflow_job": job,
            "repository": {"full_name": "octo/repo", "id": 1},
            "sender": {"login": "octocat"},
            "deployment": {"id": 1}
        })
    }

    fn event(v: &serde_json::Value) -> JobEvent {
        parse(v.to_string().as_bytes()).expect("parses")
    }

    #[test]
    fn queued_action_with_waiting_status_is_not_runnable() {
        let e = event(&payload("queued", Some("waiting")));
        assert_eq!(e.status, JobStatus::Waiting);
        assert_eq!(e.job_id, JobId(12_877_621_891));
    }

    #[test]
    fn ids_above_two_to_the_32_survive() {
        let e = event(&payload("queued", Some("queued")));
        assert_eq!(e.job_id.0, 12_877_621_891);
        assert_eq!(e.run_id, 4_747_967_848);
    }

    #[test]
    fn fields_the_schema_requires_may_be_absent() {
        // Like the oldest published example (docs/github.md §0.1): no run_attempt, workflow_name, head_branch, created_at.
        let v = json!({
            "action": "in_progress",
            "workflow_job": {
                "id": 2_832_853_555_u64, "run_id": 940_463_255,
                "labels": ["gpu", "db-app", "dc-03"], "runner_name": "my runner"
            },
            "repository": {"full_name": "octo/repo"}
        });
        let e = event(&v);
        assert_eq!(e.run_attempt, 1);
        assert_eq!(e.status, JobStatus::InProgress);
        assert_eq!(e.runner_name.as_deref(), Some("my runner"));
        assert_eq!(e.workflow_name, None);
    }

    #[test]
    fn runner_fields_on_a_queued_payload_are_ignored() {
        let mut v = payload("queued", Some("queued"));
        v["workflow_job"]["runner_name"] = json!("GitHub Actions 5");
        assert_eq!(event(&v).runner_name, None);
    }

    #[test]
    fn null_labels_and_null_strings_are_tolerated() {
        let mut v = payload("completed", Some("completed"));
        v["workflow_job"]["labels"] = serde_json::Value::Null;
        v["workflow_job"]["conclusion"] = json!("cancelled");
        let e = event(&v);
        assert!(e.labels.is_empty());
        assert_eq!(e.conclusion.as_deref(), Some("cancelled"));
    }

    #[test]
    fn a_started_job_reports_how_long_it_queued() {
        let mut v = payload("in_progress", Some("in_progress"));
        v["workflow_job"]["created_at"] = json!("2026-11-28T10:00:00Z");
        v["workflow_job"]["started_at"] = json!("2026-11-28T10:00:07Z");
        assert_eq!(event(&v).queued_for, Some(std::time::Duration::from_secs(7)));
        let mut q = payload("queued", Some("queued"));
        q["workflow_job"]["created_at"] = json!("2026-11-28T10:00:00Z");
        q["workflow_job"]["started_at"] = json!("2026-11-28T10:00:00Z");
        assert_eq!(event(&q).queued_for, None, "only started jobs have waited");
    }

    #[test]
    fn the_newest_of_the_jobs_timestamps_and_the_repositorys_visibility_are_read() {
        let mut v = payload("completed", Some("completed"));
        v["workflow_job"]["created_at"] = json!("2026-11-28T10:00:00Z");
        v["workflow_job"]["started_at"] = json!("2026-11-28T10:00:07Z");
        v["workflow_job"]["completed_at"] = json!("2026-11-28T10:05:00Z");
        v["repository"]["private"] = json!(false);
        let d = parse_delivery(v.to_string().as_bytes()).expect("parses");
        let at = |t: &str| humantime::parse_rfc3339_weak(t).expect("time");
        assert_eq!(d.newest_at, Some(at("2026-11-28T10:05:00Z")));
        assert_eq!(d.visibility, Visibility::Public);

        // In progress: completed_at is null, started_at is the newest.
        v["workflow_job"]["completed_at"] = serde_json::Value::Null;
        v["repository"]["private"] = json!(true);
        v["repository"]["visibility"] = json!("internal");
        let d = parse_delivery(v.to_string().as_bytes()).expect("parses");
        assert_eq!(d.newest_at, Some(at("2026-11-28T10:00:07Z")));
        assert_eq!(d.visibility, Visibility::Internal);
    }

    #[test]
    fn a_payload_without_times_or_visibility_still_parses() {
        let d = parse_delivery(payload("queued", Some("queued")).to_string().as_bytes()).expect("parses");
        assert_eq!(d.newest_at, None);
        assert_eq!(d.visibility, Visibility::Unknown);
    }

    #[test]
    fn the_later_of_action_and_status_wins() {
        assert_eq!(
            effective_status("queued", Some("in_progress")),
            JobStatus::InProgress
        );
        assert_eq!(
            effective_status("completed", Some("in_progress")),
            JobStatus::Completed
        );
        assert_eq!(effective_status("waiting", None), JobStatus::Waiting);
        assert_eq!(effective_status("queued", Some("queued")), JobStatus::Queued);
    }

    #[test]
    fn bodies_without_the_fields_we_need_are_errors() {
        for bad in [
            json!({"action": "queued"}),
            json!({"action": "queued", "workflow_job": {"id": 1, "run_id": 1}}),
            json!({"workflow_job": {"id": 1, "run_id": 1}, "repository": {"full_name": "a/b"}}),
            json!({"action": "queued", "workflow_job": {"id": -1, "run_id": 1}, "repository": {"full_name": "a/b"}}),
            json!({"action": "queued", "workflow_job": {"id": 1, "run_id": 1}, "repository": {"full_name": "../etc"}}),
        ] {
            assert!(parse(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
        assert!(parse(b"not json").is_err());
    }
}
