//! One authenticated exchange with GitHub, and the retries of idempotent calls around it.
//! Every call is first admitted by its budget (`rate_limit`); every answer's rate-limit
//! headers are recorded and every failure classified (`error`) before a caller sees it.
//! Conditional GETs (`conditional`) carry the last answer's ETag, and a 304 hands back
//! that answer.

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, IF_NONE_MATCH, LINK};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::auth::Credentials;
use super::conditional::{Cached, etag_of};
use super::endpoints::PER_PAGE;
use super::error::{classify, transport_error};
use super::rate_limit::{BudgetKey, Call};
use super::{GitHub, GitHubError};

/// Most pages read of one paged list.
const MAX_PAGES: usize = 50;

impl GitHub {
    /// The API URL of `segments`, each escaped, under the base URL's path.
    pub(super) fn url(&self, segments: &[String]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A GET, retried while it fails transiently, decoded from JSON.
    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        url: Url,
    ) -> Result<T, GitHubError> {
        let reply = self.with_retries(|| self.get(call, url.clone())).await?;
        decode(&reply.body)
    }

    /// Every page of a paged list (at most `MAX_PAGES` of `PER_PAGE`); each page is its own
    /// URL, so a conditional list of one unchanged page costs one 304.
    pub(super) async fn get_pages<L: DeserializeOwned, T>(
        &self,
        call: Call<'_>,
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
            let batch = items(self.get_json(call, paged).await?);
            let last = batch.len() < PER_PAGE;
            all.extend(batch);
            if last {
                break;
            }
        }
        Ok(all)
    }

    /// One GET. A conditional one sends the ETag of the last answer to the same URL and
    /// turns a 304 into that answer; a new answer replaces it.
    pub(super) async fn get(&self, call: Call<'_>, url: Url) -> Result<Reply, GitHubError> {
        if !call.conditional {
            return self.send_once(call, Method::GET, url, None).await;
        }
        let key = url.as_str().to_string();
        let cached = self.etags(|c| c.get(&key));
        let etag = cached.as_ref().map(|c| c.etag.clone());
        let result = self.send_conditional(call, url, etag).await;
        match (result, cached) {
            (Ok(reply), Some(cached)) if reply.not_modified => Ok(Reply::from_cache(cached)),
            (Ok(reply), None) if reply.not_modified => Err(GitHubError::Decode(
                "304 Not Modified to an unconditional request".into(),
            )),
            (Ok(reply), _) => {
                match etag_of(&reply.headers) {
                    Some(etag) => self.etags(|c| {
                        c.put(
                            &key,
                            Cached {
                                etag,
                                body: reply.body.clone(),
                                link: reply.headers.get(LINK).cloned(),
                            },
                        )
                    }),
                    None => self.etags(|c| c.remove(&key)),
                }
                Ok(reply)
            }
            (Err(e), _) => {
                if matches!(e, GitHubError::NotFound) {
                    self.etags(|c| c.remove(&key));
                }
                Err(e)
            }
        }
    }

    /// Retries transient failures of an idempotent call with capped, jittered backoff. A
    /// rate limit has blocked its budget for as long as GitHub asked: the next attempt of an
    /// essential call waits for the block, a background one is deferred. A deferred call is
    /// not retried: its budget is kept for essential calls, and the caller tries again on
    /// its next pass.
    pub(super) async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, GitHubError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GitHubError>>,
    {
        let policy = self.inner.retry;
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && !e.is_deferred() && attempt + 1 < policy.attempts => {
                    let wait = policy.delay(attempt);
                    tracing::debug!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "retrying GitHub call");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One authenticated HTTP exchange, with the token of the account `url` concerns. With
    /// App credentials, a 401 means the installation token went bad: it is renewed and the
    /// request tried once more.
    pub(super) async fn send_once(
        &self,
        call: Call<'_>,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, GitHubError> {
        let request = Request {
            method,
            url,
            body,
            etag: None,
        };
        self.send_request(call, request).await
    }

    async fn send_conditional(
        &self,
        call: Call<'_>,
        url: Url,
        etag: Option<HeaderValue>,
    ) -> Result<Reply, GitHubError> {
        let request = Request {
            method: Method::GET,
            url,
            body: None,
            etag,
        };
        self.send_request(call, request).await
    }

    async fn send_request(&self, call: Call<'_>, request: Request<'_>) -> Result<Reply, GitHubError> {
        let token = self.bearer(&request.url).await?;
        let result = self.send_as(call, request.clone(), &token).await;
        match result {
            Err(GitHubError::Unauthorized) if matches!(self.inner.auth.credentials, Credentials::App(_)) => {
                self.forget_token(&request.url).await;
                let token = self.bearer(&request.url).await?;
                self.send_as(call, request, &token).await
            }
            other => other,
        }
    }

    /// One JWT exchange with the App endpoints (its own budget, essential).
    pub(super) async fn send_with(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        bearer: &SecretString,
    ) -> Result<Reply, GitHubError> {
        let request = Request {
            method,
            url,
            body,
            etag: None,
        };
        self.send_as(Call::app(), request, bearer).await
    }

    /// One HTTP exchange with the given bearer: waits until the call's budget admits it
    /// (or defers a background call), sends, records the rate headers and classifies the
    /// answer.
    async fn send_as(
        &self,
        call: Call<'_>,
        request: Request<'_>,
        bearer: &SecretString,
    ) -> Result<Reply, GitHubError> {
        if let Some(fence) = &self.fence
            && let Err(e) = fence.check().await
        {
            tracing::warn!(error = %e, "GitHub call not sent: this replica does not lead");
            return Err(GitHubError::Fenced);
        }
        let key = self.budget_key(&call);
        if let Err(remaining) = self.admit(&key, call.priority).await {
            if let Some(m) = &self.inner.metrics {
                m.github_request("deferred");
            }
            return Err(GitHubError::Deferred { remaining });
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", bearer.expose_secret()))
            .map_err(|_| GitHubError::Unauthorized)?;
        auth.set_sensitive(true);
        let mut req = self
            .inner
            .http
            .request(request.method, request.url)
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(etag) = request.etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        if let Some(body) = request.body {
            req = req.json(body);
        }
        let result = self.exchange(&key, req).await;
        if let Some(m) = &self.inner.metrics {
            match &result {
                Ok(r) => m.github_request(if r.not_modified {
                    "not_modified"
                } else {
                    "answered"
                }),
                Err(e) => m.upstream_error(e.kind()),
            }
        }
        result
    }

    /// Sends, records the rate headers, and classifies a non-2xx answer (a rate limit
    /// also blocks every call of this budget until it is over). A 304 is not a failure:
    /// the caller's conditional GET found its last answer unchanged.
    async fn exchange(&self, key: &BudgetKey, req: reqwest::RequestBuilder) -> Result<Reply, GitHubError> {
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        self.note_rate(key, &headers);
        let bytes = resp.bytes().await.map_err(transport_error)?;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(Reply {
                not_modified: status == StatusCode::NOT_MODIFIED,
                headers,
                body: bytes,
            });
        }
        let err = classify(status, &headers, &bytes);
        if let GitHubError::RateLimited { retry_after } = &err {
            self.block_for(key, *retry_after);
        }
        Err(err)
    }

    fn etags<T>(&self, f: impl FnOnce(&mut super::conditional::EtagCache) -> T) -> T {
        let mut guard = self.inner.etags.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// What to send.
#[derive(Clone)]
struct Request<'a> {
    method: Method,
    url: Url,
    body: Option<&'a serde_json::Value>,
    /// `If-None-Match`.
    etag: Option<HeaderValue>,
}

/// A successful answer.
pub(super) struct Reply {
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// GitHub answered 304: the last answer (this one, when it comes from the cache) stands.
    pub not_modified: bool,
}

impl Reply {
    /// The remembered answer a 304 stands for.
    fn from_cache(cached: Cached) -> Reply {
        let mut headers = HeaderMap::new();
        if let Some(link) = cached.link {
            headers.insert(LINK, link);
        }
        Reply {
            headers,
            body: cached.body,
            not_modified: true,
        }
    }
}

/// Decodes a JSON answer.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GitHubError> {
    serde_json::from_slice(bytes).map_err(|e| GitHubError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::RepoName;
    use crate::github::endpoints::repo_path;
    use crate::github::{GitHubConfig, RunnerScope};
    use crate::retry::Backoff;

    fn client(api_url: &str) -> GitHub {
        GitHub::new(
            GitHubConfig {
                api_url: api_url.into(),
                credentials: Credentials::Token(SecretString::from("t")),
                timeout: Duration::from_secs(1),
                retry: Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1)),
                scope: RunnerScope::Org,
                rate_reserve: None,
            },
            None,
        )
        .expect("client")
    }

    #[test]
    fn urls_are_built_from_escaped_segments_under_the_base_path() {
        let gh = client("https://ghe.example.com/api/v3/");
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

    #[test]
    fn a_base_without_a_path_puts_every_call_at_the_root_of_the_host() {
        let repo = RepoName::parse("octo/repo").expect("valid");
        for (base, expected) in [
            (
                "https://api.acme.ghe.com",
                "https://api.acme.ghe.com/orgs/octo/actions/runners/generate-jitconfig",
            ),
            (
                "https://api.acme.ghe.com/",
                "https://api.acme.ghe.com/orgs/octo/actions/runners/generate-jitconfig",
            ),
            (
                "https://ghes.example/api/v3",
                "https://ghes.example/api/v3/orgs/octo/actions/runners/generate-jitconfig",
            ),
            (
                "http://127.0.0.1:4567",
                "http://127.0.0.1:4567/orgs/octo/actions/runners/generate-jitconfig",
            ),
        ] {
            let gh = client(base);
            let home = gh.home_of(&repo);
            let url = gh.url(&home.path(&["actions", "runners", "generate-jitconfig"]));
            assert_eq!(url.as_str(), expected, "base {base}");
            assert_eq!(gh.relative_segments(&url)[..2], ["orgs", "octo"], "base {base}");
        }
    }
}
