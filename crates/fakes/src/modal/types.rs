//! The types tests and the simulator see: the configuration of the fake and read-only
//! views of what it recorded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tonic::Code;

use modal_proto::{self as proto, generic_result::GenericStatus};

/// How a [`FakeModal`](super::FakeModal) behaves. Start from `Default` and change what a
/// test needs.
#[derive(Debug, Clone)]
pub struct FakeModalConfig {
    /// The only accepted `x-modal-token-id`.
    pub token_id: String,
    /// The only accepted `x-modal-token-secret`.
    pub token_secret: String,
    /// Program and arguments run as every sandbox's entrypoint, in place of the requested
    /// `entrypoint_args` (those name paths inside Modal's image, which this host lacks).
    /// Tests pass `[<main binary>, "fake-runner"]`. Empty means the sandbox runs nothing and
    /// lives until it is terminated or times out, like a Modal sandbox without entrypoint.
    pub runner_command: Vec<String>,
    /// Workspace-wide sandbox creations per second (token bucket, burst 1); `None` is
    /// unlimited. Modal's default is 5/s (docs/modal.md §5).
    pub create_rate_per_sec: Option<f64>,
    /// Simulated `SandboxCreate` latency, spent after admission and before the answer.
    pub create_latency: Duration,
    /// How long a new image build takes.
    pub image_build_time: Duration,
    /// Most sandboxes one `SandboxList` answer holds (tests use small pages to make the
    /// client page).
    pub list_page_size: usize,
}

impl Default for FakeModalConfig {
    fn default() -> Self {
        Self {
            token_id: "ak-fakemodaltokenid".to_owned(),
            token_secret: "as-fakemodaltokensecret".to_owned(),
            runner_command: Vec::new(),
            create_rate_per_sec: Some(5.0),
            create_latency: Duration::ZERO,
            image_build_time: Duration::from_millis(200),
            list_page_size: 50,
        }
    }
}

/// An App the fake knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppView {
    /// `ap-` + 22 alphanumerics.
    pub id: String,
    /// Environment name (`"main"` when requested with an empty one).
    pub environment: String,
    /// App name.
    pub name: String,
}

/// One RPC as the fake received and answered it.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    /// Method name, e.g. `"SandboxCreate"`.
    pub rpc: &'static str,
    /// Every metadata entry except `x-modal-token-secret`, in arrival order. Binary
    /// (`-bin`) entries and values that are not printable ASCII are shown as `<binary>`.
    pub metadata: Vec<(String, String)>,
    /// Whether `x-modal-token-secret` matched the configured secret; `None` if absent.
    /// The secret itself is never recorded.
    pub token_secret_matched: Option<bool>,
    /// The request message, `Debug`-formatted.
    pub request: String,
    /// The status code answered (`Cancelled` if the client went away first).
    pub code: Code,
    /// The status message answered (empty on success).
    pub message: String,
    /// When the answer was decided.
    pub at: Instant,
}

impl RecordedCall {
    /// The value of metadata entry `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What a sandbox was created with and how it ended.
#[derive(Debug, Clone)]
pub struct SandboxView {
    /// `sb-` + 22 alphanumerics.
    pub id: String,
    /// `definition.name`, if set.
    pub name: Option<String>,
    /// The App the sandbox belongs to.
    pub app_id: String,
    /// Tags given at creation, as (name, value) pairs in request order.
    pub tags: Vec<(String, String)>,
    /// The requested entrypoint (recorded only; `runner_command` is what runs).
    pub entrypoint_args: Vec<String>,
    /// The image it was created from.
    pub image_id: String,
    /// The secrets it was created with, in request order.
    pub secret_ids: Vec<String>,
    /// The merged environment of its secrets (later secrets win).
    pub env: BTreeMap<String, String>,
    /// Requested resources.
    pub resources: SandboxResources,
    /// Effective lifetime limit in seconds (a request of 0 means Modal's default of 300).
    pub timeout_secs: u32,
    /// When the sandbox was created.
    pub created_at: Instant,
    /// The `created_at` that `SandboxList` reports (unix seconds, strictly increasing).
    pub created_at_unix: f64,
    /// How it ended; `None` while running.
    pub finished: Option<SandboxFinish>,
    /// The full requested definition, for fields not surfaced above.
    pub definition: proto::Sandbox,
}

impl SandboxView {
    /// True while the sandbox has no result.
    pub fn is_running(&self) -> bool {
        self.finished.is_none()
    }

    /// The value of tag `name`, if set.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Requested sandbox resources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxResources {
    /// 1000 = one physical core; 0 = server default.
    pub milli_cpu: u32,
    /// MiB; 0 = server default.
    pub memory_mb: u32,
    /// `"TYPE"` or `"TYPE:COUNT"` (count > 1), e.g. `"H100:2"`; `None` without GPU.
    pub gpu: Option<String>,
}

/// The result of a finished sandbox.
#[derive(Debug, Clone)]
pub struct SandboxFinish {
    /// SUCCESS, FAILURE, TERMINATED, TIMEOUT or INIT_FAILURE.
    pub status: GenericStatus,
    /// The entrypoint's exit code (128 + signal if killed by a signal; 0 if it never ran).
    pub exitcode: i32,
    /// Modal's human-readable explanation (empty on success).
    pub exception: String,
    /// When the result was decided.
    pub at: Instant,
    /// The last few KiB of the entrypoint's stdout and stderr, once its process is gone.
    pub log_tail: Option<String>,
}
