//! One provisioning pass at a time against the fake GitHub and the local backend, from
//! every state a crash can leave a runner in. Each pass uses a fresh context, as a
//! restarted service would.

use fakes::github::{FakeGitHubConfig, Fault, FaultRule, Route};

use super::*;
use crate::domain::DeploymentId;
use crate::fixture::{AUTH_PAUSE, Fixture, assert_state_and_reason};
use crate::loops::reaper;

/// One pass of the loop: dispatch every runner it would pick up, then wait for them.
async fn pass(ctx: &Arc<ProvisionerContext>) {
    let in_flight = Arc::default();
    let mut tasks = JoinSet::new();
    dispatch(ctx, &in_flight, &mut tasks).await.expect("dispatch");
    while let Some(done) = tasks.join_next().await {
        done.expect("provisioning does not panic");
    }
}

fn jit_calls(f: &Fixture) -> usize {
    f.fake
        .calls()
        .iter()
        .filter(|c| c.route == Route::GenerateJitConfig)
        .count()
}

#[tokio::test]
async fn a_pending_runner_is_registered_then_its_sandbox_started() {
    let f = Fixture::start().await;
    let name = f.plan(1).await;
    pass(&f.provisioner()).await;

    let row = f.row(&name).await;
    assert_eq!(row.state, RunnerState::Running);
    let registration = f.registration(&name).expect("registered at GitHub");
    assert_eq!(row.github_id, Some(registration.id));
    assert_eq!(row.sandbox_id.as_deref(), Some(name.as_str()));
    assert_eq!(row.started_at, Some(Clock::from(f.clock.clone()).now_millis()));
    assert_eq!(f.sandboxes().await, [name.to_string()]);
    f.finish().await;
}

#[tokio::test]
async fn a_registration_interrupted_before_it_reached_github_starts_over_under_the_same_name() {
    let f = Fixture::start().await;
    let name = f.plan(1).await;
    f.advance(&name, &[RunnerState::Registering], RunnerPatch::default())
        .await;

    pass(&f.provisioner()).await;
    assert_eq!(f.row(&name).await.state, RunnerState::Pending);
    assert_eq!(f.registrations_of(&name), 0);

    pass(&f.provisioner()).await;
    assert_eq!(f.row(&name).await.state, RunnerState::Running);
    assert_eq!(f.registrations_of(&name), 1);
    f.finish().await;
}

#[tokio::test]
async fn a_registration_that_reached_github_before_a_crash_is_deleted_and_the_attempt_ends_without_backoff() {
    let f = Fixture::start().await;
    let name = f.plan(1).await;
    f.advance(&name, &[RunnerState::Registering], RunnerPatch::default())
        .await;
    f.register(&name).await;

    pass(&f.provisioner()).await;
    let row = f.row(&name).await;
    assert_state_and_reason(&row, RunnerState::Failed, "registered before a restart");
    assert_eq!(f.backs_off(&name).await, Some(false));
    assert!(
        f.registration(&name).is_none(),
        "its JIT config is lost: the registration goes"
    );
    assert_eq!(f.registrations_of(&name), 1, "never registered twice");
    assert!(f.sandboxes().await.is_empty());
    f.finish().await;
}

#[tokio::test]
async fn a_registered_runner_whose_sandbox_was_created_before_a_crash_is_adopted() {
    let f = Fixture::start().await;
    let (name, jit) = f.seed_registered(1).await;
    f.start_sandbox(&name, &jit).await;

    // The reaper, restarted too, does not take the sandbox for an orphan.
    reaper::pass(&f.reaper()).await.expect("reaper pass");
    assert_eq!(f.sandboxes().await, [name.to_string()]);

    pass(&f.provisioner()).await;
    let row = f.row(&name).await;
    assert_eq!(row.state, RunnerState::Running);
    assert_eq!(row.sandbox_id.as_deref(), Some(name.as_str()));
    assert_eq!(f.sandboxes().await, [name.to_string()], "no second sandbox");
    assert!(f.registration(&name).is_some(), "its registration is kept");
    assert_eq!(f.registrations_of(&name), 1);
    f.finish().await;
}

#[tokio::test]
async fn a_registered_runner_without_a_sandbox_after_a_crash_loses_its_registration_without_backoff() {
    let f = Fixture::start().await;
    let (name, _) = f.seed_registered(1).await;

    pass(&f.provisioner()).await;
    let row = f.row(&name).await;
    assert_state_and_reason(&row, RunnerState::Failed, "JIT config lost");
    assert_eq!(f.backs_off(&name).await, Some(false));
    assert!(f.registration(&name).is_none());
    assert!(f.sandboxes().await.is_empty(), "no sandbox without a JIT config");
    f.finish().await;
}

#[tokio::test]
async fn running_and_retiring_runners_are_left_to_the_reaper() {
    let f = Fixture::start().await;
    let running = f.plan(1).await;
    let retiring = f.plan(2).await;
    pass(&f.provisioner()).await;
    f.advance(&retiring, &[RunnerState::Retiring], RunnerPatch::default())
        .await;
    let before = (
        f.row(&running).await,
        f.row(&retiring).await,
        f.fake.calls().len(),
    );

    pass(&f.provisioner()).await;
    let after = (
        f.row(&running).await,
        f.row(&retiring).await,
        f.fake.calls().len(),
    );
    assert_eq!(before, after, "no change and no call to GitHub");
    assert_eq!(f.sandboxes().await.len(), 2);
    f.finish().await;
}

