//! The one-way lifecycle of a sandbox: a result decided once (the first of exit, timeout
//! and terminate wins), then the report that its processes are gone. RPCs wait on it
//! through watch channels, so waiters wake as soon as either happens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use modal_proto::GenericResult;

use super::state::unix_now;

/// How a sandbox ended. Decided once: the first of exit, timeout, terminate wins.
#[derive(Debug, Clone)]
pub(crate) struct Finish {
    pub(crate) result: GenericResult,
    pub(crate) at: Instant,
    pub(crate) unix: f64,
}

/// What the supervisor reports once the entrypoint's processes are gone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stopped {
    pub(crate) log_tail: Option<String>,
}

/// Where a sandbox's RPCs and its supervisor meet.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    outcome: Arc<watch::Sender<Option<Finish>>>,
    stopped: Arc<watch::Sender<Option<Stopped>>>,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        Self {
            outcome: Arc::new(watch::channel(None).0),
            stopped: Arc::new(watch::channel(None).0),
        }
    }

    /// Sets the result unless one is set already; true if this call decided it.
    pub(crate) fn finish(&self, result: GenericResult) -> bool {
        self.outcome.send_if_modified(|outcome| {
            if outcome.is_some() {
                return false;
            }
            *outcome = Some(Finish {
                result,
                at: Instant::now(),
                unix: unix_now(),
            });
            true
        })
    }

    pub(crate) fn outcome(&self) -> Option<Finish> {
        self.outcome.borrow().clone()
    }

    pub(crate) fn stopped(&self) -> Option<Stopped> {
        self.stopped.borrow().clone()
    }

    /// Returns once the sandbox has a result.
    pub(crate) async fn decided(&self) {
        let mut outcome = self.outcome.subscribe();
        // The sender lives in `self`, so this only ends when a result is set.
        let _ = outcome.wait_for(Option::is_some).await.is_ok();
    }

    /// Waits up to `limit` for a result; `None` if there is none by then.
    pub(crate) async fn wait_outcome(&self, limit: Duration) -> Option<Finish> {
        let _ = tokio::time::timeout(limit, self.decided()).await;
        self.outcome()
    }

    /// Waits up to `limit` for the supervisor to report the processes gone.
    pub(crate) async fn wait_stopped(&self, limit: Duration) {
        let mut stopped = self.stopped.subscribe();
        let _ = tokio::time::timeout(limit, async { stopped.wait_for(Option::is_some).await.is_ok() }).await;
    }

    pub(crate) fn mark_stopped(&self, log_tail: Option<String>) {
        self.stopped.send_replace(Some(Stopped { log_tail }));
    }
}
