//! Recording job events, from webhooks and from polling, with group commit.

use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::{Backend, StoreError};
use crate::clock::Clock;
use crate::domain::JobEvent;

/// How the store learned of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Webhook,
    Poll,
}

impl EventSource {
    fn as_str(self) -> &'static str {
        match self {
            EventSource::Webhook => "webhook",
            EventSource::Poll => "poll",
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

pub(super) fn spawn_writer(pool: AnyPool, backend: Backend, clock: Clock) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
    tokio::spawn(write_loop(pool, backend, clock, rx));
    tx
}

/// How many times a group is tried in all when PostgreSQL chose it as a deadlock victim
/// or could not serialise it (another replica wrote the same rows at the same moment).
const GROUP_TRIES: u32 = 3;

async fn write_loop(pool: AnyPool, backend: Backend, clock: Clock, mut rx: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let mut tries = 1;
        let outcome = loop {
            match write_group(&pool, backend, &group, clock.now_millis()).await {
                Err(e) if is_conflict(&e) && tries < GROUP_TRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, "a group of events met another replica's; trying again");
                }
                other => break other,
            }
        };
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

/// PostgreSQL's deadlock (40P01) and serialisation failure (40001): transient, the
/// group is tried again.
fn is_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Db(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01" | "40001"))
        }
        _ => false,
    }
}

/// Writes a group in one transaction. Rows are written in job-id order (events of one job
/// keep their order), so two replicas' groups touching the same jobs lock them in the same
/// order and do not deadlock; the results come back in the group's order.
async fn write_group(
    pool: &AnyPool,
    backend: Backend,
    group: &[Request],
    now: i64,
) -> Result<Vec<Recorded>, StoreError> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by_key(|&i| group[i].event.job_id.0);
    let mut tx = pool.begin_with(backend.begin_write()).await?;
    let mut results = vec![Recorded::Duplicate; group.len()];
    for i in order {
        results[i] = apply(&mut tx, &group[i], now).await?;
    }
    tx.commit().await?;
    Ok(results)
}

async fn apply(conn: &mut AnyConnection, req: &Request, now: i64) -> Result<Recorded, StoreError> {
    if let Some(guid) = &req.delivery {
        let inserted =
            sqlx::query("INSERT INTO deliveries (guid, received_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
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
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16, $17)
ON CONFLICT(id) DO UPDATE SET
    status = CASE WHEN excluded.rank > jobs.rank OR (excluded.rank = 1 AND jobs.rank = 1)
                  THEN excluded.status ELSE jobs.status END,
    conclusion = CASE WHEN excluded.rank > jobs.rank THEN excluded.conclusion
                      ELSE COALESCE(jobs.conclusion, excluded.conclusion) END,
    runner_name = COALESCE(jobs.runner_name, excluded.runner_name),
    rank = CASE WHEN excluded.rank > jobs.rank THEN excluded.rank ELSE jobs.rank END,
    run_attempt = CASE WHEN excluded.run_attempt > jobs.run_attempt THEN excluded.run_attempt
                       ELSE jobs.run_attempt END,
    name = CASE WHEN jobs.name = '' THEN excluded.name ELSE jobs.name END,
    workflow_name = COALESCE(jobs.workflow_name, excluded.workflow_name),
    head_sha = COALESCE(jobs.head_sha, excluded.head_sha),
    started_at = COALESCE(jobs.started_at, excluded.started_at),
    completed_at = COALESCE(jobs.completed_at, excluded.completed_at),
    updated_at = excluded.updated_at
WHERE excluded.rank > jobs.rank OR (excluded.rank = 1 AND jobs.rank = 1 AND excluded.status <> jobs.status)
   OR (jobs.runner_name IS NULL AND excluded.runner_name IS NOT NULL)";

async fn upsert_job(
    conn: &mut AnyConnection,
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

/// GitHub ids are below 2^63 in practice; SQLite integers and PostgreSQL bigints are
/// signed 64-bit.
pub(super) fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}
