//! Sweeps that compare the outside world with the store and remove what no live runner
//! owns:
//!
//! - sandboxes tagged as this deployment's that no live runner owns (left by a crash, or
//!   by a runner whose removal failed); the backend lists only this deployment's;
//! - offline GitHub registrations with our name prefix and our deployment's label that no
//!   live runner owns (runners
//!   whose sandbox died with the process that made them, or whose removal failed), listed
//!   once per place runners are registered (a repository, an organisation, the enterprise).
//!
//! Unlike the reaper's per-runner rules, a sweep never changes a runner's state: it only
//! cleans up what the store does not account for. The reaper's loop schedules them: the
//! sandbox sweep reuses the listing of each reaping pass (one list call per pass, not two),
//! and the registration sweep runs every `RECONCILE_INTERVAL_SECS`.

use std::collections::HashSet;

use crate::backend::{FencedBackend, SandboxInfo};
use crate::domain::{DeploymentId, NamePrefix, RepoAllowList, RunnerName};
use crate::github::{DeleteOutcome, GitHub, RunnerHome};
use crate::store::{Store, StoreError};

/// Stops the listed sandboxes whose name is not in `live`, unless the store says the
/// runner became live after the listing (a create that just finished).
pub async fn stop_orphan_sandboxes(
    store: &Store,
    backend: &FencedBackend,
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

/// Deletes offline registrations named with `prefix` and labelled as `deployment`'s that
/// no live runner owns, wherever this deployment registers runners. Another deployment's
/// registrations, even named with the same prefix, are never touched.
///
/// What it costs: the listings are conditional, so an idle place's costs no API budget; a
/// repository with live runners is left for a later round, because its listing changes with
/// every runner of ours (each change a counted call) while what the sweep looks for there
/// can wait until it has none (an unused JIT registration does no harm, and GitHub removes
/// it after a day: docs/github.md §2.2). When the budget is down to its reserve the sweep
/// stops until the next round.
pub async fn delete_offline_registrations(
    store: &Store,
    github: &GitHub,
    prefix: &NamePrefix,
    deployment: &DeploymentId,
    allow: &RepoAllowList,
) -> Result<(), StoreError> {
    let label = deployment.label();
    let busy: HashSet<String> = store
        .live_runners()
        .await?
        .into_iter()
        .map(|r| github.home_of(&r.row.repo).key())
        .collect();
    // Only a repository's listing is skipped while it has live runners: an organisation's
    // or enterprise's is one call per sweep however many repositories it serves.
    let skip = |h: &RunnerHome| matches!(h, RunnerHome::Repo(_)) && busy.contains(&h.key());
    for home in homes(store, github, allow)
        .await?
        .into_iter()
        .filter(|h| !skip(h))
    {
        let registered = match github.list_runners(&home).await {
            Ok(r) => r,
            Err(e) if e.is_deferred() => {
                tracing::debug!(error = %e, "runner-list sweep deferred to keep the API budget");
                return Ok(());
            }
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
            let ours = RunnerName::parse_ours(prefix, &runner.name).is_some() && runner.has_label(&label);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RunnerState;
    use crate::fixture::{Fixture, deployment, prefix};
    use crate::store::RunnerPatch;

    #[tokio::test]
    async fn only_this_deployments_offline_orphans_are_deleted() {
        let f = Fixture::start().await;
        // Ours, failed (not live): an orphan to delete.
        let orphan = f.plan(1).await;
        f.register(&orphan).await;
        f.advance(
            &orphan,
            &[RunnerState::Failed],
            RunnerPatch::failed("gone", false),
        )
        .await;
        // (A live runner's registration is kept: the sweep does not even list a place
        // with live runners; `reaper::tests::the_sweep_leaves_a_repository_with_live_runners_…`.)
        // Another deployment's, named with the same prefix and unknown to our store.
        let theirs = RunnerName::for_job(&prefix(), crate::domain::JobId(3), 1);
        f.register_as(&theirs, &DeploymentId::parse("other").expect("valid id"))
            .await;
        let allow = RepoAllowList::parse(crate::fixture::REPO).expect("allowlist");

        delete_offline_registrations(&f.store, &f.github, &prefix(), &deployment(), &allow)
            .await
            .expect("swept");

        assert!(f.registration(&orphan).is_none(), "our orphan is deleted");
        assert!(
            f.registration(&theirs).is_some(),
            "another deployment's registration is never touched"
        );
        f.finish().await;
    }
}
