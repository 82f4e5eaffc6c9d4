//! Recording job events, from webhooks and from polling, with group commit.

use std::collections::HashSet;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
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

/// One transaction per group, and a fixed number of statements per transaction whatever the
/// group's size: each statement is a round trip to sqlx's SQLite thread (a channel send and
/// a thread wake-up each way), which costs more than the statement itself. With one insert
/// and one upsert per event, that hand-off was most of the ingress's time under load.
async fn write_group(pool: &SqlitePool, group: &[Request], now: i64) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let news = insert_deliveries(&mut tx, group, now).await?;
    let applied: Vec<&Request> = group
        .iter()
        .zip(&news)
        .filter_map(|(req, new)| new.then_some(req))
        .collect();
    upsert_jobs(&mut tx, &applied, now).await?;
    tx.commit().await?;
    Ok(news
        .into_iter()
        .map(|new| {
            if new {
                Recorded::Applied
            } else {
                Recorded::Duplicate
            }
        })
        .collect())
}

/// Records the group's delivery GUIDs in one statement and says, per request, whether it is
/// news: it has no GUID, or its GUID was not recorded before (by an earlier group, or by an
/// earlier request of this one).
async fn insert_deliveries(
    conn: &mut SqliteConnection,
    group: &[Request],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut distinct = HashSet::new();
    let guids: Vec<&str> = group
        .iter()
        .filter_map(|r| r.delivery.as_deref())
        .filter(|g| distinct.insert(*g))
        .collect();
    let inserted: HashSet<String> = if guids.is_empty() {
        HashSet::new()
    } else {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT OR IGNORE INTO deliveries (guid, received_at) ");
        q.push_values(&guids, |mut row, guid| {
            row.push_bind(guid.to_string()).push_bind(now);
        });
        q.push(" RETURNING guid");
        q.build_query_scalar::<String>()
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect()
    };
    let mut claimed = HashSet::new();
    Ok(group
        .iter()
        .map(|r| match r.delivery.as_deref() {
            None => true,
            Some(guid) => inserted.contains(guid) && claimed.insert(guid),
        })
        .collect())
}

/// Merges each event into its job's row so that the final state is right whatever order
/// events arrive in: the status only moves forward (waiting and queued may swap), the
/// runner name and times are kept once known, and the first labels stay. Several events of
/// one job in one statement are merged in order, as if sent one by one.
const ON_CONFLICT_MERGE: &str = "
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

/// Bound values per job row; `MAX_GROUP` rows stay far below SQLite's 32,766 variables.
const JOB_COLUMNS: usize = 17;
const _: () = assert!(MAX_GROUP * JOB_COLUMNS < 32_766);

/// Upserts the jobs of `events` in one statement (none when there are none).
async fn upsert_jobs(conn: &mut SqliteConnection, events: &[&Request], now: i64) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO jobs (id, repo, run_id, run_attempt, name, workflow_name, head_sha, labels, label_key,
                  status, rank, conclusion, runner_name, source, first_seen_at, updated_at,
                  started_at, completed_at) ",
    );
    q.push_values(events, |mut row, req| {
        let e = &req.event;
        let rank = e.status.rank();
        row.push_bind(to_i64(e.job_id.0))
            .push_bind(e.repo.as_str().to_string())
            .push_bind(to_i64(e.run_id))
            .push_bind(i64::from(e.run_attempt))
            .push_bind(e.name.clone())
            .push_bind(e.workflow_name.clone())
            .push_bind(e.head_sha.clone())
            .push_bind(e.labels.to_json())
            .push_bind(e.labels.key().to_string())
            .push_bind(e.status.as_str())
            .push_bind(rank)
            .push_bind(e.conclusion.clone())
            .push_bind(e.runner_name.clone())
            .push_bind(req.source.as_str())
            .push_bind(now)
            .push_bind(now)
            .push_bind((rank >= 2).then_some(now))
            .push_bind((rank >= 3).then_some(now));
    });
    q.push(ON_CONFLICT_MERGE);
    q.build().execute(&mut *conn).await?;
    Ok(())
}

/// GitHub ids are below 2^63 in practice; SQLite integers are signed 64-bit.
pub(super) fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}
