//! The Modal backend: one sandbox per runner through Modal's control-plane gRPC API.
//!
//! One App per deployment (`MODAL_APP_NAME`), found or created by name. The runner image is
//! built at start-up and rebuilt when the runner release GitHub serves changes (checked
//! daily). Each sandbox is named after its runner, which makes a retried create find the
//! first one (ALREADY_EXISTS) instead of making a second; it carries tags that mark the
//! deployment, the job and the runner; its JIT config travels in an ephemeral secret and
//! its command line holds no credential. Creates are paced to stay under Modal's
//! per-workspace creation rate.

pub mod client;
pub mod image;
/// The generated Modal API (crate `modal-proto`), under the name the backend uses.
pub use modal_proto as proto;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use secrecy::ExposeSecret;
use tonic::Code;

use self::client::{ModalApi, ModalConnection, ModalError};
use self::image::{BuildError, ImageSettings, RUNNER_HOME};
use self::proto::generic_result::GenericStatus;
use self::proto::network_access::NetworkAccessType;
use self::proto::{
    AppGetOrCreateRequest, GpuConfig, NetworkAccess, ObjectCreationType, Resources, Sandbox,
    SandboxCreateRequest, SandboxGetFromNameRequest, SandboxListRequest, SandboxTag, SandboxTerminateRequest,
    SandboxWaitRequest, SecretGetOrCreateRequest,
};
use super::{BackendError, SandboxInfo, SandboxSpec};
use crate::domain::{Gpu, RepoName};
use crate::github::GitHub;
use crate::pace::Pacer;
use crate::runner_version::{self, RunnerRelease, RunnerVersion};

/// Which runner release to install.
#[derive(Clone)]
pub enum RunnerSource {
    /// `RUNNER_VERSION`.
    Pinned(RunnerVersion),
    /// Ask GitHub (for this repository, if one is known), daily.
    Resolve { github: GitHub, repo: Option<RepoName> },
}

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
    /// How often the served runner release is checked.
    pub refresh_interval: Duration,
}

/// The tag every sandbox of this deployment carries.
pub const DEPLOYMENT_TAG: &str = "modal-github-runner";
/// Creates are paced at this share of `MODAL_CREATE_RATE`, and at least this much further
/// apart than the limit, so that timing jitter between here and Modal never makes two
/// creates look closer than the limit allows.
const PACE_SHARE: f64 = 0.95;
const PACE_SLACK: Duration = Duration::from_millis(15);
/// How many rate refusals one create waits out before it counts as failed.
const MAX_RATE_REFUSALS: u32 = 20;

/// The environment variable the Actions runner reads its JIT config from (like
/// `--jitconfig`, then it removes it from its environment).
pub const JIT_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

pub struct ModalBackend {
    api: ModalApi,
    settings: ModalSettings,
    runner: RunnerSource,
    app_id: OnceLock<String>,
    image: Arc<RwLock<Option<(RunnerVersion, String)>>>,
    pacer: Pacer,
}

impl ModalBackend {
    pub fn new(settings: ModalSettings, runner: RunnerSource) -> Result<ModalBackend, BackendError> {
        let api =
            ModalApi::new(settings.connection.clone()).map_err(|e| BackendError::Permanent(e.to_string()))?;
        Ok(ModalBackend {
            api,
            runner,
            pacer: Pacer::under_limit(settings.create_rate, PACE_SHARE, PACE_SLACK),
            settings,
            app_id: OnceLock::new(),
            image: Arc::default(),
        })
    }

