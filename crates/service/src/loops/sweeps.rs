//! Sweeps that compare the outside world with the store and remove what no live runner
//! owns:
//!
//! - sandboxes tagged as this deployment's that no live runner owns (left by a crash, or
//!   by a runner whose removal failed);
//! - offline GitHub registrations with our name prefix that no live runner owns (runners
//!   whose sandbox died with the process that made them, or whose removal failed), listed
//!   once per place runners are registered (a repository, an organisation, the enterprise).
//!
//! Unlike the reaper's per-runner rules, a sweep never changes a runner's state: it only
//! cleans up what the store does not account for. The reaper's loop schedules them: the
//! sandbox sweep reuses the listing of each reaping pass (one list call per pass, not two),
//! and the registration sweep runs every `RECONCILE_INTERVAL_SECS`.

use std::collections::HashSet;

use crate::backend::{Backend, SandboxInfo};
use crate::domain::{NamePrefix, RepoAllowList, RunnerName};
use crate::github::{DeleteOutcome, GitHub, RunnerHome};
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

/// Where this deployment's runners may be registered: each polled repository (repository
/// runners), each served organisation, or the enterprise; each place once, so that
/// organisation runners are listed once per organisation, not once per repository.
async fn homes(store: &Store, github: &GitHub, allow: &RepoAllowList) -> Result<Vec<RunnerHome>, StoreError> {
    let mut homes: Vec<RunnerHome> = Vec::new();
    let mut push = |home: RunnerHome| {
        if !homes.iter().any(|h| h.key() == home.key()) {
            homes.push(home);
        }
    };
    for repo in allow.poll_targets(store.known_repos().await?) {
        push(github.home_of(&repo));
    }
    for home in allow.owners().iter().filter_map(|o| github.owner_home(o)) {
        push(home);
    }
    Ok(homes)
}

/// Deletes offline registrations named with `prefix` that no live runner owns, wherever
/// this deployment registers runners (`homes`).
pub async fn delete_offline_registrations(
    store: &Store,
    github: &GitHub,
    prefix: &NamePrefix,
    allow: &RepoAllowList,
) -> Result<(), StoreError> {
    for home in homes(store, github, allow).await? {
        let registered = match github.list_runners(&home).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(home = %home, error = %e, "could not list registered runners");
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
            match github.delete_runner(&home, runner.id).await {
                Ok(DeleteOutcome::Deleted) => {
                    tracing::info!(home = %home, runner.name = %runner.name, "orphan registration deleted")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(home = %home, runner.name = %runner.name, error = %e, "could not delete an orphan registration")
                }
            }
        }
    }
    Ok(())
}
