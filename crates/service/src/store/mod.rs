//! The durable store: the only state the loops share (docs/design.md). SQLite in WAL mode
//! (one replica), or PostgreSQL (any number of replicas, one of which leads: see `lease`).
//! Webhook events are written by one writer that commits them in groups, so a burst of
//! deliveries costs one fsync per group instead of one per delivery, and a delivery is
//! answered only after its group is on disk.
//!
//! Both databases are reached through sqlx's `Any` driver, so every query, row reader and
//! rule is written once; the few places where the dialects differ ask `Store::backend`.
//! Queries use `$N` placeholders, which both SQLite and PostgreSQL understand. The one
//! exception is SQLite's group commit of webhook events, which calls SQLite directly on a
//! thread of its own (see `ingest`): it is the one write a webhook waits for.
//!
//! On SQLite the loops' writes go through one connection (`writer`), reads through a pool
//! of read-only others, and the group commit through its own. SQLite admits one writer at
//! a time, and a connection that finds the lock taken sleeps in SQLite's busy handler (1,
//! 2, 5, 10… ms) before trying again: with the loops writing on several connections, they
//! paid those sleeps behind each other. On one connection they queue in the pool instead;
//! a write put on a reader by mistake fails at once. The group commit's connection meets
//! the loops' at the lock, and its busy handler tries every 100 µs, so a webhook waits
//! for a loop's write no longer than that write takes. No writer checkpoints the log: a
//! commit that crossed SQLite's automatic checkpoint threshold copied the log into the
//! database (and synced it) before its webhook was answered; a background task does it
//! (`checkpoint`). On PostgreSQL, which locks rows, reads and writes share one pool.

mod checkpoint;
mod costs;
mod ingest;
pub mod inspect;
mod jobs;
pub mod lease;
pub mod maintenance;
mod migrations;
mod runners;
mod runs;
mod snapshot;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, Row};

use crate::clock::Clock;
use crate::domain::{RepoName, RepoNameError};

pub use costs::{CostRow, FailureLog, SPEND_PAUSE, UnpricedRunner, utc_day_start};
pub use ingest::{EventSource, Recorded};
pub use jobs::{JobRow, StrategyUpdate};
pub use runners::{AttemptStats, LiveRunner, NewRunner, RunnerPatch, RunnerRow, TookJob};
pub use runs::{RunStrategy, UnresolvedRun};
pub use snapshot::PlanInputs;

/// How many more times opening the store is tried after SQLite says it is busy.
const OPEN_TRIES: u32 = 5;
/// The first wait before trying again; each further try waits one more of it.
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Set on every PostgreSQL connection. A replica frozen inside a transaction (a stopped
/// process, a paused VM) keeps its locks until its connection dies, and a leader's fenced
/// writes hold the lease row (`FOR SHARE`): the next leader's takeover would wait on it
/// for as long as the freeze lasts. Every transaction of the store lives inside one store
/// call, with no network call of its own, so one idle this long is frozen, and the server
/// ends its session.
const POSTGRES_SESSION: &str = "SET idle_in_transaction_session_timeout = '10s'";

/// A failed store operation. The text never holds row contents beyond ids and names, nor
/// a database password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// From SQLite's group commit, which calls SQLite directly (see `ingest`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store's writer thread could not start: {0}")]
    Thread(std::io::Error),
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
    #[error("DATABASE_URL must start with sqlite: or postgres://")]
    UnknownScheme,
    /// This replica's leader lease was taken over (or never held): the write it guarded was
    /// not made, and the caller must not make the GitHub or backend call that follows it.
    #[error("this replica no longer holds the leader lease (token {0})")]
    Fenced(i64),
}

impl StoreError {
    /// SQLite's "database is locked" (SQLITE_BUSY and its extended codes).
    fn is_busy(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(db)) => db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 5),
            StoreError::Sqlite(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy),
            _ => false,
        }
    }
}

/// Which database the store is on; chosen by `DATABASE_URL`'s scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH` or `sqlite::memory:`: one replica, which always leads.
    Sqlite,
    /// `postgres://…`: any number of replicas; a lease row chooses the leader.
    Postgres,
}

impl Backend {
    /// The backend a `DATABASE_URL` names, if any.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// What a write transaction starts with: SQLite takes the write lock at once, so two
    /// writers wait for each other instead of failing on upgrade; PostgreSQL locks rows.
    fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// What a read of several queries that must agree starts with.
    fn begin_snapshot(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }
}

