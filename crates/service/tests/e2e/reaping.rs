//! Runners that misbehave and what a crash leaves behind: replaced, reaped or stopped, each
//! by the mechanism the test names. Each test ends by checking the final state.

use std::time::Duration;

use fakes::github::{DeliveryMode, JobSpec, Route, RunSpec, RunnerBehavior};
use modal_github_runner::backend::SandboxSpec;
use modal_github_runner::backend::modal::{ModalBackend, Releases};
use modal_github_runner::domain::RepoName;
use modal_github_runner::github::JitRequest;
use modal_github_runner::runner_version::{RunnerRelease, RunnerVersion};
use modal_proto::generic_result::GenericStatus;
use tonic::Code;

use crate::helpers::{Kind, Options, REPO, World, github_client, jobs, modal_settings, wait};

/// Runs one job whose first runner behaves as `first` and whose second is normal; checks
/// the job completed on the second and nothing is left; returns the first runner's row.
async fn replaced_after(env: &World, first: RunnerBehavior) -> modal_github_runner::store::RunnerRow {
    env.github.set_runner_behavior(move |name| {
        if name.ends_with("-1") {
            first
        } else {
            RunnerBehavior::Normal
        }
    });
    let run = env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(40)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let id = run.job_ids[0];
    assert_eq!(
        env.github.registrations_ever(),
        [format!("modal-{id}-1"), format!("modal-{id}-2")]
    );
    let row = env
        .runners()
        .await
        .into_iter()
        .find(|r| r.attempt == 1)
        .expect("first attempt");
    assert_eq!(row.state.as_str(), "failed");
    row
}

#[tokio::test]
async fn a_runner_that_never_comes_online_is_replaced() {
    let env = World::start(Options::default().with("RUNNER_REGISTRATION_TIMEOUT_SECS", "2")).await;
    let first = replaced_after(&env, RunnerBehavior::NeverConnect).await;
    assert!(
        first
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("never came online")),
        "{:?}",
        first.failure
    );
}

#[tokio::test]
async fn a_runner_taken_by_a_foreign_job_gets_exactly_one_replacement() {
    let env = World::start(Options::default()).await;
    // A job the service ignores (no `modal` label) that our runner can still take, queued first.
    let foreign = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("foreign", ["self-hosted"]).duration(Duration::from_millis(300))],
    ));
    let ours = env.github.queue_run(jobs(1, 300));
    env.wait_all_completed(Duration::from_secs(40)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let id = ours.job_ids[0];
    let first = format!("modal-{id}-1");
    let second = format!("modal-{id}-2");
    assert_eq!(
        env.github.job(foreign.job_ids[0]).and_then(|j| j.runner_name),
        Some(first.clone()),
        "our runner was stolen"
    );
    assert_eq!(
        env.github.job(id).and_then(|j| j.runner_name),
        Some(second.clone()),
        "the replacement ran our job"
    );
    assert_eq!(
        env.github.registrations_ever(),
        [first, second],
        "exactly one replacement"
    );
}

async fn a_runner_that_exits_without_a_job_is_failed_with_how_it_ended_and_replaced(kind: Kind) {
    let env = World::start(Options::backend(kind)).await;
    let reason = replaced_after(&env, RunnerBehavior::ExitWithoutJob)
        .await
        .failure
        .unwrap_or_default();
    let how = if kind == Kind::Modal {
        "SUCCESS, exit 0"
    } else {
        "exit status: 0"
    };
    assert!(
        reason.contains("ended before the runner took a job") && reason.contains(how),
        "{reason}"
    );
}

testkit::both_backends!(a_runner_that_exits_without_a_job_is_failed_with_how_it_ended_and_replaced);

