//! The Modal backend against the fake Modal: through the whole service, and directly.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fakes::github::{FakeGitHub, FakeGitHubConfig, JobSpec, RunSpec};
use fakes::modal::{FakeModal, FakeModalConfig, FaultKind, ModalFault};
use modal_github_runner::backend::modal::{ModalBackend, Releases};
use modal_github_runner::backend::{BackendError, SandboxSpec};
use modal_github_runner::domain::{DeploymentId, RepoName};
use modal_github_runner::github::RunnerHome;
use modal_github_runner::runner_release::{self, ReleasePublisher, ReleaseSource};
use modal_github_runner::runner_version::{RunnerRelease, RunnerVersion};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::helpers::{Kind, Options, REPO, World, github_client, jobs, modal_settings, wait};

fn modal(env: &World) -> &FakeModal {
    env.modal.as_ref().expect("the modal backend")
}

/// The service's image build request, as the fake recorded it.
fn image_request(fake: &FakeModal) -> fakes::modal::RecordedCall {
    fake.requests()
        .into_iter()
        .find(|c| c.rpc == "ImageGetOrCreate")
        .expect("an image request")
}

/// Every sandbox name is used once, whatever retries happened.
fn assert_one_sandbox_per_name(fake: &FakeModal) {
    let names: Vec<String> = fake.sandboxes().into_iter().filter_map(|s| s.name).collect();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a runner name got two sandboxes: {names:?}"
    );
}

#[tokio::test]
async fn sandboxes_carry_the_runner_name_tags_resources_and_no_credential_in_their_command() {
    let env = World::start(Options::backend(Kind::Modal)).await;
    let run = env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;

    let sandboxes = modal(&env).sandboxes();
    assert_eq!(sandboxes.len(), 1);
    let sb = &sandboxes[0];
    let name = format!("modal-{}-1", run.job_ids[0]);
    assert_eq!(sb.name.as_deref(), Some(name.as_str()));
    // The deployment's id, derived from the app, the prefix and (no) owners.
    let deployment = DeploymentId::derive("modal-github-runner", "modal", &[]);
    assert_eq!(sb.tag("modal-github-runner"), Some(deployment.as_str()));
    assert_eq!(sb.tag("job"), Some(run.job_ids[0].to_string().as_str()));
    assert_eq!(sb.tag("runner"), Some(name.as_str()));
    assert_eq!(
        (sb.resources.milli_cpu, sb.resources.memory_mb, sb.timeout_secs),
        (2000, 4096, 3600)
    );
    assert_eq!(
        sb.definition
            .network_access
            .as_ref()
            .map(|n| n.network_access_type),
        Some(1),
        "open networking"
    );
    // The JIT config reached the sandbox only through its secret environment.
    let jit = sb
        .env
        .get("ACTIONS_RUNNER_INPUT_JITCONFIG")
        .expect("the JIT config is in the sandbox's environment")
        .clone();
    assert!(jit.len() > 50);
    assert!(
        sb.entrypoint_args.iter().all(|a| !a.contains(&jit)),
        "{:?}",
        sb.entrypoint_args
    );
    assert!(
        sb.entrypoint_args
            .iter()
            .any(|a| a.contains("RUNNER_ALLOW_RUNASROOT=1") && a.contains("./run.sh"))
    );
    for line in env.logs() {
        assert!(
            !line.contains(&jit),
            "the JIT config leaked into a log line: {line}"
        );
    }
    env.assert_no_secret_in_logs();
    // Every call carried the auth and client metadata.
    for call in modal(&env).requests() {
        assert_eq!(call.token_secret_matched, Some(true), "{}", call.rpc);
        assert!(call.header("x-modal-client-type").is_some() && call.header("x-idempotency-key").is_some());
    }
}

#[tokio::test]
async fn one_image_build_serves_every_sandbox() {
    let env = World::start(Options::backend(Kind::Modal)).await;
    env.github.queue_run(jobs(6, 200));
    env.wait_all_completed(Duration::from_secs(60)).await;
    let fake = modal(&env);
    assert_eq!(fake.image_builds(), 1);
    let images: HashSet<String> = fake.sandboxes().into_iter().map(|s| s.image_id).collect();
    assert_eq!(images.len(), 1);
    let build = image_request(fake);
    assert!(
        build.request.contains("actions-runner-linux-x64-2.336.0.tar.gz"),
        "{}",
        build.request
    );
}

