//! What a test asks the fake GitHub for: workflow runs and their jobs, and how the fake
//! runner process of a registration behaves.

use std::time::Duration;

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
