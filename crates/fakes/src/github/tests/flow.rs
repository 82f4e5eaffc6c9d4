//! Fake runners taking jobs: dispatch, max-parallel, deletion, cancellation.

use std::time::Duration;

use super::*;

#[tokio::test]
async fn a_fake_runner_takes_a_queued_job_and_every_webhook_is_signed() {
    let fake = start_fake().await;
    let receiver = Receiver::start().await;
    fake.set_webhook(WebhookTarget::json(&receiver.url, SECRET));
    let run = fake.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("build", ["self-hosted", "Linux"]).duration(Duration::from_millis(200))],
    ));
    let job_id = run.job_ids[0];
    assert!(job_id > u64::from(u32::MAX));
    let config = jit_config(&fake, "runner-e2e", &["self-hosted", "linux", "x64"]).await;
    let outcome = tokio::time::timeout(WAIT, spawn_runner(config))
        .await
        .expect("runner finishes");
    assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
    assert!(fake.wait_until(WAIT, |f| f.deliveries().len() >= 3).await);
    let actions: Vec<String> = receiver.job_events(job_id).into_iter().map(|(a, _)| a).collect();
    assert_eq!(actions, ["queued", "in_progress", "completed"]);
    let seen = receiver.seen();
    assert!(
        seen.iter().all(|r| r.signature_ok),
        "every delivery is correctly signed"
    );
    let in_progress = seen
        .iter()
        .find(|r| r.body["action"] == "in_progress")
        .expect("in_progress");
    assert_eq!(in_progress.body["workflow_job"]["runner_name"], "runner-e2e");
    let job = fake.job(job_id).expect("job");
    assert_eq!(
        (job.status, job.conclusion.as_deref()),
        (JobStatus::Completed, Some("success"))
    );
    assert!(fake.runners().is_empty(), "the JIT registration is single-use");
    assert_eq!(fake.peak_live_runners(REPO), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn dispatch_never_runs_more_jobs_of_a_group_than_its_max_parallel() {
    let fake = start_fake().await;
    let jobs = (0..4)
        .map(|i| {
            JobSpec::new(format!("test ({i})"), ["self-hosted"])
                .duration(Duration::from_millis(400))
                .dispatch_group("test", 2)
        })
        .collect();
    let run = fake.queue_run(RunSpec::new(REPO, jobs));
    let mut runners = Vec::new();
    for i in 0..4 {
        runners.push(spawn_runner(
            jit_config(&fake, &format!("r{i}"), &["self-hosted"]).await,
        ));
    }
    for handle in runners {
        let outcome = tokio::time::timeout(WAIT, handle).await.expect("runner finishes");
        assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
    }
    let views: Vec<JobView> = run.job_ids.iter().filter_map(|id| fake.job(*id)).collect();
    assert!(views.iter().all(|j| j.status == JobStatus::Completed));
    let overlapping_at = |t: std::time::SystemTime| {
        views
            .iter()
            .filter(|j| j.started_at <= t && j.completed_at.is_some_and(|end| end > t))
            .count()
    };
    let peak = views
        .iter()
        .map(|j| overlapping_at(j.started_at))
        .max()
        .unwrap_or(0);
    assert_eq!(peak, 2, "two at a time, never three");
    fake.shutdown().await;
}

#[tokio::test]
async fn deleting_a_busy_runner_is_refused_and_deleting_an_idle_one_stops_it() {
    let fake = start_fake().await;
    let run = fake.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("long", ["busy"]).duration(Duration::from_secs(30))],
    ));
    let busy = spawn_runner(jit_config(&fake, "busy-runner", &["busy"]).await);
    let idle = spawn_runner(jit_config(&fake, "idle-runner", &["idle"]).await);
    assert!(
        fake.wait_until(WAIT, |f| f.runners().iter().any(|r| r.busy))
            .await
    );
    assert!(
        fake.wait_until(WAIT, |f| f
            .runners()
            .iter()
            .all(|r| r.status == RunnerStatus::Online))
            .await
    );
    let id_of = |name: &str| {
        fake.runners()
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.id)
            .expect("runner")
    };
    let path = |id: u64| format!("/repos/{REPO}/actions/runners/{id}");

    let refused = api(&fake, "DELETE", &path(id_of("busy-runner")), None).await;
    assert_eq!(refused.status, 422);
    assert_eq!(
        refused.json().expect("json")["message"],
        "Bad request - Runner \"busy-runner\" is still running a job"
    );
    let deleted = api(&fake, "DELETE", &path(id_of("idle-runner")), None).await;
    assert_eq!(deleted.status, 204);
    let outcome = tokio::time::timeout(WAIT, idle).await.expect("idle runner exits");
    assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");

    assert!(fake.cancel_job(run.job_ids[0]));
    let outcome = tokio::time::timeout(WAIT, busy)
        .await
        .expect("cancelled runner exits");
    assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
    assert_eq!(
        fake.job(run.job_ids[0]).and_then(|j| j.conclusion).as_deref(),
        Some("cancelled")
    );
    assert!(fake.runners().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn runner_behaviors_leave_a_crashed_runner_offline_and_a_hung_one_never_connected() {
    let fake = start_fake().await;
    fake.set_runner_behavior(|name| match name {
        "crashes" => RunnerBehavior::ExitWithoutJob,
        "hangs" => RunnerBehavior::NeverConnect,
        _ => RunnerBehavior::Normal,
    });
    let crashes = spawn_runner(jit_config(&fake, "crashes", &["self-hosted"]).await);
    let hangs = spawn_runner(jit_config(&fake, "hangs", &["self-hosted"]).await);
    let outcome = tokio::time::timeout(WAIT, crashes).await.expect("exits");
    assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hangs.is_finished(), "a hung runner never returns");
    hangs.abort();
    let runners = fake.runners();
    let view = |name: &str| runners.iter().find(|r| r.name == name).expect("still registered");
    assert!(view("crashes").connected && !view("crashes").busy);
    assert!(!view("hangs").connected);
    assert_eq!(view("hangs").status, RunnerStatus::Offline);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_lingering_runner_completes_its_job_then_keeps_running() {
    let fake = start_fake().await;
    fake.set_runner_behavior(|_| RunnerBehavior::LingerAfterJob);
    let run = fake.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("build", ["self-hosted"]).duration(Duration::from_millis(100))],
    ));
    let runner = spawn_runner(jit_config(&fake, "lingers", &["self-hosted"]).await);
    let done = fake
        .wait_until(WAIT, |f| {
            f.job(run.job_ids[0])
                .is_some_and(|j| j.status == JobStatus::Completed)
        })
        .await;
    assert!(done, "the job completes");
    assert_eq!(
        fake.job(run.job_ids[0]).and_then(|j| j.conclusion).as_deref(),
        Some("success")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!runner.is_finished(), "the runner outlives its job");
    assert!(fake.runners().is_empty(), "its single-use registration is gone");
    runner.abort();
    fake.shutdown().await;
}

#[tokio::test]
async fn a_runner_takes_any_matching_job_not_the_one_it_was_made_for() {
    let fake = start_fake().await;
    let first = fake.queue_run(RunSpec::new(REPO, vec![JobSpec::new("first", ["gpu"])]));
    let second = fake.queue_run(RunSpec::new(REPO, vec![JobSpec::new("second", ["gpu"])]));
    let outcome = tokio::time::timeout(WAIT, spawn_runner(jit_config(&fake, "late", &["GPU"]).await)).await;
    assert!(matches!(outcome, Ok(Ok(Ok(())))), "{outcome:?}");
    let runner_of = |id: u64| fake.job(id).and_then(|j| j.runner_name);
    assert_eq!(
        runner_of(first.job_ids[0]).as_deref(),
        Some("late"),
        "oldest matching job first"
    );
    assert_eq!(runner_of(second.job_ids[0]), None);
    fake.shutdown().await;
}
