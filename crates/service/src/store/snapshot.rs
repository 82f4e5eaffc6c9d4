//! What the planner reads, read at one instant.
//!
//! Jobs and runners are read in one read transaction, so both come from the same committed
//! state. Read one after the other, an `in_progress` event committed between the two reads
//! would show its runner as taken while its job still looks queued, and the planner would
//! make a replacement for a job that already runs.

use std::collections::HashMap;

use super::jobs::OPEN_JOBS;
use super::runners::{ATTEMPT_STATS, LIVE_RUNNERS, attempt_from_row};
use super::{JobRow, LiveRunner, Store, StoreError};
use crate::domain::JobId;
use crate::store::AttemptStats;

/// Open jobs, live runners and attempt counts, all from one committed state.
#[derive(Debug, Clone, Default)]
pub struct PlanInputs {
    pub jobs: Vec<JobRow>,
    pub runners: Vec<LiveRunner>,
    pub attempts: HashMap<JobId, AttemptStats>,
}

impl Store {
    /// Reads the planner's inputs in one read transaction (a consistent snapshot in WAL mode;
    /// repeatable read on PostgreSQL, whose default gives each statement its own).
    pub async fn plan_inputs(&self) -> Result<PlanInputs, StoreError> {
        let mut tx = self.pool().begin_with(self.backend().begin_snapshot()).await?;
        let jobs = sqlx::query(OPEN_JOBS).fetch_all(&mut *tx).await?;
        let runners = sqlx::query(LIVE_RUNNERS).fetch_all(&mut *tx).await?;
        let attempts = sqlx::query(ATTEMPT_STATS).fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        Ok(PlanInputs {
            jobs: jobs.iter().map(JobRow::from_row).collect::<Result<_, _>>()?,
            runners: runners
                .iter()
                .map(LiveRunner::from_row)
                .collect::<Result<_, _>>()?,
            attempts: attempts.iter().map(attempt_from_row).collect::<Result<_, _>>()?,
        })
    }
}
