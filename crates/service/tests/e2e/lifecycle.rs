//! One job's life, and every way its deliveries can go wrong.

use std::time::Duration;

use fakes::github::{DeliveryMode, JobSpec, RunSpec, RunnerBehavior};
use modal_github_runner::domain::{DeploymentId, JobId};

use crate::helpers::{Kind, Options, REPO, World, as_process, reqwest_client, wait};
use testkit::both_backends;

const LABELS: [&str; 2] = ["self-hosted", "modal"];

fn one_job(labels: &[&str], duration_ms: u64) -> RunSpec {
    RunSpec::new(
        REPO,
        vec![JobSpec::new("build", labels.iter().copied()).duration(Duration::from_millis(duration_ms))],
    )
}

async fn a_queued_job_runs_on_a_fresh_jit_runner_and_leaves_nothing_behind(kind: Kind) {
    // Arrange
    let env = World::start(Options::backend(kind)).await;

    // Act
    let run = env.github.queue_run(one_job(&LABELS, 300));
    env.wait_all_completed(Duration::from_secs(30)).await;

    // Assert: the JIT request.
    let job_id = run.job_ids[0];
    let expected_name = format!("modal-{job_id}-1");
    let jit: Vec<_> = env
        .github
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/generate-jitconfig"))
        .collect();
    assert_eq!(jit.len(), 1, "exactly one registration");
    assert_eq!(
        jit[0].path,
        format!("/repos/{REPO}/actions/runners/generate-jitconfig")
    );
    let body = jit[0].body.clone().expect("a JSON body");
    assert_eq!(body["name"], expected_name);
    // The job's labels, and the label that marks the registration as this deployment's.
    let deployment = DeploymentId::derive("modal-github-runner", "modal", &[]);
    assert_eq!(
        body["labels"],
        serde_json::json!([LABELS[0], LABELS[1], deployment.label()])
    );
    assert_eq!(body["runner_group_id"], 1);
    assert_eq!(body["work_folder"], "_work");
    // The runner that took the job is the one made for it, and the job succeeded.
    let job = env.github.job(job_id).expect("job");
    assert_eq!(job.runner_name.as_deref(), Some(expected_name.as_str()));
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    // Nothing is left, and the store agrees with GitHub.
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let store = env.store().await;
    let stored = store.job(JobId(job_id)).await.expect("read").expect("stored");
    assert_eq!(stored.status.as_str(), "completed");
    assert_eq!(stored.runner_name.as_deref(), Some(expected_name.as_str()));
    env.assert_no_secret_in_logs();
}

async fn jobs_without_the_label_are_ignored(kind: Kind) {
    let env = World::start(Options::backend(kind)).await;
    env.github
        .queue_run(one_job(&["self-hosted", "ubuntu-latest"], 100));
    let delivered = env
        .github
        .wait_until(Duration::from_secs(10), |gh| {
            gh.deliveries().iter().any(|d| d.status_code.is_some())
        })
        .await;
    assert!(delivered);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.github.deliveries()[0].status_code, Some(200));
    assert!(
        env.github.registrations_ever().is_empty(),
        "no runner for a job without the label"
    );
    assert!(
        env.store().await.open_jobs().await.expect("jobs").is_empty(),
        "nothing recorded"
    );
}

async fn repositories_outside_allowed_repos_are_refused_and_get_no_runner(kind: Kind) {
    let env = World::start(Options::backend(kind).with("ALLOWED_REPOS", REPO)).await;
    env.github.add_repo("octo/other");
    let other = env
        .github
        .queue_run(RunSpec::new("octo/other", vec![JobSpec::new("build", LABELS)]));
    let mine = env.github.queue_run(one_job(&LABELS, 100));
    let done = env
        .github
        .wait_until(Duration::from_secs(30), |gh| {
            gh.job(mine.job_ids[0])
                .is_some_and(|j| j.status.as_str() == "completed")
        })
        .await;
    assert!(
        done,
        "the allowed repository's job completes:\n{}",
        env.tail_logs(40)
    );
    let refused = env
        .github
        .deliveries()
        .into_iter()
        .find(|d| d.job_id == Some(other.job_ids[0]))
        .expect("delivered");
    assert_eq!(refused.status_code, Some(403));
    assert!(
        env.github
            .registrations_ever()
            .iter()
            .all(|n| !n.contains(&other.job_ids[0].to_string()))
    );
}

async fn a_job_cancelled_before_pickup_has_its_runner_deregistered_and_stopped(kind: Kind) {
    // Arrange: runners start but never connect, so the job is never picked up.
    let env = World::start(Options::backend(kind)).await;
    env.github.set_runner_behavior(|_| RunnerBehavior::NeverConnect);
    let run = env.github.queue_run(one_job(&LABELS, 100));
    let job_id = run.job_ids[0];
    let registered = env
        .github
        .wait_until(Duration::from_secs(20), |gh| !gh.runners().is_empty())
        .await;
    assert!(registered, "a runner was registered:\n{}", env.tail_logs(40));
    let sandbox_up = wait(Duration::from_secs(10), || !env.live_sandboxes().is_empty()).await;
    assert!(sandbox_up);

    // Act
    env.github.cancel_job(job_id);

    // Assert: the registration is deleted first, then the sandbox is gone.
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let deletes: Vec<_> = env
        .github
        .calls()
        .into_iter()
        .filter(|c| c.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "one DELETE of the surplus registration");
    assert_eq!(deletes[0].status, 204);
    let runner = env.runners().await.into_iter().next().expect("one runner");
    assert_eq!(runner.state.as_str(), "done");
    assert_eq!(
        env.github.job(job_id).expect("job").conclusion.as_deref(),
        Some("cancelled")
    );
}

