//! The gRPC face of the fake: authentication, fault injection and recording around every
//! RPC, then dispatch to the module that implements it.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use modal_proto::modal_client_server::ModalClient;
use modal_proto::{
    AppGetOrCreateRequest, AppGetOrCreateResponse, EnvironmentGetOrCreateRequest,
    EnvironmentGetOrCreateResponse, ImageGetOrCreateRequest, ImageGetOrCreateResponse,
    ImageJoinStreamingRequest, SandboxCreateRequest, SandboxCreateResponse, SandboxGetFromNameRequest,
    SandboxGetFromNameResponse, SandboxListRequest, SandboxListResponse, SandboxTerminateRequest,
    SandboxTerminateResponse, SandboxWaitRequest, SandboxWaitResponse, SecretGetOrCreateRequest,
    SecretGetOrCreateResponse, VolumeGetOrCreateRequest, VolumeGetOrCreateResponse,
};

use super::error::RpcError;
use super::faults::{self, FaultKind};
use super::images::{self, JoinStream};
use super::state::{Settings, Shared};
use super::types::RecordedCall;
use super::{catalog, sandboxes, usage, volumes};

const TOKEN_ID: &str = "x-modal-token-id";
const TOKEN_SECRET: &str = "x-modal-token-secret";
/// Headers Modal requires besides the token pair (docs/modal.md §1.2); any value.
const REQUIRED_CLIENT_HEADERS: [&str; 2] = ["x-modal-client-type", "x-modal-client-version"];

/// The `ModalClient` service implementation.
pub(crate) struct FakeModalService {
    shared: Arc<Shared>,
}

impl FakeModalService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Authenticates, applies any injected fault, runs `op` and records the call.
    async fn handle<Req, Resp, Op, Fut>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        op: Op,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Debug,
        Resp: Answer,
        Op: FnOnce(Arc<Shared>, Req) -> Fut,
        Fut: Future<Output = Result<Resp, RpcError>>,
    {
        let mut recorder = CallRecorder::begin(&self.shared, rpc, &request);
        let outcome = match authenticate(&self.shared.settings, request.metadata()) {
            Err(refusal) => Err(Status::from(refusal)),
            Ok(()) => self.run(rpc, request.into_inner(), op).await,
        };
        recorder.finish(&outcome);
        outcome.map(Response::new)
    }

    /// Runs `op` under the first injected fault matching `rpc`, if any.
    async fn run<Req, Resp, Op, Fut>(&self, rpc: &str, request: Req, op: Op) -> Result<Resp, Status>
    where
        Resp: Answer,
        Op: FnOnce(Arc<Shared>, Req) -> Fut,
        Fut: Future<Output = Result<Resp, RpcError>>,
    {
        let shared = Arc::clone(&self.shared);
        let fault = shared.with_state(|state| state.faults.take(rpc));
        match fault {
            None => op(shared, request).await.map_err(Status::from),
            Some(FaultKind::Status(code, message)) => Err(Status::new(code, message)),
            Some(FaultKind::ResourceExhausted { retry_after_secs }) => {
                let message = format!("{rpc}: too many requests (injected fault)");
                Err(faults::resource_exhausted(&message, retry_after_secs))
            }
            Some(FaultKind::Delay(delay)) => {
                if !shared.sleep(delay).await {
                    return Err(RpcError::shutting_down().into());
                }
                op(shared, request).await.map_err(Status::from)
            }
            Some(FaultKind::BreakStream { after_messages, code }) => {
                let answer = op(Arc::clone(&shared), request).await.map_err(Status::from)?;
                let end =
                    code.map(|code| Status::new(code, format!("{rpc}: connection reset (injected fault)")));
                answer.cut_short(&shared, after_messages, end)
            }
            Some(FaultKind::AfterSuccess(code)) => {
                let performed = op(shared, request).await;
                tracing::debug!(rpc, ok = performed.is_ok(), "injected lost response");
                Err(Status::new(
                    code,
                    format!("{rpc}: response lost after the operation (injected fault)"),
                ))
            }
        }
    }
}

