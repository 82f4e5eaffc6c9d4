//! The runner scale set side of the fake Actions service
//! (`/work/shared/docs/scaleset-contract.md`, cited as "contract §n"): scale sets,
//! message sessions, the message queue and job acquisition, kept in the fake GitHub's
//! one [`State`] so that scale-set runners take jobs through the same dispatch as every
//! other fake runner.
//!
//! * A queued job whose labels a scale set carries (and whose repository the set's
//!   scope serves) is offered to every such set as `JobAvailable`; the first set to
//!   acquire it gets `JobAssigned`, and only that set's runners may take it (§7).
//! * The job's start and end reach the acquiring set as `JobStarted`/`JobCompleted`;
//!   a job cancelled before anyone acquired it reaches every set it was offered to as
//!   `JobCompleted{result:"canceled"}` with a zero `runnerAssignTime` (§6).
//! * Job messages wait in the set's `pending` list until a poll packs up to 50 into a
//!   message. A message is redelivered (to a poll whose `lastMessageId` is below its
//!   id) until it is deleted; every delivery and every deletion is recorded so a test
//!   can check that nothing was lost or acknowledged twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use super::JOB_ID_BASE;
use super::faults::epoch_secs;
use super::state::State;
use super::time::rfc3339;
use super::views::{JobStatus, Scope};

/// How many job messages one queue message carries at most (contract §6).
pub const MAX_JOBS_PER_MESSAGE: usize = 50;
/// The signing key of the fake's admin and queue JWTs (nothing outside the fake checks them).
const JWT_SECRET: &[u8] = b"fake-actions-service-signing-key";
/// First `runnerRequestId`; kept apart from job ids so a client cannot confuse them.
const REQUEST_ID_BASE: u64 = 7_000_000;
/// First message id (real ids look like 100000171, contract §6).
const FIRST_MESSAGE_ID: u64 = 100_000_001;

/// Claims of the fake's admin and message-queue tokens: a real JWT with `exp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TokenClaims {
    /// `admin` or `queue`.
    pub sub: String,
    /// The config URL's scope, as `repo:o/r`, `org:o` or `ent:e` (admin tokens).
    #[serde(default)]
    pub scope: String,
    /// The session id (queue tokens).
    #[serde(default)]
    pub sid: String,
    /// Makes every token unique, even two issued in the same second.
    #[serde(default)]
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

/// One scale set.
#[derive(Debug, Clone)]
pub(super) struct ScaleSetRecord {
    pub id: u64,
    pub name: String,
    pub home: Scope,
    pub group_id: u64,
    pub group_name: String,
    /// All labels (the name first), as the set was created or last updated.
    pub labels: Vec<String>,
    pub disable_update: bool,
    pub created_on: SystemTime,
    /// Job messages not yet packed into a queue message.
    pub pending: Vec<Value>,
}

/// A live message session.
#[derive(Debug, Clone)]
pub(super) struct SessionRecord {
    pub id: Uuid,
    pub owner: String,
    /// When its listener last polled (or the session was made or refreshed).
    pub last_seen: Instant,
    /// Polls of it in flight: a listener in a long poll is alive.
    pub polling: u32,
}

impl SessionRecord {
    /// Whether the session still holds its set: someone polls it, or did within `lapse`
    /// (a crashed listener's session lapses; the real lapse time is unknown, contract §13).
    pub fn alive(&self, now: Instant, lapse: Duration) -> bool {
        self.polling > 0 || now.duration_since(self.last_seen) < lapse
    }
}

/// A queue message, as first sent.
#[derive(Debug, Clone)]
pub(super) struct MessageRecord {
    pub id: u64,
    pub set_id: u64,
    pub jobs: Vec<Value>,
    pub deliveries: u32,
    pub deletions: u32,
}

/// One long poll as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRecord {
    pub scale_set_id: u64,
    pub last_message_id: u64,
    /// The `X-ScaleSetMaxCapacity` header, if sent and numeric.
    pub max_capacity: Option<u64>,
}

/// A scale set as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSetView {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub runner_group_id: u64,
    pub labels: Vec<String>,
}

