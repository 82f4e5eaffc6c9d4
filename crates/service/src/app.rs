//! Assembles the service: binds the listener, opens the store, builds the clients and
//! starts the loops. `main` and the end-to-end tests both go through `Application::build`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, FencedBackend, LocalBackend, ModalBackend};
use crate::clock::Clock;
use crate::config::{BackendSettings, JobSource, Settings};
use crate::github::{GitHub, GitHubConfig};
use crate::ingress::{self, Ingress, ServerContext, ServerLimits, StatusPage, WarnThrottle};
use crate::leader::{self, Fence, Leadership};
use crate::loops::costs::{self, CostContext};
use crate::loops::max_parallel::{self, StrategyContext};
use crate::loops::planner::{self, PlannerContext, SpendCap};
use crate::loops::provisioner::{self, ProvisionerContext};
use crate::loops::reaper::{self, ReaperContext};
use crate::loops::reconciler::{self, ReconcilerContext};
use crate::loops::registry::Registry;
use crate::loops::scaleset_listener::{self, ListenerContext};
use crate::metrics::Metrics;
use crate::pace::Window;
use crate::retry::Backoff;
use crate::runner_release::{self, ReleasePublisher, ReleaseSource};
use crate::scaleset::{ScaleSetClient, ScaleSetClientConfig};
use crate::status::{GitHubHeadroom, Leader, Live, ModalPacing, ScaleSetCounts};
use crate::store::{Backend as StoreBackend, Store, maintenance};
use crate::wake::Wake;

/// The service, built and bound but not yet serving.
pub struct Application {
    /// Taken by the server task when the service starts.
    listener: Option<TcpListener>,
    port: u16,
    settings: Settings,
    store: Store,
    github: GitHub,
    backend: Arc<Backend>,
    /// Publishes the runner release the Modal backend installs, unless it is pinned.
    releases: Option<ReleasePublisher>,
    wake: Arc<Wake>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    /// What the store and every loop read the time from.
    clock: Clock,
    /// Where runners are registered: REST, or the scale set (`JOB_SOURCE`).
    registry: Registry,
    /// The scale-set listener's context (`JOB_SOURCE=scaleset`).
    scale_set_listeners: Vec<Arc<ListenerContext>>,
    /// Whether this replica leads (always on SQLite), and since when.
    leadership: Arc<Leadership>,
}

/// How often the planner re-plans without a wake-up.
const PLAN_INTERVAL: Duration = Duration::from_secs(2);
/// How often unresolved max-parallel lookups are retried.
const STRATEGY_INTERVAL: Duration = Duration::from_secs(2);

