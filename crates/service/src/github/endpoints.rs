//! The REST calls the service makes, one method each. Reads retry transient failures
//! (`transport`); `generate_jitconfig` and `redeliver` are sent exactly once.
//!
//! Each call says what it is for its budget (`rate_limit`): registrations, deletions and
//! the runner lookups of provisioning and reaping are essential; polling, lookups and
//! sweeps are background. The reads that are repeated pass after pass are conditional
//! (`conditional`): an unchanged answer is a 304, which costs no budget.

use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use secrecy::SecretString;

use super::rate_limit::Call;
use super::transport::decode;
use super::types::{
    Contents, DeleteOutcome, Hook, HookDelivery, JitConfig, JitRequest, JitResponse, JobList, RemoteJob,
    RemoteRun, RunList, RunnerDownload, RunnerInfo, RunnerList,
};
use super::{GitHub, GitHubError, RunnerHome};
use crate::domain::RepoName;

/// Items per page of a paged list.
pub(super) const PER_PAGE: usize = 100;

impl GitHub {
    /// Where the runner of a job of `repo` is registered (`RUNNER_SCOPE`).
    pub fn home_of(&self, repo: &RepoName) -> RunnerHome {
        self.inner.scope.home(repo)
    }

    /// Where the runners of `owner`'s repositories are registered, when one place holds
    /// them all (organisation and enterprise runners).
    pub fn owner_home(&self, owner: &str) -> Option<RunnerHome> {
        self.inner.scope.owner_home(owner)
    }

    /// `POST …/actions/runners/generate-jitconfig` at `home`, tried exactly once: the
    /// endpoint is not idempotent, so the caller decides how to recover from a failure.
    pub async fn generate_jitconfig(
        &self,
        home: &RunnerHome,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        let url = self.url(&home.path(&["actions", "runners", "generate-jitconfig"]));
        let body = serde_json::to_value(request).map_err(|e| GitHubError::Decode(e.to_string()))?;
        let reply = self
            .send_once(Call::essential(home.owner()), Method::POST, url, Some(&body))
            .await?;
        let resp: JitResponse = decode(&reply.body)?;
        Ok(JitConfig {
            runner_id: resp.runner.id,
            encoded: SecretString::from(resp.encoded_jit_config),
        })
    }

    /// `POST …/actions/runners/registration-token` at `home`: the first link of the scale
    /// set auth chain (scaleset-contract §1 b). Sent once: every call mints a new token.
    pub async fn registration_token(&self, home: &RunnerHome) -> Result<SecretString, GitHubError> {
        #[derive(serde::Deserialize)]
        struct Token {
            token: String,
        }
        let url = self.url(&home.path(&["actions", "runners", "registration-token"]));
        let reply = self
            .send_once(Call::essential(home.owner()), Method::POST, url, None)
            .await?;
        let token: Token = decode(&reply.body)?;
        Ok(SecretString::from(token.token))
    }

    /// The REST base URL: the scale set client derives the config URL and
    /// `actions/runner-registration` from it.
    pub fn api_base(&self) -> &Url {
        &self.inner.base
    }

    /// The runner registered at `home` under `name`, if any (`GET …/runners?name=`).
    pub async fn runner_by_name(
        &self,
        home: &RunnerHome,
        name: &str,
    ) -> Result<Option<RunnerInfo>, GitHubError> {
        let mut url = self.url(&home.path(&["actions", "runners"]));
        url.query_pairs_mut().append_pair("name", name);
        let list: RunnerList = self.get_json(Call::essential(home.owner()), url).await?;
        Ok(list.runners.into_iter().find(|r| r.name == name))
    }

    /// Every runner registered at `home` (the orphan sweep's listing: background,
    /// conditional).
    pub async fn list_runners(&self, home: &RunnerHome) -> Result<Vec<RunnerInfo>, GitHubError> {
        let url = self.url(&home.path(&["actions", "runners"]));
        let call = Call::background(home.owner()).conditional();
        self.get_pages(call, url, |l: RunnerList| l.runners).await
    }

