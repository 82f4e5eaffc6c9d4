//! Issue 13, items 1, 2 and 6 through the whole service on the Modal backend: `docker`
//! jobs in the VM runtime with dockerd started first, the cache volume per repository or
//! per deployment, and `image=` bases from the operator's allowlist.

use std::collections::HashSet;
use std::time::Duration;

use fakes::github::{JobSpec, RunSpec};
use fakes::modal::{FakeModal, FakeModalConfig, SandboxView};
use modal_github_runner::backend::SandboxSpec;
use modal_github_runner::backend::modal::features::{CacheScope, CacheVolume, volume_name};
use modal_github_runner::backend::modal::proto::VolumeFsVersion;
use modal_github_runner::backend::modal::{ModalBackend, Releases};
use modal_github_runner::domain::MachineSpec;
use modal_github_runner::runner_version::{RunnerRelease, RunnerVersion};
use secrecy::SecretString;

use crate::helpers::{Kind, Options, REPO, World, modal_settings, wait};

const OTHER: &str = "octo/other";

fn modal(env: &World) -> &FakeModal {
    env.modal.as_ref().expect("the modal backend")
}

fn job(name: &str, extra: &[&str]) -> JobSpec {
    let labels = ["self-hosted", "modal"].iter().chain(extra).copied();
    JobSpec::new(name, labels).duration(Duration::from_millis(200))
}

/// Waits until every job in `ids` is completed at the fake GitHub.
async fn wait_completed(env: &World, ids: &[u64]) {
    let done = env
        .github
        .wait_until(Duration::from_secs(40), |gh| {
            ids.iter()
                .all(|id| gh.job(*id).is_some_and(|j| j.status.as_str() == "completed"))
        })
        .await;
    assert!(done, "{}", env.tail_logs(40));
}

/// Waits until the service logged, once, that `job` gets no runner, with `reason` in it.
async fn assert_refused_once(env: &World, job: u64, reason: &str) {
    let said = |l: &String| l.contains("job gets no runner") && l.contains(&job.to_string());
    let warned = wait(Duration::from_secs(10), || {
        env.logs().iter().any(|l| said(l) && l.contains(reason))
    })
    .await;
    assert!(warned, "no refusal saying {reason:?}: {}", env.tail_logs(30));
    assert_eq!(env.logs().iter().filter(|l| said(l)).count(), 1, "said once");
}

fn sandbox_of_job(fake: &FakeModal, job: u64) -> SandboxView {
    fake.sandboxes()
        .into_iter()
        .find(|s| s.tag("job") == Some(job.to_string().as_str()))
        .unwrap_or_else(|| panic!("no sandbox for job {job}"))
}

fn script(sb: &SandboxView) -> &str {
    sb.entrypoint_args.last().map(String::as_str).unwrap_or_default()
}

/// `ImageGetOrCreate` requests whose recipe holds `text`.
fn image_requests_with(fake: &FakeModal, text: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|c| c.rpc == "ImageGetOrCreate" && c.request.contains(text))
        .count()
}