impl Application {
    /// Binds the port and opens the store; nothing runs until `run_until_stopped`.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        Application::build_with_clock(settings, Clock::System).await
    }

    /// `build`, with the store and the loops reading the time from `clock` (a test can then
    /// move time past a timeout instead of waiting for it).
    pub async fn build_with_clock(mut settings: Settings, clock: Clock) -> anyhow::Result<Application> {
        let store = Store::open_with_clock(&settings.store.database_url, settings.store.sync, clock.clone())
            .await
            .with_context(|| {
                format!(
                    "could not open the store at {}",
                    crate::store::redacted_url(&settings.store.database_url)
                )
            })?;
        let store_backend = store.backend();
        let metrics = Arc::new(Metrics::new());
        let github = GitHub::new(
            GitHubConfig {
                api_url: settings.github.api_url.clone(),
                credentials: settings.github.credentials.clone(),
                timeout: settings.github.timeout,
                retry: Backoff::new(5, Duration::from_millis(500), Duration::from_secs(30)),
                scope: settings.github.scope.clone(),
                rate_reserve: settings.github.rate_reserve,
            },
            Some(metrics.clone()),
        )
        .context("could not build the GitHub client")?;
        resolve_runner_group(&mut settings, &github).await?;
        let wake = Arc::new(Wake::default());
        let (registry, scale_set_listeners) = job_source(&settings, &github, &store, &wake, &metrics).await?;
        let (backend, releases) = backend(&settings, &github)?;
        let addr = settings.server.bind;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("could not listen on {addr}"))?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .context("the listener has no address")?;
        let leadership = Leadership::new(
            settings.store.replica_id.clone(),
            store_backend,
            clock.now_millis(),
        );
        metrics.set_leader(leadership.replica(), leadership.since_ms());
        Ok(Application {
            listener: Some(listener),
            port,
            settings,
            store,
            github,
            backend: Arc::new(backend),
            releases,
            wake,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            leadership,
            clock,
            registry,
            scale_set_listeners: scale_set_listeners.into_iter().map(Arc::new).collect(),
        })
    }

    /// The bound port (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves webhooks and runs every loop until `shutdown` resolves; then stops accepting,
    /// finishes requests in flight, lets runners being provisioned finish (up to
    /// `SHUTDOWN_GRACE_SECS`) and returns. A restart resumes from the store.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
        let port = self.port();
        self.spawn_server(&mut tasks, stop.clone());
        let releases = self.releases.take();
        self.spawn_loops(&mut tasks, stop.clone(), releases);
        tracing::info!(port, backend = self.backend.name(), "modal-github-runner started");

        let signal = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        });
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let (name, result) = joined.unwrap_or_else(|e| ("task", Err(anyhow::anyhow!("panicked: {e}"))));
            match result {
                Ok(()) => tracing::debug!(task = name, "task stopped"),
                Err(e) => {
                    tracing::error!(
                        task = name,
                        error = crate::telemetry::error_chain(&e),
                        "task failed; shutting down"
                    );
                    first_error.get_or_insert(e.context(format!("{name} failed")));
                    stop.cancel();
                }
            }
        }
        self.store.close().await;
        tracing::info!("modal-github-runner stopped");
        first_error.map_or(Ok(()), Err)
    }

    /// The status page's sources: the store, and what only this process knows.
    fn status_page(&self) -> StatusPage {
        let (github, metrics) = (self.github.clone(), self.metrics.clone());
        let create_rate = match &self.settings.backend {
            BackendSettings::Modal { settings, .. } => settings.create_rate,
            BackendSettings::Local(_) => None,
        };
        let leadership = self.leadership.clone();
        // The planner's own policy: a refused job's line says what the planner decided.
        let machine = self.settings.limits.machine.clone();
        // One budget for a token; one per owner's installation for an App.
        let budgets: Vec<String> = match &self.settings.github.credentials {
            crate::github::Credentials::Token(_) => vec!["token".into()],
            crate::github::Credentials::App(_) => self.settings.webhook.allow.owners().to_vec(),
        };
        StatusPage {
            store: self.store.clone(),
            token: self.settings.server.status_token.clone().map(Arc::new),
            live: Arc::new(move || Live {
                leader: leadership.leader().map(|(replica, since)| Leader {
                    replica,
                    since,
                    token: None,
                    expires: None,
                }),
                github: budgets
                    .iter()
                    .map(|budget| {
                        let rate = github.rate(budget);
                        GitHubHeadroom {
                            budget: budget.clone(),
                            remaining: rate.remaining,
                            limit: rate.limit,
                            reset: rate.reset,
                        }
                    })
                    .collect(),
                modal: Some(ModalPacing {
                    create_rate_per_sec: create_rate,
                    created_since_start: metrics.runners_created(),
                }),
                machine: Some(machine.clone()),
                scale_sets: metrics
                    .scale_set_statistics()
                    .into_iter()
                    .map(|(name, s)| ScaleSetCounts {
                        name,
                        available_jobs: s.total_available_jobs,
                        assigned_jobs: s.total_assigned_jobs,
                        running_jobs: s.total_running_jobs,
                        registered_runners: s.total_registered_runners,
                    })
                    .collect(),
            }),
        }
    }

    fn spawn_server(
        &mut self,
        tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
        stop: CancellationToken,
    ) {
        let webhook = &self.settings.webhook;
        let warnings = Arc::new(WarnThrottle::default());
        let state = Ingress {
            secret: Arc::new(webhook.secret.clone()),
            label: Arc::from(webhook.label.as_str()),
            allow: Arc::new(webhook.allow.clone()),
            store: self.store.clone(),
            wake: self.wake.clone(),
            metrics: self.metrics.clone(),
            max_body_bytes: webhook.max_body_bytes,
            ready: self.ready.clone(),
            allow_public: webhook.allow_public,
            retention: self.settings.store.retention,
            warnings: warnings.clone(),
        };
        let routes = match self.settings.source {
            JobSource::Webhook => ingress::router(state),
            JobSource::ScaleSet(_) => ingress::router_without_webhooks(state),
        };
        let router = routes.merge(ingress::status_router(self.status_page()));
        let limits = ServerLimits {
            header_read_timeout: self.settings.server.header_read_timeout,
            max_connections: self.settings.server.max_connections,
        };
        let ctx = ServerContext {
            metrics: self.metrics.clone(),
            warnings,
        };
        let Some(listener) = self.listener.take() else {
            return;
        };
        // Stops accepting when `stop` fires, then waits for requests in flight.
        tasks.spawn(async move {
            ingress::serve(listener, router, limits, ctx, stop).await;
            ("http", Ok(()))
        });
    }

    /// Store maintenance runs on every replica; on PostgreSQL the lease is kept; the
    /// leader's loops run while this replica leads (always on SQLite).
    fn spawn_loops(
        &self,
        tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
        stop: CancellationToken,
        releases: Option<ReleasePublisher>,
    ) {
        let (store, retention, st) = (self.store.clone(), self.settings.store.retention, stop.clone());
        tasks.spawn(async move {
            maintenance::run(store, retention, st).await;
            ("store maintenance", Ok(()))
        });
        if self.store.backend() == StoreBackend::Postgres {
            // Followers accept webhooks at once; only the leader waits for the backend.
            self.ready.store(true, Ordering::Release);
            let (store, leadership) = (self.store.clone(), self.leadership.clone());
            let (length, st) = (self.settings.store.leader_lease, stop.clone());
            tasks.spawn(async move {
                leader::keep_lease(store, leadership, length, st).await;
                ("leader lease", Ok(()))
            });
        }
        let terms = Terms {
            settings: self.settings.clone(),
            store: self.store.clone(),
            github: self.github.clone(),
            backend: self.backend.clone(),
            wake: self.wake.clone(),
            metrics: self.metrics.clone(),
            ready: self.ready.clone(),
            clock: self.clock.clone(),
            leadership: self.leadership.clone(),
            registry: self.registry.clone(),
            scale_set_listeners: self.scale_set_listeners.clone(),
        };
        tasks.spawn(async move { ("leader loops", terms.run(stop, releases).await) });
    }
}

