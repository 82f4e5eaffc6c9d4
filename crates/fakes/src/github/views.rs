//! Read-only snapshots of the fake's state that tests assert on: jobs, repositories and
//! runner registrations.
//!
//! Views are plain owned snapshots (no references into the fake's state), so a test can
//! hold them across awaits without blocking the server.

use std::time::SystemTime;

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

/// Who can see a repository: `repository.visibility` in payloads (`private` is true for
/// private and internal repositories).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoVisibility {
    Public,
    Private,
    Internal,
}

impl RepoVisibility {
    /// The wire spelling of `visibility`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Internal => "internal",
        }
    }

    /// The `private` field.
    pub fn is_private(self) -> bool {
        self != Self::Public
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
    /// Private unless made public ([`RepoView::public`]).
    pub visibility: RepoVisibility,
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

    /// The same repository, public: anyone can fork it and open pull requests.
    pub fn public(mut self) -> Self {
        self.visibility = RepoVisibility::Public;
        self
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
            visibility: RepoVisibility::Private,
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

/// Where something lives at GitHub: a repository, an organisation, an enterprise or a
/// user account. Runners are registered at the first three (docs/github.md §2.1); every
/// REST call the fake answers is about one of them (or about the App itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `owner/repo`.
    Repository(String),
    /// An organisation's login.
    Organization(String),
    /// An enterprise's slug.
    Enterprise(String),
    /// A user account's login.
    User(String),
}

impl Scope {
    /// The account the scope belongs to: the repository's owner, the organisation, the
    /// user; an enterprise is its own account.
    pub fn owner(&self) -> &str {
        match self {
            Self::Repository(full) => full.split_once('/').map_or(full.as_str(), |(o, _)| o),
            Self::Organization(login) | Self::User(login) | Self::Enterprise(login) => login,
        }
    }

    /// The name: `owner/repo`, the login or the slug.
    pub fn name(&self) -> &str {
        match self {
            Self::Repository(n) | Self::Organization(n) | Self::Enterprise(n) | Self::User(n) => n,
        }
    }

    /// The URL path of the scope under the API base, e.g. `/orgs/acme`.
    pub fn path(&self) -> String {
        match self {
            Self::Repository(full) => format!("/repos/{full}"),
            Self::Organization(login) => format!("/orgs/{login}"),
            Self::Enterprise(slug) => format!("/enterprises/{slug}"),
            Self::User(login) => format!("/users/{login}"),
        }
    }
}

/// Snapshot of a current runner registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerView {
    pub id: u64,
    pub name: String,
    /// Where it is registered: `owner/repo`, or the organisation's login, or the
    /// enterprise's slug (see `scope`).
    pub repo: String,
    /// Where it is registered.
    pub scope: Scope,
    /// The runner group it joined.
    pub group_id: u64,
    pub labels: Vec<String>,
    /// Online = the runner process contacted the fake within the last 3 s.
    pub status: RunnerStatus,
    /// Assigned a job that it has not finished yet.
    pub busy: bool,
    /// The runner process has connected at least once.
    pub connected: bool,
    /// The runner process asked how to behave (even one told to hang, which never connects).
    pub asked: bool,
    /// Runner version, known once connected.
    pub version: Option<String>,
}
