use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::event::{self, JobDelivery};
use super::signature::{self, SignatureError};
use super::throttle::WarnThrottle;
use crate::domain::JobEvent;
use crate::domain::{RepoAllowList, Visibility};
use crate::metrics::Metrics;
use crate::store::{EventSource, Recorded, Store, StoreError};
use crate::wake::Wake;

/// Everything the webhook handler needs; cloned per request (all fields are shared).
#[derive(Clone)]
pub struct Ingress {
    pub secret: Arc<SecretString>,
    /// The label a job must request (`RUNNER_LABEL`).
    pub label: Arc<str>,
    pub allow: Arc<RepoAllowList>,
    pub store: Store,
    pub wake: Arc<Wake>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// Set once start-up work (e.g. the runner image build) is done.
    pub ready: Arc<AtomicBool>,
    /// `ALLOW_PUBLIC_REPOS`: whether jobs of public repositories are served.
    pub allow_public: bool,
    /// `STORE_RETENTION_DAYS`: deliveries whose news is older than this are replays (their
    /// job may have been pruned, and recording them would bring it back).
    pub retention: Duration,
    /// Rate-limits the warnings of refused requests (shared with the HTTP server).
    pub warnings: Arc<WarnThrottle>,
}

/// The routes of docs/design.md §6: the webhook (also at `/`, where deployments made from
/// the original guide point) and the probes.
pub fn router(state: Ingress) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .route("/", post(webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The routes of `JOB_SOURCE=scaleset`: health, readiness and metrics only. `POST /webhook`
/// answers 404: no webhook is expected, and none may inject a job.
pub fn router_without_webhooks(state: Ingress) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Longest time a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How much younger than the retention a delivery's news must be. A job is pruned by our
/// clock's time of its last event, and the check reads GitHub's times: the margin covers a
/// GitHub clock running ahead of ours.
const REPLAY_MARGIN: Duration = Duration::from_secs(3600);

/// A delivery that was handled: recorded, recognised as a repeat, or deliberately ignored.
#[derive(Debug)]
enum Answer {
    Accepted,
    Duplicate,
    Ignored(String),
    /// Ignored because its news is older than the store keeps history: a replay.
    Stale(String),
}

/// A delivery that was refused. The HTTP body names the class of problem only.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the body exceeds the size limit")]
    TooLarge,
    #[error("signature check failed: {0}")]
    Signature(#[from] SignatureError),
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the X-GitHub-Delivery header is not a GUID")]
    DeliveryId,
    #[error("content type {0:?} is not supported")]
    ContentType(String),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("repository {0} is not in ALLOWED_REPOS")]
    RepoNotAllowed(String),
    #[error("repository {0} is public; set ALLOW_PUBLIC_REPOS=true to serve it")]
    PublicRepo(String),
    #[error("could not read the body: {0}")]
    Body(String),
    #[error("could not record the event: {0}")]
    Store(#[from] StoreError),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Signature(_) => StatusCode::UNAUTHORIZED,
            Refusal::MissingHeader(_) | Refusal::DeliveryId | Refusal::Malformed(_) | Refusal::Body(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::RepoNotAllowed(_) | Refusal::PublicRepo(_) => StatusCode::FORBIDDEN,
            Refusal::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric label and the text the sender sees: fixed strings, nothing internal.
    fn kind(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "payload too large",
            Refusal::Signature(_) => "invalid signature",
            Refusal::MissingHeader(_) => "missing header",
            Refusal::DeliveryId => "invalid delivery id",
            Refusal::ContentType(_) => "unsupported content type",
            Refusal::Malformed(_) | Refusal::Body(_) => "malformed payload",
            Refusal::RepoNotAllowed(_) => "repository not allowed",
            Refusal::PublicRepo(_) => "public repository",
            Refusal::Store(_) => "internal error",
        }
    }

    /// What the sender reads: the kind, and for a refusal the operator can lift, how.
    fn message(&self) -> &'static str {
        match self {
            Refusal::PublicRepo(_) => "public repository (set ALLOW_PUBLIC_REPOS=true to serve it)",
            other => other.kind(),
        }
    }

    /// Whether the answer goes out before the whole body was read. Such an answer closes
    /// the connection, and must say so: the unread rest of the body would otherwise be
    /// taken for the next request, so hyper drops the connection, and a client keeping it
    /// alive would send its next request into a closed socket.
    fn before_body_read(&self) -> bool {
        matches!(self, Refusal::TooLarge | Refusal::Body(_))
    }
}

async fn webhook(State(s): State<Ingress>, headers: HeaderMap, body: Body) -> Response {
    // Logged only when GitHub could have sent it: a header is the sender's text.
    let delivery = header_str(&headers, "x-github-delivery")
        .filter(|d| is_guid(d))
        .unwrap_or("-")
        .to_string();
    match handle(&s, &headers, body).await {
        Ok(answer) => {
            let (status, body, label) = match answer {
                Answer::Accepted => (StatusCode::ACCEPTED, json!({"status": "accepted"}), "accepted"),
                Answer::Duplicate => (StatusCode::OK, json!({"status": "duplicate"}), "duplicate"),
                Answer::Ignored(reason) => (
                    StatusCode::OK,
                    json!({"status": "ignored", "reason": reason}),
                    "ignored",
                ),
                Answer::Stale(reason) => {
                    if let Some(held_back) = s.warnings.admit_now("stale") {
                        tracing::warn!(delivery = %delivery, reason = %reason, held_back, "old webhook ignored");
                    }
                    (
                        StatusCode::OK,
                        json!({"status": "ignored", "reason": reason}),
                        "stale",
                    )
                }
            };
            s.metrics.webhook(label);
            (status, axum::Json(body)).into_response()
        }
        Err(refusal) => refused(&s, &delivery, &refusal),
    }
}

/// The answer to a refused delivery; counted every time, logged at most once per reason
/// per interval.
fn refused(s: &Ingress, delivery: &str, refusal: &Refusal) -> Response {
    s.metrics.webhook(refusal.kind());
    if matches!(refusal, Refusal::Store(_)) {
        tracing::error!(delivery = %delivery, error = %refusal, "webhook not recorded");
    } else {
        if let Some(held_back) = s.warnings.admit_now(refusal.kind()) {
            tracing::warn!(delivery = %delivery, reason = %refusal, held_back, "webhook refused");
        }
    }
    let mut response = (refusal.status(), axum::Json(json!({"error": refusal.message()}))).into_response();
    if refusal.before_body_read() {
        response
            .headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

async fn handle(s: &Ingress, headers: &HeaderMap, body: Body) -> Result<Answer, Refusal> {
    let raw = read_body(body, s.max_body_bytes, headers).await?;
    signature::verify(
        s.secret.expose_secret().as_bytes(),
        &raw,
        header_str(headers, "x-hub-signature-256"),
    )?;
    let event = header_str(headers, "x-github-event").ok_or(Refusal::MissingHeader("X-GitHub-Event"))?;
    let delivery =
        header_str(headers, "x-github-delivery").ok_or(Refusal::MissingHeader("X-GitHub-Delivery"))?;
    if !is_guid(delivery) {
        return Err(Refusal::DeliveryId);
    }
    let json = json_payload(headers, &raw)?;
    match event {
        "workflow_job" => {}
        "ping" => return Ok(Answer::Ignored("ping".into())),
        other => return Ok(Answer::Ignored(format!("event {other} is not handled"))),
    }
    let parsed = event::parse_delivery(&json).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let job = &parsed.job;
    if !job.labels.contains(&s.label) {
        return Ok(Answer::Ignored(format!(
            "job does not request the `{}` label",
            s.label
        )));
    }
    if !job.is_actionable() {
        return Ok(Answer::Ignored(format!("action {} is not handled", job.action)));
    }
    if !s.allow.allows(&job.repo) {
        return Err(Refusal::RepoNotAllowed(job.repo.to_string()));
    }
    check_visibility(s, &parsed, delivery)?;
    if let Some(reason) = replayed(parsed.newest_at, s.store.clock().now(), s.retention) {
        return Ok(Answer::Stale(reason));
    }
    record(s, delivery, parsed.job).await
}

/// Refuses a public repository's job unless `ALLOW_PUBLIC_REPOS`; serves one of unknown
/// visibility, saying so (see `Visibility::from_fields`).
fn check_visibility(s: &Ingress, parsed: &JobDelivery, delivery: &str) -> Result<(), Refusal> {
    match parsed.visibility {
        Visibility::Public if !s.allow_public => Err(Refusal::PublicRepo(parsed.job.repo.to_string())),
        Visibility::Unknown => {
            if let Some(held_back) = s.warnings.admit_now("visibility unknown") {
                tracing::warn!(
                    delivery = %delivery,
                    repo = %parsed.job.repo,
                    held_back,
                    "the payload says neither repository.private nor repository.visibility; served as private"
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Why a delivery is a replay, if it is one: its newest timestamp is older than the store
/// keeps history, so its job may have been pruned and recording it would bring the job
/// back (and make a runner for it). The delivery GUID cannot tell: a replay can carry a
/// new one, and old GUIDs are pruned too. A delivery without a readable timestamp is not
/// refused: real payloads sometimes lack fields (docs/github.md §0.1).
fn replayed(newest_at: Option<SystemTime>, now: SystemTime, retention: Duration) -> Option<String> {
    let window = retention.saturating_sub(REPLAY_MARGIN);
    if window.is_zero() {
        return None;
    }
    let cutoff = now.checked_sub(window)?;
    if newest_at? >= cutoff {
        return None;
    }
    Some(format!(
        "the job's newest timestamp is older than the store's retention (STORE_RETENTION_DAYS={}): \
         a replay of an old delivery",
        retention.as_secs_f64() / 86_400.0
    ))
}

/// Whether `id` has the shape of the GUIDs GitHub sends in `X-GitHub-Delivery`
/// (8-4-4-4-12 hexadecimal digits). Anything else is not from GitHub, and would be kept
/// for days in the store's delivery table.
fn is_guid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

async fn record(s: &Ingress, delivery: &str, job: JobEvent) -> Result<Answer, Refusal> {
    let (repo, job_id, action, runner, queued_for) = (
        job.repo.to_string(),
        job.job_id,
        job.action.clone(),
        job.runner_name.clone().unwrap_or_default(),
        job.queued_for,
    );
    let recorded = s
        .store
        .record(Some(delivery.to_string()), job, EventSource::Webhook)
        .await?;
    match recorded {
        Recorded::Applied => {
            tracing::debug!(repo = %repo, job.id = %job_id, runner.name = %runner, action = %action, "job event recorded");
            if let Some(waited) = queued_for {
                s.metrics.job_started_after(waited.as_secs_f64());
            }
            s.wake.planner.notify_one();
            s.wake.strategy.notify_one();
            Ok(Answer::Accepted)
        }
        Recorded::Duplicate => Ok(Answer::Duplicate),
    }
}

/// Reads at most `limit` bytes; a declared or actual size above it is refused before any
/// byte is parsed.
async fn read_body(body: Body, limit: usize, headers: &HeaderMap) -> Result<bytes::Bytes, Refusal> {
    let declared = header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refusal::TooLarge);
    }
    // GitHub sends a whole delivery at once; a client trickling a body must not hold a
    // connection (and a graceful shutdown) open.
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect());
    match read.await {
        Err(_) => Err(Refusal::Body("the body did not arrive in time".into())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Refusal::TooLarge),
        Ok(Err(e)) => Err(Refusal::Body(e.to_string())),
    }
}

/// The JSON document of a delivery: the body itself, or the `payload` field of a form body
/// (GitHub's default content type).
fn json_payload(headers: &HeaderMap, raw: &bytes::Bytes) -> Result<bytes::Bytes, Refusal> {
    let content_type = header_str(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(raw.clone()),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(raw)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| bytes::Bytes::from(v.into_owned()))
            .ok_or_else(|| Refusal::Malformed("the form has no `payload` field".into())),
        _ => Err(Refusal::ContentType(content_type.to_string())),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<Ingress>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "starting"})),
        )
            .into_response();
    }
    match s.store.ping().await {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"status": "store unavailable"})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(s): State<Ingress>) -> Response {
    // Gauges of jobs and runners by state are counted at scrape time, not on every pass.
    match (s.store.job_counts().await, s.store.runner_counts().await) {
        (Ok(jobs), Ok(runners)) => s.metrics.set_counts(&jobs, &runners),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "could not count jobs and runners for /metrics")
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}
