//! modal-github-runner: one fresh, ephemeral GitHub Actions runner per job, in a sandbox.
//!
//! Data flows one way (architecture.md):
//!
//! ```text
//! GitHub ─webhook─▶ ingress ─▶ store ◀─ strategy (max-parallel lookups)
//!                               │
//!                            planner      runners needed per pool = eligible queued jobs − available runners
//!                               │
//!                          provisioner ─▶ GitHub generate-jitconfig ─▶ backend.create
//!                               │
//!                             reaper ───▶ GitHub delete-runner + backend.terminate
//! ```
//!
//! The store is the only shared state; loops wake each other with hints (`wake`) and also
//! run on timers, so a lost hint delays work but never loses it.

pub mod app;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
#[cfg(test)]
mod fixture;
pub mod github;
pub mod ingress;
pub mod metrics;
pub mod pace;
pub mod planner;
pub mod provisioner;
pub mod reaper;
pub mod reconciler;
pub mod retry;
pub mod runner_release;
pub mod runner_version;
pub mod status;
pub mod store;
pub mod strategy;
pub mod sweeps;
pub mod telemetry;
pub mod tls;
pub mod wake;