#[tokio::test]
async fn creates_retried_after_unavailable_and_resource_exhausted_make_no_duplicate() {
    // Arrange: creates refused every way Modal refuses them, and one carried out whose
    // answer is lost: only that one could leave a duplicate behind.
    let env = World::start(Options::backend(Kind::Modal)).await;
    let fake = modal(&env);
    for (times, fault) in [
        (2, FaultKind::Status(Code::Unavailable, "try again".into())),
        (
            2,
            FaultKind::ResourceExhausted {
                retry_after_secs: Some(0.3),
            },
        ),
        (
            1,
            FaultKind::ResourceExhausted {
                retry_after_secs: None,
            },
        ),
        (1, FaultKind::AfterSuccess(Code::Unavailable)),
    ] {
        fake.inject(ModalFault::new("SandboxCreate", times, fault));
    }

    // Act: jobs long enough that the sandbox whose answer was lost still runs when its
    // create is retried (Modal keeps a name unique among running sandboxes only).
    env.github.queue_run(jobs(4, 1500));
    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;

    // Assert: one runner per job, one sandbox per runner, no attempt failed, and every
    // retry of a create was the same call (the same idempotency key).
    assert_one_sandbox_per_name(fake);
    assert_eq!(
        env.github.registrations_ever().len(),
        4,
        "one registration per job"
    );
    assert_eq!(fake.sandboxes().len(), 4, "one sandbox per job");
    assert!(
        env.runners().await.iter().all(|r| r.state.as_str() != "failed"),
        "an attempt failed"
    );
    crate::upstream::assert_retried_under_the_same_key(fake, &["SandboxCreate"]);
}

#[tokio::test]
async fn a_lost_create_answer_is_recovered_through_already_exists_without_a_second_sandbox() {
    let env = World::start(Options::backend(Kind::Modal)).await;
    let fake = modal(&env);
    fake.inject(ModalFault::new(
        "SandboxCreate",
        1,
        FaultKind::AfterSuccess(Code::Unavailable),
    ));
    env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    assert_eq!(fake.sandboxes().len(), 1);
    let codes: Vec<Code> = fake
        .requests()
        .into_iter()
        .filter(|c| c.rpc == "SandboxCreate")
        .map(|c| c.code)
        .collect();
    assert_eq!(codes, [Code::Unavailable, Code::AlreadyExists]);
    assert!(
        fake.requests()
            .iter()
            .any(|c| c.rpc == "SandboxGetFromName" && c.code == Code::Ok)
    );
}

// ---- the backend on its own ----

async fn backend(fake: &FakeModal, rate: Option<f64>, releases: Releases) -> ModalBackend {
    ModalBackend::new(modal_settings(fake, rate, "mgr-test", "test"), releases).expect("backend")
}

fn pinned() -> Releases {
    Releases::fixed(RunnerRelease::from_version(
        RunnerVersion::parse("2.336.0").expect("version"),
    ))
}

/// The app's side of the release channel, asking the fake GitHub every `interval`.
fn served(github: &FakeGitHub, interval: Duration) -> (ReleasePublisher, Releases) {
    let source = ReleaseSource::Served {
        github: github_client(github.api_url()),
        home: Some(RunnerHome::Repo(RepoName::parse(REPO).expect("repo"))),
    };
    let (publisher, releases) = runner_release::channel(source, interval);
    (publisher.expect("served releases have a publisher"), releases)
}

/// The image build requests the fake received, in order.
fn image_requests(fake: &FakeModal) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|c| c.rpc == "ImageGetOrCreate")
        .map(|c| c.request)
        .collect()
}

fn spec(name: &str) -> SandboxSpec {
    SandboxSpec {
        name: name.into(),
        repo: "octo/direct".into(),
        jit_config: SecretString::from("eyJmYWtlIjoiaml0In0="),
        tags: vec![
            ("modal-github-runner".into(), "test".into()),
            ("runner".into(), name.into()),
        ],
        timeout: Duration::from_secs(60),
        machine: Default::default(),
    }
}

async fn fake_with(config: FakeModalConfig) -> FakeModal {
    FakeModal::start(config).await.expect("fake Modal")
}

