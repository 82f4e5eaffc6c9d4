//! Versioned schema migrations (`crates/service/migrations/sqlite/` and
//! `crates/service/migrations/postgres/`, one schema in each dialect), applied at start.
//! On PostgreSQL sqlx takes an advisory lock while it migrates, so replicas starting
//! together apply each migration once.
//!
//! The files are embedded with `include_str!` and handed to sqlx's `Migrator` at run time,
//! which needs only sqlx's `migrate` feature; the `migrate!` macro would also pull in
//! sqlx's procedural macros for nothing more. sqlx records each applied migration (with a
//! checksum) in `_sqlx_migrations`. A database written by a newer binary is refused before
//! anything touches it: an older binary cannot know what the newer schema means.

use sqlx::AnyPool;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::{Backend, StoreError};

/// The SQLite schema's versions, oldest first. A released migration is never edited (sqlx
/// refuses a database whose applied migration changed); a change is the next file.
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "job closures and redeliveries",
        include_str!("../../migrations/sqlite/0002_job_closures_and_redeliveries.sql"),
    ),
    (
        3,
        "costs, failure logs and pauses",
        include_str!("../../migrations/sqlite/0003_costs_and_failure_logs.sql"),
    ),
    (
        4,
        "delivery log",
        include_str!("../../migrations/sqlite/0004_delivery_log.sql"),
    ),
];

/// The PostgreSQL schema: the same tables as SQLite's in its dialect, versions 1 and 2
/// matching SQLite's versions 1 to 3, then what only several replicas need (the leader
/// lease).
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "job closures and redeliveries",
        include_str!("../../migrations/postgres/0002_job_closures_and_redeliveries.sql"),
    ),
    (
        3,
        "costs, failure logs and pauses",
        include_str!("../../migrations/postgres/0003_costs_and_failure_logs.sql"),
    ),
    (
        4,
        "leader lease",
        include_str!("../../migrations/postgres/0004_leader_lease.sql"),
    ),
];

fn versions(backend: Backend) -> &'static [(i64, &'static str, &'static str)] {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

/// The newest schema version this binary knows for `backend`.
pub(super) fn latest_version(backend: Backend) -> i64 {
    versions(backend).iter().map(|(v, _, _)| *v).max().unwrap_or(0)
}

/// The text of migration `version`, for the test that pins released migrations.
#[cfg(test)]
pub(super) fn sql(backend: Backend, version: i64) -> Option<&'static str> {
    versions(backend)
        .iter()
        .find(|(v, _, _)| *v == version)
        .map(|(_, _, sql)| *sql)
}

fn migrator(backend: Backend) -> Migrator {
    let migrations = versions(backend)
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                (*description).into(),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(*sql),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Refuses a database written by a newer schema, then applies the migrations it lacks.
/// `name` names the database in the refusal (without its password).
pub(super) async fn apply(pool: &AnyPool, backend: Backend, name: &str) -> Result<(), StoreError> {
    let found = applied_version(pool, backend).await?;
    let known = latest_version(backend);
    if let Some(found) = found.filter(|v| *v > known) {
        return Err(StoreError::NewerSchema {
            path: name.strip_prefix("sqlite://").unwrap_or(name).to_string(),
            found,
            known,
        });
    }
    migrator(backend).run(pool).await?;
    Ok(())
}

/// The newest migration recorded in the database; `None` for a new database or one written
/// before versioned migrations.
pub(super) async fn applied_version(
    db: impl sqlx::Acquire<'_, Database = sqlx::Any>,
    backend: Backend,
) -> Result<Option<i64>, StoreError> {
    let mut conn = db.acquire().await?;
    let has_table: i64 = sqlx::query_scalar(match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
        }
    })
    .fetch_one(&mut *conn)
    .await?;
    if has_table == 0 {
        return Ok(None);
    }
    Ok(sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?)
}
