//! Wake-up hints between loops. The store is the only shared state; a hint only says "look
//! again now" so a loop need not wait for its next tick. Every loop also runs on a timer,
//! so a lost hint delays work but never loses it.

use tokio::sync::Notify;

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
