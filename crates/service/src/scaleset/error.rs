//! What a failed Actions-service call means for the caller (contract §11).

use std::time::Duration;

/// A failed call to GitHub's Actions service or to the auth chain in front of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScaleSetError {
    /// The REST half of the auth chain failed (registration token).
    #[error("could not get a runner registration token: {0}")]
    RegistrationToken(#[from] crate::github::GitHubError),
    /// `actions/runner-registration` refused the registration token or the URL.
    #[error("actions/runner-registration refused ({status}): {message}")]
    Registration { status: u16, message: String },
    /// The token used (admin or queue) was refused: refresh and try once more.
    #[error("the Actions service refused the token (401)")]
    Unauthorized,
    /// Another session holds the scale set (another replica, or a crashed one whose
    /// session has not lapsed yet).
    #[error("the scale set already has an active session (409): {message}")]
    SessionConflict { message: String },
    /// The session is unknown to the service (refresh answered 404; contract §5).
    #[error("the message session no longer exists (404)")]
    SessionGone,
    /// The named thing does not exist (scale set, runner, runner group).
    #[error("not found (404): {message}")]
    NotFound { message: String },
    /// A runner of that name is already registered (`AgentExistsException`).
    #[error("a runner of that name already exists (409)")]
    AgentExists,
    /// The runner is running a job and cannot be removed (`JobStillRunningException`).
    #[error("the runner is still running a job")]
    RunnerBusy,
    /// Any other 4xx answer.
    #[error("the Actions service rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// A 5xx or 429 answer: worth trying again later.
    #[error("the Actions service answered {status}")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("could not reach the Actions service: {0}")]
    Transport(String),
    #[error("unexpected answer from the Actions service: {0}")]
    Decode(String),
}

impl ScaleSetError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ScaleSetError::Server { .. }
            | ScaleSetError::Transport(_)
            | ScaleSetError::SessionConflict { .. } => true,
            ScaleSetError::RegistrationToken(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Classifies a non-2xx answer by status and the `.NET` exception name in its body.
pub(super) fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> ScaleSetError {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_start_matches('\u{feff}');
    let message = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .map(|v| {
            let field = |name: &str| {
                v.get(name)
                    .and_then(|t| t.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            format!("{}: {}", field("typeName"), field("message"))
        })
        .unwrap_or_else(|| text.chars().take(300).collect());
    let has = |name: &str| message.contains(name);
    match status {
        401 => ScaleSetError::Unauthorized,
        409 if has("AgentExistsException") => ScaleSetError::AgentExists,
        409 if has("SessionConflict") => ScaleSetError::SessionConflict { message },
        400 if has("JobStillRunningException") => ScaleSetError::RunnerBusy,
        404 => ScaleSetError::NotFound { message },
        429 | 500..=599 if status != 501 => ScaleSetError::Server { status, retry_after },
        _ => ScaleSetError::Rejected { status, message },
    }
}
