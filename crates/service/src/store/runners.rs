//! Runner rows: planned by the planner, advanced by the provisioner, ended by the reaper.
//! Every state change is a compare-and-set on the current state, so two loops (or a loop
//! and a restart) cannot both act on one runner.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::ingest::to_i64;
use super::{Store, StoreError, corrupt, placeholders, repo_column};
use crate::domain::{JobId, JobStatus, LabelSet, RepoName, RunnerName, RunnerState};

/// A runner the planner decided to make.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRunner {
    pub name: RunnerName,
    pub job: JobId,
    pub attempt: u32,
    pub repo: RepoName,
    pub labels: LabelSet,
}

/// Every stored field of a runner.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerRow {
    pub name: RunnerName,
    pub job: JobId,
    pub attempt: u32,
    pub repo: RepoName,
    pub labels: LabelSet,
    pub state: RunnerState,
    pub github_id: Option<u64>,
    pub sandbox_id: Option<String>,
    pub failure: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

/// The job a runner took, as reported by `in_progress`.
#[derive(Debug, Clone, PartialEq)]
pub struct TookJob {
    pub id: JobId,
    pub status: JobStatus,
    pub run_id: u64,
    pub mp_group: Option<String>,
    pub completed_at: Option<i64>,
}

/// A runner that still holds capacity, with the job it took, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRunner {
    pub row: RunnerRow,
    pub took: Option<TookJob>,
}

/// Attempts made so far for one open job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttemptStats {
    pub max_attempt: u32,
    /// Failed attempts that count toward backoff.
    pub failures: u32,
    pub last_failure_at: Option<i64>,
    /// Runners that had a sandbox and failed or ended idle without running the job: what
    /// `MAX_ATTEMPTS_PER_JOB` counts. Failures before a sandbox existed (an outage at
    /// GitHub or Modal) are not the job's and only back off.
    pub wasted: u32,
}

/// Fields to set together with a state change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RunnerPatch {
    pub github_id: Option<u64>,
    pub sandbox_id: Option<String>,
    pub failure: Option<String>,
    /// For failures: whether the planner should retry the job after a backoff (`true`) or
    /// whether the failure does not say anything about the job (`false`, e.g. a runner lost
    /// in a restart) and a new attempt may start at once.
    pub backoff: Option<bool>,
    pub started: bool,
    pub ended: bool,
}

impl RunnerPatch {
    /// The runner ended normally.
    pub fn ended() -> RunnerPatch {
        RunnerPatch {
            ended: true,
            ..RunnerPatch::default()
        }
    }

    /// The runner ended early for `reason` (recorded for `status`); not a failure of the job.
    pub fn ended_because(reason: impl Into<String>) -> RunnerPatch {
        RunnerPatch {
            failure: Some(reason.into()),
            ended: true,
            ..RunnerPatch::default()
        }
    }

    /// The runner failed for `reason`; `backoff` says whether the job's next attempt waits.
    pub fn failed(reason: impl Into<String>, backoff: bool) -> RunnerPatch {
        RunnerPatch {
            failure: Some(reason.into()),
            backoff: Some(backoff),
            ended: true,
            ..RunnerPatch::default()
        }
    }
}

impl RunnerRow {
    fn from_row(row: &AnyRow) -> Result<RunnerRow, StoreError> {
        let state: String = row.try_get("state")?;
        let labels: String = row.try_get("labels")?;
        let job: i64 = row.try_get("job_id")?;
        let attempt: i64 = row.try_get("attempt")?;
        let github_id: Option<i64> = row.try_get("github_id")?;
        Ok(RunnerRow {
            name: RunnerName::from_stored(row.try_get("name")?),
            job: JobId(u64::try_from(job).map_err(|_| corrupt("runners.job_id", &job.to_string()))?),
            attempt: u32::try_from(attempt).unwrap_or(0),
            repo: repo_column(row, "repo")?,
            labels: LabelSet::from_json(&labels)
                .map_err(|e| StoreError::Corrupt(format!("runner labels: {e}")))?,
            state: RunnerState::parse(&state).ok_or_else(|| corrupt("runners.state", &state))?,
            github_id: github_id.and_then(|v| u64::try_from(v).ok()),
            sandbox_id: row.try_get("sandbox_id")?,
            failure: row.try_get("failure")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            started_at: row.try_get("started_at")?,
            ended_at: row.try_get("ended_at")?,
        })
    }
}

