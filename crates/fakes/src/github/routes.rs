//! The request pipeline: route a request, check the token, apply rate
//! limits, injected faults and latency, run the endpoint, add GitHub's
//! headers and record the call.
//!
//! All requests go through one axum fallback handler so that routing, the
//! 404 answer and the call log stay in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use super::faults::{Fault, RateSnapshot, Refusal, Route, epoch_secs, take_fault};
use super::paths::Endpoint;
use super::records::CallRecord;
use super::views::Scope;
use super::{ACTIONS_PATH, DOCS_URL, Shared, actions, app, broker, endpoints};
use sha2::{Digest, Sha256};

/// An answer before GitHub's common headers are added.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            headers: Vec::new(),
        }
    }

    /// GitHub's `basic-error` shape.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(
            status,
            json!({ "message": message, "documentation_url": DOCS_URL, "status": status.to_string() }),
        )
    }

    pub fn not_found() -> Self {
        Self::error(404, "Not Found")
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Adds the rate-limit and content headers every GitHub answer has.
    fn into_response(mut self, rate: RateSnapshot) -> Response {
        if !self.has_header("x-ratelimit-remaining") {
            self = self
                .with_header("x-ratelimit-limit", rate.limit.to_string())
                .with_header("x-ratelimit-remaining", rate.remaining.to_string())
                .with_header("x-ratelimit-reset", rate.reset_epoch.to_string());
        }
        for (name, value) in [
            ("x-ratelimit-used", rate.used.to_string()),
            ("x-ratelimit-resource", "core".to_owned()),
            ("x-github-api-version-selected", "2022-11-28".to_owned()),
            ("x-github-request-id", request_id()),
        ] {
            if !self.has_header(name) {
                self = self.with_header(name, value);
            }
        }
        let body = self
            .body
            .map(|v| serde_json::to_vec(&v).unwrap_or_default())
            .unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        for (name, value) in self.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => {
                    tracing::warn!(header = %name, "fake GitHub: skipping an invalid injected header")
                }
            }
        }
        response
    }
}

fn request_id() -> String {
    format!(
        "{:04X}:{:05X}:{:06X}",
        fastrand::u16(..),
        fastrand::u32(..0xFFFFF),
        fastrand::u32(..0xFFFFFF)
    )
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    count: usize,
}

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let count = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Self { counter, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The single axum handler.
pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix(ACTIONS_PATH) {
        return actions::handle(&shared, &method, rest, &body).await;
    }
    if let Some(rest) = path.strip_prefix(broker::BROKER_PATH) {
        return broker::handle(&shared, &method, rest, uri.query(), &headers, &body).await;
    }
    let registration = format!("{}/actions/runner-registration", shared.lock().api_prefix);
    if method == Method::POST && path == registration {
        return broker::runner_registration(&shared, &headers, &body);
    }
    let at = SystemTime::now();
    let started = Instant::now();
    let prefix = shared.lock().api_prefix.clone();
    let endpoint = path
        .strip_prefix(prefix.as_str())
        .and_then(|rest| Endpoint::parse(&method, rest));
    let route = endpoint.as_ref().map_or(Route::NotFound, Endpoint::route);
    let caller = endpoint.as_ref().and_then(|e| identify(&shared, &headers, e));
    let (reply, charged) = match (&endpoint, &caller) {
        (None, _) => (Reply::not_found(), false),
        (Some(_), None) => (Reply::error(401, "Bad credentials"), false),
        (Some(endpoint), Some(caller)) => {
            process(&shared, &method, caller, endpoint, uri.query(), &body).await
        }
    };
    // A classic token's scopes come with every answer to it (docs/github.md §2.1).
    let reply = match shared.lock().token_scopes.clone() {
        Some(scopes) if caller == Some(Caller::Token) => reply.with_header("x-oauth-scopes", scopes),
        _ => reply,
    };
    let reply = conditional(&method, &headers, reply);
    // A 304 does not count against the primary budget, as on GitHub (docs/github.md §2.6).
    let refund = charged && reply.status == 304;
    let record = CallRecord {
        method: method.to_string(),
        path: path.to_owned(),
        query: uri.query().map(str::to_owned),
        body: serde_json::from_slice(&body).ok(),
        status: reply.status,
        route,
        scope: endpoint.as_ref().and_then(Endpoint::scope),
        installation: match caller {
            Some(Caller::Installation(id)) => Some(id),
            _ => None,
        },
        counted: charged && !refund,
        at,
        duration: started.elapsed(),
    };
    let rate = {
        let mut state = shared.lock();
        if refund {
            state.rates.refund_core();
        }
        state.calls.push(record);
        state.rates.snapshot()
    };
    reply.into_response(rate)
}

/// Who made a call, as its bearer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The personal access token.
    Token,
    /// An installation token of this installation.
    Installation(u64),
    /// The App itself, with its JWT.
    App,
}

