//! A client for the subset of Modal's control-plane API that sandboxes need
//! (docs/modal.md): metadata on every call (§1.2), TLS to api.modal.com or plaintext
//! h2c for `http://` test servers, message limits raised (docs/modal.md §1.5), transient codes retried with
//! capped backoff under one idempotency key per call, and server-directed throttling
//! (`RPCRetryPolicy` in the status details, docs/modal.md §1.5) honoured.

use std::future::Future;
use std::time::{Duration, Instant};

use prost::Message;
use secrecy::{ExposeSecret, SecretString};
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::proto::modal_client_client::ModalClientClient;
use super::proto::{RpcRetryPolicy, RpcStatus};
use crate::retry::Backoff;

/// Where and as whom to talk to Modal.
#[derive(Clone)]
pub struct ModalConnection {
    /// `https://api.modal.com:443` by default; `http://` means plaintext (tests).
    pub server_url: String,
    pub token_id: String,
    pub token_secret: SecretString,
    /// Longest total wait for server-directed throttling of one call.
    pub max_throttle_wait: Duration,
    /// Retries of transient failures.
    pub retry: Backoff,
}

impl std::fmt::Debug for ModalConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModalConnection")
            .field("server_url", &self.server_url)
            .field("token_id", &self.token_id)
            .field("token_secret", &"[redacted]")
            .finish()
    }
}

/// A failed Modal call. Messages come from Modal or from the transport; they never hold
/// the token or a secret's contents.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Modal {rpc} failed ({code:?}): {message}")]
pub struct ModalError {
    pub rpc: &'static str,
    pub code: Code,
    pub message: String,
}

impl ModalError {
    /// Codes worth retrying (libmodal's set, plus RESOURCE_EXHAUSTED: Modal's creation
    /// rate limit clears within a second).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code,
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Internal
                | Code::Unknown
                | Code::ResourceExhausted
        )
    }
}

/// Client type and version sent on every call. Modal has no client type for Rust; the
/// server requires one it knows, so this is libmodal-go's (9) with the Python-SDK-level
/// version libmodal sends ("Behaves like this Python SDK version"), as docs/modal.md §1.2 says.
const CLIENT_TYPE: &str = "9";
const CLIENT_VERSION: &str = "1.0.0";
/// libmodal's message-size limit.
const MAX_MESSAGE: usize = 100 * 1024 * 1024;

/// The connection, cheap to clone.
#[derive(Clone)]
pub struct ModalApi {
    client: ModalClientClient<Channel>,
    conn: ModalConnection,
}

impl ModalApi {
    /// Builds a lazily connecting channel: nothing is sent until the first call.
    pub fn new(conn: ModalConnection) -> Result<ModalApi, ModalError> {
        crate::tls::install_crypto_provider();
        let invalid = |m: String| ModalError {
            rpc: "connect",
            code: Code::InvalidArgument,
            message: m,
        };
        let mut endpoint = Endpoint::from_shared(conn.server_url.clone())
            .map_err(|e| invalid(format!("MODAL_SERVER_URL is not a URL: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(64 * 1024 * 1024)
            .initial_connection_window_size(64 * 1024 * 1024);
        if conn.server_url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| invalid(format!("TLS setup failed: {e}")))?;
        } else if !conn.server_url.starts_with("http://") {
            return Err(invalid(
                "MODAL_SERVER_URL must start with https:// or http://".into(),
            ));
        }
        let client = ModalClientClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(ModalApi { client, conn })
    }

    /// Runs one unary RPC with retries. `call` gets a fresh client and request per try;
    /// every try carries the same idempotency key.
    pub async fn unary<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        request: Req,
        deadline: Duration,
        call: F,
    ) -> Result<Resp, ModalError>
    where
        Req: Clone,
        F: Fn(ModalClientClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let key = new_idempotency_key();
        self.unary_except(rpc, request, deadline, &key, &[], call).await
    }

