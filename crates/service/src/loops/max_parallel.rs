//! `strategy.max-parallel`: GitHub sends the `queued` event of every matrix job at once but
//! dispatches at most max-parallel of them (docs/github.md §2.4). Runners made for the
//! held-back jobs would sit idle, and reaping them strands the jobs (the runs-on #452
//! failure). So, as the original system did, the service reads the workflow file at the
//! run's commit, finds each job's matrix settings, and the planner never plans past them.
//! A file that cannot be read or parsed means "unlimited", never "stuck".

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use yaml_rust2::{Yaml, YamlLoader};

use crate::github::{GitHub, GitHubError};
use crate::store::{RunStrategy, Store, StoreError, StrategyUpdate, UnresolvedRun};
use crate::wake::{Wake, next_round};

/// One job of a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowJob {
    /// The key under `jobs:`.
    pub key: String,
    /// `jobs.<key>.name`, when set.
    pub name: Option<String>,
    /// `strategy.max-parallel`; 0 = unlimited (absent, or an expression).
    pub max_parallel: u32,
}

/// Reads the jobs of a workflow file. `None` if it is not a YAML workflow.
pub fn parse_workflow(text: &str) -> Option<Vec<WorkflowJob>> {
    let docs = YamlLoader::load_from_str(text).ok()?;
    let jobs = docs.first()?["jobs"].as_hash()?;
    let mut out = Vec::new();
    for (key, job) in jobs {
        let Some(key) = key.as_str() else { continue };
        let max_parallel = match &job["strategy"]["max-parallel"] {
            Yaml::Integer(n) => u32::try_from(*n).unwrap_or(0),
            Yaml::String(s) => s.trim().parse().unwrap_or(0),
            _ => 0,
        };
        out.push(WorkflowJob {
            key: key.to_string(),
            name: job["name"].as_str().map(str::to_string),
            max_parallel,
        });
    }
    Some(out)
}

/// How well a display name matches a workflow job; higher is better.
fn match_quality(display: &str, job: &WorkflowJob) -> u8 {
    let templated = job.name.as_deref().filter(|n| n.contains("${{"));
    let plain = match (&job.name, templated) {
        (Some(n), None) => n.as_str(),
        (None, _) => job.key.as_str(),
        (Some(_), Some(_)) => "",
    };
    if !plain.is_empty() && display == plain {
        return 3;
    }
    if !plain.is_empty() && display.starts_with(&format!("{plain} (")) && display.ends_with(')') {
        return 2;
    }
    if let Some(t) = templated
        && matches_template(display, t)
    {
        return 1;
    }
    0
}

