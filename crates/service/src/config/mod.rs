//! Configuration: environment variables (the original system's names keep their meaning),
//! each with a command-line flag that overrides it. Everything is validated at start-up;
//! the first problem stops the service with one message that names the variable.
//!
//! - `args`: the `serve` options as clap reads them. One value of one type is parsed by a
//!   value parser from `parse`, whose error names the variable.
//! - `settings`: the validated [`Settings`], one part per consumer (the GitHub client, the
//!   webhook endpoint, the store, the planner, the provisioner, the reaper, the reconciler,
//!   the backend), and the checks that involve more than one option.
//! - `github`, `backend`, `modal`: the parts that take more than a value parser (credentials,
//!   API base, hooks; local or Modal backend; Modal profiles and sandbox resources).
//! - `security`: the webhook secret's minimum length, and the warnings `serve` logs at start
//!   for what is accepted but weakens the deployment (`Settings::warnings`).
//!
//! Secrets (`GITHUB_TOKEN`, `GITHUB_APP_PRIVATE_KEY`, `WEBHOOK_SECRET`, `MODAL_TOKEN_SECRET`)
//! are read from the environment or, with a flag, from a file: never from a flag value,
//! which would put them in the process list.

mod args;
mod backend;
mod features;
mod github;
mod modal;
mod parse;
mod scaleset;
mod security;
mod settings;

#[cfg(test)]
mod tests;

pub use args::{BackendKind, JobSourceKind, LogFormat, ServeArgs};
pub use backend::BackendSettings;
pub use github::GitHubSettings;
pub use modal::ModalArgs;
pub use scaleset::{JobSource, ScaleSetSettings};
pub use security::{ConfigWarning, MIN_WEBHOOK_SECRET_BYTES};
pub use settings::{
    CostSettings, ProvisionerSettings, ReaperSettings, ReconcilerSettings, ServerSettings, Settings,
    StoreSettings, WebhookSettings,
};

/// A configuration problem, naming the variable (and its flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}
