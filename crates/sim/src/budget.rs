//! `sim bench api-budget`: what the service costs against GitHub's primary rate limit
//! (BENCHMARKS.md §5). One service, 100 allowed repositories, a 2 s reconcile interval:
//!
//! 1. idle: counted REST calls per repository per pass (a 304 is not counted, as on GitHub);
//! 2. jobs: runs queued in some of those repositories, run to completion; every counted
//!    call from the first queueing until the listings have settled, per job;
//! 3. a model of an organisation of 1,000 repositories running 10,000 jobs a day at the
//!    default 60 s interval, from the two measured costs, as a share of 5,000 calls an hour.
//!
//! "Counted" is the fake GitHub's primary-budget accounting (`CallRecord::counted`): every
//! admitted call except `304 Not Modified` answers and `/rate_limit`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use fakes::github::{CallRecord, JobSpec, Route, RunSpec};

use crate::report::Table;
use crate::world::{self, WorldConfig};

/// Allowed repositories.
const REPOS: usize = 100;
/// `RECONCILE_INTERVAL_SECS` of the measured service.
const INTERVAL: Duration = Duration::from_secs(2);
/// The modelled organisation.
const ORG_REPOS: f64 = 1_000.0;
const ORG_JOBS_PER_DAY: f64 = 10_000.0;
/// The default `RECONCILE_INTERVAL_SECS`, which the organisation runs with.
const ORG_INTERVAL_SECS: f64 = 60.0;
const TOKEN_BUDGET_PER_HOUR: f64 = 5_000.0;

/// Runs of one size in the jobs phase, each in a repository of its own.
struct Shape {
    runs: usize,
    jobs_per_run: usize,
}

/// The jobs phase: runs of 1, 2, 4 and 8 jobs (3.1 jobs a run on average), every job
/// lasting long enough for polling at 2 s to see it queued, running and completed.
fn shapes(quick: bool) -> Vec<Shape> {
    let n = if quick { 4 } else { 10 };
    [(n, 1), (n, 2), (n, 4), (n / 2, 8)]
        .into_iter()
        .map(|(runs, jobs_per_run)| Shape { runs, jobs_per_run })
        .collect()
}

/// How long each job runs.
const JOB_DURATION: Duration = Duration::from_secs(10);

pub async fn run(quick: bool) -> Result<Table, String> {
    let repos: Vec<String> = (0..REPOS).map(|i| format!("octo/r{i}")).collect();
    let config = WorldConfig {
        github_limits: false,
        modal_rate: None,
        service_env: vec![
            ("ALLOWED_REPOS".into(), repos.join(",")),
            ("RECONCILE_INTERVAL_SECS".into(), INTERVAL.as_secs().to_string()),
            ("MAX_RUNNERS".into(), "200".into()),
        ],
        ..WorldConfig::default()
    };
    let mut world = world::prepare(config).await?;
    for repo in &repos {
        world.github.add_repo(repo);
    }
    let started = SystemTime::now();
    world.start_service().await;

    // The first pass reads every listing whole; from the second on they are conditional.
    tokio::time::sleep(3 * INTERVAL).await;
    let start_up = calls_since(&world.github.calls(), started);
    let start_up_counted = start_up.iter().filter(|c| c.counted).count();
    let window = if quick {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(60)
    };
    let idle_from = SystemTime::now();
    tokio::time::sleep(window).await;
    let idle_calls = calls_since(&world.github.calls(), idle_from);
    let passes = window.as_secs_f64() / INTERVAL.as_secs_f64();
    let idle_counted = idle_calls.iter().filter(|c| c.counted).count();
    let idle_per_repo_pass = idle_counted as f64 / (REPOS as f64 * passes);
    let idle_requests_per_repo_pass = idle_calls.len() as f64 / (REPOS as f64 * passes);

    let shapes = shapes(quick);
    let phase = jobs_phase(&world, &repos, &shapes).await;
    world.shutdown().await;
    let phase = phase?;
    let counted: Vec<&CallRecord> = phase.calls.iter().filter(|c| c.counted).collect();
    let jobs: usize = shapes.iter().map(|s| s.runs * s.jobs_per_run).sum();
    let per_job = counted.len() as f64 / jobs as f64;

    // The organisation: every repository idle-polled at the measured cost each pass, and
    // every job costing what a job of the mix cost here (measured at 2 s, where polling
    // sees every change of a job; at 60 s it sees fewer, so this overstates).
    let passes_per_hour = 3600.0 / ORG_INTERVAL_SECS;
    let idle_per_hour = ORG_REPOS * passes_per_hour * idle_per_repo_pass;
    let jobs_per_hour = ORG_JOBS_PER_DAY / 24.0;
    let org_per_hour = idle_per_hour + jobs_per_hour * per_job;
    let share = org_per_hour / TOKEN_BUDGET_PER_HOUR;

    let mut t = Table::new(format!(
        "5. API budget: {REPOS} allowed repositories, RECONCILE_INTERVAL_SECS={}",
        INTERVAL.as_secs()
    ));
    t.row(
        "start-up: counted calls per repository",
        format!(
            "{:.2} (the first pass reads whole)",
            start_up_counted as f64 / REPOS as f64
        ),
    )
    .row(
        "idle: window, passes",
        format!("{} s, {passes:.0}", window.as_secs()),
    )
    .row(
        "idle: requests per repository per pass",
        format!(
            "{idle_requests_per_repo_pass:.2} ({} of {} answered 304)",
            idle_calls.iter().filter(|c| c.status == 304).count(),
            idle_calls.len()
        ),
    )
    .judged(
        "idle: counted calls per repository per pass",
        format!("{idle_per_repo_pass:.4} ({idle_counted} calls)"),
        "<= 0.05",
        idle_per_repo_pass <= 0.05,
    )
    .row(
        "jobs: runs of 1/2/4/8 jobs, job duration",
        format!(
            "{} runs, {jobs} jobs, {} s each ({:.0} s to settle)",
            shapes.iter().map(|s| s.runs).sum::<usize>(),
            JOB_DURATION.as_secs(),
            phase.elapsed.as_secs_f64()
        ),
    )
    .row("jobs: counted calls per job, by kind", breakdown(&counted, jobs));
    for (shape, repos) in shapes.iter().zip(&phase.repos_by_shape) {
        let n = counted
            .iter()
            .filter(|c| repos.iter().any(|r| in_repo(c, r)))
            .count();
        t.row(
            &format!("jobs: per job in runs of {}", shape.jobs_per_run),
            format!("{:.2}", n as f64 / (shape.runs * shape.jobs_per_run) as f64),
        );
    }
    t.judged(
        "jobs: counted calls per job, end to end",
        format!("{per_job:.2} ({} calls, {jobs} jobs)", counted.len()),
        "<= 4",
        per_job <= 4.0,
    )
    .row(
        "org model: 1,000 repos, 10,000 jobs/day, 60 s",
        format!(
            "{idle_per_hour:.0} idle + {:.0} jobs = {org_per_hour:.0} calls/h",
            jobs_per_hour * per_job
        ),
    )
    .judged(
        "org model: share of 5,000 calls/h",
        format!("{:.1} %", share * 100.0),
        "< 50 %",
        share < 0.5,
    );
    Ok(t)
}