/// A queue message as tests see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSetMessageView {
    pub id: u64,
    pub scale_set_id: u64,
    /// The job messages it carried (each with its `messageType`).
    pub jobs: Vec<Value>,
    /// How many polls it was answered to (more than one: redelivered).
    pub deliveries: u32,
    /// How many `DELETE`s removed it (must end at exactly one).
    pub deletions: u32,
}

/// The outcome of one session create, for tests of conflicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCreate {
    pub scale_set_id: u64,
    pub status: u16,
    pub at: Instant,
}

/// Everything the fake knows about scale sets.
pub(super) struct ScaleSetBook {
    pub sets: BTreeMap<u64, ScaleSetRecord>,
    pub next_set_id: u64,
    /// Registration tokens: the scope they were issued for and until when they are good.
    pub registration_tokens: HashMap<String, (Scope, Instant)>,
    /// The live session of each set.
    pub sessions: HashMap<u64, SessionRecord>,
    /// Scale set names held by a stale session until the instant (a crashed predecessor).
    pub held: HashMap<String, Instant>,
    pub messages: BTreeMap<u64, MessageRecord>,
    pub next_message_id: u64,
    pub polls: Vec<PollRecord>,
    /// Session refreshes answered 200.
    pub refreshes: u64,
    /// How long an unpolled session holds its set.
    pub session_lapse: Duration,
    /// Admin tokens handed out by `runner-registration`.
    pub admin_tokens_issued: u64,
    /// Every `generatejitconfig` request: the runner name and when it arrived.
    pub jit_requests: Vec<(String, SystemTime)>,
    /// Every admin and queue token handed out (secrets a client must never log).
    pub tokens: Vec<String>,
    pub session_creates: Vec<SessionCreate>,
    pub admin_ttl: Duration,
    pub queue_ttl: Duration,
    /// How long a poll waits for a message before answering 202 (real: about 50 s).
    pub poll_hold: Duration,
    /// Whether jobs arrive as `JobAvailable` and must be acquired (GHES) or as
    /// `JobAssigned` (github.com).
    pub acquire_required: bool,
    /// Job id → the set that acquired it.
    pub acquired: HashMap<u64, u64>,
    /// Job id → the sets it was offered to.
    pub offered: HashMap<u64, Vec<u64>>,
    /// Woken whenever a set gets a job message.
    pub notify: Arc<Notify>,
    /// `runner-registration` answers 403, as for credentials without rights to administer
    /// the scope's runners.
    pub registration_refused: bool,
}

impl Default for ScaleSetBook {
    fn default() -> Self {
        Self {
            sets: BTreeMap::new(),
            next_set_id: 1,
            registration_tokens: HashMap::new(),
            registration_refused: false,
            sessions: HashMap::new(),
            held: HashMap::new(),
            messages: BTreeMap::new(),
            next_message_id: FIRST_MESSAGE_ID,
            polls: Vec::new(),
            refreshes: 0,
            session_lapse: Duration::from_secs(120),
            admin_tokens_issued: 0,
            tokens: Vec::new(),
            jit_requests: Vec::new(),
            session_creates: Vec::new(),
            admin_ttl: Duration::from_secs(3600),
            queue_ttl: Duration::from_secs(50 * 60),
            poll_hold: Duration::from_secs(50),
            acquire_required: true,
            acquired: HashMap::new(),
            offered: HashMap::new(),
            notify: Arc::new(Notify::new()),
        }
    }
}

/// The scope tag an admin token carries.
pub(super) fn scope_tag(scope: &Scope) -> String {
    match scope {
        Scope::Repository(n) => format!("repo:{n}"),
        Scope::Organization(n) => format!("org:{n}"),
        Scope::Enterprise(n) => format!("ent:{n}"),
        Scope::User(n) => format!("user:{n}"),
    }
}

/// The scope a config URL names: `https://<host>/<org>`, `…/<org>/<repo>` or
/// `…/enterprises/<ent>` (contract §1; the path's segment count decides).
pub(super) fn scope_of_config_url(url: &str) -> Option<Scope> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (_host, path) = rest.split_once('/')?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["enterprises", ent] => Some(Scope::Enterprise((*ent).to_owned())),
        [org] => Some(Scope::Organization((*org).to_owned())),
        [owner, repo] => Some(Scope::Repository(format!("{owner}/{repo}"))),
        _ => None,
    }
}

