//! Where runners are registered, looked up and removed: GitHub's REST API (webhook job
//! source) or the runner scale set's Actions service (scale-set job source). The
//! provisioner and the reaper call this, so their naming, recovery and reaping rules stay
//! the same for both; only the four calls differ.
//!
//! Scale-set failures are translated into the REST client's [`GitHubError`] by what they
//! mean to the caller (a name clash is a `Conflict`, a 5xx a `Server` error, …), so the
//! provisioner's retry and recovery decisions apply unchanged.

use crate::github::{
    DeleteOutcome, GitHub, GitHubError, JitConfig, JitRequest, RunnerHome, RunnerInfo, RunnerLabel,
};
use crate::scaleset::{Agent, ScaleSetClient, ScaleSetError};

/// The registration path the job source implies; cheap to clone.
#[derive(Clone)]
pub enum Registry {
    /// `generate-jitconfig` and the runner endpoints at each runner's home.
    Rest(GitHub),
    /// The scale set's `generatejitconfig` and its service's runner endpoints.
    ScaleSet {
        client: ScaleSetClient,
        /// This deployment's scale sets: name and id. A runner joins the set its job named
        /// in `runs-on` (the first when it named none of them).
        sets: Vec<(String, u64)>,
        /// The deployment's label: every runner of this deployment's own scale sets is its
        /// own, though a scale-set runner carries only its set's labels.
        deployment_label: String,
    },
}

impl Registry {
    /// The same registry, its REST calls made through `github` (the leader's fenced
    /// client). The scale set's client keeps its own connection: only the leader runs the
    /// loops that use it.
    pub fn fenced(&self, github: GitHub) -> Registry {
        match self {
            Registry::Rest(_) => Registry::Rest(github),
            other => other.clone(),
        }
    }
    /// Registers `request.name`; sent once (the caller decides how to recover).
    pub async fn generate_jitconfig(
        &self,
        home: &RunnerHome,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        match self {
            Registry::Rest(github) => github.generate_jitconfig(home, request).await,
            Registry::ScaleSet { client, sets, .. } => {
                let set = sets
                    .iter()
                    .find(|(name, _)| request.labels.iter().any(|l| l.eq_ignore_ascii_case(name)))
                    .or(sets.first())
                    .map(|(_, id)| *id)
                    .ok_or(GitHubError::NotFound)?;
                let jit = client
                    .generate_jit_config(set, &request.name)
                    .await
                    .map_err(translate)?;
                Ok(JitConfig {
                    runner_id: jit.runner_id,
                    encoded: jit.encoded,
                })
            }
        }
    }

    /// The runner registered as `name`, if any.
    pub async fn runner_by_name(
        &self,
        home: &RunnerHome,
        name: &str,
    ) -> Result<Option<RunnerInfo>, GitHubError> {
        match self {
            Registry::Rest(github) => github.runner_by_name(home, name).await,
            Registry::ScaleSet { client, .. } => {
                let agent = client.runner_by_name(name).await.map_err(translate)?;
                Ok(agent.map(|a| self.info(a)))
            }
        }
    }

    /// Runner `id`, or `None` if it is gone.
    pub async fn get_runner(&self, home: &RunnerHome, id: u64) -> Result<Option<RunnerInfo>, GitHubError> {
        match self {
            Registry::Rest(github) => github.get_runner(home, id).await,
            Registry::ScaleSet { client, .. } => {
                let agent = client.get_runner(id).await.map_err(translate)?;
                Ok(agent.map(|a| self.info(a)))
            }
        }
    }

    /// Removes runner `id` (a busy one is kept).
    pub async fn delete_runner(&self, home: &RunnerHome, id: u64) -> Result<DeleteOutcome, GitHubError> {
        match self {
            Registry::Rest(github) => github.delete_runner(home, id).await,
            Registry::ScaleSet { client, .. } => match client.remove_runner(id).await {
                Ok(true) => Ok(DeleteOutcome::Deleted),
                Ok(false) => Ok(DeleteOutcome::NotFound),
                Err(ScaleSetError::RunnerBusy) => Ok(DeleteOutcome::Busy),
                Err(e) => Err(translate(e)),
            },
        }
    }

    /// A scale-set runner as the REST shape the provisioner and reaper read; a runner of
    /// another scale set gets no labels, so it is never taken for this deployment's.
    fn info(&self, agent: Agent) -> RunnerInfo {
        let labels = match self {
            Registry::ScaleSet {
                sets,
                deployment_label,
                ..
            } if sets.iter().any(|(_, id)| *id == agent.runner_scale_set_id) => vec![RunnerLabel {
                name: deployment_label.clone(),
            }],
            _ => Vec::new(),
        };
        RunnerInfo {
            id: agent.id,
            name: agent.name,
            status: agent.status,
            busy: agent.busy,
            labels,
        }
    }
}

/// What a scale-set failure means to a caller written for the REST client.
fn translate(e: ScaleSetError) -> GitHubError {
    match e {
        ScaleSetError::RegistrationToken(inner) => inner,
        ScaleSetError::Unauthorized => GitHubError::Unauthorized,
        ScaleSetError::Registration {
            status: 401 | 403,
            message,
        } => GitHubError::Forbidden { message },
        ScaleSetError::Registration { status, message } | ScaleSetError::Rejected { status, message } => {
            GitHubError::Invalid { status, message }
        }
        ScaleSetError::AgentExists => GitHubError::Conflict {
            message: "a runner of that name already exists".into(),
        },
        ScaleSetError::NotFound { .. } | ScaleSetError::SessionGone => GitHubError::NotFound,
        ScaleSetError::RunnerBusy => GitHubError::Invalid {
            status: 400,
            message: "the runner is still running a job".into(),
        },
        ScaleSetError::Server {
            status: 429,
            retry_after: Some(after),
        } => GitHubError::RateLimited { retry_after: after },
        ScaleSetError::Server { status, .. } => GitHubError::Server { status },
        ScaleSetError::SessionConflict { .. } => GitHubError::Server { status: 409 },
        ScaleSetError::Transport(m) => GitHubError::Transport(m),
        ScaleSetError::Decode(m) => GitHubError::Decode(m),
    }
}
