//! What the service learns about one workflow job, from a webhook or from polling. Ingress
//! parses deliveries into it and the reconciler builds it from polled jobs; the store records
//! it. It lives here, among the shared values, so the store and the reconciler depend on
//! this type and not on the module that parses webhooks.

use super::{JobId, JobStatus, LabelSet, RepoName};

/// One `workflow_job` event, already reconciled and filtered of stale fields.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// The action as sent (`queued`, `waiting`, `in_progress`, `completed`, or anything new).
    pub action: String,
    /// What the event says about the job, reconciling `action` with `workflow_job.status`.
    pub status: JobStatus,
    pub job_id: JobId,
    pub run_id: u64,
    pub run_attempt: u32,
    pub name: String,
    pub workflow_name: Option<String>,
    pub head_sha: Option<String>,
    pub conclusion: Option<String>,
    pub labels: LabelSet,
    /// The runner that took the job; only set once the job has started, because queued
    /// payloads can carry stale runner fields.
    pub runner_name: Option<String>,
    pub repo: RepoName,
    /// For a job that started: how long it waited, by GitHub's clock (`started_at` −
    /// `created_at`): the queue time users feel.
    pub queued_for: Option<std::time::Duration>,
}

impl JobEvent {
    /// Whether the action is one the service acts on.
    pub fn is_actionable(&self) -> bool {
        matches!(
            self.action.as_str(),
            "queued" | "waiting" | "in_progress" | "completed"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_four_known_actions_are_actionable() {
        let mut e = JobEvent {
            action: "queued".into(),
            status: JobStatus::Queued,
            job_id: JobId(1),
            run_id: 1,
            run_attempt: 1,
            name: String::new(),
            workflow_name: None,
            head_sha: None,
            conclusion: None,
            labels: LabelSet::new(["modal"]),
            runner_name: None,
            repo: RepoName::parse("octo/repo").expect("valid"),
            queued_for: None,
        };
        for action in ["queued", "waiting", "in_progress", "completed"] {
            e.action = action.into();
            assert!(e.is_actionable(), "{action}");
        }
        for action in ["requested", "deleted", ""] {
            e.action = action.into();
            assert!(!e.is_actionable(), "{action}");
        }
    }
}