/// An RPC's answer, which an injected [`FaultKind::BreakStream`] can cut short.
trait Answer: Sized {
    /// The answer after its first `after_messages` messages, then `end` (or a clean end).
    /// A unary answer is one message: it arrives whole, or not at all.
    fn cut_short(
        self,
        _shared: &Arc<Shared>,
        after_messages: usize,
        end: Option<Status>,
    ) -> Result<Self, Status> {
        if after_messages > 0 {
            return Ok(self);
        }
        Err(end
            .unwrap_or_else(|| Status::unavailable("connection closed before the answer (injected fault)")))
    }
}

impl Answer for AppGetOrCreateResponse {}
impl Answer for EnvironmentGetOrCreateResponse {}
impl Answer for ImageGetOrCreateResponse {}
impl Answer for SecretGetOrCreateResponse {}
impl Answer for SandboxCreateResponse {}
impl Answer for SandboxGetFromNameResponse {}
impl Answer for SandboxListResponse {}
impl Answer for SandboxTerminateResponse {}
impl Answer for SandboxWaitResponse {}
impl Answer for VolumeGetOrCreateResponse {}
// ---- costs and failure logs (issue 13 items 4, 5) ----
impl Answer for modal_proto::SandboxGetStatsResponse {}
impl Answer for usage::LogStream {}

impl Answer for JoinStream {
    fn cut_short(
        self,
        shared: &Arc<Shared>,
        after_messages: usize,
        end: Option<Status>,
    ) -> Result<Self, Status> {
        Ok(images::cut(shared, self, after_messages, end))
    }
}

/// UNAUTHENTICATED unless the token pair matches and the client headers are present.
fn authenticate(settings: &Settings, metadata: &MetadataMap) -> Result<(), RpcError> {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    if text(TOKEN_ID) != Some(settings.token_id.as_str())
        || text(TOKEN_SECRET) != Some(settings.token_secret.as_str())
    {
        return Err(RpcError::Unauthenticated("Invalid token".to_owned()));
    }
    match REQUIRED_CLIENT_HEADERS
        .iter()
        .find(|key| metadata.get(**key).is_none())
    {
        Some(missing) => Err(RpcError::Unauthenticated(format!("Missing {missing} metadata"))),
        None => Ok(()),
    }
}

/// Records one call; a call whose client went away before the answer is recorded as
/// CANCELLED when the handler is dropped.
struct CallRecorder {
    shared: Arc<Shared>,
    pending: Option<RecordedCall>,
}

impl CallRecorder {
    fn begin<Req: Debug>(shared: &Arc<Shared>, rpc: &'static str, request: &Request<Req>) -> Self {
        let (metadata, token_secret_matched) = describe_metadata(&shared.settings, request.metadata());
        let call = RecordedCall {
            rpc,
            metadata,
            token_secret_matched,
            request: format!("{:?}", request.get_ref()),
            code: Code::Cancelled,
            message: "client went away before the answer".to_owned(),
            at: Instant::now(),
        };
        Self {
            shared: Arc::clone(shared),
            pending: Some(call),
        }
    }

    fn finish<T>(&mut self, outcome: &Result<T, Status>) {
        if let Some(mut call) = self.pending.take() {
            (call.code, call.message) = match outcome {
                Ok(_) => (Code::Ok, String::new()),
                Err(status) => (status.code(), status.message().to_owned()),
            };
            call.at = Instant::now();
            self.shared.record(call);
        }
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        if let Some(mut call) = self.pending.take() {
            call.at = Instant::now();
            self.shared.record(call);
        }
    }
}

/// Metadata as recorded: everything but the token secret, whose match alone is kept.
fn describe_metadata(settings: &Settings, metadata: &MetadataMap) -> (Vec<(String, String)>, Option<bool>) {
    let headers = metadata.clone().into_headers();
    let mut entries = Vec::with_capacity(headers.len());
    let mut secret_matched = None;
    for (name, value) in &headers {
        let name = name.as_str();
        if name == TOKEN_SECRET {
            secret_matched = Some(value.as_bytes() == settings.token_secret.as_bytes());
            continue;
        }
        let shown = match value.to_str() {
            Ok(text) if !name.ends_with("-bin") => text.to_owned(),
            _ => "<binary>".to_owned(),
        };
        entries.push((name.to_owned(), shown));
    }
    (entries, secret_matched)
}

