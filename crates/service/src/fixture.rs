//! What the provisioner's and the reaper's unit tests share: a fake GitHub, a local backend
//! whose `run.sh` the test chooses, an in-memory store and a manual clock, wired into the
//! loops' contexts. A test drives one pass of a loop at a time and moves the clock by hand,
//! so a timeout of minutes is crossed at once and every step is deterministic.
//!
//! A fresh context per pass plays a restarted service: it remembers nothing but the store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fakes::github::{FakeGitHub, FakeGitHubConfig, RunnerView};
use secrecy::{ExposeSecret, SecretString};
use tempfile::TempDir;

use crate::backend::{Backend, FencedBackend, LocalBackend, LocalConfig, SandboxSpec};
use crate::clock::ManualClock;
use crate::config::{ProvisionerSettings, ReaperSettings, ReconcilerSettings};
use crate::domain::{DeploymentId, JobEvent};
use crate::domain::{
    JobId, JobStatus, LabelSet, MachineSpec, NamePrefix, RepoAllowList, RepoName, RunnerName, RunnerState,
};
use crate::github::{Credentials, GitHub, GitHubConfig, JitConfig, JitRequest, RunnerGroups, RunnerScope};
use crate::leader::{Fence, Leadership};
use crate::loops::provisioner::ProvisionerContext;
use crate::loops::reaper::ReaperContext;
use crate::loops::reconciler::ReconcilerContext;
use crate::metrics::Metrics;
use crate::pace::Window;
use crate::retry::Backoff;
use crate::store::{EventSource, NewRunner, RunnerPatch, RunnerRow, Store};
use crate::wake::Wake;

pub const REPO: &str = "octo/repo";
pub const LABELS: [&str; 2] = ["self-hosted", "modal"];

/// The fixture's deployment.
pub fn deployment() -> DeploymentId {
    DeploymentId::parse("test").expect("valid id")
}
/// The sandbox's maximum runtime, as both loops see it.
pub const SANDBOX_TIMEOUT: Duration = Duration::from_secs(300);
pub const EXIT_GRACE: Duration = Duration::from_secs(60);
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(240);
pub const AUTH_PAUSE: Duration = Duration::from_secs(300);

/// The sandboxes' `run.sh` command: it starts and never contacts GitHub, so a sandbox
/// stays up (a minute, far longer than a test; one a failed test leaves behind ends
/// then) and its runner offline. A test that needs the runner online plays it in
/// process (`play_runner`).
const SILENT_RUNNER: [&str; 4] = ["sh", "-c", "exec sleep 60", "sh"];

pub struct Fixture {
    pub clock: ManualClock,
    pub store: Store,
    pub fake: FakeGitHub,
    pub github: GitHub,
    pub backend: FencedBackend,
    pub wake: Arc<Wake>,
    pub repo: RepoName,
    dir: TempDir,
}