    /// Finds or creates the App, builds the runner image, and starts the daily check for a
    /// newer runner release.
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
        let release = self.release().await?;
        let image_id = self.build(&app.app_id, &release).await?;
        if let Ok(mut slot) = self.image.write() {
            *slot = Some((release.version.clone(), image_id));
        }
        if let RunnerSource::Resolve { .. } = &self.runner {
            self.spawn_refresh(app.app_id);
        }
        Ok(())
    }

    async fn release(&self) -> Result<RunnerRelease, BackendError> {
        match &self.runner {
            RunnerSource::Pinned(v) => Ok(RunnerRelease::from_version(v.clone())),
            RunnerSource::Resolve { github, repo } => {
                runner_version::resolve(github, repo.as_ref()).await.map_err(|e| {
                    let msg = format!(
                        "could not find the runner release GitHub serves ({e}); set RUNNER_VERSION to pin one"
                    );
                    if e.is_transient() {
                        BackendError::Transient(msg)
                    } else {
                        BackendError::Permanent(msg)
                    }
                })
            }
        }
    }

    async fn build(&self, app_id: &str, release: &RunnerRelease) -> Result<String, BackendError> {
        let builder = image::builder_version(
            &self.api,
            &self.settings.environment,
            self.settings.builder_version.as_deref(),
        )
        .await
        .map_err(|e| classify(&e))?;
        tracing::info!(runner.version = %release.version, builder = %builder, "building the runner image");
        let commands = image::dockerfile_commands(&self.settings.image, release);
        image::build(&self.api, app_id, commands, &builder, self.settings.build_timeout)
            .await
            .map_err(|e| match e {
                BuildError::Modal(m) => classify(&m),
                other => BackendError::Permanent(other.to_string()),
            })
    }

    /// Rebuilds the image when GitHub starts serving a newer runner, so new sandboxes never
    /// start with a release GitHub no longer accepts (runners also update themselves).
    fn spawn_refresh(&self, app_id: String) {
        let (api, settings, image, runner) = (
            self.api.clone(),
            self.settings.clone(),
            self.image.clone(),
            self.runner.clone(),
        );
        tokio::spawn(async move {
            let me = ModalBackend {
                api,
                runner,
                pacer: Pacer::new(None),
                settings,
                app_id: OnceLock::new(),
                image,
            };
            loop {
                tokio::time::sleep(me.settings.refresh_interval).await;
                let current = me
                    .image
                    .read()
                    .ok()
                    .and_then(|i| i.as_ref().map(|(v, _)| v.clone()));
                let release = match me.release().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not check for a newer runner release");
                        continue;
                    }
                };
                if current.as_ref() == Some(&release.version) {
                    continue;
                }
                match me.build(&app_id, &release).await {
                    Ok(id) => {
                        tracing::info!(runner.version = %release.version, image.id = %id, "runner image updated");
                        if let Ok(mut slot) = me.image.write() {
                            *slot = Some((release.version, id));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not build the image of a newer runner release")
                    }
                }
            }
        });
    }

    fn app_id(&self) -> Result<&str, BackendError> {
        self.app_id
            .get()
            .map(String::as_str)
            .ok_or_else(|| BackendError::Transient("the Modal app is not ready yet".into()))
    }

    fn image_id(&self) -> Result<String, BackendError> {
        self.image
            .read()
            .ok()
            .and_then(|i| i.as_ref().map(|(_, id)| id.clone()))
            .ok_or_else(|| BackendError::Transient("the runner image is not built yet".into()))
    }

    /// Creates the runner's sandbox, or finds it if a previous try already did.
    pub async fn create(&self, spec: SandboxSpec) -> Result<String, BackendError> {
        let app_id = self.app_id()?.to_string();
        let image_id = self.image_id()?;
        let secret_id = self.jit_secret(&spec).await?;
        let request = SandboxCreateRequest {
            app_id,
            definition: Some(self.definition(&spec, image_id, secret_id)),
            tags: spec
                .tags
                .iter()
                .map(|(k, v)| SandboxTag {
                    tag_name: k.clone(),
                    tag_value: v.clone(),
                })
                .collect(),
        };
        // A create refused for the workspace's rate goes back into the queue of paced
        // slots instead of retrying on its own schedule, where it would collide again.
        let mut refused = 0;
        let key = client::new_idempotency_key();
        loop {
            self.pacer.wait().await;
            let created = self
                .api
                .unary_except(
                    "SandboxCreate",
                    request.clone(),
                    Duration::from_secs(60),
                    &key,
                    &[Code::ResourceExhausted],
                    |mut c, r| async move { c.sandbox_create(r).await },
                )
                .await;
            match created {
                Ok(resp) => return Ok(resp.sandbox_id),
                Err(e) if e.code == Code::AlreadyExists => return self.find(&spec.name).await,
                Err(e) if e.code == Code::ResourceExhausted && refused < MAX_RATE_REFUSALS => {
                    refused += 1;
                    tracing::debug!(runner.name = %spec.name, "Modal's creation rate was exceeded; waiting for a later slot");
                    self.pacer.back_off(Duration::from_millis(200));
                }
                Err(e) => return Err(classify(&e)),
            }
        }
    }

    /// The JIT config as an ephemeral secret: the only way it reaches the sandbox.
    async fn jit_secret(&self, spec: &SandboxSpec) -> Result<String, BackendError> {
        let request = SecretGetOrCreateRequest {
            environment_name: self.settings.environment.clone(),
            object_creation_type: ObjectCreationType::Ephemeral as i32,
            env_dict: HashMap::from([(JIT_ENV.to_string(), spec.jit_config.expose_secret().to_string())]),
            ..Default::default()
        };
        let resp = self
            .api
            .unary(
                "SecretGetOrCreate",
                request,
                Duration::from_secs(30),
                |mut c, r| async move { c.secret_get_or_create(r).await },
            )
            .await
            .map_err(|e| classify(&e))?;
        Ok(resp.secret_id)
    }

    fn definition(&self, spec: &SandboxSpec, image_id: String, secret_id: String) -> Sandbox {
        let s = &self.settings;
        let m = &spec.machine;
        let gpu = m.gpu.as_ref().or(s.gpu.as_ref()).map(|g| GpuConfig {
            r#type: 0,
            count: g.count,
            gpu_type: g.kind.clone(),
        });
        Sandbox {
            // Runs as root, which the runner refuses unless told otherwise.
            entrypoint_args: vec![
                "/bin/bash".into(),
                "-c".into(),
                format!("cd {RUNNER_HOME} && RUNNER_ALLOW_RUNASROOT=1 exec ./run.sh"),
            ],
            image_id,
            secret_ids: vec![secret_id],
            resources: Some(Resources {
                memory_mb: m.memory_mib.unwrap_or(s.memory_mib),
                milli_cpu: (m.cpu.unwrap_or(s.cpu) * 1000.0).round() as u32,
                gpu_config: gpu,
            }),
            timeout_secs: u32::try_from(spec.timeout.as_secs())
                .unwrap_or(86_400)
                .clamp(1, 86_400),
            workdir: Some(RUNNER_HOME.into()),
            // A runner must reach GitHub: ask for open networking rather than rely on a default.
            network_access: Some(NetworkAccess {
                network_access_type: NetworkAccessType::Open as i32,
            }),
            name: Some(spec.name.clone()),
            ..Default::default()
        }
    }

    async fn find(&self, name: &str) -> Result<String, BackendError> {
        let request = SandboxGetFromNameRequest {
            sandbox_name: name.to_string(),
            environment_name: self.settings.environment.clone(),
            app_name: self.settings.app_name.clone(),
        };
        let resp = self
            .api
            .unary(
                "SandboxGetFromName",
                request,
                Duration::from_secs(30),
                |mut c, r| async move { c.sandbox_get_from_name(r).await },
            )
            .await
            .map_err(|e| classify(&e))?;
        tracing::info!(runner.name = %name, sandbox.id = %resp.sandbox_id, "sandbox existed already; using it");
        Ok(resp.sandbox_id)
    }

    /// Terminates a sandbox; one already gone is fine.
    pub async fn terminate(&self, id: &str) -> Result<(), BackendError> {
        let request = SandboxTerminateRequest {
            sandbox_id: id.to_string(),
        };
        match self
            .api
            .unary(
                "SandboxTerminate",
                request,
                Duration::from_secs(30),
                |mut c, r| async move { c.sandbox_terminate(r).await },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == Code::NotFound => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }

    /// The result of a finished sandbox (`SandboxWait` with timeout 0 polls without waiting).
    pub async fn exit_status(&self, id: &str) -> Option<String> {
        let request = SandboxWaitRequest {
            sandbox_id: id.to_string(),
            timeout: 0.0,
        };
        let resp = self
            .api
            .unary(
                "SandboxWait",
                request,
                Duration::from_secs(10),
                |mut c, r| async move { c.sandbox_wait(r).await },
            )
            .await
            .ok()?;
        let result = resp
            .result
            .filter(|r| r.status != GenericStatus::Unspecified as i32)?;
        let status = GenericStatus::try_from(result.status)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        let status = status.trim_start_matches("GENERIC_STATUS_");
        Some(if result.exception.is_empty() {
            format!("{status}, exit {}", result.exitcode)
        } else {
            format!("{status}, exit {}: {}", result.exitcode, result.exception)
        })
    }

    /// Running sandboxes tagged as this deployment's, every page.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        let app_id = self.app_id()?.to_string();
        let mut out = Vec::new();
        let mut before = 0.0;
        for _ in 0..10_000 {
            let request = SandboxListRequest {
                app_id: app_id.clone(),
                before_timestamp: before,
                environment_name: self.settings.environment.clone(),
                include_finished: false,
                tags: vec![SandboxTag {
                    tag_name: DEPLOYMENT_TAG.into(),
                    tag_value: self.settings.deployment.clone(),
                }],
            };
            let page = self
                .api
                .unary(
                    "SandboxList",
                    request,
                    Duration::from_secs(30),
                    |mut c, r| async move { c.sandbox_list(r).await },
                )
                .await
                .map_err(|e| classify(&e))?;
            let Some(last) = page.sandboxes.last() else {
                break;
            };
            before = last.created_at;
            out.extend(page.sandboxes.into_iter().map(|s| SandboxInfo {
                id: s.id,
                name: s.name,
                created_at: (s.created_at * 1000.0) as i64,
            }));
        }
        Ok(out)
    }
}

fn classify(e: &ModalError) -> BackendError {
    if e.is_transient() {
        BackendError::Transient(e.to_string())
    } else {
        BackendError::Permanent(e.to_string())
    }
}
