//! modal-github-runner: one fresh, ephemeral GitHub Actions runner per job, in a sandbox.
//!
//! Data flows one way (docs/design.md):
//!
//! ```text
//! GitHub ─webhook─▶ ingress ─┐
//! GitHub REST ◀─poll─ reconciler ─┤
//!                                 ▼
//!                               store ◀─ max_parallel (workflow files)
//!                                 │
//!                              planner      runners needed per pool = eligible queued jobs + warm pool − available runners
//!                                 │
//!                            provisioner ─▶ GitHub generate-jitconfig ─▶ backend.create
//!                                 │
//!                               reaper ───▶ GitHub delete-runner + backend.terminate
//!                               sweeps ───▶ orphan sandboxes and offline registrations
//! ```
//!
//! The store is the only shared state; the loops (`loops/`) wake each other with hints
//! (`wake`) and also run on timers, so a lost hint delays work but never loses it.

pub mod app;
pub mod backend;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod costs;
pub mod domain;
pub mod failure_log;
#[cfg(test)]
mod fixture;
pub mod github;
pub mod ingress;
pub mod leader;
pub mod loops;
pub mod metrics;
pub mod pace;
pub mod retry;
pub mod runner_release;
pub mod runner_version;
pub mod scaleset;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wake;
