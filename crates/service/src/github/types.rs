use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::domain::Visibility;

/// Body of `POST …/actions/runners/generate-jitconfig` (docs/github.md §2.1).
#[derive(Debug, Clone, Serialize)]
pub struct JitRequest {
    pub name: String,
    pub runner_group_id: u64,
    pub labels: Vec<String>,
    pub work_folder: String,
}

/// A fresh JIT registration. The config is a credential: it never reaches a log.
pub struct JitConfig {
    pub runner_id: u64,
    pub encoded: SecretString,
}

impl std::fmt::Debug for JitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitConfig")
            .field("runner_id", &self.runner_id)
            .field("encoded", &"[redacted]")
            .finish()
    }
}

#[derive(Deserialize)]
pub(super) struct JitResponse {
    pub runner: RunnerInfo,
    pub encoded_jit_config: String,
}

/// A registered runner as GitHub lists it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RunnerInfo {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub labels: Vec<RunnerLabel>,
}

impl RunnerInfo {
    /// Whether the runner carries `label` (compared without case, as GitHub does).
    pub fn has_label(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l.name.eq_ignore_ascii_case(label))
    }
}

/// One label of a registered runner.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RunnerLabel {
    pub name: String,
}

#[derive(Deserialize)]
pub(super) struct RunnerList {
    #[serde(default)]
    pub runners: Vec<RunnerInfo>,
}

/// What `DELETE …/runners/{id}` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Already gone: the goal is reached.
    NotFound,
    /// 422 "still running a job": the runner must be kept.
    Busy,
}

/// A workflow run (the fields reconciliation and max-parallel lookup use).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RemoteRun {
    pub id: u64,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub head_sha: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// The run's repository (a minimal repository object): read for its visibility.
    #[serde(default)]
    pub repository: Option<RunRepository>,
}

impl RemoteRun {
    /// Whether the run's repository is public (`Unknown` when the object is missing).
    pub fn visibility(&self) -> Visibility {
        self.repository.as_ref().map_or(Visibility::Unknown, |r| {
            Visibility::from_fields(r.private, r.visibility.as_deref())
        })
    }
}

/// The fields of a run's `repository` the service reads.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RunRepository {
    #[serde(default)]
    pub private: Option<bool>,
    #[serde(default)]
    pub visibility: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RunList {
    #[serde(default)]
    pub workflow_runs: Vec<RemoteRun>,
}

/// A job as the REST API returns it (docs/github.md §2.4); nullable where the spec says so, whatever
/// octocrab assumes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RemoteJob {
    pub id: u64,
    pub run_id: u64,
    #[serde(default)]
    pub run_attempt: Option<u32>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub runner_name: Option<String>,
    #[serde(default)]
    pub workflow_name: Option<String>,
    #[serde(default)]
    pub head_sha: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct JobList {
    #[serde(default)]
    pub jobs: Vec<RemoteJob>,
}

/// One entry of `GET …/actions/runners/downloads`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RunnerDownload {
    pub os: String,
    pub architecture: String,
    pub download_url: String,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub sha256_checksum: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Contents {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub encoding: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub message: Option<String>,
}

/// A webhook whose deliveries the reconciler can list and redeliver (docs/github.md §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Repo { repo: crate::domain::RepoName, id: u64 },
    Org { org: String, id: u64 },
}

impl Hook {
    pub(super) fn path(&self, rest: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = match self {
            Hook::Repo { repo, id } => {
                vec![
                    "repos".into(),
                    repo.owner().into(),
                    repo.name().into(),
                    "hooks".into(),
                    id.to_string(),
                ]
            }
            Hook::Org { org, id } => {
                vec!["orgs".into(), org.clone(), "hooks".into(), id.to_string()]
            }
        };
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }
}

impl Hook {
    /// The account the hook belongs to (whose budget its calls spend).
    pub(super) fn owner(&self) -> &str {
        match self {
            Hook::Repo { repo, .. } => repo.owner(),
            Hook::Org { org, .. } => org,
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Repo { repo, id } => write!(f, "{repo} hook {id}"),
            Hook::Org { org, id } => write!(f, "org {org} hook {id}"),
        }
    }
}

/// One delivery attempt in a webhook's delivery log.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HookDelivery {
    pub id: u64,
    pub guid: String,
    #[serde(default)]
    pub delivered_at: Option<String>,
    #[serde(default)]
    pub redelivery: bool,
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_visibility_comes_from_its_repository_object() {
        let run = |repository: serde_json::Value| -> RemoteRun {
            serde_json::from_value(serde_json::json!({"id": 1, "repository": repository})).expect("run")
        };
        assert_eq!(
            run(serde_json::json!({"full_name": "o/r", "private": false})).visibility(),
            Visibility::Public
        );
        assert_eq!(
            run(serde_json::json!({"full_name": "o/r", "private": true})).visibility(),
            Visibility::Private
        );
        let bare: RemoteRun = serde_json::from_value(serde_json::json!({"id": 1})).expect("run");
        assert_eq!(bare.visibility(), Visibility::Unknown);
    }
}
