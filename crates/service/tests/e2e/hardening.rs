//! What a hostile or broken client can do to the real server: slow request heads, many
//! connections, bodies over the limit on a kept-alive connection, replayed deliveries and
//! jobs of public repositories.

use std::time::{Duration, Instant, SystemTime};

use fakes::github::{ContentType, DeliveryMode, JobSpec, JobStatus, JobView, RepoView, RunSpec};
use modal_github_runner::clock::ManualClock;
use modal_github_runner::domain::JobId;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Options, REPO, SECRET, World, reqwest_client, wait};

const LABELS: [&str; 2] = ["self-hosted", "modal"];

/// The start of a request whose head never ends.
const PARTIAL_HEAD: &[u8] =
    b"POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";

async fn connect(env: &World) -> TcpStream {
    TcpStream::connect(("127.0.0.1", env.port))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (end of stream or reset); what it sent.
async fn read_until_closed(conn: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one answer's head (up to the blank line), lower-cased.
async fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            other => panic!("the connection ended before an answer: {other:?}, got {head:?}"),
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// Reads one answer (head and a `content-length` body) and returns its head.
async fn read_answer(conn: &mut TcpStream) -> String {
    let head = read_head(conn).await;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0_u8; length];
    conn.read_exact(&mut body).await.expect("the body");
    head
}

async fn metrics(env: &World) -> String {
    reqwest_client()
        .get(env.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of a metric line without labels, e.g. `mgr_http_connections 301`.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A `workflow_job` payload as GitHub sends it for a job of `repo`, with times `at`.
fn payload(action: &str, id: u64, repo: &RepoView, at: SystemTime) -> Value {
    let status = if action == "completed" {
        JobStatus::Completed
    } else {
        JobStatus::Queued
    };
    let job = JobView {
        id,
        run_id: id / 10,
        run_attempt: 1,
        repo: repo.full_name.clone(),
        name: "build".into(),
        workflow_name: "CI".into(),
        head_sha: "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e".into(),
        head_branch: "main".into(),
        labels: LABELS.iter().map(|l| l.to_string()).collect(),
        status,
        conclusion: (status == JobStatus::Completed).then(|| "success".into()),
        runner_id: None,
        runner_name: None,
        runner_group_id: None,
        runner_group_name: None,
        created_at: at,
        started_at: at,
        completed_at: (status == JobStatus::Completed).then_some(at),
    };
    fakes::github::workflow_job_payload("https://api.github.com", action, &job, repo)
}

/// POSTs `payload` signed with the world's secret under `guid`; the status and JSON answer.
async fn post_signed(env: &World, guid: &str, payload: &Value) -> (u16, Value) {
    let body = fakes::github::encode_body(payload, ContentType::Json);
    let resp = reqwest_client()
        .post(env.url("/webhook"))
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", guid)
        .header(
            "x-hub-signature-256",
            fakes::github::sign_sha256(SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_closed_after_the_timeout() {
    let env = World::start(Options::default().with("HEADER_READ_TIMEOUT_SECS", "1")).await;

    // A head that arrives in pieces, but within the timeout, is answered.
    let mut patient = connect(&env).await;
    patient
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    patient.write_all(b"\r\n").await.expect("write");
    assert!(read_answer(&mut patient).await.starts_with("http/1.1 200"));

    // One that never ends is closed: not before the timeout, and not long after.
    let mut slow = connect(&env).await;
    slow.write_all(PARTIAL_HEAD).await.expect("write");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut slow))
        .await
        .expect("the server closed the connection within 10 s");
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(900),
        "closed after {held:?}, before the timeout"
    );

    let text = metrics(&env).await;
    assert!(
        text.contains("mgr_connection_errors_total{kind=\"header timeout\"} 1"),
        "{text}"
    );

    // The answered connection, kept alive and idle since, is closed too, and counted apart
    // (an idle connection is no refusal).
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), patient.read(&mut byte))
        .await
        .expect("the idle connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let idle = wait_metric(&env, "mgr_connection_errors_total{kind=\"idle timeout\"}").await;
    assert!(idle >= 1.0);
    let text = metrics(&env).await;
    assert!(
        text.contains("mgr_connection_errors_total{kind=\"header timeout\"} 1"),
        "{text}"
    );
}

/// Waits (up to 10 s) for a metric to appear; its value.
async fn wait_metric(env: &World, name: &str) -> f64 {
    for _ in 0..100 {
        if let Some(v) = metric_value(&metrics(env).await, name) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never appeared: {}", metrics(env).await)
}

#[tokio::test]
async fn signed_deliveries_are_answered_promptly_while_300_slow_connections_are_open() {
    let env = World::start(Options::default()).await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut conn = connect(&env).await;
        conn.write_all(PARTIAL_HEAD).await.expect("write");
        slow.push(conn);
    }
    let open = async { metric_value(&metrics(&env).await, "mgr_http_connections").unwrap_or(0.0) };
    assert!(open.await >= 300.0, "the service holds the slow connections");

    // `completed` events of jobs the service never saw: each is verified, parsed and
    // written to the store, and makes no runner.
    let repo = RepoView::organization(REPO);
    let mut latencies = Vec::new();
    for i in 0..50 {
        let body = payload("completed", 13_000_000_000 + i, &repo, SystemTime::now());
        let started = Instant::now();
        let (status, _) = post_signed(&env, &uuid::Uuid::new_v4().to_string(), &body).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 202);
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}: {latencies:?}");
    let still_open = metric_value(&metrics(&env).await, "mgr_http_connections").unwrap_or(0.0);
    assert!(
        still_open >= 300.0,
        "the slow connections stayed open throughout ({still_open})"
    );
    drop(slow);
}

#[tokio::test]
async fn a_body_over_the_limit_on_a_kept_alive_connection_is_answered_413_with_connection_close() {
    let env = World::start(Options::default().with("MAX_BODY_BYTES", "1024")).await;

    // Kept-alive connections otherwise stay open between requests.
    let mut conn = connect(&env).await;
    for _ in 0..2 {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let head = read_answer(&mut conn).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }

    // A declared body over the limit is refused before it is read, and the answer says the
    // connection closes.
    conn.write_all(
        b"POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          X-GitHub-Event: workflow_job\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_answer(&mut conn).await;
    assert!(head.starts_with("http/1.1 413"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut conn))
        .await
        .expect("and closes it");
}

#[tokio::test]
async fn beyond_max_connections_new_connections_wait_and_are_served_when_one_closes() {
    let env = World::start(Options::default().with("MAX_CONNECTIONS", "5")).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(connect(&env).await);
    }
    let mut waiting = connect(&env).await;
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");

    let logged = wait(Duration::from_secs(10), || {
        env.logs()
            .iter()
            .any(|l| l.contains("connection limit MAX_CONNECTIONS=5 reached; new connections wait"))
    })
    .await;
    assert!(logged, "the limit is logged:\n{}", env.tail_logs(20));
    let mut byte = [0_u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut byte))
            .await
            .is_err(),
        "no answer while every slot is taken"
    );

    drop(idle);
    let head = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut waiting))
        .await
        .expect("served once slots free up");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    drop(waiting);
    let text = metrics(&env).await;
    assert!(
        metric_value(&text, "mgr_connection_limit_waits_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let limit_lines = env
        .logs()
        .iter()
        .filter(|l| l.contains("connection limit MAX_CONNECTIONS=5 reached"))
        .count();
    assert_eq!(limit_lines, 1, "said once, not per connection");
}

#[tokio::test]
async fn a_delivery_in_flight_when_shutdown_begins_is_answered_before_the_service_stops() {
    // Arrange: a signed delivery whose body is still arriving when the service is told to
    // stop.
    let mut env = World::start(Options::default()).await;
    let body = fakes::github::encode_body(
        &payload(
            "completed",
            13_100_000_000,
            &RepoView::organization(REPO),
            SystemTime::now(),
        ),
        ContentType::Json,
    );
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: {}\r\nX-Hub-Signature-256: {}\r\n\
         Content-Length: {}\r\n\r\n",
        uuid::Uuid::new_v4(),
        fakes::github::sign_sha256(SECRET.as_bytes(), &body),
        body.len()
    );
    let mut conn = connect(&env).await;
    let (first, rest) = body.split_at(body.len() / 2);
    conn.write_all(head.as_bytes()).await.expect("write");
    conn.write_all(first).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act: stop, and send the rest of the body a second later.
    let (stopped, answer) = tokio::join!(env.stop_service(), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        conn.write_all(rest).await.expect("write");
        read_answer(&mut conn).await
    });

    // Assert: the delivery was recorded and answered; only then did the service stop.
    assert!(answer.starts_with("http/1.1 202"), "{answer}");
    assert_eq!(stopped, Some(0));
    let store = env.store().await;
    assert!(store.job(JobId(13_100_000_000)).await.expect("read").is_some());
    assert!(
        TcpStream::connect(("127.0.0.1", env.port)).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn a_signed_delivery_replayed_after_its_job_was_pruned_is_ignored_and_makes_no_runner() {
    // Arrange: a job runs and completes; its queued delivery is kept, as an eavesdropper
    // or a leaked log could keep it.
    let mut env = World::start(Options::default()).await;
    let run = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("build", LABELS).duration(Duration::from_millis(100))],
    ));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    let job_id = run.job_ids[0];
    let queued = env
        .github
        .deliveries()
        .into_iter()
        .find(|d| d.job_id == Some(job_id) && d.action.as_deref() == Some("queued"))
        .expect("the queued delivery");
    let body = env.github.delivered_payload(queued.guid).expect("its body");
    let registrations = env.github.registrations_ever().len();

    // Eight days later (STORE_RETENTION_DAYS is 7) the service prunes the job at start-up.
    env.stop_service().await;
    env.set_clock(ManualClock::new(
        SystemTime::now() + Duration::from_secs(8 * 86_400),
    ));
    env.start_service().await;
    let store = env.store().await;
    let mut pruned = false;
    for _ in 0..100 {
        if store.job(JobId(job_id)).await.expect("read").is_none() {
            pruned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pruned, "the completed job was pruned");

    // Act: the same signed body, under its own GUID (which was pruned too) and a new one.
    for guid in [queued.guid.to_string(), uuid::Uuid::new_v4().to_string()] {
        let (status, answer) = post_signed(&env, &guid, &body).await;

        // Assert: ignored, saying why.
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "ignored");
        assert!(
            answer["reason"]
                .as_str()
                .is_some_and(|r| r.contains("STORE_RETENTION_DAYS")),
            "{answer}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        store.job(JobId(job_id)).await.expect("read").is_none(),
        "the job was not recreated"
    );
    assert_eq!(
        env.github.registrations_ever().len(),
        registrations,
        "no runner was made"
    );
    assert!(env.runners().await.iter().all(|r| !r.state.is_live()));
}

