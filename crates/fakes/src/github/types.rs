//! Public data types of the fake GitHub: configuration, scenario specs and
//! the read-only views tests assert on.
//!
//! Views are plain owned snapshots (no references into the fake's state), so
//! a test can hold them across awaits without blocking the server.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::faults::Route;

/// Settings fixed when the fake starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeGitHubConfig {
    /// The only bearer token the REST API accepts (see [`super::FakeGitHub::set_token`]).
    pub token: String,
    /// The runner group id `generate-jitconfig` accepts. Repository-level
    /// runners live in the "Default" group, whose id is 1 on GitHub.
    pub runner_group_id: u64,
    /// A GitHub App whose installation tokens are accepted besides `token`.
    pub app: Option<super::app::FakeApp>,
}

impl Default for FakeGitHubConfig {
    fn default() -> Self {
        Self {
            token: "ghp_fakeGitHubTokenForTests000000000000".to_owned(),
            runner_group_id: 1,
            app: None,
        }
    }
}

/// Body encoding of webhook deliveries (the hook's `content_type` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json`: the JSON document is the body.
    Json,
    /// `application/x-www-form-urlencoded`: the JSON sits in the `payload` field.
    /// This is the default of hooks created through the REST API.
    Form,
}

impl ContentType {
    /// The `Content-Type` header value GitHub sends for this setting.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// Where and how webhooks are delivered (one hook, id [`super::HOOK_ID`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Full `http://` URL of the receiver.
    pub url: String,
    /// HMAC secret; when empty, no `X-Hub-Signature-256` header is sent (as on GitHub).
    pub secret: String,
    /// Body encoding.
    pub content_type: ContentType,
}

impl WebhookTarget {
    /// A JSON hook, the setting every GitHub App uses.
    pub fn json(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            content_type: ContentType::Json,
        }
    }

    /// A form-encoded hook (GitHub's default for REST-created hooks).
    pub fn form(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            content_type: ContentType::Form,
            ..Self::json(url, secret)
        }
    }
}

/// A workflow run to create with [`super::FakeGitHub::queue_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// `owner/repo`; added to the fake if it is not known yet.
    pub repo: String,
    /// Workflow file, e.g. `.github/workflows/ci.yml` (the run's `path`).
    pub workflow_path: String,
    /// Workflow display name (`workflow_name` in payloads).
    pub workflow_name: String,
    /// Commit of the run; a random 40-hex sha when `None`.
    pub head_sha: Option<String>,
    /// Branch of the run.
    pub head_branch: String,
    /// The jobs, in the order GitHub creates them.
    pub jobs: Vec<JobSpec>,
}

impl RunSpec {
    /// A run of `.github/workflows/ci.yml` ("CI") on `main`.
    pub fn new(repo: impl Into<String>, jobs: Vec<JobSpec>) -> Self {
        Self {
            repo: repo.into(),
            workflow_path: ".github/workflows/ci.yml".to_owned(),
            workflow_name: "CI".to_owned(),
            head_sha: None,
            head_branch: "main".to_owned(),
            jobs,
        }
    }

    /// Sets the workflow file and display name.
    pub fn workflow(mut self, path: impl Into<String>, name: impl Into<String>) -> Self {
        self.workflow_path = path.into();
        self.workflow_name = name.into();
        self
    }

    /// Pins the commit sha (useful with [`super::FakeGitHub::put_file`]).
    pub fn head_sha(mut self, sha: impl Into<String>) -> Self {
        self.head_sha = Some(sha.into());
        self
    }
}

/// One job of a [`RunSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Display name, e.g. `test (2)` for a matrix leg.
    pub name: String,
    /// `runs-on` labels; a runner must carry all of them (case-insensitively).
    pub labels: Vec<String>,
    /// How long a fake runner works on the job.
    pub duration: Duration,
    /// Conclusion reported when the job completes normally.
    pub conclusion: String,
    /// GitHub-side `strategy.max-parallel`: at most N jobs of this group of
    /// this run are in progress at once. Webhooks do not reveal it.
    pub dispatch_group: Option<(String, u32)>,
    /// Held by an environment protection rule until [`super::FakeGitHub::approve_job`].
    pub waiting: bool,
}

impl JobSpec {
    /// A job that runs for 1 s and succeeds.
    pub fn new<L: Into<String>>(name: impl Into<String>, labels: impl IntoIterator<Item = L>) -> Self {
        Self {
            name: name.into(),
            labels: labels.into_iter().map(Into::into).collect(),
            duration: Duration::from_secs(1),
            conclusion: "success".to_owned(),
            dispatch_group: None,
            waiting: false,
        }
    }

    /// Sets how long the runner works on the job.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Sets the conclusion reported on completion (`success`, `failure`, …).
    pub fn conclusion(mut self, conclusion: impl Into<String>) -> Self {
        self.conclusion = conclusion.into();
        self
    }

    /// Puts the job in a `max-parallel` group of size `max_parallel`.
    pub fn dispatch_group(mut self, group: impl Into<String>, max_parallel: u32) -> Self {
        self.dispatch_group = Some((group.into(), max_parallel));
        self
    }

    /// Makes the job wait for approval first.
    pub fn waiting(mut self, waiting: bool) -> Self {
        self.waiting = waiting;
        self
    }
}

/// What [`super::FakeGitHub::queue_run`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRun {
    /// The workflow run id.
    pub run_id: u64,
    /// Job ids in [`RunSpec::jobs`] order (all above 2^32, like real ones).
    pub job_ids: Vec<u64>,
}

