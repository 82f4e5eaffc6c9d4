use super::*;
use crate::domain::LabelSet;
use crate::store::{RunnerRow, TookJob};

const NOW: i64 = 1_000_000;

fn limits(max: usize) -> Limits {
    Limits {
        max_runners: max,
        prefix: NamePrefix::parse("modal").expect("prefix"),
        strategy_grace: Duration::from_secs(10),
        machine: MachinePolicy {
            gpu_types: vec!["T4".into()],
            ..MachinePolicy::default()
        },
        max_attempts: 3,
        pools: PoolScope::Repository,
        warm: Vec::new(),
    }
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).expect("valid")
}

fn job(id: u64, status: JobStatus) -> JobRow {
    JobRow {
        id: JobId(id),
        repo: repo("octo/repo"),
        run_id: 7,
        name: format!("job {id}"),
        labels: LabelSet::new(["self-hosted", "modal"]),
        status,
        conclusion: None,
        runner_name: None,
        source: "webhook".into(),
        first_seen_at: NOW - 1000 + i64::try_from(id).expect("small id"),
        mp_group: None,
        max_parallel: Some(0),
        closed_reason: None,
    }
}

fn matrix(id: u64, status: JobStatus, max: u32) -> JobRow {
    JobRow {
        mp_group: Some("test".into()),
        max_parallel: Some(max),
        ..job(id, status)
    }
}

fn runner(job: u64, attempt: u32, state: RunnerState) -> LiveRunner {
    LiveRunner {
        row: RunnerRow {
            name: RunnerName::for_job(&limits(1).prefix, JobId(job), attempt),
            job: JobId(job),
            attempt,
            repo: repo("octo/repo"),
            labels: LabelSet::new(["self-hosted", "modal"]),
            state,
            github_id: Some(job),
            sandbox_id: None,
            failure: None,
            created_at: NOW - 500,
            updated_at: NOW - 500,
            started_at: None,
            ended_at: None,
        },
        took: None,
    }
}

fn took(mut r: LiveRunner, job: u64, status: JobStatus, group: Option<&str>) -> LiveRunner {
    r.took = Some(TookJob {
        id: JobId(job),
        status,
        run_id: 7,
        mp_group: group.map(String::from),
        completed_at: None,
    });
    r
}

fn snapshot(jobs: Vec<JobRow>, runners: Vec<LiveRunner>) -> Snapshot {
    Snapshot {
        now: NOW,
        jobs,
        runners,
        attempts: HashMap::new(),
    }
}

