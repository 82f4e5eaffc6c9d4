//! Recording job events, from webhooks and from polling, with group commit.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{Backend, StoreError, placeholders};
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

/// Starts the task that writes events in groups. On SQLite it first reads the delivery
/// log, whose GUIDs it keeps in memory (see `DeliveryLog`).
pub(super) async fn spawn_writer(
    pool: AnyPool,
    backend: Backend,
    clock: Clock,
) -> Result<mpsc::Sender<Request>, StoreError> {
    let log = match backend {
        Backend::Sqlite => Some(DeliveryLog::load(&pool).await?),
        Backend::Postgres => None,
    };
    let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
    tokio::spawn(write_loop(pool, clock, log, rx));
    Ok(tx)
}

/// How many times a group is tried in all when PostgreSQL chose it as a deadlock victim
/// or could not serialise it (another replica wrote the same rows at the same moment).
const GROUP_TRIES: u32 = 3;

async fn write_loop(
    pool: AnyPool,
    clock: Clock,
    mut log: Option<DeliveryLog>,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    loop {
        // With a delivery log to fold, an idle writer wakes to fold it.
        let next = rx.recv_many(&mut group, MAX_GROUP);
        let received = if log.is_some() {
            tokio::time::timeout(FOLD_EVERY, next).await.ok()
        } else {
            Some(next.await)
        };
        let received = match received {
            Some(0) => break,
            Some(n) => n,
            None => 0,
        };
        if received > 0 {
            write_and_answer(&pool, &clock, log.as_mut(), &mut group).await;
        }
        if let Some(log) = log.as_mut().filter(|log| log.fold_due(received == 0)) {
            log.fold(&pool).await;
        }
    }
}