#[tokio::test]
async fn several_cancellations_before_pickup_leave_nothing() {
    let env = World::start(Options::backend(Kind::Modal)).await;
    env.github.set_runner_behavior(|_| RunnerBehavior::NeverConnect);
    let run = env.github.queue_run(jobs(5, 100));
    let up = env
        .github
        .wait_until(Duration::from_secs(20), |gh| gh.runners().len() == 5)
        .await;
    assert!(up);
    for id in &run.job_ids {
        env.github.cancel_job(*id);
    }
    env.assert_nothing_left(Duration::from_secs(30)).await;
    assert!(
        env.github
            .jobs()
            .iter()
            .all(|j| j.conclusion.as_deref() == Some("cancelled"))
    );
}

#[tokio::test]
async fn a_surplus_runner_github_says_is_busy_is_kept() {
    // Arrange: the runner took its job, but the in_progress event is lost; then a late
    // `waiting` event makes the job look not runnable, so the runner looks surplus.
    let env = World::start(Options::default()).await;
    env.github.set_delivery_filter(|d| {
        if d.action.as_deref() == Some("in_progress") {
            DeliveryMode::Drop
        } else {
            DeliveryMode::Deliver
        }
    });
    let run = env.github.queue_run(jobs(1, 4000));
    let id = run.job_ids[0];
    let taken = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.job(id).is_some_and(|j| j.status.as_str() == "in_progress")
        })
        .await;
    assert!(taken);

    // Act: a (stale) delivery says the job waits, with no runner.
    let mut view = env.github.job(id).expect("job");
    view.status = fakes::github::JobStatus::Waiting;
    (view.runner_id, view.runner_name) = (None, None);
    let repo = env.github.repo(REPO).expect("repo");
    let body = fakes::github::workflow_job_payload(&env.github.api_url(), "waiting", &view, &repo);
    env.github.send_raw("workflow_job", body);

    // Assert: the planner retires it, GitHub answers 422, the runner is kept and finishes.
    let refused = wait(Duration::from_secs(10), || {
        env.github
            .calls()
            .iter()
            .any(|c| c.route == Route::DeleteRunner && c.status == 422)
    })
    .await;
    assert!(refused, "{}", env.tail_logs(30));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    assert_eq!(
        env.github.job(id).and_then(|j| j.conclusion),
        Some("success".into())
    );
    assert_eq!(
        env.github.registrations_ever(),
        [format!("modal-{id}-1")],
        "no replacement was made"
    );
}

