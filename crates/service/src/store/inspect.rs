//! What `modal-github-runner check` reads of the store without changing it: whether the
//! database exists, and which schema version it has compared with this binary's. The file
//! is opened read-only and no migration is applied.

use std::path::PathBuf;
use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::any::AnyConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use super::{Backend, StoreError, migrations};

/// The store's schema, compared with the newest this binary knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// An in-memory database: created empty at every start.
    InMemory,
    /// No database file yet: the service creates it at its first start.
    Missing(PathBuf),
    /// Up to date.
    Current(i64),
    /// Older (`None`: a database without versioned migrations); migrated at start.
    Older { found: Option<i64>, known: i64 },
    /// Written by a newer binary; this one refuses to start on it.
    Newer { found: i64, known: i64 },
}

/// Reads the schema version of the database at `url` without creating, locking for
/// writing or migrating it.
pub async fn inspect(url: &str) -> Result<SchemaState, StoreError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url).ok_or(StoreError::UnknownScheme)?;
    let url = match backend {
        Backend::Sqlite => {
            if url.contains(":memory:") {
                return Ok(SchemaState::InMemory);
            }
            let path = SqliteConnectOptions::from_str(url)?.get_filename().to_path_buf();
            if !path.exists() {
                return Ok(SchemaState::Missing(path));
            }
            let bare = url.split('?').next().unwrap_or_default();
            format!("{bare}?mode=ro")
        }
        Backend::Postgres => url.to_string(),
    };
    let mut conn = AnyConnectOptions::from_str(&url)?.connect().await?;
    let found = migrations::applied_version(&mut conn, backend).await;
    let _ = sqlx::Connection::close(conn).await;
    let found = found?;
    let known = migrations::latest_version(backend);
    Ok(match found {
        Some(v) if v == known => SchemaState::Current(v),
        Some(v) if v > known => SchemaState::Newer { found: v, known },
        found => SchemaState::Older { found, known },
    })
}
