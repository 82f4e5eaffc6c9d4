//! The GitHub API budget: idle repositories cost nothing counted (conditional requests), and
//! a draining budget slows polling down and then stops it, never registrations.

use std::time::{Duration, SystemTime};

use fakes::github::{CallRecord, FakeGitHub, JobSpec, Limits, Route, RunSpec};

use crate::helpers::{Kind, Options, World};

/// The calls polling, lookups and sweeps make (the client's background calls).
fn is_background(call: &CallRecord) -> bool {
    match call.route {
        Route::ListRuns
        | Route::ListRunJobs
        | Route::GetJob
        | Route::GetRun
        | Route::GetContents
        | Route::ListHookDeliveries => true,
        // A lookup by name is provisioning's; the plain listing is the sweep's.
        Route::ListRunners => !call.query.as_deref().unwrap_or("").contains("name="),
        _ => false,
    }
}

fn calls_since(github: &FakeGitHub, since: SystemTime) -> Vec<CallRecord> {
    github.calls().into_iter().filter(|c| c.at >= since).collect()
}

async fn world_with_repos(repos: &[String], options: Options) -> World {
    let options = options.with("ALLOWED_REPOS", &repos.join(","));
    let mut env = World::prepare(options).await;
    for repo in repos {
        env.github.add_repo(repo);
    }
    env.start_service().await;
    env
}

#[tokio::test]
async fn an_idle_service_with_a_hundred_repositories_makes_almost_no_counted_calls() {
    // Arrange: 100 allowed repositories, nothing queued, a pass every 2 s.
    let repos: Vec<String> = (0..100).map(|i| format!("octo/r{i}")).collect();
    let options = Options::backend(Kind::Local).with("RECONCILE_INTERVAL_SECS", "2");
    let env = world_with_repos(&repos, options).await;
    // The first pass reads every listing whole.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Act: five passes.
    let from = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Assert: every repository was polled, yet almost nothing counted.
    let calls = calls_since(&env.github, from);
    let passes = 5.0;
    let requests = calls.len() as f64 / (100.0 * passes);
    let counted = calls.iter().filter(|c| c.counted).count() as f64 / (100.0 * passes);
    assert!(
        requests >= 2.0,
        "polling went on: {requests:.2} requests per repository per pass"
    );
    assert!(
        counted <= 0.2,
        "{counted:.3} counted calls per repository per pass"
    );
    assert!(calls.iter().any(|c| c.status == 304));
}

/// Three repositories polled every second against a budget of 1,000 calls an hour (the
/// reserve is then 100 calls; pacing starts below 500), polling under way.
async fn polled_world_on_a_small_budget() -> (World, Vec<String>) {
    let repos: Vec<String> = ["octo/a", "octo/b", "octo/c"].map(String::from).to_vec();
    let options = Options {
        github_limits: Some(Limits {
            core_per_hour: 1000,
            ..Limits::default()
        }),
        ..Options::backend(Kind::Local)
    }
    .with("RECONCILE_INTERVAL_SECS", "1");
    let env = world_with_repos(&repos, options).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = calls_since(&env.github, from)
        .iter()
        .filter(|c| is_background(c))
        .count();
    assert!(before >= 9, "polling runs: {before} background calls in 3 s");
    (env, repos)
}

#[tokio::test]
async fn a_draining_budget_spaces_polling_out() {
    // Arrange
    let (env, _) = polled_world_on_a_small_budget().await;

    // Act: other clients of the token leave 300 calls, between half the budget and the
    // reserve.
    env.github
        .spend_budget(env.github.budget_remaining().saturating_sub(300));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(8)).await;

    // Assert: from about nine calls a second to a few in 8 s (200 calls above the reserve
    // for the rest of the hour: one call every 18 s).
    let paced = calls_since(&env.github, from)
        .iter()
        .filter(|c| is_background(c))
        .count();
    assert!(
        paced <= 3,
        "{paced} background calls in 8 s while the budget drains"
    );
}

#[tokio::test]
async fn at_the_reserve_registrations_keep_flowing_while_polling_stops() {
    // Arrange
    let (env, repos) = polled_world_on_a_small_budget().await;

    // Act: 60 calls left, under the reserve; three jobs arrive.
    env.github
        .spend_budget(env.github.budget_remaining().saturating_sub(60));
    let jobs = (0..3)
        .map(|i| {
            JobSpec::new(format!("job {i}"), ["self-hosted", "modal"]).duration(Duration::from_millis(300))
        })
        .collect();
    env.github.queue_run(RunSpec::new(&repos[0], jobs));

    // Assert: every job got its registration and ran (its max-parallel lookup, a
    // background call, waited; the planner went on without it), while polling stopped.
    let registered = env
        .github
        .wait_until(Duration::from_secs(60), |gh| {
            gh.calls()
                .iter()
                .filter(|c| c.route == Route::GenerateJitConfig && c.status == 201)
                .count()
                == 3
        })
        .await;
    assert!(
        registered,
        "registrations flow at the reserve\n{}",
        env.tail_logs(30)
    );
    env.wait_all_completed(Duration::from_secs(60)).await;
    // Four more passes' worth of time to watch polling in.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first_registration = env
        .github
        .calls()
        .into_iter()
        .find(|c| c.route == Route::GenerateJitConfig)
        .map(|c| c.at)
        .expect("a registration");
    let after = calls_since(&env.github, first_registration + Duration::from_secs(1));
    let polled: Vec<String> = after
        .iter()
        .filter(|c| is_background(c))
        .map(|c| format!("{} {}", c.path, c.query.as_deref().unwrap_or("")))
        .collect();
    assert!(polled.is_empty(), "background calls at the reserve: {polled:?}");
    assert_eq!(env.github.rate_limit_errors(), 0, "the budget was never overrun");
}
