//! A second deployment of the service against a world's fakes: same fake GitHub, same fake
//! Modal (or the same local work directory), its own port and store. For what two
//! deployments sharing an organisation and a Modal app must not do to each other.

use std::time::Duration;

use modal_github_runner::app::Application;
use modal_github_runner::store::{RunnerRow, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checks::{free_port, reqwest_client};
use crate::options::ServiceMode;
use crate::settings::settings_from_vars;
use crate::world::World;

/// Another service, in this process, sharing a world's fakes.
pub struct Peer {
    pub port: u16,
    env: Vec<(String, String)>,
    database_url: String,
    running: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

impl World {
    /// Starts another service against this world's fakes: the world's environment with
    /// its own port and store (`peer-<name>.db` in the world's directory), then `env` on
    /// top; waits until it is ready. Its webhook is the test's to add.
    pub async fn start_peer(&self, name: &str, env: &[(&str, &str)]) -> Peer {
        assert!(
            matches!(self.options().mode, ServiceMode::InProcess),
            "a peer runs in this process"
        );
        let port = free_port();
        let database_url = format!(
            "sqlite://{}",
            self.dir.path().join(format!("peer-{name}.db")).display()
        );
        let mut vars = self.service_env();
        let mine = [
            ("PORT".to_string(), port.to_string()),
            ("DATABASE_URL".to_string(), database_url.clone()),
        ];
        let theirs = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        for (k, v) in mine.into_iter().chain(theirs) {
            vars.retain(|(ek, _)| *ek != k);
            vars.push((k, v));
        }
        let mut peer = Peer {
            port,
            env: vars,
            database_url,
            running: None,
        };
        peer.start().await;
        peer
    }
}

impl Peer {
    /// Starts (or restarts) the peer on its port and store; waits until it is ready.
    pub async fn start(&mut self) {
        let settings = settings_from_vars(&self.env)
            .unwrap_or_else(|e| panic!("the peer's configuration is refused: {e}"));
        let app = Application::build(settings)
            .await
            .unwrap_or_else(|e| panic!("the peer did not start: {e:#}"));
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(app.run_until_stopped(async move { signal.cancelled().await }));
        self.running = Some((stop, task));
        let client = reqwest_client();
        let url = self.url("/readyz");
        for _ in 0..1200 {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the peer did not become ready in 30 s");
    }

    /// Stops the peer as SIGTERM would and waits for it.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let stopped = tokio::time::timeout(Duration::from_secs(30), task).await;
            assert!(stopped.is_ok(), "the peer did not stop within 30 s");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every runner in the peer's store.
    pub async fn runners(&self) -> Vec<RunnerRow> {
        let store = Store::open(&self.database_url).await.expect("the store opens");
        let rows = store.all_runners().await.expect("runners");
        store.close().await;
        rows
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            task.abort();
        }
    }
}
