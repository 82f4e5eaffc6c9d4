//! What runners cost, the output tails of failed sandboxes, and provisioning pauses
//! (issue 13 items 4 and 5): written by the cost loop and the reaper, read by `status`,
//! `/metrics` and the planner's daily spend cap.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, repo_column};
use crate::domain::{JobId, LabelSet, RepoName, RunnerName};

/// An ended runner whose cost is not recorded yet.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpricedRunner {
    pub name: RunnerName,
    /// The job it ran, else the job it was made for.
    pub job: JobId,
    pub repo: RepoName,
    pub labels: LabelSet,
    pub sandbox_id: String,
    /// Unix milliseconds: sandbox created, and runner seen ended.
    pub started_at: i64,
    pub ended_at: i64,
}

/// One recorded cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRow {
    pub runner: String,
    pub job: JobId,
    pub repo: String,
    pub dollars: f64,
    /// `stats` (Modal's own figure) or `rates` (estimated).
    pub source: String,
    pub recorded_at: i64,
}

/// The kept tail of a failed sandbox's output (already masked).
#[derive(Debug, Clone, PartialEq)]
pub struct FailureLog {
    pub runner: String,
    pub reason: String,
    pub tail: String,
    pub recorded_at: i64,
}

/// The pause kind the daily spend cap writes.
pub const SPEND_PAUSE: &str = "spend";

const UNPRICED: &str = "
SELECT r.name, r.repo, r.labels, r.sandbox_id, r.started_at, r.ended_at,
       COALESCE((SELECT j.id FROM jobs j WHERE j.runner_name = r.name LIMIT 1), r.job_id) AS job
FROM runners r
LEFT JOIN costs c ON c.runner_name = r.name
WHERE r.state IN ('done', 'failed') AND c.runner_name IS NULL
  AND r.sandbox_id IS NOT NULL AND r.started_at IS NOT NULL AND r.ended_at IS NOT NULL
ORDER BY r.ended_at
LIMIT $1";

impl UnpricedRunner {
    fn from_row(row: &AnyRow) -> Result<UnpricedRunner, StoreError> {
        let job: i64 = row.try_get("job")?;
        let labels: String = row.try_get("labels")?;
        Ok(UnpricedRunner {
            name: RunnerName::from_stored(row.try_get("name")?),
            job: JobId(u64::try_from(job).unwrap_or(0)),
            repo: repo_column(row, "repo")?,
            labels: LabelSet::from_json(&labels)
                .map_err(|e| StoreError::Corrupt(format!("runner labels: {e}")))?,
            sandbox_id: row.try_get("sandbox_id")?,
            started_at: row.try_get("started_at")?,
            ended_at: row.try_get("ended_at")?,
        })
    }
}

impl Store {
    /// Ended runners with a sandbox and no recorded cost, oldest end first, at most `limit`.
    pub async fn unpriced_runners(&self, limit: i64) -> Result<Vec<UnpricedRunner>, StoreError> {
        let rows = sqlx::query(UNPRICED).bind(limit).fetch_all(self.pool()).await?;
        rows.iter().map(UnpricedRunner::from_row).collect()
    }

    /// Records a runner's cost once; false if it was recorded already.
    pub async fn record_cost(
        &self,
        runner: &UnpricedRunner,
        dollars: f64,
        source: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO costs (runner_name, job_id, repo, dollars, source, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(runner.name.as_str())
        .bind(i64::try_from(runner.job.0).unwrap_or(i64::MAX))
        .bind(runner.repo.to_string())
        .bind(dollars)
        .bind(source)
        .bind(self.clock().now_millis())
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Dollars recorded at or after `since` (Unix milliseconds).
    pub async fn spend_since(&self, since: i64) -> Result<f64, StoreError> {
        let total: Option<f64> = sqlx::query_scalar("SELECT SUM(dollars) FROM costs WHERE recorded_at >= $1")
            .bind(since)
            .fetch_one(self.pool())
            .await?;
        Ok(total.unwrap_or(0.0))
    }

    /// Dollars per repository, all recorded time.
    pub async fn spend_by_repo(&self) -> Result<Vec<(String, f64)>, StoreError> {
        let rows = sqlx::query("SELECT repo, SUM(dollars) AS d FROM costs GROUP BY repo ORDER BY repo")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("repo")?, r.try_get("d")?)))
            .collect()
    }

    /// Dollars per job, with how they were known (`stats`, `rates`, or `mixed`), for jobs
    /// in `ids`.
    pub async fn job_costs(&self, ids: &[u64]) -> Result<Vec<(u64, f64, String)>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            let row = sqlx::query(
                "SELECT SUM(dollars) AS d, MIN(source) AS lo, MAX(source) AS hi FROM costs WHERE job_id = $1",
            )
            .bind(i64::try_from(*id).unwrap_or(i64::MAX))
            .fetch_one(self.pool())
            .await?;
            let dollars: Option<f64> = row.try_get("d")?;
            let (lo, hi): (Option<String>, Option<String>) = (row.try_get("lo")?, row.try_get("hi")?);
            if let (Some(d), Some(lo), Some(hi)) = (dollars, lo, hi) {
                let source = if lo == hi { lo } else { "mixed".into() };
                out.push((*id, d, source));
            }
        }
        Ok(out)
    }

    /// Keeps the (masked) output tail of a failed runner's sandbox; the first one wins.
    pub async fn record_failure_log(
        &self,
        runner: &str,
        reason: &str,
        tail: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO failure_logs (runner_name, reason, tail, recorded_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(runner)
        .bind(reason)
        .bind(tail)
        .bind(self.clock().now_millis())
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every kept failure tail, newest first, at most `limit`.
    pub async fn failure_logs(&self, limit: i64) -> Result<Vec<FailureLog>, StoreError> {
        let rows = sqlx::query(
            "SELECT runner_name, reason, tail, recorded_at FROM failure_logs ORDER BY recorded_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FailureLog {
                    runner: r.try_get("runner_name")?,
                    reason: r.try_get("reason")?,
                    tail: r.try_get("tail")?,
                    recorded_at: r.try_get("recorded_at")?,
                })
            })
            .collect()
    }

    /// Pauses provisioning of `kind` until `until` (Unix milliseconds) for `reason`.
    pub async fn set_pause(&self, kind: &str, reason: &str, until: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pauses (kind, reason, until) VALUES ($1, $2, $3)
             ON CONFLICT(kind) DO UPDATE SET reason = excluded.reason, until = excluded.until",
        )
        .bind(kind)
        .bind(reason)
        .bind(until)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Lifts a pause.
    pub async fn clear_pause(&self, kind: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pauses WHERE kind = $1")
            .bind(kind)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Pauses still in force at `now`, as (kind, reason).
    pub async fn active_pauses(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT kind, reason FROM pauses WHERE until > $1 ORDER BY kind")
            .bind(now)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("reason")?)))
            .collect()
    }
}

/// Unix milliseconds of the UTC midnight that starts the day holding `now`.
pub fn utc_day_start(now: i64) -> i64 {
    now - now.rem_euclid(86_400_000)
}
