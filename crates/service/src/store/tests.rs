use super::*;
use crate::domain::{
    Abandoned, JobEvent, JobId, JobStatus, LabelSet, NamePrefix, RepoName, RunnerName, RunnerState,
};

use super::testdb::{TestDb, on_both_backends};

fn event(action: &str, status: JobStatus, runner: Option<&str>) -> JobEvent {
    JobEvent {
        action: action.into(),
        status,
        job_id: JobId(12_877_621_891),
        run_id: 4_747_967_848,
        run_attempt: 1,
        name: "build".into(),
        workflow_name: Some("CI".into()),
        head_sha: Some("abc".into()),
        conclusion: (status == JobStatus::Completed).then(|| "success".to_string()),
        labels: LabelSet::new(["self-hosted", "modal"]),
        runner_name: runner.map(String::from),
        repo: RepoName::parse("octo/repo").expect("valid"),
        queued_for: None,
    }
}

/// A planned runner `modal-<job>-<attempt>` in octo/repo.
fn new_runner(job: u64, attempt: u32) -> NewRunner {
    let prefix = NamePrefix::parse("modal").expect("prefix");
    NewRunner {
        name: RunnerName::for_job(&prefix, JobId(job), attempt),
        job: JobId(job),
        attempt,
        repo: RepoName::parse("octo/repo").expect("valid"),
        labels: LabelSet::new(["self-hosted", "modal"]),
    }
}

async fn record(s: &Store, guid: &str, e: JobEvent) -> Recorded {
    s.record(Some(guid.into()), e, EventSource::Webhook)
        .await
        .expect("recorded")
}

async fn a_delivery_guid_is_applied_once(db: TestDb) {
    let s = db.open().await;
    assert_eq!(
        record(&s, "g1", event("queued", JobStatus::Queued, None)).await,
        Recorded::Applied
    );
    assert_eq!(
        record(&s, "g1", event("queued", JobStatus::Queued, None)).await,
        Recorded::Duplicate
    );
    assert_eq!(s.open_jobs().await.expect("jobs").len(), 1);
}

async fn completed_before_queued_stays_completed(db: TestDb) {
    let s = db.open().await;
    record(
        &s,
        "g1",
        event("completed", JobStatus::Completed, Some("modal-1-1")),
    )
    .await;
    record(
        &s,
        "g2",
        event("in_progress", JobStatus::InProgress, Some("modal-1-1")),
    )
    .await;
    record(&s, "g3", event("queued", JobStatus::Queued, None)).await;
    let job = s.job(JobId(12_877_621_891)).await.expect("read").expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(job.runner_name.as_deref(), Some("modal-1-1"));
    assert!(s.open_jobs().await.expect("jobs").is_empty());
}

async fn a_late_in_progress_fills_in_the_runner_of_a_completed_job(db: TestDb) {
    let s = db.open().await;
    record(&s, "g1", event("completed", JobStatus::Completed, None)).await;
    record(
        &s,
        "g2",
        event("in_progress", JobStatus::InProgress, Some("modal-1-1")),
    )
    .await;
    let job = s.job(JobId(12_877_621_891)).await.expect("read").expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.runner_name.as_deref(), Some("modal-1-1"));
}

async fn waiting_and_queued_replace_each_other_until_the_job_starts(db: TestDb) {
    let s = db.open().await;
    record(&s, "g1", event("queued", JobStatus::Waiting, None)).await;
    assert_eq!(s.open_jobs().await.expect("jobs")[0].status, JobStatus::Waiting);
    record(&s, "g2", event("queued", JobStatus::Queued, None)).await;
    assert_eq!(s.open_jobs().await.expect("jobs")[0].status, JobStatus::Queued);
    record(&s, "g3", event("in_progress", JobStatus::InProgress, Some("r"))).await;
    record(&s, "g4", event("waiting", JobStatus::Waiting, None)).await;
    assert_eq!(
        s.open_jobs().await.expect("jobs")[0].status,
        JobStatus::InProgress
    );
}

async fn many_concurrent_events_are_all_recorded(db: TestDb) {
    let s = db.open().await;
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut e = event("queued", JobStatus::Queued, None);
            e.job_id = JobId(1_000 + i);
            s.record(Some(format!("g{i}")), e, EventSource::Webhook).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("recorded"), Recorded::Applied);
    }
    assert_eq!(s.open_jobs().await.expect("jobs").len(), 300);
}