/// Gives a GET's 200 answer its `ETag` (a digest of the body and the `Link` header), and
/// answers `304 Not Modified` without a body when the request's `If-None-Match` names it.
fn conditional(method: &Method, headers: &HeaderMap, reply: Reply) -> Reply {
    if method != Method::GET || reply.status != 200 {
        return reply;
    }
    let mut digest = Sha256::new();
    if let Some(body) = &reply.body {
        digest.update(serde_json::to_vec(body).unwrap_or_default());
    }
    for (name, value) in &reply.headers {
        if name.eq_ignore_ascii_case("link") {
            digest.update(value.as_bytes());
        }
    }
    let etag = format!("W/\"{}\"", hex::encode(&digest.finalize()[..16]));
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        // Weak comparison, as for every GET: `W/"x"` and `"x"` match.
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag.trim_start_matches("W/")
        });
    if matches {
        return Reply {
            status: 304,
            body: None,
            headers: vec![("etag".to_owned(), etag)],
        };
    }
    reply.with_header("etag", etag)
}

/// Runs one recognised request through the installation's reach, the limits, faults and
/// latency; says whether it was charged to the primary budget (refusals are not).
async fn process(
    shared: &Arc<Shared>,
    method: &Method,
    caller: &Caller,
    endpoint: &Endpoint,
    query: Option<&str>,
    body: &[u8],
) -> (Reply, bool) {
    if let Caller::Installation(id) = caller
        && let Some(refusal) = installation_refusal(&shared.lock(), endpoint, *id)
    {
        return (refusal, false);
    }
    let charged = endpoint.route() != Route::RateLimit;
    let in_flight = InFlight::enter(&shared.in_flight);
    let route = endpoint.route();
    let (fault, latency) = {
        let mut state = shared.lock();
        if let Err(refusal) = state.rates.admit(route, method, in_flight.count) {
            state.rates.count_error();
            return (refusal_reply(refusal), false);
        }
        (
            take_fault(&mut state.faults, route, method),
            state.latency_for(route),
        )
    };
    if !latency.is_zero() {
        shared.sleep(latency).await;
    }
    let run = || shared.with_state(|state| endpoints::dispatch(state, endpoint, query, body));
    let reply = match fault {
        None => run(),
        Some(Fault::Hang(duration)) => {
            shared.sleep(duration).await;
            run()
        }
        Some(Fault::AfterSuccess(inner)) => {
            let real = run();
            match *inner {
                Fault::Hang(duration) => {
                    shared.sleep(duration).await;
                    real
                }
                other => immediate_fault_reply(shared, &other).unwrap_or(real),
            }
        }
        Some(other) => immediate_fault_reply(shared, &other).unwrap_or_else(run),
    };
    (reply, charged)
}

/// The answer of a fault that replaces the real one (`None` for the others).
fn immediate_fault_reply(shared: &Shared, fault: &Fault) -> Option<Reply> {
    match fault {
        Fault::Status {
            status,
            body,
            headers,
        } => {
            let mut reply = Reply::json(*status, body.clone());
            reply.headers.clone_from(headers);
            Some(reply)
        }
        Fault::SecondaryRateLimit { retry_after_secs } => {
            shared.lock().rates.count_error();
            Some(refusal_reply(Refusal::Secondary {
                retry_after_secs: *retry_after_secs,
            }))
        }
        Fault::PrimaryRateLimit { reset_in_secs } => {
            shared.lock().rates.count_error();
            Some(refusal_reply(Refusal::Primary {
                reset_epoch: epoch_secs(SystemTime::now()) + reset_in_secs,
            }))
        }
        Fault::Hang(_) | Fault::AfterSuccess(_) => None,
    }
}

/// GitHub's rate-limit answers (docs/github.md §2.5).
fn refusal_reply(refusal: Refusal) -> Reply {
    match refusal {
        Refusal::Secondary { retry_after_secs } => Reply::error(
            403,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. \
             If you reach out to GitHub Support for help, please include the request ID.",
        )
        .with_header("retry-after", retry_after_secs.to_string()),
        Refusal::Primary { reset_epoch } => {
            Reply::error(403, "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID.")
                .with_header("x-ratelimit-remaining", "0")
                .with_header("x-ratelimit-reset", reset_epoch.to_string())
                .with_header("x-ratelimit-limit", "5000")
        }
    }
}

/// The caller of `endpoint`, or `None` if its bearer is no good there: App endpoints want
/// the App's JWT; the others the token, or an installation token that has not expired.
fn identify(shared: &Shared, headers: &HeaderMap, endpoint: &Endpoint) -> Option<Caller> {
    let bearer = app::bearer(headers)?;
    let state = shared.lock();
    if endpoint.wants_jwt() {
        let app = state.app.as_ref()?;
        return app::valid_jwt(app, bearer).then_some(Caller::App);
    }
    if bearer == state.token {
        return Some(Caller::Token);
    }
    app::installation_of_token(&state, bearer).map(Caller::Installation)
}

/// GitHub's answer when an installation token is used beyond its installation: an
/// installation reaches only the account it is installed on (a repository elsewhere is
/// invisible: 404; an organisation's runners are forbidden: 403), and never an
/// enterprise's runners (docs/github.md §2.1: not usable with GitHub Apps).
fn installation_refusal(
    state: &super::state::State,
    endpoint: &Endpoint,
    installation: u64,
) -> Option<Reply> {
    let scope = endpoint.scope()?;
    let forbidden = || Reply::error(403, "Resource not accessible by integration");
    if matches!(scope, Scope::Enterprise(_)) {
        return Some(forbidden());
    }
    let covers = state
        .app
        .as_ref()
        .and_then(|app| app.installation_of(scope.owner()))
        == Some(installation);
    match scope {
        _ if covers => None,
        Scope::Repository(_) => Some(Reply::not_found()),
        _ => Some(forbidden()),
    }
}
