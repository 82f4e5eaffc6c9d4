//! The simulator's and the benchmarks' world: testkit's, with the service as a child
//! process of this binary and this binary as the fake runner.

use std::time::Duration;

use fakes::github::Limits;
use testkit::{Kind, Options, World};

/// The repository every simulated job belongs to.
pub const REPO: &str = "octo/sim";

/// The extra labels of the simulator's scale set: those `simulate::labels_for` gives jobs.
const SCALE_SET_LABELS: &str = "self-hosted,pool-1,pool-2,pool-3,pool-4,pool-5,pool-6,pool-7";

/// How the world behaves.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// Latency of `generate-jitconfig` (GitHub: a few hundred ms).
    pub jit_latency: Duration,
    /// Latency of `SandboxCreate`.
    pub create_latency: Duration,
    /// GitHub's secondary limits: 100 concurrent requests, 900 points a minute per endpoint.
    pub github_limits: bool,
    /// Modal's sandbox creation limit per second (`None`: unlimited).
    pub modal_rate: Option<f64>,
    /// Whether sandboxes run the fake runner (jobs complete) or sit idle (provisioning only).
    pub run_runners: bool,
    /// Extra environment for the service (flags, limits).
    pub service_env: Vec<(String, String)>,
    /// Print the service's log lines.
    pub echo_logs: bool,
    /// Take jobs from a runner scale set (`JOB_SOURCE=scaleset`) instead of webhooks.
    pub scale_set: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            jit_latency: Duration::from_millis(300),
            create_latency: Duration::from_secs(1),
            github_limits: true,
            modal_rate: Some(5.0),
            run_runners: true,
            service_env: Vec::new(),
            echo_logs: false,
            scale_set: false,
        }
    }
}

/// Starts the fakes and the service (`sim serve`) between them.
pub async fn start(config: WorldConfig) -> Result<World, String> {
    let mut world = prepare(config).await?;
    world.start_service().await;
    Ok(world)
}

/// The fakes, without the service yet (`World::start_service` starts it): for a world the
/// benchmark sets up first.
pub async fn prepare(config: WorldConfig) -> Result<World, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this binary: {e}"))?
        .to_string_lossy()
        .into_owned();
    let limits = if config.github_limits {
        Limits {
            max_concurrent: Some(100),
            points_per_minute_per_endpoint: Some(900),
            core_per_hour: 15_000,
        }
    } else {
        Limits {
            core_per_hour: 1_000_000,
            ..Limits::default()
        }
    };
    let mut options = Options {
        kind: Kind::Modal,
        repo: REPO.into(),
        jit_latency: Some(config.jit_latency),
        github_limits: Some(limits),
        modal_rate: config.modal_rate,
        create_latency: Some(config.create_latency),
        image_build_time: Some(Duration::from_millis(200)),
        run_runners: config.run_runners,
        echo_logs: config.echo_logs,
        runner_command: Some(vec![exe.clone(), "fake-runner".into()]),
        ..Options::default()
    }
    .process(vec![exe, "serve".into()]);
    let env = [
        (
            "GITHUB_JIT_LIMIT_PER_MIN",
            if config.github_limits { "180" } else { "0" },
        ),
        ("ALLOWED_REPOS", REPO),
        ("RUST_LOG", if config.echo_logs { "info" } else { "warn" }),
        ("REAP_INTERVAL_SECS", "1"),
        ("RUNNER_EXIT_GRACE_SECS", "10"),
        ("GITHUB_TIMEOUT_SECS", "30"),
    ];
    for (k, v) in env {
        options = options.with(k, v);
    }
    if config.scale_set {
        // The organisation's scale set `modal`, carrying every label the simulator's jobs use.
        for (k, v) in [
            ("JOB_SOURCE", "scaleset"),
            ("RUNNER_SCOPE", "org"),
            ("SCALE_SET_LABELS", SCALE_SET_LABELS),
        ] {
            options = options.with(k, v);
        }
    }
    options.env.extend(config.service_env);
    let world = World::prepare(options).await;
    if config.scale_set {
        world.github.clear_webhook();
    }
    Ok(world)
}
