use std::process::ExitCode;

use clap::Parser;
use modal_github_runner::cli::{self, Cli, Command};

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
            Command::Serve(args) => cli::serve(*args).await,
            Command::Check(args) => cli::check(*args).await,
            Command::Status(args) => cli::status(&args.database_url, args.limit, args.json).await,
        }
    })
}
