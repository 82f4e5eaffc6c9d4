//! One reaping pass at a time against the fake GitHub and the local backend, with the
//! clock moved by hand past each timeout. Each pass uses a fresh context, as a restarted
//! service would.

use fakes::github::{JobSpec, RunSpec};

use super::*;
use crate::domain::RunnerName;
use crate::fixture::{
    EXIT_GRACE, Fixture, IDLE_TIMEOUT, LABELS, REGISTRATION_TIMEOUT, REPO, SANDBOX_TIMEOUT,
    assert_state_and_reason,
};
use crate::loops::provisioner::ProvisionerContext;
use crate::store::RunnerRow;

/// Provisions the first runner for `job` and moves the clock a second on: the reaper does
/// not judge a runner that started at the very instant of its sandbox listing.
async fn running(f: &Fixture, job: u64) -> RunnerName {
    let name = f.plan(job).await;
    provision(&f.provisioner()).await;
    assert_eq!(f.row(&name).await.state, RunnerState::Running);
    f.clock.advance(Duration::from_secs(1));
    name
}

async fn provision(ctx: &Arc<ProvisionerContext>) {
    let row = ctx
        .store
        .runners_in(&[RunnerState::Pending])
        .await
        .expect("read")
        .into_iter()
        .next()
        .expect("a pending runner");
    let slot = ctx
        .registration_slots
        .clone()
        .try_acquire_owned()
        .expect("a free slot");
    crate::loops::provisioner::provision(ctx, row, slot).await;
}

fn ended_because(row: &RunnerRow, state: RunnerState, reason: &str) {
    assert_state_and_reason(row, state, reason);
    assert!(row.ended_at.is_some());
}

/// Waits (real time) until the fake runner in `name`'s sandbox has done what `ready` says.
async fn wait_for_runner(f: &Fixture, name: &RunnerName, ready: impl Fn(&fakes::github::RunnerView) -> bool) {
    let seen = f
        .fake
        .wait_until(Duration::from_secs(30), |g| {
            g.runners().iter().any(|r| r.name == name.as_str() && ready(r))
        })
        .await;
    assert!(seen, "{:?}", f.fake.runners());
}

#[tokio::test]
async fn a_retiring_runner_is_deregistered_and_its_sandbox_stopped() {
    let f = Fixture::start().await;
    let name = running(&f, 1).await;
    f.advance(&name, &[RunnerState::Retiring], RunnerPatch::default())
        .await;

    pass(&f.reaper()).await.expect("pass");
    assert_eq!(f.row(&name).await.state, RunnerState::Done);
    assert!(f.registration(&name).is_none());
    assert!(f.sandboxes().await.is_empty());
    f.finish().await;
}

#[tokio::test]
async fn a_retiring_runner_github_just_gave_a_job_422_is_kept() {
    let f = Fixture::start().await;
    f.fake.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("build", LABELS).duration(Duration::from_secs(120))],
    ));
    let (name, jit) = f.seed_running(1).await;
    let runner = f.play_runner(&jit);
    wait_for_runner(&f, &name, |r| r.busy).await;
    f.clock.advance(Duration::from_secs(1));
    f.advance(&name, &[RunnerState::Retiring], RunnerPatch::default())
        .await;

    pass(&f.reaper()).await.expect("pass");
    assert_eq!(f.row(&name).await.state, RunnerState::Running, "back to running");
    assert!(f.registration(&name).is_some_and(|r| r.busy));
    assert_eq!(
        f.sandboxes().await,
        [name.to_string()],
        "its sandbox keeps running the job"
    );
    runner.abort();
    f.finish().await;
}

#[tokio::test]
async fn a_running_runner_found_after_a_restart_within_its_timeouts_is_left_alone() {
    let f = Fixture::start().await;
    let name = running(&f, 1).await;
    let before = f.row(&name).await;

    pass(&f.reaper()).await.expect("pass");
    assert_eq!(f.row(&name).await, before);
    assert!(f.registration(&name).is_some());
    assert_eq!(f.sandboxes().await, [name.to_string()]);
    f.finish().await;
}

#[tokio::test]
async fn a_running_runner_whose_sandbox_died_without_a_job_fails_with_backoff_and_is_deregistered() {
    let f = Fixture::start().await;
    let name = running(&f, 1).await;
    f.backend.terminate(name.as_str()).await.expect("terminate");

    pass(&f.reaper()).await.expect("pass");
    let row = f.row(&name).await;
    ended_because(
        &row,
        RunnerState::Failed,
        "the sandbox ended before the runner took a job",
    );
    assert_eq!(f.backs_off(&name).await, Some(true));
    assert!(f.registration(&name).is_none());
    f.finish().await;
}

#[tokio::test]
async fn a_runner_that_never_comes_online_is_removed_after_the_registration_timeout() {
    let f = Fixture::start().await;
    let name = running(&f, 1).await;
    f.clock.advance(REGISTRATION_TIMEOUT - Duration::from_secs(1));
    pass(&f.reaper()).await.expect("pass");
    assert_eq!(f.row(&name).await.state, RunnerState::Running, "not yet");

    f.clock.advance(Duration::from_millis(1));
    pass(&f.reaper()).await.expect("pass");
    let row = f.row(&name).await;
    ended_because(
        &row,
        RunnerState::Failed,
        "never came online at GitHub within 120s",
    );
    assert_eq!(f.backs_off(&name).await, Some(true));
    assert!(f.registration(&name).is_none());
    assert!(f.sandboxes().await.is_empty());
    f.finish().await;
}

