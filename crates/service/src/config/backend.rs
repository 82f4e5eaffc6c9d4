//! The backend part: where runners run, and what that backend needs.

use crate::backend::LocalConfig;
use crate::backend::modal::ModalSettings;
use crate::domain::DeploymentId;
use crate::runner_version::RunnerVersion;

use super::args::{BackendKind, ServeArgs};
use super::parse::optional;
use super::{ConfigError, err, modal};

/// The chosen backend and its settings.
#[derive(Debug, Clone)]
pub enum BackendSettings {
    /// Child processes on this machine, each in a fresh copy of `LOCAL_RUNNER_DIR`.
    Local(LocalConfig),
    /// Sandboxes on Modal.
    Modal {
        settings: Box<ModalSettings>,
        /// `RUNNER_VERSION`: the pinned runner of the sandbox image; `None` resolves the
        /// release GitHub currently serves.
        runner_version: Option<RunnerVersion>,
    },
}

pub(super) fn settings(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    deployment: &DeploymentId,
) -> Result<BackendSettings, ConfigError> {
    match args.backend {
        BackendKind::Modal => {
            let runner_version = optional(
                "RUNNER_VERSION",
                args.runner_version.as_deref(),
                RunnerVersion::pinned,
            )?;
            // The deployment tag: sandboxes of two deployments sharing an app never mix.
            let settings = modal::settings(&args.modal, env, deployment.as_str())?;
            Ok(BackendSettings::Modal {
                settings: Box::new(settings),
                runner_version,
            })
        }
        BackendKind::Local => {
            let runner_dir = args.local_runner_dir.clone().ok_or_else(|| {
                err(
                    "LOCAL_RUNNER_DIR",
                    "is required with BACKEND=local: a directory holding the runner's run.sh",
                )
            })?;
            if !runner_dir.join("run.sh").is_file() {
                return Err(err(
                    "LOCAL_RUNNER_DIR",
                    format!("{} has no run.sh", runner_dir.display()),
                ));
            }
            let work_dir = args
                .local_work_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("modal-github-runner"));
            let run_as = optional("LOCAL_RUN_AS", args.local_run_as.as_deref(), run_as_user)?;
            Ok(BackendSettings::Local(LocalConfig {
                runner_dir,
                work_dir,
                run_as,
                deployment: deployment.to_string(),
            }))
        }
    }
}

/// `LOCAL_RUN_AS` must look like a user name; whether the user exists is checked when the
/// backend starts, on the machine it runs on.
fn run_as_user(name: &str) -> Result<String, String> {
    let plausible = !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '$'));
    if plausible {
        Ok(name.to_string())
    } else {
        Err("must be a user name (letters, digits, `-`, `_`, `.`, `$`)".into())
    }
}
