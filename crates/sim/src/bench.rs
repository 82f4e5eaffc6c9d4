//! `sim bench`: seven scenarios, one table each (BENCHMARKS.md explains the
//! method and keeps the latest figures).
//!
//! 1. ingress: signed ~8 KB `workflow_job` deliveries, closed-loop at concurrency 64 and
//!    open-loop at 500/s, against the service and against a bare server (the same HTTP
//!    stack and HMAC check, no store: `bare.rs`) whose figures are the yardstick; every
//!    accepted delivery checked in the store after a SIGKILL;
//! 2. burst, latency-bound: 500 jobs at once with limits off; time to the last sandbox against
//!    the bound of a two-stage pipeline (32 registration slots, 256 creation slots), a
//!    50-job burst's time to its last sandbox and queued-to-registration latencies, and
//!    single jobs sent to an idle service (the first round's start);
//! 3. burst, limit-bound: the same against GitHub's and Modal's limits (Modal at 5/s and at
//!    40/s); achieved rate over the binding limit, and rate-limit errors;
//! 4. footprint: the idle service with 10,000 completed jobs stored; start-to-ready time;
//! 5. API budget: counted GitHub calls of 100 idle repositories per pass, per job end to
//!    end, and an organisation's share of a token's hourly budget (`budget`);
//! 6. warm pool: queued → running p50 of jobs one at a time, without and with
//!    `WARM_POOL` (`warm`);
//! 7. job sources: a 100-job burst's queued → registration request (p50/p99) with webhooks
//!    and with a runner scale set (`JOB_SOURCE=scaleset`), in the same latency-bound world.
//!
//! Every figure with a target is printed with it and PASS or FAIL; the command fails when
//! a target is missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, ValueEnum};

use crate::report::Table;
use crate::world::{self, REPO, WorldConfig};
use fakes::github::{self as fake_gh, JobSpec, JobView, RunSpec};
use modal_github_runner::domain::{JobEvent, JobId, JobStatus, LabelSet, RepoName};
use modal_github_runner::ingress::signature;
use modal_github_runner::store::{EventSource, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    All,
    Ingress,
    BurstLatency,
    BurstLimits,
    Footprint,
    ApiBudget,
    WarmPool,
    JobSources,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Which scenario to run.
    #[arg(value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Smaller sizes, for a quick look (not the published figures).
    #[arg(long)]
    pub quick: bool,
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    println!(
        "modal-github-runner benchmarks ({} cores){}\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        if args.quick { ", quick sizes" } else { "" }
    );
    let all = args.scenario == Scenario::All;
    let mut misses = Vec::new();
    if all || args.scenario == Scenario::Ingress {
        misses.extend(ingress(args.quick, "normal", None).await?.print());
        misses.extend(ingress(args.quick, "full", None).await?.print());
        // PostgreSQL beside SQLite, on the server TEST_DATABASE_URL names (`scripts/postgres
        // start` starts one); the bench starts none itself.
        if std::env::var_os("TEST_DATABASE_URL").is_some() {
            if let Some(url) = testkit::fresh_postgres_database("bench_ingress").await {
                misses.extend(ingress(args.quick, "normal", Some(url)).await?.print());
            }
        } else {
            println!(
                "1. ingress on PostgreSQL: skipped (set TEST_DATABASE_URL, e.g. with scripts/postgres start)\n"
            );
        }
    }
    if all || args.scenario == Scenario::BurstLatency {
        misses.extend(burst_latency(args.quick).await?.print());
    }
    if all || args.scenario == Scenario::BurstLimits {
        for modal_rate in [5.0, 40.0] {
            misses.extend(burst_limits(args.quick, modal_rate).await?.print());
        }
    }
    if all || args.scenario == Scenario::Footprint {
        misses.extend(footprint(args.quick).await?.print());
    }
    if all || args.scenario == Scenario::ApiBudget {
        misses.extend(crate::budget::run(args.quick).await?.print());
    }
    if all || args.scenario == Scenario::WarmPool {
        misses.extend(crate::warm::run(args.quick).await?.print());
    }
    if all || args.scenario == Scenario::JobSources {
        misses.extend(job_sources().await?.print());
    }
    if misses.is_empty() {
        println!("every target met");
        Ok(())
    } else {
        Err(format!("targets missed:\n  {}", misses.join("\n  ")))
    }
}

