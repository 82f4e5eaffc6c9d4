//! Wake-up hints between loops. The store is the only shared state; a hint only says "look
//! again now" so a loop need not wait for its next tick. Every loop also runs on a timer,
//! so a lost hint delays work but never loses it.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Wake {
    /// New or changed jobs: demand may have changed.
    pub planner: Notify,
    /// New pending runners to provision.
    pub provisioner: Notify,
    /// Runners to retire or jobs that finished.
    pub reaper: Notify,
    /// Runs whose max-parallel settings must be looked up.
    pub strategy: Notify,
}

/// After a hint, a loop waits this long so that hints arriving together (a burst of
/// webhooks) cost one pass, not one each.
pub const COALESCE: Duration = Duration::from_millis(20);

/// Waits for `hint` or `interval`, whichever comes first; after a hint, a further
/// `COALESCE`. Returns `false` once `stop` is cancelled.
pub async fn next_round(hint: &Notify, interval: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => return false,
        () = hint.notified() => {}
        () = tokio::time::sleep(interval) => return true,
    }
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(COALESCE) => true,
    }
}