    /// Like `unary`, but the codes in `no_retry` are returned at once to the caller, which
    /// retries them its own way (a paced create goes back into the queue of slots) under
    /// the same idempotency `key`: it is still one call.
    pub async fn unary_except<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        request: Req,
        deadline: Duration,
        key: &str,
        no_retry: &[Code],
        call: F,
    ) -> Result<Resp, ModalError>
    where
        Req: Clone,
        F: Fn(ModalClientClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let started = Instant::now();
        let (mut attempt, mut throttled) = (0u32, 0u32);
        let mut last_delay = Duration::ZERO;
        loop {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(deadline);
            self.metadata(req.metadata_mut(), key, attempt, throttled, last_delay);
            let status = match call(self.client.clone(), req).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => status,
            };
            if let Some(wait) = server_retry_after(&status)
                && started.elapsed() + wait <= self.conn.max_throttle_wait
            {
                let wait = wait.max(Duration::from_millis(100));
                tracing::debug!(
                    rpc,
                    wait_ms = wait.as_millis() as u64,
                    "Modal asked to retry later"
                );
                tokio::time::sleep(wait).await;
                throttled += 1;
                last_delay = wait;
                continue;
            }
            let err = ModalError {
                rpc,
                code: status.code(),
                message: status.message().to_string(),
            };
            if err.is_transient() && !no_retry.contains(&err.code) && attempt + 1 < self.conn.retry.attempts {
                let wait = self.conn.retry.delay(attempt);
                tracing::debug!(rpc, code = ?err.code, wait_ms = wait.as_millis() as u64, "retrying Modal call");
                tokio::time::sleep(wait).await;
                attempt += 1;
                last_delay = wait;
                continue;
            }
            return Err(err);
        }
    }

    /// A client and a request with metadata, for streaming calls the caller resumes itself.
    pub fn streaming_request<Req>(
        &self,
        request: Req,
        deadline: Duration,
    ) -> (ModalClientClient<Channel>, tonic::Request<Req>) {
        let mut req = tonic::Request::new(request);
        req.set_timeout(deadline);
        self.metadata(req.metadata_mut(), &new_idempotency_key(), 0, 0, Duration::ZERO);
        (self.client.clone(), req)
    }

    fn metadata(&self, md: &mut MetadataMap, key: &str, attempt: u32, throttled: u32, delay: Duration) {
        let mut put = |name: &'static str, value: &str, sensitive: bool| {
            if let Ok(mut v) = MetadataValue::try_from(value) {
                v.set_sensitive(sensitive);
                md.insert(name, v);
            }
        };
        put("x-modal-client-type", CLIENT_TYPE, false);
        put("x-modal-client-version", CLIENT_VERSION, false);
        put(
            "x-modal-libmodal-version",
            concat!("modal-github-runner/", env!("CARGO_PKG_VERSION")),
            false,
        );
        put("x-modal-token-id", &self.conn.token_id, false);
        put(
            "x-modal-token-secret",
            self.conn.token_secret.expose_secret(),
            true,
        );
        put("x-idempotency-key", key, false);
        put("x-retry-attempt", &attempt.to_string(), false);
        put("x-throttle-retry-attempt", &throttled.to_string(), false);
        put("x-retry-delay", &format!("{:.3}", delay.as_secs_f64()), false);
    }
}

/// A fresh `x-idempotency-key`: one per logical call, shared by all its tries.
pub fn new_idempotency_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The wait a server asked for in `grpc-status-details-bin` (an `RPCStatus` holding an
/// `RPCRetryPolicy`), if any.
pub fn server_retry_after(status: &tonic::Status) -> Option<Duration> {
    let details = status.details();
    if details.is_empty() {
        return None;
    }
    let decoded = RpcStatus::decode(details).ok()?;
    decoded
        .details
        .iter()
        .find(|any| any.type_url.ends_with("/modal.client.RPCRetryPolicy"))
        .and_then(|any| RpcRetryPolicy::decode(any.value.as_slice()).ok())
        .filter(|p| p.retry_after_secs.is_finite() && p.retry_after_secs >= 0.0)
        .map(|p| Duration::from_secs_f32(p.retry_after_secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::modal::proto::AnyMessage;

    #[test]
    fn a_retry_policy_in_the_status_details_is_read() {
        let policy = RpcRetryPolicy {
            retry_after_secs: 1.5,
        };
        let details = RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![AnyMessage {
                type_url: "type.googleapis.com/modal.client.RPCRetryPolicy".into(),
                value: policy.encode_to_vec(),
            }],
        };
        let status = tonic::Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            details.encode_to_vec().into(),
        );
        assert_eq!(server_retry_after(&status), Some(Duration::from_millis(1500)));
        assert_eq!(server_retry_after(&tonic::Status::unavailable("x")), None);
    }

    #[test]
    fn transient_codes_are_the_retryable_ones() {
        let e = |code| ModalError {
            rpc: "x",
            code,
            message: String::new(),
        };
        assert!(e(Code::Unavailable).is_transient());
        assert!(e(Code::ResourceExhausted).is_transient());
        assert!(!e(Code::Unauthenticated).is_transient());
        assert!(!e(Code::AlreadyExists).is_transient());
        assert!(!e(Code::InvalidArgument).is_transient());
    }

    #[test]
    fn the_debug_form_hides_the_token_secret() {
        let conn = ModalConnection {
            server_url: "http://127.0.0.1:1".into(),
            token_id: "ak-1".into(),
            token_secret: SecretString::from("as-very-secret"),
            max_throttle_wait: Duration::from_secs(1),
            retry: Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1)),
        };
        assert!(!format!("{conn:?}").contains("as-very-secret"));
    }
}
