//! `sim`: the simulator (`simulate`, the demo without credentials) and the benchmarks
//! (`bench`): the real service between the fake GitHub and the fake Modal, with
//! configurable latencies, limits and arrival patterns.
//!
//! The service runs as a child process of this binary (`sim serve`, hidden), so that its
//! memory and CPU are its own and a benchmark can SIGKILL it; sandboxes run this binary as
//! the fake runner (`sim fake-runner`, hidden). Both are the same code as the
//! `modal-github-runner` and `fake-runner` binaries.

mod bare;
mod bench;
mod budget;
mod report;
mod simulate;
mod warm;
mod world;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sim",
    about = "The simulator and the benchmarks of modal-github-runner."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole loop against a fake GitHub and a fake Modal: the demo, no credentials.
    Simulate(simulate::SimulateArgs),
    /// Run the benchmarks and print one table per scenario (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// The service, as `modal-github-runner serve` (the world's child process).
    #[command(hide = true)]
    Serve(Box<modal_github_runner::config::ServeArgs>),
    /// The ingress benchmark's baseline: the same HTTP stack and HMAC check, no store.
    #[command(hide = true)]
    BareServer,
    /// Play the GitHub Actions runner against the fake GitHub (the sandboxes' entrypoint).
    #[command(hide = true)]
    FakeRunner {
        #[arg(long)]
        jitconfig: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Simulate(args) => report("simulation", simulate::run(args).await),
            Command::Bench(args) => report("benchmark", bench::run(args).await),
            Command::Serve(args) => modal_github_runner::cli::serve(*args).await,
            Command::BareServer => bare::serve().await,
            Command::FakeRunner { jitconfig } => match fakes::runner::run(jitconfig).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fake runner: {e}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

fn report(what: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