// ---- 1. ingress ----

/// The world's webhook secret: deliveries signed with anything else are refused (401).
const SECRET: &str = testkit::SECRET;

/// Pre-signed deliveries: body, signature, GUID.
struct Delivery {
    body: bytes::Bytes,
    signature: String,
    guid: String,
}

/// Deliveries `numbers` (queued, in_progress and completed events of one job in turn, so
/// three numbers a job), each a realistic payload; different numbers, different jobs.
fn deliveries(numbers: std::ops::Range<usize>, api_url: &str) -> Vec<Delivery> {
    let repo = fake_gh::RepoView::organization(REPO);
    numbers
        .map(|i| {
            let action = ["queued", "in_progress", "completed"][i % 3];
            let job = job_view(i as u64 / 3, action);
            let body = serde_json::to_vec(&fake_gh::workflow_job_payload(api_url, action, &job, &repo))
                .unwrap_or_default();
            Delivery {
                signature: signature::sign(SECRET.as_bytes(), &body),
                body: body.into(),
                guid: uuid::Uuid::new_v4().to_string(),
            }
        })
        .collect()
}

fn job_view(n: u64, action: &str) -> JobView {
    let now = SystemTime::now();
    let status = match action {
        "queued" => fake_gh::JobStatus::Queued,
        "in_progress" => fake_gh::JobStatus::InProgress,
        _ => fake_gh::JobStatus::Completed,
    };
    let started = status != fake_gh::JobStatus::Queued;
    JobView {
        id: fake_gh::JOB_ID_BASE + 1_000_000 + n,
        run_id: 9_000_000_000 + n / 50,
        run_attempt: 1,
        repo: REPO.into(),
        name: format!("test ({})", n % 50),
        workflow_name: "CI".into(),
        head_sha: "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e".into(),
        head_branch: "main".into(),
        labels: vec!["self-hosted".into(), "modal".into(), "linux".into()],
        status,
        conclusion: (status == fake_gh::JobStatus::Completed).then(|| "success".into()),
        runner_id: started.then_some(40 + n),
        runner_name: started.then(|| format!("modal-{}-1", fake_gh::JOB_ID_BASE + 1_000_000 + n)),
        runner_group_id: started.then_some(1),
        runner_group_name: started.then(|| "Default".into()),
        created_at: now,
        started_at: now,
        completed_at: (status == fake_gh::JobStatus::Completed).then_some(now),
    }
}

