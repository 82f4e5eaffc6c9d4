//! `modal-github-runner simulate`: the whole loop with no credentials. Jobs arrive at the
//! fake GitHub, which sends signed webhooks to the real service; the service registers JIT
//! runners and creates sandboxes on the fake Modal, where fake runners take the jobs, run
//! them and exit. Progress is printed every second, then a summary.

use std::time::{Duration, Instant};

use clap::Args;

use testkit::World;

use crate::world::{self, REPO, WorldConfig};
use fakes::github::{JobSpec, RunSpec};

/// Simulator options.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// How many jobs to run.
    #[arg(long, default_value_t = 20)]
    pub jobs: usize,
    /// `burst` (all at once, as one matrix run) or `rate:N` (N jobs per second).
    #[arg(long, default_value = "burst")]
    pub arrival: String,
    /// How long each job runs, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub job_secs: f64,
    /// Jobs are spread over this many label sets (`modal`, `modal,gpu-1`, ...).
    #[arg(long, default_value_t = 2)]
    pub label_sets: usize,
    /// Latency of GitHub's generate-jitconfig.
    #[arg(long, default_value_t = 300)]
    pub jit_latency_ms: u64,
    /// Latency of Modal's SandboxCreate.
    #[arg(long, default_value_t = 1000)]
    pub create_latency_ms: u64,
    /// Turn off GitHub's secondary limits (100 concurrent, 900 points/min/endpoint).
    #[arg(long)]
    pub no_github_limits: bool,
    /// Modal's sandbox creations per second (0 = unlimited).
    #[arg(long, default_value_t = 5.0)]
    pub modal_rate: f64,
    /// The service's MAX_RUNNERS.
    #[arg(long, default_value_t = 50)]
    pub max_runners: usize,
    /// Print the service's logs.
    #[arg(long)]
    pub verbose: bool,
    /// Where jobs come from: `webhook`, or `scaleset` (a runner scale set's message queue
    /// at the fake Actions service; at most 8 label sets).
    #[arg(long, value_enum, default_value = "webhook")]
    pub job_source: modal_github_runner::config::JobSourceKind,
}

/// How jobs arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    Burst,
    Rate(f64),
}

impl Arrival {
    pub fn parse(s: &str) -> Result<Arrival, String> {
        match s.trim() {
            "burst" => Ok(Arrival::Burst),
            other => other
                .strip_prefix("rate:")
                .and_then(|r| r.parse::<f64>().ok())
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(Arrival::Rate)
                .ok_or_else(|| format!("`{s}` is not `burst` or `rate:N`")),
        }
    }
}

/// The label set of job `i`.
pub fn labels_for(i: usize, sets: usize) -> Vec<String> {
    let mut labels = vec!["self-hosted".to_string(), "modal".to_string()];
    let set = i % sets.max(1);
    if set > 0 {
        labels.push(format!("pool-{set}"));
    }
    labels
}

