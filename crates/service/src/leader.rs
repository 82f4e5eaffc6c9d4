//! Which replica leads (docs/reliability.md §7): every replica accepts webhooks, but only the
//! leader runs the planner, provisioner, reaper, reconciler and max-parallel lookups.
//!
//! On SQLite there is one replica and it always leads. On PostgreSQL `keep_lease` takes or
//! renews the lease row every third of `LEADER_LEASE_SECS`; the term's fencing token is
//! published in [`Leadership`], and the app runs the leader's loops while it holds one.
//! Every GitHub and backend call those loops make goes through a [`Fence`], which checks
//! in the database that the token is still the live lease's: a leader paused past its
//! lease (SIGSTOP, a frozen VM) makes no call after it wakes, even before its renewal
//! task notices it lost the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{Backend, Store, StoreError};

/// This replica's view of the lease: the token of its current term (0 when it does not
/// lead) and when the term began.
pub struct Leadership {
    replica: String,
    backend: Backend,
    since_ms: AtomicI64,
    token: watch::Sender<i64>,
    /// Who leads as the lease row said at the last renewal (any replica), for `status`.
    seen: std::sync::Mutex<Option<(String, i64)>>,
}

impl Leadership {
    /// On SQLite the replica leads from now on, under a token that never changes; on
    /// PostgreSQL it leads once `keep_lease` took the lease.
    pub fn new(replica: String, backend: Backend, now_ms: i64) -> Arc<Leadership> {
        let (first, seen) = match backend {
            Backend::Sqlite => (1, Some((replica.clone(), now_ms))),
            Backend::Postgres => (0, None),
        };
        Arc::new(Leadership {
            replica,
            backend,
            since_ms: AtomicI64::new(now_ms),
            token: watch::channel(first).0,
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// The replica that leads and since when (Unix ms), as last seen; `None` before the
    /// first look or while nobody holds a live lease.
    pub fn leader(&self) -> Option<(String, i64)> {
        self.seen.lock().ok().and_then(|seen| seen.clone())
    }

    fn saw(&self, leader: Option<(String, i64)>) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = leader;
        }
    }

    /// This replica's id (`REPLICA_ID`).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The token of the term this replica leads in, if it leads.
    pub fn token(&self) -> Option<i64> {
        Some(*self.token.borrow()).filter(|t| *t != 0)
    }

    /// When this replica's current term began (Unix ms), if it leads.
    pub fn since_ms(&self) -> Option<i64> {
        self.token().map(|_| self.since_ms.load(Ordering::Acquire))
    }

    /// Notified at every change of term (taken, lost, taken again).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.token.subscribe()
    }

    fn lead(&self, token: i64, since_ms: i64) {
        self.since_ms.store(since_ms, Ordering::Release);
        self.token
            .send_if_modified(|t| std::mem::replace(t, token) != token);
    }

    fn step_down(&self) {
        self.token.send_if_modified(|t| std::mem::replace(t, 0) != 0);
    }
}

/// The check the leader's loops make before every GitHub or backend call; cheap to clone.
#[derive(Clone)]
pub struct Fence {
    store: Store,
    leadership: Arc<Leadership>,
}

impl Fence {
    pub fn new(store: Store, leadership: Arc<Leadership>) -> Fence {
        Fence { store, leadership }
    }

    /// Succeeds while this replica leads under a live lease (always on SQLite).
    /// `StoreError::Fenced` means the call it guards must not be made.
    pub async fn check(&self) -> Result<(), StoreError> {
        if self.leadership.backend == Backend::Sqlite {
            return Ok(());
        }
        let token = self.leadership.token().ok_or(StoreError::Fenced(0))?;
        self.store.check_token(token).await
    }
}

/// How long a follower waits before trying to take over a lease that still holds for
/// `remaining_ms`: until just after it expires, so that a lost leader is replaced within
/// `LEADER_LEASE_SECS` of its last renewal instead of up to a renewal period later.
fn takeover_wait(remaining_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)) + TAKEOVER_MARGIN
}

/// Past the lease's expiry by the database's clock, for the follower's own query to arrive.
const TAKEOVER_MARGIN: Duration = Duration::from_millis(20);

/// Takes and renews the lease (PostgreSQL) every third of `length` until `stop`, then gives
/// it up so another replica takes over at once. A replica that cannot renew (the database
/// unreachable) steps down before its lease could have expired. A follower tries again a
/// third of `length` later, or just after the current lease expires if that is sooner.
pub async fn keep_lease(
    store: Store,
    leadership: Arc<Leadership>,
    length: Duration,
    stop: CancellationToken,
) {
    let period = length / 3;
    let mut renewed: Option<Instant> = None;
    loop {
        let asked = Instant::now();
        match store.acquire_lease(&leadership.replica, length).await {
            Ok(Some((token, since))) => {
                renewed = Some(asked);
                if leadership.token() != Some(token) {
                    tracing::info!(replica = %leadership.replica, token, "this replica leads");
                }
                leadership.lead(token, since);
            }
            Ok(None) => {
                if leadership.token().is_some() {
                    tracing::warn!(replica = %leadership.replica, "another replica took the lease over");
                }
                renewed = None;
                leadership.step_down();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the leader lease");
                if renewed.is_none_or(|at| at.elapsed() + period >= length) {
                    leadership.step_down();
                }
            }
        }
        let mut wait = period;
        match store.lease_state().await {
            Ok(Some(lease)) if lease.live => {
                if leadership.token().is_none() {
                    wait = wait.min(takeover_wait(lease.remaining_ms));
                }
                leadership.saw(Some((lease.holder, lease.since_ms)));
            }
            Ok(_) => leadership.saw(None),
            Err(e) => tracing::debug!(error = %e, "could not read the leader lease"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(token) = leadership.token() {
        leadership.step_down();
        if let Err(e) = store.release_lease(&leadership.replica, token).await {
            tracing::warn!(error = %e, "could not give the leader lease up");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_tries_to_take_over_just_after_the_lease_expires() {
        assert_eq!(takeover_wait(2_500), Duration::from_millis(2_520));
        assert_eq!(takeover_wait(0), TAKEOVER_MARGIN);
        assert_eq!(takeover_wait(-40), TAKEOVER_MARGIN, "an expired lease: at once");
    }
}
