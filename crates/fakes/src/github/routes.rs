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
use sha2::{Digest, Sha256};

use super::faults::{Fault, RateSnapshot, Refusal, Route, epoch_secs, take_fault};
use super::records::CallRecord;
use super::{ACTIONS_PATH, DOCS_URL, Shared, actions, app, endpoints};

/// A parsed REST request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    GenerateJitConfig {
        repo: String,
    },
    ListRunners {
        repo: String,
    },
    GetRunner {
        repo: String,
        id: u64,
    },
    DeleteRunner {
        repo: String,
        id: u64,
    },
    RunnerDownloads {
        repo: String,
    },
    ListRuns {
        repo: String,
    },
    GetRun {
        repo: String,
        run_id: u64,
    },
    ListRunJobs {
        repo: String,
        run_id: u64,
    },
    GetJob {
        repo: String,
        job_id: u64,
    },
    GetContents {
        repo: String,
        path: String,
    },
    ListDeliveries {
        repo: String,
        hook_id: u64,
    },
    Redeliver {
        repo: String,
        hook_id: u64,
        delivery_id: u64,
    },
    RateLimit,
    CreateInstallationToken {
        installation_id: u64,
    },
    RepoInstallation {
        repo: String,
    },
}

impl Endpoint {
    /// Recognises the endpoints of docs/github.md §1–2; `None` means 404.
    pub fn parse(method: &Method, path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["rate_limit"]) => Some(Endpoint::RateLimit),
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                Some(Endpoint::CreateInstallationToken {
                    installation_id: id.parse().ok()?,
                })
            }
            (method, ["repos", owner, name, rest @ ..]) if !owner.is_empty() && !name.is_empty() => {
                Self::parse_repo(method, format!("{owner}/{name}"), rest)
            }
            _ => None,
        }
    }

    fn parse_repo(method: &str, repo: String, rest: &[&str]) -> Option<Self> {
        let num = |s: &str| s.parse::<u64>().ok();
        Some(match (method, rest) {
            ("POST", ["actions", "runners", "generate-jitconfig"]) => Endpoint::GenerateJitConfig { repo },
            ("GET", ["installation"]) => Endpoint::RepoInstallation { repo },
            ("GET", ["actions", "runners"]) => Endpoint::ListRunners { repo },
            ("GET", ["actions", "runners", "downloads"]) => Endpoint::RunnerDownloads { repo },
            ("GET", ["actions", "runners", id]) => Endpoint::GetRunner { repo, id: num(id)? },
            ("DELETE", ["actions", "runners", id]) => Endpoint::DeleteRunner { repo, id: num(id)? },
            ("GET", ["actions", "runs"]) => Endpoint::ListRuns { repo },
            ("GET", ["actions", "runs", id]) => Endpoint::GetRun {
                repo,
                run_id: num(id)?,
            },
            ("GET", ["actions", "runs", id, "jobs"]) => Endpoint::ListRunJobs {
                repo,
                run_id: num(id)?,
            },
            ("GET", ["actions", "jobs", id]) => Endpoint::GetJob {
                repo,
                job_id: num(id)?,
            },
            ("GET", ["contents", path @ ..]) if !path.is_empty() => Endpoint::GetContents {
                repo,
                path: percent_decode(&path.join("/"))?,
            },
            ("GET", ["hooks", hook, "deliveries"]) => Endpoint::ListDeliveries {
                repo,
                hook_id: num(hook)?,
            },
            ("POST", ["hooks", hook, "deliveries", id, "attempts"]) => Endpoint::Redeliver {
                repo,
                hook_id: num(hook)?,
                delivery_id: num(id)?,
            },
            _ => return None,
        })
    }

    pub fn route(&self) -> Route {
        match self {
            Endpoint::GenerateJitConfig { .. } => Route::GenerateJitConfig,
            Endpoint::ListRunners { .. } => Route::ListRunners,
            Endpoint::GetRunner { .. } => Route::GetRunner,
            Endpoint::DeleteRunner { .. } => Route::DeleteRunner,
            Endpoint::RunnerDownloads { .. } => Route::RunnerDownloads,
            Endpoint::ListRuns { .. } => Route::ListRuns,
            Endpoint::GetRun { .. } => Route::GetRun,
            Endpoint::ListRunJobs { .. } => Route::ListRunJobs,
            Endpoint::GetJob { .. } => Route::GetJob,
            Endpoint::GetContents { .. } => Route::GetContents,
            Endpoint::ListDeliveries { .. } => Route::ListHookDeliveries,
            Endpoint::Redeliver { .. } => Route::RedeliverHookDelivery,
            Endpoint::RateLimit => Route::RateLimit,
            Endpoint::CreateInstallationToken { .. } => Route::CreateInstallationToken,
            Endpoint::RepoInstallation { .. } => Route::RepoInstallation,
        }
    }
}

