//! Moves the write-ahead log into the database in the background.
//!
//! The writer's connection has SQLite's automatic checkpoint off (see the module above):
//! otherwise the commit that crosses 1,000 pages of log copies them into the database and
//! syncs it while a webhook waits for its answer. Here a connection of its own runs
//! a `PASSIVE` checkpoint every interval: it copies what no reader still needs and never
//! waits for, nor blocks, the writer. Once the whole log is copied, the writer's next
//! commit starts the log over, so it stays small.

use std::time::Duration;

use sqlx::AnyPool;

/// How often the log is copied into the database. At 500 webhooks a second the log grows
/// by a few MiB a second; a second's worth is quick to copy.
const INTERVAL: Duration = Duration::from_secs(1);

/// Checkpoints `pool`'s database every `INTERVAL` until the pool is closed.
pub(super) fn spawn(pool: AnyPool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                break;
            }
            if let Err(e) = checkpoint(&pool).await {
                tracing::debug!(error = %e, "background checkpoint failed; the next one tries again");
            }
        }
    });
}

/// One passive checkpoint; returns the log's size and how much of it was copied, in pages.
pub(super) async fn checkpoint(pool: &AnyPool) -> Result<(i64, i64), sqlx::Error> {
    let (_busy, log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    Ok((log, copied))
}

#[cfg(test)]
mod tests {
    use crate::store::testdb::queued;
    use crate::store::{EventSource, Store};

    /// The writer never checkpoints by itself (its commits would pay for the copy), and a
    /// background checkpoint copies the whole log that no reader needs.
    #[tokio::test]
    async fn the_writer_leaves_checkpoints_to_the_background_task_which_copies_the_whole_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::open(&url).await.expect("store");
        let auto: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(store.writer())
            .await
            .expect("pragma");
        assert_eq!(auto, 0, "the writer's commits would checkpoint");
        for i in 0..200u64 {
            store
                .record(Some(format!("g{i}")), queued(i), EventSource::Webhook)
                .await
                .expect("recorded");
        }
        let other = sqlx::AnyPool::connect(&url).await.expect("another connection");
        let (log, copied) = super::checkpoint(&other).await.expect("checkpoint");
        assert!(log > 0, "200 commits left no log");
        assert_eq!(
            copied, log,
            "a passive checkpoint with no reader copies the whole log"
        );
        store.close().await;
    }
}
