//! The fake's world: repositories, files, runs, jobs, deliveries and calls,
//! plus the job life cycle (queue, approve, cancel) and webhook emission.
//!
//! Everything lives in one [`State`] behind one `std::sync::Mutex`, so every
//! transition is atomic (no lock is ever held across an await). Transitions
//! that produce webhooks put them in an outbox; the caller drains it after
//! unlocking and hands each delivery to a background task.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use uuid::Uuid;

use super::accounts::Account;
use super::config::{FakeGitHubConfig, WebhookTarget};
use super::faults::{FaultRule, Limits, RateBook, Route};
use super::payload::{RunFacts, workflow_job_payload};
use super::records::{CallRecord, DeliveryInfo, DeliveryMode, DeliveryRecord};
use super::runners::RunnerRecord;
use super::scenario::{JobSpec, QueuedRun, RunSpec, RunnerBehavior};
use super::views::{JobStatus, JobView, RepoView};
use super::{DEFAULT_RUNNER_VERSION, JOB_ID_BASE};

/// A user-supplied delivery filter.
pub(super) type DeliveryFilter = dyn Fn(&DeliveryInfo) -> DeliveryMode + Send + Sync;
/// A user-supplied runner behaviour chooser.
pub(super) type BehaviorFn = dyn Fn(&str) -> RunnerBehavior + Send + Sync;

/// What a hook is subscribed to, and whether it is on (`GET …/hooks/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HookSettings {
    pub events: Vec<String>,
    pub active: bool,
}

impl Default for HookSettings {
    fn default() -> Self {
        Self {
            events: vec!["workflow_job".to_owned()],
            active: true,
        }
    }
}

impl HookSettings {
    /// Whether the hook delivers `event` (`*` subscribes to every event; `ping` is always
    /// sent, as when GitHub creates a hook).
    pub fn wants(&self, event: &str) -> bool {
        self.active && (event == "ping" || self.events.iter().any(|e| e == "*" || e == event))
    }
}

/// A workflow run.
#[derive(Debug, Clone)]
pub(super) struct RunRecord {
    pub id: u64,
    pub run_number: u64,
    pub repo: String,
    pub workflow_path: String,
    pub workflow_name: String,
    pub head_sha: String,
    pub head_branch: String,
    pub created_at: SystemTime,
    pub job_ids: Vec<u64>,
}

/// A job: its public view plus what only GitHub knows.
#[derive(Debug, Clone)]
pub(super) struct JobRecord {
    pub view: JobView,
    pub duration: Duration,
    pub planned_conclusion: String,
    pub dispatch_group: Option<(String, u32)>,
    /// Order in which jobs became queued (oldest is dispatched first).
    pub queue_seq: u64,
}

/// A webhook waiting to be sent.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub guid: Uuid,
    pub event: String,
    pub action: Option<String>,
    pub job_id: Option<u64>,
    pub repository_id: Option<u64>,
    pub payload: Arc<Value>,
    pub redelivery: bool,
    /// The one hook a redelivery goes to; `None`: every hook that wants the event.
    pub hook_id: Option<u64>,
}

/// A recorded delivery and what is needed to redeliver it.
#[derive(Debug, Clone)]
pub(super) struct StoredDelivery {
    pub record: DeliveryRecord,
    pub repository_id: Option<u64>,
    pub payload: Arc<Value>,
}