    /// One runner registered at `home`, or `None` if GitHub no longer has it (asked again
    /// every reaping pass until the runner comes online: conditional).
    pub async fn get_runner(
        &self,
        home: &RunnerHome,
        runner_id: u64,
    ) -> Result<Option<RunnerInfo>, GitHubError> {
        let url = self.url(&home.path(&["actions", "runners", &runner_id.to_string()]));
        match self
            .get_json(Call::essential(home.owner()).conditional(), url)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(GitHubError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE …/runners/{id}` at `home`; a busy runner (422) is reported, not an error.
    pub async fn delete_runner(
        &self,
        home: &RunnerHome,
        runner_id: u64,
    ) -> Result<DeleteOutcome, GitHubError> {
        let url = self.url(&home.path(&["actions", "runners", &runner_id.to_string()]));
        let call = Call::essential(home.owner());
        let result = self
            .with_retries(|| self.send_once(call, Method::DELETE, url.clone(), None))
            .await;
        match result {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(GitHubError::NotFound) => Ok(DeleteOutcome::NotFound),
            Err(GitHubError::Invalid { status: 422, .. }) => Ok(DeleteOutcome::Busy),
            Err(e) => Err(e),
        }
    }

    /// One workflow run (a max-parallel lookup: background).
    pub async fn get_run(&self, repo: &RepoName, run_id: u64) -> Result<RemoteRun, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "runs", &run_id.to_string()]));
        self.get_json(Call::background(repo.owner()), url).await
    }

    /// Runs of a repository in `status` (queued, in_progress, …): polled every pass, so
    /// background and conditional.
    pub async fn list_runs(&self, repo: &RepoName, status: &str) -> Result<Vec<RemoteRun>, GitHubError> {
        let mut url = self.url(&repo_path(repo, &["actions", "runs"]));
        url.query_pairs_mut().append_pair("status", status);
        let call = Call::background(repo.owner()).conditional();
        self.get_pages(call, url, |l: RunList| l.workflow_runs).await
    }

    /// The latest attempt's jobs of a run (polled while the run is listed: background,
    /// conditional).
    pub async fn run_jobs(&self, repo: &RepoName, run_id: u64) -> Result<Vec<RemoteJob>, GitHubError> {
        let mut url = self.url(&repo_path(
            repo,
            &["actions", "runs", &run_id.to_string(), "jobs"],
        ));
        url.query_pairs_mut().append_pair("filter", "latest");
        let call = Call::background(repo.owner()).conditional();
        self.get_pages(call, url, |l: JobList| l.jobs).await
    }

    /// The runner releases GitHub currently serves at `home` (needed before any runner can
    /// start: essential).
    pub async fn runner_downloads(&self, home: &RunnerHome) -> Result<Vec<RunnerDownload>, GitHubError> {
        let url = self.url(&home.path(&["actions", "runners", "downloads"]));
        self.get_json(Call::essential(home.owner()), url).await
    }

    /// One job, by id (reconciling a job whose webhooks were lost: background, and
    /// conditional, since a stuck job is looked up pass after pass).
    pub async fn get_job(&self, repo: &RepoName, job_id: u64) -> Result<RemoteJob, GitHubError> {
        let url = self.url(&repo_path(repo, &["actions", "jobs", &job_id.to_string()]));
        self.get_json(Call::background(repo.owner()).conditional(), url)
            .await
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
        let call = Call::background(hook.owner()).conditional();
        let reply = self.with_retries(|| self.get(call, url.clone())).await?;
        let items: Vec<HookDelivery> = decode(&reply.body)?;
        Ok((items, next_cursor(&reply.headers)))
    }

    /// Asks GitHub to deliver a past delivery again (same GUID).
    pub async fn redeliver(&self, hook: &Hook, delivery_id: u64) -> Result<(), GitHubError> {
        let url = self.url(&hook.path(&["deliveries", &delivery_id.to_string(), "attempts"]));
        self.send_once(Call::background(hook.owner()), Method::POST, url, None)
            .await
            .map(|_| ())
    }

    /// The tag of actions/runner's latest release (e.g. `v2.336.0`).
    pub async fn latest_runner_release(&self) -> Result<String, GitHubError> {
        #[derive(serde::Deserialize)]
        struct Release {
            tag_name: String,
        }
        let url = self.url(&["repos", "actions", "runner", "releases", "latest"].map(String::from));
        let release: Release = self.get_json(Call::unowned(), url).await?;
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
        let contents: Contents = match self.get_json(Call::background(repo.owner()), url).await {
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
}

pub(super) fn repo_path(repo: &RepoName, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        "repos".to_string(),
        repo.owner().to_string(),
        repo.name().to_string(),
    ];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_next_cursor_is_read_from_the_link_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(
                "<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_123>; rel=\"next\", <https://x/?cursor=v0>; rel=\"prev\"",
            ),
        );
        assert_eq!(next_cursor(&h).as_deref(), Some("v1_123"));
        assert_eq!(next_cursor(&HeaderMap::new()), None);
    }
}
