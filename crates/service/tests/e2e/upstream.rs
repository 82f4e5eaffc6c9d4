//! GitHub and Modal misbehaving: error answers, rate limits, hangs, lost answers, an
//! outage at start-up, and the limits the service must stay under. Every retried call is
//! checked for how it was retried (when, under which idempotency key, after which lookup),
//! not only for the final state.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fakes::github::{CallRecord, Fault, FaultRule, JobSpec, Limits, Route, RunSpec};
use fakes::modal::{FakeModal, FaultKind, ModalFault};
use modal_github_runner::domain::JobId;
use tonic::Code;

use crate::helpers::{Kind, Options, REPO, World, jobs, reqwest_client};

fn assert_unique(names: &[String]) {
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "a name was used twice: {names:?}");
}

/// When GitHub's answer to `call` left the fake.
fn answered_at(call: &CallRecord) -> SystemTime {
    call.at + call.duration
}

/// The first call after `failed` on the same route and path.
fn retry_of<'a>(calls: &'a [CallRecord], failed: &CallRecord) -> &'a CallRecord {
    calls
        .iter()
        .filter(|c| c.route == failed.route && c.path == failed.path && c.at > failed.at)
        .min_by_key(|c| c.at)
        .unwrap_or_else(|| panic!("{} {} was never retried", failed.method, failed.path))
}