/// Signs a token of kind `sub` living `ttl`.
pub(super) fn sign_token(sub: &str, scope: &str, sid: &str, ttl: Duration) -> String {
    let iat = epoch_secs(SystemTime::now());
    let claims = TokenClaims {
        sub: sub.to_owned(),
        scope: scope.to_owned(),
        sid: sid.to_owned(),
        jti: Uuid::new_v4().simple().to_string(),
        iat,
        exp: iat + ttl.as_secs().max(1),
    };
    let Ok(key) = EncodingKey::from_secret(JWT_SECRET) else {
        return String::new();
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap_or_default()
}

/// The claims of a token of kind `sub` that is well signed and not expired.
pub(super) fn verify_token(token: &str, sub: &str) -> Option<TokenClaims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let key = DecodingKey::from_secret(JWT_SECRET).ok()?;
    let data = jsonwebtoken::decode::<TokenClaims>(token, &key, &validation).ok()?;
    (data.claims.sub == sub).then_some(data.claims)
}

/// The `runnerRequestId` of a job, and back.
pub(super) fn request_id(job_id: u64) -> u64 {
    REQUEST_ID_BASE + job_id.saturating_sub(JOB_ID_BASE)
}

fn job_of_request(request_id: u64) -> Option<u64> {
    request_id.checked_sub(REQUEST_ID_BASE).map(|n| n + JOB_ID_BASE)
}

/// The scale set's own (string) id of a job; deliberately unlike the REST job id, since
/// their relation is unconfirmed (contract §13).
pub fn scale_set_job_id(job_id: u64) -> String {
    Uuid::from_u64_pair(0x5ca1_e5e7, job_id).to_string()
}

impl ScaleSetRecord {
    /// The RunnerScaleSet JSON (contract §4).
    pub fn json(&self, statistics: &Value) -> Value {
        let labels: Vec<Value> = self
            .labels
            .iter()
            .map(|l| json!({ "type": "System", "name": l }))
            .collect();
        json!({
            "id": self.id, "name": self.name,
            "runnerGroupId": self.group_id, "runnerGroupName": self.group_name,
            "labels": labels, "RunnerSetting": { "disableUpdate": self.disable_update },
            "createdOn": rfc3339(self.created_on),
            "runnerJitConfigUrl": format!("_apis/runtime/runnerscalesets/{}/generatejitconfig", self.id),
            "statistics": statistics,
        })
    }

    fn carries(&self, labels: &[String]) -> bool {
        labels
            .iter()
            .all(|l| self.labels.iter().any(|own| own.eq_ignore_ascii_case(l)))
    }
}

impl State {
    /// The statistics of set `set_id` (contract §6), from the jobs as they are now.
    pub fn scale_set_statistics(&self, set_id: u64) -> Value {
        let book = &self.scale_sets;
        let status = |job: &u64| self.jobs.get(job).map(|j| j.view.status);
        let available = book
            .offered
            .iter()
            .filter(|(job, sets)| sets.contains(&set_id) && !book.acquired.contains_key(job))
            .filter(|(job, _)| status(job) == Some(JobStatus::Queued))
            .count();
        let mine: Vec<JobStatus> = book
            .acquired
            .iter()
            .filter(|(_, s)| **s == set_id)
            .filter_map(|(job, _)| status(job))
            .collect();
        let acquired = mine.iter().filter(|s| **s == JobStatus::Queued).count();
        let running = mine.iter().filter(|s| **s == JobStatus::InProgress).count();
        let runners: Vec<bool> = self
            .runners
            .values()
            .filter(|r| r.scale_set_id == Some(set_id))
            .map(|r| r.job.is_some())
            .collect();
        let busy = runners.iter().filter(|b| **b).count();
        json!({
            "totalAvailableJobs": available, "totalAcquiredJobs": acquired,
            "totalAssignedJobs": acquired + running, "totalRunningJobs": running,
            "totalRegisteredRunners": runners.len(), "totalBusyRunners": busy,
            "totalIdleRunners": runners.len() - busy,
        })
    }

