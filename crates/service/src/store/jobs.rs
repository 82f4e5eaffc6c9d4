//! Reading jobs for planning, status and tests.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::ingest::to_i64;
use super::{Backend, Store, StoreError, corrupt, repo_column};
use crate::domain::{Abandoned, JobId, JobStatus, LabelSet, RepoName};

/// A stored job: what the planner, the reconciler and `status` read.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: JobId,
    pub repo: RepoName,
    pub run_id: u64,
    pub name: String,
    pub labels: LabelSet,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    /// The runner that took it.
    pub runner_name: Option<String>,
    /// `webhook` or `poll`: how the job was first learned of.
    pub source: String,
    pub first_seen_at: i64,
    /// The workflow job that `strategy.max-parallel` counts by, once looked up.
    pub mp_group: Option<String>,
    /// `None`: not looked up yet; `Some(0)`: unlimited.
    pub max_parallel: Option<u32>,
    /// Why the service abandoned it, when it did (its conclusion is then `abandoned`).
    pub closed_reason: Option<String>,
}

/// The max-parallel setting found for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyUpdate {
    pub job: JobId,
    pub group: String,
    pub max_parallel: u32,
}

fn id(row: &AnyRow, col: &str) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} is negative")))
}

fn labels(row: &AnyRow) -> Result<LabelSet, StoreError> {
    let json: String = row.try_get("labels")?;
    LabelSet::from_json(&json).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

fn status(row: &AnyRow) -> Result<JobStatus, StoreError> {
    let s: String = row.try_get("status")?;
    match s.as_str() {
        "waiting" | "queued" | "in_progress" | "completed" => Ok(JobStatus::parse(&s)),
        other => Err(corrupt("jobs.status", other)),
    }
}

fn max_parallel(row: &AnyRow) -> Result<Option<u32>, StoreError> {
    let v: Option<i64> = row.try_get("max_parallel")?;
    Ok(v.map(|v| u32::try_from(v).unwrap_or(0)))
}

impl JobRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<JobRow, StoreError> {
        Ok(JobRow {
            id: JobId(id(row, "id")?),
            repo: repo_column(row, "repo")?,
            run_id: id(row, "run_id")?,
            name: row.try_get("name")?,
            labels: labels(row)?,
            status: status(row)?,
            conclusion: row.try_get("conclusion")?,
            runner_name: row.try_get("runner_name")?,
            source: row.try_get("source")?,
            first_seen_at: row.try_get("first_seen_at")?,
            mp_group: row.try_get("mp_group")?,
            max_parallel: max_parallel(row)?,
            closed_reason: row.try_get("closed_reason")?,
        })
    }
}

/// Jobs not yet completed, oldest first.
pub(super) const OPEN_JOBS: &str = "SELECT * FROM jobs WHERE rank < 3 ORDER BY first_seen_at, id";

impl Store {
    /// Jobs not yet completed, oldest first.
    pub async fn open_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(OPEN_JOBS).fetch_all(self.pool()).await?;
        rows.iter().map(JobRow::from_row).collect()
    }

    /// One job, if known.
    pub async fn job(&self, job: JobId) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(to_i64(job.0))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(JobRow::from_row).transpose()
    }

    /// Every job, newest first, up to `limit`.
    pub async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM jobs ORDER BY first_seen_at DESC, id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(JobRow::from_row).collect()
    }

    /// Job counts by status, for `status` and metrics.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Every repository the store has jobs from (what the reconciler polls without an
    /// allowlist).
    pub async fn known_repos(&self) -> Result<Vec<RepoName>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT repo FROM jobs ORDER BY repo")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| repo_column(r, "repo")).collect()
    }

    /// How many deliveries were recorded (benchmarks check durability with it).
    pub async fn delivery_count(&self) -> Result<i64, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT (SELECT COUNT(*) FROM deliveries) + (SELECT COUNT(*) FROM delivery_log) AS n"
            }
            Backend::Postgres => "SELECT COUNT(*) AS n FROM deliveries",
        };
        let row = sqlx::query(sql).fetch_one(self.pool()).await?;
        Ok(row.try_get("n")?)
    }

    /// Whether a delivery GUID was recorded. On SQLite a GUID of the last second or so is
    /// still in the delivery log (see `ingest::DeliveryLog`), which is small and read
    /// whole.
    pub async fn delivery_seen(&self, guid: &str) -> Result<bool, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT 1 FROM deliveries WHERE guid = $1
                 UNION ALL SELECT 1 FROM delivery_log WHERE guid = $1 LIMIT 1"
            }
            Backend::Postgres => "SELECT 1 FROM deliveries WHERE guid = $1",
        };
        let row = sqlx::query(sql).bind(guid).fetch_optional(self.pool()).await?;
        Ok(row.is_some())
    }

    /// Closes an open job that will never get its `completed` event, with the reason.
    /// Returns whether it was open. Its runners become surplus and are retired by the
    /// planner like those of a cancelled job; a late `completed` event changes nothing.
    pub async fn abandon_job(&self, job: JobId, why: &Abandoned) -> Result<bool, StoreError> {
        let now = self.clock().now_millis();
        let query = sqlx::query(
            "UPDATE jobs SET status = 'completed', rank = 3, conclusion = 'abandoned', closed_reason = $1,
                 completed_at = $2, updated_at = $2
             WHERE id = $3 AND rank < 3",
        )
        .bind(why.to_string())
        .bind(now)
        .bind(to_i64(job.0));
        let mut tx = self.begin_fenced().await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many times a delivery's redelivery was asked for.
    pub async fn redelivery_asks(&self, guid: &str) -> Result<u32, StoreError> {
        let row = sqlx::query("SELECT asked FROM redeliveries WHERE guid = $1")
            .bind(guid)
            .fetch_optional(self.pool())
            .await?;
        let asked: i64 = row.map(|r| r.try_get("asked")).transpose()?.unwrap_or(0);
        Ok(u32::try_from(asked).unwrap_or(u32::MAX))
    }

    /// Notes one more redelivery request for a delivery.
    pub async fn note_redelivery(&self, guid: &str) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO redeliveries (guid, asked, last_asked_at) VALUES ($1, 1, $2)
             ON CONFLICT (guid) DO UPDATE SET asked = redeliveries.asked + 1, last_asked_at = $2",
        )
        .bind(guid)
        .bind(self.clock().now_millis());
        let mut tx = self.begin_fenced().await?;
        query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the max-parallel settings found for jobs of one run.
    pub async fn set_strategies(&self, updates: &[StrategyUpdate]) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced().await?;
        for u in updates {
            sqlx::query("UPDATE jobs SET mp_group = $1, max_parallel = $2 WHERE id = $3")
                .bind(&u.group)
                .bind(i64::from(u.max_parallel))
                .bind(to_i64(u.job.0))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
