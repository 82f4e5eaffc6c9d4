//! Versioned schema migrations (`crates/service/migrations/sqlite/`), applied at start.
//!
//! The files are embedded with `include_str!` and handed to sqlx's `Migrator` at run time,
//! which needs only sqlx's `migrate` feature; the `migrate!` macro would also pull in
//! sqlx's procedural macros for nothing more. sqlx records each applied migration (with a
//! checksum) in `_sqlx_migrations`. A database written by a newer binary is refused before
//! anything touches it: an older binary cannot know what the newer schema means.

use std::path::Path;

use sqlx::SqlitePool;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::StoreError;

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
];

/// The newest schema version this binary knows.
pub(super) fn latest_version() -> i64 {
    SQLITE.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
}

/// The text of migration `version`, for the test that pins released migrations.
#[cfg(test)]
pub(super) fn sql(version: i64) -> Option<&'static str> {
    SQLITE
        .iter()
        .find(|(v, _, _)| *v == version)
        .map(|(_, _, sql)| *sql)
}

fn migrator() -> Migrator {
    let migrations = SQLITE
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
/// `path` names the database in the refusal.
pub(super) async fn apply(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let found = applied_version(pool).await?;
    let known = latest_version();
    if let Some(found) = found.filter(|v| *v > known) {
        return Err(StoreError::NewerSchema {
            path: path.display().to_string(),
            found,
            known,
        });
    }
    migrator().run(pool).await?;
    Ok(())
}

/// The newest migration recorded in the database; `None` for a new database or one written
/// before versioned migrations.
pub(super) async fn applied_version(
    db: impl sqlx::Acquire<'_, Database = sqlx::Sqlite>,
) -> Result<Option<i64>, StoreError> {
    let mut conn = db.acquire().await?;
    let has_table: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if has_table.is_none() {
        return Ok(None);
    }
    Ok(sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?)
}