/// The query of `Store::runners_in`, with a placeholder per state.
pub(super) fn runners_in_query(states: &[RunnerState]) -> String {
    let live_only = if states.iter().all(|s| s.is_live()) {
        " AND state NOT IN ('done', 'failed')"
    } else {
        ""
    };
    format!(
        "SELECT * FROM runners WHERE state IN ({}){live_only} ORDER BY created_at, name",
        placeholders(1, states.len().max(1))
    )
}

/// Live runners joined with the job each took (the newest state if several name it).
pub(super) const LIVE_RUNNERS: &str = "
SELECT r.*, t.id AS took_id, t.status AS took_status, t.run_id AS took_run_id,
       t.mp_group AS took_mp_group, t.completed_at AS took_completed_at
FROM runners r
LEFT JOIN jobs t ON t.id = (SELECT j.id FROM jobs j WHERE j.runner_name = r.name
                            ORDER BY j.rank DESC LIMIT 1)
WHERE r.state NOT IN ('done', 'failed')
ORDER BY r.created_at, r.name";

impl LiveRunner {
    pub(super) fn from_row(row: &AnyRow) -> Result<LiveRunner, StoreError> {
        let took_id: Option<i64> = row.try_get("took_id")?;
        let took = match took_id {
            None => None,
            Some(id) => {
                let status: String = row.try_get("took_status")?;
                let run_id: i64 = row.try_get("took_run_id")?;
                Some(TookJob {
                    id: JobId(u64::try_from(id).unwrap_or(0)),
                    status: JobStatus::parse(&status),
                    run_id: u64::try_from(run_id).unwrap_or(0),
                    mp_group: row.try_get("took_mp_group")?,
                    completed_at: row.try_get("took_completed_at")?,
                })
            }
        };
        Ok(LiveRunner {
            row: RunnerRow::from_row(row)?,
            took,
        })
    }
}

