//! Workflow runs whose `strategy.max-parallel` settings have been looked up, so one run's
//! workflow file is read once however many jobs it has.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use sqlx::Row;

use super::ingest::to_i64;
use super::{Store, StoreError, repo_column};
use crate::domain::{JobId, RepoName};

/// A run with open jobs whose max-parallel setting is not known yet.
#[derive(Debug, Clone, PartialEq)]
pub struct UnresolvedRun {
    pub run_id: u64,
    pub repo: RepoName,
    pub head_sha: Option<String>,
    pub jobs: Vec<(JobId, String)>,
    /// The stored lookup result, if the run was looked up before (its later jobs arrived
    /// after the lookup).
    pub known: Option<RunStrategy>,
}

/// What a lookup found: `Resolved` holds the workflow file's jobs as JSON (see
/// `workflow::Strategies`); `Unreadable` means the file could not be read or parsed, and
/// the run's jobs are treated as unlimited.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStrategy {
    Resolved(String),
    Unreadable,
}

/// Open jobs whose max-parallel setting is unknown, with their run's stored lookup.
///
/// No `ORDER BY`: the rows are grouped and sorted by run and job in memory. Ordered by
/// `run_id`, SQLite read the whole `jobs_by_run` index (every job the store keeps, done or
/// not) to skip a sort, instead of the few open jobs through `jobs_open`; in `bench ingress`
/// that scan, once per max-parallel pass, grew with the store and took about a tenth of the
/// service's CPU.
pub(super) const UNRESOLVED_JOBS: &str =
    "SELECT j.id, j.name, j.run_id, j.repo, j.head_sha, r.state, r.strategy
 FROM jobs j LEFT JOIN runs r ON r.run_id = j.run_id
 WHERE j.rank < 3 AND j.max_parallel IS NULL";

impl Store {
    /// Runs with open jobs whose max-parallel setting is unknown.
    pub async fn unresolved_runs(&self) -> Result<Vec<UnresolvedRun>, StoreError> {
        let rows = sqlx::query(UNRESOLVED_JOBS).fetch_all(self.pool()).await?;
        let mut runs: BTreeMap<u64, UnresolvedRun> = BTreeMap::new();
        for row in &rows {
            let run_id = u64::try_from(row.try_get::<i64, _>("run_id")?).unwrap_or(0);
            let job = JobId(u64::try_from(row.try_get::<i64, _>("id")?).unwrap_or(0));
            let name: String = row.try_get("name")?;
            let state: Option<String> = row.try_get("state")?;
            let strategy: Option<String> = row.try_get("strategy")?;
            let entry = match runs.entry(run_id) {
                Entry::Occupied(run) => run.into_mut(),
                Entry::Vacant(slot) => slot.insert(UnresolvedRun {
                    run_id,
                    repo: repo_column(row, "repo")?,
                    head_sha: row.try_get("head_sha").unwrap_or_default(),
                    jobs: Vec::new(),
                    known: match (state.as_deref(), strategy) {
                        (Some("resolved"), Some(json)) => Some(RunStrategy::Resolved(json)),
                        (Some(_), _) => Some(RunStrategy::Unreadable),
                        (None, _) => None,
                    },
                }),
            };
            entry.jobs.push((job, name));
        }
        for run in runs.values_mut() {
            run.jobs.sort_by_key(|(job, _)| *job);
        }
        Ok(runs.into_values().collect())
    }

    /// Stores the result of looking up a run's workflow file.
    pub async fn save_run_strategy(
        &self,
        run_id: u64,
        repo: &RepoName,
        strategy: &RunStrategy,
    ) -> Result<(), StoreError> {
        let (state, json) = match strategy {
            RunStrategy::Resolved(json) => ("resolved", json.as_str()),
            RunStrategy::Unreadable => ("unreadable", "[]"),
        };
        let query = sqlx::query(
            "INSERT INTO runs (run_id, repo, state, strategy, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT(run_id) DO UPDATE SET state = excluded.state, strategy = excluded.strategy,
                                               updated_at = excluded.updated_at",
        )
        .bind(to_i64(run_id))
        .bind(repo.as_str())
        .bind(state)
        .bind(json)
        .bind(self.clock.now_millis());
        let mut tx = self.begin_fenced().await?;
        query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