#[tonic::async_trait]
impl ModalClient for FakeModalService {
    async fn app_get_or_create(
        &self,
        request: Request<AppGetOrCreateRequest>,
    ) -> Result<Response<AppGetOrCreateResponse>, Status> {
        self.handle("AppGetOrCreate", request, |shared, req| async move {
            catalog::app_get_or_create(&shared, req)
        })
        .await
    }

    async fn environment_get_or_create(
        &self,
        request: Request<EnvironmentGetOrCreateRequest>,
    ) -> Result<Response<EnvironmentGetOrCreateResponse>, Status> {
        self.handle("EnvironmentGetOrCreate", request, |shared, req| async move {
            catalog::environment_get_or_create(&shared, req)
        })
        .await
    }

    async fn image_get_or_create(
        &self,
        request: Request<ImageGetOrCreateRequest>,
    ) -> Result<Response<ImageGetOrCreateResponse>, Status> {
        self.handle("ImageGetOrCreate", request, |shared, req| async move {
            images::get_or_create(&shared, req)
        })
        .await
    }

    type ImageJoinStreamingStream = JoinStream;

    async fn image_join_streaming(
        &self,
        request: Request<ImageJoinStreamingRequest>,
    ) -> Result<Response<Self::ImageJoinStreamingStream>, Status> {
        self.handle("ImageJoinStreaming", request, |shared, req| async move {
            images::join(&shared, req)
        })
        .await
    }

    async fn secret_get_or_create(
        &self,
        request: Request<SecretGetOrCreateRequest>,
    ) -> Result<Response<SecretGetOrCreateResponse>, Status> {
        self.handle("SecretGetOrCreate", request, |shared, req| async move {
            catalog::secret_get_or_create(&shared, req)
        })
        .await
    }

    async fn sandbox_create(
        &self,
        request: Request<SandboxCreateRequest>,
    ) -> Result<Response<SandboxCreateResponse>, Status> {
        self.handle("SandboxCreate", request, |shared, req| async move {
            sandboxes::create(&shared, req).await
        })
        .await
    }

    async fn sandbox_get_from_name(
        &self,
        request: Request<SandboxGetFromNameRequest>,
    ) -> Result<Response<SandboxGetFromNameResponse>, Status> {
        self.handle("SandboxGetFromName", request, |shared, req| async move {
            sandboxes::get_from_name(&shared, req)
        })
        .await
    }

    async fn sandbox_list(
        &self,
        request: Request<SandboxListRequest>,
    ) -> Result<Response<SandboxListResponse>, Status> {
        self.handle("SandboxList", request, |shared, req| async move {
            sandboxes::list(&shared, req)
        })
        .await
    }

    async fn sandbox_terminate(
        &self,
        request: Request<SandboxTerminateRequest>,
    ) -> Result<Response<SandboxTerminateResponse>, Status> {
        self.handle("SandboxTerminate", request, |shared, req| async move {
            sandboxes::terminate(&shared, req).await
        })
        .await
    }

    async fn sandbox_wait(
        &self,
        request: Request<SandboxWaitRequest>,
    ) -> Result<Response<SandboxWaitResponse>, Status> {
        self.handle("SandboxWait", request, |shared, req| async move {
            sandboxes::wait(&shared, req).await
        })
        .await
    }

    // ---- issue 13: volumes ----
    async fn volume_get_or_create(
        &self,
        request: Request<VolumeGetOrCreateRequest>,
    ) -> Result<Response<VolumeGetOrCreateResponse>, Status> {
        self.handle("VolumeGetOrCreate", request, |shared, req| async move {
            volumes::get_or_create(&shared, req)
        })
        .await
    }

    // ---- costs and failure logs (issue 13 items 4, 5) ----

    type SandboxGetLogsStream = usage::LogStream;

    async fn sandbox_get_logs(
        &self,
        request: Request<modal_proto::SandboxGetLogsRequest>,
    ) -> Result<Response<Self::SandboxGetLogsStream>, Status> {
        self.handle("SandboxGetLogs", request, |shared, req| async move {
            usage::logs(&shared, req).await
        })
        .await
    }

    async fn sandbox_get_stats(
        &self,
        request: Request<modal_proto::SandboxGetStatsRequest>,
    ) -> Result<Response<modal_proto::SandboxGetStatsResponse>, Status> {
        self.handle("SandboxGetStats", request, |shared, req| async move {
            usage::stats(&shared, req)
        })
        .await
    }
}
