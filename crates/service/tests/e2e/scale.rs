//! Many jobs at once: label sets, max-parallel, and a crash in the middle.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fakes::github::{DeliveryMode, Fault, FaultRule, JobSpec, Route, RunSpec};

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

    // Every runner was registered with exactly the labels of the job it was made for
    // (GitHub would give it any job those labels cover, so a wrong set goes unnoticed by
    // the jobs themselves when it is a superset).
    let labels_of = |id: u64| -> Vec<String> {
        let job = env.github.job(id).expect("the runner's job");
        job.labels.iter().map(|l| l.to_ascii_lowercase()).collect()
    };
    for call in env
        .github
        .calls()
        .into_iter()
        .filter(|c| c.route == Route::GenerateJitConfig)
    {
        let body = call.body.expect("a JSON body");
        let name = body["name"].as_str().expect("name");
        let job: u64 = name
            .split('-')
            .nth(1)
            .and_then(|id| id.parse().ok())
            .expect("modal-<job>-<attempt>");
        let labels: Vec<String> = serde_json::from_value::<Vec<String>>(body["labels"].clone())
            .expect("labels")
            .iter()
            .map(|l| l.to_ascii_lowercase())
            .filter(|l| !l.starts_with("deployment-"))
            .collect();
        assert_eq!(labels, labels_of(job), "runner {name}");
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

async fn a_kill_during_a_registration_is_recovered_by_name_and_reuses_no_name(kind: Kind) {
    // Arrange: the first registration is made at GitHub but its answer hangs.
    let mut env = World::start(as_process(Options::backend(kind))).await;
    env.github.inject(FaultRule::new(
        Route::GenerateJitConfig,
        Fault::after_success(Fault::Hang(Duration::from_secs(20))),
    ));
    let burst = |range: std::ops::Range<usize>| {
        let jobs = range
            .map(|i| {
                JobSpec::new(format!("job {i}"), ["self-hosted", "modal"])
                    .duration(Duration::from_millis(1500))
            })
            .collect();
        RunSpec::new(REPO, jobs)
    };
    env.github.queue_run(burst(0..1));
    let hung = env
        .github
        .wait_until(Duration::from_secs(20), |gh| gh.registrations_ever().len() == 1)
        .await;
    assert!(hung);
    let half_made = env.github.runners()[0].clone();
    env.github.queue_run(burst(1..12));
    let some_started = env
        .github
        .wait_until(Duration::from_secs(20), |gh| gh.registrations_ever().len() >= 5)
        .await;
    assert!(some_started);

    // Act: SIGKILL while that registration's answer is still awaited. Events sent while the
    // service is down arrive after it is back (lost deliveries are tested elsewhere).
    env.github
        .set_delivery_filter(|_| DeliveryMode::Delay(Duration::from_secs(3)));
    env.kill_service();
    env.start_service().await;
    env.github.clear_delivery_filter();

    // Assert: every job ran on its own runner, no name was registered twice...
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
    // ...because the restarted service looked the half-made registration up by name and
    // deleted it, instead of posting its name again.
    let calls = env.github.calls();
    assert!(calls.iter().all(|c| c.status != 409), "a name was posted twice");
    let lookup = calls
        .iter()
        .find(|c| {
            c.route == Route::ListRunners
                && c.query
                    .as_deref()
                    .is_some_and(|q| q.contains(&format!("name={}", half_made.name)))
        })
        .expect("a lookup of the half-made registration by name");
    assert!(
        calls.iter().any(|c| c.route == Route::DeleteRunner
            && c.status == 204
            && c.path.ends_with(&format!("/{}", half_made.id))
            && c.at >= lookup.at),
        "the half-made registration {} was deleted",
        half_made.name
    );
    let job = env
        .github
        .jobs()
        .into_iter()
        .find(|j| format!("modal-{}-1", j.id) == half_made.name)
        .expect("the half-made registration's job");
    assert!(
        job.runner_name.is_some_and(|n| n != half_made.name),
        "its job ran on a runner of another name"
    );
}

async fn jobs_in_ten_repositories_get_one_registration_each_and_few_calls(kind: Kind) {
    // Arrange: two jobs in each of ten repositories; runners of one pool may swap jobs.
    let repos: Vec<String> = (0..10).map(|i| format!("octo/repo{i}")).collect();
    let env = World::start(Options::backend(kind).with("ALLOWED_REPOS", &repos.join(","))).await;

    // Act
    for repo in &repos {
        let jobs = (0..2)
            .map(|i| {
                JobSpec::new(format!("job {i}"), ["self-hosted", "modal"]).duration(Duration::from_secs(1))
            })
            .collect();
        env.github.queue_run(RunSpec::new(repo, jobs));
    }
    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;

    // Assert: one registration per job, none deleted as surplus, and at most four calls
    // per job end to end (the registration and the max-parallel lookup included).
    let calls = env.github.calls();
    let count = |route: Route| calls.iter().filter(|c| c.route == route).count();
    assert_eq!(count(Route::GenerateJitConfig), 20, "registrations");
    assert_eq!(count(Route::DeleteRunner), 0, "deletions");
    assert!(calls.len() <= 4 * 20, "{} calls for 20 jobs", calls.len());
}

both_backends!(
    jobs_in_ten_repositories_get_one_registration_each_and_few_calls,
    twenty_concurrent_jobs_over_three_label_sets_all_complete,
    a_matrix_with_max_parallel_two_never_has_more_than_two_live_runners,
    a_kill_during_a_registration_is_recovered_by_name_and_reuses_no_name,
);