async fn runner_transitions_are_compare_and_set(db: TestDb) {
    let s = db.open().await;
    record(&s, "g1", event("queued", JobStatus::Queued, None)).await;
    let prefix = NamePrefix::parse("modal").expect("prefix");
    let name = RunnerName::for_job(&prefix, JobId(12_877_621_891), 1);
    let new = new_runner(12_877_621_891, 1);
    assert_eq!(
        s.insert_runners(std::slice::from_ref(&new))
            .await
            .expect("insert"),
        1
    );
    assert_eq!(s.insert_runners(&[new]).await.expect("insert again"), 0);
    let moved = s
        .transition(
            &name,
            &[RunnerState::Pending],
            RunnerState::Registering,
            RunnerPatch::default(),
        )
        .await
        .expect("transition");
    assert!(moved);
    let again = s
        .transition(
            &name,
            &[RunnerState::Pending],
            RunnerState::Registering,
            RunnerPatch::default(),
        )
        .await
        .expect("transition");
    assert!(!again, "a second move from pending must fail");
    let patch = RunnerPatch {
        github_id: Some(42),
        ..Default::default()
    };
    s.transition(&name, &[RunnerState::Registering], RunnerState::Registered, patch)
        .await
        .expect("transition");
    let row = s.runner(name.as_str()).await.expect("read").expect("exists");
    assert_eq!((row.state, row.github_id), (RunnerState::Registered, Some(42)));
}

async fn live_runners_carry_the_job_they_took(db: TestDb) {
    let s = db.open().await;
    record(&s, "g1", event("queued", JobStatus::Queued, None)).await;
    let prefix = NamePrefix::parse("modal").expect("prefix");
    let name = RunnerName::for_job(&prefix, JobId(12_877_621_891), 1);
    s.insert_runners(&[new_runner(12_877_621_891, 1)])
        .await
        .expect("insert");
    assert_eq!(s.live_runners().await.expect("runners")[0].took, None);
    record(
        &s,
        "g2",
        event("in_progress", JobStatus::InProgress, Some(name.as_str())),
    )
    .await;
    let live = s.live_runners().await.expect("runners");
    let took = live[0].took.as_ref().expect("took a job");
    assert_eq!(
        (took.id, took.status),
        (JobId(12_877_621_891), JobStatus::InProgress)
    );
}

async fn failed_attempts_count_toward_backoff_only_when_retryable(db: TestDb) {
    let s = db.open().await;
    record(&s, "g1", event("queued", JobStatus::Queued, None)).await;
    let prefix = NamePrefix::parse("modal").expect("prefix");
    for (attempt, backoff) in [(1, true), (2, false)] {
        let name = RunnerName::for_job(&prefix, JobId(12_877_621_891), attempt);
        s.insert_runners(&[new_runner(12_877_621_891, attempt)])
            .await
            .expect("insert");
        let patch = RunnerPatch {
            failure: Some("x".into()),
            backoff: Some(backoff),
            ..Default::default()
        };
        s.transition(&name, &[RunnerState::Pending], RunnerState::Failed, patch)
            .await
            .expect("fail");
    }
    let stats = s.attempt_stats().await.expect("stats");
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].1.max_attempt, stats[0].1.failures), (2, 1));
}

async fn the_store_survives_a_reopen(db: TestDb) {
    let s = db.open().await;
    record(&s, "g1", event("queued", JobStatus::Queued, None)).await;
    s.close().await;
    let s = db.open().await;
    assert_eq!(s.open_jobs().await.expect("jobs").len(), 1);
    assert_eq!(
        record(&s, "g1", event("queued", JobStatus::Queued, None)).await,
        Recorded::Duplicate
    );
}

