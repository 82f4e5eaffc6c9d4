//! One authenticated exchange with GitHub, and the retries of idempotent calls around it.
//! Every answer's rate-limit headers are recorded (`rate_limit`) and every failure
//! classified (`error`) before a caller sees it.

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::auth::Credentials;
use super::endpoints::PER_PAGE;
use super::error::{classify, transport_error};
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
    pub(super) async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, GitHubError> {
        let reply = self
            .with_retries(|| self.send_once(Method::GET, url.clone(), None))
            .await?;
        decode(&reply.body)
    }

    /// Every page of a paged list (at most `MAX_PAGES` of `PER_PAGE`).
    pub(super) async fn get_pages<L: DeserializeOwned, T>(
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

    /// One authenticated HTTP exchange, with the token of the account `url` concerns. With
    /// App credentials, a 401 means the installation token went bad: it is renewed and the
    /// request tried once more.
    pub(super) async fn send_once(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, GitHubError> {
        let token = self.bearer(&url).await?;
        let result = self.send_with(method.clone(), url.clone(), body, &token).await;
        match result {
            Err(GitHubError::Unauthorized) if matches!(self.inner.auth.credentials, Credentials::App(_)) => {
                self.forget_token(&url).await;
                let token = self.bearer(&url).await?;
                self.send_with(method, url, body, &token).await
            }
            other => other,
        }
    }

    /// One HTTP exchange with the given bearer: waits out a rate-limit block, sends, records
    /// rate headers and classifies the answer.
    pub(super) async fn send_with(
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

    /// Sends, records the rate headers, and classifies a non-2xx answer (a rate limit
    /// also blocks every call until it is over).
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
}

/// A successful answer.
pub(super) struct Reply {
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
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
