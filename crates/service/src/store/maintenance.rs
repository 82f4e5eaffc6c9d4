//! Store maintenance: history older than `STORE_RETENTION_DAYS` is pruned every hour, so
//! the database stays small however long the service runs. Its own task, started by the
//! app: it needs nothing but the store, and no loop waits for it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Backend, Store, StoreError};

/// How often old history is pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Prunes history older than `retention` at once and then every `PRUNE_INTERVAL`, until
/// `stop`. A failed prune is logged and tried again at the next interval.
pub async fn run(store: Store, retention: Duration, stop: CancellationToken) {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        // The store's clock: the one its rows are stamped with.
        match store
            .prune(store.clock().now_millis().saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned old history from the store"),
            Err(e) => tracing::warn!(error = %e, "could not prune the store"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}

impl Store {
    /// Deletes history older than `cutoff` (Unix ms): completed jobs no live runner refers
    /// to, ended runners, delivery GUIDs, redelivery requests, looked-up runs, recorded
    /// costs and failure output tails. Open jobs and live runners are never touched.
    /// Returns how many rows went.
    pub async fn prune(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut deleted = 0;
        for sql in [
            "DELETE FROM deliveries WHERE received_at < $1",
            "DELETE FROM redeliveries WHERE last_asked_at < $1",
            "DELETE FROM runners WHERE state IN ('done', 'failed') AND updated_at < $1",
            "DELETE FROM jobs WHERE rank = 3 AND updated_at < $1
                AND NOT EXISTS (SELECT 1 FROM runners r WHERE r.job_id = jobs.id)
                AND (runner_name IS NULL OR NOT EXISTS (SELECT 1 FROM runners r WHERE r.name = jobs.runner_name))",
            "DELETE FROM runs WHERE updated_at < $1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = runs.run_id)",
            // Today's spend is never this old (the retention is at least 3 days).
            "DELETE FROM costs WHERE recorded_at < $1",
            "DELETE FROM failure_logs WHERE recorded_at < $1",
        ] {
            deleted += sqlx::query(sql).bind(cutoff).execute(&mut *tx).await?.rows_affected();
        }
        if self.backend == Backend::Sqlite {
            // A GUID pruned here may stay in the writer's memory until its next fold, where
            // it still counts as recorded: it was, and a replay that old is refused anyway.
            deleted += sqlx::query("DELETE FROM delivery_log WHERE received_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobId;
    use crate::store::EventSource;
    use crate::store::testdb::queued;

    #[tokio::test]
    async fn the_task_prunes_at_start_and_stops_when_told() {
        let store = Store::open("sqlite::memory:").await.expect("store");
        store
            .record(Some("g1".into()), queued(1), EventSource::Webhook)
            .await
            .expect("record");
        tokio::time::sleep(Duration::from_millis(5)).await;

        let stop = CancellationToken::new();
        let task = tokio::spawn(run(store.clone(), Duration::ZERO, stop.clone()));

        let mut left = 1;
        for _ in 0..200 {
            left = store.delivery_count().await.expect("count");
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, 0, "the old delivery GUID was pruned");
        assert!(
            store.job(JobId(1)).await.expect("read").is_some(),
            "open jobs stay"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops when told")
            .expect("no panic");
    }
}