/// What the leader's loops are built from, once per term of leadership.
struct Terms {
    settings: Settings,
    store: Store,
    github: GitHub,
    backend: Arc<Backend>,
    wake: Arc<Wake>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    clock: Clock,
    leadership: Arc<Leadership>,
    /// Where runners are registered: REST, or the scale set (`JOB_SOURCE`).
    registry: Registry,
    /// The scale-set listeners (`JOB_SOURCE=scaleset`): run by the leader only.
    scale_set_listeners: Vec<Arc<ListenerContext>>,
}

impl Terms {
    /// Runs the leader's loops during every term this replica leads, until `stop`. A term
    /// ends when the lease is lost: its loops are cancelled, and the next term (this
    /// replica leading again) starts them afresh from the store, as a restart does. A
    /// loop that fails ends the service, as before.
    async fn run(
        self,
        stop: CancellationToken,
        mut releases: Option<ReleasePublisher>,
    ) -> anyhow::Result<()> {
        let mut changes = self.leadership.subscribe();
        loop {
            let token = loop {
                if let Some(token) = self.leadership.token() {
                    break token;
                }
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    changed = changes.changed() => if changed.is_err() { return Ok(()) },
                }
            };
            tracing::info!(token, "starting the leader's loops");
            self.metrics
                .set_leader(self.leadership.replica(), self.leadership.since_ms());
            let term = stop.child_token();
            let mut loops = JoinSet::new();
            self.spawn_term(&mut loops, term.clone(), releases.take(), stop.clone());
            let failed = loop {
                tokio::select! {
                    () = stop.cancelled() => break None,
                    _ = changes.changed() => if self.leadership.token() != Some(token) { break None },
                    joined = loops.join_next() => match joined {
                        None => break None,
                        Some(Ok((_, Ok(())))) => {}
                        Some(Ok((name, Err(e)))) => break Some(e.context(format!("{name} failed"))),
                        Some(Err(e)) => break Some(anyhow::anyhow!("a leader loop panicked: {e}")),
                    },
                }
            };
            term.cancel();
            while loops.join_next().await.is_some() {}
            self.metrics.set_leader(self.leadership.replica(), None);
            if let Some(e) = failed {
                return Err(e);
            }
            if stop.is_cancelled() {
                return Ok(());
            }
            tracing::warn!(token, "this replica no longer leads; its loops stopped");
        }
    }

    /// Starts the leader's loops for one term, each stopping at `term`. Their store handle,
    /// GitHub client and backend are fenced by this replica's lease.
    fn spawn_term(
        &self,
        tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
        stop: CancellationToken,
        releases: Option<ReleasePublisher>,
        service_stop: CancellationToken,
    ) {
        let s = &self.settings;
        let fence = Fence::new(self.store.clone(), self.leadership.clone());
        let store = self.store.fenced(self.leadership.clone());
        let github = self.github.fenced(fence.clone());
        let backend = FencedBackend::new(self.backend.clone(), fence);
        let planner = PlannerContext {
            store: store.clone(),
            limits: s.limits.clone(),
            wake: self.wake.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            interval: PLAN_INTERVAL,
            refused: Mutex::default(),
            spend: SpendCap::new(s.costs.max_per_day),
        };
        let strategy = Arc::new(StrategyContext {
            store: store.clone(),
            github: github.clone(),
            wake: self.wake.clone(),
            interval: STRATEGY_INTERVAL,
            concurrency: 8,
        });
        let provisioner = Arc::new(ProvisionerContext {
            store: store.clone(),
            github: github.clone(),
            registry: self.registry.fenced(github.clone()),
            backend: backend.clone(),
            wake: self.wake.clone(),
            metrics: self.metrics.clone(),
            settings: s.provisioner.clone(),
            clock: self.clock.clone(),
            retry: Backoff::new(5, Duration::from_millis(500), Duration::from_secs(30)),
            interval: Duration::from_secs(2),
            paused_until: Mutex::default(),
            registration_slots: Arc::new(Semaphore::new(s.provisioner.registration_concurrency.max(1))),
            create_slots: Arc::new(Semaphore::new(s.provisioner.create_concurrency.max(1))),
            // 95 % of the limit per 61 s: a margin for clocks and in-flight requests.
            jit_window: Window::new(
                s.provisioner
                    .jit_limit_per_min
                    .map_or(0, |n| ((n * 0.95).floor() as usize).max(1)),
                Duration::from_secs(61),
            ),
        });
        let reaper = Arc::new(ReaperContext {
            store: store.clone(),
            github: github.clone(),
            registry: self.registry.fenced(github.clone()),
            backend: backend.clone(),
            wake: self.wake.clone(),
            metrics: self.metrics.clone(),
            settings: s.reaper.clone(),
            clock: self.clock.clone(),
            seen_online: Mutex::default(),
            secrets: s.secret_values(),
        });
        // Costs (issue 13 item 4): the local backend reports none, so only Modal's are sought.
        let costs = (self.backend.name() == "modal").then(|| CostContext {
            store: self.store.clone(),
            backend: self.backend.clone(),
            metrics: self.metrics.clone(),
            settings: s.costs.clone(),
            clock: self.clock.clone(),
            wake: self.wake.clone(),
        });
        let reconciler = Arc::new(ReconcilerContext {
            store: store.clone(),
            github: github.clone(),
            wake: self.wake.clone(),
            settings: s.reconciler.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
        });
        let st = stop.clone();
        if self.scale_set_listeners.is_empty() {
            tasks.spawn(async move {
                reconciler::run(reconciler, st).await;
                ("reconciler", Ok(()))
            });
        }
        // The reconciler polls GitHub's REST jobs by id, which scale-set jobs (keyed by the
        // scale set's own ids) do not have; the message queues replace it. Only the leader
        // holds the scale sets' message sessions.
        for listener in self.scale_set_listeners.clone() {
            let st = stop.clone();
            tasks.spawn(async move {
                scaleset_listener::run(listener, st).await;
                ("scale set listener", Ok(()))
            });
        }
        let (ready, grace) = (self.ready.clone(), s.server.shutdown_grace);
        let st = stop.clone();
        tasks.spawn(async move {
            planner::run(planner, st).await;
            ("planner", Ok(()))
        });
        let st = stop.clone();
        tasks.spawn(async move {
            max_parallel::run(strategy, st).await;
            ("max-parallel lookups", Ok(()))
        });
        // Runners are made and reaped only once the backend is ready (the Modal image is
        // built); webhooks are recorded meanwhile.
        tasks.spawn(async move {
            match tokio::select! {
                r = start_backend(&backend, releases, service_stop) => r,
                () = stop.cancelled() => return ("backend", Ok(())),
            } {
                Ok(()) => {}
                Err(e) => return ("backend", Err(e.context("the backend could not start"))),
            }
            ready.store(true, Ordering::Release);
            tracing::info!("backend ready");
            let reap = tokio::spawn(reaper::run(reaper, stop.clone()));
            let priced = costs.map(|c| tokio::spawn(costs::run(c, stop.clone())));
            provisioner::run(provisioner, stop, grace).await;
            let _ = reap.await;
            if let Some(priced) = priced {
                let _ = priced.await;
            }
            ("provisioner", Ok(()))
        });
    }
}