async fn send(client: &reqwest::Client, url: &str, d: &Delivery) -> Option<u16> {
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", &d.guid)
        .header("x-hub-signature-256", &d.signature)
        .header("user-agent", "GitHub-Hookshot/bench")
        .body(d.body.clone())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// What one load pattern measured against one server.
struct Load {
    /// Deliveries answered 202, in all closed loops.
    accepted: usize,
    /// Closed loops: the median of their accepted deliveries per second.
    throughput: f64,
    /// Closed loops: the lowest and the highest of them.
    throughput_range: (f64, f64),
    /// Open loop: each delivery's latency from its due time, sorted.
    latencies: Vec<Duration>,
}

impl Load {
    /// The figures of closed loops that gave (accepted, elapsed) each, and an open loop's
    /// latencies.
    fn of_rounds(rounds: &[(usize, Duration)], latencies: Vec<Duration>) -> Load {
        let mut rates: Vec<f64> = rounds
            .iter()
            .map(|(accepted, elapsed)| *accepted as f64 / elapsed.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        Load {
            accepted: rounds.iter().map(|(accepted, _)| accepted).sum(),
            throughput: rates.get(rates.len() / 2).copied().unwrap_or_default(),
            throughput_range: (
                rates.first().copied().unwrap_or_default(),
                rates.last().copied().unwrap_or_default(),
            ),
            latencies,
        }
    }

    fn p(&self, q: f64) -> f64 {
        ms(quantile(&self.latencies, q))
    }
}

/// Sends the whole batch, `concurrency` requests at a time; returns (accepted, elapsed).
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    batch: Arc<Vec<Delivery>>,
    concurrency: usize,
) -> (usize, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (batch, next, accepted, client, url) = (
            batch.clone(),
            next.clone(),
            accepted.clone(),
            client.clone(),
            url.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = batch.get(i) else { break };
                if send(&client, &url, d).await == Some(202) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (accepted.load(Ordering::Relaxed), started.elapsed())
}

/// Sends the batch at `rate` per second whatever the answers; returns each delivery's
/// latency from its due time (sorted) and how many were accepted.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    batch: Arc<Vec<Delivery>>,
    rate: f64,
) -> (Vec<Duration>, usize) {
    let origin = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(batch.len());
    for i in 0..batch.len() {
        let due = origin + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (client, url, b) = (client.clone(), url.to_string(), batch.clone());
        handles.push(tokio::spawn(async move {
            let ok = send(&client, &url, &b[i]).await == Some(202);
            (due.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(batch.len());
    let mut ok = 0;
    for h in handles {
        if let Ok((lat, accepted)) = h.await {
            latencies.push(lat);
            ok += usize::from(accepted);
        }
    }
    latencies.sort();
    (latencies, ok)
}

/// The ingress patterns against the bare server (same HTTP stack and HMAC check, no store):
/// `ROUNDS` closed loops of `closed` (it keeps nothing), then the open loop.
async fn bare_ingress(
    client: &reqwest::Client,
    closed: Arc<Vec<Delivery>>,
    open: Arc<Vec<Delivery>>,
) -> Result<Load, String> {
    let bare = crate::bare::start(SECRET).await?;
    let url = format!("http://127.0.0.1:{}/webhook", bare.port);
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        rounds.push(closed_loop(client, &url, closed.clone(), 64).await);
    }
    let (latencies, _) = open_loop(client, &url, open, OPEN_RATE).await;
    Ok(Load::of_rounds(&rounds, latencies))
}

/// Closed loops per server: throughput is their median, since one loop's figure moves by
/// ±10 % from run to run, on the bare server as much as on the service.
const ROUNDS: usize = 3;

/// The open loop's arrival rate, deliveries per second.
const OPEN_RATE: f64 = 500.0;

/// Ingress on SQLite (`postgres` `None`) or on the PostgreSQL database `postgres`.
async fn ingress(quick: bool, sync: &str, postgres: Option<String>) -> Result<Table, String> {
    let total = if quick { 4_000 } else { 20_000 };
    let open_n = if quick { 1_000 } else { 5_000 };
    let mut service_env = vec![("STORE_SYNC".to_string(), sync.to_string())];
    if let Some(url) = &postgres {
        service_env.push(("DATABASE_URL".into(), url.clone()));
    }
    let config = WorldConfig {
        service_env,
        run_runners: false,
        jit_latency: Duration::ZERO,
        create_latency: Duration::ZERO,
        github_limits: false,
        modal_rate: None,
        ..WorldConfig::default()
    };
    let mut world = world::start(config).await?;
    let url = format!("http://127.0.0.1:{}/webhook", world.port);
    // Each of the service's closed loops sends jobs it has not seen, and so does the open loop.
    let batches: Vec<Arc<Vec<Delivery>>> = (0..ROUNDS)
        .map(|r| Arc::new(deliveries(r * total..(r + 1) * total, &world.github.api_url())))
        .collect();
    let open_batch = Arc::new(deliveries(
        ROUNDS * total..ROUNDS * total + open_n,
        &world.github.api_url(),
    ));
    let size = batches[0].iter().map(|d| d.body.len()).sum::<usize>() / total.max(1);
    fakes::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .map_err(|e| e.to_string())?;

    let bare = bare_ingress(&client, batches[0].clone(), open_batch.clone()).await?;

    // Closed loops, then a crash right after the last answer, then count what is on disk.
    let mut rounds = Vec::with_capacity(ROUNDS);
    for batch in &batches {
        rounds.push(closed_loop(&client, &url, batch.clone(), 64).await);
    }
    let (_, peak_closed) = world.process().map(|s| s.memory_kib()).unwrap_or_default();
    if let Some(s) = world.take_process() {
        s.kill();
    }
    let store = Store::open(&world.database_url())
        .await
        .map_err(|e| e.to_string())?;
    let durable = store.delivery_count().await.map_err(|e| e.to_string())?;
    store.close().await;

    // Open loop on a fresh service.
    world.start_service().await;
    let url = format!("http://127.0.0.1:{}/webhook", world.port);
    let (latencies, open_ok) = open_loop(&client, &url, open_batch, OPEN_RATE).await;
    let (_, peak_open) = world.process().map(|s| s.memory_kib()).unwrap_or_default();
    world.shutdown().await;

    let service = Load::of_rounds(&rounds, latencies);
    let database = if postgres.is_some() {
        "PostgreSQL store (local server, one replica)".to_string()
    } else {
        format!("SQLite store, STORE_SYNC={sync}")
    };
    // The throughput target is the default store's (SQLite, STORE_SYNC=normal); a
    // commit that waits for an fsync or for another process pays what no HTTP stack does.
    let default_store = postgres.is_none() && sync == "normal";
    Ok(ingress_table(
        &database,
        default_store,
        size,
        total,
        open_n,
        open_ok,
        durable,
        &service,
        &bare,
        (peak_closed, peak_open),
    ))
}

#[allow(clippy::too_many_arguments)]
fn ingress_table(
    database: &str,
    default_store: bool,
    size: usize,
    total: usize,
    open_n: usize,
    open_ok: usize,
    durable: i64,
    service: &Load,
    bare: &Load,
    (peak_closed, peak_open): (u64, u64),
) -> Table {
    let share = service.throughput / bare.throughput.max(f64::MIN_POSITIVE);
    let p99 = service.p(0.99);
    let mut t = Table::new(format!("1. ingress: signed workflow_job deliveries, {database}"));
    t.row("payload size (mean)", format!("{size} bytes"))
        .row(
            "closed loop: deliveries, concurrency",
            format!("{ROUNDS} loops of {total}, 64"),
        )
        .judged(
            "closed loop: accepted (202)",
            service.accepted.to_string(),
            "all",
            service.accepted == ROUNDS * total,
        )
        .row(
            "closed loop: bare server (HTTP + HMAC, no store)",
            format!(
                "{:.0} deliveries/s ({}; {} accepted)",
                bare.throughput,
                range(bare),
                bare.accepted
            ),
        );
    let throughput = format!(
        "{:.0} deliveries/s ({}), {share:.2}",
        service.throughput,
        range(service)
    );
    if default_store {
        t.judged(
            "closed loop: service throughput, share of bare",
            throughput,
            ">= 0.50",
            share >= 0.5,
        );
    } else {
        t.row(
            "closed loop: service throughput, share of bare",
            format!("{throughput} (target: default store only)"),
        );
    }
    t.judged(
        "after SIGKILL: accepted deliveries on disk",
        format!("{durable} of {}", service.accepted),
        "all",
        durable as usize >= service.accepted,
    )
    .judged(
        "open loop: rate, deliveries",
        format!("{OPEN_RATE:.0}/s, {open_n} ({open_ok} accepted)"),
        "all accepted",
        open_ok == open_n,
    )
    .row(
        "open loop: bare server p50 / p99 / max",
        format!("{:.2} / {:.2} / {:.2} ms", bare.p(0.5), bare.p(0.99), bare.p(1.0)),
    )
    .row(
        "open loop: service p50 / p90 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            service.p(0.5),
            service.p(0.9),
            service.p(1.0)
        ),
    )
    .judged(
        "open loop: service p99 (bare's p99 beside)",
        format!("{p99:.2} ms ({:.2} ms)", bare.p(0.99)),
        "<= 5 ms",
        p99 <= 5.0,
    )
    .row(
        "peak RSS (closed loop / open loop)",
        format!(
            "{:.1} / {:.1} MiB",
            peak_closed as f64 / 1024.0,
            peak_open as f64 / 1024.0
        ),
    );
    t
}

/// The median's companions: "median of 3: LOW–HIGH".
fn range(load: &Load) -> String {
    let (low, high) = load.throughput_range;
    format!("median of {ROUNDS}: {low:.0}–{high:.0}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- 2. and 3. bursts ----

struct BurstResult {
    last_sandbox: Duration,
    /// For each job: from the answer to its `queued` webhook to its first registration
    /// request, sorted.
    queued_to_registration: Vec<Duration>,
    /// The same for the first round: the first `CONCURRENCY` jobs whose webhooks were
    /// answered, which find a registration slot free; sorted.
    first_round: Vec<Duration>,
    first_registration: Option<SystemTime>,
    last_registration: Option<SystemTime>,
    registrations: usize,
    sandboxes: usize,
    github_limit_errors: u64,
    modal_limit_errors: u64,
}

async fn burst(jobs: usize, config: WorldConfig) -> Result<BurstResult, String> {
    let world = world::start(config).await?;
    let started = Instant::now();
    let specs = (0..jobs)
        .map(|i| {
            JobSpec::new(format!("job ({i})"), ["self-hosted", "modal"]).duration(Duration::from_secs(600))
        })
        .collect();
    world.github.queue_run(RunSpec::new(REPO, specs));
    let deadline = started + Duration::from_secs(1800);
    let mut last_sandbox = None;
    while Instant::now() < deadline {
        if world.fake_modal().sandboxes().len() >= jobs {
            last_sandbox = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(last_sandbox) = last_sandbox else {
        let tail = world.tail_logs(20);
        return Err(format!(
            "only {} of {jobs} sandboxes were created in 30 min:\n{tail}",
            world.fake_modal().sandboxes().len()
        ));
    };
    let registrations: Vec<SystemTime> = world
        .github
        .calls()
        .into_iter()
        .filter(|c| c.route == fake_gh::Route::GenerateJitConfig && c.status == 201)
        .map(|c| c.at)
        .collect();
    let latencies = queued_to_registration(&world);
    let result = BurstResult {
        queued_to_registration: sorted(latencies.iter().map(|(_, d)| *d).collect()),
        first_round: sorted(latencies.iter().take(CONCURRENCY).map(|(_, d)| *d).collect()),
        last_sandbox,
        first_registration: registrations.iter().min().copied(),
        last_registration: registrations.iter().max().copied(),
        registrations: registrations.len(),
        sandboxes: world.fake_modal().sandboxes().len(),
        github_limit_errors: world.github.rate_limit_errors(),
        modal_limit_errors: world.fake_modal().rate_limit_errors(),
    };
    world.shutdown().await;
    Ok(result)
}

/// For each job, when the service answered its `queued` webhook and how long after that it
/// sent its first registration request; in the order the webhooks were answered.
fn queued_to_registration(world: &testkit::World) -> Vec<(SystemTime, Duration)> {
    let answered: std::collections::HashMap<u64, SystemTime> = world
        .github
        .deliveries()
        .into_iter()
        .filter(|d| d.action.as_deref() == Some("queued") && d.status_code.is_some())
        .filter_map(|d| Some((d.job_id?, d.delivered_at + d.duration)))
        .collect();
    let mut first: std::collections::HashMap<u64, SystemTime> = std::collections::HashMap::new();
    for call in world.github.calls() {
        let name = call
            .body
            .as_ref()
            .and_then(|b| b["name"].as_str().map(str::to_string));
        let job = name.and_then(|n| n.split('-').nth(1).and_then(|j| j.parse::<u64>().ok()));
        if call.route == fake_gh::Route::GenerateJitConfig
            && let Some(job) = job
        {
            let at = first.entry(job).or_insert(call.at);
            *at = (*at).min(call.at);
        }
    }
    let mut out: Vec<(SystemTime, Duration)> = first
        .iter()
        .filter_map(|(job, at)| {
            let answer = *answered.get(job)?;
            Some((answer, at.duration_since(answer).ok()?))
        })
        .collect();
    out.sort();
    out
}

fn sorted(mut durations: Vec<Duration>) -> Vec<Duration> {
    durations.sort();
    durations
}

/// The `p` quantile of sorted durations.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

const JIT_LATENCY: Duration = Duration::from_millis(300);
const CREATE_LATENCY: Duration = Duration::from_secs(1);
/// `REGISTRATION_CONCURRENCY` (the default) and `SANDBOX_CREATE_CONCURRENCY` (the default).
const CONCURRENCY: usize = 32;
const CREATE_CONCURRENCY: usize = 256;

fn latency_bound_world(jobs: usize) -> WorldConfig {
    WorldConfig {
        jit_latency: JIT_LATENCY,
        create_latency: CREATE_LATENCY,
        github_limits: false,
        modal_rate: None,
        run_runners: false,
        service_env: vec![
            ("MAX_RUNNERS".into(), (jobs + 100).to_string()),
            ("REGISTRATION_CONCURRENCY".into(), CONCURRENCY.to_string()),
            (
                "SANDBOX_CREATE_CONCURRENCY".into(),
                CREATE_CONCURRENCY.to_string(),
            ),
        ],
        echo_logs: false,
        scale_set: false,
    }
}

/// Single jobs sent to an idle service, one at a time.
const IDLE_TRIALS: usize = 20;

/// For `trials` jobs, each queued alone once the service has been idle for a while (its
/// loops asleep), the time from the answer to the job's webhook to its registration request,
/// sorted: the first round's start, with nothing to coalesce.
async fn idle_first_registrations(trials: usize) -> Result<Vec<Duration>, String> {
    let world = world::start(latency_bound_world(trials)).await?;
    for i in 0..trials {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let spec =
            JobSpec::new(format!("alone ({i})"), ["self-hosted", "modal"]).duration(Duration::from_secs(600));
        world.github.queue_run(RunSpec::new(REPO, vec![spec]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while world.fake_modal().sandboxes().len() <= i {
            if Instant::now() > deadline {
                return Err(format!("job {i} got no sandbox in 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let latencies = sorted(queued_to_registration(&world).iter().map(|(_, d)| *d).collect());
    world.shutdown().await;
    if latencies.len() < trials {
        return Err(format!(
            "{} of {trials} single jobs were measured",
            latencies.len()
        ));
    }
    Ok(latencies)
}

/// The lower bound of a burst served by a registration stage and a creation stage: the last
/// registration ends after ceil(jobs / 32) rounds of 0.3 s, and creations can go no faster
/// than their slots allow; then the last sandbox takes one creation (1 s).
fn pipeline_bound(jobs: usize) -> f64 {
    let registering = jobs.div_ceil(CONCURRENCY) as f64 * JIT_LATENCY.as_secs_f64();
    let creating = jobs as f64 * CREATE_LATENCY.as_secs_f64() / CREATE_CONCURRENCY as f64;
    registering.max(creating)
}

async fn burst_latency(quick: bool) -> Result<Table, String> {
    let jobs = if quick { 100 } else { 500 };
    let r = burst(jobs, latency_bound_world(jobs)).await?;
    let small = burst(50, latency_bound_world(50)).await?;
    let bound = pipeline_bound(jobs);
    let target = 1.15 * bound + CREATE_LATENCY.as_secs_f64();
    let last = r.last_sandbox.as_secs_f64();
    // Before the pipeline a runner held one of 32 slots through registration and creation.
    let one_stage = jobs.div_ceil(CONCURRENCY) as f64 * (JIT_LATENCY + CREATE_LATENCY).as_secs_f64();
    let first_round = quantile(&small.first_round, 0.99);
    let idle = idle_first_registrations(IDLE_TRIALS).await?;
    let idle_p99 = quantile(&idle, 0.99);
    let mut t = Table::new(
        "2. burst, latency-bound: limits off, JIT 300 ms, create 1 s, 32 registration and 256 creation slots",
    );
    t.row("jobs queued at once", jobs.to_string())
        .row("time to the last sandbox", format!("{last:.2} s"))
        .row(
            "bound: max(ceil(jobs/32) x 0.3 s, jobs x 1 s / 256)",
            format!("{bound:.2} s"),
        )
        .judged(
            "last sandbox within 1.15 x bound + 1 s",
            format!("{last:.2} s of {target:.2} s"),
            "<= 1.15 x bound + 1 s",
            last <= target,
        )
        .row(
            "one-stage bound (32 slots held through both steps)",
            format!("{one_stage:.2} s"),
        )
        .judged(
            "registrations / sandboxes",
            format!("{} / {}", r.registrations, r.sandboxes),
            "one each per job",
            r.registrations == jobs && r.sandboxes == jobs,
        )
        .row(
            "50 jobs: first webhook to last sandbox",
            format!("{:.2} s", small.last_sandbox.as_secs_f64()),
        )
        .row(
            "50 jobs: queued answer to registration request, p50 / p99",
            format!(
                "{:.1} / {:.1} ms",
                ms(quantile(&small.queued_to_registration, 0.5)),
                ms(quantile(&small.queued_to_registration, 0.99))
            ),
        )
        .row(
            "50 jobs, the first 32 answered: answer to registration request, p99",
            format!("{:.1} ms", ms(first_round)),
        )
        .judged(
            &format!("idle service, {IDLE_TRIALS} single jobs: answer to registration request, p50 / p99"),
            format!("{:.1} / {:.1} ms", ms(quantile(&idle, 0.5)), ms(idle_p99)),
            "p99 <= 50 ms",
            idle_p99 <= Duration::from_millis(50),
        );
    Ok(t)
}

/// 500 jobs against GitHub's limits and Modal's creation rate `modal_rate` (5/s by
/// default, 40/s on some workspaces).
async fn burst_limits(quick: bool, modal_rate: f64) -> Result<Table, String> {
    let jobs = if quick { 100 } else { 500 };
    let config = WorldConfig {
        jit_latency: JIT_LATENCY,
        create_latency: CREATE_LATENCY,
        github_limits: true,
        modal_rate: Some(modal_rate),
        run_runners: false,
        service_env: vec![("MAX_RUNNERS".into(), (jobs + 100).to_string())],
        echo_logs: false,
        scale_set: false,
    };
    let r = burst(jobs, config).await?;
    let span = match (r.first_registration, r.last_registration) {
        (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default().as_secs_f64(),
        _ => 0.0,
    };
    // GitHub: 900 points/min per endpoint at 5 per POST = 3 registrations/s; every sandbox
    // needs a registration, so the lower of that and Modal's rate binds both.
    let binding = f64::min(3.0, modal_rate);
    let reg_rate = if span > 0.0 {
        (r.registrations.saturating_sub(1)) as f64 / span
    } else {
        0.0
    };
    let create_rate = r.sandboxes as f64 / r.last_sandbox.as_secs_f64();
    let mut t = Table::new(format!(
        "3. burst, limit-bound: GitHub 100 concurrent + 900 points/min/endpoint, Modal {modal_rate:.0} creates/s"
    ));
    t.row("jobs queued at once", jobs.to_string()).row(
        "binding limit",
        format!("{binding:.2}/s (GitHub: 180 registrations/min; Modal allows {modal_rate:.0}/s)"),
    );
    if quick {
        t.row(
            "quick sizes",
            "100 jobs fit in one minute's allowance: no limit binds",
        );
    }
    t.judged(
        "registrations per second (first to last)",
        format!("{reg_rate:.2}/s = {:.3} of it", reg_rate / binding),
        ">= 0.95 of the limit",
        reg_rate / binding >= 0.95,
    )
    .judged(
        "sandboxes per second (queue to last)",
        format!("{create_rate:.2}/s = {:.3} of it", create_rate / binding),
        ">= 0.95 of the limit",
        create_rate / binding >= 0.95,
    )
    .row(
        "time to the last sandbox",
        format!("{:.1} s", r.last_sandbox.as_secs_f64()),
    )
    .judged(
        "rate-limit errors answered: GitHub / Modal",
        format!("{} / {}", r.github_limit_errors, r.modal_limit_errors),
        "0 / 0",
        r.github_limit_errors == 0 && r.modal_limit_errors == 0,
    );
    Ok(t)
}

// ---- 4. footprint ----

async fn footprint(quick: bool) -> Result<Table, String> {
    let stored = 10_000;
    let mut world = world::start(WorldConfig {
        run_runners: false,
        ..WorldConfig::default()
    })
    .await?;
    if let Some(s) = world.take_process() {
        s.stop().await;
    }
    let store = Store::open(&format!(
        "sqlite://{}",
        world.dir.path().join("store.db").display()
    ))
    .await
    .map_err(|e| e.to_string())?;
    let repo = RepoName::parse(REPO).map_err(|e| e.to_string())?;
    let mut tasks = Vec::with_capacity(stored);
    for i in 0..stored as u64 {
        let store = store.clone();
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let event = JobEvent {
                action: "completed".into(),
                status: JobStatus::Completed,
                job_id: JobId(fake_gh::JOB_ID_BASE + 5_000_000 + i),
                run_id: 8_000_000_000 + i / 20,
                run_attempt: 1,
                name: format!("test ({})", i % 20),
                workflow_name: Some("CI".into()),
                head_sha: None,
                conclusion: Some("success".into()),
                labels: LabelSet::new(["self-hosted", "modal"]),
                runner_name: Some(format!("modal-{i}-1")),
                repo,
                queued_for: None,
            };
            store
                .record(Some(format!("footprint-{i}")), event, EventSource::Webhook)
                .await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    store.close().await;

    world.start_service().await;
    let ready = world.start_time;
    let service = world.process().ok_or("no service")?;
    let settle = Duration::from_secs(2);
    tokio::time::sleep(settle).await;
    let window = if quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(20)
    };
    let cpu_before = service.cpu_time();
    let wall = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = service.cpu_time().saturating_sub(cpu_before);
    let (rss, peak) = service.memory_kib();
    let share = cpu.as_secs_f64() / wall.elapsed().as_secs_f64() * 100.0;
    world.shutdown().await;
    let mut t = Table::new("4. footprint: idle service, 10,000 completed jobs in the store");
    t.row(
        "start to ready (exec to /readyz 200)",
        format!("{:.0} ms", ready.as_secs_f64() * 1000.0),
    )
    .row(
        "RSS idle / peak",
        format!("{:.1} / {:.1} MiB", rss as f64 / 1024.0, peak as f64 / 1024.0),
    )
    .row(
        "CPU while idle",
        format!(
            "{share:.2} % of one core ({} ms over {} s)",
            cpu.as_millis(),
            window.as_secs()
        ),
    );
    Ok(t)
}

// ---- 7. job sources ----

/// Seconds from a burst being queued at the fake GitHub to each registration request, sorted.
async fn registration_delays(jobs: usize, scale_set: bool) -> Result<Vec<Duration>, String> {
    let mut config = latency_bound_world(jobs);
    config.scale_set = scale_set;
    let world = world::start(config).await?;
    let queued = SystemTime::now();
    let specs = (0..jobs)
        .map(|i| {
            JobSpec::new(format!("job ({i})"), ["self-hosted", "modal"]).duration(Duration::from_secs(600))
        })
        .collect();
    world.github.queue_run(RunSpec::new(REPO, specs));
    let registered = |w: &testkit::World| -> Vec<SystemTime> {
        if scale_set {
            w.github
                .scale_set_jit_requests()
                .into_iter()
                .map(|(_, at)| at)
                .collect()
        } else {
            let calls = w.github.calls().into_iter();
            calls
                .filter(|c| c.route == fake_gh::Route::GenerateJitConfig)
                .map(|c| c.at)
                .collect()
        }
    };
    let done = world
        .github
        .wait_until(Duration::from_secs(300), |_| registered(&world).len() >= jobs)
        .await;
    if !done {
        let tail = world.tail_logs(20);
        world.shutdown().await;
        return Err(format!("fewer than {jobs} registrations in 5 min:\n{tail}"));
    }
    let mut delays: Vec<Duration> = registered(&world)
        .into_iter()
        .filter_map(|at| at.duration_since(queued).ok())
        .collect();
    delays.sort();
    delays.truncate(jobs);
    world.shutdown().await;
    Ok(delays)
}

async fn job_sources() -> Result<Table, String> {
    let jobs = 100;
    let webhook = registration_delays(jobs, false).await?;
    let scale_set = registration_delays(jobs, true).await?;
    let pair = |d: &[Duration]| format!("{:.0} / {:.0} ms", ms(quantile(d, 0.5)), ms(quantile(d, 0.99)));
    let mut t = Table::new(
        "7. job sources: 100-job burst, limits off, JIT 300 ms, 32 registration slots; from the jobs being queued to each registration request",
    );
    t.row(
        "webhook: queued → registration request, p50 / p99",
        pair(&webhook),
    )
    .row(
        "scale set: queued → registration request, p50 / p99",
        pair(&scale_set),
    )
    .judged(
        "scale set p99 within webhook p99 + 1 s (one long-poll round trip and an acquire)",
        format!("{:.0} ms", ms(quantile(&scale_set, 0.99))),
        "<= webhook + 1000 ms",
        quantile(&scale_set, 0.99) <= quantile(&webhook, 0.99) + Duration::from_secs(1),
    );
    Ok(t)
}