async fn pruning_removes_old_history_but_never_open_jobs_or_live_runners(db: TestDb) {
    let s = db.open().await;
    let prefix = NamePrefix::parse("modal").expect("prefix");
    // An old completed job with its ended runner, an open job with a live runner.
    let mut done = event("completed", JobStatus::Completed, Some("modal-1-1"));
    done.job_id = JobId(1);
    record(&s, "g1", done).await;
    let mut open = event("queued", JobStatus::Queued, None);
    open.job_id = JobId(2);
    record(&s, "g2", open).await;
    for (job, name) in [(1, "modal-1-1"), (2, "modal-2-1")] {
        s.insert_runners(&[new_runner(job, 1)]).await.expect("insert");
        assert_eq!(name, RunnerName::for_job(&prefix, JobId(job), 1).as_str());
    }
    let ended = RunnerName::for_job(&prefix, JobId(1), 1);
    s.transition(
        &ended,
        &[RunnerState::Pending],
        RunnerState::Done,
        RunnerPatch::ended(),
    )
    .await
    .expect("end");

    // Act: everything so far is "old".
    let pruned = s.prune(crate::domain::now_millis() + 1).await.expect("prune");

    // Assert
    assert_eq!(pruned, 4, "two deliveries, the ended runner, the completed job");
    assert!(s.job(JobId(1)).await.expect("read").is_none());
    assert!(s.job(JobId(2)).await.expect("read").is_some(), "open jobs stay");
    assert!(
        s.runner("modal-2-1").await.expect("read").is_some(),
        "live runners stay"
    );
    assert!(s.runner("modal-1-1").await.expect("read").is_none());
    assert_eq!(s.delivery_count().await.expect("count"), 0);
}

async fn a_repository_name_damaged_in_the_database_is_a_typed_error(db: TestDb) {
    let s = db.open().await;
    let mut queued = event("queued", JobStatus::Queued, None);
    queued.repo = RepoName::parse("Octo/Repo").expect("valid");
    record(&s, "g1", queued).await;
    s.insert_runners(&[new_runner(12_877_621_891, 1)])
        .await
        .expect("insert");
    assert_eq!(s.open_jobs().await.expect("jobs")[0].repo.as_str(), "Octo/Repo");
    assert_eq!(s.known_repos().await.expect("repos")[0].as_str(), "Octo/Repo");

    for damage in [
        "UPDATE jobs SET repo = '../etc'",
        "UPDATE runners SET repo = '../etc'",
    ] {
        sqlx::query(damage).execute(s.writer()).await.expect("damage");
    }

    let bad = |r: Result<usize, StoreError>| matches!(r, Err(StoreError::BadRepo(e)) if e.input == "../etc");
    assert!(bad(s.open_jobs().await.map(|v| v.len())));
    assert!(bad(s.known_repos().await.map(|v| v.len())));
    assert!(bad(s.unresolved_runs().await.map(|v| v.len())));
    assert!(bad(s.live_runners().await.map(|v| v.len())));
    assert!(bad(s.all_runners().await.map(|v| v.len())));
}

async fn redelivery_requests_are_counted_per_delivery_and_pruned_with_the_history(db: TestDb) {
    let s = db.open().await;
    assert_eq!(s.redelivery_asks("g1").await.expect("read"), 0);
    s.note_redelivery("g1").await.expect("note");
    s.note_redelivery("g1").await.expect("note");
    s.note_redelivery("g2").await.expect("note");
    assert_eq!(s.redelivery_asks("g1").await.expect("read"), 2);
    assert_eq!(s.redelivery_asks("g2").await.expect("read"), 1);
    s.prune(s.clock().now_millis() + 1).await.expect("prune");
    assert_eq!(s.redelivery_asks("g1").await.expect("read"), 0, "pruned");
}

async fn an_abandoned_job_is_closed_once_with_its_reason_and_a_late_queued_event_does_not_reopen_it(
    db: TestDb,
) {
    let s = db.open().await;
    record(&s, "g1", event("queued", JobStatus::Queued, None)).await;
    let id = JobId(12_877_621_891);
    assert!(s.abandon_job(id, &Abandoned::GoneAtGitHub).await.expect("close"));
    assert!(
        !s.abandon_job(id, &Abandoned::QueuedTooLong).await.expect("close"),
        "closed once"
    );
    record(&s, "g2", event("queued", JobStatus::Queued, None)).await;
    let job = s.job(id).await.expect("read").expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("abandoned"));
    assert_eq!(job.closed_reason, Some(Abandoned::GoneAtGitHub.to_string()));
    assert!(s.open_jobs().await.expect("read").is_empty());
}