/// Publishes the first runner release (unless pinned) and keeps it current until `stop`,
/// then prepares the backend.
async fn start_backend(
    backend: &FencedBackend,
    releases: Option<ReleasePublisher>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(releases) = releases {
        releases.publish_first().await?;
        tokio::spawn(releases.follow(stop));
    }
    Ok(prepare(backend).await?)
}

/// Prepares the backend, retrying transient failures (Modal briefly unreachable) with
/// backoff; a permanent one (bad credentials, failed image build) ends the service.
async fn prepare(backend: &FencedBackend) -> Result<(), BackendError> {
    let backoff = Backoff::new(u32::MAX, Duration::from_secs(1), Duration::from_secs(60));
    let mut attempt = 0;
    loop {
        match backend.prepare().await {
            Err(e) if e.is_transient() => {
                let wait = backoff.delay(attempt);
                tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "the backend is not ready yet");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
            other => return other,
        }
    }
}

/// The configured backend and, for Modal without a pinned runner, the publisher of the
/// runner releases it installs.
fn backend(settings: &Settings, github: &GitHub) -> anyhow::Result<(Backend, Option<ReleasePublisher>)> {
    Ok(match &settings.backend {
        BackendSettings::Local(local) => (Backend::Local(LocalBackend::new(local.clone())), None),
        BackendSettings::Modal {
            settings: modal,
            runner_version,
        } => {
            let allow = &settings.webhook.allow;
            let home = match allow.listed().and_then(|r| r.first()) {
                Some(repo) => Some(github.home_of(repo)),
                None => allow.owners().first().and_then(|o| github.owner_home(o)),
            };
            let source = match runner_version {
                Some(v) => ReleaseSource::Pinned(v.clone()),
                None => ReleaseSource::Served {
                    github: github.clone(),
                    home,
                },
            };
            let (publisher, releases) = runner_release::channel(source, modal.refresh_interval);
            let backend = ModalBackend::new((**modal).clone(), releases)
                .context("could not set up the Modal client")?;
            (Backend::Modal(Box::new(backend)), publisher)
        }
    })
}

