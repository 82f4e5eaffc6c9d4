//! PostgreSQL's group commit: a task on the store's pool takes what is queued and writes it
//! in one transaction, tried again when another replica's transaction conflicts with it.

use std::collections::HashSet;

use sqlx::{AnyConnection, AnyPool};

use super::{
    Group, JOB_COLUMNS, JOB_VALUES, JobValues, MAX_GROUP, Message, ON_CONFLICT_MERGE, QUEUE, Recorded,
    Request,
};
use crate::clock::Clock;
use crate::store::{Backend, StoreError, placeholders};

/// `MAX_GROUP` rows of values stay below PostgreSQL's 65,535 bound values per statement.
const _: () = assert!(MAX_GROUP * JOB_VALUES < 65_535);

/// Starts the task that writes events in groups on `pool`.
pub(in crate::store) fn spawn(pool: AnyPool, clock: Clock) -> flume::Sender<Message> {
    let (tx, rx) = flume::bounded(QUEUE);
    tokio::spawn(write_loop(pool, clock, rx));
    tx
}

/// How many times a group is tried in all when PostgreSQL chose it as a deadlock victim
/// or could not serialise it (another replica wrote the same rows at the same moment).
const GROUP_TRIES: u32 = 3;

async fn write_loop(pool: AnyPool, clock: Clock, rx: flume::Receiver<Message>) {
    while let Ok(first) = rx.recv_async().await {
        let mut group = Group::starting_with(first, &rx);
        if !group.requests.is_empty() {
            let outcome = write_with_tries(&pool, &group.requests, clock.now_millis()).await;
            group.answer(outcome);
        }
        if let Some(done) = group.close {
            let _ = done.send(());
            return;
        }
    }
}

async fn write_with_tries(pool: &AnyPool, group: &[Request], now: i64) -> Result<Vec<Recorded>, StoreError> {
    let mut tries = 1;
    loop {
        match write_group(pool, group, now).await {
            Err(e) if is_conflict(&e) && tries < GROUP_TRIES => {
                tries += 1;
                tracing::debug!(error = %e, "a group of events met another replica's; trying again");
            }
            other => return other,
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

/// One transaction, with a fixed number of statements whatever
/// the group's size (each is a round trip to the database, which costs more than the
/// statement itself).
///
/// Rows are written in job-id and GUID order (events of one job keep their order), so two
/// replicas' groups touching the same rows lock them in the same order and do not deadlock;
/// the results come back in the group's order.
async fn write_group(pool: &AnyPool, group: &[Request], now: i64) -> Result<Vec<Recorded>, StoreError> {
    let mut tx = pool.begin_with(Backend::Postgres.begin_write()).await?;
    let news = insert_deliveries(&mut tx, group, now).await?;
    let mut order: Vec<usize> = (0..group.len()).filter(|&i| news[i]).collect();
    order.sort_by_key(|&i| group[i].event.job_id.0);
    for round in rounds(group, &order) {
        upsert_jobs(&mut tx, &round, now).await?;
    }
    tx.commit().await?;
    Ok(news.into_iter().map(Recorded::of).collect())
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

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds an event's `JOB_VALUES` values, in `JOB_COLUMNS`' order.
fn bind_job<'q>(query: AnyQuery<'q>, req: &'q Request, now: i64) -> AnyQuery<'q> {
    let v = JobValues::of(req, now);
    query
        .bind(v.id)
        .bind(v.repo)
        .bind(v.run_id)
        .bind(v.run_attempt)
        .bind(v.name)
        .bind(v.workflow_name)
        .bind(v.head_sha)
        .bind(v.labels)
        .bind(v.label_key)
        .bind(v.status)
        .bind(v.rank)
        .bind(v.conclusion)
        .bind(v.runner_name)
        .bind(v.source)
        .bind(v.now)
        .bind(v.now)
        .bind(v.started_at)
        .bind(v.completed_at)
}