#[tokio::test]
async fn a_public_repositorys_job_is_refused_and_gets_no_runner() {
    let env = World::start(Options::default()).await;
    env.github.add_public_repo("octo/public");
    let public = env
        .github
        .queue_run(RunSpec::new("octo/public", vec![JobSpec::new("build", LABELS)]));
    let private = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("build", LABELS).duration(Duration::from_millis(100))],
    ));
    let done = env
        .github
        .wait_until(Duration::from_secs(30), |gh| {
            gh.job(private.job_ids[0])
                .is_some_and(|j| j.status == JobStatus::Completed)
        })
        .await;
    assert!(
        done,
        "the private repository's job completes:\n{}",
        env.tail_logs(40)
    );

    let refused = env
        .github
        .deliveries()
        .into_iter()
        .find(|d| d.job_id == Some(public.job_ids[0]))
        .expect("delivered");
    assert_eq!(refused.status_code, Some(403));
    let public_id = public.job_ids[0].to_string();
    assert!(
        env.github
            .registrations_ever()
            .iter()
            .all(|n| !n.contains(&public_id)),
        "no runner for the public repository's job"
    );
    let store = env.store().await;
    assert!(store.job(JobId(public.job_ids[0])).await.expect("read").is_none());
}

#[tokio::test]
async fn with_allow_public_repos_a_public_repositorys_job_gets_a_runner() {
    let env = World::start(Options::default().with("ALLOW_PUBLIC_REPOS", "true")).await;
    env.github.add_public_repo("octo/public");
    let run = env.github.queue_run(RunSpec::new(
        "octo/public",
        vec![JobSpec::new("build", LABELS).duration(Duration::from_millis(100))],
    ));
    env.wait_all_completed(Duration::from_secs(30)).await;
    let job = env.github.job(run.job_ids[0]).expect("job");
    assert_eq!(
        job.runner_name.as_deref(),
        Some(format!("modal-{}-1", run.job_ids[0]).as_str())
    );
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

/// A public repository's job whose webhook was lost, found by polling.
async fn a_polled_public_job(allow_public: bool) -> (World, u64) {
    let mut env = World::prepare(
        Options::default()
            .with("ALLOWED_REPOS", "octo/public")
            .with("RECONCILE_INTERVAL_SECS", "0.5")
            .with("ALLOW_PUBLIC_REPOS", if allow_public { "true" } else { "false" }),
    )
    .await;
    env.github.add_public_repo("octo/public");
    env.github.set_delivery_filter(|_| DeliveryMode::Drop);
    let run = env.github.queue_run(RunSpec::new(
        "octo/public",
        vec![JobSpec::new("build", LABELS).duration(Duration::from_millis(100))],
    ));
    env.start_service().await;
    (env, run.job_ids[0])
}

#[tokio::test]
async fn a_public_repositorys_job_found_by_polling_is_skipped() {
    let (env, job_id) = a_polled_public_job(false).await;
    let polled = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.calls()
                .iter()
                .filter(|c| c.path == "/repos/octo/public/actions/runs")
                .count()
                >= 4
        })
        .await;
    assert!(polled, "the reconciler polled twice:\n{}", env.tail_logs(20));
    assert!(env.github.registrations_ever().is_empty(), "no runner");
    let store = env.store().await;
    assert!(store.job(JobId(job_id)).await.expect("read").is_none());
    assert!(
        env.logs()
            .iter()
            .any(|l| l.contains("repository is public; its jobs are not polled")),
        "{}",
        env.tail_logs(20)
    );
}

