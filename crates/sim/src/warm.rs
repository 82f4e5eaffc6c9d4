//! `sim bench warm-pool` (issue 13 item 3): queued → running p50 of jobs arriving one at a
//! time, without a warm pool (each waits for registration and a sandbox) and with
//! `WARM_POOL=self-hosted+modal=2` (a registered idle runner takes it at once).

use std::time::{Duration, Instant};

use fakes::github::{JobSpec, RunSpec};
use testkit::World;

use crate::report::Table;
use crate::world::{self, REPO, WorldConfig};

/// Queue → start of each measured job, in seconds.
async fn waits(warm: Option<&str>, jobs: usize) -> Result<Vec<f64>, String> {
    let mut env = vec![("MAX_RUNNERS".to_string(), "10".to_string())];
    if let Some(pool) = warm {
        env.push(("WARM_POOL".into(), pool.into()));
    }
    let world = world::start(WorldConfig {
        service_env: env,
        ..WorldConfig::default()
    })
    .await?;
    // The first job opens the pool's reach (the repository); it is not measured.
    let seed = queue(&world, "seed");
    wait_done(&world, &[seed], Duration::from_secs(120)).await?;
    let mut ids = Vec::new();
    for i in 0..jobs {
        if warm.is_some() {
            wait_warm(&world, 2, Duration::from_secs(60)).await?;
        } else {
            // The same spacing as with a pool: jobs never queue behind one another.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let id = queue(&world, &format!("job {i}"));
        wait_done(&world, &[id], Duration::from_secs(120)).await?;
        ids.push(id);
    }
    let mut out: Vec<f64> = ids
        .iter()
        .filter_map(|id| world.github.job(*id))
        .map(|j| {
            j.started_at
                .duration_since(j.created_at)
                .unwrap_or_default()
                .as_secs_f64()
        })
        .collect();
    out.sort_by(f64::total_cmp);
    world.shutdown().await;
    Ok(out)
}

fn queue(world: &World, name: &str) -> u64 {
    let run = world.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new(name, ["self-hosted", "modal"]).duration(Duration::from_millis(500))],
    ));
    run.job_ids[0]
}

async fn wait_done(world: &World, ids: &[u64], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let done = ids.iter().all(|id| {
            world
                .github
                .job(*id)
                .is_some_and(|j| j.status == fakes::github::JobStatus::Completed)
        });
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "jobs {ids:?} did not complete in time:\n{}",
        world.tail_logs(20)
    ))
}

/// Waits for `n` warm runners online and idle at the fake GitHub.
async fn wait_warm(world: &World, n: usize, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let idle = world
            .github
            .runners()
            .into_iter()
            .filter(|r| r.name.starts_with("modal-0-") && r.connected && !r.busy)
            .count();
        if idle >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the warm pool did not fill:\n{}", world.tail_logs(20)))
}

fn p50(sorted: &[f64]) -> f64 {
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

pub async fn run(quick: bool) -> Result<Table, String> {
    let jobs = if quick { 4 } else { 10 };
    let cold = waits(None, jobs).await?;
    let warm = waits(Some("self-hosted+modal=2"), jobs).await?;
    let (cold_p50, warm_p50) = (p50(&cold), p50(&warm));
    let mut t = Table::new(
        "6. warm pool: jobs one at a time, JIT 300 ms, create 1 s; queued -> running without and with WARM_POOL=self-hosted+modal=2",
    );
    t.row("jobs measured (each)", jobs.to_string())
        .row("queued -> running p50, no warm pool", format!("{cold_p50:.2} s"))
        .row(
            "queued -> running p50, warm pool of 2",
            format!("{warm_p50:.2} s"),
        )
        .judged(
            "a warm pool starts the common job faster",
            format!("{warm_p50:.2} s vs {cold_p50:.2} s"),
            "< half of without",
            warm_p50 < cold_p50 / 2.0,
        );
    Ok(t)
}