/// The whole world of the fake.
pub(super) struct State {
    /// The REST base: the server's root plus `api_prefix`.
    pub api_url: String,
    /// The server's root (`http://127.0.0.1:PORT`), where the fake Actions service lives.
    pub root_url: String,
    /// `/api/v3` on a GitHub Enterprise Server; empty on github.com and GHE.com.
    pub api_prefix: String,
    pub token: String,
    pub runner_group_id: u64,
    /// Keyed by lower-cased `owner/repo` (GitHub names are case-insensitive).
    pub repos: BTreeMap<String, RepoView>,
    /// Organisations, keyed by lower-cased login.
    pub orgs: BTreeMap<String, Account>,
    /// Enterprises, keyed by lower-cased slug.
    pub enterprises: BTreeMap<String, Account>,
    /// The id the next runner group gets (1 is every account's "Default").
    pub next_group_id: u64,
    /// `(repo, path, ref)` → content.
    pub files: HashMap<(String, String, String), String>,
    pub runs: BTreeMap<u64, RunRecord>,
    pub jobs: BTreeMap<u64, JobRecord>,
    /// Per repo: `(queue_seq, job_id)` of queued jobs, oldest first.
    pub queued: HashMap<String, BTreeSet<(u64, u64)>>,
    pub runners: BTreeMap<u64, RunnerRecord>,
    /// Agent id → client id of deleted registrations (their runner gets 410).
    pub retired: HashMap<u64, String>,
    pub registrations_ever: Vec<String>,
    /// Every encoded JIT config handed out, in order (secrets a client must never log).
    pub jit_configs_issued: Vec<String>,
    pub peak_live: HashMap<String, usize>,
    pub label_ids: HashMap<String, u64>,
    pub deliveries: Vec<StoredDelivery>,
    pub calls: Vec<CallRecord>,
    /// The hooks deliveries go to, by hook id.
    pub webhooks: Vec<(u64, WebhookTarget)>,
    /// The events and `active` flag of hooks set with `set_hook_events`/`set_hook_active`;
    /// a hook not here is active and subscribed to `workflow_job`.
    pub hook_settings: HashMap<u64, HookSettings>,
    /// The `X-OAuth-Scopes` header answers to the token carry (a classic token's scopes);
    /// `None`: no such header, as for a fine-grained token.
    pub token_scopes: Option<String>,
    pub webhook_timeout: Duration,
    pub delivery_filter: Option<Arc<DeliveryFilter>>,
    pub runner_behavior: Option<Arc<BehaviorFn>>,
    pub faults: Vec<FaultRule>,
    pub latency: HashMap<Route, Duration>,
    pub rates: RateBook,
    pub runner_version: String,
    pub next_run_id: u64,
    pub next_job_seq: u64,
    pub next_runner_id: u64,
    pub next_delivery_id: u64,
    pub next_queue_seq: u64,
    pub outbox: Vec<Outgoing>,
    pub app: Option<super::app::FakeApp>,
    /// Installation tokens issued: until when each is good, and its installation.
    pub installation_tokens: HashMap<String, (std::time::Instant, u64)>,
    pub installation_tokens_issued: u64,
    /// Installation tokens issued per installation.
    pub tokens_by_installation: HashMap<u64, u64>,
    /// The installation tokens issued, oldest first.
    pub installation_tokens_in_order: Vec<String>,
    /// Runner scale sets, their sessions and message queues.
    pub scale_sets: super::scaleset::ScaleSetBook,
}

impl State {
    pub fn new(config: &FakeGitHubConfig, root_url: String) -> Self {
        Self {
            api_url: format!("{root_url}{}", config.api_prefix),
            root_url,
            api_prefix: config.api_prefix.clone(),
            orgs: BTreeMap::new(),
            enterprises: BTreeMap::new(),
            next_group_id: 2,
            tokens_by_installation: HashMap::new(),
            token: config.token.clone(),
            app: config.app.clone(),
            installation_tokens: HashMap::new(),
            installation_tokens_issued: 0,
            installation_tokens_in_order: Vec::new(),
            runner_group_id: config.runner_group_id,
            repos: BTreeMap::new(),
            files: HashMap::new(),
            runs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            queued: HashMap::new(),
            runners: BTreeMap::new(),
            retired: HashMap::new(),
            registrations_ever: Vec::new(),
            jit_configs_issued: Vec::new(),
            peak_live: HashMap::new(),
            label_ids: HashMap::new(),
            deliveries: Vec::new(),
            calls: Vec::new(),
            webhooks: Vec::new(),
            hook_settings: HashMap::new(),
            token_scopes: None,
            webhook_timeout: Duration::from_secs(10),
            delivery_filter: None,
            runner_behavior: None,
            faults: Vec::new(),
            latency: HashMap::new(),
            rates: RateBook::new(Limits::default()),
            runner_version: DEFAULT_RUNNER_VERSION.to_owned(),
            next_run_id: 1,
            next_job_seq: 0,
            next_runner_id: 1,
            next_delivery_id: 1,
            next_queue_seq: 0,
            outbox: Vec::new(),
            scale_sets: super::scaleset::ScaleSetBook::default(),
        }
    }