#[tokio::test]
async fn a_runner_idle_past_its_timeout_is_removed() {
    // GitHub never dispatches this job (its dispatch group allows none at a time), so the
    // runner made for it comes online and idles.
    let env = World::start(Options::default().with("RUNNER_IDLE_TIMEOUT_SECS", "2")).await;
    let run = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("held", ["self-hosted", "modal"]).dispatch_group("held", 0)],
    ));
    let id = run.job_ids[0];
    let first = format!("modal-{id}-1");
    // The reaper deletes the registration, stops the sandbox, then records the end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let row = loop {
        let row = env.runners().await.into_iter().find(|r| r.name.as_str() == first);
        if let Some(row) = row.filter(|r| !r.state.is_live()) {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", env.tail_logs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row.state.as_str(), "failed", "an idle end is a failed attempt");
    assert!(
        env.github
            .calls()
            .iter()
            .any(|c| c.method == "DELETE" && c.status == 204)
    );
    assert!(
        row.failure.as_deref().is_some_and(|f| f.contains("idle")),
        "{:?}",
        row.failure
    );
    // The job still needs a runner, so the next attempt is made; cancelling it ends all.
    env.github.cancel_job(id);
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn orphan_sandboxes_and_offline_registrations_from_a_crash_are_cleaned_up() {
    // Arrange: leftovers of an earlier process, unknown to the (fresh) store: a sandbox
    // tagged as this deployment's whose runner hangs (it would live for its whole 600 s),
    // and its offline registration, plus a registration with no sandbox at all. The service
    // starts once the orphan's runner hangs: before that, a sweep that deleted its
    // registration first would let it exit by itself, and its sandbox would prove nothing.
    let mut env = World::prepare(
        Options::backend(Kind::Modal)
            .with("ALLOWED_REPOS", REPO)
            .with("DEPLOYMENT_ID", "crashed")
            .with("RECONCILE_INTERVAL_SECS", "1"),
    )
    .await;
    env.github.set_runner_behavior(|name| {
        if name == "modal-999-1" {
            RunnerBehavior::NeverConnect
        } else {
            RunnerBehavior::Normal
        }
    });
    let github = github_client(env.github.api_url());
    let repo = github.home_of(&RepoName::parse(REPO).expect("repo"));
    let register = |name: &str| JitRequest {
        name: name.into(),
        runner_group_id: 1,
        labels: vec!["modal".into(), "deployment-crashed".into()],
        work_folder: "_work".into(),
    };
    let orphan_config = github
        .generate_jitconfig(&repo, &register("modal-999-1"))
        .await
        .expect("registration of the orphan sandbox");
    github
        .generate_jitconfig(&repo, &register("modal-998-1"))
        .await
        .expect("orphan registration");
    let leftover = ModalBackend::new(
        modal_settings(env.fake_modal(), None, "modal-github-runner", "crashed"),
        Releases::fixed(RunnerRelease::from_version(
            RunnerVersion::parse("2.336.0").expect("version"),
        )),
    )
    .expect("backend");
    leftover.prepare().await.expect("prepare");
    let orphan = leftover
        .create(SandboxSpec {
            name: "modal-999-1".into(),
            repo: "octo/crashed".into(),
            jit_config: orphan_config.encoded,
            tags: vec![("modal-github-runner".into(), "crashed".into())],
            timeout: Duration::from_secs(600),
            machine: Default::default(),
        })
        .await
        .expect("orphan sandbox");
    let asked = || {
        env.github
            .runners()
            .iter()
            .any(|r| r.name == "modal-999-1" && r.asked)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !asked() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphan's runner never asked how to behave"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.start_service().await;

    // Assert: the reaper stops the sandbox and the sweep deletes both registrations.
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let finished = env
        .fake_modal()
        .sandbox(&orphan)
        .and_then(|s| s.finished)
        .expect("the orphan sandbox ended");
    assert_eq!(
        finished.status,
        GenericStatus::Terminated,
        "stopped, not ended by itself: {finished:?}"
    );
    assert!(
        env.fake_modal()
            .requests()
            .iter()
            .any(|c| c.rpc == "SandboxTerminate" && c.code == Code::Ok && c.request.contains(&orphan)),
        "a SandboxTerminate for {orphan}"
    );
    let deleted = env
        .github
        .calls()
        .into_iter()
        .filter(|c| c.route == Route::DeleteRunner && c.status == 204)
        .count();
    assert_eq!(deleted, 2, "both registrations deleted");
}

async fn a_sandbox_is_stopped_by_its_backend_at_the_timeout_it_was_given(kind: Kind) {
    // Arrange: the reaper's own fallback (timeout + 60 s grace) cannot act within this test.
    let env = World::start(
        Options::backend(kind)
            .with("SANDBOX_TIMEOUT_SECS", "2")
            .with("RUNNER_EXIT_GRACE_SECS", "60"),
    )
    .await;

    // Act: a job longer than the timeout.
    env.github.queue_run(jobs(1, 30_000));
    let running = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.jobs().iter().all(|j| j.status.as_str() == "in_progress")
        })
        .await;
    assert!(running);

    // Assert
    let stopped = wait(Duration::from_secs(15), || env.live_sandboxes().is_empty()).await;
    assert!(
        stopped,
        "the sandbox outlived its timeout: {:?}",
        env.live_sandboxes()
    );
    match env.modal.as_ref() {
        Some(modal) => {
            let sandbox = &modal.sandboxes()[0];
            assert_eq!(sandbox.timeout_secs, 2, "the timeout given to Modal");
            let finished = sandbox.finished.as_ref().expect("ended");
            assert_eq!(finished.status, GenericStatus::Timeout, "{finished:?}");
        }
        None => {
            let timed_out = wait(Duration::from_secs(5), || {
                env.logs()
                    .iter()
                    .any(|l| l.contains("local sandbox ended") && l.contains("timed out"))
            })
            .await;
            assert!(timed_out, "{}", env.tail_logs(20));
        }
    }
    assert!(crate::helpers::processes_under(&env.work_dir()).is_empty());
    assert_ended(&env).await;
}

