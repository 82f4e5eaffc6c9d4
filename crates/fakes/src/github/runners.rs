//! Runner registrations and job dispatch, the way GitHub does them.
//!
//! * A JIT registration is single-use and is removed after its one job
//!   (or when deleted through the API).
//! * Registration does not reserve a job (docs/github.md §2.4): when a runner asks
//!   for work it gets the oldest queued job it may serve (of its repository, or of
//!   any repository of its organisation or enterprise) whose labels it all carries,
//!   subject to the run's `max-parallel` groups.
//! * A runner is online while it keeps contacting the fake (3 s grace).

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};
use uuid::Uuid;

use super::jitconfig::{JitConfig, RunnerCredentials, RunnerSettings};
use super::payload::WEB_URL;
use super::state::State;
use super::views::{JobStatus, RunnerStatus, RunnerView, Scope};
use super::{ACTIONS_PATH, OFFLINE_AFTER};

/// GitHub's cap on runners in one group.
pub(super) const MAX_RUNNERS_PER_GROUP: usize = 10_000;

/// A current registration.
#[derive(Debug, Clone)]
pub(super) struct RunnerRecord {
    pub id: u64,
    pub name: String,
    /// Where it is registered.
    pub home: Scope,
    /// `(label id, label name)`.
    pub labels: Vec<(u64, String)>,
    pub group_id: u64,
    pub group_name: String,
    pub client_id: String,
    pub connected: bool,
    /// The runner process asked how to behave (it did, even when told to hang).
    pub asked: bool,
    pub last_seen: Option<Instant>,
    /// The job it took and has not finished.
    pub job: Option<u64>,
    pub version: Option<String>,
    /// The scale set it was registered through (`generatejitconfig`), if any.
    pub scale_set_id: Option<u64>,
}

impl RunnerRecord {
    pub fn status(&self, now: Instant) -> RunnerStatus {
        let fresh = self
            .last_seen
            .is_some_and(|seen| now.duration_since(seen) < OFFLINE_AFTER);
        if self.connected && fresh {
            RunnerStatus::Online
        } else {
            RunnerStatus::Offline
        }
    }

    pub fn view(&self, now: Instant) -> RunnerView {
        RunnerView {
            id: self.id,
            name: self.name.clone(),
            repo: self.home.name().to_owned(),
            scope: self.home.clone(),
            group_id: self.group_id,
            labels: self.labels.iter().map(|(_, name)| name.clone()).collect(),
            status: self.status(now),
            busy: self.job.is_some(),
            connected: self.connected,
            asked: self.asked,
            version: self.version.clone(),
        }
    }

    /// The runner object of the REST API.
    pub fn json(&self, now: Instant) -> Value {
        let labels: Vec<Value> = self
            .labels
            .iter()
            .map(|(id, name)| json!({ "id": id, "name": name, "type": "custom" }))
            .collect();
        json!({
            "id": self.id, "name": self.name,
            "os": if self.connected { "Linux" } else { "unknown" },
            "status": self.status(now).as_str(), "busy": self.job.is_some(),
            "ephemeral": true, "runner_group_id": self.group_id,
            "labels": labels, "version": self.version,
        })
    }
}

/// A validated `generate-jitconfig` request.
#[derive(Debug, Clone)]
pub(super) struct Registration {
    /// Where it registers (canonical spelling).
    pub home: Scope,
    pub name: String,
    pub group_id: u64,
    pub labels: Vec<String>,
    pub work_folder: String,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RegisterError {
    GroupNotFound,
    AlreadyExists,
    GroupFull,
}

/// Why a deletion was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DeleteError {
    NotFound,
    Busy(String),
}

/// Result of checking a runner's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunnerAuth {
    Live,
    /// The registration was deleted; the runner must exit.
    Retired,
    Unknown,
}

/// What happened to a `complete` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CompleteOutcome {
    Completed,
    Cancelled,
    NotAssigned,
}

