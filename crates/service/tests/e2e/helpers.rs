//! The shared harness (`testkit`), and what only these tests need: the service's binary,
//! for the scenarios that kill or restart its process.

pub use testkit::*;

/// The service binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_modal-github-runner");

/// Options that run the service as a child process of its binary (`serve`).
pub fn as_process(options: Options) -> Options {
    options.process(vec![BIN.into(), "serve".into()])
}

/// Another connection holding the store's write lock: the service's writes wait behind
/// it, as behind a slow disk, until it is released.
pub struct StoreWriteLock(sqlx::SqliteConnection);

impl StoreWriteLock {
    pub async fn take(world: &World) -> StoreWriteLock {
        let mut conn = connect(world).await;
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .expect("the write lock");
        StoreWriteLock(conn)
    }

    /// Releases the lock without writing anything.
    pub async fn release(mut self) {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut self.0)
            .await
            .expect("rollback");
    }
}

/// The delivery GUIDs the service's store holds, read through a connection of our own.
pub async fn recorded_deliveries(world: &World) -> std::collections::HashSet<String> {
    let mut conn = connect(world).await;
    // A GUID of the last second or so may still be in the delivery log, not yet folded.
    sqlx::query_scalar::<_, String>("SELECT guid FROM deliveries UNION ALL SELECT guid FROM delivery_log")
        .fetch_all(&mut conn)
        .await
        .expect("delivery GUIDs")
        .into_iter()
        .collect()
}

pub async fn connect(world: &World) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    sqlx::sqlite::SqliteConnectOptions::from_str(&world.database_url())
        .expect("database url")
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .expect("a connection to the store")
}

/// No name was used twice: a runner name is registered once and gets one sandbox.
pub fn assert_unique(names: &[String]) {
    let mut seen = std::collections::HashSet::new();
    let doubled: Vec<&String> = names.iter().filter(|n| !seen.insert(*n)).collect();
    assert!(doubled.is_empty(), "names used twice: {doubled:?}");
}

/// What a crash or a leader takeover must not break: each runner name has one sandbox and
/// one registration, and every job succeeded.
pub fn assert_each_name_once_and_every_job_succeeded(world: &World) {
    let names: Vec<String> = world
        .fake_modal()
        .sandboxes()
        .into_iter()
        .filter_map(|s| s.name)
        .collect();
    assert_unique(&names);
    assert_unique(&world.github.registrations_ever());
    assert!(
        world
            .github
            .jobs()
            .iter()
            .all(|j| j.conclusion.as_deref() == Some("success")),
        "every job succeeded"
    );
}
