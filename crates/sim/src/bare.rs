//! `sim bare-server` (hidden): the ingress benchmark's baseline. The service's own HTTP
//! stack (`ingress::server`, the same accept loop, limits and runtime) with a webhook route
//! that reads the body, checks its HMAC and answers 202, and keeps nothing: what any
//! webhook receiver on this machine must pay. The service's figures are printed as a
//! fraction of this one's, so they compare across machines.
//!
//! It runs as a child process, as the service does, and is told its secret through
//! `WEBHOOK_SECRET` (never an argument); it prints `listening on PORT` once it accepts.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use modal_github_runner::ingress::{self, ServerContext, ServerLimits, WarnThrottle, signature};
use modal_github_runner::metrics::Metrics;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The service's default `MAX_BODY_BYTES`.
const MAX_BODY: usize = 1024 * 1024;

/// Serves until killed.
pub async fn serve() -> ExitCode {
    let Ok(secret) = std::env::var("WEBHOOK_SECRET") else {
        eprintln!("bare server: WEBHOOK_SECRET is not set");
        return ExitCode::FAILURE;
    };
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare server: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    println!("listening on {port}");
    let router = Router::new()
        .route("/webhook", post(webhook))
        .with_state(Arc::new(secret));
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(30),
        max_connections: 1024,
    };
    let ctx = ServerContext {
        metrics: Arc::new(Metrics::new()),
        warnings: Arc::new(WarnThrottle::new(Duration::from_secs(10))),
    };
    ingress::serve(listener, router, limits, ctx, CancellationToken::new()).await;
    ExitCode::SUCCESS
}

async fn webhook(State(secret): State<Arc<String>>, headers: HeaderMap, body: Body) -> Response {
    let Ok(raw) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let header = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    match signature::verify(secret.as_bytes(), &raw, header) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"status": "accepted"})),
        )
            .into_response(),
        Err(_) => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// A running bare server; killed when dropped.
pub struct BareServer {
    _child: tokio::process::Child,
    pub port: u16,
}

/// Starts this binary's `bare-server` with `secret` and waits for its port.
pub async fn start(secret: &str) -> Result<BareServer, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("bare-server")
        .env("WEBHOOK_SECRET", secret)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the bare server: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the bare server's output is not captured")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| "the bare server did not start within 10 s".to_string())?
        .map_err(|e| format!("cannot read the bare server's output: {e}"))?;
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("unexpected first line from the bare server: {line:?}"))?;
    Ok(BareServer { _child: child, port })
}