#[tokio::test]
async fn an_online_runner_without_a_job_is_removed_after_the_idle_timeout() {
    let f = Fixture::start().await;
    let (name, jit) = f.seed_running(1).await;
    let runner = f.play_runner(&jit);
    wait_for_runner(&f, &name, |r| r.status == fakes::github::RunnerStatus::Online).await;
    f.clock.advance(Duration::from_secs(1));
    // Online, so the registration timeout, long past, does not apply.
    f.clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
    pass(&f.reaper()).await.expect("pass");
    assert_eq!(f.row(&name).await.state, RunnerState::Running, "not yet");

    f.clock.advance(Duration::from_millis(1));
    pass(&f.reaper()).await.expect("pass");
    let row = f.row(&name).await;
    ended_because(&row, RunnerState::Failed, "idle without a job for 240s");
    assert!(f.registration(&name).is_none());
    assert!(f.sandboxes().await.is_empty());
    runner.abort();
    f.finish().await;
}

#[tokio::test]
async fn a_busy_sandbox_is_stopped_at_its_maximum_runtime() {
    let f = Fixture::start().await;
    let name = running(&f, 1).await;
    f.took(1, &name).await;
    // `running` moved the clock one second past the start.
    f.clock
        .advance(SANDBOX_TIMEOUT + EXIT_GRACE - Duration::from_secs(1));
    pass(&f.reaper()).await.expect("pass");
    assert_eq!(f.row(&name).await.state, RunnerState::Running, "not yet");

    f.clock.advance(Duration::from_millis(1));
    pass(&f.reaper()).await.expect("pass");
    let row = f.row(&name).await;
    ended_because(&row, RunnerState::Done, "stopped at its maximum runtime");
    assert!(f.sandboxes().await.is_empty());
    f.finish().await;
}

#[tokio::test]
async fn a_sandbox_still_up_after_its_job_completed_is_stopped_after_the_exit_grace() {
    let f = Fixture::start().await;
    let name = running(&f, 1).await;
    f.completed(1, &name).await;
    f.clock.advance(EXIT_GRACE);
    pass(&f.reaper()).await.expect("pass");
    assert_eq!(f.row(&name).await.state, RunnerState::Running, "not yet");

    f.clock.advance(Duration::from_millis(1));
    pass(&f.reaper()).await.expect("pass");
    let row = f.row(&name).await;
    ended_because(&row, RunnerState::Done, "stopped after its job completed");
    assert!(f.sandboxes().await.is_empty());
    f.finish().await;
}

#[tokio::test]
async fn the_sweep_leaves_a_repository_with_live_runners_for_later_then_deletes_its_orphans() {
    // Arrange: a registration of ours no runner owns, and a live runner in the same
    // repository.
    let f = Fixture::start().await;
    let ctx = f.reaper();
    let orphan = f
        .register(&RunnerName::for_job(
            &crate::fixture::prefix(),
            crate::domain::JobId(900),
            1,
        ))
        .await;
    let live = f.plan(901).await;
    let sweep = || {
        sweeps::delete_offline_registrations(
            &f.store,
            &f.github,
            &ctx.settings.prefix,
            &ctx.settings.deployment,
            &ctx.settings.allow,
        )
    };
    let listings = || {
        f.fake
            .calls()
            .iter()
            .filter(|c| c.route == fakes::github::Route::ListRunners)
            .count()
    };

    // Act and assert: while a runner is live the repository's listing is not read.
    sweep().await.expect("swept");
    assert_eq!(listings(), 0, "a repository with live runners is not listed");
    assert!(f.fake.runners().iter().any(|r| r.id == orphan.runner_id));

    // Once it has none, the orphan goes.
    f.advance(&live, &[RunnerState::Done], RunnerPatch::default())
        .await;
    sweep().await.expect("swept");
    assert_eq!(listings(), 1);
    assert!(
        f.fake.runners().iter().all(|r| r.id != orphan.runner_id),
        "the orphan is deleted"
    );
}

// ---- warm pool (issue 13 item 3) ----

#[tokio::test]
async fn a_warm_runner_is_not_removed_by_the_idle_timeout() {
    let f = Fixture::start().await;
    // Made for no job: a warm runner.
    let (name, jit) = f.seed_running(crate::loops::planner::WARM_JOB.0).await;
    let runner = f.play_runner(&jit);
    wait_for_runner(&f, &name, |r| r.status == fakes::github::RunnerStatus::Online).await;
    f.clock.advance(Duration::from_secs(1));
    f.clock.advance(IDLE_TIMEOUT * 3);
    pass(&f.reaper()).await.expect("pass");
    assert_eq!(
        f.row(&name).await.state,
        RunnerState::Running,
        "the planner retires warm runners beyond the pool's size, not the idle rule"
    );
    assert!(f.registration(&name).is_some());
    runner.abort();
    f.finish().await;
}
