//! Test databases for the store's suite, which runs on both backends: a fresh SQLite file,
//! or a fresh PostgreSQL database made on the server `TEST_DATABASE_URL` names (each test
//! its own database, so tests run in parallel). `scripts/test` starts that server and sets
//! the variable. Without it, the PostgreSQL variants fail when `CI` is set (so CI cannot
//! pass without running them) and otherwise print that they were skipped.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

use super::{Store, redacted_url};
use crate::domain::{JobEvent, JobId, JobStatus, LabelSet, RepoName};

/// One test's database; dropping it removes the SQLite file (a PostgreSQL test database
/// lives as long as the throwaway server).
pub(crate) struct TestDb {
    pub url: String,
    /// How a refusal names the database.
    pub display: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        TestDb {
            url: format!("sqlite://{}", path.display()),
            display: path.display().to_string(),
            _dir: Some(dir),
        }
    }

    /// A new, empty PostgreSQL database, or `None` (after saying so) when
    /// `TEST_DATABASE_URL` is unset outside CI.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let url = fresh_postgres_database(test).await?;
        Some(TestDb {
            display: redacted_url(&url),
            url,
            _dir: None,
        })
    }

    /// Opens the store on this database (applying the migrations).
    pub async fn open(&self) -> Store {
        Store::open(&self.url).await.expect("the test store opens")
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Creates a database named after the test on the `TEST_DATABASE_URL` server and returns
/// its URL.
pub(crate) async fn fresh_postgres_database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "TEST_DATABASE_URL is unset in CI: the PostgreSQL tests would not run (scripts/test sets it)"
        );
        eprintln!(
            "skipped {test} on PostgreSQL: TEST_DATABASE_URL is unset (scripts/postgres start sets it)"
        );
        return None;
    };
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        test.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(30)
            .collect::<String>()
    )
    .to_lowercase();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("TEST_DATABASE_URL answers");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let _ = conn.close().await;
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    Some(match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    })
}

/// Runs each named test (an `async fn(TestDb)`) once on SQLite and once on PostgreSQL, as
/// `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::store::testdb::TestDb::sqlite()).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = $crate::store::testdb::TestDb::postgres(stringify!($name)).await {
                    super::$name(db).await;
                }
            }
        }
    )*};
}
pub(crate) use on_both_backends;

/// A `queued` event of job `id` in octo/repo, asking for `self-hosted, modal`.
pub(crate) fn queued(id: u64) -> JobEvent {
    JobEvent {
        action: "queued".into(),
        status: JobStatus::Queued,
        job_id: JobId(id),
        run_id: 1,
        run_attempt: 1,
        name: "build".into(),
        workflow_name: None,
        head_sha: None,
        conclusion: None,
        labels: LabelSet::new(["self-hosted", "modal"]),
        runner_name: None,
        repo: RepoName::parse("octo/repo").expect("valid"),
        queued_for: None,
    }
}