/// The schema versions recorded as applied.
async fn applied_versions(s: &Store) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(s.pool())
        .await
        .expect("migrations table")
}

fn all_versions(backend: Backend) -> Vec<i64> {
    (1..=migrations::latest_version(backend)).collect()
}

async fn a_new_database_gets_every_migration(db: TestDb) {
    let s = db.open().await;

    assert_eq!(applied_versions(&s).await, all_versions(s.backend()));
    assert_eq!(s.delivery_count().await.expect("deliveries"), 0);
}

/// A copy of the fixture database that the schema.sql code wrote (before versioned
/// migrations): deliveries `guid-1` and `guid-2`, job 12877621891 in progress on runner
/// `modal-12877621891-1`, that runner running (GitHub id 42, sandbox `sb-1`), run
/// 4747967848 resolved.
fn pre_migrations_copy() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/store/fixtures/pre-migrations.sqlite3"
    );
    std::fs::copy(fixture, &path).expect("copy the fixture");
    let url = format!("sqlite://{}", path.display());
    (dir, url)
}

#[tokio::test]
async fn a_database_from_before_migrations_keeps_its_rows_and_is_migrated() {
    let (_dir, url) = pre_migrations_copy();

    let s = Store::open(&url).await.expect("opens the old database");

    assert_eq!(applied_versions(&s).await, all_versions(Backend::Sqlite));
    assert!(s.delivery_seen("guid-1").await.expect("read"));
    assert!(s.delivery_seen("guid-2").await.expect("read"));
    let job = s
        .job(JobId(12_877_621_891))
        .await
        .expect("read")
        .expect("the job");
    assert_eq!(job.status, JobStatus::InProgress);
    assert_eq!(job.runner_name.as_deref(), Some("modal-12877621891-1"));
    let runner = s
        .runner("modal-12877621891-1")
        .await
        .expect("read")
        .expect("the runner");
    assert_eq!(runner.state, RunnerState::Running);
    assert_eq!(runner.github_id, Some(42));
    assert_eq!(runner.sandbox_id.as_deref(), Some("sb-1"));
    let run: String = sqlx::query_scalar("SELECT state FROM runs WHERE run_id = 4747967848")
        .fetch_one(s.pool())
        .await
        .expect("the run");
    assert_eq!(run, "resolved");
    s.close().await;
    // Opened again, nothing is applied twice.
    let again = Store::open(&url).await.expect("opens again");
    assert_eq!(applied_versions(&again).await, all_versions(Backend::Sqlite));
}

async fn a_database_written_by_a_newer_version_is_refused_naming_both_versions(db: TestDb) {
    let s = db.open().await;
    let backend = s.backend();
    let newer = migrations::latest_version(backend) + 1;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from the future', TRUE, $2, 0)",
    )
    .bind(newer)
    .bind(vec![0u8])
    .execute(s.writer())
    .await
    .expect("a newer version's row");
    s.close().await;

    let err = Store::open(&db.url).await.err().expect("refused");

    assert_eq!(
        err.to_string(),
        format!(
            "the database at {} was written by a newer version (schema {newer}); this binary \
             knows up to {}; upgrade the binary or restore a backup",
            db.display,
            migrations::latest_version(backend)
        )
    );
}

#[test]
fn released_migrations_are_never_edited() {
    // sqlx refuses a database whose applied migration changed; this says so before release.
    // A new migration adds its line; an existing line never changes.
    let pinned: &[(i64, &str)] = &[
        (
            1,
            "a63fe92d84353fc21975fc2a776a2c8a227ba59c0f673748874aa7ea495dd9fa",
        ),
        (
            2,
            "992cd4677093a0266fc4a3b28cc2364ac58fcf4176113dc51f2667f5d6ad9814",
        ),
        (
            3,
            "fcbe092f3a39013483f2e459d3b2752cbd9b3957fb823a19219a807813102901",
        ),
        (
            4,
            "440b8aa7b24276dc16bd56cd9347d65b88133a4bd22e8f8e68e830df6cdceba9",
        ),
    ];
    assert_pinned(Backend::Sqlite, pinned);
}

