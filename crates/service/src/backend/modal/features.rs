//! Issue 13, items 1, 2 and 6: what a sandbox gets beyond the plain runner, chosen by the
//! operator and by the job's labels (facts: shared/docs/modal-features.md §1, §2).
//!
//! - **Docker** (`docker` label, `SANDBOX_DOCKER=true`): the sandbox runs in Modal's VM
//!   runtime (`Sandbox.runtime = "vm"`, §1: "the recommended method to run Docker in
//!   Sandboxes"), where memory is static, so it is always set explicitly; the entrypoint
//!   starts `dockerd` and waits (bounded) for `docker info` before it starts the runner. VM
//!   sandboxes have no GPU: such a job is refused by the policy before it gets here.
//! - **Cache volume** (`CACHE_VOLUME`, `CACHE_VOLUME_SCOPE`): a v2 Modal volume, found or
//!   created once per name (`VolumeGetOrCreate`), mounted at [`CACHE_PATH`]; the common tool
//!   caches point there, and the changes are committed when the job ends (see
//!   [`entrypoint`]).
//! - **`image=NAME`** (`SANDBOX_IMAGES`): the runner image built on the operator's base
//!   image `NAME`, once per name and runner release, on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::image::{self, ImageSettings, RUNNER_HOME, dockerfile_commands};
use super::proto::{ObjectCreationType, Sandbox, VolumeFsVersion, VolumeGetOrCreateRequest, VolumeMount};
use super::{BackendError, ModalBackend, SandboxSpec, classify};
use crate::runner_version::RunnerRelease;

/// Where the cache volume is mounted in every sandbox.
pub const CACHE_PATH: &str = "/cache";
/// Memory of a `docker` job's VM sandbox without a `memory=` label
/// (`SANDBOX_DOCKER_MEMORY_MIB`): a VM's memory is exactly what is asked for (Modal's
/// default is 1 GiB, too little for dockerd and a few containers), §1 advises ≥ 4 GiB.
pub const DEFAULT_DOCKER_MEMORY_MIB: u32 = 8192;
/// How long the entrypoint waits for `dockerd` to answer `docker info` (Modal's own demo
/// polls for 120 s).
pub const DOCKERD_READY_SECS: u32 = 120;
/// The entrypoint's exit code when `dockerd` never became ready.
pub const DOCKERD_NOT_READY_EXIT: i32 = 97;
/// Longest Modal object name (as for Apps).
const MAX_VOLUME_NAME: usize = 64;
/// Longest `CACHE_VOLUME`: leaves room for the repository part of a per-repository name.
pub const MAX_CACHE_VOLUME_BASE: usize = 32;

/// The operator's choices for these features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFeatures {
    /// `SANDBOX_DOCKER`: the runner images install Docker, and `docker` jobs are served.
    pub docker: bool,
    /// `SANDBOX_DOCKER_MEMORY_MIB`: memory of a `docker` job's VM without a `memory=` label.
    pub docker_memory_mib: u32,
    /// `CACHE_VOLUME`, `CACHE_VOLUME_SCOPE`.
    pub cache: Option<CacheVolume>,
    /// `SANDBOX_IMAGES`: (name, base image tag), names lower case.
    pub images: Vec<(String, String)>,
}

impl Default for SandboxFeatures {
    fn default() -> Self {
        SandboxFeatures {
            docker: false,
            docker_memory_mib: DEFAULT_DOCKER_MEMORY_MIB,
            cache: None,
            images: Vec::new(),
        }
    }
}

/// The cache volume's base name and how far one volume reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheVolume {
    pub name: String,
    pub scope: CacheScope,
}

/// `CACHE_VOLUME_SCOPE`: one volume for the whole deployment, or one per repository (the
/// default: a job can then only poison its own repository's cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheScope {
    Deployment,
    #[default]
    Repo,
}

/// The volume a job of `repo` (`owner/name`) mounts. Deployment scope: `CACHE_VOLUME`
/// itself. Repository scope: `CACHE_VOLUME-owner-name-HASH`, lower case, characters Modal
/// does not accept in names as `-`, the `owner-name` part cut so the whole fits Modal's 64
/// characters, and `HASH` the first 8 hex digits of SHA-256(`owner/name` lower case), so
/// repositories whose cut or mapped names coincide still get distinct volumes.
pub fn volume_name(cache: &CacheVolume, repo: &str) -> String {
    if cache.scope == CacheScope::Deployment {
        return cache.name.clone();
    }
    let repo = repo.to_ascii_lowercase();
    let digest = hex::encode(&Sha256::digest(repo.as_bytes())[..4]);
    let readable: String = repo
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let room = MAX_VOLUME_NAME.saturating_sub(cache.name.len() + digest.len() + 2);
    let readable = &readable[..readable.len().min(room)];
    format!("{}-{readable}-{digest}", cache.name)
}

