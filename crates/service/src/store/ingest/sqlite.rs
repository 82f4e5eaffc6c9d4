//! SQLite's group commit: a thread with a connection of its own, calling SQLite directly
//! through rusqlite with prepared statements kept from group to group.
//!
//! Why not through sqlx like the rest of the store: sqlx runs each SQLite connection on a
//! thread of its own and converts every bound value and row through its `Any` driver. In
//! `bench ingress` those hand-offs and conversions cost the service more than SQLite's own
//! work on a group, and a webhook waits for them. Here the writer's thread is the
//! connection's thread: a webhook's request wakes it, it writes the group, and its answers
//! wake the webhooks.
//!
//! The writer meets the loops' writes (sqlx's writer connection) at SQLite's write lock.
//! SQLite's own busy handler sleeps 1, 2, 5, 10… up to 100 ms between tries; the writer's
//! tries every `BUSY_POLL` instead, so a webhook waits for a loop's write about as long as
//! that write takes.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::{Group, JOB_COLUMNS, JobValues, Message, ON_CONFLICT_MERGE, QUEUE, Recorded, Request};
use crate::clock::Clock;
use crate::store::{self, Durability, StoreError};

/// The database the writer opens: the store's file, or the in-memory database the store's
/// other connections share (through SQLite's `memdb` VFS, which shares a database among
/// the connections of one process that name it).
#[derive(Debug, Clone)]
pub(in crate::store) enum Database {
    File(PathBuf),
    /// A name starting with `/`, which makes a `memdb` database shared.
    Memory(String),
}

/// How long the writer sleeps between tries when another connection holds the write lock.
const BUSY_POLL: Duration = Duration::from_micros(100);
/// Tries before a write fails as busy: at least the 30 s of the store's other connections.
const BUSY_TRIES: i32 = 300_000;

/// Opens the writer's connection, reads the delivery log back, and starts the writer's
/// thread. The schema must be migrated already.
pub(in crate::store) async fn spawn(
    database: Database,
    durability: Durability,
    clock: Clock,
) -> Result<flume::Sender<Message>, StoreError> {
    let writer = tokio::task::spawn_blocking(move || Writer::open(&database, durability, clock))
        .await
        .map_err(|_| StoreError::Closed)??;
    let (tx, rx) = flume::bounded(QUEUE);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(&rx))
        .map_err(StoreError::Thread)?;
    Ok(tx)
}

struct Writer {
    conn: Connection,
    log: DeliveryLog,
    clock: Clock,
}

impl Writer {
    fn open(database: &Database, durability: Durability, clock: Clock) -> Result<Writer, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match database {
            Database::File(path) => Connection::open_with_flags(path, flags)?,
            Database::Memory(name) => Connection::open_with_flags_and_vfs(name, flags, c"memdb")?,
        };
        // As the loops' writer; the busy handler set next replaces the busy timeout.
        conn.execute_batch(&format!(
            "{} {}",
            store::sqlite_pragmas(durability),
            store::WRITER_PRAGMAS
        ))?;
        conn.busy_handler(Some(|tries| {
            std::thread::sleep(BUSY_POLL);
            tries < BUSY_TRIES
        }))?;
        let log = DeliveryLog::load(&conn)?;
        Ok(Writer { conn, log, clock })
    }

    /// Writes groups until the store closes it or every sender is gone; folds the delivery
    /// log when it is due.
    fn run(mut self, rx: &flume::Receiver<Message>) {
        loop {
            let first = match rx.recv_timeout(FOLD_EVERY) {
                Ok(message) => Some(message),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => return,
            };
            let idle = first.is_none();
            let mut group = first.map(|m| Group::starting_with(m, rx));
            if let Some(group) = group.as_mut().filter(|g| !g.requests.is_empty()) {
                let outcome = self.write(&group.requests);
                group.answer(outcome);
            }
            if let Some(done) = group.and_then(|g| g.close) {
                if let Err((_, e)) = self.conn.close() {
                    tracing::warn!(error = %e, "the store's writer connection did not close cleanly");
                }
                let _ = done.send(());
                return;
            }
            if self.log.fold_due(idle) {
                self.fold();
            }
        }
    }

    /// Writes one group in one transaction; see `write_group`. A failed group is rolled
    /// back whole, so the next starts from a clean connection.
    fn write(&mut self, group: &[Request]) -> Result<Vec<Recorded>, StoreError> {
        let now = self.clock.now_millis();
        let outcome = write_group(&mut self.conn, &mut self.log, group, now);
        if outcome.is_err() && !self.conn.is_autocommit() {
            // Dropping the transaction rolls back, but ignores a failure to.
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "could not roll back a failed group of events");
            }
        }
        outcome
    }

    /// Moves the log into `deliveries` in one transaction. A failure leaves both tables
    /// as they were (and is tried again at the next fold); deduplication reads both.
    fn fold(&mut self) {
        self.log.folded_at = Instant::now();
        let folded = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                tx.execute(
                    "INSERT INTO deliveries (guid, received_at)
                     SELECT guid, received_at FROM delivery_log WHERE true ORDER BY guid
                     ON CONFLICT DO NOTHING",
                    [],
                )?;
                tx.execute("DELETE FROM delivery_log", [])?;
                tx.commit()
            });
        match folded {
            Ok(()) => self.log.guids.clear(),
            Err(e) => {
                tracing::warn!(error = %e, guids = self.log.guids.len(), "could not fold the delivery log; trying again later");
            }
        }
    }
}