/// Whether `display` could be `template` with its `${{ … }}` expressions filled in.
fn matches_template(display: &str, template: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${{") {
        literals.push(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => return false,
        }
    }
    literals.push(rest);
    let (first, last) = (literals[0], literals[literals.len() - 1]);
    if !display.starts_with(first) || !display.ends_with(last) || display.len() < first.len() + last.len() {
        return false;
    }
    let mut hay = &display[first.len()..display.len() - last.len()];
    for lit in &literals[1..literals.len() - 1] {
        match hay.find(lit) {
            Some(i) => hay = &hay[i + lit.len()..],
            None => return false,
        }
    }
    true
}

/// The workflow job a job's display name belongs to, and its max-parallel. Jobs called
/// through a reusable workflow show as `caller / callee`; the caller's strategy applies.
/// Ties take the smaller limit (0 = unlimited counts as the largest).
pub fn match_job(display: &str, jobs: &[WorkflowJob]) -> Option<(String, u32)> {
    let head = display.split(" / ").next().unwrap_or(display);
    let best = jobs
        .iter()
        .map(|j| (match_quality(head, j), j))
        .filter(|(q, _)| *q > 0)
        .max_by_key(|(q, _)| *q)?
        .0;
    jobs.iter()
        .filter(|j| match_quality(head, j) == best)
        .min_by_key(|j| {
            if j.max_parallel == 0 {
                u32::MAX
            } else {
                j.max_parallel
            }
        })
        .map(|j| (j.key.clone(), j.max_parallel))
}

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
    loop {
        if let Err(e) = pass(&ctx).await {
            tracing::warn!(error = %e, "max-parallel lookup pass failed");
        }
        if !next_round(&ctx.wake.strategy, ctx.interval, &stop).await {
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
        Ok(Some(text)) => Ok(match parse_workflow(&text) {
            Some(jobs) => RunStrategy::Resolved(serde_json::to_string(&jobs).unwrap_or_else(|_| "[]".into())),
            None => RunStrategy::Unreadable,
        }),
        Ok(None) => Ok(RunStrategy::Unreadable),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            tracing::info!(repo = %run.repo, run.id = run.run_id, error = %e, "workflow file unreadable; its jobs count as unlimited");
            Ok(RunStrategy::Unreadable)
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

    const WORKFLOW: &str = r#"
name: CI
on: [push]
jobs:
  lint:
    runs-on: [self-hosted, modal]
    steps: [{run: make lint}]
  test:
    runs-on: [self-hosted, modal]
    strategy:
      max-parallel: 2
      matrix:
        shard: [1, 2, 3, 4, 5]
    steps: [{run: make test}]
  build:
    name: Build ${{ matrix.os }} py${{ matrix.py }}
    runs-on: [self-hosted, modal]
    strategy:
      max-parallel: 1
      matrix: {os: [linux, mac], py: ["3.11", "3.12"]}
  deploy:
    name: Deploy
    strategy:
      max-parallel: ${{ fromJSON(inputs.n) }}
      matrix: {env: [a, b]}
  call:
    strategy: {max-parallel: 3, matrix: {x: [1, 2]}}
    uses: ./.github/workflows/reusable.yml
"#;

    fn jobs() -> Vec<WorkflowJob> {
        parse_workflow(WORKFLOW).expect("parses")
    }

    #[test]
    fn max_parallel_is_read_per_job_and_absent_or_dynamic_means_unlimited() {
        let j = jobs();
        let mp: Vec<(&str, u32)> = j.iter().map(|j| (j.key.as_str(), j.max_parallel)).collect();
        assert_eq!(
            mp,
            [("lint", 0), ("test", 2), ("build", 1), ("deploy", 0), ("call", 3)]
        );
    }

    #[test]
    fn matrix_display_names_match_their_workflow_job() {
        let j = jobs();
        assert_eq!(match_job("test (3)", &j), Some(("test".into(), 2)));
        assert_eq!(match_job("lint", &j), Some(("lint".into(), 0)));
        assert_eq!(match_job("Build linux py3.12", &j), Some(("build".into(), 1)));
        assert_eq!(match_job("Deploy (a)", &j), Some(("deploy".into(), 0)));
        assert_eq!(match_job("call (1) / build", &j), Some(("call".into(), 3)));
        assert_eq!(match_job("unknown", &j), None);
    }

    #[test]
    fn templates_match_only_with_their_literal_parts_in_order() {
        assert!(matches_template(
            "Build linux py3.11",
            "Build ${{ matrix.os }} py${{ matrix.py }}"
        ));
        assert!(!matches_template(
            "Test linux py3.11",
            "Build ${{ matrix.os }} py${{ matrix.py }}"
        ));
        assert!(!matches_template(
            "Build linux",
            "Build ${{ matrix.os }} py${{ matrix.py }}"
        ));
        assert!(!matches_template("x", "Build ${{ unterminated"));
    }

    #[test]
    fn files_that_are_not_workflows_give_nothing() {
        assert_eq!(parse_workflow("just: [a, b"), None);
        assert_eq!(parse_workflow("name: no jobs here"), None);
    }

    #[test]
    fn unreadable_runs_plan_every_job_as_unlimited() {
        let run = run_with(&[(1, "test (1)"), (2, "lint")]);
        let u = updates(&run, &RunStrategy::Unreadable);
        assert!(u.iter().all(|u| u.max_parallel == 0));
        let resolved = RunStrategy::Resolved(serde_json::to_string(&jobs()).expect("json"));
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
