//! An in-process fake of Modal's control-plane gRPC API (`modal.client.ModalClient`).
//!
//! [`FakeModal::start`] serves the RPCs modal-github-runner uses on `127.0.0.1:0`
//! (plaintext h2c, the `http://` form of `MODAL_SERVER_URL`), following
//! `docs/modal.md`: the token-pair authentication and client headers (§1.2), the
//! server-directed retry details (§1.5), Apps, environments, recipe-cached image builds
//! with streamed logs, secrets (§2.1–2.3), and sandboxes with names unique among running
//! ones, tags, paging, waits, terminate, timeouts (§2.4–2.6) and the workspace creation
//! rate limit (§5).
//!
//! A sandbox's entrypoint is not the requested `entrypoint_args` (they name paths in
//! Modal's image) but the configured `runner_command`, run as a real local process in its
//! own process group and temp directory with the sandbox's secrets as its environment.
//! Tests, the simulator and the benchmarks observe everything the fake saw and did, and
//! can inject faults (statuses, throttling with retry hints, delays, lost responses).

mod catalog;
mod error;
mod faults;
mod images;
mod lifecycle;
mod process;
mod sandboxes;
mod service;
mod state;
mod types;
mod volumes;
// Costs and failure logs (issue 13 items 4, 5).
mod usage;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use modal_proto::modal_client_server::ModalClientServer;

pub use catalog::IMAGE_BUILDER_VERSION;
pub use error::RpcError;
pub use faults::{FaultKind, ModalFault, RETRY_POLICY_TYPE_URL};
pub use types::{AppView, FakeModalConfig, RecordedCall, SandboxFinish, SandboxResources, SandboxView};
pub use volumes::VolumeView;

use service::FakeModalService;
use state::Shared;

/// Largest message the fake accepts or sends, as libmodal configures (docs/modal.md §1.5).
const MAX_MESSAGE_BYTES: usize = 100 * 1024 * 1024;
/// How long shutdown waits for open calls and background tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running fake Modal. Dropping it stops the server and kills every sandbox process;
/// prefer [`FakeModal::shutdown`], which also waits for them to be gone.
pub struct FakeModal {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl FakeModal {
    /// Binds `127.0.0.1:0` and serves the fake until [`shutdown`](Self::shutdown).
    pub async fn start(config: FakeModalConfig) -> io::Result<FakeModal> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let service = ModalClientServer::new(FakeModalService::new(Arc::clone(&shared)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let stop = shared.shutdown.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            // One service needs no router (tonic's `router` feature is off): the generated
            // server dispatches by path and answers UNIMPLEMENTED for unknown methods.
            let served = Server::builder()
                .serve_with_incoming_shutdown(service, TcpListenerStream::new(listener), stop)
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "fake Modal server failed");
            }
        });
        tracing::debug!(%addr, "fake Modal listening");
        Ok(FakeModal {
            shared,
            addr,
            server: Some(server),
        })
    }

    /// The server URL to give the service as `MODAL_SERVER_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The credentials the fake accepts, as (token id, token secret).
    pub fn credentials(&self) -> (String, String) {
        let settings = &self.shared.settings;
        (settings.token_id.clone(), settings.token_secret.clone())
    }

    /// Adds a fault rule behind the existing ones (the first matching rule fires).
    pub fn inject(&self, rule: ModalFault) {
        self.shared.with_state(|state| state.faults.push(rule));
    }

    /// Removes every injected fault not used up yet: the outage a test began is over.
    pub fn clear_faults(&self) {
        self.shared
            .with_state(|state| state.faults = faults::FaultTable::default());
    }

    /// With `Some(message)`, builds started from now on end in FAILURE with `message` as
    /// the exception and in the logs; `None` makes them succeed again.
    pub fn fail_image_builds(&self, message: Option<String>) {
        self.shared.with_state(|state| state.fail_builds = message);
    }

    /// Changes the simulated `SandboxCreate` latency for creates admitted from now on.
    pub fn set_create_latency(&self, latency: Duration) {
        self.shared.with_state(|state| state.create_latency = latency);
    }

    /// Changes the workspace creation rate (`None` = unlimited).
    pub fn set_create_rate(&self, per_sec: Option<f64>) {
        self.shared.with_state(|state| state.rate.set(per_sec));
    }

    /// Every RPC received so far, in the order the answers were decided.
    pub fn requests(&self) -> Vec<RecordedCall> {
        self.shared.calls()
    }

    /// Every App created so far.
    pub fn apps(&self) -> Vec<AppView> {
        self.shared.with_state(|state| {
            let mut apps: Vec<AppView> = state
                .apps
                .iter()
                .map(|(id, app)| AppView {
                    id: id.clone(),
                    environment: app.environment.clone(),
                    name: app.name.clone(),
                })
                .collect();
            apps.sort_by(|a, b| (&a.environment, &a.name).cmp(&(&b.environment, &b.name)));
            apps
        })
    }

    /// Every sandbox ever created, oldest first.
    pub fn sandboxes(&self) -> Vec<SandboxView> {
        self.shared
            .with_state(|state| state.sandboxes.iter().map(|s| s.view()).collect())
    }

    /// One sandbox by id.
    pub fn sandbox(&self, sandbox_id: &str) -> Option<SandboxView> {
        self.shared
            .with_state(|state| state.sandbox(sandbox_id).ok().map(|s| s.view()))
    }

    /// Sandboxes without a result.
    pub fn running_count(&self) -> usize {
        self.shared.with_state(|state| state.running_count())
    }

    /// The most sandboxes that were running at once.
    pub fn peak_running(&self) -> usize {
        self.shared.with_state(|state| state.peak_running)
    }

    /// Image builds performed (cache hits excluded).
    pub fn image_builds(&self) -> usize {
        self.shared.with_state(|state| state.image_builds)
    }

    /// When each accepted `SandboxCreate` took its rate token, in order.
    pub fn create_times(&self) -> Vec<Instant> {
        self.shared.with_state(|state| state.create_times.clone())
    }

    /// Every volume (issue 13), sorted by environment and name.
    pub fn volumes(&self) -> Vec<VolumeView> {
        self.shared.with_state(|state| volumes::views(state))
    }

    /// Volumes created, lookups of existing ones excluded (issue 13).
    pub fn volume_creations(&self) -> usize {
        self.shared.with_state(|state| state.volumes.created)
    }

    /// RESOURCE_EXHAUSTED answers given because of the creation rate (not injected ones).
    pub fn rate_limit_errors(&self) -> u64 {
        self.shared.with_state(|state| state.rate_limit_errors)
    }

    /// Makes `SandboxGetStats` data arrive `delay` late, as Modal's does (minutes); the
    /// default is no delay.
    pub fn set_stats_delay(&self, delay: Duration) {
        self.shared.set_stats_delay(delay);
    }

    /// Stops the server, kills every sandbox's processes and waits (bounded) for the
    /// background tasks, so no process or temp directory outlives the fake.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err()
        {
            tracing::warn!("fake Modal server did not stop in time; aborting it");
            server.abort();
        }
        self.shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("fake Modal background tasks did not stop in time");
        }
        self.shared.groups.kill_all();
    }
}

impl Drop for FakeModal {
    /// Without [`FakeModal::shutdown`]: stop serving, and kill the sandbox processes now,
    /// since the runtime (and with it the supervisors) may be going away too.
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.shared.groups.kill_all();
    }
}
