//! `JOB_SOURCE=scaleset`: jobs reach the service through a runner scale set's message queue
//! at the fake Actions service, with no webhook at all.

use std::time::Duration;

use fakes::github::{JobSpec, RunSpec};
use testkit::both_backends;

use crate::helpers::{Kind, Options, REPO, StoreWriteLock, World, as_process, assert_unique};

/// A world whose service takes jobs from the scale set `modal` of the organisation `octo`,
/// with GitHub sending no webhook anywhere.
async fn scaleset_world(options: Options) -> World {
    let options = options
        .with("JOB_SOURCE", "scaleset")
        .with("RUNNER_SCOPE", "org")
        .with("ALLOWED_REPOS", "octo/*");
    let env = World::prepare(options).await;
    env.github.clear_webhook();
    env
}

fn jobs(n: usize, ms: u64) -> RunSpec {
    let specs = (0..n)
        .map(|i| JobSpec::new(format!("job {i}"), ["modal"]).duration(Duration::from_millis(ms)))
        .collect();
    RunSpec::new(REPO, specs)
}

async fn metrics(env: &World) -> String {
    reqwest::get(env.url("/metrics"))
        .await
        .expect("an answer")
        .text()
        .await
        .expect("a body")
}

/// The value of the gauge line that starts with `prefix` (name, labels and a space).
fn gauge(text: &str, prefix: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Every job completed, every message acknowledged exactly once, no name registered twice.
async fn assert_clean_finish(env: &World) {
    env.wait_all_completed(Duration::from_secs(120)).await;
    let acknowledged = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.scale_set_messages_accounted().is_ok()
        })
        .await;
    assert!(
        acknowledged,
        "{:?}\n{}",
        env.github.scale_set_messages_accounted(),
        env.tail_logs(40)
    );
    assert_unique(&env.github.registrations_ever());
    assert!(env.github.deliveries().is_empty(), "no webhook was sent");
}