/// One group in one transaction, under the write lock from its start (`BEGIN IMMEDIATE`).
///
/// An event is news if it has no GUID, or its GUID is in neither the delivery log (asked
/// of memory: `DeliveryLog`) nor `deliveries` nor earlier in the group. News is merged
/// into its job's row, in job-id order and, for one job, in the order sent; its GUID is
/// appended to the log. The results come back in the group's order.
fn write_group(
    conn: &mut Connection,
    log: &mut DeliveryLog,
    group: &[Request],
    now: i64,
) -> Result<Vec<Recorded>, StoreError> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut news: Vec<bool> = group
        .iter()
        .map(|r| {
            r.delivery
                .as_deref()
                .is_none_or(|g| !log.contains(g) && seen.insert(g))
        })
        .collect();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut folded = tx.prepare_cached("SELECT 1 FROM deliveries WHERE guid = ?1")?;
        for (request, new) in group.iter().zip(news.iter_mut()) {
            if let Some(guid) = request.delivery.as_deref().filter(|_| *new) {
                *new = !folded.exists([guid])?;
            }
        }
        let mut order: Vec<usize> = (0..group.len()).filter(|&i| news[i]).collect();
        order.sort_by_key(|&i| group[i].event.job_id.0);
        let mut upsert = tx.prepare_cached(&JOB_UPSERT)?;
        let mut append = tx.prepare_cached("INSERT INTO delivery_log (guid, received_at) VALUES (?1, ?2)")?;
        for &i in &order {
            upsert_job(&mut upsert, &group[i], now)?;
            if let Some(guid) = group[i].delivery.as_deref() {
                append.execute(params![guid, now])?;
            }
        }
    }
    tx.commit()?;
    let new_guids = group
        .iter()
        .zip(&news)
        .filter_map(|(r, &new)| r.delivery.as_deref().filter(|_| new));
    log.guids.extend(new_guids.map(String::from));
    Ok(news.into_iter().map(Recorded::of).collect())
}

/// The upsert of one event, built once: its text is the key of its prepared statement.
static JOB_UPSERT: LazyLock<String> = LazyLock::new(|| {
    let values = vec!["?"; super::JOB_VALUES].join(", ");
    format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({values}){ON_CONFLICT_MERGE}")
});

fn upsert_job(
    statement: &mut rusqlite::CachedStatement<'_>,
    request: &Request,
    now: i64,
) -> Result<(), StoreError> {
    let v = JobValues::of(request, now);
    statement.execute(params![
        v.id,
        v.repo,
        v.run_id,
        v.run_attempt,
        v.name,
        v.workflow_name,
        v.head_sha,
        v.labels,
        v.label_key,
        v.status,
        v.rank,
        v.conclusion,
        v.runner_name,
        v.source,
        v.now,
        v.now,
        v.started_at,
        v.completed_at,
    ])?;
    Ok(())
}

