//! The shared harness (`testkit`), and what only these tests need: the service's binary,
//! for the scenarios that kill or restart its process.

pub use testkit::*;

/// The service binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_modal-github-runner");

/// Options that run the service as a child process of its binary (`serve`).
pub fn as_process(options: Options) -> Options {
    options.process(vec![BIN.into(), "serve".into()])
}
