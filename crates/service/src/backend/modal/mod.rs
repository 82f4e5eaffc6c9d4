//! The Modal backend: one sandbox per runner through Modal's control-plane gRPC API.
//!
//! One App per deployment (`MODAL_APP_NAME`), found or created by name. The runner image is
//! built at start-up for the release the app hands over, and rebuilt when the app publishes
//! a different one (`release`). Each sandbox is named after its runner, which makes a
//! retried create find the first one (ALREADY_EXISTS) instead of making a second; it
//! carries tags that mark the deployment, the job and the runner; its JIT config travels in
//! an ephemeral secret and its command line holds no credential. Creates are paced to stay
//! under Modal's per-workspace creation rate.
//!
//! - `image`: the image's recipe and build, and the image new sandboxes start from;
//! - `release`: the channel of runner releases from the app, and the rebuild on change;
//! - `sandbox`: create, find, terminate, list.

pub mod client;
pub mod features;
pub mod image;
mod release;
mod sandbox;
// Costs and failure logs (issue 13 items 4, 5).
mod usage;
/// The generated Modal API (crate `modal-proto`), under the name the backend uses.
pub use modal_proto as proto;
pub use release::Releases;

use std::sync::OnceLock;
use std::time::Duration;

use self::client::{ModalApi, ModalConnection, ModalError};
use self::features::{FeatureCache, SandboxFeatures};
use self::image::{ImageSettings, RunnerImage};
use self::proto::{AppGetOrCreateRequest, ObjectCreationType};
use super::{BackendError, SandboxInfo, SandboxSpec};
use crate::domain::Gpu;
use crate::pace::Pacer;
use crate::retry::Backoff;

/// Everything the Modal backend is configured with.
#[derive(Debug, Clone)]
pub struct ModalSettings {
    pub connection: ModalConnection,
    /// `MODAL_ENVIRONMENT`; empty = the workspace default.
    pub environment: String,
    pub app_name: String,
    pub image: ImageSettings,
    /// Physical cores (Modal bills per core; 1 core = 2 vCPU).
    pub cpu: f64,
    pub memory_mib: u32,
    pub gpu: Option<Gpu>,
    /// Sandbox creations per second (Modal's default workspace limit is 5).
    pub create_rate: Option<f64>,
    /// Value of the `modal-github-runner` tag: which sandboxes are this deployment's.
    pub deployment: String,
    pub builder_version: Option<String>,
    /// Longest time a runner image build may take.
    pub build_timeout: Duration,
    /// Reopening the build log stream after errors: `attempts` errors in a row fail the
    /// build, with `delay` between reopens.
    pub build_stream_retry: Backoff,
    /// How often the app checks which runner release GitHub serves (the backend itself
    /// only reacts to what the app publishes).
    pub refresh_interval: Duration,
    /// Docker, the cache volume and `image=` bases (issue 13, `features`).
    pub features: SandboxFeatures,
}

/// The tag every sandbox of this deployment carries.
pub const DEPLOYMENT_TAG: &str = "modal-github-runner";
/// Creates are paced at this share of `MODAL_CREATE_RATE`, and at least this much further
/// apart than the limit, so that timing jitter between here and Modal never makes two
/// creates look closer than the limit allows.
const PACE_SHARE: f64 = 0.95;
const PACE_SLACK: Duration = Duration::from_millis(15);

/// The environment variable the Actions runner reads its JIT config from (like
/// `--jitconfig`, then it removes it from its environment).
pub const JIT_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

pub struct ModalBackend {
    api: ModalApi,
    settings: ModalSettings,
    releases: Releases,
    app_id: OnceLock<String>,
    image: RunnerImage,
    pacer: Pacer,
    /// Volume ids and `image=` images, found or built once (issue 13).
    features: FeatureCache,
}

impl ModalBackend {
    /// A backend that installs the runner releases the app publishes on `releases`.
    pub fn new(settings: ModalSettings, releases: Releases) -> Result<ModalBackend, BackendError> {
        let api =
            ModalApi::new(settings.connection.clone()).map_err(|e| BackendError::Permanent(e.to_string()))?;
        Ok(ModalBackend {
            image: RunnerImage::new(api.clone(), &settings),
            api,
            releases,
            pacer: Pacer::under_limit(settings.create_rate, PACE_SHARE, PACE_SLACK),
            settings,
            app_id: OnceLock::new(),
            features: FeatureCache::default(),
        })
    }

    /// Finds or creates the App, builds the image of the first runner release, and starts
    /// rebuilding it for each different release the app publishes later.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        let req = AppGetOrCreateRequest {
            app_name: self.settings.app_name.clone(),
            environment_name: self.settings.environment.clone(),
            object_creation_type: ObjectCreationType::CreateIfMissing as i32,
        };
        let app = self
            .api
            .unary(
                "AppGetOrCreate",
                req,
                Duration::from_secs(30),
                |mut c, r| async move { c.app_get_or_create(r).await },
            )
            .await
            .map_err(|e| classify(&e))?;
        tracing::info!(app.name = %self.settings.app_name, app.id = %app.app_id, "Modal app ready");
        let _ = self.app_id.set(app.app_id.clone());
        let mut releases = self.releases.clone();
        let release = releases.first().await?;
        self.image.build(&app.app_id, &release).await?;
        release::spawn_refresh(self.image.clone(), app.app_id, releases);
        Ok(())
    }

    fn app_id(&self) -> Result<&str, BackendError> {
        self.app_id
            .get()
            .map(String::as_str)
            .ok_or_else(|| BackendError::Transient("the Modal app is not ready yet".into()))
    }
}

fn classify(e: &ModalError) -> BackendError {
    if e.is_transient() {
        BackendError::Transient(e.to_string())
    } else {
        BackendError::Permanent(e.to_string())
    }
}
