//! Read-only calls that `modal-github-runner check` makes to see whether a deployment
//! would work: whether the credentials reach a place's runner list (and, for a classic
//! token, which scopes it has), whether the GitHub App is installed on an owner, and how a
//! webhook is configured. None of them changes anything at GitHub.

use reqwest::Method;
use serde::Deserialize;

use super::auth::{Account, Credentials};
use super::rate_limit::Call;
use super::transport::decode;
use super::types::Hook;
use super::{GitHub, GitHubError, RunnerHome};

/// What a hook is set up to do, as `GET …/hooks/{id}` says.
#[derive(Debug, Clone, Deserialize)]
pub struct HookSetup {
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub config: HookConfig,
}

/// A hook's `config`: GitHub never returns the secret itself, only `********` when one is
/// set.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HookConfig {
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
}

impl HookSetup {
    /// Whether the hook sends `workflow_job` events (`*` sends every event).
    pub fn sends_workflow_job(&self) -> bool {
        self.events.iter().any(|e| e == "workflow_job" || e == "*")
    }

    /// Whether the hook signs its deliveries.
    pub fn has_secret(&self) -> bool {
        self.config.secret.as_deref().is_some_and(|s| !s.is_empty())
    }
}

impl GitHub {
    /// Reads one page of one runner of `home`'s runner list, which needs the permission to
    /// manage runners there; returns the token's `X-OAuth-Scopes` if GitHub sent them (a
    /// classic token; fine-grained tokens and App installations have none).
    pub async fn probe_runners(&self, home: &RunnerHome) -> Result<Option<String>, GitHubError> {
        let mut url = self.url(&home.path(&["actions", "runners"]));
        url.query_pairs_mut().append_pair("per_page", "1");
        let reply = self
            .with_retries(|| self.send_once(Call::essential(home.owner()), Method::GET, url.clone(), None))
            .await?;
        Ok(reply
            .headers
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// Whether GitHub accepts the token at all (`GET /rate_limit`, which any valid token
    /// may read and which costs nothing against the limit).
    pub async fn probe_token(&self) -> Result<(), GitHubError> {
        let url = self.url(&["rate_limit".to_string()]);
        self.with_retries(|| self.send_once(Call::unowned(), Method::GET, url.clone(), None))
            .await
            .map(|_| ())
    }

    /// The id of the GitHub App's installation on `owner` (found with the App's JWT, as the
    /// service finds it); `None` without App credentials.
    pub async fn app_installation(&self, owner: &str) -> Result<Option<u64>, GitHubError> {
        if !matches!(self.inner.auth.credentials, Credentials::App(_)) {
            return Ok(None);
        }
        let Some(account) = Account::of_path(&["orgs", owner]) else {
            return Ok(None);
        };
        self.look_up_installation(&account).await.map(Some)
    }

    /// How webhook `hook` is set up.
    pub async fn hook_setup(&self, hook: &Hook) -> Result<HookSetup, GitHubError> {
        let url = self.url(&hook.path(&[]));
        let reply = self
            .with_retries(|| self.send_once(Call::unowned(), Method::GET, url.clone(), None))
            .await?;
        decode(&reply.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_sends_workflow_job_when_subscribed_to_it_or_to_everything() {
        let hook = |events: &[&str], secret: Option<&str>| HookSetup {
            active: true,
            events: events.iter().map(|e| e.to_string()).collect(),
            config: HookConfig {
                content_type: Some("json".into()),
                url: None,
                secret: secret.map(str::to_string),
            },
        };
        assert!(hook(&["push", "workflow_job"], None).sends_workflow_job());
        assert!(hook(&["*"], None).sends_workflow_job());
        assert!(!hook(&["push"], None).sends_workflow_job());
        assert!(hook(&[], Some("********")).has_secret());
        assert!(!hook(&[], None).has_secret());
    }
}
