//! How the client authenticates: a personal access token, or a GitHub App (docs/github.md §3.2).
//!
//! A GitHub App has one installation per account it is installed on, and an installation's
//! token reaches only that account. So every call uses the token of the account it
//! concerns, read from its URL (`/repos/{owner}/…`, `/orgs/{org}/…`, `/users/{user}/…`):
//! the owner's installation is found once with the App's JWT (`GET
//! /repos/{o}/{r}/installation`, `/orgs/{org}/installation`, or `/users/{user}/installation`)
//! and its token, which lasts an hour, is renewed five minutes before it expires, or at
//! once if GitHub rejects it. A call about no served account (the runner's latest release)
//! uses the first served owner's token. `GITHUB_APP_INSTALLATION_ID` overrides all this
//! with one installation for every call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::GitHub;
use super::error::GitHubError;
use super::transport::decode;

/// What the client authenticates with.
#[derive(Clone)]
pub enum Credentials {
    /// `GITHUB_TOKEN`: a fine-grained or classic personal access token.
    Token(SecretString),
    /// `GITHUB_APP_ID` + `GITHUB_APP_PRIVATE_KEY`.
    App(AppCredentials),
}

/// A GitHub App's identity.
#[derive(Clone)]
pub struct AppCredentials {
    pub app_id: u64,
    /// The App's private key, PEM (as GitHub hands it out).
    pub private_key: SecretString,
    /// `GITHUB_APP_INSTALLATION_ID`: one installation for every call; else each owner's
    /// installation is found.
    pub installation_id: Option<u64>,
    /// The owners `ALLOWED_REPOS` names, whose installations are found as needed.
    pub owners: Vec<String>,
}

impl AppCredentials {
    /// Checks that the key is an RSA private key in PEM, so a bad key fails at start-up.
    pub fn validate(&self) -> Result<(), String> {
        EncodingKey::from_rsa_pem(self.private_key.expose_secret().as_bytes())
            .map(|_| ())
            .map_err(|e| format!("is not an RSA private key in PEM: {e}"))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token([redacted])"),
            Credentials::App(app) => f
                .debug_struct("App")
                .field("app_id", &app.app_id)
                .field("private_key", &"[redacted]")
                .field("installation_id", &app.installation_id)
                .field("owners", &app.owners)
                .finish(),
        }
    }
}

/// Installation tokens are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

#[derive(Deserialize)]
pub(super) struct InstallationToken {
    pub token: String,
    pub expires_at: String,
}

#[derive(Deserialize)]
pub(super) struct Installation {
    pub id: u64,
}

/// One installation's token and when to renew it; the lock makes one caller renew while
/// the others wait for its result.
type TokenSlot = Arc<Mutex<Option<(SecretString, Instant)>>>;

/// Live authentication state.
pub(super) struct Auth {
    pub credentials: Credentials,
    key: Option<EncodingKey>,
    /// Lower-cased owner → its installation, found as needed. Held while one is looked
    /// up, so an owner is looked up once.
    installations: Mutex<HashMap<String, u64>>,
    /// Installation → its token.
    tokens: std::sync::Mutex<HashMap<u64, TokenSlot>>,
}

/// The account a call concerns, and where its installation is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Account {
    /// As spelled in the URL.
    pub owner: String,
    /// URL paths (segments) that answer the owner's installation, tried in order.
    pub lookups: Vec<Vec<String>>,
}

impl Account {
    /// An organisation or user account: GitHub has a lookup for each.
    fn named(owner: &str, user_first: bool) -> Account {
        let org = vec!["orgs".into(), owner.to_string(), "installation".into()];
        let user = vec!["users".into(), owner.to_string(), "installation".into()];
        Account {
            owner: owner.to_string(),
            lookups: if user_first {
                vec![user, org]
            } else {
                vec![org, user]
            },
        }
    }

    /// The account `segments` (a URL path under the API base) are about, if any.
    pub fn of_path(segments: &[&str]) -> Option<Account> {
        match segments {
            ["repos", owner, repo, ..] => Some(Account {
                owner: owner.to_string(),
                lookups: vec![vec![
                    "repos".into(),
                    owner.to_string(),
                    repo.to_string(),
                    "installation".into(),
                ]],
            }),
            ["orgs", owner, ..] => Some(Account::named(owner, false)),
            ["users", owner, ..] => Some(Account::named(owner, true)),
            _ => None,
        }
    }
}

