//! The durable store: the only state the loops share (docs/design.md). SQLite in WAL mode;
//! webhook events are written by one task that commits them in groups, so a burst of
//! deliveries costs one fsync per group instead of one per delivery, and a delivery is
//! answered only after its group is on disk.
//!
//! Every write goes through one connection (`writer`), reads through a pool of read-only
//! others.
//! SQLite admits one writer at a time, and a connection that finds the lock taken sleeps in
//! SQLite's busy handler (1, 2, 5, 10… ms) before trying again: with writers on several
//! connections, a webhook's commit that met the planner's or the reaper's transaction paid
//! those sleeps. On one connection, writers queue in the pool instead and each starts the
//! moment the previous one ends. The writer never checkpoints the log either: a commit that
//! crossed SQLite's automatic checkpoint threshold copied the log into the database (and
//! synced it) before its webhook was answered. A background task checkpoints instead
//! (`checkpoint.rs`), without blocking the writer.

mod checkpoint;
mod costs;
mod ingest;
pub mod inspect;
mod jobs;
pub mod maintenance;
mod migrations;
mod runners;
mod runs;
mod snapshot;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::domain::{RepoName, RepoNameError};

pub use costs::{CostRow, FailureLog, SPEND_PAUSE, UnpricedRunner, utc_day_start};
pub use ingest::{EventSource, Recorded};
pub use jobs::{JobRow, StrategyUpdate};
pub use runners::{AttemptStats, LiveRunner, NewRunner, RunnerPatch, RunnerRow, TookJob};
pub use runs::{RunStrategy, UnresolvedRun};
pub use snapshot::PlanInputs;

/// A failed store operation. The text never holds row contents beyond ids and names.
/// How many more times opening the store is tried after SQLite says it is busy.
const OPEN_TRIES: u32 = 5;
/// The first wait before trying again; each further try waits one more of it.
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the store is closed")]
    Closed,
    #[error("a group of events could not be written: {0}")]
    WriteFailed(String),
    #[error("a stored row is not readable: {0}")]
    Corrupt(String),
    /// Rows are written from parsed names only, so this means the database was edited or
    /// damaged; the row is not acted on.
    #[error("a stored repository name is not valid: {0}")]
    BadRepo(#[from] RepoNameError),
    /// Opening it would let this binary read rows whose meaning it does not know, and sqlx
    /// would only say a migration is missing.
    #[error(
        "the database at {path} was written by a newer version (schema {found}); this binary \
         knows up to {known}; upgrade the binary or restore a backup"
    )]
    NewerSchema { path: String, found: i64, known: i64 },
    #[error("the database schema could not be brought up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// SQLite's "database is locked" (SQLITE_BUSY and its extended codes).
    fn is_busy(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(db)) => db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 5),
            _ => false,
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Readers (and, for an in-memory database, the writer too: it is one connection).
    pool: SqlitePool,
    /// The one connection every write goes through.
    writer: SqlitePool,
    ingest: mpsc::Sender<ingest::Request>,
    /// Stamps every row; the loops compare those stamps with the same clock.
    clock: Clock,
}

/// What an answered webhook survives (`STORE_SYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is in the operating system before the answer, so it survives
    /// the service being killed at any moment; a power cut can lose the last commits, which
    /// the reconciler then recovers from GitHub. SQLite WAL with synchronous=NORMAL.
    #[default]
    Normal,
    /// Every commit is fsync'ed before the answer, so it survives a power cut too,
    /// at the cost of one fsync per group commit. synchronous=FULL.
    Full,
}

impl Store {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`, `sqlite::memory:`)
    /// with the default durability and applies the migrations it lacks; refuses a database
    /// written by a newer version.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, Durability::default()).await
    }

    /// Opens the store with the given durability.
    pub async fn open_with(url: &str, durability: Durability) -> Result<Store, StoreError> {
        Store::open_with_clock(url, durability, Clock::System).await
    }

    /// Opens the store stamping rows with `clock`'s time (tests move it by hand).
    ///
    /// Right after a crash (a SIGKILL) the first connections recover the write-ahead log, and
    /// SQLite can answer another connection "database is locked" at once, without waiting
    /// out the busy timeout. That is transient, so opening is tried again a few times.
    pub async fn open_with_clock(
        url: &str,
        durability: Durability,
        clock: Clock,
    ) -> Result<Store, StoreError> {
        let mut tries = 0;
        loop {
            match Store::connect(url, durability, clock.clone()).await {
                Err(e) if e.is_busy() && tries < OPEN_TRIES => {
                    tries += 1;
                    tracing::warn!(error = %e, "the store is busy at start-up; trying again");
                    tokio::time::sleep(OPEN_RETRY_DELAY * tries).await;
                }
                other => return other,
            }
        }
    }

    async fn connect(url: &str, durability: Durability, clock: Clock) -> Result<Store, StoreError> {
        let sync = match durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        };
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false);
        // An in-memory database exists per connection; keep exactly one then.
        if url.contains(":memory:") {
            let pool = connect_pool(options.clone(), 1).await?;
            migrations::apply(&pool, options.get_filename()).await?;
            return Ok(Store::assemble(pool.clone(), pool, clock));
        }
        let writer = connect_pool(options.clone().pragma("wal_autocheckpoint", "0"), 1).await?;
        migrations::apply(&writer, options.get_filename()).await?;
        // Read-only, so that a write put on the readers by mistake fails at once instead of
        // contending with the writer.
        let pool = connect_pool(options.clone().read_only(true), 4).await?;
        checkpoint::spawn(connect_pool(options, 1).await?);
        Ok(Store::assemble(pool, writer, clock))
    }

    fn assemble(pool: SqlitePool, writer: SqlitePool, clock: Clock) -> Store {
        let ingest = ingest::spawn_writer(writer.clone(), clock.clone());
        Store {
            pool,
            writer,
            ingest,
            clock,
        }
    }

    /// The clock rows are stamped with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The readers' pool, for modules in this crate that run their own queries in tests.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The writer's connection: every statement that changes rows runs on it.
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A cheap query proving the database answers, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Flushes pending writes and closes every connection.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// A pool of `size` connections that stay open.
async fn connect_pool(options: SqliteConnectOptions, size: u32) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
}

/// The error for a column whose text is not one of its enum's values (a `RunnerState`, a
/// `JobStatus`…): the database was written by something else or damaged.
fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} has unknown value `{value}`"))
}

/// Reads a column holding an `owner/repo` name.
fn repo_column(row: &SqliteRow, column: &str) -> Result<RepoName, StoreError> {
    let name: String = row.try_get(column)?;
    Ok(RepoName::parse(&name)?)
}

#[cfg(test)]
mod tests;
