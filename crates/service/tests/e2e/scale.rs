//! Many jobs at once: label sets, max-parallel, and a restart in the middle.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fakes::github::{DeliveryMode, JobSpec, RunSpec};

use crate::helpers::{Kind, Options, REPO, World, as_process};
use testkit::both_backends;

async fn twenty_concurrent_jobs_over_three_label_sets_all_complete(kind: Kind) {
    let env = World::start(Options::backend(kind)).await;
    let sets: [&[&str]; 3] = [
        &["self-hosted", "modal"],
        &["self-hosted", "modal", "gpu"],
        &["modal", "big-disk"],
    ];
    let jobs = (0..20)
        .map(|i| {
            JobSpec::new(format!("job {i}"), sets[i % 3].iter().copied()).duration(Duration::from_millis(300))
        })
        .collect();
    env.github.queue_run(RunSpec::new(REPO, jobs));

    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;

    // Every job ran on a runner that has all its labels. (GitHub may give a job to a
    // runner with more labels, e.g. a `gpu` runner takes a plain job; the planner then
    // makes the gpu job a replacement, so there can be more runners than jobs.)
    for job in env.github.jobs() {
        let runner = job.runner_name.clone().expect("taken by a runner");
        let registration = env
            .github
            .calls()
            .into_iter()
            .find(|c| c.body.as_ref().is_some_and(|b| b["name"] == runner))
            .expect("registered by the service");
        let labels: Vec<String> =
            serde_json::from_value(registration.body.expect("body")["labels"].clone()).expect("labels");
        let has = |l: &String| labels.iter().any(|r| r.eq_ignore_ascii_case(l));
        assert!(
            job.labels.iter().all(has),
            "job {} {:?} ran on {runner} {labels:?}",
            job.name,
            job.labels
        );
    }
    let names = env.github.registrations_ever();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "no name registered twice");
    assert!(names.len() >= 20, "at least one runner per job: {names:?}");
    env.assert_no_secret_in_logs();
}

async fn a_matrix_with_max_parallel_two_never_has_more_than_two_live_runners(kind: Kind) {
    // Arrange: the workflow file GitHub would serve, and a matrix GitHub dispatches two at a time.
    let env = World::start(Options::backend(kind)).await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    env.github.put_file(
        REPO,
        ".github/workflows/matrix.yml",
        sha,
        "on: push\njobs:\n  test:\n    runs-on: [self-hosted, modal]\n    strategy:\n      max-parallel: 2\n      matrix:\n        shard: [1, 2, 3, 4, 5, 6]\n    steps:\n      - run: make test\n",
    );
    let jobs = (1..=6)
        .map(|i| {
            JobSpec::new(format!("test ({i})"), ["self-hosted", "modal"])
                .duration(Duration::from_millis(400))
                .dispatch_group("test", 2)
        })
        .collect();
    let peak_sandboxes = Arc::new(AtomicUsize::new(0));
    let env = Arc::new(env);
    let sampler = {
        let (env, peak) = (env.clone(), peak_sandboxes.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(env.live_sandboxes().len(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Act
    env.github.queue_run(
        RunSpec::new(REPO, jobs)
            .workflow(".github/workflows/matrix.yml", "Matrix")
            .head_sha(sha),
    );
    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;
    sampler.abort();

    // Assert
    assert!(
        env.github.peak_live_runners(REPO) <= 2,
        "peak registrations {}",
        env.github.peak_live_runners(REPO)
    );
    assert!(
        peak_sandboxes.load(Ordering::Relaxed) <= 2,
        "peak sandboxes {}",
        peak_sandboxes.load(Ordering::Relaxed)
    );
    assert_eq!(env.github.registrations_ever().len(), 6);
    let store = env.store().await;
    let stored = store.recent_jobs(10).await.expect("jobs");
    assert!(
        stored.iter().all(|j| j.max_parallel == Some(2)),
        "max-parallel was read from the workflow file"
    );
}

async fn a_restart_in_the_middle_of_a_burst_completes_every_job_and_reuses_no_name(kind: Kind) {
    let mut env = World::start(as_process(Options::backend(kind))).await;
    let jobs = (0..12)
        .map(|i| {
            JobSpec::new(format!("job {i}"), ["self-hosted", "modal"]).duration(Duration::from_millis(1500))
        })
        .collect();
    env.github.queue_run(RunSpec::new(REPO, jobs));
    let some_started = env
        .github
        .wait_until(Duration::from_secs(20), |gh| gh.registrations_ever().len() >= 4)
        .await;
    assert!(some_started);

    // Act: SIGTERM mid-burst. Events sent while the service is down arrive after it is
    // back (lost deliveries are the reconciler's business, tested elsewhere).
    env.github
        .set_delivery_filter(|_| DeliveryMode::Delay(Duration::from_secs(3)));
    assert_eq!(env.stop_service().await, Some(0));
    env.start_service().await;
    env.github.clear_delivery_filter();

    // Assert
    env.wait_all_completed(Duration::from_secs(90)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;
    let names = env.github.registrations_ever();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a runner name was registered twice: {names:?}"
    );
    let taken: HashSet<String> = env
        .github
        .jobs()
        .into_iter()
        .filter_map(|j| j.runner_name)
        .collect();
    assert_eq!(taken.len(), 12, "every job ran on its own runner");
}

both_backends!(
    twenty_concurrent_jobs_over_three_label_sets_all_complete,
    a_matrix_with_max_parallel_two_never_has_more_than_two_live_runners,
    a_restart_in_the_middle_of_a_burst_completes_every_job_and_reuses_no_name,
);