impl Fixture {
    /// Fakes, store and backend.
    pub async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let command = SILENT_RUNNER.map(String::from);
        fakes::runner::make_runner_dir(&dir.path().join("runner"), &command).expect("runner dir");
        let backend = LocalBackend::new(LocalConfig {
            runner_dir: dir.path().join("runner"),
            work_dir: dir.path().join("work"),
            run_as: None,
            deployment: "test".into(),
        });
        backend.prepare().await.expect("backend ready");
        let config = FakeGitHubConfig::default();
        let fake = FakeGitHub::start(config.clone()).await.expect("fake GitHub");
        fake.add_repo(REPO);
        let github = GitHub::new(
            GitHubConfig {
                api_url: fake.api_url(),
                credentials: Credentials::Token(SecretString::from(config.token)),
                timeout: Duration::from_secs(5),
                retry: Backoff::new(2, Duration::from_millis(1), Duration::from_millis(1)),
                scope: RunnerScope::Repo,
                rate_reserve: None,
            },
            None,
        )
        .expect("GitHub client");
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let store = Store::open_with_clock("sqlite::memory:", Default::default(), clock.clone().into())
            .await
            .expect("store");
        let backend = FencedBackend::new(
            Arc::new(Backend::Local(backend)),
            Fence::new(
                store.clone(),
                Leadership::new("test".into(), crate::store::Backend::Sqlite, 0),
            ),
        );
        Fixture {
            clock,
            store,
            fake,
            github,
            backend,
            wake: Arc::new(Wake::default()),
            repo: RepoName::parse(REPO).expect("repo"),
            dir,
        }
    }

    /// A provisioner as a freshly started service has it.
    pub fn provisioner(&self) -> Arc<ProvisionerContext> {
        self.provisioner_with(4, 4)
    }

    /// A provisioner with this many registration and creation slots.
    pub fn provisioner_with(&self, registrations: usize, creations: usize) -> Arc<ProvisionerContext> {
        Arc::new(ProvisionerContext {
            store: self.store.clone(),
            github: self.github.clone(),
            registry: crate::loops::registry::Registry::Rest(self.github.clone()),
            backend: self.backend.clone(),
            wake: self.wake.clone(),
            metrics: Arc::new(Metrics::new()),
            clock: self.clock.clone().into(),
            settings: ProvisionerSettings {
                runner_groups: RunnerGroups::Id(1),
                sandbox_timeout: SANDBOX_TIMEOUT,
                registration_concurrency: registrations,
                create_concurrency: creations,
                deployment: deployment(),
                auth_pause: AUTH_PAUSE,
                jit_limit_per_min: None,
            },
            retry: Backoff::new(3, Duration::from_millis(1), Duration::from_millis(1)),
            interval: Duration::from_secs(2),
            paused_until: Mutex::default(),
            jit_window: Window::new(0, Duration::from_secs(61)),
            registration_slots: Arc::new(tokio::sync::Semaphore::new(registrations)),
            create_slots: Arc::new(tokio::sync::Semaphore::new(creations)),
        })
    }

    /// A reaper as a freshly started service has it.
    pub fn reaper(&self) -> ReaperContext {
        ReaperContext {
            store: self.store.clone(),
            github: self.github.clone(),
            registry: crate::loops::registry::Registry::Rest(self.github.clone()),
            backend: self.backend.clone(),
            wake: self.wake.clone(),
            metrics: Arc::new(Metrics::new()),
            clock: self.clock.clone().into(),
            secrets: Vec::new(),
            settings: ReaperSettings {
                prefix: prefix(),
                deployment: deployment(),
                allow: RepoAllowList::parse(REPO).expect("allowlist"),
                exit_grace: EXIT_GRACE,
                sandbox_timeout: SANDBOX_TIMEOUT,
                registration_timeout: REGISTRATION_TIMEOUT,
                idle_timeout: IDLE_TIMEOUT,
                interval: Duration::from_secs(5),
                sweep_interval: Duration::from_secs(60),
            },
            seen_online: Mutex::default(),
        }
    }

    /// A reconciler as a freshly started service has it, serving `allow`.
    pub fn reconciler(&self, allow: &str) -> ReconcilerContext {
        ReconcilerContext {
            store: self.store.clone(),
            github: self.github.clone(),
            wake: self.wake.clone(),
            settings: ReconcilerSettings {
                label: "modal".into(),
                allow: RepoAllowList::parse(allow).expect("allowlist"),
                interval: Duration::from_secs(60),
                hooks: Vec::new(),
                redeliver_window: Duration::from_secs(3600),
                allow_public: false,
            },
            clock: self.clock.clone().into(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Plans the first runner for `job` (state `pending`) and returns its name.
    pub async fn plan(&self, job: u64) -> RunnerName {
        let name = RunnerName::for_job(&prefix(), JobId(job), 1);
        let new = NewRunner {
            name: name.clone(),
            job: JobId(job),
            attempt: 1,
            repo: RepoName::parse(REPO).expect("repo"),
            labels: LabelSet::new(LABELS),
        };
        assert_eq!(self.store.insert_runners(&[new]).await.expect("insert"), 1);
        name
    }

    /// Moves a runner along `path`, one compare-and-set at a time, the way the loops do;
    /// the last step gets `patch`.
    pub async fn advance(&self, name: &RunnerName, path: &[RunnerState], patch: RunnerPatch) {
        let mut from = self.row(name).await.state;
        for (i, to) in path.iter().enumerate() {
            let p = if i + 1 == path.len() {
                patch.clone()
            } else {
                RunnerPatch::default()
            };
            assert!(
                self.store
                    .transition(name, &[from], *to, p)
                    .await
                    .expect("transition")
            );
            from = *to;
        }
    }

    /// Registers `name` at the fake GitHub, as a try of this deployment that got through
    /// would have.
    pub async fn register(&self, name: &RunnerName) -> JitConfig {
        self.register_as(name, &deployment()).await
    }

    /// Registers `name` as deployment `id` would have.
    pub async fn register_as(&self, name: &RunnerName, id: &DeploymentId) -> JitConfig {
        let mut labels = LABELS.map(String::from).to_vec();
        labels.push(id.label());
        let request = JitRequest {
            name: name.to_string(),
            runner_group_id: 1,
            labels,
            work_folder: "_work".into(),
        };
        self.github
            .generate_jitconfig(&self.github.home_of(&self.repo), &request)
            .await
            .expect("registered")
    }

    /// Starts `name`'s sandbox, as a create that got through would have.
    pub async fn start_sandbox(&self, name: &RunnerName, jit: &JitConfig) -> String {
        let spec = SandboxSpec {
            name: name.to_string(),
            repo: "octo/fixture".into(),
            jit_config: jit.encoded.clone(),
            tags: Vec::new(),
            timeout: SANDBOX_TIMEOUT,
            machine: MachineSpec::default(),
        };
        self.backend.create(spec).await.expect("sandbox")
    }

    /// A runner left `registered` by an earlier process: registered at GitHub, recorded as
    /// such, and (maybe) interrupted before its sandbox was created.
    pub async fn seed_registered(&self, job: u64) -> (RunnerName, JitConfig) {
        let name = self.plan(job).await;
        let jit = self.register(&name).await;
        let patch = RunnerPatch {
            github_id: Some(jit.runner_id),
            ..RunnerPatch::default()
        };
        self.advance(&name, &[RunnerState::Registering, RunnerState::Registered], patch)
            .await;
        (name, jit)
    }

    /// A runner left `running` by an earlier process: registered and its sandbox started.
    /// Returns its JIT config, for `play_runner`.
    pub async fn seed_running(&self, job: u64) -> (RunnerName, JitConfig) {
        let name = self.plan(job).await;
        let jit = self.register(&name).await;
        let sandbox = self.start_sandbox(&name, &jit).await;
        let patch = RunnerPatch {
            github_id: Some(jit.runner_id),
            sandbox_id: Some(sandbox),
            started: true,
            ..RunnerPatch::default()
        };
        let path = [
            RunnerState::Registering,
            RunnerState::Registered,
            RunnerState::Running,
        ];
        self.advance(&name, &path, patch).await;
        (name, jit)
    }

    /// Plays the Actions runner for `jit` in this process: it comes online at the fake
    /// GitHub and takes one matching job. Abort the task to stop it.
    pub fn play_runner(&self, jit: &JitConfig) -> tokio::task::JoinHandle<()> {
        let dir = self.dir.path().join(format!("played-{}", jit.runner_id));
        std::fs::create_dir_all(&dir).expect("runner root");
        let config = jit.encoded.expose_secret().to_string();
        tokio::spawn(async move {
            let _ = fakes::runner::run_in(&dir, Some(config)).await;
        })
    }

    /// Records that `job` of `repo` was queued.
    pub async fn queued(&self, job: u64, repo: &str) {
        let repo = RepoName::parse(repo).expect("repo");
        self.job_event_in(&repo, job, None, JobStatus::Queued).await;
    }

    /// Records that `runner` took `job` (its `in_progress` event).
    pub async fn took(&self, job: u64, runner: &RunnerName) {
        self.job_event(job, runner, JobStatus::InProgress).await;
    }

    /// Records that `job`, run by `runner`, completed now.
    pub async fn completed(&self, job: u64, runner: &RunnerName) {
        self.job_event(job, runner, JobStatus::Completed).await;
    }

    async fn job_event(&self, job: u64, runner: &RunnerName, status: JobStatus) {
        self.job_event_in(&self.repo, job, Some(runner), status).await;
    }

    async fn job_event_in(&self, repo: &RepoName, job: u64, runner: Option<&RunnerName>, status: JobStatus) {
        let event = JobEvent {
            action: status.as_str().into(),
            status,
            job_id: JobId(job),
            run_id: 1,
            run_attempt: 1,
            name: "build".into(),
            workflow_name: None,
            head_sha: None,
            conclusion: (status == JobStatus::Completed).then(|| "success".into()),
            labels: LabelSet::new(LABELS),
            runner_name: runner.map(RunnerName::to_string),
            repo: repo.clone(),
            queued_for: None,
        };
        self.store
            .record(None, event, EventSource::Poll)
            .await
            .expect("recorded");
    }

    pub async fn row(&self, name: &RunnerName) -> RunnerRow {
        self.store
            .runner(name.as_str())
            .await
            .expect("read")
            .expect("the runner exists")
    }

    /// Whether a failed runner's job waits before its next attempt.
    pub async fn backs_off(&self, name: &RunnerName) -> Option<bool> {
        let retryable: Option<i64> = sqlx::query_scalar("SELECT retryable FROM runners WHERE name = ?1")
            .bind(name.as_str())
            .fetch_one(self.store.pool())
            .await
            .expect("read");
        retryable.map(|r| r != 0)
    }

    /// Names of the running sandboxes.
    pub async fn sandboxes(&self) -> Vec<String> {
        self.backend
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    /// The fake GitHub's registration for `name`, if any.
    pub fn registration(&self, name: &RunnerName) -> Option<RunnerView> {
        self.fake.runners().into_iter().find(|r| r.name == name.as_str())
    }

    /// How many registrations `name` ever had.
    pub fn registrations_of(&self, name: &RunnerName) -> usize {
        self.fake
            .registrations_ever()
            .iter()
            .filter(|n| *n == name.as_str())
            .count()
    }

    /// Stops every sandbox and the fake.
    pub async fn finish(self) {
        for sb in self.backend.list().await.unwrap_or_default() {
            let _ = self.backend.terminate(&sb.id).await;
        }
        self.fake.shutdown().await;
    }
}

/// Asserts that `row` is in `state` with a failure reason that contains `reason`.
pub fn assert_state_and_reason(row: &RunnerRow, state: RunnerState, reason: &str) {
    assert_eq!(row.state, state, "{row:?}");
    assert!(
        row.failure.as_deref().is_some_and(|m| m.contains(reason)),
        "{:?}",
        row.failure
    );
}

pub fn prefix() -> NamePrefix {
    NamePrefix::parse("modal").expect("prefix")
}
