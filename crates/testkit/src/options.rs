//! What a world is made of: the backend, the service's environment and how it runs, and
//! what the fakes do from the start.

use std::time::Duration;

use fakes::github::Limits;
use fakes::modal::ModalFault;
use modal_github_runner::clock::ManualClock;

use crate::MODAL_RATE;
use crate::world::REPO;

/// Which sandbox backend the service uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Local,
    Modal,
}

/// How the service runs.
#[derive(Clone, Debug, Default)]
pub enum ServiceMode {
    /// In this process, through `Application::build`: fast, logs captured per world.
    #[default]
    InProcess,
    /// A child process running `command` (e.g. `[service binary, "serve"]`): for tests that
    /// SIGKILL it and benchmarks that measure it.
    Process { command: Vec<String> },
}

/// What a world is made of.
#[derive(Clone)]
pub struct Options {
    pub kind: Kind,
    /// The service's environment, on top of the world's; later entries win.
    pub env: Vec<(String, String)>,
    /// Faults the fake Modal has from the start (before the service's first call).
    pub modal_faults: Vec<ModalFault>,
    /// Authenticate as a GitHub App whose installation tokens last this long, instead of
    /// with a token.
    pub github_app: Option<Duration>,
    /// The App's installations, one per account (owner, installation id); empty: one
    /// installation ([`crate::INSTALLATION_ID`]) that reaches every account.
    pub app_installations: Vec<(String, u64)>,
    pub mode: ServiceMode,
    /// The repository the fake GitHub has (and the jobs of `jobs()` use).
    pub repo: String,
    /// Latency of `generate-jitconfig`.
    pub jit_latency: Option<Duration>,
    /// GitHub's limits at the fake (`None`: the fake's defaults).
    pub github_limits: Option<Limits>,
    /// The fake Modal's creation rate per second (`None`: unlimited).
    pub modal_rate: Option<f64>,
    /// Latency of `SandboxCreate`.
    pub create_latency: Option<Duration>,
    /// How long the fake Modal takes to build an image.
    pub image_build_time: Option<Duration>,
    /// Whether sandboxes run the fake runner (jobs complete) or sit idle.
    pub run_runners: bool,
    /// Print the service's log lines as they come (also with `E2E_LOG` set).
    pub echo_logs: bool,
    /// What plays the runner (`None`: the `fake-runner` binary).
    pub runner_command: Option<Vec<String>>,
    /// The clock the in-process service reads (`None`: the system's): a test sets it to
    /// move the service's time far ahead without waiting.
    pub clock: Option<ManualClock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kind: Kind::Local,
            env: Vec::new(),
            modal_faults: Vec::new(),
            github_app: None,
            app_installations: Vec::new(),
            mode: ServiceMode::InProcess,
            repo: REPO.into(),
            jit_latency: None,
            github_limits: None,
            modal_rate: Some(MODAL_RATE),
            create_latency: None,
            image_build_time: None,
            run_runners: true,
            echo_logs: std::env::var_os("E2E_LOG").is_some(),
            runner_command: None,
            clock: None,
        }
    }
}

impl Options {
    pub fn backend(kind: Kind) -> Options {
        Options {
            kind,
            ..Options::default()
        }
    }

    /// One more variable of the service's environment.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the service as a child process of `command`.
    pub fn process(mut self, command: Vec<String>) -> Self {
        self.mode = ServiceMode::Process { command };
        self
    }
}