/// Every migration of `backend` is pinned, and its text still has the pinned SHA-256.
fn assert_pinned(backend: Backend, pinned: &[(i64, &str)]) {
    assert_eq!(
        pinned.len(),
        all_versions(backend).len(),
        "every migration is pinned"
    );
    for (version, checksum) in pinned {
        let sql = migrations::sql(backend, *version).expect("a released migration");
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(sql));
        assert_eq!(sha256, *checksum, "migration {version} was edited");
    }
}

#[test]
fn released_postgres_migrations_are_never_edited() {
    let pinned: &[(i64, &str)] = &[
        (
            1,
            "ee67e01c5e0b40b378da3bb4389153ecb3fb353e4e05a0393692b175bbd03570",
        ),
        (
            2,
            "958c5dc3388cbe380fcabc6680722b59032bace79c5d450e8de4906dc22c00e0",
        ),
        (
            3,
            "8000d4aac1f539b8dd58bb8dc8c0bea851b9d07f1fe1f3332ae97a30886bad3a",
        ),
        (
            4,
            "588ba9bd59c2900303d92cad696f5ff86debd2c644e1d81ccbde79770a60fb75",
        ),
    ];
    assert_pinned(Backend::Postgres, pinned);
}

#[tokio::test]
async fn a_locked_database_is_told_apart_from_other_errors_so_opening_can_try_again() {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("s.db");
    let options = || {
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO)
    };
    let mut holder = options().connect().await.expect("connect");
    sqlx::query("CREATE TABLE t (x)")
        .execute(&mut holder)
        .await
        .expect("create");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .expect("lock");
    let mut other = options().connect().await.expect("connect");
    let locked = sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut other)
        .await
        .expect_err("locked");
    assert!(StoreError::from(locked).is_busy());
    let missing = sqlx::query("SELECT * FROM nowhere")
        .execute(&mut holder)
        .await
        .expect_err("no such table");
    assert!(!StoreError::from(missing).is_busy());
    assert!(!StoreError::Closed.is_busy());
}

/// Events sent at once share one transaction and one statement per round: a job's whole
/// life and a repeated GUID in one group come out as if recorded one by one.
async fn events_of_one_job_in_one_group_merge_in_order_and_a_repeated_guid_counts_once(db: TestDb) {
    let s = db.open().await;
    let (queued, started, repeat, completed, other) = tokio::join!(
        record(&s, "g1", event("queued", JobStatus::Queued, None)),
        record(
            &s,
            "g2",
            event("in_progress", JobStatus::InProgress, Some("modal-1-1"))
        ),
        record(&s, "g1", event("queued", JobStatus::Queued, None)),
        record(
            &s,
            "g3",
            event("completed", JobStatus::Completed, Some("modal-1-1"))
        ),
        s.record(None, event("queued", JobStatus::Queued, None), EventSource::Poll),
    );
    assert_eq!(
        [queued, started, repeat, completed],
        [
            Recorded::Applied,
            Recorded::Applied,
            Recorded::Duplicate,
            Recorded::Applied
        ]
    );
    assert_eq!(other.expect("recorded"), Recorded::Applied);
    let job = s.job(JobId(12_877_621_891)).await.expect("read").expect("exists");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.runner_name.as_deref(), Some("modal-1-1"));
    assert_eq!(s.delivery_count().await.expect("count"), 3);
}

// ---- costs and failure logs (issue 13 items 4, 5) ----

