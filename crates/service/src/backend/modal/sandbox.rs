//! Sandboxes: create (paced, idempotent on the name), find, terminate, list, and how one
//! ended. The JIT config reaches a sandbox only through an ephemeral secret.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use tonic::Code;

use super::client;
use super::image::RUNNER_HOME;
use super::proto::generic_result::GenericStatus;
use super::proto::network_access::NetworkAccessType;
use super::proto::{
    GpuConfig, NetworkAccess, ObjectCreationType, Resources, Sandbox, SandboxCreateRequest,
    SandboxGetFromNameRequest, SandboxListRequest, SandboxTag, SandboxTerminateRequest, SandboxWaitRequest,
    SecretGetOrCreateRequest,
};
use super::{BackendError, DEPLOYMENT_TAG, JIT_ENV, ModalBackend, SandboxInfo, SandboxSpec, classify};

/// How many rate refusals one create waits out before it counts as failed.
const MAX_RATE_REFUSALS: u32 = 20;

impl ModalBackend {
    /// Creates the runner's sandbox, or finds it if a previous try already did.
    pub async fn create(&self, spec: SandboxSpec) -> Result<String, BackendError> {
        let app_id = self.app_id()?.to_string();
        self.check_features(&spec)?;
        let image_id = self.image_for(&spec).await?;
        let mount = self.cache_mount(&spec).await?;
        let secret_id = self.jit_secret(&spec).await?;
        let mut definition = self.definition(&spec, image_id, secret_id);
        self.apply_features(&spec, &mut definition, mount);
        let request = SandboxCreateRequest {
            app_id,
            definition: Some(definition),
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
        // One idempotency key for every try of this create, paced re-queues included.
        let key = client::new_idempotency_key();
        let mut refused = 0;
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
        let exception = match super::features::exit_meaning(result.exitcode) {
            Some(meaning) if result.exception.is_empty() => meaning,
            Some(meaning) => format!("{meaning}; {}", result.exception),
            None => result.exception,
        };
        Some(if exception.is_empty() {
            format!("{status}, exit {}", result.exitcode)
        } else {
            format!("{status}, exit {}: {exception}", result.exitcode)
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
