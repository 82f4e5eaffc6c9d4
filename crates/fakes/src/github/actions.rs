//! A stand-in for the Actions service that runners talk to (not part of
//! GitHub's REST API). It lives under `/_fake/actions/`, where the JIT
//! config's `ServerUrl` points, and authenticates runners by the OAuth
//! `clientId` from their `.credentials` (nothing else knows it).
//!
//! * `POST connect  {agent_id, client_id}` → `{"behavior": …}`; the runner is online.
//! * `POST acquire  {agent_id, client_id}` → 200 `{job_id, duration_ms, conclusion}`,
//!   204 when nothing matches yet, 410 when the registration was deleted.
//! * `POST renew    {agent_id, client_id, job_id}` → 200 while the job runs,
//!   410 when it was cancelled (the real runner's job-lock renewal, which
//!   also keeps a busy runner online).
//! * `POST complete {agent_id, client_id, job_id}` → 200, or 410 if cancelled.
//!
//! Wrong credentials answer 401. Faults and latency never apply here.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::runners::{CompleteOutcome, RunnerAuth};
use super::scenario::RunnerBehavior;

/// Body of every fake Actions call.
#[derive(Debug, Deserialize)]
struct RunnerCall {
    agent_id: u64,
    client_id: String,
    #[serde(default)]
    job_id: Option<u64>,
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn status_only(status: StatusCode) -> Response {
    status.into_response()
}

/// Routes `/_fake/actions/<rest>`.
pub(super) async fn handle(shared: &Arc<Shared>, method: &Method, rest: &str, body: &[u8]) -> Response {
    if method != Method::POST {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Ok(call) = serde_json::from_slice::<RunnerCall>(body) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "message": "expected {agent_id, client_id}" }),
        );
    };
    let auth = shared.lock().authenticate(call.agent_id, &call.client_id);
    match auth {
        RunnerAuth::Unknown => {
            return answer(StatusCode::UNAUTHORIZED, json!({ "message": "Bad credentials" }));
        }
        RunnerAuth::Retired => return status_only(StatusCode::GONE),
        RunnerAuth::Live => {}
    }
    match (rest, call.job_id) {
        ("connect", _) => connect(shared, call.agent_id),
        ("acquire", _) => acquire(shared, call.agent_id),
        ("renew", Some(job_id)) => renew(shared, call.agent_id, job_id),
        ("complete", Some(job_id)) => complete(shared, call.agent_id, job_id),
        ("renew" | "complete", None) => {
            answer(StatusCode::BAD_REQUEST, json!({ "message": "job_id missing" }))
        }
        _ => status_only(StatusCode::NOT_FOUND),
    }
}

/// Tells the runner how to behave. The user's chooser runs outside the lock
/// (it may call back into the fake).
fn connect(shared: &Arc<Shared>, agent_id: u64) -> Response {
    let (name, chooser) = {
        let state = shared.lock();
        let name = state
            .runners
            .get(&agent_id)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        (name, state.runner_behavior.clone())
    };
    let behavior = chooser.map_or(RunnerBehavior::Normal, |choose| choose(&name));
    if let Some(runner) = shared.lock().runners.get_mut(&agent_id) {
        runner.asked = true;
    }
    if behavior != RunnerBehavior::NeverConnect {
        let mut state = shared.lock();
        let version = state.runner_version.clone();
        if let Some(runner) = state.runners.get_mut(&agent_id) {
            runner.connected = true;
            runner.last_seen = Some(Instant::now());
            runner.version = Some(version);
        }
    }
    answer(StatusCode::OK, json!({ "behavior": behavior.as_str() }))
}

fn acquire(shared: &Arc<Shared>, agent_id: u64) -> Response {
    let assigned = shared.with_state(|state| {
        let job_id = state.acquire(agent_id)?;
        let job = state.jobs.get(&job_id)?;
        let duration_ms = u64::try_from(job.duration.as_millis()).unwrap_or(u64::MAX);
        Some(json!({ "job_id": job_id, "duration_ms": duration_ms, "conclusion": job.planned_conclusion }))
    });
    match assigned {
        Some(body) => answer(StatusCode::OK, body),
        None => status_only(StatusCode::NO_CONTENT),
    }
}

fn renew(shared: &Arc<Shared>, agent_id: u64, job_id: u64) -> Response {
    if shared.with_state(|state| state.renew(agent_id, job_id)) {
        answer(StatusCode::OK, json!({ "job_id": job_id }))
    } else {
        status_only(StatusCode::GONE)
    }
}

fn complete(shared: &Arc<Shared>, agent_id: u64, job_id: u64) -> Response {
    match shared.with_state(|state| state.complete(agent_id, job_id)) {
        CompleteOutcome::Completed => answer(StatusCode::OK, json!({ "job_id": job_id })),
        CompleteOutcome::Cancelled => status_only(StatusCode::GONE),
        CompleteOutcome::NotAssigned => answer(
            StatusCode::CONFLICT,
            json!({ "message": "this job is not assigned to this runner" }),
        ),
    }
}
