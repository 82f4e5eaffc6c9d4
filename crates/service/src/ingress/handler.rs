use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::event;
use super::signature::{self, SignatureError};
use crate::domain::JobEvent;
use crate::domain::RepoAllowList;
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

/// Longest time a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A delivery that was handled: recorded, recognised as a repeat, or deliberately ignored.
#[derive(Debug)]
enum Answer {
    Accepted,
    Duplicate,
    Ignored(String),
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
    #[error("content type {0:?} is not supported")]
    ContentType(String),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("repository {0} is not in ALLOWED_REPOS")]
    RepoNotAllowed(String),
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
            Refusal::MissingHeader(_) | Refusal::Malformed(_) | Refusal::Body(_) => StatusCode::BAD_REQUEST,
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::RepoNotAllowed(_) => StatusCode::FORBIDDEN,
            Refusal::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric label and the text the sender sees: fixed strings, nothing internal.
    fn kind(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "payload too large",
            Refusal::Signature(_) => "invalid signature",
            Refusal::MissingHeader(_) => "missing header",
            Refusal::ContentType(_) => "unsupported content type",
            Refusal::Malformed(_) | Refusal::Body(_) => "malformed payload",
            Refusal::RepoNotAllowed(_) => "repository not allowed",
            Refusal::Store(_) => "internal error",
        }
    }
}

async fn webhook(State(s): State<Ingress>, headers: HeaderMap, body: Body) -> Response {
    let delivery = header_str(&headers, "x-github-delivery")
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
            };
            s.metrics.webhook(label);
            (status, axum::Json(body)).into_response()
        }
        Err(refusal) => {
            s.metrics.webhook(refusal.kind());
            if matches!(refusal, Refusal::Store(_)) {
                tracing::error!(delivery = %delivery, error = %refusal, "webhook not recorded");
            } else {
                tracing::warn!(delivery = %delivery, reason = %refusal, "webhook refused");
            }
            (refusal.status(), axum::Json(json!({"error": refusal.kind()}))).into_response()
        }
    }
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
    let json = json_payload(headers, &raw)?;
    match event {
        "workflow_job" => {}
        "ping" => return Ok(Answer::Ignored("ping".into())),
        other => return Ok(Answer::Ignored(format!("event {other} is not handled"))),
    }
    let job = event::parse(&json).map_err(|e| Refusal::Malformed(e.to_string()))?;
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
    record(s, delivery, job).await
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
