use std::time::Duration;

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
}

impl GitHubError {
    /// Whether trying again later may succeed (5xx, timeouts, connection errors, rate
    /// limits). Permanent errors (bad token, missing permission, validation) stop at once.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitHubError::RateLimited { .. }
                | GitHubError::Server { .. }
                | GitHubError::Timeout
                | GitHubError::Transport(_)
        )
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