/// A fold moves the delivery log into `deliveries` once it holds this many GUIDs…
const FOLD_AT: usize = 4096;
/// …or once this long has passed since the last fold (an idle writer wakes this often).
const FOLD_EVERY: Duration = Duration::from_secs(1);

/// SQLite's delivery GUIDs not yet folded into `deliveries`: exactly the rows of the
/// `delivery_log` table, which only the writer changes, so whether a GUID is there is
/// answered from memory. Bounded: folded at `FOLD_AT` GUIDs or every `FOLD_EVERY`.
///
/// Why the detour: a GUID is a random key, so inserting a group's GUIDs straight into
/// `deliveries` dirtied one page of its index per delivery, and each commit wrote those
/// pages to the write-ahead log (and the checkpoint into the database): in `bench
/// ingress`, the largest single cost of a webhook after the HTTP stack. Appended to the
/// log table they share pages; a fold inserts thousands in GUID order, dirtying each
/// page of the index once.
struct DeliveryLog {
    guids: HashSet<String>,
    folded_at: Instant,
}

impl DeliveryLog {
    /// Reads the log as the last writer left it (a stop or a crash can leave it unfolded).
    fn load(conn: &Connection) -> Result<DeliveryLog, StoreError> {
        let mut statement = conn.prepare("SELECT guid FROM delivery_log")?;
        let guids = statement
            .query_map([], |row| row.get::<_, String>(0))?
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
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobId, JobStatus};
    use crate::store::EventSource;
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
        // The writer folds after answering the group that filled the log, and takes the
        // next request only after that fold.
        assert_eq!(record(&s, "one-more", n as u64 + 1).await, Recorded::Applied);
        let (folded, logged) = rows(&s).await;
        assert!(folded > 0, "more than FOLD_AT GUIDs were folded at least once");
        assert_eq!(folded + logged, n as i64 + 1);
        for i in [0, n / 2, n - 1] {
            assert_eq!(record(&s, &format!("guid-{i}"), 1).await, Recorded::Duplicate);
        }
    }

    #[tokio::test]
    async fn two_in_memory_stores_keep_their_own_rows_which_their_readers_and_writer_share() {
        let a = Store::open("sqlite::memory:").await.expect("store a");
        let b = Store::open("sqlite::memory:").await.expect("store b");

        assert_eq!(record(&a, "g1", 1).await, Recorded::Applied);

        assert!(
            a.job(JobId(1)).await.expect("read").is_some(),
            "a's reads see a's writer"
        );
        assert!(
            b.job(JobId(1)).await.expect("read").is_none(),
            "b has a database of its own"
        );
        assert_eq!(record(&b, "g1", 1).await, Recorded::Applied);
    }

    #[tokio::test]
    async fn closing_answers_what_was_queued_before_and_refuses_what_comes_after() {
        let db = TestDb::sqlite();
        let s = db.open().await;

        // `join` polls the record first, which queues it before the close.
        let (before, ()) = tokio::join!(
            s.record(Some("g1".into()), queued(1), EventSource::Webhook),
            s.close()
        );
        assert_eq!(before.expect("answered"), Recorded::Applied);
        let after = s.record(Some("g2".into()), queued(2), EventSource::Webhook).await;
        assert!(matches!(after, Err(StoreError::Closed)), "{after:?}");

        let s = db.open().await;
        assert!(s.job(JobId(1)).await.expect("read").is_some());
    }

    /// rusqlite gives up after 5 s by default, SQLite itself at once: a loop's write that
    /// holds the lock longer would make webhooks fail.
    #[tokio::test]
    async fn a_webhook_waits_out_a_loops_write_that_holds_the_lock_for_six_seconds() {
        let db = TestDb::sqlite();
        let s = db.open().await;
        let mut tx = s.writer().begin_with("BEGIN IMMEDIATE").await.expect("lock");
        sqlx::query("UPDATE jobs SET name = name")
            .execute(&mut *tx)
            .await
            .expect("write");

        let waiting = tokio::spawn({
            let s = s.clone();
            async move { record(&s, "g1", 1).await }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            !waiting.is_finished(),
            "recorded while another connection held the lock"
        );
        tx.commit().await.expect("commit");

        assert_eq!(waiting.await.expect("task"), Recorded::Applied);
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