/// `workflow_job.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting for a runner.
    Queued,
    /// Held by an environment protection rule.
    Waiting,
    /// A runner is working on it.
    InProgress,
    /// Finished (see the conclusion).
    Completed,
}

impl JobStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Waiting => "waiting",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
        }
    }
}

/// Snapshot of a job, with the fields GitHub's job object carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    /// `owner/repo`.
    pub repo: String,
    pub name: String,
    pub workflow_name: String,
    pub head_sha: String,
    pub head_branch: String,
    pub labels: Vec<String>,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
    pub runner_group_id: Option<u64>,
    pub runner_group_name: Option<String>,
    pub created_at: SystemTime,
    /// Equals `created_at` until a runner starts the job, as on GitHub.
    pub started_at: SystemTime,
    pub completed_at: Option<SystemTime>,
}

/// Who owns a repository; organisation repos get an `organization` object in payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Organization,
    User,
}

impl OwnerKind {
    /// The `type` field of the owner object.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Organization => "Organization",
            Self::User => "User",
        }
    }
}

/// A repository known to the fake. Ids are derived from the name, so
/// payloads built without a server ([`super::workflow_job_payload`]) agree
/// with the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoView {
    pub id: u64,
    /// `owner/repo`.
    pub full_name: String,
    pub owner: String,
    pub name: String,
    pub owner_id: u64,
    pub owner_kind: OwnerKind,
    pub default_branch: String,
}

impl RepoView {
    /// An organisation-owned repository.
    pub fn organization(full_name: &str) -> Self {
        Self::with_owner_kind(full_name, OwnerKind::Organization)
    }

    /// A user-owned repository (payloads carry no `organization`).
    pub fn user(full_name: &str) -> Self {
        Self::with_owner_kind(full_name, OwnerKind::User)
    }

    fn with_owner_kind(full_name: &str, owner_kind: OwnerKind) -> Self {
        let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
        Self {
            id: stable_id(full_name, 100_000_000, 800_000_000),
            full_name: full_name.to_owned(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            owner_id: stable_id(owner, 1_000_000, 150_000_000),
            owner_kind,
            default_branch: "main".to_owned(),
        }
    }
}

/// A deterministic id in `base..base + span` (FNV-1a of `text`).
pub(super) fn stable_id(text: &str, base: u64, span: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    base + hash % span
}

/// `online`/`offline` as the runners API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerStatus {
    Online,
    Offline,
}

impl RunnerStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// Snapshot of a current runner registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerView {
    pub id: u64,
    pub name: String,
    /// `owner/repo`.
    pub repo: String,
    pub labels: Vec<String>,
    /// Online = the runner process contacted the fake within the last 3 s.
    pub status: RunnerStatus,
    /// Assigned a job that it has not finished yet.
    pub busy: bool,
    /// The runner process has connected at least once.
    pub connected: bool,
    /// Runner version, known once connected.
    pub version: Option<String>,
}

/// How the fake runner process for a registration behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerBehavior {
    /// Connect, take one job, complete it, exit.
    Normal,
    /// Hang before connecting (a broken sandbox): stays offline forever.
    NeverConnect,
    /// Connect, then exit without taking a job (a crash): the
    /// registration stays behind, offline.
    ExitWithoutJob,
    /// Connect, take one job, complete it, then keep running instead of
    /// exiting (a job that left a process behind): the registration is gone,
    /// the sandbox lives on until it is stopped.
    LingerAfterJob,
}

impl RunnerBehavior {
    /// The wire spelling used by the fake Actions service.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::NeverConnect => "never_connect",
            Self::ExitWithoutJob => "exit_without_job",
            Self::LingerAfterJob => "linger_after_job",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "normal" => Some(Self::Normal),
            "never_connect" => Some(Self::NeverConnect),
            "exit_without_job" => Some(Self::ExitWithoutJob),
            "linger_after_job" => Some(Self::LingerAfterJob),
            _ => None,
        }
    }
}

/// One REST call the fake answered.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Request body, when it was JSON.
    pub body: Option<serde_json::Value>,
    pub status: u16,
    /// Which endpoint it hit ([`Route::NotFound`] for unknown paths).
    pub route: Route,
    /// When the request arrived.
    pub at: SystemTime,
    /// Time spent answering (including injected latency).
    pub duration: Duration,
}

/// What a delivery filter sees about a webhook about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub guid: Uuid,
    pub event: String,
    pub action: Option<String>,
    pub job_id: Option<u64>,
    /// Sent through the redeliver API rather than by the event itself.
    pub redelivery: bool,
}

/// What to do with one delivery (see [`super::FakeGitHub::set_delivery_filter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Send it now.
    Deliver,
    /// Never send it; it shows up as a failed delivery (status code 0).
    Drop,
    /// Send it twice, concurrently, with the same GUID.
    Duplicate,
    /// Send it after this delay.
    Delay(Duration),
}

/// One delivery attempt, as the deliveries API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Delivery id (used by the redeliver API).
    pub id: u64,
    /// `X-GitHub-Delivery`; shared by duplicates and redeliveries.
    pub guid: Uuid,
    pub event: String,
    pub action: Option<String>,
    pub job_id: Option<u64>,
    /// HTTP status of the receiver; `None` when nothing answered (dropped,
    /// refused, timed out).
    pub status_code: Option<u16>,
    /// `OK` or GitHub-style error text.
    pub status: String,
    pub redelivery: bool,
    pub delivered_at: SystemTime,
    pub duration: Duration,
}

impl DeliveryRecord {
    /// A 2xx answer, which is all GitHub counts as success.
    pub fn is_success(&self) -> bool {
        matches!(self.status_code, Some(code) if (200..300).contains(&code))
    }
}