    /// One job message of `kind` about `job_id` (contract §6).
    fn job_message(&self, kind: &str, job_id: u64, result: Option<&str>) -> Option<Value> {
        let job = self.jobs.get(&job_id)?;
        let run = self.runs.get(&job.view.run_id)?;
        let (owner, repo) = job.view.repo.split_once('/').unwrap_or(("", &job.view.repo));
        let zero = "0001-01-01T00:00:00Z".to_owned();
        let assigned = self.scale_sets.acquired.contains_key(&job_id);
        let started = job.view.runner_name.is_some();
        let mut message = json!({
            "messageType": kind,
            "runnerRequestId": request_id(job_id),
            "repositoryName": repo, "ownerName": owner,
            "jobId": scale_set_job_id(job_id),
            "jobWorkflowRef": format!("{}/{}@refs/heads/{}", job.view.repo, run.workflow_path, run.head_branch),
            "jobDisplayName": job.view.name,
            "workflowRunId": run.id,
            "eventName": "push",
            "requestLabels": job.view.labels,
            "queueTime": rfc3339(job.view.created_at),
            "scaleSetAssignTime": if assigned { rfc3339(SystemTime::now()) } else { zero.clone() },
            "runnerAssignTime": if started { rfc3339(job.view.started_at) } else { zero.clone() },
            "finishTime": job.view.completed_at.map_or(zero, rfc3339),
        });
        if kind == "JobAvailable" {
            message["acquireJobUrl"] = json!(format!(
                "{}/_apis/runtime/runnerscalesets/acquirejob/{}",
                self.root_url,
                request_id(job_id)
            ));
        }
        if matches!(kind, "JobStarted" | "JobCompleted") {
            message["runnerId"] = json!(job.view.runner_id.unwrap_or(0));
            message["runnerName"] = json!(job.view.runner_name.clone().unwrap_or_default());
        }
        if let Some(result) = result {
            message["result"] = json!(result);
        }
        Some(message)
    }

    fn push_job_message(&mut self, set_id: u64, message: Option<Value>) {
        if let (Some(message), Some(set)) = (message, self.scale_sets.sets.get_mut(&set_id)) {
            set.pending.push(message);
            self.scale_sets.notify.notify_waiters();
        }
    }

    /// Feeds a job's transition (the webhook action it emitted) to the scale sets.
    pub fn scale_set_note(&mut self, job_id: u64, action: &str) {
        if self.scale_sets.sets.is_empty() {
            return;
        }
        match action {
            "queued" => self.offer_job(job_id),
            "in_progress" => {
                if let Some(&set) = self.scale_sets.acquired.get(&job_id) {
                    let message = self.job_message("JobStarted", job_id, None);
                    self.push_job_message(set, message);
                }
            }
            "completed" => self.end_job(job_id),
            _ => {}
        }
    }

