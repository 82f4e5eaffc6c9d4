use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::auth::{Auth, Credentials, Installation, InstallationToken, renew_at};
use super::error::GitHubError;
use super::types::{
    Contents, DeleteOutcome, ErrorBody, Hook, HookDelivery, JitConfig, JitRequest, JitResponse, JobList,
    RemoteJob, RemoteRun, RunList, RunnerDownload, RunnerInfo, RunnerList,
};
use crate::domain::RepoName;
use crate::metrics::Metrics;
use crate::retry::Backoff;

/// How to reach GitHub.
#[derive(Clone)]
pub struct GitHubConfig {
    /// `https://api.github.com`, `https://HOST/api/v3`, or a test server.
    pub api_url: String,
    pub credentials: Credentials,
    /// Per-request timeout (connect + answer).
    pub timeout: Duration,
    /// Retries of idempotent calls.
    pub retry: Backoff,
}

/// The last rate-limit headers seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSnapshot {
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    /// Unix seconds when the window resets.
    pub reset: Option<i64>,
}

#[derive(Default)]
struct RateState {
    seen: RateSnapshot,
    /// After a rate-limit answer every call waits until this instant: GitHub asks clients
    /// to stop, not to retry each request on its own schedule.
    blocked_until: Option<Instant>,
}

/// A GitHub REST client; cheap to clone.
#[derive(Clone)]
pub struct GitHub {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
    retry: Backoff,
    rate: Mutex<RateState>,
    metrics: Option<Arc<Metrics>>,
}

const PER_PAGE: usize = 100;
const MAX_PAGES: usize = 50;