#[tokio::test]
async fn with_allow_public_repos_a_public_repositorys_job_found_by_polling_gets_a_runner() {
    let (env, job_id) = a_polled_public_job(true).await;
    env.wait_all_completed(Duration::from_secs(30)).await;
    assert_eq!(
        env.github.job(job_id).expect("job").runner_name,
        Some(format!("modal-{job_id}-1"))
    );
}

/// A store the service cannot open stops the start with one line that names the store and
/// says why once (sqlx's error both quotes its cause and returns it as its source).
#[tokio::test]
async fn a_store_that_cannot_be_opened_stops_the_start_saying_why_once() {
    let dir = tempfile::tempdir().expect("dir");
    let runner = dir.path().join("runner");
    std::fs::create_dir(&runner).expect("runner dir");
    std::fs::write(runner.join("run.sh"), "#!/bin/sh\n").expect("run.sh");
    let url = format!("sqlite://{}/missing/store.db", dir.path().display());

    let out = std::process::Command::new(crate::helpers::BIN)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GITHUB_TOKEN", "ghp_test")
        .env("WEBHOOK_SECRET", SECRET)
        .env("BACKEND", "local")
        .env("LOCAL_RUNNER_DIR", &runner)
        .env("ALLOWED_REPOS", REPO)
        .env("PORT", "0")
        .env("DATABASE_URL", &url)
        .output()
        .expect("the service runs");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("could not start"))
        .unwrap_or_else(|| panic!("no start error in: {stderr}"));
    assert!(
        line.contains(&format!("could not open the store at {url}")),
        "{line}"
    );
    assert_eq!(line.matches("unable to open database file").count(), 1, "{line}");
}
