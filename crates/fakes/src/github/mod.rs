//! An in-process fake of GitHub for the JIT-runner service.
//!
//! [`FakeGitHub::start`] binds `127.0.0.1:0` and serves the REST endpoints
//! the service uses (runners and JIT configs at repository, organisation and
//! enterprise scope, runner groups, runs, jobs, contents, webhook deliveries,
//! App installations, rate limit) with GitHub's paths, bodies, status codes and
//! headers (`docs/github.md` §2–3). An App may have one installation per
//! account, and an installation's token reaches only its account. It delivers signed
//! `workflow_job` webhooks (§1) and dispatches jobs to fake runners the way
//! GitHub does (§2.4): any matching idle runner takes the oldest matching
//! job, respecting `max-parallel` that webhooks never reveal.
//!
//! Tests drive the scenario (queue runs, approve, cancel, drop or duplicate
//! deliveries, inject faults and rate limits) and observe everything (calls,
//! jobs, runners, deliveries, peaks).
//! This file is that test-facing handle, one short method per control or view; it runs
//! slightly past 400 lines rather than split one API across files.

mod accounts;
mod actions;
mod app;
mod broker;
pub mod client;
mod config;
mod deliveries_api;
mod endpoints;
mod faults;
pub mod jitconfig;
mod paths;
mod payload;
mod records;
mod routes;
mod runners;
mod scaleset;
mod scaleset_handle;
mod scenario;
mod state;
mod time;
mod views;
mod webhook;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use accounts::DEFAULT_GROUP_ID;
pub use app::{FakeApp, TEST_APP_PRIVATE_KEY_PEM, TEST_APP_PUBLIC_KEY_PEM};
pub use broker::BROKER_PATH;
pub use client::{HttpClient, HttpError, HttpResponse};
pub use config::{ContentType, FakeGitHubConfig, HookKind, WebhookTarget};
pub use faults::{Fault, FaultRule, Limits, Route};
pub use jitconfig::{JitConfig, JitConfigError, RunnerCredentials, RunnerSettings};
pub use payload::{WEB_URL, job_json, ping_payload, repository_json, workflow_job_payload};
pub use records::{CallRecord, DeliveryInfo, DeliveryMode, DeliveryRecord};
pub use scaleset::{
    MAX_JOBS_PER_MESSAGE, PollRecord, ScaleSetMessageView, ScaleSetView, SessionCreate, scale_set_job_id,
};
pub use scenario::{JobSpec, QueuedRun, RunSpec, RunnerBehavior};
pub use time::rfc3339;
pub use views::{JobStatus, JobView, OwnerKind, RepoView, RepoVisibility, RunnerStatus, RunnerView, Scope};
pub use webhook::{encode_body, sign_sha256};

use state::{Outgoing, State};

/// Id of the hook [`FakeGitHub::set_webhook`] sets; [`FakeGitHub::add_webhook`] numbers
/// further hooks from 2.
pub const HOOK_ID: u64 = 1;
/// First job id; real job ids exceed 2^32 (docs/github.md §0.1).
pub const JOB_ID_BASE: u64 = 12_877_621_891;
/// Runner version served by the downloads endpoint unless changed.
pub const DEFAULT_RUNNER_VERSION: &str = "2.336.0";
/// A runner not heard from for this long is `offline`.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(3);
/// Path prefix of the fake Actions service (the JIT config's `ServerUrl`).
pub const ACTIONS_PATH: &str = "/_fake/actions/";
/// `documentation_url` of error bodies.
pub(crate) const DOCS_URL: &str = "https://docs.github.com/rest";

/// State shared by the server, delivery tasks and the test-facing handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    runtime: Handle,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    in_flight: AtomicUsize,
    hookshot_agent: String,
}

impl Shared {
    /// Locks the state. A panic elsewhere cannot leave it half-updated in a
    /// way that matters to a fake, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, then sends the webhooks it produced (after the
    /// lock is released).
    fn with_state<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, outgoing) = {
            let mut state = self.lock();
            let result = f(&mut state);
            (result, state.take_outbox())
        };
        self.send(outgoing);
        result
    }

    fn send(self: &Arc<Self>, outgoing: Vec<Outgoing>) {
        for delivery in outgoing {
            webhook::spawn_delivery(self, delivery);
        }
    }

    /// Sleeps unless the fake shuts down first; false if it did.
    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// A running fake GitHub. Dropping it stops the server; prefer