    pub fn take_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// The repository named `full_name` (case-insensitively).
    pub fn repo(&self, full_name: &str) -> Option<&RepoView> {
        self.repos.get(&full_name.to_ascii_lowercase())
    }

    pub fn add_repo(&mut self, repo: RepoView) {
        self.note_owner(&repo);
        self.repos
            .entry(repo.full_name.to_ascii_lowercase())
            .or_insert(repo);
    }

    /// Latency configured for `route` (falling back to [`Route::Any`]).
    pub fn latency_for(&self, route: Route) -> Duration {
        self.latency
            .get(&route)
            .or_else(|| self.latency.get(&Route::Any))
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// Creates a run and its jobs and emits their `queued` (and, for held
    /// jobs, `waiting`) events, all at once as GitHub does.
    pub fn queue_run(&mut self, spec: RunSpec) -> QueuedRun {
        if self.repo(&spec.repo).is_none() {
            self.add_repo(RepoView::organization(&spec.repo));
        }
        let repo = self
            .repo(&spec.repo)
            .map_or_else(|| spec.repo.clone(), |r| r.full_name.clone());
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        let now = SystemTime::now();
        let mut run = RunRecord {
            id: run_id,
            run_number: run_id,
            repo,
            workflow_path: spec.workflow_path,
            workflow_name: spec.workflow_name,
            head_sha: spec.head_sha.unwrap_or_else(random_sha),
            head_branch: spec.head_branch,
            created_at: now,
            job_ids: Vec::new(),
        };
        for job_spec in spec.jobs {
            let id = self.create_job(&run, job_spec, now);
            run.job_ids.push(id);
        }
        let job_ids = run.job_ids.clone();
        self.runs.insert(run_id, run);
        for &id in &job_ids {
            self.emit_job_event(id, "queued");
            if self
                .jobs
                .get(&id)
                .is_some_and(|j| j.view.status == JobStatus::Waiting)
            {
                self.emit_job_event(id, "waiting");
            }
        }
        QueuedRun { run_id, job_ids }
    }

    fn create_job(&mut self, run: &RunRecord, spec: JobSpec, now: SystemTime) -> u64 {
        let id = JOB_ID_BASE + self.next_job_seq;
        self.next_job_seq += 1;
        let view = JobView {
            id,
            run_id: run.id,
            run_attempt: 1,
            repo: run.repo.clone(),
            name: spec.name,
            workflow_name: run.workflow_name.clone(),
            head_sha: run.head_sha.clone(),
            head_branch: run.head_branch.clone(),
            labels: spec.labels,
            status: if spec.waiting {
                JobStatus::Waiting
            } else {
                JobStatus::Queued
            },
            conclusion: None,
            runner_id: None,
            runner_name: None,
            runner_group_id: None,
            runner_group_name: None,
            created_at: now,
            started_at: now,
            completed_at: None,
        };
        let record = JobRecord {
            view,
            duration: spec.duration,
            planned_conclusion: spec.conclusion,
            dispatch_group: spec.dispatch_group,
            queue_seq: 0,
        };
        self.jobs.insert(id, record);
        if !spec.waiting {
            self.enqueue(id);
        }
        id
    }

    /// Marks a job queued and makes it visible to dispatch.
    fn enqueue(&mut self, job_id: u64) {
        let seq = self.next_queue_seq;
        self.next_queue_seq += 1;
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.view.status = JobStatus::Queued;
            job.queue_seq = seq;
            let key = job.view.repo.to_ascii_lowercase();
            self.queued.entry(key).or_default().insert((seq, job_id));
        }
    }

    /// Removes a job from the dispatch queue (it started or was cancelled).
    pub fn dequeue(&mut self, job_id: u64) {
        if let Some(job) = self.jobs.get(&job_id) {
            let key = job.view.repo.to_ascii_lowercase();
            if let Some(set) = self.queued.get_mut(&key) {
                set.remove(&(job.queue_seq, job_id));
            }
        }
    }

    /// waiting → queued, with a second `queued` event (status queued now).
    pub fn approve_job(&mut self, job_id: u64) -> bool {
        if self
            .jobs
            .get(&job_id)
            .is_none_or(|j| j.view.status != JobStatus::Waiting)
        {
            return false;
        }
        self.enqueue(job_id);
        self.emit_job_event(job_id, "queued");
        true
    }

