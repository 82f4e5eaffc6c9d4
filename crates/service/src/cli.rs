//! The command line: `serve` runs the service, `check` validates a deployment against the
//! real services without changing anything, and `status` shows the store. (The simulator,
//! the benchmarks and the fake runner have binaries of their own, in other crates.)

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::config::{ServeArgs, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "modal-github-runner",
    version,
    about = "One fresh, ephemeral GitHub Actions runner per job, in a sandbox on Modal.",
    long_about = "Receives GitHub workflow_job webhooks and gives every queued job that requests the \
                  runner label a just-in-time runner in a fresh sandbox that runs exactly that job and is \
                  then destroyed. Every option can also be set by the environment variable shown."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: webhook endpoint, planner, provisioner and reaper.
    Serve(Box<ServeArgs>),
    /// Check a deployment against GitHub, Modal and the store without changing anything:
    /// one line per check, exit code 1 if any failed. Reads the same options as `serve`.
    Check(Box<ServeArgs>),
    /// Print jobs and runners by state from the store, and why open jobs wait.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The store to read.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://modal-github-runner.db")]
    pub database_url: String,
    /// How many recent jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// Print the status as JSON (the same document as the service's /status.json, without
    /// what only the running service knows).
    #[arg(long)]
    pub json: bool,
}

/// `serve`: validates the configuration, starts the service and runs it until SIGTERM or
/// SIGINT. Exit codes: 0 after a clean stop, 2 for a configuration error, 1 otherwise.
pub async fn serve(args: ServeArgs) -> ExitCode {
    let settings = match Settings::from_args(args, |var| std::env::var(var).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(settings.server.log_format);
    for warning in settings.warnings() {
        tracing::warn!(variable = warning.var, "configuration: {warning}");
    }
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = crate::telemetry::error_chain(&e), "could not start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = crate::telemetry::error_chain(&e), "stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// `check`: validates the configuration, then runs every check and prints one line each.
/// Exit codes: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 for a
/// configuration error.
pub async fn check(args: ServeArgs) -> ExitCode {
    let settings = match Settings::from_args(args, |var| std::env::var(var).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in settings.warnings() {
        println!("WARN configuration: {warning}");
    }
    let results = crate::check::run(&settings).await;
    for result in &results {
        println!("{result}");
    }
    if results.iter().any(|r| r.outcome == crate::check::Outcome::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `status`: prints jobs and runners by state from the store, as text or JSON.
pub async fn status(database_url: &str, limit: i64, json: bool) -> ExitCode {
    let store = match crate::store::Store::open(database_url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: could not open the store at {}: {e}",
                crate::store::redacted_url(database_url)
            );
            return ExitCode::FAILURE;
        }
    };
    // On PostgreSQL `gather` reads the leader from the lease row; SQLite has no lease.
    let live = crate::status::Live {
        machine: serve_machine_policy(),
        ..crate::status::Live::default()
    };
    let gathered = crate::status::gather(&store, limit, live).await;
    match gathered {
        Ok(st) if json => match serde_json::to_string_pretty(&st) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: could not encode the status: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(st) => {
            print!("{}", crate::status::render_text(&st));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: could not read the store: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The planner's machine policy (`SANDBOX_*`, `BACKEND`), read from `serve`'s configuration
/// in this environment, so that `status` names refused jobs as the planner decides them; run
/// it with the service's environment. `None` when that configuration is incomplete or
/// invalid: the report then says the policy is unknown instead of guessing.
fn serve_machine_policy() -> Option<crate::domain::MachinePolicy> {
    use clap::{Args, FromArgMatches};
    let command = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
    let matches = command.try_get_matches_from(std::iter::empty::<String>()).ok()?;
    let args = ServeArgs::from_arg_matches(&matches).ok()?;
    let settings = Settings::from_args(args, |var| std::env::var(var).ok()).ok()?;
    Some(settings.limits.machine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_every_option_with_its_environment_variable() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").expect("serve exists");
        let help = serve.render_long_help().to_string();
        for var in [
            "ALLOWED_REPOS",
            "RUNNER_VERSION",
            "RUNNER_GROUP_ID",
            "GITHUB_ENTERPRISE_DOMAIN",
            "GITHUB_API_URL",
            "RUNNER_LABEL",
            "RUNNER_NAME_PREFIX",
            "BACKEND",
            "DATABASE_URL",
            "PORT",
            "MAX_RUNNERS",
            "SANDBOX_TIMEOUT_SECS",
            "LOG_FORMAT",
            "LOCAL_RUNNER_DIR",
            "GITHUB_TOKEN",
            "WEBHOOK_SECRET",
        ] {
            assert!(help.contains(var), "--help does not mention {var}");
        }
    }
}
