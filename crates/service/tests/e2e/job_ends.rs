//! Every job ends: a job that will never get its `completed` event is closed with the reason
//! (GitHub no longer has it, its runners keep ending without it, its repository left the
//! allowlist), its runners are removed, and it costs nothing more.

use std::time::Duration;

use fakes::github::{JobSpec, Route, RunSpec, RunnerBehavior};
use modal_github_runner::domain::JobId;
use serde_json::json;

use crate::helpers::{Options, REPO, World, as_process};

/// Waits until the store shows `job` closed by the service, and returns why.
async fn abandoned(env: &World, job: u64, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let row = env.store().await.job(JobId(job)).await.expect("read");
        if let Some(reason) = row
            .filter(|j| j.conclusion.as_deref() == Some("abandoned"))
            .and_then(|j| j.closed_reason)
        {
            return reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} was not abandoned:\n{}",
            env.tail_logs(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn registrations(env: &World) -> usize {
    env.github
        .calls()
        .iter()
        .filter(|c| c.route == Route::GenerateJitConfig)
        .count()
}

#[tokio::test]
async fn a_job_github_answers_404_for_is_abandoned_and_its_runner_removed() {
    // Arrange: a signed delivery for a job the fake GitHub has never heard of.
    let env = World::start(Options::default().with("RECONCILE_INTERVAL_SECS", "1")).await;
    let job = 987_654_321_u64;
    env.github.send_raw(
        "workflow_job",
        json!({
            "action": "queued",
            "workflow_job": {
                "id": job, "run_id": 5, "run_attempt": 1, "name": "ghost", "status": "queued",
                "labels": ["self-hosted", "modal"], "runner_name": null
            },
            "repository": {"full_name": REPO, "private": true},
        }),
    );

    // Act + Assert: closed with the reason, and nothing left of its runner.
    let reason = abandoned(&env, job, Duration::from_secs(20)).await;
    assert!(reason.contains("404"), "{reason}");
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let report = modal_github_runner::status::report(&env.store().await, 10)
        .await
        .expect("report");
    assert!(report.contains("abandoned") && report.contains("404"), "{report}");
}

#[tokio::test]
async fn a_job_whose_runners_all_exit_without_it_is_abandoned_after_max_attempts() {
    // Arrange: every runner connects, then exits without taking the job.
    let env = World::start(Options::default().with("MAX_ATTEMPTS_PER_JOB", "2")).await;
    env.github.set_runner_behavior(|_| RunnerBehavior::ExitWithoutJob);

    // Act
    let run = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("flaky", ["self-hosted", "modal"])],
    ));

    // Assert: two runners, then the job is closed and no third runner is ever made.
    let reason = abandoned(&env, run.job_ids[0], Duration::from_secs(40)).await;
    assert!(reason.contains("MAX_ATTEMPTS_PER_JOB"), "{reason}");
    assert_eq!(registrations(&env), 2);
    env.assert_nothing_left(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        registrations(&env),
        2,
        "a runner was made after the job was abandoned"
    );
    let metrics = reqwest::get(env.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"mgr_jobs_abandoned_total{reason="too_many_attempts"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_job_of_a_repository_removed_from_the_allowlist_is_abandoned_at_the_next_start() {
    // Arrange: a job GitHub never dispatches, in a repository that is allowed at first.
    let other = "octo/other";
    let mut env = World::start(as_process(
        Options::default().with("ALLOWED_REPOS", &format!("{REPO},{other}")),
    ))
    .await;
    let run = env.github.queue_run(RunSpec::new(
        other,
        vec![JobSpec::new("held", ["self-hosted", "modal"]).dispatch_group("held", 0)],
    ));
    let has_runner = env
        .github
        .wait_until(Duration::from_secs(20), |gh| !gh.registrations_ever().is_empty())
        .await;
    assert!(has_runner, "{}", env.tail_logs(30));

    // Act: the repository leaves the allowlist while the service is down.
    env.stop_service().await;
    env.set_env("ALLOWED_REPOS", REPO);
    env.start_service().await;

    // Assert
    let reason = abandoned(&env, run.job_ids[0], Duration::from_secs(20)).await;
    assert!(reason.contains("ALLOWED_REPOS"), "{reason}");
    env.assert_nothing_left(Duration::from_secs(20)).await;
}