async fn a_sandbox_past_the_maximum_runtime_is_stopped_by_the_reaper_when_its_backend_does_not(kind: Kind) {
    // Arrange: a sandbox made under a 10-minute limit...
    let mut env = World::start(Options::backend(kind).with("SANDBOX_TIMEOUT_SECS", "600")).await;
    env.github.queue_run(jobs(1, 60_000));
    let running = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.jobs().iter().all(|j| j.status.as_str() == "in_progress")
        })
        .await;
    assert!(running);

    // Act: ...and a restart with a 2-second one (RUNNER_EXIT_GRACE_SECS is 5).
    env.stop_service().await;
    env.set_env("SANDBOX_TIMEOUT_SECS", "2");
    env.start_service().await;

    // Assert: the reaper stops it, though its backend would not for minutes.
    let stopped = wait(Duration::from_secs(20), || env.live_sandboxes().is_empty()).await;
    assert!(
        stopped,
        "the sandbox outlived the maximum runtime: {:?}",
        env.live_sandboxes()
    );
    // The sandbox is stopped before the runner's end is written: wait for the record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        let row = env.runners().await.into_iter().next().expect("the runner");
        if !row.state.is_live() || tokio::time::Instant::now() >= deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        row.failure
            .as_deref()
            .is_some_and(|f| f.contains("maximum runtime")),
        "{:?} ({})",
        row.failure,
        row.state
    );
    if let Some(modal) = &env.modal {
        let finished = modal.sandboxes()[0].finished.clone().expect("ended");
        assert_eq!(finished.status, GenericStatus::Terminated, "{finished:?}");
    }
    assert!(crate::helpers::processes_under(&env.work_dir()).is_empty());
    assert_ended(&env).await;
}

async fn a_sandbox_still_running_after_its_job_is_stopped_after_the_exit_grace(kind: Kind) {
    // Arrange: the runner completes its job, then keeps running.
    let env = World::start(Options::backend(kind).with("RUNNER_EXIT_GRACE_SECS", "2")).await;
    env.github.set_runner_behavior(|_| RunnerBehavior::LingerAfterJob);

    // Act
    let run = env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let completed = std::time::Instant::now();

    // Assert: still there within the grace, gone after it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(env.live_sandboxes().len(), 1, "stopped before the grace was over");
    let stopped = wait(Duration::from_secs(15), || env.live_sandboxes().is_empty()).await;
    assert!(stopped, "the lingering sandbox was never stopped");
    assert!(completed.elapsed() >= Duration::from_millis(1900));
    let row = env.runners().await.into_iter().next().expect("the runner");
    assert_eq!(row.state.as_str(), "done");
    assert!(
        row.failure
            .as_deref()
            .is_some_and(|f| f.contains("after its job completed")),
        "{:?}",
        row.failure
    );
    assert_eq!(
        env.github
            .job(run.job_ids[0])
            .and_then(|j| j.conclusion)
            .as_deref(),
        Some("success")
    );
    env.assert_nothing_left(Duration::from_secs(10)).await;
}

/// Waits until no runner counts as live any more.
async fn assert_ended(env: &World) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.runners().await.iter().any(|r| r.state.is_live()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner still counts as live"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

testkit::both_backends!(
    a_sandbox_is_stopped_by_its_backend_at_the_timeout_it_was_given,
    a_sandbox_past_the_maximum_runtime_is_stopped_by_the_reaper_when_its_backend_does_not,
    a_sandbox_still_running_after_its_job_is_stopped_after_the_exit_grace,
);
