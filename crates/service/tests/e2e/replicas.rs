//! Several replicas on one PostgreSQL database (docs/reliability.md): every replica accepts
//! webhooks, one leads, and another takes over when the leader is lost, without a second
//! registration or sandbox for any runner name. The leader's lease fences it: a leader
//! paused past its lease makes no GitHub or Modal call when it wakes.
//!
//! These run only with `TEST_DATABASE_URL` (scripts/test starts a PostgreSQL server and
//! sets it); without it they fail under `CI` and are skipped (with a message) otherwise.

use std::time::{Duration, Instant};

use fakes::github::WebhookTarget;
use modal_github_runner::store::Store;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::{
    Kind, Options, Proxy, REPO, Replica, SECRET, World, as_process,
    assert_each_name_once_and_every_job_succeeded, assert_unique, fresh_postgres_database, jobs,
    reqwest_client,
};

/// The replica holding a live lease, as the database says.
async fn leader(store: &Store) -> Option<String> {
    match store.lease_state().await {
        Ok(Some(lease)) if lease.live => Some(lease.holder),
        _ => None,
    }
}

/// Waits until `replica` holds a live lease; how long that took.
async fn wait_leader(store: &Store, replica: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if leader(store).await.as_deref() == Some(replica) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{replica} did not lead within {timeout:?} (leader: {:?})",
        leader(store).await
    );
}

