//! The command line: `serve` runs the service, `status` shows the store, and `fake-runner`
//! (hidden) plays the Actions runner in tests, the simulator and benchmarks.

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

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
    /// Print jobs and runners by state from the store, and why open jobs wait.
    Status(StatusArgs),
    /// Run the whole loop against a fake GitHub and a fake Modal: the demo, no credentials.
    Simulate(crate::sim::simulate::SimulateArgs),
    /// Run the benchmarks and print one table per scenario (see BENCHMARKS.md).
    Bench(crate::sim::bench::BenchArgs),
    /// Play the GitHub Actions runner against the fake GitHub (tests and simulator).
    #[command(hide = true)]
    FakeRunner(FakeRunnerArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The store to read.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://modal-github-runner.db")]
    pub database_url: String,
    /// How many recent jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

#[derive(Debug, clap::Args)]
pub struct FakeRunnerArgs {
    /// The encoded JIT config (else ACTIONS_RUNNER_INPUT_JITCONFIG).
    #[arg(long)]
    pub jitconfig: Option<String>,
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
