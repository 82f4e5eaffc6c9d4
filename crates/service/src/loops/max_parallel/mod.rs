//! `strategy.max-parallel`: GitHub sends the `queued` event of every matrix job at once but
//! dispatches at most max-parallel of them (docs/github.md §2.4). Runners made for the
//! held-back jobs would sit idle, and reaping them strands the jobs (the runs-on #452
//! failure). So, as the original system did, the service reads the workflow file at the
//! run's commit, finds each job's matrix settings, and the planner never plans past them.
//! A file that cannot be read or parsed means "unlimited", never "stuck".

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::github::{GitHub, GitHubError};
use crate::store::{RunStrategy, Store, StoreError, StrategyUpdate, UnresolvedRun};
use crate::wake::{Rounds, Wake};

#[cfg(test)]
mod fuzz;
mod workflow;

pub use workflow::{WorkflowError, WorkflowJob, match_job, parse_workflow};

/// The max-parallel settings of a run's jobs.
fn updates(run: &UnresolvedRun, strategy: &RunStrategy) -> Vec<StrategyUpdate> {
    let jobs: Vec<WorkflowJob> = match strategy {
        RunStrategy::Resolved(json) => serde_json::from_str(json).unwrap_or_default(),
        RunStrategy::Unreadable => Vec::new(),
    };
    run.jobs
        .iter()
        .map(|(id, name)| {
            let (group, max_parallel) = match_job(name, &jobs).unwrap_or_else(|| (name.clone(), 0));
            StrategyUpdate {
                job: *id,
                group,
                max_parallel,
            }
        })
        .collect()
}

/// What the lookup loop needs.
pub struct StrategyContext {
    pub store: Store,
    pub github: GitHub,
    pub wake: Arc<Wake>,
    pub interval: Duration,
    /// Lookups at once.
    pub concurrency: usize,
}

/// Looks up runs as their jobs arrive, until `stop`.
pub async fn run(ctx: Arc<StrategyContext>, stop: CancellationToken) {
    let mut rounds = Rounds::default();
    loop {
        // Lookups are background calls, paced as the API budget drains: stopping must not
        // wait for them.
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = pass(&ctx) => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "max-parallel lookup pass failed");
        }
        if !rounds.next(&ctx.wake.strategy, ctx.interval, &stop).await {
            return;
        }
    }
}

/// Resolves every run with unresolved jobs; runs whose lookup fails transiently wait for
/// the next pass (and the planner's grace period).
pub async fn pass(ctx: &Arc<StrategyContext>) -> Result<(), StoreError> {
    let runs = ctx.store.unresolved_runs().await?;
    let mut tasks = JoinSet::new();
    let mut changed = false;
    for run in runs {
        while tasks.len() >= ctx.concurrency.max(1) {
            changed |= tasks.join_next().await.is_some_and(|r| r.unwrap_or(false));
        }
        let ctx = ctx.clone();
        tasks.spawn(async move { resolve(&ctx, run).await });
    }
    while let Some(r) = tasks.join_next().await {
        changed |= r.unwrap_or(false);
    }
    if changed {
        ctx.wake.planner.notify_one();
    }
    Ok(())
}

async fn resolve(ctx: &StrategyContext, run: UnresolvedRun) -> bool {
    let strategy = match &run.known {
        Some(s) => s.clone(),
        None => match lookup(ctx, &run).await {
            Ok(s) => {
                if let Err(e) = ctx.store.save_run_strategy(run.run_id, &run.repo, &s).await {
                    tracing::warn!(repo = %run.repo, run.id = run.run_id, error = %e, "could not store a run's strategy");
                    return false;
                }
                s
            }
            Err(e) => {
                tracing::debug!(repo = %run.repo, run.id = run.run_id, error = %e, "workflow lookup will be retried");
                return false;
            }
        },
    };
    match ctx.store.set_strategies(&updates(&run, &strategy)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(repo = %run.repo, run.id = run.run_id, error = %e, "could not store max-parallel settings");
            false
        }
    }
}

/// Reads and parses the run's workflow file. Transient errors are returned (retry later);
/// anything else makes the run `Unreadable`.
async fn lookup(ctx: &StrategyContext, run: &UnresolvedRun) -> Result<RunStrategy, GitHubError> {
    let result = async {
        let remote = ctx.github.get_run(&run.repo, run.run_id).await?;
        let Some(path) = remote.path.filter(|p| p.starts_with(".github/")) else {
            return Ok(None);
        };
        let sha = remote.head_sha.or_else(|| run.head_sha.clone());
        ctx.github.file_contents(&run.repo, &path, sha.as_deref()).await
    }
    .await;
    match result {
        Ok(Some(text)) => Ok(parse_off_workers(run, text).await),
        Ok(None) => Ok(RunStrategy::Unreadable),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            tracing::info!(repo = %run.repo, run.id = run.run_id, error = %e, "workflow file unreadable; its jobs count as unlimited");
            Ok(RunStrategy::Unreadable)
        }
    }
}

/// Parses a workflow file on the blocking pool: the file is the run author's to write, and
/// even within its budgets a large file must not hold an async worker.
async fn parse_off_workers(run: &UnresolvedRun, text: String) -> RunStrategy {
    let parsed = tokio::task::spawn_blocking(move || parse_workflow(&text)).await;
    match parsed {
        Ok(Ok(jobs)) => RunStrategy::Resolved(serde_json::to_string(&jobs).unwrap_or_else(|_| "[]".into())),
        Ok(Err(e)) => {
            tracing::warn!(repo = %run.repo, run.id = run.run_id, reason = %e, "workflow file refused; its jobs are planned as if max-parallel were absent");
            RunStrategy::Unreadable
        }
        Err(e) => {
            tracing::warn!(repo = %run.repo, run.id = run.run_id, error = %e, "workflow parse did not finish; its jobs are planned as if max-parallel were absent");
            RunStrategy::Unreadable
        }
    }
}

/// For tests: a job id list for `UnresolvedRun`.
#[cfg(test)]
fn run_with(jobs: &[(u64, &str)]) -> UnresolvedRun {
    use crate::domain::JobId;
    UnresolvedRun {
        run_id: 1,
        repo: crate::domain::RepoName::parse("octo/repo").expect("valid"),
        head_sha: None,
        jobs: jobs.iter().map(|(id, n)| (JobId(*id), n.to_string())).collect(),
        known: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobId;

    #[test]
    fn unreadable_runs_plan_every_job_as_unlimited() {
        let run = run_with(&[(1, "test (1)"), (2, "lint")]);
        let u = updates(&run, &RunStrategy::Unreadable);
        assert!(u.iter().all(|u| u.max_parallel == 0));
        let resolved = RunStrategy::Resolved(
            serde_json::to_string(&workflow::parse_workflow(workflow::SAMPLE).expect("parses"))
                .expect("json"),
        );
        let u = updates(&run, &resolved);
        assert_eq!(
            u[0],
            StrategyUpdate {
                job: JobId(1),
                group: "test".into(),
                max_parallel: 2
            }
        );
        assert_eq!(u[1].max_parallel, 0);
    }
}