/// [`FakeGitHub::shutdown`] (or [`FakeGitHub::stop`] when shared behind an
/// `Arc`), which also waits for in-flight deliveries.
pub struct FakeGitHub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl FakeGitHub {
    /// Binds `127.0.0.1:0` and serves until shut down. Must be called
    /// inside a Tokio runtime.
    pub async fn start(config: FakeGitHubConfig) -> io::Result<FakeGitHub> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(&config, format!("http://{addr}"))),
            runtime: Handle::current(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
            hookshot_agent: format!("GitHub-Hookshot/{:07x}", fastrand::u32(..0x0FFF_FFFF)),
        });
        let app = Router::new()
            .fallback(routes::handle)
            .with_state(Arc::clone(&shared));
        let stop = shared.shutdown.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::warn!(%error, "fake GitHub server stopped with an error");
            }
        });
        tracing::debug!(%addr, "fake GitHub listening");
        Ok(FakeGitHub {
            shared,
            addr,
            server: Mutex::new(Some(server)),
        })
    }

    /// The API base to use as `GITHUB_API_URL`, e.g. `http://127.0.0.1:41234` (with the
    /// configured prefix, e.g. `/api/v3`, appended).
    pub fn api_url(&self) -> String {
        self.with_state(|s| s.api_url.clone())
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        self.shared.with_state(f)
    }

    /// Sets where and how the deliveries of hook [`HOOK_ID`] go. Without any hook nothing
    /// is sent or recorded.
    pub fn set_webhook(&self, target: WebhookTarget) {
        self.with_state(|s| {
            s.webhooks.retain(|(id, _)| *id != HOOK_ID);
            s.webhooks.insert(0, (HOOK_ID, target));
        });
    }

    /// Adds another hook (an organisation's, the App's, a second service's); its id. Each
    /// hook that wants an event gets its own delivery, with the event's GUID.
    pub fn add_webhook(&self, target: WebhookTarget) -> u64 {
        self.with_state(|s| {
            let id = s.webhooks.iter().map(|(id, _)| *id).max().unwrap_or(HOOK_ID) + 1;
            s.webhooks.push((id, target));
            id
        })
    }

    /// Subscribes hook `hook_id` to exactly `events` (`*` for all); it then delivers
    /// only those (and `ping`). Hooks start subscribed to `workflow_job`.
    pub fn set_hook_events(&self, hook_id: u64, events: &[&str]) {
        self.with_state(|s| {
            s.hook_settings.entry(hook_id).or_default().events =
                events.iter().map(|e| (*e).to_owned()).collect();
        });
    }

    /// Turns hook `hook_id` off (no deliveries) or on.
    pub fn set_hook_active(&self, hook_id: u64, active: bool) {
        self.with_state(|s| s.hook_settings.entry(hook_id).or_default().active = active);
    }

    /// Makes every answer to the token carry `X-OAuth-Scopes: scopes`, as GitHub does for
    /// a classic token (e.g. `"repo, admin:org"`); `None` (the default) sends no such
    /// header, as for a fine-grained token.
    pub fn set_token_scopes(&self, scopes: Option<&str>) {
        self.with_state(|s| s.token_scopes = scopes.map(str::to_owned));
    }

    /// Stops sending webhooks (removes every hook).
    pub fn clear_webhook(&self) {
        self.with_state(|s| s.webhooks.clear());
    }

    /// Changes the delivery timeout (GitHub: 10 s) to keep timeout tests short.
    pub fn set_webhook_timeout(&self, timeout: Duration) {
        self.with_state(|s| s.webhook_timeout = timeout);
    }

    /// Adds an organisation-owned repository; unknown repos answer 404.
    pub fn add_repo(&self, full_name: &str) {
        self.with_state(|s| s.add_repo(RepoView::organization(full_name)));
    }

    /// Adds a user-owned repository (payloads carry no `organization`).
    pub fn add_user_repo(&self, full_name: &str) {
        self.with_state(|s| s.add_repo(RepoView::user(full_name)));
    }

    /// Adds a public organisation-owned repository.
    pub fn add_public_repo(&self, full_name: &str) {
        self.with_state(|s| s.add_repo(RepoView::organization(full_name).public()));
    }

    /// Adds an enterprise holding the organisations `orgs` (which need not have
    /// repositories yet).
    pub fn add_enterprise(&self, slug: &str, orgs: &[&str]) {
        self.with_state(|s| s.add_enterprise(slug, orgs));
    }

    /// Adds a runner group to an organisation or enterprise (which must exist); its id.
    /// Every account also has the "Default" group, [`DEFAULT_GROUP_ID`].
    pub fn add_runner_group(&self, at: &Scope, name: &str) -> Option<u64> {
        self.with_state(|s| s.add_runner_group(at, name))
    }

    /// The repository as payloads describe it.
    pub fn repo(&self, full_name: &str) -> Option<RepoView> {
        self.with_state(|s| s.repo(full_name).cloned())
    }

    /// Stores a file for the contents API at `git_ref` (branch, tag or sha).
    pub fn put_file(&self, repo: &str, path: &str, git_ref: &str, content: &str) {
        self.with_state(|s| {
            let repo = s
                .repo(repo)
                .map_or_else(|| repo.to_owned(), |r| r.full_name.clone());
            s.files
                .insert((repo, path.to_owned(), git_ref.to_owned()), content.to_owned());
        });
    }

    /// Creates a run and its jobs and emits their `queued` webhooks at once
    /// (held jobs: `queued` with status `waiting`, then `waiting`).
    pub fn queue_run(&self, spec: RunSpec) -> QueuedRun {
        self.with_state(|s| s.queue_run(spec))
    }

    /// Releases a waiting job (another `queued` event, status `queued`).
    /// False if the job is not waiting.
    pub fn approve_job(&self, job_id: u64) -> bool {
        self.with_state(|s| s.approve_job(job_id))
    }

    /// Cancels a job that has not completed (`completed`/`cancelled` event).
    /// A running job's runner is told to stop at its next renewal.
    pub fn cancel_job(&self, job_id: u64) -> bool {
        self.with_state(|s| s.cancel_job(job_id))
    }

    /// Re-emits the job's current payload with `action`, under a new GUID.
    pub fn resend(&self, job_id: u64, action: &str) -> Option<Uuid> {
        self.with_state(|s| s.emit_job_event(job_id, action))
    }

    /// The body of the delivery `guid`, as sent (to replay it).
    pub fn delivered_payload(&self, guid: Uuid) -> Option<serde_json::Value> {
        self.with_state(|s| {
            let d = s.deliveries.iter().find(|d| d.record.guid == guid)?;
            Some((*d.payload).clone())
        })
    }

    /// Delivers an arbitrary event body, signed.
    pub fn send_raw(&self, event: &str, body: serde_json::Value) -> Uuid {
        self.with_state(|s| s.emit_raw(event, body))
    }

    /// Sends the `ping` event for `repo` (as when a hook is created).
    pub fn send_ping(&self, repo: &str) -> Option<Uuid> {
        self.with_state(|s| {
            let repo = s.repo(repo)?.clone();
            let hook_url = s.webhooks.first().map(|(_, w)| w.url.clone()).unwrap_or_default();
            let body = ping_payload(&s.api_url, &repo, &hook_url);
            Some(s.emit_raw("ping", body))
        })
    }

    /// Decides per delivery: deliver, drop, duplicate or delay.
    pub fn set_delivery_filter(
        &self,
        filter: impl Fn(&DeliveryInfo) -> DeliveryMode + Send + Sync + 'static,
    ) {
        self.with_state(|s| s.delivery_filter = Some(Arc::new(filter)));
    }

    /// Delivers everything again.
    pub fn clear_delivery_filter(&self) {
        self.with_state(|s| s.delivery_filter = None);
    }

    /// Adds a fault rule (rules are tried in insertion order).
    pub fn inject(&self, rule: FaultRule) {
        if rule.times > 0 {
            self.with_state(|s| s.faults.push(rule));
        }
    }

    /// Adds `latency` before answering `route` ([`Route::Any`] = default for all).
    pub fn set_latency(&self, route: Route, latency: Duration) {
        self.with_state(|s| s.latency.insert(route, latency));
    }

    /// Sets the rate-limit budgets.
    pub fn set_limits(&self, limits: Limits) {
        self.with_state(|s| s.rates.set_limits(limits));
    }

    /// Chooses, by runner name, how each fake runner behaves when it connects.
    pub fn set_runner_behavior(&self, choose: impl Fn(&str) -> RunnerBehavior + Send + Sync + 'static) {
        self.with_state(|s| s.runner_behavior = Some(Arc::new(choose)));
    }

    /// Accepts only `token` from now on (the old one gets 401).
    pub fn set_token(&self, token: &str) {
        self.with_state(|s| s.token = token.to_owned());
    }

    /// Version served by the runner downloads endpoint.
    pub fn set_runner_version(&self, version: &str) {
        self.with_state(|s| s.runner_version = version.to_owned());
    }

    /// Every REST call so far (not the fake Actions calls of runners), in
    /// the order they were answered.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.with_state(|s| s.calls.clone())
    }

    /// All jobs, by id.
    pub fn jobs(&self) -> Vec<JobView> {
        self.with_state(|s| s.jobs.values().map(|j| j.view.clone()).collect())
    }

    pub fn job(&self, id: u64) -> Option<JobView> {
        self.with_state(|s| s.jobs.get(&id).map(|j| j.view.clone()))
    }

    /// Current registrations, by id.
    pub fn runners(&self) -> Vec<RunnerView> {
        let now = Instant::now();
        self.with_state(|s| s.runners.values().map(|r| r.view(now)).collect())
    }

    /// Every runner name ever registered successfully, in order.
    pub fn registrations_ever(&self) -> Vec<String> {
        self.with_state(|s| s.registrations_ever.clone())
    }

    /// Every secret the fake handed out: the encoded JIT config of each registration, each
    /// installation token, then each scale-set admin and queue token. A client must never log any of them.
    pub fn secrets_issued(&self) -> Vec<String> {
        self.with_state(|s| {
            let mut secrets = s.jit_configs_issued.clone();
            secrets.extend(s.installation_tokens_in_order.iter().cloned());
            secrets.extend(s.scale_sets.tokens.iter().cloned());
            secrets
        })
    }

    /// Every delivery attempt, oldest first.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.with_state(|s| s.deliveries.iter().map(|d| d.record.clone()).collect())
    }

    /// Deliveries still being sent (or delayed).
    pub fn deliveries_in_flight(&self) -> usize {
        self.shared.tracker.len()
    }

    /// Highest number of registrations that existed at once at `repo` (or at the
    /// organisation or enterprise of that name).
    pub fn peak_live_runners(&self, repo: &str) -> usize {
        self.with_state(|s| {
            let repo = s
                .repo(repo)
                .map_or_else(|| repo.to_owned(), |r| r.full_name.clone());
            s.peak_live.get(&repo).copied().unwrap_or(0)
        })
    }

    /// Installation tokens issued so far.
    pub fn installation_tokens_issued(&self) -> u64 {
        self.with_state(|s| s.installation_tokens_issued)
    }

    /// Installation tokens issued so far for installation `id`.
    pub fn installation_tokens_issued_for(&self, id: u64) -> u64 {
        self.with_state(|s| s.tokens_by_installation.get(&id).copied().unwrap_or(0))
    }

    /// The REST calls that counted against the primary budget: not the 304s answered to
    /// conditional requests, as on GitHub.
    pub fn counted_calls(&self) -> Vec<CallRecord> {
        self.with_state(|s| s.calls.iter().filter(|c| c.counted).cloned().collect())
    }

    /// Spends `n` calls of the primary budget, as other clients of the same token would
    /// (a test of a draining budget).
    pub fn spend_budget(&self, n: u32) {
        self.with_state(|s| s.rates.spend_core(n));
    }

    /// Calls left in the primary budget's current window.
    pub fn budget_remaining(&self) -> u32 {
        self.with_state(|s| s.rates.snapshot().remaining)
    }

    /// How many rate-limit answers (403/429) the fake gave.
    pub fn rate_limit_errors(&self) -> u64 {
        self.with_state(|s| s.rates.errors())
    }

    /// Polls `condition` every 20 ms until it holds or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&FakeGitHub) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server and waits (at most 5 s) for deliveries to finish.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// Like [`FakeGitHub::shutdown`], for a fake shared behind an `Arc`.
    /// Later calls return at once.
    pub async fn stop(&self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        let grace = Duration::from_secs(5);
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("fake GitHub: deliveries still running at shutdown");
        }
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut server) = server
            && tokio::time::timeout(grace, &mut server).await.is_err()
        {
            server.abort();
        }
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