/// Writes a group and answers each of its requests: on SQLite (which has a delivery log)
/// in one query, on PostgreSQL in a transaction tried again after a conflict.
async fn write_and_answer(
    pool: &AnyPool,
    clock: &Clock,
    log: Option<&mut DeliveryLog>,
    group: &mut Vec<Request>,
) {
    let now = clock.now_millis();
    let outcome = match log {
        Some(log) => write_group_sqlite(pool, log, group, now).await,
        None => {
            let mut tries = 1;
            loop {
                match write_group_postgres(pool, group, now).await {
                    Err(e) if is_conflict(&e) && tries < GROUP_TRIES => {
                        tries += 1;
                        tracing::debug!(error = %e, "a group of events met another replica's; trying again");
                    }
                    other => break other,
                }
            }
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

/// A fold moves the delivery log into `deliveries` once it holds this many GUIDs…
const FOLD_AT: usize = 4096;
/// …or once this long has passed since the last fold.
const FOLD_EVERY: Duration = Duration::from_secs(1);

/// SQLite's delivery GUIDs not yet folded into `deliveries`: exactly the rows of the
/// `delivery_log` table, which only the writer task changes, so whether a GUID is there is
/// answered from memory. Bounded: folded at `FOLD_AT` GUIDs or every `FOLD_EVERY`.
///
/// Why the detour: a GUID is a random key, so inserting a group's GUIDs straight into
/// `deliveries` dirtied one page of its index per delivery, and each commit wrote those
/// pages to the write-ahead log (and the checkpoint into the database): in `bench
/// ingress`, the largest single cost of a webhook after the HTTP stack. Appended to the
/// log table they share pages; a fold inserts thousands in GUID order, dirtying each
/// page of the index once.
pub(super) struct DeliveryLog {
    guids: HashSet<String>,
    folded_at: Instant,
}

impl DeliveryLog {
    /// Reads the log as the last writer left it (a crash can leave it unfolded).
    async fn load(pool: &AnyPool) -> Result<DeliveryLog, StoreError> {
        let rows = sqlx::query("SELECT guid FROM delivery_log")
            .fetch_all(pool)
            .await?;
        let guids = rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        Ok(DeliveryLog {
            guids,
            folded_at: Instant::now(),
        })
    }

    fn contains(&self, guid: &str) -> bool {
        self.guids.contains(guid)
    }

    /// Whether to fold now: the log is full, or old, or the writer is idle.
    fn fold_due(&self, idle: bool) -> bool {
        !self.guids.is_empty()
            && (idle || self.guids.len() >= FOLD_AT || self.folded_at.elapsed() >= FOLD_EVERY)
    }

    /// Moves the log into `deliveries` in one transaction. A failure leaves both tables
    /// as they were (and is tried again at the next fold); deduplication reads both.
    async fn fold(&mut self, pool: &AnyPool) {
        self.folded_at = Instant::now();
        let sql = "BEGIN IMMEDIATE;
INSERT INTO deliveries (guid, received_at)
SELECT guid, received_at FROM delivery_log WHERE true ORDER BY guid
ON CONFLICT DO NOTHING;
DELETE FROM delivery_log;
COMMIT;";
        match run_in_transaction(pool, sqlx::query(sql)).await {
            Ok(_) => self.guids.clear(),
            Err(e) => {
                tracing::warn!(error = %e, guids = self.guids.len(), "could not fold the delivery log; trying again later");
            }
        }
    }
}

/// Runs `query`, a multi-statement query that begins and commits its own transaction, on
/// the writer's connection. If a statement fails inside the transaction, it is rolled
/// back; if even that fails, the connection is closed and the pool opens a fresh one
/// rather than trust its state. Closing is the last resort: an in-memory database dies
/// with its connection.
async fn run_in_transaction(
    pool: &AnyPool,
    query: AnyQuery<'_>,
) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
    let mut conn = pool.acquire().await?;
    match query.fetch_all(&mut *conn).await {
        Ok(rows) => Ok(rows),
        Err(e) => {
            match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                // Rolled back here, or by SQLite itself (some errors end the transaction).
                Ok(_) => {}
                Err(rollback) if rollback.to_string().contains("no transaction is active") => {}
                Err(_) => conn.close_on_drop(),
            }
            Err(e.into())
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

/// PostgreSQL's group commit: one transaction, with a fixed number of statements whatever
/// the group's size (each is a round trip to the database, which costs more than the
/// statement itself).
///
/// Rows are written in job-id and GUID order (events of one job keep their order), so two
/// replicas' groups touching the same rows lock them in the same order and do not deadlock;
/// the results come back in the group's order.
async fn write_group_postgres(
    pool: &AnyPool,
    group: &[Request],
    now: i64,
) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = pool.begin_with(Backend::Postgres.begin_write()).await?;
    let news = insert_deliveries(&mut tx, group, now).await?;
    let mut order: Vec<usize> = (0..group.len()).filter(|&i| news[i]).collect();
    order.sort_by_key(|&i| group[i].event.job_id.0);
    for round in rounds(group, &order) {
        upsert_jobs(&mut tx, &round, now).await?;
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

/// SQLite's group commit: the whole transaction is one multi-statement query, so one round
/// trip to sqlx's SQLite thread instead of four (begin, insert, upsert, commit), each a
/// channel send and a thread wake-up each way on a machine whose cores are busy answering
/// webhooks.
///
/// An event is news if it has no GUID, or its GUID is in neither the delivery log (asked
/// of memory: `DeliveryLog`) nor `deliveries` (asked in SQL) nor earlier in the group.
/// Under the one write lock (`BEGIN IMMEDIATE`), the query selects the group's GUIDs that
/// are in `deliveries` (its only rows: none, but for redeliveries), upserts the jobs of
/// the other events, and appends the other GUIDs to the log, so an event is applied
/// exactly when its GUID is not selected. Rows cost more than values here: each is a
/// message from sqlx's thread and a conversion, which is why the query returns the rare
/// duplicates, not the new GUIDs. SQLite lets one statement update a row twice, so a
/// job's events go in one statement, in the order sent (`ORDER BY` the event's position).
async fn write_group_sqlite(
    pool: &AnyPool,
    log: &mut DeliveryLog,
    group: &[Request],
    now: i64,
) -> Result<Vec<Recorded>, StoreError> {
    let mut seen: HashSet<&str> = HashSet::new();
    let candidate: Vec<bool> = group
        .iter()
        .map(|r| {
            r.delivery
                .as_deref()
                .is_none_or(|g| !log.contains(g) && seen.insert(g))
        })
        .collect();
    let mut order: Vec<usize> = (0..group.len()).filter(|&i| candidate[i]).collect();
    order.sort_by_key(|&i| group[i].event.job_id.0);
    let guids: Vec<&str> = group
        .iter()
        .zip(&candidate)
        .filter_map(|(r, &c)| r.delivery.as_deref().filter(|_| c))
        .collect();

    let mut sql = String::from("BEGIN IMMEDIATE");
    if !guids.is_empty() {
        let rows = vec!["(?)"; guids.len()].join(", ");
        sql.push_str(&format!(
            ";\nSELECT column1 FROM (VALUES {rows})
WHERE EXISTS (SELECT 1 FROM deliveries WHERE guid = column1)"
        ));
    }
    if !order.is_empty() {
        sql.push_str(";\n");
        sql.push_str(&sqlite_job_upsert(order.len()));
    }
    if !guids.is_empty() {
        let rows = vec!["(?, ?)"; guids.len()].join(", ");
        sql.push_str(&format!(
            ";\nINSERT INTO delivery_log (guid, received_at)
SELECT column1, column2 FROM (VALUES {rows})
WHERE NOT EXISTS (SELECT 1 FROM deliveries WHERE guid = column1)"
        ));
    }
    sql.push_str(";\nCOMMIT;");

    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for guid in &guids {
        query = query.bind(*guid);
    }
    for (position, &i) in order.iter().enumerate() {
        let req = &group[i];
        query = bind_job(query, req, now)
            .bind(req.delivery.as_deref())
            .bind(to_i64(position as u64));
    }
    for guid in &guids {
        query = query.bind(*guid).bind(now);
    }
    // The GUIDs already in `deliveries`; the log now holds every other candidate.
    let rows = run_in_transaction(pool, query).await?;
    let folded = rows
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<HashSet<String>, _>>();
    let folded = folded?;
    let results = group
        .iter()
        .zip(candidate)
        .map(|(r, candidate)| match r.delivery.as_deref() {
            Some(guid) if !candidate || folded.contains(guid) => Recorded::Duplicate,
            _ => Recorded::Applied,
        })
        .collect();
    log.guids.extend(
        guids
            .into_iter()
            .filter(|g| !folded.contains(*g))
            .map(String::from),
    );
    Ok(results)
}

/// The upsert of `rows` events on SQLite, each row the job's values, its delivery GUID
/// (or NULL) and its position in the group; an event whose GUID is recorded is skipped.
/// `rows` is at least one. Placeholders are anonymous (`?`): with numbered ones sqlx's
/// binding is quadratic in their number (it looks each name up, and SQLite finds a name by
/// scanning the list), a cost that showed in profiles of statements with thousands of values.
fn sqlite_job_upsert(rows: usize) -> String {
    let row = format!("({})", vec!["?"; JOB_VALUES + 2].join(", "));
    let values = vec![row.as_str(); rows].join(",\n");
    let columns = (1..=JOB_VALUES)
        .map(|n| format!("column{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let guid = JOB_VALUES + 1;
    let position = JOB_VALUES + 2;
    format!(
        "INSERT INTO jobs ({JOB_COLUMNS})
SELECT {columns} FROM (VALUES {values})
WHERE column{guid} IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries WHERE guid = column{guid})
ORDER BY column{position}{ON_CONFLICT_MERGE}"
    )
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
    group: &[Request],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut guids: Vec<&str> = group.iter().filter_map(|r| r.delivery.as_deref()).collect();
    guids.sort_unstable();
    guids.dedup();
    let inserted: HashSet<String> = if guids.is_empty() {
        HashSet::new()
    } else {
        let rows = (0..guids.len())
            .map(|i| format!("({})", placeholders(2 * i + 1, 2)))
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
/// PostgreSQL's 65,535 bound values, also with SQLite's two more per row (GUID and
/// position) and its GUID bound twice (once to find duplicates, once for the log).
const JOB_VALUES: usize = 18;
const _: () = assert!(MAX_GROUP * (JOB_VALUES + 4) < 32_766);

/// Upserts one round's jobs (each job once) in one statement.
async fn upsert_jobs(conn: &mut AnyConnection, events: &[&Request], now: i64) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = (0..events.len())
        .map(|i| format!("({})", placeholders(i * JOB_VALUES + 1, JOB_VALUES)))
        .collect::<Vec<_>>()
        .join(",\n");
    let sql = format!("INSERT INTO jobs ({JOB_COLUMNS})\nVALUES {rows}{ON_CONFLICT_MERGE}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for req in events {
        query = bind_job(query, req, now);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// The columns an event sets, in the order `bind_job` binds them.
const JOB_COLUMNS: &str = "id, repo, run_id, run_attempt, name, workflow_name, head_sha, labels, \
     label_key, status, rank, conclusion, runner_name, source, first_seen_at, updated_at, \
     started_at, completed_at";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds an event's `JOB_VALUES` values, in `JOB_COLUMNS`' order.
fn bind_job<'q>(query: AnyQuery<'q>, req: &'q Request, now: i64) -> AnyQuery<'q> {
    let e = &req.event;
    let rank = e.status.rank();
    query
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
        .bind((rank >= 3).then_some(now))
}

/// GitHub ids are below 2^63 in practice; SQLite integers and PostgreSQL bigints are
/// signed 64-bit.
pub(super) fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobId, JobStatus};
    use crate::store::Store;
    use crate::store::testdb::{TestDb, queued};

    async fn record(s: &Store, guid: &str, job: u64) -> Recorded {
        s.record(Some(guid.into()), queued(job), EventSource::Webhook)
            .await
            .expect("recorded")
    }

    /// Rows in (`deliveries`, `delivery_log`).
    async fn rows(s: &Store) -> (i64, i64) {
        let count = |table: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(s.pool())
                .await
                .expect("count")
        };
        (count("deliveries").await, count("delivery_log").await)
    }

    /// Waits (up to 10 s, folds come every second) until the log is folded.
    async fn until_folded(s: &Store) {
        for _ in 0..200 {
            if rows(s).await.1 == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the delivery log was never folded");
    }

    #[tokio::test]
    async fn a_guid_is_a_duplicate_while_in_the_delivery_log_and_after_it_is_folded() {
        let db = TestDb::sqlite();
        let s = db.open().await;

        assert_eq!(record(&s, "g1", 1).await, Recorded::Applied);
        assert_eq!(rows(&s).await, (0, 1), "a new GUID goes to the log first");
        assert_eq!(record(&s, "g1", 1).await, Recorded::Duplicate);
        assert!(s.delivery_seen("g1").await.expect("read"));

        until_folded(&s).await;
        assert_eq!(rows(&s).await, (1, 0));
        assert_eq!(record(&s, "g1", 1).await, Recorded::Duplicate);
        assert_eq!(record(&s, "g2", 2).await, Recorded::Applied);
        assert!(s.delivery_seen("g1").await.expect("read"));
        assert!(s.delivery_seen("g2").await.expect("read"));
        assert!(!s.delivery_seen("g3").await.expect("read"));
        assert_eq!(s.delivery_count().await.expect("count"), 2);
    }

    #[tokio::test]
    async fn a_delivery_log_left_unfolded_by_a_stop_is_read_back_and_its_guids_stay_duplicates() {
        let db = TestDb::sqlite();
        let s = db.open().await;
        assert_eq!(record(&s, "g1", 1).await, Recorded::Applied);
        s.close().await;

        let s = db.open().await;
        assert_eq!(rows(&s).await, (0, 1), "the stop did not fold the log");
        assert_eq!(record(&s, "g1", 1).await, Recorded::Duplicate);
        let job = s.job(JobId(1)).await.expect("read").expect("exists");
        assert_eq!(job.status, JobStatus::Queued);
    }

    #[tokio::test]
    async fn guids_recorded_across_several_folds_all_stay_recorded_and_duplicates() {
        let db = TestDb::sqlite();
        let s = std::sync::Arc::new(db.open().await);
        let n = FOLD_AT + 100;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let s = s.clone();
            tasks.spawn(async move { record(&s, &format!("guid-{i}"), i as u64 + 1).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.expect("task"), Recorded::Applied);
        }
        let (folded, logged) = rows(&s).await;
        assert!(folded > 0, "more than FOLD_AT GUIDs were folded at least once");
        assert_eq!(folded + logged, n as i64);
        for i in [0, n / 2, n - 1] {
            assert_eq!(record(&s, &format!("guid-{i}"), 1).await, Recorded::Duplicate);
        }
    }

    fn log_of(n: usize, folded_ago: Duration) -> DeliveryLog {
        DeliveryLog {
            guids: (0..n).map(|i| format!("g{i}")).collect(),
            folded_at: Instant::now() - folded_ago,
        }
    }

    #[test]
    fn a_fold_is_due_when_the_log_is_full_or_a_second_old_or_the_writer_idle_and_never_when_empty() {
        let fresh = Duration::ZERO;
        assert!(log_of(FOLD_AT, fresh).fold_due(false), "full");
        assert!(
            !log_of(FOLD_AT - 1, fresh).fold_due(false),
            "neither full nor old"
        );
        assert!(log_of(1, FOLD_EVERY).fold_due(false), "old");
        assert!(log_of(1, fresh).fold_due(true), "idle");
        assert!(!log_of(0, FOLD_EVERY).fold_due(true), "empty");
    }
}