async fn an_ended_runners_cost_is_recorded_once_summed_per_job_and_repository_and_pruned_with_the_history(
    db: TestDb,
) {
    let s = db.open().await;
    let prefix = NamePrefix::parse("modal").expect("prefix");
    s.insert_runners(&[new_runner(1, 1)]).await.expect("insert");
    let name = RunnerName::for_job(&prefix, JobId(1), 1);
    assert!(
        s.unpriced_runners(10).await.expect("read").is_empty(),
        "live: not priced"
    );
    let patch = RunnerPatch {
        sandbox_id: Some("sb-1".into()),
        started: true,
        ..RunnerPatch::default()
    };
    s.transition(&name, &[RunnerState::Pending], RunnerState::Running, patch)
        .await
        .expect("run");
    s.transition(
        &name,
        &[RunnerState::Running],
        RunnerState::Done,
        RunnerPatch::ended(),
    )
    .await
    .expect("end");
    let unpriced = s.unpriced_runners(10).await.expect("read");
    assert_eq!(unpriced.len(), 1);
    assert_eq!(
        (unpriced[0].job, unpriced[0].sandbox_id.as_str()),
        (JobId(1), "sb-1")
    );

    assert!(s.record_cost(&unpriced[0], 0.25, "stats").await.expect("record"));
    assert!(
        !s.record_cost(&unpriced[0], 9.0, "rates").await.expect("record"),
        "once"
    );
    assert!(s.unpriced_runners(10).await.expect("read").is_empty());
    assert_eq!(
        s.job_costs(&[1, 2]).await.expect("costs"),
        [(1, 0.25, "stats".to_string())]
    );
    assert_eq!(s.spend_by_repo().await.expect("repos").len(), 1);
    assert_eq!(s.spend_since(0).await.expect("spend"), 0.25);

    assert!(
        s.record_failure_log(name.as_str(), "why", "tail ***")
            .await
            .expect("log")
    );
    assert!(
        !s.record_failure_log(name.as_str(), "again", "x")
            .await
            .expect("log"),
        "first wins"
    );
    assert_eq!(s.failure_logs(5).await.expect("logs")[0].tail, "tail ***");

    s.prune(s.clock().now_millis() + 1).await.expect("prune");
    assert_eq!(s.spend_since(0).await.expect("spend"), 0.0, "pruned");
    assert!(s.failure_logs(5).await.expect("logs").is_empty(), "pruned");
}

/// The max-parallel loop gets each run's open jobs in job order, whatever order the
/// database reads them in (here `jobs_open` reads the queued job before the running one).
async fn unresolved_runs_hold_their_open_jobs_in_job_order(db: TestDb) {
    let s = db.open().await;
    let job = |id: u64, run_id: u64, action: &str, status: JobStatus| JobEvent {
        job_id: JobId(id),
        run_id,
        ..event(action, status, None)
    };
    record(&s, "a", job(9, 2, "queued", JobStatus::Queued)).await;
    record(&s, "b", job(5, 2, "in_progress", JobStatus::InProgress)).await;
    record(&s, "c", job(7, 1, "queued", JobStatus::Queued)).await;
    record(&s, "d", job(3, 1, "completed", JobStatus::Completed)).await;

    let runs = s.unresolved_runs().await.expect("read");
    let found: Vec<(u64, Vec<u64>)> = runs
        .iter()
        .map(|r| (r.run_id, r.jobs.iter().map(|(j, _)| j.0).collect()))
        .collect();
    assert_eq!(found, vec![(1, vec![7]), (2, vec![5, 9])]);
}

/// SQLite's plans for the loops' reads of jobs and runners. Each pass runs them, so
/// each must cost what is open, not what the store keeps: retention keeps every job and
/// runner of the last days, done or not.
#[tokio::test]
async fn the_loops_read_open_jobs_through_jobs_open_and_never_every_job_or_runner_kept() {
    let db = TestDb::sqlite();
    let s = db.open().await;
    for (name, query) in [
        ("open jobs", jobs::OPEN_JOBS),
        ("unresolved runs", runs::UNRESOLVED_JOBS),
        ("attempt stats", runners::ATTEMPT_STATS),
        ("live runners", runners::LIVE_RUNNERS),
        (
            "runners to provision",
            &runners::runners_in_query(&[
                RunnerState::Pending,
                RunnerState::Registering,
                RunnerState::Registered,
            ]),
        ),
    ] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {query}")))
            .fetch_all(s.pool())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
        let whole_table = plan.iter().find(|step| {
            let step = step.as_str();
            let scan = step.starts_with("SCAN");
            let of_live_runners = step.contains("INDEX runners_live");
            scan && !of_live_runners
        });
        assert!(
            whole_table.is_none(),
            "{name} reads a whole table or index: {plan:?}"
        );
    }
}

