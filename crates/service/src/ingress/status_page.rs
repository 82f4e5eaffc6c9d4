//! `GET /status` (HTML) and `GET /status.json`: the operator's view of the service.
//!
//! Access: with `STATUS_TOKEN` set, a request must carry it as a bearer token or as the
//! password of basic auth (a browser asks for it); without it, the page answers only to
//! this machine (loopback), since the page names repositories and jobs. Like the rest of
//! ingress it calls neither GitHub nor a backend: it reads the store and in-memory counters.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::status::{self, Live};
use crate::store::Store;

/// How many recent jobs the page lists.
const RECENT_JOBS: i64 = 30;

/// What the status routes need.
#[derive(Clone)]
pub struct StatusPage {
    pub store: Store,
    /// `STATUS_TOKEN`; `None`: loopback only.
    pub token: Option<Arc<SecretString>>,
    /// What only the running service knows (leader, GitHub headroom, Modal pacing).
    pub live: Arc<dyn Fn() -> Live + Send + Sync>,
}

/// The status routes, to merge beside the webhook's.
pub fn router(state: StatusPage) -> Router {
    Router::new()
        .route("/status", get(html))
        .route("/status.json", get(json_twin))
        .with_state(state)
}

async fn html(State(s): State<StatusPage>, req: Request) -> Response {
    if let Err(refused) = allowed(&s, &req) {
        return refused;
    }
    match status::gather(&s.store, RECENT_JOBS, (s.live)()).await {
        Ok(st) => Html(status::page(&st).into_string()).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn json_twin(State(s): State<StatusPage>, req: Request) -> Response {
    if let Err(refused) = allowed(&s, &req) {
        return refused;
    }
    match status::gather(&s.store, RECENT_JOBS, (s.live)()).await {
        Ok(st) => axum::Json(st).into_response(),
        Err(e) => unavailable(&e),
    }
}

fn unavailable(e: &crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "status page: could not read the store");
    let body = axum::Json(json!({"error": "store unavailable"}));
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Lets the request through, or answers why not.
#[allow(clippy::result_large_err)]
fn allowed(s: &StatusPage, req: &Request) -> Result<(), Response> {
    match &s.token {
        Some(token) if presented(req.headers()).is_some_and(|t| same(&t, token)) => Ok(()),
        Some(_) => Err((
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"modal-github-runner status\"",
            )],
            axum::Json(json!({"error": "STATUS_TOKEN required"})),
        )
            .into_response()),
        None if from_loopback(req) => Ok(()),
        None => Err((
            StatusCode::FORBIDDEN,
            axum::Json(
                json!({"error": "the status page answers only on this machine unless STATUS_TOKEN is set"}),
            ),
        )
            .into_response()),
    }
}

/// The token a request carries: `Authorization: Bearer T`, or basic auth with password T.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        return pair.split_once(':').map(|(_, password)| password.to_string());
    }
    None
}

/// Compares digests, so the time taken says nothing about how much of the token matched.
fn same(given: &str, token: &SecretString) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(token.expose_secret().as_bytes())
}

/// Whether the connection comes from this machine. Without the peer's address (a request
/// not served by our server) the answer is no.
fn from_loopback(req: &Request) -> bool {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::status::{GitHubHeadroom, Leader};

    async fn page(token: Option<&str>) -> StatusPage {
        StatusPage {
            store: Store::open("sqlite::memory:").await.expect("store"),
            token: token.map(|t| Arc::new(SecretString::from(t.to_string()))),
            live: Arc::new(|| Live {
                leader: Some(Leader {
                    replica: "this replica".into(),
                    since: 0,
                    token: None,
                    expires: None,
                }),
                github: vec![GitHubHeadroom {
                    budget: "token".into(),
                    remaining: Some(4321),
                    limit: Some(5000),
                    reset: None,
                }],
                modal: None,
                machine: None,
                scale_sets: Vec::new(),
            }),
        }
    }

    async fn get(s: StatusPage, path: &str, peer: Option<&str>, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let mut req = req.body(Body::empty()).expect("request");
        if let Some(p) = peer {
            req.extensions_mut()
                .insert(ConnectInfo(p.parse::<SocketAddr>().expect("address")));
        }
        let resp = router(s).oneshot(req).await.expect("answer");
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn without_a_token_the_page_answers_only_on_loopback() {
        let (status, body) = get(page(None).await, "/status", Some("127.0.0.1:5000"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("4321 of 5000 calls left"), "{body}");
        let (status, _) = get(page(None).await, "/status.json", Some("[::1]:5000"), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = get(page(None).await, "/status", Some("203.0.113.9:5000"), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _) = get(page(None).await, "/status.json", None, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "no peer address: not loopback");
    }

    #[tokio::test]
    async fn with_a_token_a_bearer_or_basic_password_is_required_from_anywhere() {
        let token = "status-token-0123456789";
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{token}"))
        );
        let bearer = format!("Bearer {token}");
        for auth in [bearer.as_str(), basic.as_str()] {
            let (status, body) = get(
                page(Some(token)).await,
                "/status.json",
                Some("203.0.113.9:1"),
                Some(auth),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{auth}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(json["github"][0]["remaining"], 4321);
        }
        for auth in [None, Some("Bearer wrong"), Some("Basic !!!"), Some(token)] {
            let (status, body) = get(page(Some(token)).await, "/status", Some("127.0.0.1:1"), auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert!(!body.contains(token));
        }
    }
}