impl Auth {
    pub fn new(credentials: Credentials) -> Result<Auth, GitHubError> {
        let key = match &credentials {
            Credentials::Token(_) => None,
            Credentials::App(app) => Some(
                EncodingKey::from_rsa_pem(app.private_key.expose_secret().as_bytes())
                    .map_err(|e| GitHubError::Decode(format!("the GitHub App private key: {e}")))?,
            ),
        };
        Ok(Auth {
            credentials,
            key,
            installations: Mutex::new(HashMap::new()),
            tokens: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A JWT for the App endpoints: issued a minute in the past (clock skew), valid nine
    /// minutes, issuer the App id.
    pub fn jwt(&self) -> Result<SecretString, GitHubError> {
        let (Credentials::App(app), Some(key)) = (&self.credentials, &self.key) else {
            return Err(GitHubError::Unauthorized);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iat: now.saturating_sub(60),
            exp: now + 540,
            iss: app.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
            .map(SecretString::from)
            .map_err(|e| GitHubError::Decode(format!("could not sign the App JWT: {e}")))
    }

    /// The token slot of `installation`.
    fn slot(&self, installation: u64) -> TokenSlot {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.entry(installation).or_default().clone()
    }
}

/// The account whose installation a call needs: the served owner its path names, else
/// (a call about no served account) the first served owner.
pub(super) fn account_for(app: &AppCredentials, segments: &[&str]) -> Option<Account> {
    let served = |owner: &str| app.owners.iter().any(|o| o.eq_ignore_ascii_case(owner));
    match Account::of_path(segments) {
        Some(account) if served(&account.owner) => Some(account),
        _ => app.owners.first().map(|owner| Account::named(owner, false)),
    }
}

/// When a token expiring at `expires_at` (RFC 3339) is due for renewal: five minutes
/// before it expires, or halfway through its life if that is shorter.
pub(super) fn renew_at(expires_at: &str) -> Instant {
    let left = humantime::parse_rfc3339_weak(expires_at)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::from_secs(600));
    Instant::now() + left - RENEW_BEFORE.min(left / 2)
}

impl GitHub {
    /// The bearer for a REST call to `url`: the token, or the installation token of the
    /// account the call concerns (renewed when it is about to expire; one caller renews
    /// while the others wait).
    pub(super) async fn bearer(&self, url: &Url) -> Result<SecretString, GitHubError> {
        let auth = &self.inner.auth;
        let app = match &auth.credentials {
            Credentials::Token(token) => return Ok(token.clone()),
            Credentials::App(app) => app,
        };
        let installation = self.installation_for(app, url).await?;
        let slot = auth.slot(installation);
        let mut slot = slot.lock().await;
        if let Some((token, renew)) = slot.as_ref()
            && *renew > Instant::now()
        {
            return Ok(token.clone());
        }
        let url =
            self.url(&["app", "installations", &installation.to_string(), "access_tokens"].map(String::from));
        let reply = self.send_with(Method::POST, url, None, &auth.jwt()?).await?;
        let fresh: InstallationToken = decode(&reply.body)?;
        let token = SecretString::from(fresh.token);
        *slot = Some((token.clone(), renew_at(&fresh.expires_at)));
        tracing::debug!(installation, "GitHub App installation token renewed");
        Ok(token)
    }

    /// Forgets the token a call to `url` used (GitHub rejected it).
    pub(super) async fn forget_token(&self, url: &Url) {
        let auth = &self.inner.auth;
        let Credentials::App(app) = &auth.credentials else {
            return;
        };
        if let Ok(installation) = self.installation_for(app, url).await {
            *auth.slot(installation).lock().await = None;
        }
    }

    /// `GITHUB_APP_INSTALLATION_ID`, or the installation on the account `url` concerns.
    async fn installation_for(&self, app: &AppCredentials, url: &Url) -> Result<u64, GitHubError> {
        if let Some(id) = app.installation_id {
            return Ok(id);
        }
        let segments = self.relative_segments(url);
        let account = account_for(app, &segments).ok_or(GitHubError::Unauthorized)?;
        let key = account.owner.to_ascii_lowercase();
        let mut found = self.inner.auth.installations.lock().await;
        if let Some(id) = found.get(&key) {
            return Ok(*id);
        }
        let id = self.look_up_installation(&account).await?;
        tracing::info!(owner = %account.owner, installation = id, "found the GitHub App's installation");
        found.insert(key, id);
        Ok(id)
    }

    /// Asks GitHub (with the App's JWT) for the installation on `account`.
    pub(super) async fn look_up_installation(&self, account: &Account) -> Result<u64, GitHubError> {
        for path in &account.lookups {
            let url = self.url(path);
            match self
                .send_with(Method::GET, url, None, &self.inner.auth.jwt()?)
                .await
            {
                Ok(reply) => return Ok(decode::<Installation>(&reply.body)?.id),
                Err(GitHubError::NotFound) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(GitHubError::Forbidden {
            message: format!("the GitHub App is not installed on {}", account.owner),
        })
    }

    /// The path segments of `url` under the API base (`/api/v3` on GHES).
    pub(super) fn relative_segments<'u>(&self, url: &'u Url) -> Vec<&'u str> {
        let base = self
            .inner
            .base
            .path_segments()
            .map_or(0, |s| s.filter(|p| !p.is_empty()).count());
        url.path_segments()
            .map(|s| s.skip(base).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = fakes::github::TEST_APP_PRIVATE_KEY_PEM;
    const PUBLIC: &str = fakes::github::TEST_APP_PUBLIC_KEY_PEM;

    fn app() -> AppCredentials {
        AppCredentials {
            app_id: 4242,
            private_key: SecretString::from(KEY),
            installation_id: Some(7),
            owners: vec!["acme".into(), "beta".into()],
        }
    }

    #[test]
    fn the_app_jwt_is_rs256_signed_issued_in_the_past_and_short_lived() {
        let auth = Auth::new(Credentials::App(app())).expect("valid key");
        let jwt = auth.jwt().expect("signed");
        #[derive(Deserialize)]
        struct Seen {
            iat: u64,
            exp: u64,
            iss: String,
        }
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iss"]);
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).expect("public key");
        let seen = jsonwebtoken::decode::<Seen>(jwt.expose_secret(), &key, &validation)
            .expect("verifies")
            .claims;
        assert_eq!(seen.iss, "4242");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(seen.iat <= now - 59 && seen.exp <= now + 600 && seen.exp > now);
    }

    #[test]
    fn a_call_needs_the_installation_of_the_served_account_its_path_names() {
        let app = AppCredentials {
            installation_id: None,
            ..app()
        };
        let repo = account_for(&app, &["repos", "Beta", "x", "actions", "runs"]).expect("an account");
        assert_eq!(repo.owner, "Beta");
        assert_eq!(repo.lookups, [["repos", "Beta", "x", "installation"]]);
        let org = account_for(&app, &["orgs", "acme", "actions", "runners"]).expect("an account");
        assert_eq!(org.lookups[0], ["orgs", "acme", "installation"]);
        assert_eq!(org.lookups[1], ["users", "acme", "installation"]);
        // About no served account: the first served owner's.
        let elsewhere = account_for(&app, &["repos", "actions", "runner", "releases", "latest"]);
        assert_eq!(elsewhere.map(|a| a.owner).as_deref(), Some("acme"));
        assert_eq!(
            account_for(&app, &["rate_limit"]).map(|a| a.owner).as_deref(),
            Some("acme")
        );
    }

    #[tokio::test]
    async fn an_installation_id_override_serves_every_owner_without_looking_any_up() {
        use fakes::github::{FakeApp, FakeGitHub, FakeGitHubConfig, Route};

        use crate::domain::RepoName;
        use crate::github::{GitHubConfig, RunnerHome, RunnerScope};
        use crate::retry::Backoff;

        let fake = FakeGitHub::start(FakeGitHubConfig {
            app: Some(FakeApp::single(4242, 7, Duration::from_secs(3600))),
            ..FakeGitHubConfig::default()
        })
        .await
        .expect("fake GitHub");
        fake.add_repo("acme/x");
        fake.add_repo("beta/y");
        let github = GitHub::new(
            GitHubConfig {
                api_url: fake.api_url(),
                credentials: Credentials::App(app()),
                timeout: Duration::from_secs(5),
                retry: Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1)),
                scope: RunnerScope::Repo,
                rate_reserve: None,
            },
            None,
        )
        .expect("client");
        for repo in ["acme/x", "beta/y"] {
            let home = RunnerHome::Repo(RepoName::parse(repo).expect("valid"));
            github.list_runners(&home).await.expect("listed");
        }
        let calls = fake.calls();
        assert!(calls.iter().all(|c| !matches!(
            c.route,
            Route::RepoInstallation | Route::OrgInstallation | Route::UserInstallation
        )));
        let listed: Vec<Option<u64>> = calls
            .iter()
            .filter(|c| c.route == Route::ListRunners)
            .map(|c| c.installation)
            .collect();
        assert_eq!(listed, [Some(7), Some(7)]);
        assert_eq!(fake.installation_tokens_issued(), 1, "one token for both owners");
        fake.shutdown().await;
    }

    #[test]
    fn a_key_that_is_not_rsa_pem_is_refused() {
        let bad = AppCredentials {
            private_key: SecretString::from("not a key"),
            ..app()
        };
        assert!(bad.validate().is_err());
        assert!(app().validate().is_ok());
    }

    #[test]
    fn tokens_are_renewed_five_minutes_early_or_halfway_through_a_short_life() {
        let in_an_hour =
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600)).to_string();
        let at = renew_at(&in_an_hour);
        assert!(
            at > Instant::now() + Duration::from_secs(3290)
                && at < Instant::now() + Duration::from_secs(3301)
        );
        let in_a_minute =
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(60)).to_string();
        let at = renew_at(&in_a_minute);
        assert!(
            at > Instant::now() + Duration::from_secs(28) && at < Instant::now() + Duration::from_secs(31)
        );
    }
}
