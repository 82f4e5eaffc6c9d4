//! What a failed GitHub call means for the caller: every non-2xx answer and transport
//! failure is classified here, including both kinds of rate limit (docs/github.md §2.5).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

use super::types::ErrorBody;

/// A failed GitHub call, classified by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GitHubError {
    #[error("GitHub rejected the token (401 Bad credentials)")]
    Unauthorized,
    #[error("GitHub refused the request (403): {message}")]
    Forbidden { message: String },
    #[error("not found (404)")]
    NotFound,
    #[error("conflict (409): {message}")]
    Conflict { message: String },
    #[error("GitHub rejected the request ({status}): {message}")]
    Invalid { status: u16, message: String },
    #[error("rate limited by GitHub; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration },
    #[error("GitHub answered {status}")]
    Server { status: u16 },
    #[error("GitHub did not answer in time")]
    Timeout,
    #[error("could not reach GitHub: {0}")]
    Transport(String),
    #[error("unexpected answer from GitHub: {0}")]
    Decode(String),
    /// A background call (polling, lookups, sweeps) not sent: the API budget is down to the
    /// reserve kept for registrations and deletions, or a rate limit is being waited out.
    #[error("GitHub API budget kept for registrations ({remaining} calls left); background call deferred")]
    Deferred { remaining: i64 },
    /// Not sent: this replica no longer holds the leader lease (see `leader::Fence`).
    #[error("not sent: this replica no longer leads")]
    Fenced,
}

impl GitHubError {
    /// Whether trying again later may succeed (5xx, timeouts, connection errors, rate
    /// limits, a deferred background call). Permanent errors (bad token, missing
    /// permission, validation) stop at once.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitHubError::RateLimited { .. }
                | GitHubError::Server { .. }
                | GitHubError::Timeout
                | GitHubError::Transport(_)
                | GitHubError::Deferred { .. }
                | GitHubError::Fenced
        )
    }

    /// Whether the call was never sent because the budget is kept for registrations: the
    /// caller ends its pass quietly and tries again next time, rather than retrying now.
    pub fn is_deferred(&self) -> bool {
        matches!(self, GitHubError::Deferred { .. } | GitHubError::Fenced)
    }

    /// A fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GitHubError::Unauthorized => "github_unauthorized",
            GitHubError::Forbidden { .. } => "github_forbidden",
            GitHubError::NotFound => "github_not_found",
            GitHubError::Conflict { .. } => "github_conflict",
            GitHubError::Invalid { .. } => "github_invalid",
            GitHubError::RateLimited { .. } => "github_rate_limited",
            GitHubError::Server { .. } => "github_server_error",
            GitHubError::Timeout => "github_timeout",
            GitHubError::Transport(_) => "github_transport",
            GitHubError::Decode(_) => "github_decode",
            GitHubError::Deferred { .. } => "github_deferred",
            GitHubError::Fenced => "github_fenced",
        }
    }

    /// The least time to wait before retrying, when GitHub said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GitHubError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

pub(super) fn transport_error(e: reqwest::Error) -> GitHubError {
    if e.is_timeout() {
        GitHubError::Timeout
    } else {
        // Without the URL: it is ours and adds nothing; the source says what went wrong.
        GitHubError::Transport(e.without_url().to_string())
    }
}

/// Maps a non-2xx answer to an error, recognising both kinds of rate limit (docs/github.md §2.5).
pub(super) fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GitHubError {
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
}
