//! Never strand a job and never lose an accepted one: lost webhooks, a service down or
//! killed mid-burst, a refused token, a name registered by a try whose answer was lost, and
//! GitHub App credentials. Each test ends by checking the final state: every job completed,
//! nothing left, nothing duplicated.

use std::time::{Duration, SystemTime};

use fakes::github::{CallRecord, DeliveryInfo, DeliveryMode, Route, WebhookTarget};
use modal_github_runner::domain::{JobId, RepoName};
use modal_github_runner::github::JitRequest;

use crate::helpers::{
    BIN, Kind, Options, REPO, SECRET, StoreWriteLock, World, as_process,
    assert_each_name_once_and_every_job_succeeded, github_client, jobs, recorded_deliveries, wait,
};

fn fast_reconcile(kind: Kind) -> Options {
    Options::backend(kind).with("RECONCILE_INTERVAL_SECS", "1")
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

/// A service that asks GitHub to redeliver failed deliveries, every second.
fn redelivering() -> Options {
    Options::default()
        .with("ALLOWED_REPOS", REPO)
        .with("WEBHOOK_HOOK_ID", "1")
        .with("RECONCILE_INTERVAL_SECS", "1")
}

/// Every first delivery fails; redeliveries go through (GitHub never retries on its own).
fn lose_first_deliveries(d: &DeliveryInfo) -> DeliveryMode {
    if d.redelivery {
        DeliveryMode::Deliver
    } else {
        DeliveryMode::Drop
    }
}

#[tokio::test]
async fn failed_deliveries_are_redelivered_through_the_deliveries_api() {
    let env = World::start(redelivering()).await;
    // The first delivery of every event fails; GitHub never retries on its own.
    env.github.set_delivery_filter(lose_first_deliveries);
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
async fn deliveries_refused_on_purpose_are_never_redelivered_and_lost_ones_are() {
    // Arrange: the hook is signed with a wrong secret, so its deliveries are refused (401).
    let env = World::start(redelivering()).await;
    let hook = |secret: &str| WebhookTarget::json(env.url("/webhook"), secret);
    env.github.set_webhook(hook("not-the-webhook-secret"));
    let refused_run = env.github.queue_run(jobs(1, 200));
    let refused = env
        .github
        .wait_until(Duration::from_secs(10), |gh| {
            gh.deliveries().iter().any(|d| d.status_code == Some(401))
        })
        .await;
    assert!(refused);

    // Act: the secret is fixed; from now on every first delivery is lost. Several
    // reconcile passes go by while both jobs run.
    env.github.set_webhook(hook(SECRET));
    env.github.set_delivery_filter(lose_first_deliveries);
    let lost_run = env.github.queue_run(jobs(1, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Assert: the lost deliveries were redelivered; the refused one never was.
    let deliveries = env.github.deliveries();
    let of_job = |id: u64| deliveries.iter().filter(move |d| d.job_id == Some(id));
    assert!(
        of_job(lost_run.job_ids[0]).any(|d| d.redelivery && d.status_code == Some(202)),
        "the lost delivery was redelivered: {deliveries:?}"
    );
    let refused: Vec<_> = of_job(refused_run.job_ids[0])
        .filter(|d| d.status_code == Some(401))
        .collect();
    assert_eq!(refused.len(), 1, "{deliveries:?}");
    assert!(
        !deliveries
            .iter()
            .any(|d| d.guid == refused[0].guid && d.redelivery),
        "a refused delivery was redelivered: {deliveries:?}"
    );
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
    // The reconciler's default interval (60 s): only its start-up poll runs in this test, so
    // the deliveries answered before the kill must be in the store by themselves.
    let mut env = World::start(as_process(
        Options::backend(Kind::Modal).with("ALLOWED_REPOS", REPO),
    ))
    .await;
    env.github.queue_run(jobs(50, 1500));
    let some = env
        .github
        .wait_until(Duration::from_secs(30), |gh| gh.registrations_ever().len() >= 15)
        .await;
    assert!(some);

    // Act: the store turns slow (another connection holds its write lock) while more
    // deliveries arrive, and the service is killed meanwhile: an answer given before its
    // event was written would now be lost.
    let lock = StoreWriteLock::take(&env).await;
    env.github.queue_run(jobs(5, 1500));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.kill_service();
    lock.release().await;

    // Assert: every delivery answered 202 is in the store.
    let recorded = recorded_deliveries(&env).await;
    let accepted: Vec<String> = env
        .github
        .deliveries()
        .into_iter()
        .filter(|d| d.status_code == Some(202))
        .map(|d| d.guid.to_string())
        .collect();
    assert!(accepted.len() >= 50, "{} deliveries accepted", accepted.len());
    let lost: Vec<&String> = accepted.iter().filter(|g| !recorded.contains(*g)).collect();
    assert!(lost.is_empty(), "answered 202 but not recorded: {lost:?}");

    // ...and after a restart every job completes, each name with one sandbox.
    env.start_service().await;
    env.wait_all_completed(Duration::from_secs(120)).await;
    env.assert_nothing_left(Duration::from_secs(60)).await;
    assert_each_name_once_and_every_job_succeeded(&env);
}

/// How long provisioning pauses after a 401 in this test. The default is 300 s; 10 s keeps
/// the test short while the window watched (8 s) still clearly exceeds the planner's first
/// retry backoff (5 s), so only the pause can explain a quiet window.
const AUTH_PAUSE: Duration = Duration::from_secs(10);
const QUIET_WINDOW: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_rejected_token_pauses_registrations_says_why_and_provisioning_resumes_by_itself() {
    // Arrange
    let env =
        World::start(Options::default().with("AUTH_FAILURE_PAUSE_SECS", &AUTH_PAUSE.as_secs().to_string()))
            .await;
    let good_token = fakes::github::FakeGitHubConfig::default().token;
    env.github.set_token("ghp_someone_else");
    let jit_calls = || -> Vec<CallRecord> {
        env.github
            .calls()
            .into_iter()
            .filter(|c| c.route == Route::GenerateJitConfig)
            .collect()
    };

    // Act
    env.github.queue_run(jobs(2, 100));
    let refused = wait(Duration::from_secs(10), || {
        jit_calls().iter().any(|c| c.status == 401)
    })
    .await;
    assert!(refused, "{}", env.tail_logs(30));
    let first = jit_calls().into_iter().find(|c| c.status == 401).expect("a 401");
    let refused_at = first.at + first.duration;
    let window_end = refused_at + QUIET_WINDOW;
    tokio::time::sleep(window_end.duration_since(SystemTime::now()).unwrap_or_default()).await;

    // Assert: no registration was tried in the window, only the attempts already under
    // way when the 401 came back (one per job at most).
    let calls = jit_calls();
    let late: Vec<&CallRecord> = calls
        .iter()
        .filter(|c| c.at > refused_at + Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "registrations during the pause: {late:?}");
    assert!(calls.len() <= 2, "{} registrations tried", calls.len());
    // The operator sees why the jobs wait: in the log and in `status`.
    assert!(env.logs().iter().any(|l| l.contains("GitHub refused the token")));
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
    let out = std::process::Command::new(BIN)
        .args(["status", "--database-url", &env.database_url()])
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("401") && text.contains("queued"), "{text}");
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--database-url", &env.database_url()])
        .output()
        .expect("status --json runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    let whys: Vec<&str> = json["open_jobs"]
        .as_array()
        .expect("open jobs")
        .iter()
        .filter_map(|j| j["why"].as_str())
        .collect();
    assert!(whys.iter().any(|w| w.contains("401")), "{json}");

    // Act: the token is fixed; nobody restarts anything.
    env.github.set_token(&good_token);

    // Assert: registrations resume once the pause is over, and every job runs.
    env.wait_all_completed(Duration::from_secs(30)).await;
    let resumed = jit_calls()
        .into_iter()
        .find(|c| c.status == 201)
        .expect("a registration");
    assert!(
        resumed.at >= refused_at + AUTH_PAUSE - Duration::from_millis(500),
        "registered {:?} after the 401, within the pause",
        resumed.at.duration_since(refused_at)
    );
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_409_for_a_name_already_registered_is_recovered_without_a_duplicate() {
    // A registration under the name the service will choose exists already (left by one of
    // its own tries whose answer was lost: it carries this deployment's label): the POST
    // gets 409 Already exists.
    let env = World::start(Options::default().with("DEPLOYMENT_ID", "e2e")).await;
    let github = github_client(env.github.api_url());
    let next_job = fakes::github::JOB_ID_BASE;
    let taken = format!("modal-{next_job}-1");
    let request = JitRequest {
        name: taken.clone(),
        runner_group_id: 1,
        labels: vec!["modal".into(), "deployment-e2e".into()],
        work_folder: "_work".into(),
    };
    github
        .generate_jitconfig(&github.home_of(&RepoName::parse(REPO).expect("repo")), &request)
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