fn created(intents: &[Intent]) -> Vec<String> {
    intents
        .iter()
        .filter_map(|i| match i {
            Intent::Create(r) => Some(r.name.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_queued_job_gets_one_runner_named_for_it() {
    let intents = plan(&snapshot(vec![job(1, JobStatus::Queued)], vec![]), &limits(50));
    assert_eq!(created(&intents), ["modal-1-1"]);
    let Intent::Create(r) = &intents[0] else {
        panic!("{intents:?}")
    };
    assert_eq!(r.labels.labels(), ["self-hosted", "modal"]);
}

#[test]
fn a_job_with_an_available_runner_needs_nothing_more() {
    for state in [
        RunnerState::Pending,
        RunnerState::Registering,
        RunnerState::Registered,
        RunnerState::Running,
    ] {
        let s = snapshot(vec![job(1, JobStatus::Queued)], vec![runner(1, 1, state)]);
        assert!(plan(&s, &limits(50)).is_empty(), "{state}");
    }
}

#[test]
fn waiting_jobs_get_no_runner() {
    assert!(plan(&snapshot(vec![job(1, JobStatus::Waiting)], vec![]), &limits(50)).is_empty());
}

#[test]
fn a_runner_stolen_by_a_sibling_is_balanced_by_the_siblings_runner() {
    // A's runner took B; B's runner is still idle and will take A.
    let s = snapshot(
        vec![job(1, JobStatus::Queued), job(2, JobStatus::InProgress)],
        vec![
            took(runner(1, 1, RunnerState::Running), 2, JobStatus::InProgress, None),
            runner(2, 1, RunnerState::Running),
        ],
    );
    assert!(plan(&s, &limits(50)).is_empty());
}

#[test]
fn a_runner_stolen_by_a_foreign_job_gets_exactly_one_replacement() {
    let mut s = snapshot(
        vec![job(1, JobStatus::Queued), job(9, JobStatus::InProgress)],
        vec![took(
            runner(1, 1, RunnerState::Running),
            9,
            JobStatus::InProgress,
            None,
        )],
    );
    s.attempts.insert(
        JobId(1),
        AttemptStats {
            max_attempt: 1,
            ..AttemptStats::default()
        },
    );
    let intents = plan(&s, &limits(50));
    assert_eq!(created(&intents), ["modal-1-2"]);
}

#[test]
fn a_job_cancelled_before_pickup_retires_its_runner() {
    // Job 1 is gone from the open jobs (completed/cancelled); its runner is surplus.
    let s = snapshot(vec![], vec![runner(1, 1, RunnerState::Running)]);
    assert_eq!(
        plan(&s, &limits(50)),
        [Intent::Retire(runner(1, 1, RunnerState::Running).row.name)]
    );
    let s = snapshot(vec![], vec![runner(1, 1, RunnerState::Pending)]);
    assert_eq!(
        plan(&s, &limits(50)),
        [Intent::Cancel(runner(1, 1, RunnerState::Pending).row.name)]
    );
}

#[test]
fn runners_mid_registration_are_not_retired() {
    for state in [RunnerState::Registering, RunnerState::Registered] {
        assert!(plan(&snapshot(vec![], vec![runner(1, 1, state)]), &limits(50)).is_empty());
    }
}

#[test]
fn a_surplus_runner_made_for_a_still_queued_job_is_kept() {
    // Job 2 was cancelled; job 1 still queued. Runners for both exist: only 2's goes.
    let s = snapshot(
        vec![job(1, JobStatus::Queued)],
        vec![
            runner(1, 1, RunnerState::Running),
            runner(2, 1, RunnerState::Running),
        ],
    );
    assert_eq!(
        plan(&s, &limits(50)),
        [Intent::Retire(runner(2, 1, RunnerState::Running).row.name)]
    );
}

#[test]
fn max_parallel_limits_runners_per_matrix() {
    let jobs: Vec<_> = (1..=5).map(|i| matrix(i, JobStatus::Queued, 2)).collect();
    assert_eq!(
        created(&plan(&snapshot(jobs, vec![]), &limits(50))),
        ["modal-1-1", "modal-2-1"]
    );
}

#[test]
fn running_matrix_jobs_and_winding_down_runners_count_against_max_parallel() {
    let jobs = vec![
        matrix(1, JobStatus::InProgress, 2),
        matrix(3, JobStatus::Queued, 2),
        matrix(4, JobStatus::Queued, 2),
    ];
    // Job 2 completed but its runner is still live: it still holds a slot.
    let runners = vec![
        took(
            runner(1, 1, RunnerState::Running),
            1,
            JobStatus::InProgress,
            Some("test"),
        ),
        took(
            runner(2, 1, RunnerState::Running),
            2,
            JobStatus::Completed,
            Some("test"),
        ),
    ];
    assert!(created(&plan(&snapshot(jobs.clone(), runners.clone()), &limits(50))).is_empty());
    // Once job 2's runner is gone, one more may start.
    assert_eq!(
        created(&plan(&snapshot(jobs, runners[..1].to_vec()), &limits(50))),
        ["modal-3-1"]
    );
}

#[test]
fn jobs_wait_for_the_max_parallel_lookup_but_not_forever() {
    let mut j = job(1, JobStatus::Queued);
    j.max_parallel = None;
    j.first_seen_at = NOW - 1_000;
    assert!(plan(&snapshot(vec![j.clone()], vec![]), &limits(50)).is_empty());
    j.first_seen_at = NOW - 11_000;
    assert_eq!(
        created(&plan(&snapshot(vec![j], vec![]), &limits(50))),
        ["modal-1-1"]
    );
}

#[test]
fn max_runners_caps_creation_oldest_jobs_first_counting_busy_runners() {
    let jobs: Vec<_> = (1..=10).map(|i| job(i, JobStatus::Queued)).collect();
    assert_eq!(
        created(&plan(&snapshot(jobs.clone(), vec![]), &limits(3))).len(),
        3
    );
    let busy = vec![
        took(
            runner(20, 1, RunnerState::Running),
            20,
            JobStatus::InProgress,
            None,
        ),
        took(
            runner(21, 1, RunnerState::Running),
            21,
            JobStatus::InProgress,
            None,
        ),
    ];
    assert_eq!(created(&plan(&snapshot(jobs, busy), &limits(3))), ["modal-1-1"]);
}

#[test]
fn a_job_whose_attempt_just_failed_backs_off_then_gets_the_next_attempt() {
    let mut s = snapshot(vec![job(1, JobStatus::Queued)], vec![]);
    s.attempts.insert(
        JobId(1),
        AttemptStats {
            wasted: 0,
            max_attempt: 2,
            failures: 1,
            last_failure_at: Some(NOW - 1_000),
        },
    );
    assert!(plan(&s, &limits(50)).is_empty());
    s.attempts.insert(
        JobId(1),
        AttemptStats {
            wasted: 0,
            max_attempt: 2,
            failures: 1,
            last_failure_at: Some(NOW - 6_000),
        },
    );
    assert_eq!(created(&plan(&s, &limits(50))), ["modal-1-3"]);
}

#[test]
fn pools_are_separate_per_repository_and_per_label_set_ignoring_case() {
    let mut other_repo = job(2, JobStatus::Queued);
    other_repo.repo = repo("octo/other");
    let mut gpu = job(3, JobStatus::Queued);
    gpu.labels = LabelSet::new(["self-hosted", "modal", "gpu"]);
    let mut upper = job(4, JobStatus::Queued);
    upper.labels = LabelSet::new(["MODAL", "Self-Hosted"]);
    // One running runner in octo/repo with the plain labels serves job 1 or job 4, not both.
    let s = snapshot(
        vec![job(1, JobStatus::Queued), other_repo, gpu, upper],
        vec![runner(1, 1, RunnerState::Running)],
    );
    let mut names = created(&plan(&s, &limits(50)));
    names.sort();
    assert_eq!(names, ["modal-2-1", "modal-3-1", "modal-4-1"]);
}

#[test]
fn planning_again_after_applying_the_plan_changes_nothing() {
    let jobs: Vec<_> = (1..=6)
        .map(|i| job(i, JobStatus::Queued))
        .chain((7..=9).map(|i| matrix(i, JobStatus::Queued, 1)))
        .collect();
    let s = snapshot(jobs.clone(), vec![]);
    let first = plan(&s, &limits(50));
    let runners: Vec<LiveRunner> = first
        .iter()
        .filter_map(|i| match i {
            Intent::Create(r) => Some(runner(r.job.0, r.attempt, RunnerState::Pending)),
            _ => None,
        })
        .collect();
    assert_eq!(runners.len(), 7);
    assert!(plan(&snapshot(jobs, runners), &limits(50)).is_empty());
}

#[test]
fn jobs_asking_for_a_machine_the_policy_forbids_are_refused_not_planned() {
    let mut allowed = job(1, JobStatus::Queued);
    allowed.labels = LabelSet::new(["self-hosted", "modal", "gpu=t4", "cpu=4"]);
    let mut forbidden = job(2, JobStatus::Queued);
    forbidden.labels = LabelSet::new(["self-hosted", "modal", "gpu=H100"]);
    let intents = plan(&snapshot(vec![allowed, forbidden], vec![]), &limits(50));
    assert_eq!(created(&intents), ["modal-1-1"]);
    assert!(
        intents
            .iter()
            .any(|i| matches!(i, Intent::Refuse { job, reason, .. }
        if *job == JobId(2) && reason.contains("SANDBOX_GPU_TYPES")))
    );
}

#[test]
fn jobs_whose_labels_github_would_refuse_are_refused_not_planned() {
    let mut many = job(1, JobStatus::Queued);
    let labels: Vec<String> = ["self-hosted", "modal"]
        .into_iter()
        .map(String::from)
        .chain((0..99).map(|i| format!("extra{i}")))
        .collect();
    many.labels = LabelSet::new(&labels);
    let mut comma = job(2, JobStatus::Queued);
    comma.labels = LabelSet::new(["self-hosted", "modal", "a,b"]);
    let intents = plan(
        &snapshot(vec![many, comma, job(3, JobStatus::Queued)], vec![]),
        &limits(50),
    );
    assert_eq!(created(&intents), ["modal-3-1"]);
    let refused: Vec<JobId> = intents
        .iter()
        .filter_map(|i| match i {
            Intent::Refuse { job, .. } => Some(*job),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [JobId(1), JobId(2)]);
}

#[test]
fn a_job_whose_runners_all_ended_without_running_it_is_abandoned_at_the_limit() {
    let stats = |wasted| AttemptStats {
        wasted,
        max_attempt: wasted,
        failures: wasted,
        last_failure_at: Some(NOW - 3_600_000),
    };
    let mut s = snapshot(vec![job(1, JobStatus::Queued), job(2, JobStatus::Queued)], vec![]);
    s.attempts.insert(JobId(1), stats(2));
    s.attempts.insert(JobId(2), stats(3));
    let intents = plan(&s, &limits(50));
    assert_eq!(
        created(&intents),
        ["modal-1-3"],
        "two wasted runners: a third is made"
    );
    assert!(intents.iter().any(
        |i| matches!(i, Intent::Abandon { job, why: Abandoned::TooManyAttempts(3), .. } if *job == JobId(2))
    ));
    let unlimited = Limits {
        max_attempts: 0,
        ..limits(50)
    };
    assert_eq!(created(&plan(&s, &unlimited)), ["modal-1-3", "modal-2-4"]);
}

#[test]
fn organisation_runners_of_sibling_repositories_are_counted_together_before_a_replacement() {
    // Job 1 (acme/a) and job 2 (acme/b) each got a runner; job 1's runner took job 2.
    let mut a = job(1, JobStatus::Queued);
    a.repo = repo("acme/a");
    let mut b = job(2, JobStatus::InProgress);
    b.repo = repo("acme/b");
    let mut runner_a = took(runner(1, 1, RunnerState::Running), 2, JobStatus::InProgress, None);
    runner_a.row.repo = repo("acme/a");
    let mut runner_b = runner(2, 1, RunnerState::Running);
    runner_b.row.repo = repo("acme/b");
    let mut s = snapshot(vec![a, b], vec![runner_a, runner_b]);
    s.attempts.insert(
        JobId(1),
        AttemptStats {
            max_attempt: 1,
            ..AttemptStats::default()
        },
    );
    // At the organisation, job 2's idle runner can take job 1: nothing to make.
    let org = Limits {
        pools: PoolScope::Owner,
        ..limits(50)
    };
    assert!(plan(&s, &org).is_empty(), "{:?}", plan(&s, &org));
    // Repository runners cannot cross repositories: job 1 needs a replacement.
    assert_eq!(created(&plan(&s, &limits(50))), ["modal-1-2"]);
}

/// A planned runner for job 2, which went away, in another pool than job 1's.
fn planned_elsewhere() -> LiveRunner {
    let mut r = runner(2, 1, RunnerState::Pending);
    r.row.labels = LabelSet::new(["self-hosted", "modal", "cpu=4"]);
    r
}

#[test]
fn capacity_freed_by_a_cancelled_runner_is_used_in_the_same_pass() {
    // Job 2's planned runner holds the only slot job 1 needs.
    let s = snapshot(vec![job(1, JobStatus::Queued)], vec![planned_elsewhere()]);
    let intents = plan(&s, &limits(1));
    assert!(intents.contains(&Intent::Cancel(planned_elsewhere().row.name)));
    assert_eq!(created(&intents), ["modal-1-1"]);
}

#[tokio::test]
async fn a_cancellation_that_lost_the_race_with_the_provisioner_frees_no_capacity() {
    let store = Store::open("sqlite::memory:").await.expect("store");
    let ctx = PlannerContext {
        store: store.clone(),
        limits: limits(1),
        wake: Arc::default(),
        metrics: Arc::new(Metrics::new()),
        clock: Clock::System,
        interval: Duration::from_secs(2),
        refused: Mutex::default(),
        spend: Default::default(),
    };
    let planned = planned_elsewhere();
    let new = NewRunner {
        name: planned.row.name.clone(),
        job: JobId(2),
        attempt: 1,
        repo: planned.row.repo.clone(),
        labels: planned.row.labels.clone(),
    };
    store.insert_runners(&[new]).await.expect("insert");
    let s = snapshot(vec![job(1, JobStatus::Queued)], vec![planned.clone()]);
    let intents = plan(&s, &ctx.limits);
    assert_eq!(created(&intents), ["modal-1-1"]);
    // Between the snapshot and the write, the provisioner starts registering it.
    let registering = store
        .transition(
            &planned.row.name,
            &[RunnerState::Pending],
            RunnerState::Registering,
            RunnerPatch::default(),
        )
        .await
        .expect("transition");
    assert!(registering);

    apply(&ctx, &s, intents).await.expect("apply");
    let made = store.runner("modal-1-1").await.expect("read");
    assert!(made.is_none(), "MAX_RUNNERS holds: no runner for job 1 yet");
}

// ---- warm pool (issue 13 item 3) ----

fn warm_limits(max: usize, size: usize) -> Limits {
    Limits {
        warm: vec![crate::loops::planner::WarmPool {
            labels: LabelSet::new(["self-hosted", "modal"]),
            size,
        }],
        ..limits(max)
    }
}

fn warm_runner(seq: u32) -> LiveRunner {
    let mut r = runner(0, seq, RunnerState::Running);
    r.row.github_id = Some(1000 + u64::from(seq));
    r
}

fn warm_created(intents: &[Intent]) -> usize {
    intents
        .iter()
        .filter(|i| matches!(i, Intent::Create(r) if r.job == crate::loops::planner::WARM_JOB))
        .count()
}

#[test]
fn a_warm_pool_is_filled_beside_the_jobs_runners_in_a_reach_that_had_a_job() {
    let s = snapshot(vec![job(1, JobStatus::Queued)], vec![]);
    let intents = plan(&s, &warm_limits(50, 2));
    assert_eq!(created(&intents).len(), 3, "{intents:?}");
    assert_eq!(warm_created(&intents), 2);
    assert!(created(&intents).contains(&"modal-1-1".to_string()));
}

#[test]
fn a_warm_runner_that_takes_a_job_is_replaced_at_once() {
    // Two warm runners; one took job 1 (now in progress).
    let busy = took(warm_runner(1), 1, JobStatus::InProgress, None);
    let s = snapshot(vec![job(1, JobStatus::InProgress)], vec![busy, warm_runner(2)]);
    let intents = plan(&s, &warm_limits(50, 2));
    assert_eq!(warm_created(&intents), 1, "{intents:?}");
    assert_eq!(created(&intents).len(), 1);
}

#[test]
fn warm_runners_count_toward_max_runners_and_jobs_come_first() {
    let s = snapshot(vec![job(1, JobStatus::Queued), job(2, JobStatus::Queued)], vec![]);
    let intents = plan(&s, &warm_limits(3, 5));
    assert_eq!(created(&intents).len(), 3, "never above MAX_RUNNERS: {intents:?}");
    assert_eq!(warm_created(&intents), 1, "jobs' runners first");
    let full = snapshot(vec![], vec![warm_runner(1), warm_runner(2), warm_runner(3)]);
    assert!(plan(&full, &warm_limits(3, 5)).is_empty());
}

#[test]
fn warm_runners_are_retired_only_beyond_the_pools_size() {
    let s = snapshot(vec![], vec![warm_runner(1), warm_runner(2), warm_runner(3)]);
    assert!(plan(&s, &warm_limits(50, 3)).is_empty(), "at its size: kept");
    let retired: Vec<Intent> = plan(&s, &warm_limits(50, 2));
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert!(matches!(retired[0], Intent::Retire(_)));
    // Without a pool, idle runners of no job are surplus, as before.
    assert_eq!(plan(&s, &limits(50)).len(), 3);
}
