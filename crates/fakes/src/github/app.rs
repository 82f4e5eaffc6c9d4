//! GitHub App authentication, as GitHub does it (docs/github.md §3.2): a JWT signed with the App's
//! private key (RS256, issuer = App id, at most 10 minutes long) buys an installation token
//! at `POST /app/installations/{id}/access_tokens`; REST calls then carry that token until
//! it expires. An App has one installation per account it is installed on, found with a JWT
//! at `GET /repos/{o}/{r}/installation`, `GET /orgs/{org}/installation` or
//! `GET /users/{user}/installation`; an installation's token reaches only that account.

use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use super::routes::Reply;
use super::state::State;
use super::time::rfc3339;
use super::views::OwnerKind;

/// The private key of the tests' GitHub App (PKCS#1 PEM, as GitHub hands them out); made
/// for these tests only, it grants nothing anywhere (`fixtures/README.md`).
pub const TEST_APP_PRIVATE_KEY_PEM: &str = include_str!("../../fixtures/github-app-test-key.pem");
/// Its public half, which the fake verifies the service's JWTs with.
pub const TEST_APP_PUBLIC_KEY_PEM: &str = include_str!("../../fixtures/github-app-test-key.pub.pem");

/// A GitHub App the fake knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeApp {
    pub id: u64,
    /// The public half of the App's key (PEM), to verify JWTs.
    pub public_key_pem: String,
    /// An installation that reaches every account not in `owner_installations` (the
    /// single installation most tests need); `None`: no such installation.
    pub installation_id: Option<u64>,
    /// One installation per account: (owner login, installation id).
    pub owner_installations: Vec<(String, u64)>,
    /// How long an installation token lasts (GitHub: one hour).
    pub token_ttl: Duration,
}

impl FakeApp {
    /// The App with key pair of the tests and one installation reaching every account.
    pub fn single(id: u64, installation_id: u64, token_ttl: Duration) -> Self {
        Self {
            id,
            public_key_pem: TEST_APP_PUBLIC_KEY_PEM.to_owned(),
            installation_id: Some(installation_id),
            owner_installations: Vec::new(),
            token_ttl,
        }
    }

    /// The installation on `owner`'s account, if the App is installed there.
    pub fn installation_of(&self, owner: &str) -> Option<u64> {
        self.owner_installations
            .iter()
            .find(|(login, _)| login.eq_ignore_ascii_case(owner))
            .map(|(_, id)| *id)
            .or(self.installation_id)
    }

    /// Whether `id` is one of the App's installations.
    fn has_installation(&self, id: u64) -> bool {
        self.installation_id == Some(id) || self.owner_installations.iter().any(|(_, i)| *i == id)
    }
}

#[derive(Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

/// The bearer of `Authorization: Bearer …` (or `token …`).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let ok = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    (ok && !token.trim().is_empty()).then(|| token.trim())
}

/// Whether `jwt` is a valid App JWT: signed by the App's key, issued by its id, not
/// expired, issued no later than a minute from now and living at most 10 minutes.
pub(super) fn valid_jwt(app: &FakeApp, jwt: &str) -> bool {
    let Ok(key) = DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()) else {
        return false;
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[app.id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let Ok(data) = jsonwebtoken::decode::<Claims>(jwt, &key, &validation) else {
        return false;
    };
    let now = super::faults::epoch_secs(SystemTime::now());
    let c = data.claims;
    !c.iss.is_empty() && c.iat <= now + 60 && c.exp > c.iat && c.exp - c.iat <= 600
}

/// `POST /app/installations/{id}/access_tokens`.
pub(super) fn create_token(state: &mut State, app: &FakeApp, installation_id: u64) -> Reply {
    if !app.has_installation(installation_id) {
        return Reply::not_found();
    }
    let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
    let expires = SystemTime::now() + app.token_ttl;
    state
        .installation_tokens
        .insert(token.clone(), (Instant::now() + app.token_ttl, installation_id));
    state.installation_tokens_issued += 1;
    *state.tokens_by_installation.entry(installation_id).or_default() += 1;
    state.installation_tokens_in_order.push(token.clone());
    Reply::json(
        201,
        json!({
            "token": token,
            "expires_at": rfc3339(expires),
            "permissions": {"administration": "write", "actions": "read", "contents": "read", "metadata": "read"},
            "repository_selection": "all"
        }),
    )
}

/// `GET /repos/{o}/{r}/installation`, `/orgs/{org}/installation`, `/users/{u}/installation`:
/// the installation on the account `owner` (of kind `kind`), or 404.
pub(super) fn installation(app: &FakeApp, owner: &str, owner_id: u64, kind: OwnerKind) -> Reply {
    match app.installation_of(owner) {
        Some(id) => Reply::json(
            200,
            json!({
                "id": id, "app_id": app.id, "target_type": kind.as_str(), "target_id": owner_id,
                "account": {"login": owner, "id": owner_id, "type": kind.as_str()},
                "repository_selection": "all",
                "permissions": {"administration": "write", "organization_self_hosted_runners": "write",
                                "actions": "read", "contents": "read", "metadata": "read"},
            }),
        ),
        None => Reply::not_found(),
    }
}

/// The installation of `token`, if the fake issued it and it has not expired.
pub(super) fn installation_of_token(state: &State, token: &str) -> Option<u64> {
    state
        .installation_tokens
        .get(token)
        .filter(|(until, _)| *until > Instant::now())
        .map(|(_, id)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::FakeGitHubConfig;

    #[test]
    fn each_account_has_its_own_installation_and_the_catch_all_covers_the_rest() {
        let app = FakeApp {
            installation_id: None,
            owner_installations: vec![("acme".into(), 11), ("beta".into(), 12)],
            ..FakeApp::single(1, 0, Duration::from_secs(60))
        };
        assert_eq!(app.installation_of("ACME"), Some(11));
        assert_eq!(app.installation_of("beta"), Some(12));
        assert_eq!(app.installation_of("gamma"), None);
        let both = FakeApp {
            installation_id: Some(7),
            ..app
        };
        assert_eq!(both.installation_of("gamma"), Some(7));
        assert!(both.has_installation(12) && !both.has_installation(13));
    }

    #[test]
    fn issued_installation_tokens_are_recorded_in_order_and_accepted_until_they_expire() {
        let app = FakeApp::single(1, 7, Duration::from_secs(60));
        let mut state = State::new(&FakeGitHubConfig::default(), "http://127.0.0.1:1".into());
        let token = |reply: Reply| {
            reply
                .body
                .map(|b| b["token"].as_str().unwrap_or_default().to_owned())
        };
        let first = token(create_token(&mut state, &app, 7)).expect("a token");
        let second = token(create_token(&mut state, &app, 7)).expect("a token");
        assert_eq!(create_token(&mut state, &app, 8).status, 404);
        assert_eq!(state.installation_tokens_in_order, [first.clone(), second]);
        assert!(first.starts_with("ghs_"));
        assert_eq!(installation_of_token(&state, &first), Some(7));
        assert_eq!(installation_of_token(&state, "ghs_unknown"), None);
    }
}