async fn a_jobs_whole_life_needs_no_webhook(kind: Kind) {
    let mut env = scaleset_world(Options::backend(kind)).await;
    env.start_service().await;
    let sets = env.github.scale_sets();
    assert_eq!(sets.len(), 1, "the service created its scale set");
    assert_eq!(sets[0].name, "modal");

    let run = env.github.queue_run(jobs(1, 300));

    assert_clean_finish(&env).await;
    let job = env.github.job(run.job_ids[0]).expect("job");
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(env.github.registrations_ever().len(), 1);
    let kinds: Vec<String> = env
        .github
        .scale_set_messages()
        .iter()
        .flat_map(|m| {
            m.jobs
                .iter()
                .map(|j| j["messageType"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    for kind in ["JobAvailable", "JobAssigned", "JobStarted", "JobCompleted"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
    env.assert_nothing_left(Duration::from_secs(30)).await;
    let post = reqwest::Client::new()
        .post(env.url("/webhook"))
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(
        post.status().as_u16(),
        404,
        "no webhook endpoint in scale-set mode"
    );
    env.assert_no_secret_in_logs();
}

both_backends!(a_jobs_whole_life_needs_no_webhook);

async fn a_burst_of_50_jobs_completes_within_max_runners_sent_as_the_sets_capacity(kind: Kind) {
    let mut env = scaleset_world(Options::backend(kind).with("MAX_RUNNERS", "8")).await;
    env.start_service().await;

    env.github.queue_run(jobs(50, 400));

    // The Actions service's statistics reach /metrics while the burst waits for runners.
    let assigned = r#"mgr_scaleset_jobs{scale_set="modal",state="assigned"} "#;
    let mut seen = None;
    for _ in 0..100 {
        let text = metrics(&env).await;
        seen = gauge(&text, assigned).filter(|n| *n > 0);
        if seen.is_some() {
            assert!(
                gauge(
                    &text,
                    r#"mgr_scaleset_runners{scale_set="modal",state="registered"} "#
                )
                .is_some(),
                "{text}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.is_some(),
        "no assigned jobs in /metrics: {}",
        metrics(&env).await
    );
    // ...and the status page, a line per scale set.
    let status: serde_json::Value = reqwest::get(env.url("/status.json"))
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(status["scale_sets"][0]["name"], "modal", "{status}");
    let page = reqwest::get(env.url("/status"))
        .await
        .expect("an answer")
        .text()
        .await
        .expect("a body");
    assert!(page.contains("Scale set modal: "), "{page}");

    assert_clean_finish(&env).await;
    let polls = env.github.scale_set_polls();
    assert!(!polls.is_empty());
    assert!(
        polls.iter().all(|p| p.max_capacity == Some(8)),
        "X-ScaleSetMaxCapacity is MAX_RUNNERS"
    );
    assert!(
        env.github.peak_live_runners("octo") <= 8,
        "peak {}",
        env.github.peak_live_runners("octo")
    );
    assert!(env.github.registrations_ever().len() >= 50);
    // Surplus runners (any runner of the set may take any job) are removed through the
    // Actions service, and every sandbox ends.
    env.assert_nothing_left(Duration::from_secs(60)).await;
}

both_backends!(a_burst_of_50_jobs_completes_within_max_runners_sent_as_the_sets_capacity);

async fn a_job_cancelled_before_pickup_gets_no_runner_and_a_restart_waits_for_no_session(kind: Kind) {
    let mut env = scaleset_world(Options::backend(kind)).await;
    env.start_service().await;
    env.stop_service().await;
    assert_eq!(
        env.github.scale_set_sessions(),
        0,
        "the session is deleted on shutdown"
    );

    let run = env.github.queue_run(jobs(1, 300));
    assert!(env.github.cancel_job(run.job_ids[0]));
    env.start_service().await;

    let seen = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.scale_set_messages_accounted().is_ok() && !gh.scale_set_messages().is_empty()
        })
        .await;
    assert!(seen, "{:?}", env.github.scale_set_messages_accounted());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.github.registrations_ever().is_empty(),
        "no runner for a cancelled job"
    );
    let creates = env.github.scale_set_session_creates();
    assert!(
        creates.iter().all(|c| c.status == 200),
        "no conflict after a clean stop"
    );
}

both_backends!(a_job_cancelled_before_pickup_gets_no_runner_and_a_restart_waits_for_no_session);

async fn a_stale_session_is_waited_out_then_jobs_flow(kind: Kind) {
    let mut env = scaleset_world(Options::backend(kind)).await;
    env.github
        .hold_scale_set_session("modal", Duration::from_secs(20));
    env.start_service().await;
    let run = env.github.queue_run(jobs(2, 200));

    assert_clean_finish(&env).await;
    let creates = env.github.scale_set_session_creates();
    assert!(
        creates.iter().any(|c| c.status == 409),
        "the stale session was met"
    );
    let first = creates.first().expect("a create").at;
    let opened = creates.iter().find(|c| c.status == 200).expect("a session").at;
    assert!(opened.duration_since(first) >= Duration::from_secs(19));
    assert_eq!(run.job_ids.len(), 2);
    assert!(
        env.logs()
            .iter()
            .any(|l| l.contains("holds the scale set's session")),
        "the conflict is logged clearly"
    );
}

both_backends!(a_stale_session_is_waited_out_then_jobs_flow);

async fn admin_and_queue_tokens_expiring_mid_poll_are_renewed(kind: Kind) {
    let mut env = scaleset_world(Options::backend(kind)).await;
    env.github
        .set_scale_set_token_lifetimes(Duration::from_secs(2), Duration::from_secs(2));
    env.github.set_scale_set_poll_hold(Duration::from_secs(3));
    env.start_service().await;

    env.github.queue_run(jobs(3, 300));
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.github.queue_run(jobs(3, 300));

    assert_clean_finish(&env).await;
    assert!(
        env.github.scale_set_session_refreshes() >= 1,
        "the queue token was refreshed"
    );
    assert!(
        env.github.scale_set_admin_tokens_issued() >= 2,
        "the admin token was renewed"
    );
    env.assert_no_secret_in_logs();
}

both_backends!(admin_and_queue_tokens_expiring_mid_poll_are_renewed);

async fn a_session_refresh_answered_404_opens_a_new_session(kind: Kind) {
    let mut env = scaleset_world(Options::backend(kind)).await;
    env.github.set_scale_set_poll_hold(Duration::from_secs(1));
    env.start_service().await;
    env.github.drop_scale_set_sessions();

    env.github.queue_run(jobs(2, 200));

    assert_clean_finish(&env).await;
    let opened = env
        .github
        .scale_set_session_creates()
        .iter()
        .filter(|c| c.status == 200)
        .count();
    assert_eq!(opened, 2, "a new session replaced the forgotten one");
}

both_backends!(a_session_refresh_answered_404_opens_a_new_session);

async fn the_service_killed_mid_burst_completes_every_job_and_loses_no_message(kind: Kind) {
    let options = as_process(Options::backend(kind).with("MAX_RUNNERS", "20"));
    let mut env = scaleset_world(options).await;
    env.github.set_scale_set_session_lapse(Duration::from_secs(5));
    env.start_service().await;
    env.github.queue_run(jobs(40, 1500));
    let some = env
        .github
        .wait_until(Duration::from_secs(30), |gh| gh.registrations_ever().len() >= 10)
        .await;
    assert!(some);

    env.kill_service();
    env.start_service().await;

    assert_clean_finish(&env).await;
    env.assert_nothing_left(Duration::from_secs(60)).await;
    assert!(
        env.github
            .jobs()
            .iter()
            .all(|j| j.conclusion.as_deref() == Some("success")),
        "every job ran"
    );
}

both_backends!(the_service_killed_mid_burst_completes_every_job_and_loses_no_message);

/// Record before acknowledge, at a controlled point: the store cannot be written (another
/// connection holds its write lock) when a job's message arrives, so the message must stay
/// unacknowledged; the service is killed there, and the message comes back to its
/// successor. Acknowledging first would delete it while its job is nowhere, and the job
/// would never run. Local only: the order under test is the listener's, the same on both
/// backends.
#[tokio::test]
async fn a_message_whose_job_could_not_be_stored_is_not_acknowledged_and_comes_back_after_a_kill() {
    let options = as_process(Options::backend(Kind::Local));
    let mut env = scaleset_world(options).await;
    env.github.set_scale_set_session_lapse(Duration::from_secs(5));
    env.start_service().await;

    let lock = StoreWriteLock::take(&env).await;
    let run = env.github.queue_run(jobs(1, 300));
    let delivered = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.scale_set_messages()
                .iter()
                .any(|m| !m.jobs.is_empty() && m.deliveries >= 1)
        })
        .await;
    assert!(delivered, "{}", env.tail_logs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early: Vec<u64> = env
        .github
        .scale_set_messages()
        .iter()
        .filter(|m| m.deletions > 0)
        .map(|m| m.id)
        .collect();
    assert!(
        early.is_empty(),
        "acknowledged before its job was stored: {early:?}"
    );
    env.kill_service();
    lock.release().await;

    env.start_service().await;
    assert_clean_finish(&env).await;
    assert!(
        env.github.scale_set_messages().iter().any(|m| m.deliveries >= 2),
        "the unacknowledged message was delivered again"
    );
    let job = env.github.job(run.job_ids[0]).expect("job");
    assert_eq!(job.conclusion.as_deref(), Some("success"));
}

/// Modal only: a scale set's machine spec becomes the sandbox's CPU and memory, which only
/// the Modal backend carries (the local backend runs every runner as a plain process, so
/// there is no machine to tell apart).
#[tokio::test]
async fn several_scale_sets_each_give_their_jobs_their_machine_in_one_burst() {
    let options = Options::backend(Kind::Modal).with("SCALE_SETS", "modal-small,modal-big:cpu=4;memory=8192");
    let mut env = scaleset_world(options).await;
    env.start_service().await;
    let mut names: Vec<String> = env.github.scale_sets().into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, ["modal-big", "modal-small"]);

    let spec =
        |set: &str, i: usize| JobSpec::new(format!("{set} {i}"), [set]).duration(Duration::from_millis(300));
    let specs = (0..4)
        .flat_map(|i| [spec("modal-small", i), spec("modal-big", i)])
        .collect();
    env.github.queue_run(RunSpec::new(REPO, specs));

    assert_clean_finish(&env).await;
    let sandboxes = env.fake_modal().sandboxes();
    for job in env.github.jobs() {
        let runner = job.runner_name.clone().expect("a runner ran it");
        let sandbox = sandboxes
            .iter()
            .find(|s| s.name.as_deref() == Some(runner.as_str()))
            .expect("its sandbox");
        let (cpu, memory) = (sandbox.resources.milli_cpu, sandbox.resources.memory_mb);
        if job.labels.iter().any(|l| l == "modal-big") {
            assert_eq!(
                (cpu, memory),
                (4000, 8192),
                "{} runs on modal-big's machine",
                job.name
            );
        } else {
            assert_ne!(
                (cpu, memory),
                (4000, 8192),
                "{} runs on the default machine",
                job.name
            );
        }
    }
}

async fn a_runner_that_never_comes_online_is_removed_through_the_actions_service(kind: Kind) {
    let options = Options::backend(kind)
        .with("RUNNER_REGISTRATION_TIMEOUT_SECS", "2")
        .with("MAX_ATTEMPTS_PER_JOB", "1");
    let mut env = scaleset_world(options).await;
    env.github
        .set_runner_behavior(|_| fakes::github::RunnerBehavior::NeverConnect);
    env.start_service().await;

    env.github.queue_run(jobs(1, 200));

    let registered = env
        .github
        .wait_until(Duration::from_secs(20), |gh| !gh.registrations_ever().is_empty())
        .await;
    assert!(registered, "{}", env.tail_logs(20));
    let removed = env
        .github
        .wait_until(Duration::from_secs(30), |gh| gh.runners().is_empty())
        .await;
    assert!(
        removed,
        "the stuck registration is still there: {:?}",
        env.github.runners()
    );
}

both_backends!(a_runner_that_never_comes_online_is_removed_through_the_actions_service);