/// `url` without its password and query (which can hold one too), for errors and logs.
pub fn redacted_url(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    match path {
        Some(path) => format!("{scheme}://{authority}/{path}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Readers (on SQLite read-only; on PostgreSQL, and for an in-memory SQLite database,
    /// the writer's pool too).
    pool: AnyPool,
    /// Every write but the group commit's goes through it (on SQLite: one connection).
    writer: AnyPool,
    backend: Backend,
    /// The queue of events for the group commit's writer (`ingest`).
    ingest: flume::Sender<ingest::Message>,
    /// Stamps every row; the loops compare those stamps with the same clock.
    clock: Clock,
    /// Set on the leader's loops' handle (PostgreSQL): their writes are made only
    /// while this replica's term is the live lease's (see `lease`).
    fence: Option<std::sync::Arc<crate::leader::Leadership>>,
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
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or(StoreError::UnknownScheme)?;
        let (pool, writer, ingest) = match backend {
            Backend::Sqlite => {
                let (pool, writer, database) = sqlite_pools(url, durability).await?;
                let ingest = ingest::spawn_sqlite(database, durability, clock.clone()).await?;
                (pool, writer, ingest)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .min_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::raw_sql(POSTGRES_SESSION).execute(conn).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                migrations::apply(&pool, backend, &redacted_url(url)).await?;
                let ingest = ingest::spawn_postgres(pool.clone(), clock.clone());
                (pool.clone(), pool, ingest)
            }
        };
        Ok(Store {
            pool,
            writer,
            backend,
            ingest,
            clock,
            fence: None,
        })
    }

    /// Which database the store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This handle, with the writes the leader's loops make (`insert_runners`, `transition`,
    /// `abandon_job`, `set_strategies`, `save_run_strategy`, `note_redelivery`) conditional
    /// on `leadership`'s term being the live lease's, checked inside each write's
    /// transaction: a leader paused past its lease changes no row after it wakes. No effect
    /// on SQLite.
    pub fn fenced(&self, leadership: std::sync::Arc<crate::leader::Leadership>) -> Store {
        Store {
            fence: Some(leadership),
            ..self.clone()
        }
    }

    /// The clock rows are stamped with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The readers' pool, for modules in this crate that run their own queries in tests.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The writer's pool: every statement that changes rows runs on it.
    pub(crate) fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Starts a write transaction the way the backend wants it.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(self.writer.begin_with(self.backend.begin_write()).await?)
    }

    /// A write transaction that, on a fenced handle on PostgreSQL, first holds the lease row
    /// (shared) under this replica's token: a takeover waits for the write, and a write
    /// after a takeover fails with `StoreError::Fenced`.
    async fn begin_fenced(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(leadership) = self.fence.as_ref().filter(|_| self.backend == Backend::Postgres) {
            lease::hold(&mut tx, leadership.token().unwrap_or(0)).await?;
        }
        Ok(tx)
    }

    /// A cheap query proving the database answers, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Flushes pending writes and closes every connection.
    pub async fn close(&self) {
        self.close_writer().await;
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// The error for a column whose text is not one of its enum's values (a `RunnerState`, a
/// `JobStatus`…): the database was written by something else or damaged.
fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} has unknown value `{value}`"))
}

/// SQLite's pools, (readers, writer), and the database the group commit's writer opens:
/// WAL, the chosen durability, a generous busy timeout; the writer one connection that
/// never checkpoints, the readers read-only, and a connection of its own that checkpoints
/// in the background. The migrations are applied through the writer before the others
/// open.
///
/// An in-memory database is one connection for everything, plus the group commit's. It is
/// a `memdb` database under a name of this process's own, which the two share and which
/// disappears with its last connection (sqlx's own `:memory:` could not be shared).
async fn sqlite_pools(
    url: &str,
    durability: Durability,
) -> Result<(AnyPool, AnyPool, ingest::SqliteDatabase), StoreError> {
    let pragmas = sqlite_pragmas(durability);
    if url.contains(":memory:") {
        let name = memory_database_name();
        let pool = sqlite_pool(format!("sqlite://{name}?vfs=memdb"), pragmas, 1).await?;
        migrations::apply(&pool, Backend::Sqlite, &redacted_url(url)).await?;
        return Ok((pool.clone(), pool, ingest::SqliteDatabase::Memory(name)));
    }
    let path = SqliteConnectOptions::from_str(url)?.get_filename().to_path_buf();
    let writer = sqlite_pool(with_mode(url, "rwc"), format!("{pragmas} {WRITER_PRAGMAS}"), 1).await?;
    migrations::apply(&writer, Backend::Sqlite, &redacted_url(url)).await?;
    let readers = sqlite_pool(with_mode(url, "ro"), pragmas.clone(), 4).await?;
    checkpoint::spawn(sqlite_pool(with_mode(url, "rw"), pragmas, 1).await?);
    Ok((readers, writer, ingest::SqliteDatabase::File(path)))
}

/// What every SQLite connection of the store is set up with: WAL, the chosen durability,
/// a generous busy timeout, statement journals in memory.
fn sqlite_pragmas(durability: Durability) -> String {
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    format!(
        "PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; \
         PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;"
    )
}

/// Added on the connections that write: they never checkpoint (see `checkpoint`).
const WRITER_PRAGMAS: &str = "PRAGMA wal_autocheckpoint = 0;";

/// A `memdb` name no other store of this process has: a leading `/` makes the database
/// shared by the connections that open it.
fn memory_database_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("/modal-github-runner-{}-{n}", std::process::id())
}

/// `url` opened in SQLite's `mode` (`rwc`, `rw`, `ro`) unless it names one already.
fn with_mode(url: &str, mode: &str) -> String {
    if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode={mode}")
    } else {
        format!("{url}?mode={mode}")
    }
}

/// A SQLite pool of `size` connections that stay open, each set up with `pragmas`.
async fn sqlite_pool(url: String, pragmas: String, size: u32) -> Result<AnyPool, StoreError> {
    let pragmas: std::sync::Arc<str> = pragmas.into();
    Ok(AnyPoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        // A SQLite connection is a file handle in this process: nothing can break it between
        // uses, and sqlx's check before each use is one more round trip to its thread (on
        // the writer, before every group commit).
        .test_before_acquire(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .after_connect(move |conn, _| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(pragmas.to_string()))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?)
}

/// `$first, $first+1, …` for `count` values: an `IN (…)` list both dialects read.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a column holding an `owner/repo` name.
fn repo_column(row: &AnyRow, column: &str) -> Result<RepoName, StoreError> {
    let name: String = row.try_get(column)?;
    Ok(RepoName::parse(&name)?)
}

#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;
