//! GitHub App authentication, as GitHub does it (docs/github.md §3.2): a JWT signed with the App's
//! private key (RS256, issuer = App id, at most 10 minutes long) buys an installation token
//! at `POST /app/installations/{id}/access_tokens`; REST calls then carry that token until
//! it expires. `GET /repos/{o}/{r}/installation` finds the installation with a JWT.

use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use super::routes::Reply;
use super::state::State;
use super::time::rfc3339;

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
    /// Its one installation.
    pub installation_id: u64,
    /// How long an installation token lasts (GitHub: one hour).
    pub token_ttl: Duration,
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
    if installation_id != app.installation_id {
        return Reply::not_found();
    }
    let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
    let expires = SystemTime::now() + app.token_ttl;
    state
        .installation_tokens
        .insert(token.clone(), Instant::now() + app.token_ttl);
    state.installation_tokens_issued += 1;
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

/// `GET /repos/{o}/{r}/installation`.
pub(super) fn repo_installation(app: &FakeApp) -> Reply {
    Reply::json(
        200,
        json!({"id": app.installation_id, "app_id": app.id, "target_type": "Organization"}),
    )
}

/// Whether `token` is an installation token the fake issued and that has not expired.
pub(super) fn valid_installation_token(state: &State, token: &str) -> bool {
    state
        .installation_tokens
        .get(token)
        .is_some_and(|until| *until > Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::FakeGitHubConfig;

    #[test]
    fn issued_installation_tokens_are_recorded_in_order_and_accepted_until_they_expire() {
        let app = FakeApp {
            id: 1,
            public_key_pem: TEST_APP_PUBLIC_KEY_PEM.into(),
            installation_id: 7,
            token_ttl: Duration::from_secs(60),
        };
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
        assert!(first.starts_with("ghs_") && valid_installation_token(&state, &first));
        assert!(!valid_installation_token(&state, "ghs_unknown"));
    }
}
