//! Never strand a job: lost webhooks, crashes, upstream faults, misbehaving runners and
//! leftovers of earlier crashes (docs/design.md §7). Each test ends by checking the final state:
//! every job completed, nothing left, nothing duplicated.

use std::collections::HashSet;
use std::time::Duration;

use fakes::github::{DeliveryMode, Fault, FaultRule, JobSpec, Route, RunSpec, RunnerBehavior};
use fakes::modal::{FaultKind, ModalFault};
use modal_github_runner::backend::SandboxSpec;
use modal_github_runner::backend::modal::{ModalBackend, Releases};
use modal_github_runner::domain::{JobId, RepoName};
use modal_github_runner::github::JitRequest;
use modal_github_runner::runner_version::{RunnerRelease, RunnerVersion};
use secrecy::SecretString;
use tonic::Code;

use crate::helpers::{
    BIN, Kind, Options, REPO, World, as_process, github_client, jobs, modal_settings, wait,
};

fn fast_reconcile(kind: Kind) -> Options {
    Options::backend(kind).with("RECONCILE_INTERVAL_SECS", "1")
}

fn assert_unique(names: &[String]) {
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "a name was used twice: {names:?}");
}

#[tokio::test]
async fn a_webhook_never_delivered_is_served_by_polling() {
    let env = World::start(fast_reconcile(Kind::Local).with("ALLOWED_REPOS", REPO)).await;
    env.github.set_delivery_filter(|_| DeliveryMode::Drop);
    let run = env.github.queue_run(jobs(2, 200));

    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;

    let store = env.store().await;
    for id in run.job_ids {
        let job = store
            .job(JobId(id))
            .await
            .expect("read")
            .expect("the poll recorded the job");
        assert_eq!(job.source, "poll");
    }
    assert!(
        env.github.deliveries().iter().all(|d| d.status_code.is_none()),
        "no webhook got through"
    );
}

