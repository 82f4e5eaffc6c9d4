//! One harness for everything that runs the service against the fakes: the end-to-end
//! tests, the simulator and the benchmarks.
//!
//! A [`World`] is a fake GitHub, optionally a fake Modal, a temporary directory and the
//! real service between them. The service runs in this process through
//! `Application::build` (fast, and its logs are captured per world), or as a child
//! process when a test must SIGKILL it or a benchmark must measure its memory
//! ([`ServiceMode::Process`]).

mod assertions;
mod browser;
mod checks;
mod logs;
mod options;
mod peer;
mod replicas;
mod runner;
mod service;
mod settings;
mod world;

pub use browser::Browser;
pub use checks::{
    free_port, github_client, jobs, modal_settings, processes_under, reqwest_client, sandbox_entries, wait,
};
pub use options::{Kind, Options, ServiceMode};
pub use peer::Peer;
pub use replicas::{Proxy, Replica, fresh_postgres_database};
pub use runner::fake_runner_command;
pub use service::ServiceProcess;
pub use settings::settings_from_vars;
pub use world::{APP_ID, INSTALLATION_ID, REPO, SECRET, World};

/// Sandbox creations per second the fake Modal allows in end-to-end tests (and the service
/// is told the same).
pub const MODAL_RATE: f64 = 50.0;

/// Runs a scenario once per backend: `name::local` and `name::modal`.
#[macro_export]
macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn local() {
                super::$scenario($crate::Kind::Local).await
            }
            #[tokio::test]
            async fn modal() {
                super::$scenario($crate::Kind::Modal).await
            }
        }
    )*};
}