#[tokio::test]
async fn a_name_github_already_has_409_is_deleted_and_the_attempt_ends_without_backoff() {
    let f = Fixture::start().await;
    let name = f.plan(1).await;
    f.register(&name).await;

    pass(&f.provisioner()).await;
    let row = f.row(&name).await;
    assert_state_and_reason(&row, RunnerState::Failed, "an earlier try registered this name");
    assert_eq!(f.backs_off(&name).await, Some(false));
    assert!(f.registration(&name).is_none());
    assert_eq!(
        f.registrations_of(&name),
        1,
        "the 409 made no second registration"
    );
    assert!(f.sandboxes().await.is_empty());
    f.finish().await;
}

#[tokio::test]
async fn a_name_another_deployment_registered_is_left_alone_and_the_attempt_ends_without_backoff() {
    let f = Fixture::start().await;
    let name = f.plan(1).await;
    let other = DeploymentId::parse("other").expect("valid id");
    f.register_as(&name, &other).await;

    pass(&f.provisioner()).await;
    let row = f.row(&name).await;
    assert_state_and_reason(
        &row,
        RunnerState::Failed,
        "another deployment's and was left alone",
    );
    assert_eq!(f.backs_off(&name).await, Some(false));
    assert!(
        f.registration(&name).is_some(),
        "the other deployment's registration is not deleted"
    );
    assert!(f.fake.calls().iter().all(|c| c.method != "DELETE"));
    f.finish().await;
}

#[tokio::test]
async fn a_registration_carries_the_deployment_label_besides_the_jobs_labels() {
    let f = Fixture::start().await;
    let name = f.plan(1).await;

    pass(&f.provisioner()).await;
    assert_eq!(f.row(&name).await.state, RunnerState::Running);
    let jit = f
        .fake
        .calls()
        .into_iter()
        .find(|c| c.path.ends_with("/generate-jitconfig"))
        .and_then(|c| c.body)
        .expect("a JIT request");
    assert_eq!(
        jit["labels"],
        serde_json::json!(["self-hosted", "modal", "deployment-test"])
    );
    f.finish().await;
}

#[tokio::test]
async fn a_registration_whose_answer_was_lost_is_found_deleted_and_never_repeated() {
    let f = Fixture::start().await;
    f.fake.inject(FaultRule::new(
        Route::GenerateJitConfig,
        Fault::after_success(Fault::status(502)),
    ));
    let name = f.plan(1).await;

    pass(&f.provisioner()).await;
    let row = f.row(&name).await;
    assert_state_and_reason(&row, RunnerState::Failed, "a failed try registered this name");
    assert_eq!(f.backs_off(&name).await, Some(false));
    assert_eq!(jit_calls(&f), 1, "not registered a second time");
    assert!(
        f.registration(&name).is_none(),
        "the registration nobody has a config for is gone"
    );
    assert!(f.sandboxes().await.is_empty());
    f.finish().await;
}

#[tokio::test]
async fn a_registration_that_failed_at_github_is_retried() {
    let f = Fixture::start().await;
    f.fake
        .inject(FaultRule::new(Route::GenerateJitConfig, Fault::status(502)));
    let name = f.plan(1).await;

    pass(&f.provisioner()).await;
    assert_eq!(f.row(&name).await.state, RunnerState::Running);
    assert_eq!(jit_calls(&f), 2);
    assert_eq!(f.registrations_of(&name), 1);
    f.finish().await;
}

#[tokio::test]
async fn a_rejected_token_pauses_provisioning_for_the_auth_pause() {
    let f = Fixture::start().await;
    let ctx = f.provisioner();
    f.fake.set_token("ghp_someone_else");
    let first = f.plan(1).await;
    pass(&ctx).await;
    let row = f.row(&first).await;
    assert_eq!(row.state, RunnerState::Failed);
    assert!(
        row.failure.as_deref().is_some_and(|m| m.contains("401")),
        "{:?}",
        row.failure
    );

    // The token is fixed, but provisioning stays paused until the pause is over.
    f.fake.set_token(&FakeGitHubConfig::default().token);
    let second = f.plan(2).await;
    f.clock.advance(AUTH_PAUSE - Duration::from_secs(1));
    pass(&ctx).await;
    assert_eq!(f.row(&second).await.state, RunnerState::Pending);
    assert_eq!(jit_calls(&f), 1);

    f.clock.advance(Duration::from_secs(1));
    pass(&ctx).await;
    assert_eq!(f.row(&second).await.state, RunnerState::Running);
    f.finish().await;
}

/// Polls the store until `names` are all in `state`, for at most five seconds.
async fn all_reach(f: &Fixture, names: &[&crate::domain::RunnerName], state: RunnerState) -> bool {
    for _ in 0..250 {
        let mut all = true;
        for name in names {
            all &= f.row(name).await.state == state;
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_registered_runner_waits_for_a_creation_slot_without_holding_a_registration_slot() {
    // Arrange: one registration slot, and every creation slot busy.
    let f = Fixture::start().await;
    let (a, b) = (f.plan(1).await, f.plan(2).await);
    let ctx = f.provisioner_with(1, 2);
    let busy = ctx
        .create_slots
        .clone()
        .acquire_many_owned(2)
        .await
        .expect("slots");
    let stop = CancellationToken::new();
    let running = tokio::spawn(run(ctx.clone(), stop.clone(), Duration::from_secs(5)));

    // Act + Assert: both are registered through the one registration slot while they wait
    // for Modal; neither has a sandbox yet.
    assert!(all_reach(&f, &[&a, &b], RunnerState::Registered).await);
    assert!(f.sandboxes().await.is_empty());
    // Creation slots free up: both get their sandboxes.
    drop(busy);
    assert!(all_reach(&f, &[&a, &b], RunnerState::Running).await);
    assert_eq!(f.sandboxes().await.len(), 2);
    stop.cancel();
    running.await.expect("the loop ends");
    f.finish().await;
}