/// Where the common tool caches go on the volume, as `VARIABLE=path` for the runner's
/// environment (job steps inherit it). Cargo's registry and git checkouts are symlinked
/// instead (see [`entrypoint`]): moving all of `CARGO_HOME` would put toolchains there too.
pub const CACHE_ENV: [(&str, &str); 5] = [
    ("npm_config_cache", "/cache/npm"),
    ("PIP_CACHE_DIR", "/cache/pip"),
    ("YARN_CACHE_FOLDER", "/cache/yarn"),
    ("GOMODCACHE", "/cache/go/mod"),
    ("GOCACHE", "/cache/go/build"),
];

/// The sandbox's command line. Without features it is the plain runner start. With the
/// cache it first creates the cache directories, links Cargo's registry and git
/// directories there and exports [`CACHE_ENV`]; after the runner exits it runs
/// `sync /cache`, which on a v2 volume commits the changes at once (§2) — Modal also
/// commits when the sandbox terminates, which covers a runner stopped from outside. With
/// Docker it starts `dockerd`, waits up to [`DOCKERD_READY_SECS`] for `docker info`, and
/// fails with exit [`DOCKERD_NOT_READY_EXIT`] and the end of dockerd's log if it never
/// answers. It holds no credential: the JIT config comes in through a secret.
pub fn entrypoint(docker: bool, cache: bool) -> Vec<String> {
    let mut script = String::new();
    if cache {
        script.push_str(&cache_setup());
    }
    if docker {
        script.push_str(&docker_start());
    }
    script.push_str(&format!("cd {RUNNER_HOME} && "));
    if cache {
        script.push_str(&format!(
            "{{ RUNNER_ALLOW_RUNASROOT=1 ./run.sh; rc=$?; sync {CACHE_PATH} || true; exit $rc; }}"
        ));
    } else {
        script.push_str("RUNNER_ALLOW_RUNASROOT=1 exec ./run.sh");
    }
    vec!["/bin/bash".into(), "-c".into(), script]
}

