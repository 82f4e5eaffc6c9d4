//! Settings that are valid but weaken the deployment: a short webhook secret (refused unless
//! `ALLOW_WEAK_WEBHOOK_SECRET` accepts it) and plaintext `http://` API URLs outside the machine
//! itself. What is accepted anyway becomes a [`ConfigWarning`], which `serve` logs at start.

use std::fmt;
use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, err};

/// The shortest webhook secret accepted without `ALLOW_WEAK_WEBHOOK_SECRET`: an HMAC key much
/// shorter than this can be found by trying keys against one signed delivery.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// A setting that is accepted but weakens the deployment, naming its variable. The message
/// never holds a secret or a whole URL (which could carry credentials), only hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub var: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

/// Refuses a webhook secret shorter than [`MIN_WEBHOOK_SECRET_BYTES`] unless `allow_weak`.
/// The error says how to make a good one and never shows the secret (nor its length).
pub(super) fn check_webhook_secret(secret: &SecretString, allow_weak: bool) -> Result<(), ConfigError> {
    if allow_weak || !is_weak(secret) {
        return Ok(());
    }
    Err(err(
        "WEBHOOK_SECRET",
        format!(
            "is shorter than {MIN_WEBHOOK_SECRET_BYTES} bytes, short enough to be guessed from one signed \
             delivery: generate one with `openssl rand -hex 32` and set it here and in the GitHub \
             webhook's settings (or set ALLOW_WEAK_WEBHOOK_SECRET=true to accept it anyway)"
        ),
    ))
}

/// Whether the secret is shorter than [`MIN_WEBHOOK_SECRET_BYTES`].
pub(super) fn is_weak(secret: &SecretString) -> bool {
    secret.expose_secret().len() < MIN_WEBHOOK_SECRET_BYTES
}

/// The warning for a weak webhook secret that `ALLOW_WEAK_WEBHOOK_SECRET` accepted.
pub(super) fn weak_secret_warning() -> ConfigWarning {
    ConfigWarning {
        var: "WEBHOOK_SECRET",
        message: format!(
            "is shorter than {MIN_WEBHOOK_SECRET_BYTES} bytes (accepted because ALLOW_WEAK_WEBHOOK_SECRET=true); \
             generate a strong one with `openssl rand -hex 32`"
        ),
    }
}

/// A warning when `url` is plaintext `http://` to a host other than this machine: what it
/// carries (`what`) can be read and changed on the way.
pub(super) fn plaintext_warning(var: &'static str, url: &str, what: &str) -> Option<ConfigWarning> {
    let parsed = reqwest::Url::parse(url).ok();
    let scheme = match &parsed {
        Some(u) => u.scheme().to_string(),
        None => url.split(':').next().unwrap_or("").to_ascii_lowercase(),
    };
    if scheme != "http" {
        return None;
    }
    let host = parsed.as_ref().and_then(|u| u.host_str());
    if host.is_some_and(is_loopback) {
        return None;
    }
    let shown = host.map_or_else(|| "its host".to_string(), str::to_string);
    Some(ConfigWarning {
        var,
        message: format!(
            "is http:// to {shown}, which is not this machine: {what} travel unencrypted; use https://"
        ),
    })
}

/// This machine: 127.0.0.0/8, ::1 or `localhost` (a URL's host, IPv6 in brackets).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}
