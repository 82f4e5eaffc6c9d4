//! The JSON shapes of the Actions service (contract §4–§9). Unknown fields are ignored and
//! absent ones default, since there is no published schema.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// A label of a scale set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleSetLabel {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A runner scale set.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSet {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub runner_group_id: u64,
    #[serde(default)]
    pub labels: Vec<ScaleSetLabel>,
}

impl ScaleSet {
    /// The label names, lower-cased, in order.
    pub fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.to_ascii_lowercase()).collect()
    }
}

/// `{count, value}` lists.
#[derive(Debug, Deserialize)]
pub(super) struct List<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
}

/// Job counts of a scale set, as the service reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Statistics {
    pub total_available_jobs: u64,
    pub total_acquired_jobs: u64,
    pub total_assigned_jobs: u64,
    pub total_running_jobs: u64,
    pub total_registered_runners: u64,
    pub total_busy_runners: u64,
    pub total_idle_runners: u64,
}

/// A message session. The queue token is a credential: never logged.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub queue_url: String,
    pub queue_token: SecretString,
    pub statistics: Statistics,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("queue_url", &self.queue_url)
            .field("queue_token", &"[redacted]")
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionBody {
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub message_queue_url: String,
    #[serde(default)]
    pub message_queue_access_token: String,
    pub statistics: Option<Statistics>,
}

/// One queue message: its id, the job messages it carries and the current statistics.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub id: u64,
    pub jobs: Vec<JobMessage>,
    pub statistics: Statistics,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct QueueMessageBody {
    pub message_id: u64,
    #[serde(default)]
    pub message_type: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub statistics: Statistics,
}

/// One job message (contract §6); which fields matter depends on `message_type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobMessage {
    pub message_type: String,
    pub runner_request_id: u64,
    pub repository_name: String,
    pub owner_name: String,
    pub job_id: String,
    pub job_workflow_ref: String,
    pub job_display_name: String,
    pub workflow_run_id: u64,
    pub request_labels: Vec<String>,
    pub result: String,
    pub runner_id: u64,
    pub runner_name: String,
}

/// A fresh scale-set runner: its id and encoded JIT config (a credential).
pub struct ScaleSetJit {
    pub runner_id: u64,
    pub encoded: SecretString,
}

impl std::fmt::Debug for ScaleSetJit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleSetJit")
            .field("runner_id", &self.runner_id)
            .field("encoded", &"[redacted]")
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JitBody {
    pub runner: Agent,
    #[serde(rename = "encodedJITConfig")]
    pub encoded_jit_config: String,
}

/// A runner as the Actions service lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Agent {
    pub id: u64,
    pub name: String,
    pub runner_scale_set_id: u64,
    pub busy: bool,
    pub status: String,
}

#[derive(Deserialize)]
pub(super) struct AdminConnection {
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub token: String,
}

#[derive(Deserialize)]
pub(super) struct Acquired {
    #[serde(default)]
    pub value: Vec<u64>,
}