fn cache_setup() -> String {
    let dirs: Vec<&str> = CACHE_ENV.iter().map(|(_, path)| *path).collect();
    let exports: Vec<String> = CACHE_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{{ mkdir -p {dirs} {CACHE_PATH}/cargo/registry {CACHE_PATH}/cargo/git \"${{HOME:-/root}}/.cargo\" \
         && for d in registry git; do [ -e \"${{HOME:-/root}}/.cargo/$d\" ] || ln -s \"{CACHE_PATH}/cargo/$d\" \"${{HOME:-/root}}/.cargo/$d\"; done; }} \
         || echo 'the cache volume could not be prepared; caches stay in the sandbox' >&2; \
         export {exports}; ",
        dirs = dirs.join(" "),
        exports = exports.join(" ")
    )
}

fn docker_start() -> String {
    format!(
        "dockerd >/var/log/dockerd.log 2>&1 & dockerd_pid=$!; ready=0; \
         for _ in $(seq 1 {DOCKERD_READY_SECS}); do \
         if [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1; then ready=1; break; fi; \
         kill -0 $dockerd_pid 2>/dev/null || break; sleep 1; done; \
         if [ $ready != 1 ]; then echo 'dockerd did not become ready within {DOCKERD_READY_SECS} s; the end of its log:' >&2; \
         tail -n 40 /var/log/dockerd.log >&2; exit {DOCKERD_NOT_READY_EXIT}; fi; "
    )
}

/// The runner image's recipe with Docker installed when `docker` (before the runner, so a
/// runner upgrade reuses the cached Docker layer). Debian's and Ubuntu's `docker.io`, with
/// `iptables` for bridge networks.
pub fn with_docker(mut commands: Vec<String>, docker: bool) -> Vec<String> {
    if docker {
        let install = "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                       docker.io iptables && rm -rf /var/lib/apt/lists/*";
        commands.insert(2.min(commands.len()), install.to_string());
    }
    commands
}

/// Why a sandbox ended, in words, for exit codes the entrypoint gives a meaning.
pub fn exit_meaning(exitcode: i32) -> Option<String> {
    (exitcode == DOCKERD_NOT_READY_EXIT)
        .then(|| format!("dockerd did not become ready within {DOCKERD_READY_SECS} s (a `docker` job)"))
}

/// What the backend remembers between creates: volume ids per name and named images per
/// (name, runner release), each found or built once (concurrent creates wait for it).
#[derive(Default)]
pub(super) struct FeatureCache {
    /// Volume name → id.
    volumes: Mutex<HashMap<String, Once>>,
    /// (image name, runner version) → image id.
    images: Mutex<HashMap<(String, String), Once>>,
}

/// A value found or made once; concurrent askers wait for the first, a failure lets the
/// next one try again.
type Once = Arc<OnceCell<String>>;

impl FeatureCache {
    fn volume(&self, name: &str) -> Once {
        let mut map = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    fn image(&self, name: &str, release: &RunnerRelease) -> Once {
        let mut map = self.images.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (name.to_string(), release.version.to_string());
        Arc::clone(map.entry(key).or_default())
    }
}

impl ModalBackend {
    /// Refuses a spec the deployment cannot serve (the planner's policy refuses these
    /// jobs first; this keeps the backend safe on its own).
    pub(super) fn check_features(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        let f = &self.settings.features;
        let m = &spec.machine;
        if m.docker && !f.docker {
            return Err(BackendError::Permanent(
                "a docker job needs SANDBOX_DOCKER=true".into(),
            ));
        }
        if m.docker && (m.gpu.is_some() || self.settings.gpu.is_some()) {
            return Err(BackendError::Permanent(
                "a docker job runs in Modal's VM runtime, which has no GPU".into(),
            ));
        }
        Ok(())
    }

    /// The image a job's sandbox starts from: the runner image, or for `image=NAME` the
    /// runner image on that base, built on first use for the current runner release.
    pub(super) async fn image_for(&self, spec: &SandboxSpec) -> Result<String, BackendError> {
        let Some(name) = &spec.machine.image else {
            return self.image.id();
        };
        let base = self
            .settings
            .features
            .images
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, base)| base.clone())
            .ok_or_else(|| BackendError::Permanent(format!("image={name} is not in SANDBOX_IMAGES")))?;
        let release = self
            .releases
            .current()
            .ok_or_else(|| BackendError::Transient("no runner release chosen yet".into()))?;
        let cell = self.features.image(name, &release);
        let id = cell
            .get_or_try_init(|| self.build_named(name, base, &release))
            .await?;
        Ok(id.clone())
    }

    async fn build_named(
        &self,
        name: &str,
        base: String,
        release: &RunnerRelease,
    ) -> Result<String, BackendError> {
        let s = &self.settings;
        let app_id = self.app_id()?.to_string();
        let builder = image::builder_version(&self.api, &s.environment, s.builder_version.as_deref())
            .await
            .map_err(|e| classify(&e))?;
        let recipe = ImageSettings {
            base,
            extra_commands: s.image.extra_commands.clone(),
        };
        let commands = with_docker(dockerfile_commands(&recipe, release), s.features.docker);
        tracing::info!(image.name = %name, image.base = %recipe.base, runner.version = %release.version, "building the runner image on a chosen base");
        image::build(
            &self.api,
            &app_id,
            commands,
            &builder,
            s.build_timeout,
            s.build_stream_retry,
        )
        .await
        .map_err(image::backend_error)
    }

    /// The cache volume's mount for a job of `spec.repo`, if `CACHE_VOLUME` is set.
    pub(super) async fn cache_mount(&self, spec: &SandboxSpec) -> Result<Option<VolumeMount>, BackendError> {
        let Some(cache) = &self.settings.features.cache else {
            return Ok(None);
        };
        let name = volume_name(cache, &spec.repo);
        let cell = self.features.volume(&name);
        let id = cell.get_or_try_init(|| self.volume_id(&name)).await?;
        Ok(Some(VolumeMount {
            volume_id: id.clone(),
            mount_path: CACHE_PATH.into(),
            // As every Modal SDK sends (§2): changes are also committed in the background.
            allow_background_commits: true,
            read_only: false,
        }))
    }

    /// Finds or creates the v2 volume `name`. An existing v1 volume of that name is an
    /// error: the end-of-job commit (`sync`) needs v2.
    async fn volume_id(&self, name: &str) -> Result<String, BackendError> {
        let request = VolumeGetOrCreateRequest {
            deployment_name: name.to_string(),
            environment_name: self.settings.environment.clone(),
            object_creation_type: ObjectCreationType::CreateIfMissing as i32,
            version: VolumeFsVersion::V2 as i32,
        };
        let resp = self
            .api
            .unary(
                "VolumeGetOrCreate",
                request,
                Duration::from_secs(30),
                |mut c, r| async move { c.volume_get_or_create(r).await },
            )
            .await
            .map_err(|e| classify(&e))?;
        let version = resp.metadata.as_ref().map_or(resp.version, |m| m.version);
        if version != VolumeFsVersion::V2 as i32 {
            return Err(BackendError::Permanent(format!(
                "CACHE_VOLUME: the Modal volume {name} exists as a v1 volume; use another name (the cache needs v2)"
            )));
        }
        tracing::info!(volume.name = %name, volume.id = %resp.volume_id, "cache volume ready");
        Ok(resp.volume_id)
    }

    /// Sets what the job's features change in its sandbox: the entrypoint, the VM runtime
    /// and its memory for Docker, the cache mount.
    pub(super) fn apply_features(
        &self,
        spec: &SandboxSpec,
        sandbox: &mut Sandbox,
        mount: Option<VolumeMount>,
    ) {
        let docker = spec.machine.docker;
        sandbox.entrypoint_args = entrypoint(docker, mount.is_some());
        if docker {
            sandbox.runtime = Some("vm".into());
            if let Some(resources) = sandbox.resources.as_mut() {
                resources.memory_mb = spec
                    .machine
                    .memory_mib
                    .unwrap_or(self.settings.features.docker_memory_mib);
                resources.gpu_config = None;
            }
        }
        sandbox.volume_mounts = mount.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(scope: CacheScope) -> CacheVolume {
        CacheVolume {
            name: "ci-cache".into(),
            scope,
        }
    }

    #[test]
    fn a_repository_scoped_volume_name_is_per_repository_and_fits_modals_rules() {
        let a = volume_name(&cache(CacheScope::Repo), "Octo-Org/My.Repo_1");
        assert!(a.starts_with("ci-cache-octo-org-my.repo_1-"), "{a}");
        assert_eq!(
            a,
            volume_name(&cache(CacheScope::Repo), "octo-org/my.repo_1"),
            "case-insensitive"
        );
        assert_ne!(a, volume_name(&cache(CacheScope::Repo), "octo-org/my.repo_2"));
        let long = format!("{}/{}", "o".repeat(39), "r".repeat(100));
        let cut = volume_name(
            &CacheVolume {
                name: "x".repeat(MAX_CACHE_VOLUME_BASE),
                scope: CacheScope::Repo,
            },
            &long,
        );
        assert!(cut.len() <= 64, "{cut}");
        let other = format!("{}/{}", "o".repeat(39), "r".repeat(99));
        assert_ne!(
            volume_name(&cache(CacheScope::Repo), &long),
            volume_name(&cache(CacheScope::Repo), &other),
            "cut names stay distinct by their hash"
        );
        for name in [a, cut] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "{name}"
            );
        }
        assert_eq!(volume_name(&cache(CacheScope::Deployment), "octo/a"), "ci-cache");
    }

    #[test]
    fn without_features_the_entrypoint_is_the_plain_runner_start() {
        assert_eq!(
            entrypoint(false, false),
            [
                "/bin/bash",
                "-c",
                "cd /actions-runner && RUNNER_ALLOW_RUNASROOT=1 exec ./run.sh"
            ]
        );
    }

    #[test]
    fn the_docker_entrypoint_waits_for_dockerd_before_the_runner() {
        let script = entrypoint(true, false).pop().expect("script");
        let dockerd = script.find("dockerd >").expect("starts dockerd");
        let wait = script.find("docker info").expect("waits for docker info");
        let runner = script.find("./run.sh").expect("starts the runner");
        assert!(dockerd < wait && wait < runner, "{script}");
        assert!(
            script.contains("seq 1 120") && script.contains("exit 97"),
            "{script}"
        );
    }

    #[test]
    fn the_cache_entrypoint_points_tool_caches_at_the_volume_and_commits_after_the_runner() {
        let script = entrypoint(false, true).pop().expect("script");
        for (var, path) in CACHE_ENV {
            assert!(script.contains(&format!("{var}={path}")), "{var}: {script}");
        }
        assert!(script.contains("/cache/cargo/registry"), "{script}");
        let runner = script.find("./run.sh").expect("runner");
        let sync = script.find("sync /cache").expect("commit");
        assert!(runner < sync, "{script}");
        assert!(
            !script.contains("exec ./run.sh"),
            "the shell must outlive the runner: {script}"
        );
    }

    #[test]
    fn docker_is_installed_only_when_enabled_and_before_the_runner() {
        let base = vec!["FROM debian".to_string(), "RUN apt".into(), "RUN runner".into()];
        assert_eq!(with_docker(base.clone(), false), base);
        let with = with_docker(base, true);
        assert!(with[2].contains("docker.io"), "{with:?}");
        assert_eq!(with[3], "RUN runner");
    }
}