    /// Cancels a job that has not completed. A running job's runner learns
    /// it at its next renewal and is then removed.
    pub fn cancel_job(&mut self, job_id: u64) -> bool {
        let Some(status) = self.jobs.get(&job_id).map(|j| j.view.status) else {
            return false;
        };
        if status == JobStatus::Completed {
            return false;
        }
        self.dequeue(job_id);
        self.finish_job(job_id, "cancelled");
        true
    }

    /// Completes a job with `conclusion` and emits `completed`.
    pub fn finish_job(&mut self, job_id: u64, conclusion: &str) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.view.status = JobStatus::Completed;
            job.view.conclusion = Some(conclusion.to_owned());
            job.view.completed_at = Some(SystemTime::now());
            self.emit_job_event(job_id, "completed");
        }
    }

    /// Emits a `workflow_job` event with the job's current state.
    pub fn emit_job_event(&mut self, job_id: u64, action: &str) -> Option<Uuid> {
        self.scale_set_note(job_id, action);
        let job = self.jobs.get(&job_id)?;
        let repo = self.repo(&job.view.repo)?;
        let payload = workflow_job_payload(&self.api_url, action, &job.view, repo);
        let guid = Uuid::new_v4();
        self.outbox.push(Outgoing {
            guid,
            event: "workflow_job".to_owned(),
            action: Some(action.to_owned()),
            job_id: Some(job_id),
            repository_id: Some(repo.id),
            payload: Arc::new(payload),
            redelivery: false,
            hook_id: None,
        });
        Some(guid)
    }

    /// Emits an arbitrary event; action, job and repository are read from the body.
    pub fn emit_raw(&mut self, event: &str, body: Value) -> Uuid {
        let guid = Uuid::new_v4();
        self.outbox.push(Outgoing {
            guid,
            event: event.to_owned(),
            action: body.get("action").and_then(Value::as_str).map(str::to_owned),
            job_id: body.pointer("/workflow_job/id").and_then(Value::as_u64),
            repository_id: body.pointer("/repository/id").and_then(Value::as_u64),
            payload: Arc::new(body),
            redelivery: false,
            hook_id: None,
        });
        guid
    }

    /// Status and conclusion of a run, derived from its jobs: completed when
    /// all are, waiting when all wait, queued when none has started, else
    /// in progress (a run in progress can still hold queued jobs).
    pub fn run_status(&self, run: &RunRecord) -> (&'static str, Option<&'static str>) {
        let jobs: Vec<&JobView> = run
            .job_ids
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| &j.view)
            .collect();
        let all = |pred: &dyn Fn(JobStatus) -> bool| jobs.iter().all(|j| pred(j.status));
        if all(&|s| s == JobStatus::Completed) {
            let has = |c: &str| jobs.iter().any(|j| j.conclusion.as_deref() == Some(c));
            let conclusion = if has("failure") {
                "failure"
            } else if has("cancelled") {
                "cancelled"
            } else {
                "success"
            };
            return ("completed", Some(conclusion));
        }
        if all(&|s| s == JobStatus::Waiting) {
            return ("waiting", None);
        }
        if all(&|s| matches!(s, JobStatus::Queued | JobStatus::Waiting)) {
            return ("queued", None);
        }
        ("in_progress", None)
    }

    /// What the REST run object needs.
    pub fn run_facts<'a>(&self, run: &'a RunRecord) -> RunFacts<'a> {
        let (status, conclusion) = self.run_status(run);
        let updated_at = run
            .job_ids
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| j.view.completed_at.unwrap_or(j.view.started_at))
            .max()
            .unwrap_or(run.created_at);
        RunFacts {
            id: run.id,
            run_number: run.run_number,
            name: &run.workflow_name,
            path: &run.workflow_path,
            head_sha: &run.head_sha,
            head_branch: &run.head_branch,
            status,
            conclusion,
            created_at: run.created_at,
            updated_at,
        }
    }
}

/// A random 40-hex commit sha.
fn random_sha() -> String {
    (0..20).map(|_| format!("{:02x}", fastrand::u8(..))).collect()
}
