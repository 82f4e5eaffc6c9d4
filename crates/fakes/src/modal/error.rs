//! The errors an RPC of the fake can answer, as one typed enum.
//!
//! Handlers return [`RpcError`] rather than building `tonic::Status` by hand, so every
//! refusal names its gRPC code in one place and carries a message in Modal's wording.

use tonic::{Code, Status};

/// Why the fake refused a request. Each variant is one gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Missing or wrong credentials or client headers.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request itself is malformed (bad name, bad key, bad recipe, too long a timeout).
    #[error("{0}")]
    InvalidArgument(String),
    /// A referenced object (app, image, secret, sandbox) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object to create exists already (a running sandbox's name).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the world is not ready for it (image not built).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A workspace limit was hit (the sandbox creation rate).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The fake is shutting down.
    #[error("{0}")]
    Unavailable(String),
}

impl RpcError {
    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
        }
    }

    /// The error every wait answers when the fake stops under it.
    pub(crate) fn shutting_down() -> Self {
        Self::Unavailable("fake Modal is shutting down".to_owned())
    }
}

impl From<RpcError> for Status {
    fn from(error: RpcError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}
