//! Sweeps that compare the outside world with the store and remove what no live runner
//! owns:
//!
//! - sandboxes tagged as this deployment's that no live runner owns (left by a crash, or
//!   by a runner whose removal failed);
//! - offline GitHub registrations with our name prefix that no live runner owns (runners
//!   whose sandbox died with the process that made them, or whose removal failed).
//!
//! Unlike the reaper's per-runner rules, a sweep never changes a runner's state: it only
//! cleans up what the store does not account for. The reaper's loop schedules them: the
//! sandbox sweep reuses the listing of each reaping pass (one list call per pass, not two),
//! and the registration sweep runs every `RECONCILE_INTERVAL_SECS`.

use std::collections::HashSet;

use crate::backend::{Backend, SandboxInfo};
use crate::domain::{NamePrefix, RepoAllowList, RepoName, RunnerName};
use crate::github::{DeleteOutcome, GitHub};
use crate::store::{Store, StoreError};

/// Stops the listed sandboxes whose name is not in `live`, unless the store says the
/// runner became live after the listing (a create that just finished).
pub async fn stop_orphan_sandboxes(
    store: &Store,
    backend: &Backend,
    sandboxes: &[SandboxInfo],
    live: &HashSet<&str>,
) -> Result<(), StoreError> {
    for sb in sandboxes.iter().filter(|s| !live.contains(s.name.as_str())) {
        let row = store.runner(&sb.name).await?;
        if row.as_ref().is_some_and(|r| r.state.is_live()) {
            continue;
        }
        match backend.terminate(&sb.id).await {
            Ok(()) => {
                tracing::info!(runner.name = %sb.name, sandbox.id = %sb.id, "orphan sandbox stopped")
            }
            Err(e) => {
                tracing::warn!(runner.name = %sb.name, error = %e, "could not stop an orphan sandbox")
            }
        }
    }
    Ok(())
}

/// Deletes offline registrations named with `prefix` that no live runner owns, in every
/// allowed repository (or, without an allowlist, every repository the store has seen).
///
/// What it costs: the listings are conditional, so an idle repository's costs no API
/// budget; a repository with live runners is left for a later round, because its listing
/// changes with every runner of ours (each change a counted call) while what the sweep looks
/// for there can wait until it has none (an unused JIT registration does no harm, and
/// GitHub removes it after a day: docs/github.md §2.2). When the budget is down to its
/// reserve the sweep stops until the next round.
pub async fn delete_offline_registrations(
    store: &Store,
    github: &GitHub,
    prefix: &NamePrefix,
    allow: &RepoAllowList,
) -> Result<(), StoreError> {
    let repos: Vec<RepoName> = match allow.listed() {
        Some(listed) => listed.to_vec(),
        None => store.known_repos().await?,
    };
    let busy: HashSet<String> = store
        .live_runners()
        .await?
        .into_iter()
        .map(|r| r.row.repo.key())
        .collect();
    for repo in repos.into_iter().filter(|r| !busy.contains(&r.key())) {
        let registered = match github.list_runners(&repo).await {
            Ok(r) => r,
            Err(e) if e.is_deferred() => {
                tracing::debug!(error = %e, "runner-list sweep deferred to keep the API budget");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(repo = %repo, error = %e, "could not list registered runners");
                continue;
            }
        };
        let live: HashSet<String> = store
            .live_runners()
            .await?
            .into_iter()
            .map(|r| r.row.name.to_string())
            .collect();
        for runner in registered {
            let ours = RunnerName::parse_ours(prefix, &runner.name).is_some();
            if !ours || live.contains(&runner.name) || runner.status == "online" || runner.busy {
                continue;
            }
            match github.delete_runner(&repo, runner.id).await {
                Ok(DeleteOutcome::Deleted) => {
                    tracing::info!(repo = %repo, runner.name = %runner.name, "orphan registration deleted")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(repo = %repo, runner.name = %runner.name, error = %e, "could not delete an orphan registration")
                }
            }
        }
    }
    Ok(())
}