impl State {
    /// Creates a registration; answers its REST object and the encoded config.
    pub fn register_runner(&mut self, reg: Registration) -> Result<(Value, String), RegisterError> {
        let group_name = self
            .group_name(&reg.home, reg.group_id)
            .ok_or(RegisterError::GroupNotFound)?;
        let at_home = self.runners.values().filter(|r| r.home == reg.home);
        if at_home.clone().any(|r| r.name == reg.name) {
            return Err(RegisterError::AlreadyExists);
        }
        if at_home.filter(|r| r.group_id == reg.group_id).count() >= MAX_RUNNERS_PER_GROUP {
            return Err(RegisterError::GroupFull);
        }
        let id = self.next_runner_id;
        self.next_runner_id += 1;
        let labels = reg.labels.iter().map(|l| (self.label_id(l), l.clone())).collect();
        let record = RunnerRecord {
            id,
            name: reg.name.clone(),
            home: reg.home.clone(),
            labels,
            group_id: reg.group_id,
            group_name,
            client_id: Uuid::new_v4().simple().to_string(),
            connected: false,
            asked: false,
            last_seen: None,
            job: None,
            version: None,
            scale_set_id: None,
        };
        let encoded = self.jit_config(&record, &reg.work_folder).encode();
        let body = record.json(Instant::now());
        self.runners.insert(id, record);
        self.registrations_ever.push(reg.name);
        self.jit_configs_issued.push(encoded.clone());
        let live = self.runners.values().filter(|r| r.home == reg.home).count();
        let peak = self.peak_live.entry(reg.home.name().to_owned()).or_default();
        *peak = (*peak).max(live);
        Ok((body, encoded))
    }

    fn jit_config(&self, runner: &RunnerRecord, work_folder: &str) -> JitConfig {
        let server = format!("{}{ACTIONS_PATH}", self.root_url);
        let github_url = match &runner.home {
            Scope::Enterprise(slug) => format!("{WEB_URL}/enterprises/{slug}"),
            home => format!("{WEB_URL}/{}", home.name()),
        };
        JitConfig {
            settings: RunnerSettings {
                agent_id: runner.id,
                agent_name: runner.name.clone(),
                pool_id: runner.group_id,
                pool_name: runner.group_name.clone(),
                server_url: server.clone(),
                server_url_v2: server.clone(),
                github_url,
                work_folder: work_folder.to_owned(),
                ephemeral: true,
                use_v2_flow: true,
            },
            credentials: RunnerCredentials {
                client_id: runner.client_id.clone(),
                authorization_url: format!("{server}oauth2/token"),
            },
        }
    }

    /// Stable ids for label names, as GitHub numbers labels.
    fn label_id(&mut self, name: &str) -> u64 {
        let next = self.label_ids.len() as u64 + 1;
        *self.label_ids.entry(name.to_ascii_lowercase()).or_insert(next)
    }

    /// Deletes a registration through the API; a busy runner cannot be deleted.
    pub fn delete_runner(&mut self, home: &Scope, id: u64) -> Result<(), DeleteError> {
        let runner = self
            .runners
            .get(&id)
            .filter(|r| r.home == *home)
            .ok_or(DeleteError::NotFound)?;
        if runner.job.is_some() {
            return Err(DeleteError::Busy(runner.name.clone()));
        }
        self.retire_runner(id);
        Ok(())
    }

    /// Removes a registration; its process learns it at its next contact.
    pub fn retire_runner(&mut self, id: u64) {
        if let Some(runner) = self.runners.remove(&id) {
            self.retired.insert(id, runner.client_id);
        }
    }

    pub fn authenticate(&self, agent_id: u64, client_id: &str) -> RunnerAuth {
        if self
            .runners
            .get(&agent_id)
            .is_some_and(|r| r.client_id == client_id)
        {
            RunnerAuth::Live
        } else if self.retired.get(&agent_id).is_some_and(|c| c == client_id) {
            RunnerAuth::Retired
        } else {
            RunnerAuth::Unknown
        }
    }

    /// Records that the runner process is alive.
    pub fn touch(&mut self, agent_id: u64) {
        if let Some(runner) = self.runners.get_mut(&agent_id) {
            runner.last_seen = Some(Instant::now());
        }
    }