on_both_backends!(
    a_delivery_guid_is_applied_once,
    unresolved_runs_hold_their_open_jobs_in_job_order,
    completed_before_queued_stays_completed,
    a_late_in_progress_fills_in_the_runner_of_a_completed_job,
    waiting_and_queued_replace_each_other_until_the_job_starts,
    many_concurrent_events_are_all_recorded,
    runner_transitions_are_compare_and_set,
    live_runners_carry_the_job_they_took,
    failed_attempts_count_toward_backoff_only_when_retryable,
    pruning_removes_old_history_but_never_open_jobs_or_live_runners,
    a_repository_name_damaged_in_the_database_is_a_typed_error,
    redelivery_requests_are_counted_per_delivery_and_pruned_with_the_history,
    an_abandoned_job_is_closed_once_with_its_reason_and_a_late_queued_event_does_not_reopen_it,
    a_new_database_gets_every_migration,
    the_store_survives_a_reopen,
    a_database_written_by_a_newer_version_is_refused_naming_both_versions,
    events_of_one_job_in_one_group_merge_in_order_and_a_repeated_guid_counts_once,
    an_ended_runners_cost_is_recorded_once_summed_per_job_and_repository_and_pruned_with_the_history,
);

/// A PostgreSQL store for the lease's tests; `None` (skipped) without `TEST_DATABASE_URL`.
async fn postgres_store(test: &str) -> Option<(TestDb, Store)> {
    let db = TestDb::postgres(test).await?;
    let s = db.open().await;
    Some((db, s))
}

#[tokio::test]
async fn a_replica_frozen_inside_a_fenced_transaction_does_not_block_the_takeover_for_long() {
    let Some((db, a)) = postgres_store("lease_frozen_holder").await else {
        return;
    };
    let short = std::time::Duration::from_millis(200);
    assert!(a.acquire_lease("a", short).await.expect("lease").is_some());
    // A freezes inside a fenced write: its transaction holds the lease row and never ends.
    let mut frozen = a.writer().acquire().await.expect("connection");
    sqlx::raw_sql("BEGIN; SELECT token FROM leader_lease WHERE id = 1 FOR SHARE")
        .execute(&mut *frozen)
        .await
        .expect("lock");
    tokio::time::sleep(short * 2).await;

    let b = db.open().await;
    let took = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        b.acquire_lease("b", std::time::Duration::from_secs(5)),
    )
    .await
    .expect("the takeover does not wait on the frozen transaction for ever");
    assert!(took.expect("lease").is_some(), "b leads");
    drop(frozen);
}

#[tokio::test]
async fn a_live_lease_stays_with_its_holder_and_an_expired_one_is_taken_over_under_a_new_token() {
    let Some((_db, s)) = postgres_store("lease_takeover").await else {
        return;
    };
    let long = std::time::Duration::from_secs(60);
    let (a, _) = s
        .acquire_lease("a", long)
        .await
        .expect("acquire")
        .expect("a leads");
    assert_eq!(
        s.acquire_lease("b", long).await.expect("try"),
        None,
        "a's lease is live"
    );
    let (renewed, _) = s.acquire_lease("a", long).await.expect("renew").expect("still a");
    assert_eq!(renewed, a, "a renewal keeps the token");

    let short = std::time::Duration::from_millis(200);
    s.acquire_lease("a", short)
        .await
        .expect("renew short")
        .expect("still a");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (b, _) = s
        .acquire_lease("b", long)
        .await
        .expect("take over")
        .expect("b leads");

    assert!(b > a, "a takeover increments the token: {a} then {b}");
    assert!(matches!(s.check_token(a).await, Err(StoreError::Fenced(t)) if t == a));
    s.check_token(b).await.expect("b's token is live");
    let lease = s
        .lease_state()
        .await
        .expect("read")
        .expect("postgres has a lease");
    assert_eq!((lease.holder.as_str(), lease.token, lease.live), ("b", b, true));
}