#[tokio::test]
async fn failed_deliveries_are_redelivered_through_the_deliveries_api() {
    let env = World::start(
        Options::default()
            .with("ALLOWED_REPOS", REPO)
            .with("WEBHOOK_HOOK_ID", "1")
            .with("RECONCILE_INTERVAL_SECS", "1"),
    )
    .await;
    // The first delivery of every event fails; GitHub never retries on its own.
    env.github.set_delivery_filter(|d| {
        if d.redelivery {
            DeliveryMode::Deliver
        } else {
            DeliveryMode::Drop
        }
    });
    env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let redelivered = env
        .github
        .wait_until(Duration::from_secs(15), |gh| {
            gh.deliveries()
                .iter()
                .any(|d| d.redelivery && d.status_code == Some(202))
        })
        .await;
    assert!(
        redelivered,
        "a failed delivery was redelivered and accepted:\n{}",
        env.tail_logs(30)
    );
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn jobs_queued_while_the_service_was_down_are_found_at_start_up() {
    let mut env = World::start(as_process(Options::default().with("ALLOWED_REPOS", REPO))).await;
    env.stop_service().await;
    env.github.queue_run(jobs(3, 200)); // delivered to nobody
    env.start_service().await;
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn the_service_killed_during_a_burst_of_50_jobs_completes_all_with_one_sandbox_per_name() {
    let mut env = World::start(as_process(
        fast_reconcile(Kind::Modal).with("ALLOWED_REPOS", REPO),
    ))
    .await;
    env.github.queue_run(jobs(50, 1500));
    let some = env
        .github
        .wait_until(Duration::from_secs(30), |gh| gh.registrations_ever().len() >= 15)
        .await;
    assert!(some);

    // Act: SIGKILL mid-burst; webhooks sent meanwhile are lost for good.
    env.kill_service();
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.start_service().await;

    // Assert
    env.wait_all_completed(Duration::from_secs(120)).await;
    env.assert_nothing_left(Duration::from_secs(60)).await;
    let modal = env.modal.as_ref().expect("modal");
    let names: Vec<String> = modal.sandboxes().into_iter().filter_map(|s| s.name).collect();
    assert_unique(&names);
    assert_unique(&env.github.registrations_ever());
    assert!(
        env.github
            .jobs()
            .iter()
            .all(|j| j.conclusion.as_deref() == Some("success"))
    );
}

#[tokio::test]
async fn github_errors_rate_limits_and_hangs_are_retried_without_duplicates() {
    let env = World::start(Options::default().with("GITHUB_TIMEOUT_SECS", "1")).await;
    let gh = &env.github;
    gh.inject(FaultRule::new(Route::GenerateJitConfig, Fault::status(500)));
    gh.inject(FaultRule::new(
        Route::GenerateJitConfig,
        Fault::SecondaryRateLimit { retry_after_secs: 1 },
    ));
    gh.inject(FaultRule::new(
        Route::GenerateJitConfig,
        Fault::Hang(Duration::from_secs(3)),
    ));
    gh.inject(FaultRule::new(
        Route::GenerateJitConfig,
        Fault::after_success(Fault::status(502)),
    ));
    gh.inject(FaultRule::new(
        Route::GetRun,
        Fault::Status {
            status: 429,
            body: serde_json::json!({"message": "Too Many Requests"}),
            headers: vec![("retry-after".into(), "1".into())],
        },
    ));
    gh.inject(FaultRule::new(
        Route::GetContents,
        Fault::PrimaryRateLimit { reset_in_secs: 1 },
    ));
    gh.queue_run(jobs(3, 200));

    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;
    let names = gh.registrations_ever();
    assert_unique(&names);
    // The registration made by the try whose answer was lost was found and deleted.
    let deletes = gh
        .calls()
        .into_iter()
        .filter(|c| c.method == "DELETE" && c.status == 204)
        .count();
    assert!(deletes >= 1, "the orphaned registration was deleted");
    assert!(names.len() <= 4, "at most one extra registration: {names:?}");
}

#[tokio::test]
async fn modal_unavailable_and_resource_exhausted_on_every_call_are_ridden_out() {
    let env = World::start(Options::backend(Kind::Modal)).await;
    let modal = env.modal.as_ref().expect("modal");
    for rpc in [
        "SecretGetOrCreate",
        "SandboxCreate",
        "SandboxList",
        "SandboxTerminate",
    ] {
        modal.inject(ModalFault::new(
            rpc,
            2,
            FaultKind::Status(Code::Unavailable, "upstream connect error".into()),
        ));
        modal.inject(ModalFault::new(
            rpc,
            1,
            FaultKind::ResourceExhausted {
                retry_after_secs: Some(0.2),
            },
        ));
    }
    env.github.queue_run(jobs(3, 200));
    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;
    let names: Vec<String> = modal.sandboxes().into_iter().filter_map(|s| s.name).collect();
    assert_eq!(names.len(), 3);
    assert_unique(&names);
}

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
async fn orphan_sandboxes_and_offline_registrations_from_a_crash_are_cleaned_up() {
    let env = World::start(fast_reconcile(Kind::Modal).with("ALLOWED_REPOS", REPO)).await;
    let modal = env.modal.as_ref().expect("modal");
    // Leftovers of an earlier process: a sandbox tagged as this deployment's, and an offline
    // registration with our prefix, both unknown to the (fresh) store.
    let leftover = ModalBackend::new(
        modal_settings(modal, None, "modal-github-runner", "modal"),
        Releases::fixed(RunnerRelease::from_version(
            RunnerVersion::parse("2.336.0").expect("version"),
        )),
    )
    .expect("backend");
    leftover.prepare().await.expect("prepare");
    leftover
        .create(SandboxSpec {
            name: "modal-999-1".into(),
            jit_config: SecretString::from("x"),
            tags: vec![("modal-github-runner".into(), "modal".into())],
            timeout: Duration::from_secs(600),
            machine: Default::default(),
        })
        .await
        .expect("orphan sandbox");
    let github = github_client(env.github.api_url());
    let request = JitRequest {
        name: "modal-998-1".into(),
        runner_group_id: 1,
        labels: vec!["modal".into()],
        work_folder: "_work".into(),
    };
    github
        .generate_jitconfig(&RepoName::parse(REPO).expect("repo"), &request)
        .await
        .expect("orphan registration");
    assert_eq!(env.github.runners().len(), 1);

    // Assert: the reaper stops the sandbox and the sweep deletes the registration.
    env.assert_nothing_left(Duration::from_secs(20)).await;
    assert!(modal.sandboxes().iter().all(|s| !s.is_running()));
}

#[tokio::test]
async fn a_rejected_token_fails_fast_with_a_clear_message_and_does_not_loop() {
    let env = World::start(Options::default()).await;
    env.github.set_token("ghp_someone_else");
    env.github.queue_run(jobs(2, 100));
    let failed = wait(Duration::from_secs(10), || {
        env.logs().iter().any(|l| l.contains("GitHub refused the token"))
    })
    .await;
    assert!(failed, "{}", env.tail_logs(30));
    let jit_calls = || {
        env.github
            .calls()
            .into_iter()
            .filter(|c| c.route == Route::GenerateJitConfig)
            .count()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_failure = jit_calls();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Only the attempts already under way when the first 401 came back were made.
    assert!(at_failure <= 2, "{at_failure} registrations tried");
    assert_eq!(
        jit_calls(),
        at_failure,
        "provisioning paused after the 401: no retry loop"
    );
    let runner = env
        .runners()
        .await
        .into_iter()
        .find(|r| r.state.as_str() == "failed")
        .expect("a failed runner");
    assert!(
        runner.failure.as_deref().is_some_and(|f| f.contains("401")),
        "{:?}",
        runner.failure
    );
    // The operator sees why the jobs wait.
    let out = std::process::Command::new(BIN)
        .args(["status", "--database-url", &env.database_url()])
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("401") && text.contains("queued"), "{text}");
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
    assert_eq!(row.state.as_str(), "done");
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

async fn a_sandbox_over_its_maximum_runtime_is_stopped(kind: Kind) {
    let env = World::start(Options::backend(kind).with("SANDBOX_TIMEOUT_SECS", "2")).await;
    env.github.queue_run(jobs(1, 30_000));
    let running = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.jobs().iter().all(|j| j.status.as_str() == "in_progress")
        })
        .await;
    assert!(running);
    let stopped = wait(Duration::from_secs(15), || env.live_sandboxes().is_empty()).await;
    assert!(
        stopped,
        "the sandbox outlived its timeout: {:?}",
        env.live_sandboxes()
    );
    assert!(crate::helpers::processes_under(&env.work_dir()).is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.runners().await.iter().any(|r| r.state.is_live()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner still counts as live"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

testkit::both_backends!(a_sandbox_over_its_maximum_runtime_is_stopped);

#[tokio::test]
async fn a_409_for_a_name_already_registered_is_recovered_without_a_duplicate() {
    // A registration under the name the service will choose exists already (left by a try
    // whose answer was lost): the POST gets 409 Already exists.
    let env = World::start(Options::default()).await;
    let github = github_client(env.github.api_url());
    let next_job = fakes::github::JOB_ID_BASE;
    let taken = format!("modal-{next_job}-1");
    let request = JitRequest {
        name: taken.clone(),
        runner_group_id: 1,
        labels: vec!["modal".into()],
        work_folder: "_work".into(),
    };
    github
        .generate_jitconfig(&RepoName::parse(REPO).expect("repo"), &request)
        .await
        .expect("registered");

    let run = env.github.queue_run(jobs(1, 200));
    assert_eq!(run.job_ids[0], next_job);
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;

    // The service's POST met 409, found the registration by name and deleted it, and the
    // job ran on the next attempt's runner: at no time two registrations for one runner.
    let jit: Vec<u16> = env
        .github
        .calls()
        .into_iter()
        .filter(|c| c.route == Route::GenerateJitConfig)
        .map(|c| c.status)
        .collect();
    assert_eq!(jit, [201, 409, 201], "ours, the service's first try, its second");
    assert!(
        env.github
            .calls()
            .iter()
            .any(|c| c.route == Route::ListRunners && c.query.as_deref().is_some_and(|q| q.contains(&taken)))
    );
    assert_eq!(
        env.github.job(next_job).and_then(|j| j.runner_name),
        Some(format!("modal-{next_job}-2"))
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
async fn modal_unreachable_at_start_up_is_waited_out() {
    // More failures than one call's retries: the service keeps trying, and serves meanwhile.
    let mut options = Options::backend(Kind::Modal);
    options.modal_faults.push(ModalFault::new(
        "AppGetOrCreate",
        8,
        FaultKind::Status(Code::Unavailable, "no healthy upstream".into()),
    ));
    let env = World::start(options).await;
    env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    assert!(
        env.logs()
            .iter()
            .any(|l| l.contains("the backend is not ready yet"))
    );
}

#[tokio::test]
async fn a_github_app_finds_its_installation_and_uses_installation_tokens() {
    let options = Options {
        github_app: Some(Duration::from_secs(3600)),
        ..Options::default()
    };
    let env = World::start(options).await;
    env.github.queue_run(jobs(2, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let calls = env.github.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.route == Route::RepoInstallation && c.status == 200)
    );
    assert!(calls.iter().any(|c| c.path
        == format!(
            "/app/installations/{}/access_tokens",
            crate::helpers::INSTALLATION_ID
        )));
    assert_eq!(
        env.github.installation_tokens_issued(),
        1,
        "one token serves an hour of calls"
    );
    assert!(calls.iter().all(|c| c.status != 401), "no call was refused");
    env.assert_no_secret_in_logs();
}

#[tokio::test]
async fn installation_tokens_are_renewed_before_they_expire() {
    let options = Options {
        github_app: Some(Duration::from_secs(2)),
        ..Options::default()
    };
    let env = World::start(options).await;
    env.github.queue_run(jobs(1, 100));
    env.wait_all_completed(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.github.queue_run(jobs(1, 100));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    assert!(
        env.github.installation_tokens_issued() >= 2,
        "renewed: {}",
        env.github.installation_tokens_issued()
    );
    assert!(
        env.github.calls().iter().all(|c| c.status != 401),
        "no call went out with an expired token"
    );
}