async fn duplicated_deliveries_are_answered_as_duplicates_and_change_nothing(kind: Kind) {
    let env = World::start(Options::backend(kind)).await;
    env.github.set_delivery_filter(|_| DeliveryMode::Duplicate);
    env.github.queue_run(one_job(&LABELS, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    assert_eq!(env.github.registrations_ever().len(), 1, "one runner for one job");
    // Every event was sent twice under one GUID: the first accepted, the second a duplicate.
    let deliveries = env.github.deliveries();
    let accepted = deliveries.iter().filter(|d| d.status_code == Some(202)).count();
    assert_eq!(accepted, 3, "queued, in_progress and completed, once each");
    assert_eq!(deliveries.len(), 6);
    assert!(
        deliveries
            .iter()
            .all(|d| matches!(d.status_code, Some(200 | 202)))
    );
}

async fn a_late_queued_event_does_not_reopen_a_completed_job(kind: Kind) {
    let env = World::start(Options::backend(kind)).await;
    let run = env.github.queue_run(one_job(&LABELS, 100));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;

    // Act: the queued and in_progress events arrive again, after the completion.
    env.github.resend(run.job_ids[0], "queued");
    env.github.resend(run.job_ids[0], "in_progress");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Assert
    assert_eq!(env.github.registrations_ever().len(), 1, "no second runner");
    let job = env
        .store()
        .await
        .job(JobId(run.job_ids[0]))
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(job.status.as_str(), "completed");
}

async fn a_cancellation_delivered_before_its_queued_event_gets_no_runner(kind: Kind) {
    let env = World::start(Options::backend(kind)).await;
    // The queued event is lost; the job is cancelled; then the queued event arrives late.
    env.github.set_delivery_filter(|d| {
        if d.action.as_deref() == Some("queued") {
            DeliveryMode::Drop
        } else {
            DeliveryMode::Deliver
        }
    });
    let run = env.github.queue_run(one_job(&LABELS, 100));
    env.github.cancel_job(run.job_ids[0]);
    let cancelled = env
        .github
        .wait_until(Duration::from_secs(10), |gh| {
            gh.deliveries()
                .iter()
                .any(|d| d.action.as_deref() == Some("completed") && d.status_code == Some(202))
        })
        .await;
    assert!(cancelled);
    env.github.clear_delivery_filter();
    env.github.resend(run.job_ids[0], "queued");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.github.registrations_ever().is_empty(),
        "a cancelled job gets no runner"
    );
    let job = env
        .store()
        .await
        .job(JobId(run.job_ids[0]))
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(job.status.as_str(), "completed");
}

#[tokio::test]
async fn form_encoded_deliveries_and_pings_are_handled_by_the_real_server() {
    let env = World::start(Options::default()).await;
    env.github.set_webhook(fakes::github::WebhookTarget::form(
        env.url("/"),
        crate::helpers::SECRET,
    ));
    env.github.send_ping(REPO);
    env.github.queue_run(one_job(&LABELS, 100));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let deliveries = env.github.deliveries();
    assert_eq!(deliveries[0].event, "ping");
    assert_eq!(deliveries[0].status_code, Some(200));
    assert!(deliveries[1..].iter().all(|d| d.status_code == Some(202)));
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_badly_signed_delivery_is_refused_and_sigterm_exits_cleanly() {
    let mut env = World::start(as_process(Options::default())).await;
    let resp = reqwest_client()
        .post(env.url("/webhook"))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", "d-1")
        .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.text().await.expect("body"),
        r#"{"error":"invalid signature"}"#
    );
    assert_eq!(env.stop_service().await, Some(0), "SIGTERM is a clean exit");
}

#[tokio::test]
async fn a_job_with_labels_github_would_refuse_gets_no_registration_and_status_says_why() {
    // Arrange: 101 labels, one more than a registration may carry.
    let env = World::start(Options::default()).await;
    let labels: Vec<String> = LABELS
        .iter()
        .map(|l| l.to_string())
        .chain((0..99).map(|i| format!("extra{i}")))
        .collect();

    // Act: the job is recorded, then several planning passes go by.
    env.github
        .queue_run(RunSpec::new(REPO, vec![JobSpec::new("build", labels)]));
    let recorded = wait(Duration::from_secs(10), || {
        env.github.deliveries().iter().any(|d| d.status_code == Some(202))
    })
    .await;
    assert!(recorded, "{}", env.tail_logs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Assert: no registration was tried, and the operator sees why.
    let tried = env
        .github
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/generate-jitconfig"))
        .count();
    assert_eq!(tried, 0, "registrations tried");
    let report = modal_github_runner::status::report(&env.store().await, 10)
        .await
        .expect("report");
    assert!(
        report.contains("refused: the job asks for 101 labels"),
        "{report}"
    );
}

both_backends!(
    a_queued_job_runs_on_a_fresh_jit_runner_and_leaves_nothing_behind,
    a_job_cancelled_before_pickup_has_its_runner_deregistered_and_stopped,
    duplicated_deliveries_are_answered_as_duplicates_and_change_nothing,
    a_late_queued_event_does_not_reopen_a_completed_job,
    a_cancellation_delivered_before_its_queued_event_gets_no_runner,
    repositories_outside_allowed_repos_are_refused_and_get_no_runner,
    jobs_without_the_label_are_ignored,
);