    /// Gives the runner a job, or its current one again if it asks twice.
    pub fn acquire(&mut self, agent_id: u64) -> Option<u64> {
        self.touch(agent_id);
        let runner = self.runners.get(&agent_id)?;
        if let Some(job) = runner.job {
            return Some(job);
        }
        let job_id = self.next_job_for(agent_id)?;
        self.start_job(agent_id, job_id);
        Some(job_id)
    }

    /// The oldest queued job the runner may take: of its repository, or of every
    /// repository its organisation or enterprise holds.
    fn next_job_for(&self, agent_id: u64) -> Option<u64> {
        let runner = self.runners.get(&agent_id)?;
        let labels: HashSet<String> = runner
            .labels
            .iter()
            .map(|(_, l)| l.to_ascii_lowercase())
            .collect();
        let takes = |job_id: &u64| {
            self.jobs.get(job_id).is_some_and(|job| {
                job.view
                    .labels
                    .iter()
                    .all(|l| labels.contains(&l.to_ascii_lowercase()))
                    && self.group_has_room(*job_id)
                    && self.scale_set_allows(runner.scale_set_id, *job_id)
            })
        };
        self.queued
            .iter()
            .filter(|(repo, _)| self.serves(&runner.home, repo))
            .filter_map(|(_, queue)| queue.iter().find(|(_, job_id)| takes(job_id)))
            .min()
            .map(|&(_, job_id)| job_id)
    }

    /// Whether the job's `max-parallel` group has a free slot.
    fn group_has_room(&self, job_id: u64) -> bool {
        let Some(job) = self.jobs.get(&job_id) else {
            return false;
        };
        let Some((group, max)) = &job.dispatch_group else {
            return true;
        };
        let Some(run) = self.runs.get(&job.view.run_id) else {
            return true;
        };
        let running = run
            .job_ids
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| j.view.status == JobStatus::InProgress)
            .filter(|j| j.dispatch_group.as_ref().is_some_and(|(g, _)| g == group))
            .count();
        running < *max as usize
    }

    fn start_job(&mut self, agent_id: u64, job_id: u64) {
        self.dequeue(job_id);
        let Some(runner) = self.runners.get_mut(&agent_id) else {
            return;
        };
        runner.job = Some(job_id);
        let (runner_id, runner_name) = (runner.id, runner.name.clone());
        let (group_id, group_name) = (runner.group_id, runner.group_name.clone());
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.view.status = JobStatus::InProgress;
            job.view.started_at = SystemTime::now();
            job.view.runner_id = Some(runner_id);
            job.view.runner_name = Some(runner_name);
            job.view.runner_group_id = Some(group_id);
            job.view.runner_group_name = Some(group_name);
        }
        self.emit_job_event(job_id, "in_progress");
    }

    /// Job-lock renewal: true while the job still runs on this runner.
    /// A cancelled job ends the runner (its registration is removed).
    pub fn renew(&mut self, agent_id: u64, job_id: u64) -> bool {
        self.touch(agent_id);
        let running = self.runners.get(&agent_id).is_some_and(|r| r.job == Some(job_id))
            && self
                .jobs
                .get(&job_id)
                .is_some_and(|j| j.view.status == JobStatus::InProgress);
        if !running {
            self.retire_runner(agent_id);
        }
        running
    }

    /// The runner finished its job: complete it, then remove the
    /// single-use registration.
    pub fn complete(&mut self, agent_id: u64, job_id: u64) -> CompleteOutcome {
        self.touch(agent_id);
        if self.runners.get(&agent_id).is_none_or(|r| r.job != Some(job_id)) {
            return CompleteOutcome::NotAssigned;
        }
        let Some(job) = self.jobs.get(&job_id) else {
            return CompleteOutcome::NotAssigned;
        };
        let outcome = if job.view.status == JobStatus::InProgress {
            let conclusion = job.planned_conclusion.clone();
            self.finish_job(job_id, &conclusion);
            CompleteOutcome::Completed
        } else {
            CompleteOutcome::Cancelled
        };
        self.retire_runner(agent_id);
        outcome
    }
}
