//! Recording job events, from webhooks and from polling, with group commit.

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::clock::Clock;
use crate::domain::JobEvent;

/// How the store learned of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Webhook,
    Poll,
    /// A runner scale set's message queue.
    ScaleSet,
}

impl EventSource {
    fn as_str(self) -> &'static str {
        match self {
            EventSource::Webhook => "webhook",
            EventSource::Poll => "poll",
            EventSource::ScaleSet => "scaleset",
        }
    }
}

/// The outcome of recording one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Durably applied.
    Applied,
    /// The delivery GUID was recorded before; nothing changed.
    Duplicate,
}

pub(super) struct Request {
    delivery: Option<String>,
    event: JobEvent,
    source: EventSource,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// At most this many events share one transaction; bounded so one commit stays short.
const MAX_GROUP: usize = 512;

impl super::Store {
    /// Records `event` (and its delivery GUID, if any) and returns once it is on disk.
    pub async fn record(
        &self,
        delivery: Option<String>,
        event: JobEvent,
        source: EventSource,
    ) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ingest
            .send(Request {
                delivery,
                event,
                source,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

pub(super) fn spawn_writer(pool: SqlitePool, clock: Clock) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
    tokio::spawn(write_loop(pool, clock, rx));
    tx
}

async fn write_loop(pool: SqlitePool, clock: Clock, mut rx: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let outcome = write_group(&pool, &group, clock.now_millis()).await;
        match outcome {
            Ok(results) => {
                for (req, result) in group.drain(..).zip(results) {
                    let _ = req.reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = group.len(), "could not record events");
                let reason = e.to_string();
                for req in group.drain(..) {
                    let _ = req.reply.send(Err(StoreError::WriteFailed(reason.clone())));
                }
            }
        }
    }
}

async fn write_group(pool: &SqlitePool, group: &[Request], now: i64) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut results = Vec::with_capacity(group.len());
    for req in group {
        results.push(apply(&mut tx, req, now).await?);
    }
    tx.commit().await?;
    Ok(results)
}

async fn apply(conn: &mut SqliteConnection, req: &Request, now: i64) -> Result<Recorded, StoreError> {
    if let Some(guid) = &req.delivery {
        let inserted = sqlx::query("INSERT OR IGNORE INTO deliveries (guid, received_at) VALUES (?1, ?2)")
            .bind(guid)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        if inserted.rows_affected() == 0 {
            return Ok(Recorded::Duplicate);
        }
    }
    upsert_job(conn, &req.event, req.source, now).await?;
    Ok(Recorded::Applied)
}

/// Merges one event into the job's row so that the final state is right whatever order
/// events arrive in: the status only moves forward (waiting and queued may swap), the
/// runner name and times are kept once known, and the first labels stay.
const UPSERT_JOB: &str = "
INSERT INTO jobs (id, repo, run_id, run_attempt, name, workflow_name, head_sha, labels, label_key,
                  status, rank, conclusion, runner_name, source, first_seen_at, updated_at,
                  started_at, completed_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?16, ?17)
ON CONFLICT(id) DO UPDATE SET
    status = CASE WHEN excluded.rank > jobs.rank OR (excluded.rank = 1 AND jobs.rank = 1)
                  THEN excluded.status ELSE jobs.status END,
    conclusion = CASE WHEN excluded.rank > jobs.rank THEN excluded.conclusion
                      ELSE COALESCE(jobs.conclusion, excluded.conclusion) END,
    runner_name = COALESCE(jobs.runner_name, excluded.runner_name),
    rank = MAX(jobs.rank, excluded.rank),
    run_attempt = MAX(jobs.run_attempt, excluded.run_attempt),
    name = CASE WHEN jobs.name = '' THEN excluded.name ELSE jobs.name END,
    workflow_name = COALESCE(jobs.workflow_name, excluded.workflow_name),
    head_sha = COALESCE(jobs.head_sha, excluded.head_sha),
    started_at = COALESCE(jobs.started_at, excluded.started_at),
    completed_at = COALESCE(jobs.completed_at, excluded.completed_at),
    updated_at = excluded.updated_at
WHERE excluded.rank > jobs.rank OR (excluded.rank = 1 AND jobs.rank = 1 AND excluded.status <> jobs.status)
   OR (jobs.runner_name IS NULL AND excluded.runner_name IS NOT NULL)";

async fn upsert_job(
    conn: &mut SqliteConnection,
    e: &JobEvent,
    source: EventSource,
    now: i64,
) -> Result<(), StoreError> {
    let rank = e.status.rank();
    let started = (rank >= 2).then_some(now);
    let completed = (rank >= 3).then_some(now);
    sqlx::query(UPSERT_JOB)
        .bind(to_i64(e.job_id.0))
        .bind(e.repo.as_str())
        .bind(to_i64(e.run_id))
        .bind(i64::from(e.run_attempt))
        .bind(&e.name)
        .bind(e.workflow_name.as_deref())
        .bind(e.head_sha.as_deref())
        .bind(e.labels.to_json())
        .bind(e.labels.key())
        .bind(e.status.as_str())
        .bind(rank)
        .bind(e.conclusion.as_deref())
        .bind(e.runner_name.as_deref())
        .bind(source.as_str())
        .bind(now)
        .bind(started)
        .bind(completed)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// GitHub ids are below 2^63 in practice; SQLite integers are signed 64-bit.
pub(super) fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}