/// What the jobs phase saw.
struct Phase {
    /// Every call from the first queueing on.
    calls: Vec<CallRecord>,
    /// The repositories of each shape's runs.
    repos_by_shape: Vec<Vec<String>>,
    elapsed: Duration,
}

/// Queues the runs (one repository each), waits for every job to complete, every
/// registration to go and the listings to settle.
async fn jobs_phase(world: &testkit::World, repos: &[String], shapes: &[Shape]) -> Result<Phase, String> {
    let from = SystemTime::now();
    let started = Instant::now();
    let mut free = repos.iter();
    let mut repos_by_shape = Vec::new();
    for shape in shapes {
        let mine: Vec<String> = free.by_ref().take(shape.runs).cloned().collect();
        for repo in &mine {
            let jobs = (0..shape.jobs_per_run)
                .map(|i| JobSpec::new(format!("test ({i})"), ["self-hosted", "modal"]).duration(JOB_DURATION))
                .collect();
            world.github.queue_run(RunSpec::new(repo, jobs));
        }
        repos_by_shape.push(mine);
    }
    let done = world
        .github
        .wait_until(Duration::from_secs(300), |gh| {
            gh.jobs().iter().all(|j| j.status.as_str() == "completed")
        })
        .await;
    if !done {
        return Err(format!(
            "the jobs did not complete in 5 minutes:\n{}",
            world.tail_logs(20)
        ));
    }
    let gone = world
        .github
        .wait_until(Duration::from_secs(60), |gh| gh.runners().is_empty())
        .await;
    if !gone {
        return Err("registrations were left behind".into());
    }
    // Until the reconciler and the sweep have seen the end.
    tokio::time::sleep(3 * INTERVAL).await;
    Ok(Phase {
        calls: calls_since(&world.github.calls(), from),
        repos_by_shape,
        elapsed: started.elapsed(),
    })
}

/// Whether a call was about `repo`.
fn in_repo(call: &CallRecord, repo: &str) -> bool {
    call.path
        .strip_prefix("/repos/")
        .and_then(|rest| rest.strip_prefix(repo))
        .is_some_and(|rest| rest.starts_with('/'))
}

fn calls_since(calls: &[CallRecord], from: SystemTime) -> Vec<CallRecord> {
    calls.iter().filter(|c| c.at >= from).cloned().collect()
}

/// Counted calls per job by kind, largest first.
fn breakdown(counted: &[&CallRecord], jobs: usize) -> String {
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    for c in counted {
        *by_kind.entry(kind(c.route)).or_default() += 1;
    }
    let mut kinds: Vec<(&str, usize)> = by_kind.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {:.2}", *n as f64 / jobs as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind(route: Route) -> &'static str {
    match route {
        Route::GenerateJitConfig => "registration",
        Route::ListRuns => "run listings",
        Route::ListRunJobs => "job listings",
        Route::ListRunners => "runner listings",
        Route::GetRun | Route::GetContents => "max-parallel",
        Route::GetRunner | Route::DeleteRunner => "runner get/delete",
        Route::GetJob => "job lookups",
        _ => "other",
    }
}