    fn offer_job(&mut self, job_id: u64) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        if job.view.status != JobStatus::Queued || self.scale_sets.offered.contains_key(&job_id) {
            return;
        }
        let repo_key = job.view.repo.to_ascii_lowercase();
        let sets: Vec<u64> = self
            .scale_sets
            .sets
            .values()
            .filter(|s| s.carries(&job.view.labels) && self.serves(&s.home, &repo_key))
            .map(|s| s.id)
            .collect();
        if sets.is_empty() {
            return;
        }
        self.scale_sets.offered.insert(job_id, sets.clone());
        if self.scale_sets.acquire_required {
            for set in sets {
                let message = self.job_message("JobAvailable", job_id, None);
                self.push_job_message(set, message);
            }
        } else {
            self.scale_sets.acquired.insert(job_id, sets[0]);
            let message = self.job_message("JobAssigned", job_id, None);
            self.push_job_message(sets[0], message);
        }
    }

    fn end_job(&mut self, job_id: u64) {
        let result = self
            .jobs
            .get(&job_id)
            .and_then(|j| j.view.conclusion.clone())
            .unwrap_or_default();
        // The scale set API spells it the American way (contract §6).
        let result = if result == "cancelled" {
            "canceled".to_owned()
        } else {
            result
        };
        let sets = match self.scale_sets.acquired.get(&job_id) {
            Some(&set) => vec![set],
            None => self.scale_sets.offered.get(&job_id).cloned().unwrap_or_default(),
        };
        for set in sets {
            let message = self.job_message("JobCompleted", job_id, Some(&result));
            self.push_job_message(set, message);
        }
    }

    /// `acquirejobs`: the ids of the jobs the set now holds (already its own, or queued
    /// and offered to it and nobody else's yet).
    pub fn acquire_jobs(&mut self, set_id: u64, request_ids: &[u64]) -> Vec<u64> {
        let mut acquired = Vec::new();
        for &request in request_ids {
            let Some(job_id) = job_of_request(request) else {
                continue;
            };
            let queued = self
                .jobs
                .get(&job_id)
                .is_some_and(|j| j.view.status == JobStatus::Queued);
            let offered = self
                .scale_sets
                .offered
                .get(&job_id)
                .is_some_and(|sets| sets.contains(&set_id));
            match self.scale_sets.acquired.get(&job_id) {
                Some(&owner) if owner == set_id => acquired.push(request),
                Some(_) => {}
                None if queued && offered => {
                    self.scale_sets.acquired.insert(job_id, set_id);
                    let message = self.job_message("JobAssigned", job_id, None);
                    self.push_job_message(set_id, message);
                    acquired.push(request);
                }
                None => {}
            }
        }
        acquired
    }

    /// Whether a runner of `runner_set` (None: not a scale-set runner) may take `job_id`:
    /// a job acquired by a set goes only to that set's runners, and a set's runners take
    /// only the jobs their set acquired.
    pub fn scale_set_allows(&self, runner_set: Option<u64>, job_id: u64) -> bool {
        self.scale_sets.acquired.get(&job_id).copied() == runner_set
    }

    /// The next message for a poll of set `set_id` after `last`: the oldest undeleted one
    /// above `last`, else a new one packed from pending job messages.
    pub fn next_scale_set_message(&mut self, set_id: u64, last: u64) -> Option<Value> {
        let statistics = self.scale_set_statistics(set_id);
        let book = &mut self.scale_sets;
        let existing = book
            .messages
            .values_mut()
            .find(|m| m.set_id == set_id && m.id > last && m.deletions == 0);
        let message = match existing {
            Some(message) => message,
            None => {
                let set = book.sets.get_mut(&set_id)?;
                if set.pending.is_empty() {
                    return None;
                }
                let take = set.pending.len().min(MAX_JOBS_PER_MESSAGE);
                let jobs: Vec<Value> = set.pending.drain(..take).collect();
                let id = book.next_message_id;
                book.next_message_id += 1;
                book.messages.entry(id).or_insert(MessageRecord {
                    id,
                    set_id,
                    jobs,
                    deliveries: 0,
                    deletions: 0,
                })
            }
        };
        message.deliveries += 1;
        let body = serde_json::to_string(&message.jobs).unwrap_or_default();
        Some(json!({
            "messageId": message.id, "messageType": "RunnerScaleSetJobMessages",
            "body": body, "statistics": statistics,
        }))
    }

    /// Deletes (acknowledges) a message; false if it is not there (unknown or deleted).
    pub fn delete_scale_set_message(&mut self, set_id: u64, id: u64) -> bool {
        match self.scale_sets.messages.get_mut(&id) {
            Some(message) if message.set_id == set_id => {
                message.deletions += 1;
                message.deletions == 1
            }
            _ => false,
        }
    }
}

impl ScaleSetBook {
    pub fn views(&self) -> Vec<ScaleSetView> {
        self.sets
            .values()
            .map(|s| ScaleSetView {
                id: s.id,
                name: s.name.clone(),
                scope: s.home.clone(),
                runner_group_id: s.group_id,
                labels: s.labels.clone(),
            })
            .collect()
    }

    pub fn message_views(&self) -> Vec<ScaleSetMessageView> {
        self.messages
            .values()
            .map(|m| ScaleSetMessageView {
                id: m.id,
                scale_set_id: m.set_id,
                jobs: m.jobs.clone(),
                deliveries: m.deliveries,
                deletions: m.deletions,
            })
            .collect()
    }

    /// Whether a session may be created for set `name` now (no stale one holds it).
    pub fn held(&self, name: &str, now: Instant) -> bool {
        self.held
            .get(&name.to_ascii_lowercase())
            .is_some_and(|until| now < *until)
    }
}
