//! Costs, the daily spend cap and failure output tails (issue 13 items 4, 5), on the Modal
//! backend against the fake Modal.

use std::time::Duration;

use fakes::modal::FakeModal;
use modal_github_runner::status;
use modal_github_runner::store::Store;

use crate::helpers::{Kind, Options, REPO, SECRET, World, jobs};

fn modal(env: &World) -> &FakeModal {
    env.modal.as_ref().expect("the modal backend")
}

/// Costs looked for every second.
fn options() -> Options {
    Options::backend(Kind::Modal).with("COST_POLL_SECS", "1")
}

/// The cost recorded for `job`, waiting up to `timeout` for it.
async fn job_cost(store: &Store, job: u64, timeout: Duration) -> Option<(f64, String)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some((_, d, src)) = store.job_costs(&[job]).await.expect("costs").into_iter().next() {
            return Some((d, src));
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_jobs_cost_comes_from_modals_statistics_and_shows_in_status_metrics_and_the_log() {
    let env = World::start(options()).await;
    modal(&env).set_stats_delay(Duration::from_secs(1));
    let run = env.github.queue_run(jobs(1, 300));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let store = env.store().await;
    let job = run.job_ids[0];
    let (dollars, source) = job_cost(&store, job, Duration::from_secs(30))
        .await
        .expect("a cost was recorded");
    assert_eq!(source, "stats");
    // 2 cores and 4 GiB for a few seconds at Modal's rates: well under a cent, above zero.
    assert!(dollars > 0.0 && dollars < 0.01, "{dollars}");
    assert!(
        modal(&env).requests().iter().any(|c| c.rpc == "SandboxGetStats"),
        "the statistics were asked for"
    );

    let text = status::report(&store, 10).await.expect("status");
    assert!(text.contains("(stats)") && text.contains("cost=$"), "{text}");
    assert!(text.contains(&format!("{REPO}=$")), "{text}");
    let metrics = reqwest::get(env.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains(&format!("mgr_cost_dollars_total{{repo=\"{REPO}\"}}")),
        "{metrics}"
    );
    assert!(
        env.logs()
            .iter()
            .any(|l| l.contains("cost recorded") && l.contains(&job.to_string())),
        "the closing log line names the cost"
    );
}

#[tokio::test]
async fn without_statistics_a_cost_is_estimated_from_resources_seconds_and_cost_rates() {
    let env = World::start(
        options()
            .with("COST_STATS_WAIT_SECS", "0")
            .with("COST_RATES", "cpu=1,memory=0"),
    )
    .await;
    // Modal's statistics never arrive in time.
    modal(&env).set_stats_delay(Duration::from_secs(3600));
    let run = env.github.queue_run(jobs(1, 300));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let store = env.store().await;
    let job = run.job_ids[0];
    let (dollars, source) = job_cost(&store, job, Duration::from_secs(30))
        .await
        .expect("a cost was recorded");
    assert_eq!(source, "rates");
    let runner = env
        .runners()
        .await
        .into_iter()
        .find(|r| r.job.0 == job)
        .expect("the runner");
    let seconds = (runner.ended_at.expect("ended") - runner.started_at.expect("started")) as f64 / 1000.0;
    // 2 cores at $1 per core-second, memory free.
    assert!((dollars - 2.0 * seconds).abs() < 1e-6, "{dollars} vs {seconds}s");
}

#[tokio::test]
async fn the_daily_spend_cap_holds_jobs_queued_and_status_says_why() {
    let env = World::start(
        options()
            .with("COST_STATS_WAIT_SECS", "0")
            .with("COST_RATES", "cpu=1")
            .with("MAX_SPEND_PER_DAY", "0.01"),
    )
    .await;
    modal(&env).set_stats_delay(Duration::from_secs(3600));
    let first = env.github.queue_run(jobs(1, 300));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let store = env.store().await;
    job_cost(&store, first.job_ids[0], Duration::from_secs(30))
        .await
        .expect("the first job's cost");

    let second = env.github.queue_run(jobs(1, 300));
    let mut said_why = false;
    for _ in 0..100 {
        let text = status::report(&store, 10).await.expect("status");
        if text.contains("MAX_SPEND_PER_DAY") {
            said_why = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(said_why, "{}", status::report(&store, 10).await.expect("status"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(modal(&env).sandboxes().len(), 1, "no sandbox for the held job");
    let job = env.github.job(second.job_ids[0]).expect("the job");
    assert_eq!(
        job.status,
        fakes::github::JobStatus::Queued,
        "the job stays queued"
    );
    let text = status::report(&store, 10).await.expect("status");
    assert!(
        text.lines()
            .any(|l| l.contains(&second.job_ids[0].to_string()) && l.contains("provisioning paused")),
        "{text}"
    );
}

#[tokio::test]
async fn a_failed_sandboxs_last_output_is_in_status_with_secrets_masked() {
    let script = format!(
        "echo 'runner booting'; echo \"jit: $ACTIONS_RUNNER_INPUT_JITCONFIG\"; \
         echo 'webhook secret {SECRET}'; echo 'token ghp_0123456789abcdefghijklmnopqrstuv'; \
         echo 'fatal: disk full' >&2; exit 3"
    );
    let env = World::start(Options {
        runner_command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        ..options().with("MAX_ATTEMPTS_PER_JOB", "1")
    })
    .await;
    env.github.queue_run(jobs(1, 300));
    let store = env.store().await;
    let mut kept = false;
    for _ in 0..150 {
        if !store.failure_logs(10).await.expect("failure logs").is_empty() {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(kept, "a failure tail was kept");
    let jit = modal(&env)
        .sandboxes()
        .first()
        .and_then(|s| s.env.get("ACTIONS_RUNNER_INPUT_JITCONFIG").cloned())
        .expect("the sandbox's JIT config");

    let text = status::report(&store, 10).await.expect("status");
    assert!(text.contains("last output (secrets masked)"), "{text}");
    assert!(
        text.contains("runner booting") && text.contains("fatal: disk full"),
        "{text}"
    );
    assert!(text.contains("SUCCESS") || text.contains("FAILURE"), "{text}");
    for secret in [jit.as_str(), SECRET, "ghp_0123456789abcdefghijklmnopqrstuv"] {
        assert!(!text.contains(secret), "a secret reached status: {text}");
        for line in env.logs() {
            assert!(!line.contains(secret), "a secret reached the log: {line}");
        }
    }
    assert!(
        text.contains("jit: ***") && text.contains("webhook secret ***"),
        "{text}"
    );
    let logged = env
        .logs()
        .iter()
        .filter(|l| l.contains("last output (secrets masked)"))
        .count();
    assert_eq!(logged, 1, "the tail is logged once");
}

// ---- warm pool (issue 13 item 3) ----

/// Live warm runners (made for no job) in the store.
async fn warm_live(env: &World) -> Vec<modal_github_runner::store::RunnerRow> {
    env.runners()
        .await
        .into_iter()
        .filter(|r| r.job.0 == 0 && r.state.is_live())
        .collect()
}

#[tokio::test]
async fn the_warm_pool_is_refilled_after_a_job_takes_a_runner_and_never_exceeds_max_runners() {
    let env = World::start(
        options()
            .with("WARM_POOL", "self-hosted+modal=3")
            .with("MAX_RUNNERS", "3"),
    )
    .await;
    // The first job opens the pool's reach (this repository).
    env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let mut ready = false;
    for _ in 0..150 {
        let online = env
            .github
            .runners()
            .into_iter()
            .filter(|r| r.name.starts_with("modal-0-") && r.connected && !r.busy)
            .count();
        if warm_live(&env).await.len() == 3 && online == 3 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "three warm runners registered and idle");
    let before: Vec<String> = warm_live(&env)
        .await
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();

    // The next job is taken by a warm runner, which is then replaced.
    // The next two jobs are taken by warm runners. While they run the pool is two short,
    // but MAX_RUNNERS is reached: no fourth sandbox until they end.
    let run = env.github.queue_run(jobs(2, 3000));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let taken: Vec<String> = run
        .job_ids
        .iter()
        .map(|id| {
            env.github
                .job(*id)
                .and_then(|j| j.runner_name)
                .expect("the job ran")
        })
        .collect();
    for name in &taken {
        assert!(before.contains(name), "{name} is one of {before:?}");
    }
    let mut refilled = false;
    for _ in 0..150 {
        let all_live = env
            .runners()
            .await
            .into_iter()
            .filter(|r| r.state.is_live())
            .count();
        assert!(all_live <= 3, "{all_live} runners live, above MAX_RUNNERS");
        let live = warm_live(&env).await;
        if live.len() == 3 && live.iter().all(|r| !taken.contains(&r.name.to_string())) {
            refilled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refilled, "the pool was refilled to three");
    assert!(
        modal(&env).peak_running() <= 3,
        "never above MAX_RUNNERS: {}",
        modal(&env).peak_running()
    );
    let text = status::report(&env.store().await, 10).await.expect("status");
    assert!(text.contains("warm:    3 runners"), "{text}");
}