#[tokio::test]
async fn runner_writes_of_a_leader_whose_lease_was_taken_over_are_refused() {
    let Some((_db, s)) = postgres_store("lease_fenced_writes").await else {
        return;
    };
    record(&s, "g1", event("queued", JobStatus::Queued, None)).await;
    let leadership = crate::leader::Leadership::new("a".into(), Backend::Postgres, 0);
    let fenced = s.fenced(leadership.clone());
    // Not leading yet: nothing is written.
    assert!(matches!(
        fenced.insert_runners(&[new_runner(12_877_621_891, 1)]).await,
        Err(StoreError::Fenced(_))
    ));
    let short = std::time::Duration::from_millis(300);
    let stop = tokio_util::sync::CancellationToken::new();
    let keeper = tokio::spawn(crate::leader::keep_lease(
        s.clone(),
        leadership.clone(),
        short * 3,
        stop.clone(),
    ));
    for _ in 0..100 {
        if leadership.token().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        fenced
            .insert_runners(&[new_runner(12_877_621_891, 1)])
            .await
            .expect("leads"),
        1
    );
    // The keeper stops (as a paused process stops renewing) without giving the lease up:
    // another replica takes it over once it expires.
    keeper.abort();
    tokio::time::sleep(short * 4).await;
    s.acquire_lease("b", short * 10)
        .await
        .expect("take over")
        .expect("b leads");

    let name = RunnerName::from_stored("modal-12877621891-1".into());
    let moved = fenced
        .transition(
            &name,
            &[RunnerState::Pending],
            RunnerState::Failed,
            RunnerPatch::ended(),
        )
        .await;

    assert!(matches!(moved, Err(StoreError::Fenced(_))), "{moved:?}");
    assert_eq!(
        s.runner(name.as_str()).await.expect("read").expect("row").state,
        RunnerState::Pending
    );
    stop.cancel();
}

/// Leads as `a` through `keep_lease` until the returned keeper is aborted.
async fn lead_as_a(
    s: &Store,
    lease: std::time::Duration,
) -> (
    std::sync::Arc<crate::leader::Leadership>,
    tokio::task::JoinHandle<()>,
    tokio_util::sync::CancellationToken,
) {
    let leadership = crate::leader::Leadership::new("a".into(), Backend::Postgres, 0);
    let stop = tokio_util::sync::CancellationToken::new();
    let keeper = tokio::spawn(crate::leader::keep_lease(
        s.clone(),
        leadership.clone(),
        lease,
        stop.clone(),
    ));
    for _ in 0..200 {
        if leadership.token().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(leadership.token().is_some(), "a took the lease");
    (leadership, keeper, stop)
}

#[tokio::test]
async fn job_run_and_redelivery_writes_of_a_leader_whose_lease_was_taken_over_are_refused() {
    let Some((_db, s)) = postgres_store("lease_fenced_job_writes").await else {
        return;
    };
    record(&s, "g1", event("queued", JobStatus::Queued, None)).await;
    let short = std::time::Duration::from_millis(300);
    let (leadership, keeper, stop) = lead_as_a(&s, short * 3).await;
    let fenced = s.fenced(leadership);
    // While leading, the same handle writes.
    fenced.note_redelivery("g0").await.expect("leads");
    assert_eq!(s.redelivery_asks("g0").await.expect("read"), 1);
    // The keeper stops (as a paused process stops renewing) and another replica takes the
    // lease over once it expires.
    keeper.abort();
    tokio::time::sleep(short * 4).await;
    s.acquire_lease("b", short * 10)
        .await
        .expect("take over")
        .expect("b leads");
    let job = JobId(12_877_621_891);
    let repo = RepoName::parse("octo/repo").expect("valid");

    let abandoned = fenced.abandon_job(job, &Abandoned::GoneAtGitHub).await;
    let noted = fenced.note_redelivery("g1").await;
    let strategies = fenced
        .set_strategies(&[StrategyUpdate {
            job,
            group: "g".into(),
            max_parallel: 2,
        }])
        .await;
    let saved = fenced
        .save_run_strategy(4_747_967_848, &repo, &RunStrategy::Unreadable)
        .await;

    assert!(matches!(abandoned, Err(StoreError::Fenced(_))), "{abandoned:?}");
    assert!(matches!(noted, Err(StoreError::Fenced(_))), "{noted:?}");
    assert!(matches!(strategies, Err(StoreError::Fenced(_))), "{strategies:?}");
    assert!(matches!(saved, Err(StoreError::Fenced(_))), "{saved:?}");
    let row = s.job(job).await.expect("read").expect("job");
    assert_eq!(row.status, JobStatus::Queued, "not abandoned");
    assert_eq!((row.mp_group, row.max_parallel), (None, None), "no strategy");
    assert_eq!(s.redelivery_asks("g1").await.expect("read"), 0);
    let runs = s.unresolved_runs().await.expect("read");
    assert!(runs.iter().all(|r| r.known.is_none()), "no run strategy saved");
    stop.cancel();
}
