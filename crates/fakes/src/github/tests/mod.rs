//! Behaviour tests of the fake GitHub and the fake runner together, over
//! real HTTP on 127.0.0.1, plus the helpers they share.

mod flow;
mod rest;
mod scalesets;
mod scopes;
mod webhooks;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};

use super::*;
use crate::runner;

const SECRET: &str = "It's a Secret to Everybody";
const REPO: &str = "acme/widgets";

/// One webhook as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    guid: String,
    signature_ok: bool,
    /// `X-GitHub-Hook-Installation-Target-Type`.
    target_type: String,
    body: Value,
}

/// A tiny webhook receiver that checks signatures.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `(action, workflow_job.status)` of the workflow_job events of `job_id`.
    fn job_events(&self, job_id: u64) -> Vec<(String, String)> {
        self.seen()
            .into_iter()
            .filter(|r| r.event == "workflow_job" && r.body["workflow_job"]["id"] == job_id)
            .map(|r| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (text(&r.body["action"]), text(&r.body["workflow_job"]["status"]))
            })
            .collect()
    }
}

async fn receive(State(seen): State<Arc<Mutex<Vec<Received>>>>, headers: HeaderMap, body: Bytes) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let received = Received {
        event: header("x-github-event"),
        guid: header("x-github-delivery"),
        signature_ok: header("x-hub-signature-256") == sign_sha256(SECRET.as_bytes(), &body),
        target_type: header("x-github-hook-installation-target-type"),
        body: parse_body(&header("content-type"), &body),
    };
    seen.lock().unwrap_or_else(PoisonError::into_inner).push(received);
}

/// The JSON of a delivery: the body itself, or the `payload` form field.
fn parse_body(content_type: &str, body: &[u8]) -> Value {
    let json = if content_type == ContentType::Form.mime() {
        form_urlencoded::parse(body)
            .find(|(name, _)| name == "payload")
            .map(|(_, payload)| payload.into_owned().into_bytes())
            .unwrap_or_default()
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&json).unwrap_or(Value::Null)
}

async fn start_fake() -> FakeGitHub {
    let fake = FakeGitHub::start(FakeGitHubConfig::default())
        .await
        .expect("fake starts");
    fake.add_repo(REPO);
    fake
}

/// Calls the fake's REST API with the default token.
async fn api(fake: &FakeGitHub, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
    api_with_token(fake, &FakeGitHubConfig::default().token, method, path, body).await
}

async fn api_with_token(
    fake: &FakeGitHub,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> HttpResponse {
    let client = HttpClient::one_shot(Duration::from_secs(10));
    let auth = format!("Bearer {token}");
    let bytes = body
        .map(|b| serde_json::to_vec(&b).expect("json"))
        .unwrap_or_default();
    let url = format!("{}{path}", fake.api_url());
    client
        .send(
            method,
            &url,
            &[("authorization", &auth), ("content-type", "application/json")],
            &bytes,
        )
        .await
        .expect("fake answers")
}

async fn register(fake: &FakeGitHub, name: &str, labels: &[&str]) -> HttpResponse {
    let body = json!({ "name": name, "runner_group_id": 1, "labels": labels, "work_folder": "_work" });
    api(
        fake,
        "POST",
        &format!("/repos/{REPO}/actions/runners/generate-jitconfig"),
        Some(body),
    )
    .await
}

/// Registers a runner and returns its encoded JIT config.
async fn jit_config(fake: &FakeGitHub, name: &str, labels: &[&str]) -> String {
    let answer = register(fake, name, labels).await;
    assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&answer.body));
    let body = answer.json().expect("json");
    body["encoded_jit_config"].as_str().expect("config").to_owned()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fake-gh-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs a fake runner in its own temp dir in the background.
fn spawn_runner(config: String) -> tokio::task::JoinHandle<Result<(), runner::FakeRunnerError>> {
    tokio::spawn(async move {
        let dir = temp_dir();
        let result = runner::run_in(&dir, Some(config)).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    })
}

const WAIT: Duration = Duration::from_secs(10);