#[tokio::test]
async fn a_burst_of_100_creates_never_exceeds_the_creation_rate() {
    // The fake enforces 20/s like Modal enforces 5/s and refuses whatever comes faster;
    // the backend is told the same limit and must never be refused.
    let fake = fake_with(FakeModalConfig {
        create_rate_per_sec: Some(20.0),
        ..FakeModalConfig::default()
    })
    .await;
    let b = std::sync::Arc::new(backend(&fake, Some(20.0), pinned()).await);
    b.prepare().await.expect("prepare");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            b.create(spec(&format!("burst-{i}"))).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("created");
    }
    let elapsed = started.elapsed();
    assert_eq!(fake.rate_limit_errors(), 0, "no create bounced off the limit");
    assert_eq!(fake.sandboxes().len(), 100);
    assert_one_sandbox_per_name(&fake);
    assert!(
        elapsed < Duration::from_secs(8),
        "paced, not stalled: {elapsed:?}"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn terminate_is_fine_for_finished_and_unknown_sandboxes() {
    let fake = fake_with(FakeModalConfig {
        runner_command: vec!["/bin/sh".into(), "-c".into(), "exit 0".into()],
        ..FakeModalConfig::default()
    })
    .await;
    let b = backend(&fake, None, pinned()).await;
    b.prepare().await.expect("prepare");
    let id = b.create(spec("short-1")).await.expect("create");
    let finished = wait(Duration::from_secs(5), || {
        fake.sandbox(&id).is_some_and(|s| !s.is_running())
    })
    .await;
    assert!(finished);
    b.terminate(&id)
        .await
        .expect("terminating a finished sandbox succeeds");
    b.terminate("sb-doesnotexist0000000000")
        .await
        .expect("terminating an unknown sandbox succeeds");
    assert!(
        b.list().await.expect("list").is_empty(),
        "finished sandboxes are not listed"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn list_pages_through_every_running_sandbox_of_this_deployment() {
    let fake = fake_with(FakeModalConfig {
        list_page_size: 2,
        create_rate_per_sec: None,
        ..FakeModalConfig::default()
    })
    .await;
    let b = backend(&fake, None, pinned()).await;
    b.prepare().await.expect("prepare");
    for i in 0..5 {
        b.create(spec(&format!("page-{i}"))).await.expect("create");
    }
    let mut names: Vec<String> = b
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    assert_eq!(names, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
    let lists = fake
        .requests()
        .into_iter()
        .filter(|c| c.rpc == "SandboxList")
        .count();
    assert_eq!(lists, 4, "three pages and the empty one that ends the list");
    fake.shutdown().await;
}

#[tokio::test]
async fn creating_a_name_that_exists_returns_the_running_sandbox() {
    let fake = fake_with(FakeModalConfig {
        create_rate_per_sec: None,
        ..FakeModalConfig::default()
    })
    .await;
    let b = backend(&fake, None, pinned()).await;
    b.prepare().await.expect("prepare");
    let first = b.create(spec("same-1")).await.expect("create");
    let second = b.create(spec("same-1")).await.expect("create again");
    assert_eq!(first, second);
    assert_eq!(fake.sandboxes().len(), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_failed_image_build_is_a_clear_error_with_the_end_of_the_build_log() {
    let fake = fake_with(FakeModalConfig::default()).await;
    fake.fail_image_builds(Some("E: Unable to locate package jq".into()));
    let b = backend(&fake, None, pinned()).await;
    let err = b.prepare().await.expect_err("the build fails");
    let text = err.to_string();
    assert!(matches!(err, BackendError::Permanent(_)));
    assert!(
        text.contains("runner image build failed") && text.contains("Unable to locate package jq"),
        "{text}"
    );
    assert!(text.contains("last lines of the build log"), "{text}");
    fake.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_fail_fast_and_permanently() {
    let fake = fake_with(FakeModalConfig::default()).await;
    let mut wrong = modal_settings(&fake, None, "mgr-test", "test");
    wrong.connection.token_secret = SecretString::from("as-wrong");
    let b = ModalBackend::new(wrong, pinned()).expect("backend");
    let started = Instant::now();
    let err = b.prepare().await.expect_err("refused");
    assert!(matches!(err, BackendError::Permanent(_)), "{err}");
    assert!(err.to_string().contains("Unauthenticated"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no retries on a permanent error"
    );
    let calls = fake.requests();
    assert_eq!(calls.len(), 1, "one refused call, not a retry loop");
    assert_eq!(calls[0].token_secret_matched, Some(false));
    fake.shutdown().await;
}

#[tokio::test]
async fn the_runner_release_github_serves_is_the_one_installed() {
    let github = FakeGitHub::start(FakeGitHubConfig::default())
        .await
        .expect("fake GitHub");
    github.add_repo(REPO);
    github.set_runner_version("2.340.1");
    let fake = fake_with(FakeModalConfig::default()).await;
    let (publisher, releases) = served(&github, Duration::from_secs(3600));
    publisher.publish_first().await.expect("GitHub serves a release");
    let b = backend(&fake, None, releases).await;
    b.prepare().await.expect("prepare");
    let build = image_request(&fake);
    assert!(
        build.request.contains("actions-runner-linux-x64-2.340.1.tar.gz"),
        "{}",
        build.request
    );
    assert!(
        github
            .calls()
            .iter()
            .any(|c| c.path == format!("/repos/{REPO}/actions/runners/downloads"))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_release_github_starts_serving_later_is_built_for_new_sandboxes() {
    let github = FakeGitHub::start(FakeGitHubConfig::default())
        .await
        .expect("fake GitHub");
    github.add_repo(REPO);
    github.set_runner_version("2.340.1");
    let fake = fake_with(FakeModalConfig {
        create_rate_per_sec: None,
        ..FakeModalConfig::default()
    })
    .await;
    let (publisher, releases) = served(&github, Duration::from_millis(100));
    publisher.publish_first().await.expect("GitHub serves a release");
    let stop = CancellationToken::new();
    tokio::spawn(publisher.follow(stop.clone()));
    let b = backend(&fake, None, releases).await;
    b.prepare().await.expect("prepare");
    let before = b.create(spec("before-1")).await.expect("create");

    // Checked again and again, unchanged: no rebuild.
    let downloads = format!("/repos/{REPO}/actions/runners/downloads");
    let checked = wait(Duration::from_secs(10), || {
        github.calls().iter().filter(|c| c.path == downloads).count() >= 4
    })
    .await;
    assert!(checked, "the served release is checked every interval");
    assert_eq!(
        image_requests(&fake).len(),
        1,
        "an unchanged release is not rebuilt"
    );

    github.set_runner_version("2.341.0");
    let rebuilt = wait(Duration::from_secs(10), || {
        image_requests(&fake)
            .iter()
            .any(|r| r.contains("actions-runner-linux-x64-2.341.0.tar.gz"))
    })
    .await;
    assert!(rebuilt, "{:?}", image_requests(&fake));
    let image_of = |id: &str| {
        fake.sandboxes()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.image_id)
            .expect("sandbox")
    };
    let old_image = image_of(&before);
    let mut new_image = old_image.clone();
    for i in 0..50 {
        let id = b.create(spec(&format!("after-{i}"))).await.expect("create");
        new_image = image_of(&id);
        if new_image != old_image {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(new_image, old_image, "new sandboxes start from the new image");
    stop.cancel();
    fake.shutdown().await;
}

#[tokio::test]
async fn jobs_choose_cpu_memory_and_gpu_by_label_within_the_operators_policy() {
    let env = World::start(Options::backend(Kind::Modal).with("SANDBOX_GPU_TYPES", "T4,A10G")).await;
    let gpu_job = JobSpec::new("train", ["self-hosted", "modal", "gpu=t4", "cpu=4", "memory=8g"])
        .duration(Duration::from_millis(200));
    let forbidden = JobSpec::new("big", ["self-hosted", "modal", "gpu=H100"]);
    let run = env.github.queue_run(RunSpec::new(REPO, vec![gpu_job, forbidden]));
    let (allowed, refused) = (run.job_ids[0], run.job_ids[1]);

    let done = env
        .github
        .wait_until(Duration::from_secs(30), |gh| {
            gh.job(allowed).is_some_and(|j| j.status.as_str() == "completed")
        })
        .await;
    assert!(done, "{}", env.tail_logs(30));
    let sandboxes = modal(&env).sandboxes();
    assert_eq!(sandboxes.len(), 1, "the forbidden job got no sandbox");
    let r = &sandboxes[0].resources;
    assert_eq!(
        (r.milli_cpu, r.memory_mb, r.gpu.as_deref()),
        (4000, 8192, Some("T4"))
    );
    let warned = wait(Duration::from_secs(10), || {
        env.logs().iter().any(|l| {
            l.contains("job gets no runner")
                && l.contains("SANDBOX_GPU_TYPES")
                && l.contains(&refused.to_string())
        })
    })
    .await;
    assert!(warned, "{}", env.tail_logs(20));
    assert_eq!(
        env.logs()
            .iter()
            .filter(|l| l.contains("job gets no runner"))
            .count(),
        1,
        "said once"
    );

    env.github.cancel_job(refused);
    env.assert_nothing_left(Duration::from_secs(20)).await;
}