impl GitHub {
    pub fn new(config: GitHubConfig, metrics: Option<Arc<Metrics>>) -> Result<GitHub, GitHubError> {
        crate::tls::install_crypto_provider();
        let base = Url::parse(config.api_url.trim_end_matches('/'))
            .map_err(|e| GitHubError::Transport(format!("invalid API URL: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("modal-github-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GitHubError::Transport(e.to_string()))?;
        Ok(GitHub {
            inner: Arc::new(Inner {
                http,
                base,
                auth: Auth::new(config.credentials)?,
                retry: config.retry,
                rate: Mutex::new(RateState::default()),
                metrics,
            }),
        })
    }

    /// The rate-limit headers of the last answer.
    pub fn rate(&self) -> RateSnapshot {
        self.inner.rate.lock().map(|r| r.seen).unwrap_or_default()
    }

    /// `POST /repos/{o}/{r}/actions/runners/generate-jitconfig`, tried exactly once: the
    /// endpoint is not idempotent, so the caller decides how to recover from a failure.
    pub async fn generate_jitconfig(
        &self,
        repo: &RepoName,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "runners", "generate-jitconfig"]));
        let body = serde_json::to_value(request).map_err(|e| GitHubError::Decode(e.to_string()))?;
        let reply = self.send_once(Method::POST, url, Some(&body)).await?;
        let resp: JitResponse = decode(&reply.body)?;
        Ok(JitConfig {
            runner_id: resp.runner.id,
            encoded: SecretString::from(resp.encoded_jit_config),
        })
    }

    /// The runner registered under `name`, if any (`GET …/runners?name=`).
    pub async fn runner_by_name(
        &self,
        repo: &RepoName,
        name: &str,
    ) -> Result<Option<RunnerInfo>, GitHubError> {
        let mut url = self.url(&repo_path(repo, &["actions", "runners"]));
        url.query_pairs_mut().append_pair("name", name);
        let list: RunnerList = self.get_json(url).await?;
        Ok(list.runners.into_iter().find(|r| r.name == name))
    }

    /// Every runner registered at repository scope.
    pub async fn list_runners(&self, repo: &RepoName) -> Result<Vec<RunnerInfo>, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "runners"]));
        self.get_pages(url, |l: RunnerList| l.runners).await
    }

    /// One registered runner, or `None` if GitHub no longer has it.
    pub async fn get_runner(
        &self,
        repo: &RepoName,
        runner_id: u64,
    ) -> Result<Option<RunnerInfo>, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "runners", &runner_id.to_string()]));
        match self.get_json(url).await {
            Ok(r) => Ok(Some(r)),
            Err(GitHubError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE …/runners/{id}`; a busy runner (422) is reported, not an error.
    pub async fn delete_runner(&self, repo: &RepoName, runner_id: u64) -> Result<DeleteOutcome, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "runners", &runner_id.to_string()]));
        let result = self
            .with_retries(|| self.send_once(Method::DELETE, url.clone(), None))
            .await;
        match result {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(GitHubError::NotFound) => Ok(DeleteOutcome::NotFound),
            Err(GitHubError::Invalid { status: 422, .. }) => Ok(DeleteOutcome::Busy),
            Err(e) => Err(e),
        }
    }

    /// One workflow run.
    pub async fn get_run(&self, repo: &RepoName, run_id: u64) -> Result<RemoteRun, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "runs", &run_id.to_string()]));
        self.get_json(url).await
    }

    /// Runs of a repository in `status` (queued, in_progress, …).
    pub async fn list_runs(&self, repo: &RepoName, status: &str) -> Result<Vec<RemoteRun>, GitHubError> {
        let mut url = self.url(&repo_path(repo, &["actions", "runs"]));
        url.query_pairs_mut().append_pair("status", status);
        self.get_pages(url, |l: RunList| l.workflow_runs).await
    }

    /// The latest attempt's jobs of a run.
    pub async fn run_jobs(&self, repo: &RepoName, run_id: u64) -> Result<Vec<RemoteJob>, GitHubError> {
        let mut url = self.url(&repo_path(
            repo,
            &["actions", "runs", &run_id.to_string(), "jobs"],
        ));
        url.query_pairs_mut().append_pair("filter", "latest");
        self.get_pages(url, |l: JobList| l.jobs).await
    }

    /// The runner releases GitHub currently serves to this repository.
    pub async fn runner_downloads(&self, repo: &RepoName) -> Result<Vec<RunnerDownload>, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "runners", "downloads"]));
        self.get_json(url).await
    }

    /// One job, by id (reconciling a job whose webhooks were lost).
    pub async fn get_job(&self, repo: &RepoName, job_id: u64) -> Result<RemoteJob, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "jobs", &job_id.to_string()]));
        self.get_json(url).await
    }

    /// One page of a webhook's recent deliveries, newest first, and the cursor of the next.
    pub async fn hook_deliveries(
        &self,
        hook: &Hook,
        cursor: Option<&str>,
    ) -> Result<(Vec<HookDelivery>, Option<String>), GitHubError> {
        let mut url = self.url(&hook.path(&["deliveries"]));
        url.query_pairs_mut()
            .append_pair("per_page", &PER_PAGE.to_string());
        if let Some(c) = cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let reply = self
            .with_retries(|| self.send_once(Method::GET, url.clone(), None))
            .await?;
        let items: Vec<HookDelivery> = decode(&reply.body)?;
        Ok((items, next_cursor(&reply.headers)))
    }

    /// Asks GitHub to deliver a past delivery again (same GUID).
    pub async fn redeliver(&self, hook: &Hook, delivery_id: u64) -> Result<(), GitHubError> {
        let url = self.url(&hook.path(&["deliveries", &delivery_id.to_string(), "attempts"]));
        self.send_once(Method::POST, url, None).await.map(|_| ())
    }

    /// The tag of actions/runner's latest release (e.g. `v2.336.0`).
    pub async fn latest_runner_release(&self) -> Result<String, GitHubError> {
        #[derive(serde::Deserialize)]
        struct Release {
            tag_name: String,
        }
        let url = self.url(&["repos", "actions", "runner", "releases", "latest"].map(String::from));
        let release: Release = self.get_json(url).await?;
        Ok(release.tag_name)
    }

    /// A file's text at a commit, or `None` if it does not exist there.
    pub async fn file_contents(
        &self,
        repo: &RepoName,
        path: &str,
        git_ref: Option<&str>,
    ) -> Result<Option<String>, GitHubError> {
        let mut segments = vec!["contents"];
        segments.extend(path.split('/').filter(|s| !s.is_empty()));
        let mut url = self.url(&repo_path(repo, &segments));
        if let Some(r) = git_ref {
            url.query_pairs_mut().append_pair("ref", r);
        }
        let contents: Contents = match self.get_json(url).await {
            Ok(c) => c,
            Err(GitHubError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if contents.encoding.as_deref() != Some("base64") {
            return Err(GitHubError::Decode("file contents are not base64".into()));
        }
        let packed: String = contents
            .content
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(packed)
            .map_err(|e| GitHubError::Decode(format!("file contents: {e}")))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| GitHubError::Decode("file is not UTF-8".into()))
    }

    fn url(&self, segments: &[String]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, GitHubError> {
        let reply = self
            .with_retries(|| self.send_once(Method::GET, url.clone(), None))
            .await?;
        decode(&reply.body)
    }

    async fn get_pages<L: DeserializeOwned, T>(
        &self,
        url: Url,
        items: impl Fn(L) -> Vec<T>,
    ) -> Result<Vec<T>, GitHubError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut paged = url.clone();
            paged
                .query_pairs_mut()
                .append_pair("per_page", &PER_PAGE.to_string())
                .append_pair("page", &page.to_string());
            let batch = items(self.get_json(paged).await?);
            let last = batch.len() < PER_PAGE;
            all.extend(batch);
            if last {
                break;
            }
        }
        Ok(all)
    }

    /// Retries transient failures of an idempotent call with capped, jittered backoff,
    /// waiting at least as long as GitHub asked.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, GitHubError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GitHubError>>,
    {
        let policy = self.inner.retry;
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt + 1 < policy.attempts => {
                    let wait = policy.delay(attempt).max(e.retry_after().unwrap_or_default());
                    tracing::debug!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "retrying GitHub call");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One authenticated HTTP exchange. With App credentials, a 401 means the installation
    /// token went bad: it is renewed and the request tried once more.
    async fn send_once(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, GitHubError> {
        let token = self.bearer().await?;
        let result = self.send_with(method.clone(), url.clone(), body, &token).await;
        match result {
            Err(GitHubError::Unauthorized) if matches!(self.inner.auth.credentials, Credentials::App(_)) => {
                self.inner.auth.forget().await;
                let token = self.bearer().await?;
                self.send_with(method, url, body, &token).await
            }
            other => other,
        }
    }

    /// One HTTP exchange with the given bearer: waits out a rate-limit block, sends, records
    /// rate headers and classifies the answer.
    async fn send_with(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        bearer: &SecretString,
    ) -> Result<Reply, GitHubError> {
        self.wait_for_rate_block().await;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", bearer.expose_secret()))
            .map_err(|_| GitHubError::Unauthorized)?;
        auth.set_sensitive(true);
        let mut req = self
            .inner
            .http
            .request(method, url)
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(body) = body {
            req = req.json(body);
        }
        let result = self.exchange(req).await;
        if let (Err(e), Some(m)) = (&result, &self.inner.metrics) {
            m.upstream_error(e.kind());
        }
        result
    }

    /// The bearer for REST calls: the token, or the App's installation token (renewed when
    /// it is about to expire; one caller renews while the others wait).
    async fn bearer(&self) -> Result<SecretString, GitHubError> {
        let auth = &self.inner.auth;
        if let Credentials::Token(token) = &auth.credentials {
            return Ok(token.clone());
        }
        if let Some(token) = auth.cached().await {
            return Ok(token);
        }
        let mut slot = auth.token_slot().lock().await;
        if let Some((token, renew)) = slot.as_ref()
            && *renew > Instant::now()
        {
            return Ok(token.clone());
        }
        let installation = self.installation_id().await?;
        let url =
            self.url(&["app", "installations", &installation.to_string(), "access_tokens"].map(String::from));
        let reply = self.send_with(Method::POST, url, None, &auth.jwt()?).await?;
        let fresh: InstallationToken = decode(&reply.body)?;
        let token = SecretString::from(fresh.token);
        *slot = Some((token.clone(), renew_at(&fresh.expires_at)));
        tracing::debug!(installation, "GitHub App installation token renewed");
        Ok(token)
    }

    /// `GITHUB_APP_INSTALLATION_ID`, or the installation of the discovery repository.
    async fn installation_id(&self) -> Result<u64, GitHubError> {
        let auth = &self.inner.auth;
        let mut slot = auth.installation_slot().lock().await;
        if let Some(id) = *slot {
            return Ok(id);
        }
        let repo = auth.discovery_repo().ok_or(GitHubError::Unauthorized)?;
        let url = self.url(&repo_path(repo, &["installation"]));
        let reply = self.send_with(Method::GET, url, None, &auth.jwt()?).await?;
        let found: Installation = decode(&reply.body)?;
        tracing::info!(repo = %repo, installation = found.id, "found the GitHub App's installation");
        *slot = Some(found.id);
        Ok(found.id)
    }

    async fn exchange(&self, req: reqwest::RequestBuilder) -> Result<Reply, GitHubError> {
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        self.note_rate(&headers);
        let bytes = resp.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            return Ok(Reply { headers, body: bytes });
        }
        let err = classify(status, &headers, &bytes);
        if let GitHubError::RateLimited { retry_after } = &err {
            self.block_for(*retry_after);
        }
        Err(err)
    }

    fn note_rate(&self, headers: &HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let (limit, remaining, reset) = (
            num("x-ratelimit-limit"),
            num("x-ratelimit-remaining"),
            num("x-ratelimit-reset"),
        );
        if remaining.is_none() {
            return;
        }
        if let Ok(mut rate) = self.inner.rate.lock() {
            rate.seen = RateSnapshot {
                limit,
                remaining,
                reset,
            };
        }
        if let (Some(m), Some(r)) = (&self.inner.metrics, remaining) {
            m.rate_limit_remaining(r);
        }
    }

    fn block_for(&self, wait: Duration) {
        if let Ok(mut rate) = self.inner.rate.lock() {
            let until = Instant::now() + wait;
            if rate.blocked_until.is_none_or(|b| b < until) {
                rate.blocked_until = Some(until);
            }
        }
    }

    async fn wait_for_rate_block(&self) {
        let until = self.inner.rate.lock().ok().and_then(|r| r.blocked_until);
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// The `cursor` of the `rel="next"` link, for cursor-paged lists.
fn next_cursor(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',')
        .find(|part| part.contains("rel=\"next\""))
        .and_then(|part| {
            let url = part
                .split(';')
                .next()?
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>');
            let parsed = Url::parse(url).ok()?;
            parsed
                .query_pairs()
                .find(|(k, _)| k == "cursor")
                .map(|(_, v)| v.into_owned())
        })
}

/// A successful answer.
struct Reply {
    headers: HeaderMap,
    body: bytes::Bytes,
}

fn repo_path(repo: &RepoName, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        "repos".to_string(),
        repo.owner().to_string(),
        repo.name().to_string(),
    ];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn transport_error(e: reqwest::Error) -> GitHubError {
    if e.is_timeout() {
        GitHubError::Timeout
    } else {
        // Without the URL: it is ours and adds nothing; the source says what went wrong.
        GitHubError::Transport(e.without_url().to_string())
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GitHubError> {
    serde_json::from_slice(bytes).map_err(|e| GitHubError::Decode(e.to_string()))
}

/// Maps a non-2xx answer to an error, recognising both kinds of rate limit (§2.5).
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GitHubError {
    let message: String = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let header_num = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let exhausted = header_num("x-ratelimit-remaining") == Some(0);
    let mentions_limit = message.to_ascii_lowercase().contains("rate limit");
    match status.as_u16() {
        401 => GitHubError::Unauthorized,
        403 | 429 if retry_after.is_some() || exhausted || mentions_limit || status == 429 => {
            let until_reset = header_num("x-ratelimit-reset").map(|reset| {
                let now = crate::domain::now_millis() / 1000;
                Duration::from_secs(u64::try_from(reset - now).unwrap_or(0) + 1)
            });
            let wait = retry_after
                .or(if exhausted { until_reset } else { None })
                .unwrap_or(Duration::from_secs(60));
            GitHubError::RateLimited { retry_after: wait }
        }
        403 => GitHubError::Forbidden { message },
        404 => GitHubError::NotFound,
        409 => GitHubError::Conflict { message },
        s @ 500..=599 => GitHubError::Server { status: s },
        s => GitHubError::Invalid { status: s, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("valid header"));
        }
        h
    }

    #[test]
    fn a_secondary_limit_honours_retry_after() {
        let e = classify(
            StatusCode::FORBIDDEN,
            &headers(&[("retry-after", "7")]),
            br#"{"message":"You have exceeded a secondary rate limit"}"#,
        );
        assert!(
            matches!(e, GitHubError::RateLimited { retry_after } if retry_after == Duration::from_secs(7))
        );
        assert!(e.is_transient());
    }

    #[test]
    fn an_exhausted_primary_limit_waits_for_the_reset() {
        let reset = crate::domain::now_millis() / 1000 + 30;
        let e = classify(
            StatusCode::FORBIDDEN,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset.to_string()),
            ]),
            br#"{"message":"API rate limit exceeded"}"#,
        );
        let GitHubError::RateLimited { retry_after } = e else {
            panic!("{e:?}")
        };
        assert!(retry_after >= Duration::from_secs(29) && retry_after <= Duration::from_secs(32));
    }

    #[test]
    fn a_plain_403_is_a_permanent_permission_error() {
        let e = classify(
            StatusCode::FORBIDDEN,
            &headers(&[("x-ratelimit-remaining", "4000")]),
            br#"{"message":"Resource not accessible by personal access token"}"#,
        );
        assert!(matches!(e, GitHubError::Forbidden { .. }));
        assert!(!e.is_transient());
    }

    #[test]
    fn status_codes_map_to_what_the_caller_must_do() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, &h, b""),
            GitHubError::Unauthorized
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &h, b""),
            GitHubError::NotFound
        ));
        assert!(matches!(
            classify(StatusCode::CONFLICT, &h, b"{}"),
            GitHubError::Conflict { .. }
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, &h, b""),
            GitHubError::Server { status: 502 }
        ));
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, &h, b"{}"),
            GitHubError::Invalid { status: 422, .. }
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, b""),
            GitHubError::RateLimited { .. }
        ));
    }

    #[test]
    fn the_next_cursor_is_read_from_the_link_header() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_123>; rel=\"next\", <https://x/?cursor=v0>; rel=\"prev\"",
        )]);
        assert_eq!(next_cursor(&h).as_deref(), Some("v1_123"));
        assert_eq!(next_cursor(&HeaderMap::new()), None);
    }

    #[test]
    fn urls_are_built_from_escaped_segments_under_the_base_path() {
        let gh = GitHub::new(
            GitHubConfig {
                api_url: "https://ghe.example.com/api/v3/".into(),
                credentials: Credentials::Token(SecretString::from("t")),
                timeout: Duration::from_secs(1),
                retry: Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1)),
            },
            None,
        )
        .expect("client");
        let repo = RepoName::parse("octo/repo").expect("valid");
        let url = gh.url(&repo_path(
            &repo,
            &["contents", ".github", "workflows", "a b.yml"],
        ));
        assert_eq!(
            url.as_str(),
            "https://ghe.example.com/api/v3/repos/octo/repo/contents/.github/workflows/a%20b.yml"
        );
    }
}