/// The runner name a registration call asked for.
fn jit_name(call: &CallRecord) -> String {
    call.body
        .as_ref()
        .and_then(|b| b["name"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// `modal-<job>-<attempt>` → `modal-<job>-`.
fn job_prefix(name: &str) -> String {
    name.rsplit_once('-')
        .map(|(job, _)| format!("{job}-"))
        .unwrap_or_default()
}

const WORKFLOW: &str = "on: push\njobs:\n  test:\n    runs-on: [self-hosted, modal]\n    strategy:\n      max-parallel: 3\n      matrix:\n        shard: [1, 2, 3]\n    steps:\n      - run: make test\n";

#[tokio::test]
async fn github_errors_rate_limits_and_hangs_are_retried_without_duplicates() {
    // Arrange: the run's workflow file (read for max-parallel), and one of each failure on
    // the calls the service makes for it.
    let env = World::start(Options::default().with("GITHUB_TIMEOUT_SECS", "1")).await;
    let gh = &env.github;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    gh.put_file(REPO, ".github/workflows/test.yml", sha, WORKFLOW);
    for fault in [
        Fault::status(500),
        Fault::SecondaryRateLimit { retry_after_secs: 1 },
        Fault::Hang(Duration::from_secs(3)),
        Fault::after_success(Fault::status(502)),
    ] {
        gh.inject(FaultRule::new(Route::GenerateJitConfig, fault));
    }
    gh.inject(FaultRule::new(
        Route::GetRun,
        Fault::Status {
            status: 429,
            body: serde_json::json!({"message": "Too Many Requests"}),
            headers: vec![("retry-after".into(), "1".into())],
        },
    ));
    gh.inject(FaultRule::new(
        Route::GetContents,
        Fault::PrimaryRateLimit { reset_in_secs: 1 },
    ));
    let matrix = (1..=3)
        .map(|i| {
            JobSpec::new(format!("test ({i})"), ["self-hosted", "modal"]).duration(Duration::from_millis(200))
        })
        .collect();

    // Act
    let run = gh.queue_run(
        RunSpec::new(REPO, matrix)
            .workflow(".github/workflows/test.yml", "Test")
            .head_sha(sha),
    );
    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;

    // Assert: no name registered twice.
    assert_unique(&gh.registrations_ever());
    let calls = gh.calls();
    let failed = |route: Route, status: u16| {
        calls
            .iter()
            .find(|c| c.route == route && c.status == status)
            .unwrap_or_else(|| panic!("no {status} on {route:?}"))
    };
    // The 429 with retry-after: 1 was retried no sooner than a second later.
    let too_many = failed(Route::GetRun, 429);
    let retried = retry_of(&calls, too_many);
    let waited = retried
        .at
        .duration_since(answered_at(too_many))
        .unwrap_or_default();
    assert!(
        waited >= Duration::from_millis(950),
        "GetRun retried after {waited:?}"
    );
    // The exhausted primary budget was waited out until its reset.
    let exhausted = failed(Route::GetContents, 403);
    let reset = UNIX_EPOCH
        + Duration::from_secs(
            exhausted
                .at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                + 1,
        );
    assert!(
        retry_of(&calls, exhausted).at >= reset,
        "contents read again before the budget's reset"
    );
    // ...so max-parallel was read from the workflow file, not given up on.
    let store = env.store().await;
    for id in &run.job_ids {
        let job = store.job(JobId(*id)).await.expect("read").expect("stored");
        assert_eq!(job.max_parallel, Some(3), "job {id}");
    }
    // The secondary limit's retry-after was honoured for the same name.
    let limited = failed(Route::GenerateJitConfig, 403);
    let again = calls
        .iter()
        .filter(|c| c.route == Route::GenerateJitConfig && c.at > limited.at)
        .find(|c| jit_name(c) == jit_name(limited))
        .expect("the name registered after the secondary limit");
    let waited = again.at.duration_since(answered_at(limited)).unwrap_or_default();
    assert!(
        waited >= Duration::from_millis(950),
        "registered again after {waited:?}"
    );
    // The registration whose answer was lost (502 after it was made) was looked up by
    // name, never posted again, then deleted; whatever its job registered next (unless
    // another runner took the job meanwhile) came after the lookup, under a new name.
    let lost = failed(Route::GenerateJitConfig, 502);
    let name = jit_name(lost);
    let lookup = calls
        .iter()
        .find(|c| {
            c.route == Route::ListRunners
                && c.at >= answered_at(lost)
                && c.query
                    .as_deref()
                    .is_some_and(|q| q.contains(&format!("name={name}")))
        })
        .expect("a lookup by name after the lost answer");
    let later: Vec<&CallRecord> = calls
        .iter()
        .filter(|c| c.route == Route::GenerateJitConfig && c.at > lost.at)
        .collect();
    assert!(
        later.iter().all(|c| jit_name(c) != name),
        "the lost name {name} was posted again"
    );
    if let Some(next) = later.iter().find(|c| jit_name(c).starts_with(&job_prefix(&name))) {
        assert!(next.at > lookup.at, "registered again before looking {name} up");
    }
    assert!(
        calls
            .iter()
            .any(|c| c.route == Route::DeleteRunner && c.status == 204 && c.at >= lookup.at),
        "the half-made registration was deleted"
    );
}

/// Every call that failed with UNAVAILABLE or RESOURCE_EXHAUSTED was tried again under the
/// same `x-idempotency-key`: one logical call, however many tries.
pub fn assert_retried_under_the_same_key(fake: &FakeModal, rpcs: &[&str]) {
    let calls = fake.requests();
    let mut failures = 0;
    for (i, call) in calls.iter().enumerate() {
        if !rpcs.contains(&call.rpc) || !matches!(call.code, Code::Unavailable | Code::ResourceExhausted) {
            continue;
        }
        failures += 1;
        let key = call.header("x-idempotency-key").expect("every call has a key");
        let retried = calls[i + 1..]
            .iter()
            .any(|c| c.rpc == call.rpc && c.header("x-idempotency-key") == Some(key));
        assert!(
            retried,
            "{} failed with {:?} and was not retried under its key",
            call.rpc, call.code
        );
    }
    assert!(failures > 0, "no call failed: the faults did not fire");
}

#[tokio::test]
async fn modal_unavailable_and_resource_exhausted_on_every_call_are_ridden_out() {
    // Arrange: on each call the runners need, two UNAVAILABLE, a throttle with a retry
    // hint, then an answer lost after the call was carried out.
    let env = World::start(Options::backend(Kind::Modal)).await;
    let modal = env.fake_modal();
    let rpcs = [
        "SecretGetOrCreate",
        "SandboxCreate",
        "SandboxList",
        "SandboxTerminate",
    ];
    for rpc in rpcs {
        modal.inject(ModalFault::new(
            rpc,
            2,
            FaultKind::Status(Code::Unavailable, "upstream connect error".into()),
        ));
        modal.inject(ModalFault::new(
            rpc,
            1,
            FaultKind::ResourceExhausted {
                retry_after_secs: Some(0.2),
            },
        ));
        modal.inject(ModalFault::new(
            rpc,
            1,
            FaultKind::AfterSuccess(Code::Unavailable),
        ));
    }

    // Act: jobs long enough that a sandbox whose create answer was lost is still running
    // when the create is retried (Modal keeps a name unique among running sandboxes only).
    env.github.queue_run(jobs(3, 1500));
    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(30)).await;

    // Assert: no attempt failed, so one runner per job, one sandbox per runner.
    let failed: Vec<String> = env
        .runners()
        .await
        .into_iter()
        .filter(|r| r.state.as_str() == "failed")
        .map(|r| format!("{}: {:?}", r.name, r.failure))
        .collect();
    assert!(failed.is_empty(), "attempts failed: {failed:?}");
    assert_eq!(
        env.github.registrations_ever().len(),
        3,
        "one registration per job"
    );
    let names: Vec<String> = modal.sandboxes().into_iter().filter_map(|s| s.name).collect();
    assert_eq!(names.len(), 3);
    assert_unique(&names);
    assert_retried_under_the_same_key(modal, &rpcs);
}

#[tokio::test]
async fn modal_unreachable_at_start_up_is_waited_out_and_webhooks_are_recorded_meanwhile() {
    // Arrange: Modal answers UNAVAILABLE until the test says otherwise.
    let mut options = Options::backend(Kind::Modal);
    options.modal_faults.push(ModalFault::new(
        "AppGetOrCreate",
        usize::MAX,
        FaultKind::Status(Code::Unavailable, "no healthy upstream".into()),
    ));
    let mut env = World::prepare(options).await;
    env.launch_service().await;
    let client = reqwest_client();
    let status = |path: &'static str| {
        let (client, url) = (client.clone(), env.url(path));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()).ok() }
    };
    let serving = async {
        for _ in 0..500 {
            if status("/healthz").await == Some(200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(serving.await, "the service serves while Modal is down");

    // Act: a job is queued while the service is not ready.
    assert_eq!(status("/readyz").await, Some(503));
    let run = env.github.queue_run(jobs(1, 200));
    let delivered = env
        .github
        .wait_until(Duration::from_secs(10), |gh| {
            gh.deliveries().iter().any(|d| d.status_code.is_some())
        })
        .await;
    assert!(delivered);

    // Assert: accepted and recorded, though not ready.
    assert_eq!(env.github.deliveries()[0].status_code, Some(202));
    assert_eq!(status("/readyz").await, Some(503), "still not ready");
    let store = env.store().await;
    let job = store.job(JobId(run.job_ids[0])).await.expect("read");
    assert!(
        job.is_some_and(|j| j.source == "webhook"),
        "recorded from the webhook"
    );
    assert!(
        env.fake_modal()
            .requests()
            .iter()
            .all(|c| c.rpc == "AppGetOrCreate" && c.code == Code::Unavailable),
        "Modal was down all along"
    );

    // Act: Modal is back.
    env.fake_modal().clear_faults();

    // Assert: the recorded job is served.
    env.wait_ready().await;
    env.wait_all_completed(Duration::from_secs(60)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_burst_over_githubs_secondary_limit_is_paced_without_a_limit_error() {
    // Arrange: GitHub allows 50 points a minute per endpoint (10 registrations at 5 points
    // each); the service is told 10 a minute, and keeps 95 % of it: 9 per 61 s.
    let options = Options {
        github_limits: Some(Limits {
            max_concurrent: Some(100),
            points_per_minute_per_endpoint: Some(50),
            core_per_hour: 5000,
        }),
        ..Options::default()
    }
    .with("GITHUB_JIT_LIMIT_PER_MIN", "10")
    .with("MAX_RUNNERS", "50");
    let env = World::start(options).await;

    // Act: more jobs than a minute's registrations.
    let run = env.github.queue_run(jobs(15, 200));
    let paced = env
        .github
        .wait_until(Duration::from_secs(20), |gh| gh.registrations_ever().len() >= 9)
        .await;
    assert!(paced, "{}", env.tail_logs(30));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Assert: the window's worth went through, the rest waits; nothing bounced off.
    assert_eq!(env.github.rate_limit_errors(), 0, "a registration hit the limit");
    assert_eq!(env.github.registrations_ever().len(), 9);
    let waiting = run
        .job_ids
        .iter()
        .filter(|id| {
            env.github
                .job(**id)
                .is_some_and(|j| j.status.as_str() == "queued")
        })
        .count();
    assert_eq!(waiting, 6, "the other jobs wait for the next window");
    env.shutdown().await;
}

/// Nine levels of ten aliases: 10^9 nodes once expanded, from under a KiB of YAML.
fn alias_bomb_workflow() -> String {
    let mut text = String::from("on: push\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n");
    for level in 1..10 {
        let refs = vec![format!("*x{}", level - 1); 10].join(", ");
        text.push_str(&format!("x{level}: &x{level} [{refs}]\n"));
    }
    text.push_str("jobs:\n  test:\n    runs-on: [self-hosted, modal]\n    strategy:\n      max-parallel: 1\n      matrix:\n        shard: [1, 2, 3]\n    steps: *x9\n");
    text
}

#[tokio::test]
async fn a_workflow_alias_bomb_from_a_fork_is_refused_and_its_jobs_run_as_unlimited() {
    // Arrange: the workflow file at the run's commit (a fork's author controls it).
    let env = World::start(Options::default()).await;
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    env.github
        .put_file(REPO, ".github/workflows/bomb.yml", sha, &alias_bomb_workflow());
    let jobs = (1..=3)
        .map(|i| {
            JobSpec::new(format!("test ({i})"), ["self-hosted", "modal"]).duration(Duration::from_millis(300))
        })
        .collect();

    // Act
    env.github.queue_run(
        RunSpec::new(REPO, jobs)
            .workflow(".github/workflows/bomb.yml", "Bomb")
            .head_sha(sha),
    );
    env.wait_all_completed(Duration::from_secs(60)).await;

    // Assert: refused with a clear line, and planned as if max-parallel were absent.
    assert!(
        env.logs()
            .iter()
            .any(|l| l.contains("workflow file refused") && l.contains("YAML nodes")),
        "{}",
        env.tail_logs(30)
    );
    let store = env.store().await;
    let stored = store.recent_jobs(10).await.expect("jobs");
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|j| j.max_parallel == Some(0)), "{stored:?}");
    env.assert_nothing_left(Duration::from_secs(30)).await;
}