/// Decodes `%XX` escapes of a URL path; `None` if malformed or not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

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
    let at = SystemTime::now();
    let started = Instant::now();
    let endpoint = Endpoint::parse(&method, path);
    let route = endpoint.as_ref().map_or(Route::NotFound, Endpoint::route);
    let (reply, charged) = match &endpoint {
        None => (Reply::not_found(), false),
        Some(endpoint) => process(&shared, &method, &headers, endpoint, uri.query(), &body).await,
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

/// Runs one recognised request through auth, limits, faults and latency; says whether it
/// was charged to the primary budget.
async fn process(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    endpoint: &Endpoint,
    query: Option<&str>,
    body: &[u8],
) -> (Reply, bool) {
    let charged = endpoint.route() != Route::RateLimit;
    let reply = process_admitted(shared, method, headers, endpoint, query, body).await;
    match reply {
        Admitted::Yes(reply) => (reply, charged),
        Admitted::No(reply) => (reply, false),
    }
}

/// An answer, and whether the request got past auth and the limits.
enum Admitted {
    Yes(Reply),
    No(Reply),
}

async fn process_admitted(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    endpoint: &Endpoint,
    query: Option<&str>,
    body: &[u8],
) -> Admitted {
    let app_endpoint = matches!(
        endpoint,
        Endpoint::CreateInstallationToken { .. } | Endpoint::RepoInstallation { .. }
    );
    let allowed = if app_endpoint {
        app_authorized(shared, headers)
    } else {
        authorized(shared, headers)
    };
    if !allowed {
        return Admitted::No(Reply::error(401, "Bad credentials"));
    }
    let in_flight = InFlight::enter(&shared.in_flight);
    let route = endpoint.route();
    let (fault, latency) = {
        let mut state = shared.lock();
        if let Err(refusal) = state.rates.admit(route, method, in_flight.count) {
            state.rates.count_error();
            return Admitted::No(refusal_reply(refusal));
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
    Admitted::Yes(match fault {
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
    })
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

/// `Authorization: Bearer <token>` or `token <token>` with the current token, or with an
/// installation token of the App that has not expired.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = app::bearer(headers) else {
        return false;
    };
    let state = shared.lock();
    token == state.token || app::valid_installation_token(&state, token)
}

/// The App endpoints want a JWT signed with the App's key.
fn app_authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let app = shared.lock().app.clone();
    match (app, app::bearer(headers)) {
        (Some(app), Some(jwt)) => app::valid_jwt(&app, jwt),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_recognised_by_method_and_path() {
        let parse = |m: Method, p: &str| Endpoint::parse(&m, p);
        assert_eq!(
            parse(Method::POST, "/repos/acme/w/actions/runners/generate-jitconfig"),
            Some(Endpoint::GenerateJitConfig {
                repo: "acme/w".into()
            })
        );
        assert_eq!(
            parse(Method::GET, "/repos/acme/w/actions/runners/downloads"),
            Some(Endpoint::RunnerDownloads {
                repo: "acme/w".into()
            })
        );
        assert_eq!(
            parse(Method::DELETE, "/repos/acme/w/actions/runners/12"),
            Some(Endpoint::DeleteRunner {
                repo: "acme/w".into(),
                id: 12
            })
        );
        assert_eq!(
            parse(Method::GET, "/repos/acme/w/contents/.github/workflows/ci%20x.yml"),
            Some(Endpoint::GetContents {
                repo: "acme/w".into(),
                path: ".github/workflows/ci x.yml".into()
            })
        );
        assert_eq!(parse(Method::GET, "/rate_limit"), Some(Endpoint::RateLimit));
        assert_eq!(parse(Method::POST, "/repos/acme/w/actions/runners"), None);
        assert_eq!(parse(Method::GET, "/repos/acme/w/actions/runners/abc"), None);
        assert_eq!(parse(Method::GET, "/nope"), None);
    }

    #[test]
    fn percent_decoding_rejects_truncated_escapes() {
        assert_eq!(percent_decode("a%2Fb"), Some("a/b".into()));
        assert_eq!(percent_decode("a%2"), None);
    }
}