#[tokio::test]
async fn a_docker_job_runs_in_the_vm_runtime_with_dockerd_ready_before_the_runner_and_docker_with_a_gpu_is_refused()
 {
    let env = World::start(
        Options::backend(Kind::Modal)
            .with("SANDBOX_DOCKER", "true")
            .with("SANDBOX_GPU_TYPES", "T4"),
    )
    .await;
    let run = env.github.queue_run(RunSpec::new(
        REPO,
        vec![
            job("compose", &["docker"]),
            job("plain", &[]),
            job("docker-gpu", &["docker", "gpu=t4"]),
        ],
    ));
    let (docker, plain, refused) = (run.job_ids[0], run.job_ids[1], run.job_ids[2]);

    wait_completed(&env, &[docker, plain]).await;
    assert_refused_once(&env, refused, "VM runtime, which has no GPU").await;

    let fake = modal(&env);
    assert_eq!(fake.sandboxes().len(), 2, "the docker+gpu job got no sandbox");
    let vm = sandbox_of_job(fake, docker);
    assert_eq!(vm.definition.runtime.as_deref(), Some("vm"));
    assert_eq!(vm.resources.memory_mb, 8192, "a VM's memory is set explicitly");
    assert_eq!(vm.resources.gpu, None);
    let s = script(&vm);
    let (start, ready, runner) = (
        s.find("dockerd >").expect("dockerd is started"),
        s.find("docker info").expect("its readiness is awaited"),
        s.find("./run.sh").expect("the runner starts"),
    );
    assert!(start < ready && ready < runner, "{s}");
    assert!(
        s.contains("exit 97"),
        "a dockerd that never answers fails the sandbox: {s}"
    );
    let gvisor = sandbox_of_job(fake, plain);
    assert_eq!(
        gvisor.definition.runtime, None,
        "plain jobs keep the default runtime"
    );
    assert_eq!(gvisor.resources.memory_mb, 4096);
    assert!(!script(&gvisor).contains("dockerd"), "{}", script(&gvisor));
    assert_eq!(fake.image_builds(), 1);
    assert_eq!(
        image_requests_with(fake, "docker.io"),
        1,
        "the runner image installs Docker"
    );

    env.github.cancel_job(refused);
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn docker_jobs_are_refused_until_the_operator_enables_docker() {
    let env = World::start(Options::backend(Kind::Modal)).await;
    let run = env.github.queue_run(RunSpec::new(
        REPO,
        vec![job("plain", &[]), job("compose", &["docker"])],
    ));
    let (plain, refused) = (run.job_ids[0], run.job_ids[1]);

    wait_completed(&env, &[plain]).await;
    assert_refused_once(&env, refused, "SANDBOX_DOCKER=true").await;

    let fake = modal(&env);
    assert_eq!(fake.sandboxes().len(), 1);
    assert_eq!(
        image_requests_with(fake, "docker.io"),
        0,
        "plain images do not pay for Docker"
    );
    env.github.cancel_job(refused);
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

/// Runs two jobs of `REPO` and one of `OTHER` with a cache volume in `scope`; returns the
/// world and the three job ids.
async fn cached_jobs(scope: &str) -> (World, [u64; 3]) {
    let env = World::start(
        Options::backend(Kind::Modal)
            .with("ALLOWED_REPOS", &format!("{REPO},{OTHER}"))
            .with("CACHE_VOLUME", "ci-cache")
            .with("CACHE_VOLUME_SCOPE", scope),
    )
    .await;
    let app = env
        .github
        .queue_run(RunSpec::new(REPO, vec![job("a", &[]), job("b", &[])]));
    let other = env.github.queue_run(RunSpec::new(OTHER, vec![job("c", &[])]));
    let ids = [app.job_ids[0], app.job_ids[1], other.job_ids[0]];
    wait_completed(&env, &ids).await;
    (env, ids)
}

/// The volume id each job's sandbox mounts at /cache (asserting the mount's shape).
fn mounted_volume(fake: &FakeModal, job: u64) -> String {
    let sb = sandbox_of_job(fake, job);
    assert_eq!(
        sb.definition.volume_mounts.len(),
        1,
        "{:?}",
        sb.definition.volume_mounts
    );
    let mount = &sb.definition.volume_mounts[0];
    assert_eq!(mount.mount_path, "/cache");
    assert!(mount.allow_background_commits && !mount.read_only, "{mount:?}");
    let s = script(&sb);
    assert!(
        s.contains("npm_config_cache=/cache/npm") && s.contains("GOMODCACHE=/cache/go/mod"),
        "{s}"
    );
    assert!(
        s.find("./run.sh") < s.find("sync /cache"),
        "the volume is committed after the job: {s}"
    );
    mount.volume_id.clone()
}

#[tokio::test]
async fn each_repository_gets_its_own_cache_volume_created_once_and_mounted_at_cache() {
    let (env, [a, b, c]) = cached_jobs("repo").await;
    let fake = modal(&env);

    let cache = CacheVolume {
        name: "ci-cache".into(),
        scope: CacheScope::Repo,
    };
    let volumes = fake.volumes();
    let names: HashSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    let expected = [volume_name(&cache, REPO), volume_name(&cache, OTHER)];
    assert_eq!(
        names,
        expected.iter().map(String::as_str).collect(),
        "{volumes:?}"
    );
    assert!(
        volumes.iter().all(|v| v.version == VolumeFsVersion::V2),
        "{volumes:?}"
    );
    assert_eq!(fake.volume_creations(), 2);
    let lookups = fake
        .requests()
        .iter()
        .filter(|c| c.rpc == "VolumeGetOrCreate")
        .count();
    assert_eq!(
        lookups, 2,
        "one lookup per volume name, then the id is remembered"
    );
    let id_of = |name: &str| volumes.iter().find(|v| v.name == name).map(|v| v.id.clone());
    assert_eq!(Some(mounted_volume(fake, a)), id_of(&expected[0]));
    assert_eq!(Some(mounted_volume(fake, b)), id_of(&expected[0]));
    assert_eq!(Some(mounted_volume(fake, c)), id_of(&expected[1]));
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn with_deployment_scope_every_repository_shares_one_cache_volume() {
    let (env, [a, b, c]) = cached_jobs("deployment").await;
    let fake = modal(&env);

    let volumes = fake.volumes();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0].name, "ci-cache");
    for job in [a, b, c] {
        assert_eq!(mounted_volume(fake, job), volumes[0].id);
    }
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn image_labels_build_the_runner_image_on_the_chosen_base_once_and_unknown_names_are_refused() {
    let env = World::start(Options::backend(Kind::Modal).with(
        "SANDBOX_IMAGES",
        "node=node:22-bookworm,cuda=nvidia/cuda:12.4.1-runtime-ubuntu22.04",
    ))
    .await;
    let run = env.github.queue_run(RunSpec::new(
        REPO,
        vec![
            job("node-1", &["image=node"]),
            job("node-2", &["image=node"]),
            job("plain", &[]),
            job("rust", &["image=rust"]),
        ],
    ));
    let [n1, n2, plain, refused] = [run.job_ids[0], run.job_ids[1], run.job_ids[2], run.job_ids[3]];

    wait_completed(&env, &[n1, n2, plain]).await;
    assert_refused_once(&env, refused, "image=rust is not in SANDBOX_IMAGES (node,cuda)").await;

    let fake = modal(&env);
    assert_eq!(
        image_requests_with(fake, "FROM node:22-bookworm"),
        1,
        "built once per name"
    );
    assert_eq!(
        image_requests_with(fake, "nvidia/cuda"),
        0,
        "built on first use only"
    );
    assert_eq!(fake.image_builds(), 2, "the default image and node's");
    let node = sandbox_of_job(fake, n1).image_id;
    assert_eq!(sandbox_of_job(fake, n2).image_id, node);
    assert_ne!(sandbox_of_job(fake, plain).image_id, node);
    assert_eq!(fake.sandboxes().len(), 3, "the unknown image got no sandbox");

    env.github.cancel_job(refused);
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_sandbox_whose_dockerd_never_became_ready_ends_with_that_reason() {
    // The fake runs this in place of the entrypoint: what the real one does when
    // `docker info` never answers.
    let fake = FakeModal::start(FakeModalConfig {
        runner_command: vec!["/bin/sh".into(), "-c".into(), "exit 97".into()],
        create_rate_per_sec: None,
        ..FakeModalConfig::default()
    })
    .await
    .expect("fake Modal");
    let mut settings = modal_settings(&fake, None, "mgr-test", "test");
    settings.features.docker = true;
    let release = RunnerRelease::from_version(RunnerVersion::parse("2.336.0").expect("version"));
    let backend = ModalBackend::new(settings, Releases::fixed(release)).expect("backend");
    backend.prepare().await.expect("prepare");
    let spec = SandboxSpec {
        name: "docker-1".into(),
        repo: REPO.into(),
        jit_config: SecretString::from("eyJmYWtlIjoiaml0In0="),
        tags: vec![("modal-github-runner".into(), "test".into())],
        timeout: Duration::from_secs(60),
        machine: MachineSpec {
            docker: true,
            ..MachineSpec::default()
        },
    };

    let id = backend.create(spec).await.expect("created");
    let ended = wait(Duration::from_secs(10), || {
        fake.sandbox(&id).is_some_and(|s| !s.is_running())
    })
    .await;
    assert!(ended);

    let reason = backend.exit_status(&id).await.expect("a result");
    assert!(
        reason.contains("exit 97") && reason.contains("dockerd did not become ready within 120 s"),
        "{reason}"
    );
    assert_eq!(
        fake.sandbox(&id).expect("sandbox").definition.runtime.as_deref(),
        Some("vm")
    );
    fake.shutdown().await;
}
