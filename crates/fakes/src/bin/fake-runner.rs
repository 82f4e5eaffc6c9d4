//! `fake-runner [--jitconfig BLOB]`: plays the GitHub Actions runner's `run.sh` against the
//! fake GitHub, in the current directory. The fake Modal runs it as a sandbox's entrypoint
//! and the local backend's runner directory (`make_runner_dir`) execs it.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let jitconfig = parse_args(std::env::args().skip(1));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake runner: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fakes::runner::run(jitconfig)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake runner: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--jitconfig X` or `--jitconfig=X`; anything else is ignored, as `run.sh` passes its own
/// arguments through.
fn parse_args(mut args: impl Iterator<Item = String>) -> Option<String> {
    while let Some(arg) = args.next() {
        if arg == "--jitconfig" {
            return args.next();
        }
        if let Some(value) = arg.strip_prefix("--jitconfig=") {
            return Some(value.to_string());
        }
    }
    None
}
