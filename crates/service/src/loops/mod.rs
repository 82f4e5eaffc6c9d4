//! The loops that act on the store, in the order data flows through them: the reconciler
//! feeds the store from GitHub, `max_parallel` resolves each run's matrix limit, the planner
//! decides by counts, the provisioner registers runners and creates sandboxes, the reaper
//! ends runners by their rules, and the sweeps clean up what no live runner owns.

pub mod costs;
pub mod max_parallel;
pub mod planner;
pub mod provisioner;
pub mod reaper;
pub mod reconciler;
pub mod registry;
pub mod scaleset_listener;
pub mod sweeps;
