use std::process::ExitCode;

use clap::Parser;
use modal_github_runner::app::{Application, shutdown_signal};
use modal_github_runner::cli::{Cli, Command};
use modal_github_runner::config::Settings;
use modal_github_runner::{fake, sim, status, store, telemetry};

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
            Command::Serve(args) => serve(*args).await,
            Command::Status(args) => status(&args.database_url, args.limit).await,
            Command::FakeRunner(args) => fake_runner(args.jitconfig).await,
            Command::Simulate(args) => report("simulation", sim::simulate::run(args).await),
            Command::Bench(args) => report("benchmark", sim::bench::run(args).await),
        }
    })
}

async fn serve(args: modal_github_runner::config::ServeArgs) -> ExitCode {
    let settings = match Settings::from_args(args, |var| std::env::var(var).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "could not start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn status(database_url: &str, limit: i64) -> ExitCode {
    let store = match store::Store::open(database_url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: could not open the store at {database_url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match status::report(&store, limit).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: could not read the store: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn fake_runner(jitconfig: Option<String>) -> ExitCode {
    telemetry::init(modal_github_runner::config::LogFormat::Pretty);
    match fake::runner::run(jitconfig).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake runner: {e}");
            ExitCode::FAILURE
        }
    }
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
