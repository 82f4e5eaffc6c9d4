//! What every scenario ends with: all jobs completed, nothing left anywhere, no secret in
//! the service's logs.

use std::time::Duration;

use fakes::github::FakeGitHubConfig;

use crate::checks::{processes_under, sandbox_entries};
use crate::world::{SECRET, World};

impl World {
    /// Waits until every job the fake GitHub knows is completed.
    pub async fn wait_all_completed(&self, timeout: Duration) {
        let done = self
            .github
            .wait_until(timeout, |gh| {
                gh.jobs().iter().all(|j| j.status.as_str() == "completed")
            })
            .await;
        if !done {
            let pending: Vec<String> = self
                .github
                .jobs()
                .iter()
                .filter(|j| j.status.as_str() != "completed")
                .map(|j| format!("{} {} {:?}", j.id, j.name, j.status))
                .collect();
            panic!("jobs not completed: {pending:?}\n{}", self.tail_logs(60));
        }
    }

    /// What is left now: registrations at GitHub, running sandboxes, runner processes and
    /// live runners in the store; `None` when there is nothing.
    pub async fn leftovers(&self) -> Option<String> {
        let registrations: Vec<String> = self.github.runners().into_iter().map(|r| r.name).collect();
        let sandboxes = self.live_sandboxes();
        let processes = processes_under(&self.work_dir());
        let live: Vec<String> = self
            .runners()
            .await
            .into_iter()
            .filter(|r| r.state.is_live())
            .map(|r| format!("{} {}", r.name, r.state))
            .collect();
        if registrations.is_empty() && sandboxes.is_empty() && processes.is_empty() && live.is_empty() {
            return None;
        }
        Some(format!(
            "registrations {registrations:?}, sandboxes {sandboxes:?}, processes {processes:?}, live runners {live:?}"
        ))
    }

    /// Waits until nothing is left (see `leftovers`); what is left after `timeout` if not.
    pub async fn wait_nothing_left(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(left) = self.leftovers().await else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(left);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until nothing is left: no registration at GitHub, no sandbox, no runner
    /// process, and every runner in the store ended.
    pub async fn assert_nothing_left(&self, timeout: Duration) {
        if let Err(left) = self.wait_nothing_left(timeout).await {
            panic!("left behind: {left}\n{}", self.tail_logs(60));
        }
    }

    /// Names of the sandboxes running now, whatever the backend.
    pub fn live_sandboxes(&self) -> Vec<String> {
        match &self.modal {
            None => sandbox_entries(&self.work_dir()),
            Some(m) => m
                .sandboxes()
                .into_iter()
                .filter(|s| s.is_running())
                .map(|s| s.name.unwrap_or(s.id))
                .collect(),
        }
    }

    /// No log line holds a credential: the GitHub token, the webhook secret, the Modal
    /// token secret, nor any JIT config or installation token the fake GitHub issued.
    pub fn assert_no_secret_in_logs(&self) {
        let mut secrets = vec![
            ("the GitHub token", FakeGitHubConfig::default().token),
            ("the webhook secret", SECRET.to_string()),
        ];
        if let Some(m) = &self.modal {
            secrets.push(("the Modal token secret", m.credentials().1));
        }
        let issued = self.github.secrets_issued();
        assert!(
            !issued.is_empty(),
            "the fake issued no JIT config or token: nothing to look for"
        );
        secrets.extend(issued.into_iter().map(|s| ("an issued JIT config or token", s)));
        for line in self.logs() {
            for (what, secret) in &secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "{what} leaked: {}",
                    line.replace(secret.as_str(), "<the secret>")
                );
            }
        }
    }
}