/// Webhooks this replica accepted, from its `/metrics`.
async fn accepted_webhooks(port: u16) -> u64 {
    let text = reqwest_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|l| l.starts_with("mgr_webhooks_total{outcome=\"accepted\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The world's service as `replica-a` (the first leader) on a fresh PostgreSQL database,
/// before it starts; `None` when the test is skipped.
async fn world_on_postgres(test: &str, lease_secs: &str) -> Option<World> {
    let url = fresh_postgres_database(test).await?;
    Some(
        World::prepare(as_process(
            Options::backend(Kind::Modal)
                .with("ALLOWED_REPOS", REPO)
                .with("DATABASE_URL", &url)
                .with("LEADER_LEASE_SECS", lease_secs)
                .with("REPLICA_ID", "replica-a")
                .with("RECONCILE_INTERVAL_SECS", "2"),
        ))
        .await,
    )
}

/// Replica B's environment beside the world's: its id, and the fakes reached directly.
fn replica_b_env(env: &World) -> Vec<(&'static str, String)> {
    vec![
        ("REPLICA_ID", "replica-b".into()),
        ("GITHUB_API_URL", env.github.api_url()),
        ("MODAL_SERVER_URL", env.fake_modal().url()),
    ]
}

async fn start_replica_b(env: &World, port: Option<u16>) -> Replica {
    let vars = replica_b_env(env);
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match port {
        Some(port) => env.start_replica_on(port, &extra).await,
        None => env.start_replica(&extra).await,
    }
}

/// Starts replica B once A leads (reaching the fakes directly), and sends GitHub's webhooks
/// to both through a balancer.
async fn second_replica_behind_a_balancer(env: &World, store: &Store) -> (Replica, Proxy) {
    wait_leader(store, "replica-a", Duration::from_secs(20)).await;
    let b = start_replica_b(env, None).await;
    let balancer = Proxy::start(vec![env.port, b.port]).await;
    env.github
        .set_webhook(WebhookTarget::json(format!("{}/webhook", balancer.url()), SECRET));
    (b, balancer)
}

#[tokio::test]
async fn two_replicas_finish_a_50_job_burst_after_the_leader_is_killed_with_one_registration_and_sandbox_per_name()
 {
    let Some(mut env) = world_on_postgres("replicas_burst_kill", "3").await else {
        return;
    };
    env.start_service().await;
    let store = env.store().await;
    let (b, _balancer) = second_replica_behind_a_balancer(&env, &store).await;

    // Act: a 50-job burst, webhooks alternating between the replicas; the leader is
    // SIGKILLed once some runners are registered.
    env.github.queue_run(jobs(50, 1500));
    let some = env
        .github
        .wait_until(Duration::from_secs(60), |gh| gh.registrations_ever().len() >= 15)
        .await;
    assert!(some, "{}", env.tail_logs(40));
    let (by_a, by_b) = (accepted_webhooks(env.port).await, accepted_webhooks(b.port).await);
    env.kill_service();
    let killed = Instant::now();
    let takeover = wait_leader(&store, "replica-b", Duration::from_secs(30)).await;
    println!("leader takeover after SIGKILL: {takeover:?} (LEADER_LEASE_SECS=3)");
    let leads = |port: u16| async move {
        let status: serde_json::Value = reqwest_client()
            .get(format!("http://127.0.0.1:{port}/status.json"))
            .send()
            .await
            .expect("status answers")
            .json()
            .await
            .expect("status JSON");
        status["leader"]["replica"].as_str().map(String::from)
    };
    let mut shown = None;
    for _ in 0..100 {
        shown = leads(b.port).await;
        if shown.as_deref() == Some("replica-b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        shown.as_deref(),
        Some("replica-b"),
        "B's status page names the leader"
    );
    let metrics = reqwest_client()
        .get(format!("http://127.0.0.1:{}/metrics", b.port))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("mgr_leader{replica=\"replica-b\"} 1"),
        "B's metrics say it leads"
    );

    // Assert
    assert!(
        by_a > 0 && by_b > 0,
        "both replicas accepted webhooks: a {by_a}, b {by_b}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "takeover within a few lease lengths"
    );
    env.wait_all_completed(Duration::from_secs(180)).await;
    env.assert_nothing_left(Duration::from_secs(60)).await;
    assert_each_name_once_and_every_job_succeeded(&env);
    drop(b);
    store.close().await;
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_makes_no_github_or_modal_call_when_it_wakes() {
    let Some(mut env) = world_on_postgres("replicas_fencing", "2").await else {
        return;
    };
    // Replica A reaches GitHub and Modal through proxies that record its requests.
    let github_port = env.github.local_addr().port();
    let modal_port = env.fake_modal().addr().port();
    let github_proxy = Proxy::start(vec![github_port]).await;
    let modal_proxy = Proxy::start(vec![modal_port]).await;
    let api_url = env.github.api_url().replace(
        &format!("127.0.0.1:{github_port}"),
        &format!("127.0.0.1:{}", github_proxy.port),
    );
    env.set_env("GITHUB_API_URL", &api_url);
    env.set_env("MODAL_SERVER_URL", &modal_proxy.url());
    env.start_service().await;
    let store = env.store().await;
    let (b, _balancer) = second_replica_behind_a_balancer(&env, &store).await;
    env.github.queue_run(jobs(3, 300));
    env.wait_all_completed(Duration::from_secs(60)).await;
    assert!(
        !github_proxy.requests().is_empty() && !modal_proxy.requests().is_empty(),
        "A led and called both"
    );
    let a = Pid::from_raw(i32::try_from(env.process().expect("a process").pid()).expect("pid"));

    // Act: A is paused until B leads and has work under way, then woken.
    kill(a, Signal::SIGSTOP).expect("SIGSTOP");
    let stopped = Instant::now();
    env.github.queue_run(jobs(4, 3000));
    wait_leader(&store, "replica-b", Duration::from_secs(30)).await;
    let took_over = Instant::now();
    let busy = env
        .github
        .wait_until(Duration::from_secs(60), |gh| gh.registrations_ever().len() >= 5)
        .await;
    assert!(busy, "B provisions while A is paused");
    let woken = Instant::now();
    kill(a, Signal::SIGCONT).expect("SIGCONT");
    let noticed = crate::helpers::wait(Duration::from_secs(15), || {
        env.logs()
            .iter()
            .any(|l| l.contains("another replica took the lease over"))
    })
    .await;
    assert!(noticed, "A noticed it lost the lease: {}", env.tail_logs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Assert: nothing went from A to GitHub or Modal after it woke.
    let late = |requests: Vec<(Instant, String)>| -> Vec<String> {
        requests
            .into_iter()
            .filter(|(t, _)| *t >= woken)
            .map(|(_, what)| what)
            .collect()
    };
    println!(
        "A paused {:?}; B led {:?} after the pause began",
        woken - stopped,
        took_over - stopped
    );
    let (github_calls, modal_calls) = (late(github_proxy.requests()), late(modal_proxy.requests()));
    assert!(
        github_calls.is_empty(),
        "GitHub calls by A after it woke: {github_calls:?}"
    );
    assert!(
        modal_calls.is_empty(),
        "Modal calls by A after it woke: {modal_calls:?}"
    );
    assert_eq!(leader(&store).await.as_deref(), Some("replica-b"));
    env.wait_all_completed(Duration::from_secs(120)).await;
    env.assert_nothing_left(Duration::from_secs(60)).await;
    assert_unique(&env.github.registrations_ever());
    drop(b);
    store.close().await;
}

#[tokio::test]
async fn a_replica_restarted_during_a_burst_misses_no_delivery_and_serves_again() {
    let Some(mut env) = world_on_postgres("replicas_restart", "3").await else {
        return;
    };
    env.start_service().await;
    let store = env.store().await;
    let (mut b, _balancer) = second_replica_behind_a_balancer(&env, &store).await;

    // Act: the follower is stopped and started again on its port during a 30-job burst.
    env.github.queue_run(jobs(30, 1500));
    let some = env
        .github
        .wait_until(Duration::from_secs(60), |gh| gh.registrations_ever().len() >= 5)
        .await;
    assert!(some, "{}", env.tail_logs(40));
    assert_eq!(b.stop().await, Some(0), "B stops cleanly");
    env.github.queue_run(jobs(10, 1500));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut b = start_replica_b(&env, Some(b.port)).await;
    env.github.queue_run(jobs(10, 1500));

    // Assert: every delivery was answered 202 by one replica or the other; the restarted
    // replica accepts webhooks again; every job completes once.
    env.wait_all_completed(Duration::from_secs(180)).await;
    let refused: Vec<String> = env
        .github
        .deliveries()
        .into_iter()
        .filter(|d| d.status_code != Some(202))
        .map(|d| format!("{} {:?}", d.guid, d.status_code))
        .collect();
    assert!(refused.is_empty(), "deliveries not accepted: {refused:?}");
    assert!(
        accepted_webhooks(b.port).await > 0,
        "the restarted replica serves webhooks"
    );
    assert_eq!(
        leader(&store).await.as_deref(),
        Some("replica-a"),
        "the leader stayed"
    );
    env.assert_nothing_left(Duration::from_secs(60)).await;
    assert_unique(&env.github.registrations_ever());
    b.kill();
    store.close().await;
}
