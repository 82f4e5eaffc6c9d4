//! Recording job events, from webhooks and from polling, with group commit.

use std::collections::HashSet;

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

/// Writes a group in one transaction, with a fixed number of statements whatever its size:
/// each statement is a round trip to the database (to sqlx's SQLite thread: a channel send
/// and a thread wake-up each way), which costs more than the statement itself. With one
/// insert and one upsert per event, that hand-off was most of the ingress's time under load.
///
/// Rows are written in job-id and GUID order (events of one job keep their order), so two
/// replicas' groups touching the same rows lock them in the same order and do not deadlock;
/// the results come back in the group's order.
async fn write_group(
    pool: &AnyPool,
    backend: Backend,
    group: &[Request],
    now: i64,
) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = pool.begin_with(backend.begin_write()).await?;
    let news = insert_deliveries(&mut tx, backend, group, now).await?;
    let mut order: Vec<usize> = (0..group.len()).filter(|&i| news[i]).collect();
    order.sort_by_key(|&i| group[i].event.job_id.0);
    for round in rounds(group, &order) {
        upsert_jobs(&mut tx, backend, &round, now).await?;
    }
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

/// Splits events (in job-id order) into rounds in which each job appears once: its first
/// event in the first round, its second in the second… PostgreSQL refuses an upsert that
/// touches one row twice, and in order the rounds apply each job's events as sent.
fn rounds<'a>(group: &'a [Request], order: &[usize]) -> Vec<Vec<&'a Request>> {
    let mut rounds: Vec<Vec<&Request>> = Vec::new();
    let mut previous: Option<(u64, usize)> = None;
    for &i in order {
        let job = group[i].event.job_id.0;
        let round = match previous {
            Some((last, n)) if last == job => n + 1,
            _ => 0,
        };
        previous = Some((job, round));
        if rounds.len() <= round {
            rounds.push(Vec::new());
        }
        rounds[round].push(&group[i]);
    }
    rounds
}

/// Records the group's delivery GUIDs in one statement and says, per request, whether it is
/// news: it has no GUID, or its GUID was not recorded before (by an earlier group, or by an
/// earlier request of this one).
async fn insert_deliveries(
    conn: &mut AnyConnection,
    backend: Backend,
    group: &[Request],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut guids: Vec<&str> = group.iter().filter_map(|r| r.delivery.as_deref()).collect();
    guids.sort_unstable();
    guids.dedup();
    let inserted: HashSet<String> = if guids.is_empty() {
        HashSet::new()
    } else {
        let mut next = Placeholders::new(backend);
        let rows = (0..guids.len())
            .map(|_| format!("({}, {})", next.next(), next.next()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO deliveries (guid, received_at) VALUES {rows} ON CONFLICT DO NOTHING RETURNING guid"
        );
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for guid in &guids {
            query = query.bind(*guid).bind(now);
        }
        query.fetch_all(&mut *conn).await?.into_iter().collect()
    };
    let mut claimed: HashSet<&str> = HashSet::new();
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
/// runner name and times are kept once known, and the first labels stay.
const ON_CONFLICT_MERGE: &str = "
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

/// Values bound per job row; `MAX_GROUP` rows stay far below SQLite's 32,766 and
/// PostgreSQL's 65,535 bound values.
const JOB_VALUES: usize = 18;
const _: () = assert!(MAX_GROUP * JOB_VALUES < 32_766);

/// Placeholders in the order they appear: `?` on SQLite, `$1, $2…` on PostgreSQL (which
/// has no anonymous ones). On SQLite, numbered placeholders make binding quadratic in their
/// number (sqlx looks each one's name up, and SQLite finds a name by scanning the list), a
/// cost that showed in profiles of statements with thousands of values.
struct Placeholders {
    backend: Backend,
    n: usize,
}

impl Placeholders {
    fn new(backend: Backend) -> Placeholders {
        Placeholders { backend, n: 0 }
    }

    fn next(&mut self) -> String {
        self.n += 1;
        match self.backend {
            Backend::Sqlite => "?".to_string(),
            Backend::Postgres => format!("${}", self.n),
        }
    }
}

/// Upserts one round's jobs (each job once) in one statement.
async fn upsert_jobs(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[&Request],
    now: i64,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut next = Placeholders::new(backend);
    let rows = (0..events.len())
        .map(|_| {
            let values: Vec<String> = (0..JOB_VALUES).map(|_| next.next()).collect();
            format!("({})", values.join(", "))
        })
        .collect::<Vec<_>>()
        .join(",\n");
    let sql = format!(
        "INSERT INTO jobs (id, repo, run_id, run_attempt, name, workflow_name, head_sha, labels, label_key,
                  status, rank, conclusion, runner_name, source, first_seen_at, updated_at,
                  started_at, completed_at)
VALUES {rows}{ON_CONFLICT_MERGE}"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for req in events {
        let e = &req.event;
        let rank = e.status.rank();
        query = query
            .bind(to_i64(e.job_id.0))
            .bind(e.repo.as_str())
            .bind(to_i64(e.run_id))
            .bind(i64::from(e.run_attempt))
            .bind(e.name.as_str())
            .bind(e.workflow_name.as_deref())
            .bind(e.head_sha.as_deref())
            .bind(e.labels.to_json())
            .bind(e.labels.key())
            .bind(e.status.as_str())
            .bind(rank)
            .bind(e.conclusion.as_deref())
            .bind(e.runner_name.as_deref())
            .bind(req.source.as_str())
            .bind(now)
            .bind(now)
            .bind((rank >= 2).then_some(now))
            .bind((rank >= 3).then_some(now));
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// GitHub ids are below 2^63 in practice; SQLite integers and PostgreSQL bigints are
/// signed 64-bit.
pub(super) fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}
