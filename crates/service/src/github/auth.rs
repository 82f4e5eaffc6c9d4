//! How the client authenticates: a personal access token, or a GitHub App (docs/github.md §3.2):
//! a JWT signed with the App's private key buys an installation token, which lasts an hour
//! and is renewed five minutes before it expires, or at once if GitHub rejects it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use reqwest::Method;

use super::GitHub;
use super::endpoints::repo_path;
use super::error::GitHubError;
use super::transport::decode;
use crate::domain::RepoName;

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
    /// `GITHUB_APP_INSTALLATION_ID`; else looked up from `discovery_repo`.
    pub installation_id: Option<u64>,
    /// A repository the App is installed on, to find the installation.
    pub discovery_repo: Option<RepoName>,
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
                .field("discovery_repo", &app.discovery_repo)
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

/// Live authentication state.
pub(super) struct Auth {
    pub credentials: Credentials,
    key: Option<EncodingKey>,
    /// The current installation token and when it should be renewed; the lock makes one
    /// caller renew while the others wait for its result.
    token: Mutex<Option<(SecretString, Instant)>>,
    installation: Mutex<Option<u64>>,
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
        let installation = match &credentials {
            Credentials::App(app) => app.installation_id,
            Credentials::Token(_) => None,
        };
        Ok(Auth {
            credentials,
            key,
            token: Mutex::new(None),
            installation: Mutex::new(installation),
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

    /// The cached installation token, if still good for a while.
    pub async fn cached(&self) -> Option<SecretString> {
        let slot = self.token.lock().await;
        slot.as_ref()
            .filter(|(_, until)| *until > Instant::now() + RENEW_BEFORE)
            .map(|(t, _)| t.clone())
    }

    /// The lock under which a caller renews the token.
    pub fn token_slot(&self) -> &Mutex<Option<(SecretString, Instant)>> {
        &self.token
    }

    /// Forgets the installation token (GitHub rejected it).
    pub async fn forget(&self) {
        *self.token.lock().await = None;
    }

    pub fn installation_slot(&self) -> &Mutex<Option<u64>> {
        &self.installation
    }

    pub fn discovery_repo(&self) -> Option<&RepoName> {
        match &self.credentials {
            Credentials::App(app) => app.discovery_repo.as_ref(),
            Credentials::Token(_) => None,
        }
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
    /// The bearer for REST calls: the token, or the App's installation token (renewed when
    /// it is about to expire; one caller renews while the others wait).
    pub(super) async fn bearer(&self) -> Result<SecretString, GitHubError> {
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
            discovery_repo: None,
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