impl Store {
    /// Inserts planned runners in one transaction. A name that exists already is left alone
    /// (the planner computed it from stale data); returns how many were inserted.
    pub async fn insert_runners(&self, runners: &[NewRunner]) -> Result<u64, StoreError> {
        let now = self.clock.now_millis();
        let mut tx = self.begin_fenced().await?;
        let mut inserted = 0;
        for r in runners {
            let done = sqlx::query(
                "INSERT INTO runners (name, job_id, attempt, repo, labels, label_key, state,
                                      created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)
                 ON CONFLICT DO NOTHING",
            )
            .bind(r.name.as_str())
            .bind(to_i64(r.job.0))
            .bind(i64::from(r.attempt))
            .bind(r.repo.as_str())
            .bind(r.labels.to_json())
            .bind(r.labels.key())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            inserted += done.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Moves `name` from one of `from` to `to`, setting the patch's fields. Returns `false`
    /// (and changes nothing) if the runner is not in one of `from`.
    pub async fn transition(
        &self,
        name: &RunnerName,
        from: &[RunnerState],
        to: RunnerState,
        patch: RunnerPatch,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_millis();
        let sql = format!(
            "UPDATE runners SET
                 state = $1,
                 github_id = COALESCE($2, github_id),
                 sandbox_id = COALESCE($3, sandbox_id),
                 failure = COALESCE($4, failure),
                 retryable = COALESCE($5, retryable),
                 started_at = CASE WHEN $6 THEN $8 ELSE started_at END,
                 ended_at = CASE WHEN $7 THEN $8 ELSE ended_at END,
                 updated_at = $8
             WHERE name = $9 AND state IN ({})",
            placeholders(10, from.len().max(1))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(patch.github_id.map(to_i64))
            .bind(patch.sandbox_id)
            .bind(patch.failure)
            .bind(patch.backoff.map(i64::from))
            .bind(patch.started)
            .bind(patch.ended)
            .bind(now)
            .bind(name.as_str());
        query = bind_states(query, from);
        let mut tx = self.begin_fenced().await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Runners in any of `states`, oldest first.
    ///
    /// Asked for live states only (the provisioner, every pass), the query names the
    /// `runners_live` index's condition too, so SQLite reads the live runners through it
    /// rather than every runner the store keeps: with bound states it cannot tell that they
    /// are live.
    pub async fn runners_in(&self, states: &[RunnerState]) -> Result<Vec<RunnerRow>, StoreError> {
        let query = bind_states(sqlx::query(sqlx::AssertSqlSafe(runners_in_query(states))), states);
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(RunnerRow::from_row).collect()
    }

    /// One runner by name.
    pub async fn runner(&self, name: &str) -> Result<Option<RunnerRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM runners WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(RunnerRow::from_row).transpose()
    }

    /// Every runner ever made, oldest first (status output and tests).
    pub async fn all_runners(&self) -> Result<Vec<RunnerRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM runners ORDER BY created_at, name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(RunnerRow::from_row).collect()
    }

    /// Runners that hold capacity, each with the job it took.
    pub async fn live_runners(&self) -> Result<Vec<LiveRunner>, StoreError> {
        let rows = sqlx::query(LIVE_RUNNERS).fetch_all(self.pool()).await?;
        rows.iter().map(LiveRunner::from_row).collect()
    }

    /// Attempts per open job: the highest attempt number, and failures that count toward
    /// backoff.
    pub async fn attempt_stats(&self) -> Result<Vec<(JobId, AttemptStats)>, StoreError> {
        let rows = sqlx::query(ATTEMPT_STATS).fetch_all(self.pool()).await?;
        rows.iter().map(attempt_from_row).collect()
    }

    /// Runner counts by state, for `status` and metrics.
    pub async fn runner_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM runners GROUP BY state ORDER BY state")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}

/// Binds each state's name to the `IN (…)` list `placeholders` wrote; an empty list binds
/// one name no row has, so it matches nothing.
fn bind_states<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    states: &[RunnerState],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    if states.is_empty() {
        return query.bind("");
    }
    for state in states {
        query = query.bind(state.as_str());
    }
    query
}

/// The highest attempt and the retryable failures of every open job's runners.
///
/// Read from the open jobs (`jobs_open`) to their runners (`runners_by_job`). Written as
/// `JOIN … ON`, SQLite read every runner the store keeps through `runners_by_job`, to group
/// without a sort, and looked up each one's job; SQLite's `CROSS JOIN` keeps the tables in
/// the order written, and PostgreSQL treats it as the inner join it is.
pub(super) const ATTEMPT_STATS: &str = "SELECT r.job_id, MAX(r.attempt) AS max_attempt,
        SUM(CASE WHEN r.state = 'failed' AND r.retryable = 1 THEN 1 ELSE 0 END) AS failures,
        MAX(CASE WHEN r.state = 'failed' AND r.retryable = 1 THEN r.updated_at END) AS last_failure,
        SUM(CASE WHEN r.state = 'failed' AND r.started_at IS NOT NULL THEN 1 ELSE 0 END) AS wasted
 FROM jobs j CROSS JOIN runners r
 WHERE j.rank < 3 AND r.job_id = j.id
 GROUP BY r.job_id";

/// One row of `ATTEMPT_STATS`.
pub(super) fn attempt_from_row(row: &AnyRow) -> Result<(JobId, AttemptStats), StoreError> {
    let job: i64 = row.try_get("job_id")?;
    let max_attempt: i64 = row.try_get("max_attempt")?;
    let failures: i64 = row.try_get("failures")?;
    let wasted: i64 = row.try_get("wasted")?;
    Ok((
        JobId(u64::try_from(job).unwrap_or(0)),
        AttemptStats {
            max_attempt: u32::try_from(max_attempt).unwrap_or(u32::MAX),
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            last_failure_at: row.try_get("last_failure")?,
            wasted: u32::try_from(wasted).unwrap_or(u32::MAX),
        },
    ))
}