/// The registration path and, for `JOB_SOURCE=scaleset`, the listener: the scale set is
/// got or created (and updated) here, so a wrong scope or missing permission stops the
/// service at start-up with the reason.
async fn job_source(
    settings: &Settings,
    github: &GitHub,
    store: &Store,
    wake: &Arc<Wake>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Registry, Vec<ListenerContext>)> {
    let JobSource::ScaleSet(sets) = &settings.source else {
        return Ok((Registry::Rest(github.clone()), Vec::new()));
    };
    let Some(home) = sets.first().map(|s| s.home.clone()) else {
        anyhow::bail!("JOB_SOURCE=scaleset names no scale set");
    };
    let owner = std::env::var("HOSTNAME").unwrap_or_else(|_| "modal-github-runner".into());
    let client = ScaleSetClient::new(
        github.clone(),
        ScaleSetClientConfig {
            home: home.clone(),
            timeout: settings.github.timeout,
            // Longer than the service's ~50 s hold (scaleset-contract §6: 5 minutes).
            poll_timeout: Duration::from_secs(300),
            owner,
        },
    )
    .context("could not build the scale set client")?;
    let group_id = settings.provisioner.runner_groups.id_for(&home).unwrap_or(1);
    let mut named = Vec::new();
    let mut listeners = Vec::new();
    for set in sets {
        let scale_set = client
            .ensure_scale_set(&set.name, group_id, &set.labels)
            .await
            .with_context(|| {
                format!(
                    "could not get or create the scale set {} at {}",
                    set.name,
                    client.config_url()
                )
            })?;
        tracing::info!(scale_set = %set.name, id = scale_set.id, url = client.config_url(), "runner scale set ready");
        named.push((set.name.clone(), scale_set.id));
        listeners.push(ListenerContext {
            client: client.clone(),
            scale_set_id: scale_set.id,
            scale_set_name: set.name.clone(),
            store: store.clone(),
            wake: wake.clone(),
            max_runners: settings.limits.max_runners,
            allow: settings.webhook.allow.clone(),
            machine: set.machine.clone(),
            backoff: Backoff::new(u32::MAX, Duration::from_secs(1), Duration::from_secs(30)),
            metrics: metrics.clone(),
        });
    }
    let registry = Registry::ScaleSet {
        client,
        sets: named,
        deployment_label: settings.provisioner.deployment.label(),
    };
    Ok((registry, listeners))
}

/// Resolves `RUNNER_GROUP` to its id at every organisation (or the enterprise) served, so
/// that a group missing anywhere stops the service at start-up with its name.
async fn resolve_runner_group(settings: &mut Settings, github: &GitHub) -> anyhow::Result<()> {
    let homes: Vec<_> = settings
        .webhook
        .allow
        .owners()
        .iter()
        .filter_map(|o| github.owner_home(o))
        .collect();
    settings.provisioner.runner_groups.resolve(github, &homes).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}