pub async fn run(args: SimulateArgs) -> Result<(), String> {
    let arrival = Arrival::parse(&args.arrival)?;
    let config = WorldConfig {
        jit_latency: Duration::from_millis(args.jit_latency_ms),
        create_latency: Duration::from_millis(args.create_latency_ms),
        github_limits: !args.no_github_limits,
        modal_rate: (args.modal_rate > 0.0).then_some(args.modal_rate),
        run_runners: true,
        service_env: vec![("MAX_RUNNERS".into(), args.max_runners.to_string())],
        echo_logs: args.verbose,
        scale_set: args.job_source == modal_github_runner::config::JobSourceKind::Scaleset,
    };
    println!("starting the fake GitHub, the fake Modal and the service...");
    let world = world::start(config)
        .await
        .map_err(|e| format!("could not start the simulation: {e}"))?;
    println!(
        "service ready in {} ms; queueing {} jobs ({:?}), {} s each",
        world.start_time.as_millis(),
        args.jobs,
        arrival,
        args.job_secs
    );
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.job_secs.max(0.0));
    let job = |i: usize| JobSpec::new(format!("job {i}"), labels_for(i, args.label_sets)).duration(duration);
    let mut queued = 0;
    if arrival == Arrival::Burst {
        world
            .github
            .queue_run(RunSpec::new(REPO, (0..args.jobs).map(job).collect()));
        queued = args.jobs;
    }
    let deadline =
        started + Duration::from_secs(600) + duration * u32::try_from(args.jobs).unwrap_or(u32::MAX);
    let mut next_print = started;
    loop {
        if let Arrival::Rate(rate) = arrival {
            while queued < args.jobs && started.elapsed().as_secs_f64() * rate >= queued as f64 {
                world.github.queue_run(RunSpec::new(REPO, vec![job(queued)]));
                queued += 1;
            }
        }
        if Instant::now() >= next_print {
            print_progress(&world, started);
            next_print += Duration::from_secs(1);
        }
        let jobs = world.github.jobs();
        if queued == args.jobs
            && jobs.len() == args.jobs
            && jobs.iter().all(|j| j.status.as_str() == "completed")
        {
            break;
        }
        if Instant::now() > deadline {
            return Err("the simulation did not finish in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    // Let the reaper finish, then check that nothing is left anywhere: registrations,
    // sandboxes, runner processes, live runners in the store.
    let left = world.wait_nothing_left(Duration::from_secs(30)).await;
    print_summary(&world, &args, arrival, total, &left);
    world.shutdown().await;
    left.map_err(|what| format!("left behind: {what}"))
}

fn print_progress(world: &World, started: Instant) {
    let jobs = world.github.jobs();
    let count = |s: &str| jobs.iter().filter(|j| j.status.as_str() == s).count();
    println!(
        "t={:>5.1}s  jobs: queued {:>4} running {:>4} done {:>4} | registered runners {:>4} | sandboxes running {:>4} | rate-limit errors: GitHub {} Modal {}",
        started.elapsed().as_secs_f64(),
        count("queued") + count("waiting"),
        count("in_progress"),
        count("completed"),
        world.github.runners().len(),
        world.fake_modal().running_count(),
        world.github.rate_limit_errors(),
        world.fake_modal().rate_limit_errors(),
    );
}

fn print_summary(
    world: &World,
    args: &SimulateArgs,
    arrival: Arrival,
    total: Duration,
    left: &Result<(), String>,
) {
    let jobs = world.github.jobs();
    let mut waits: Vec<f64> = jobs
        .iter()
        .map(|j| {
            j.started_at
                .duration_since(j.created_at)
                .unwrap_or_default()
                .as_secs_f64()
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let succeeded = jobs
        .iter()
        .filter(|j| j.conclusion.as_deref() == Some("success"))
        .count();
    println!("\nsummary");
    println!("  jobs completed          {succeeded}/{}", jobs.len());
    println!("  wall time               {:.1} s", total.as_secs_f64());
    println!(
        "  queue -> start (p50/p95/max)  {:.2} / {:.2} / {:.2} s",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    println!(
        "  runners registered      {}",
        world.github.registrations_ever().len()
    );
    println!(
        "  sandboxes created       {} (peak running {})",
        world.fake_modal().sandboxes().len(),
        world.fake_modal().peak_running()
    );
    println!("  image builds            {}", world.fake_modal().image_builds());
    println!(
        "  rate-limit errors       GitHub {} / Modal {}",
        world.github.rate_limit_errors(),
        world.fake_modal().rate_limit_errors()
    );
    println!("  the load vs the limits  {}", load_vs_limits(args, arrival));
    match left {
        Ok(()) => println!("  left behind             nothing (registrations, sandboxes, processes, store)"),
        Err(what) => println!("  left behind             {what}"),
    }
}

/// Whether this load could reach GitHub's and Modal's limits at all: zero rate-limit
/// errors mean something only when it could.
fn load_vs_limits(args: &SimulateArgs, arrival: Arrival) -> String {
    // Demand per second for runners: everything at once, or the arrival rate.
    let (github_demand, modal_demand) = match arrival {
        Arrival::Burst => (args.jobs as f64, args.jobs as f64),
        Arrival::Rate(r) => (r * 60.0, r),
    };
    let github = if args.no_github_limits {
        "GitHub limits off".to_string()
    } else {
        format!(
            "GitHub allows 180 registrations a minute, the load asks {github_demand:.0} ({})",
            reach(github_demand > 180.0)
        )
    };
    let modal = if args.modal_rate > 0.0 {
        format!(
            "Modal allows {} creates a second, the load asks {modal_demand:.0} ({})",
            args.modal_rate,
            reach(modal_demand > args.modal_rate)
        )
    } else {
        "Modal's rate off".to_string()
    };
    format!("{github}; {modal}")
}

fn reach(can: bool) -> &'static str {
    if can {
        "it would hit the limit unpaced"
    } else {
        "it cannot reach the limit"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_patterns_parse() {
        assert_eq!(Arrival::parse("burst"), Ok(Arrival::Burst));
        assert_eq!(Arrival::parse("rate:2.5"), Ok(Arrival::Rate(2.5)));
        assert!(Arrival::parse("rate:0").is_err());
        assert!(Arrival::parse("poisson").is_err());
    }

    #[test]
    fn jobs_spread_over_label_sets() {
        assert_eq!(labels_for(0, 3), ["self-hosted", "modal"]);
        assert_eq!(labels_for(4, 3), ["self-hosted", "modal", "pool-1"]);
        assert_eq!(labels_for(5, 1), ["self-hosted", "modal"]);
    }
}
