//! Properties of `plan` over generated store snapshots: jobs in every status, several
//! repositories and label sets (one the machine policy refuses), matrix groups with
//! max-parallel, runners in every live state (some busy), recent failures, and a
//! `MAX_RUNNERS` that is sometimes already exceeded.

use proptest::prelude::*;

use super::*;
use crate::domain::LabelSet;
use crate::store::{RunnerRow, TookJob};

const NOW: i64 = 10_000_000;
const GRACE: Duration = Duration::from_secs(10);

fn limits(max_runners: usize) -> Limits {
    Limits {
        max_runners,
        prefix: NamePrefix::parse("modal").expect("prefix"),
        strategy_grace: GRACE,
        machine: MachinePolicy::default(),
        max_attempts: 3,
        pools: PoolScope::Repository,
        warm: Vec::new(),
    }
}

/// Repositories (two spellings of one) and label sets (the last one is refused).
const REPOS: [&str; 3] = ["octo/a", "Octo/A", "octo/b"];
const LABELS: [&[&str]; 3] = [
    &["self-hosted", "modal"],
    &["self-hosted", "modal", "cpu=4"],
    &["self-hosted", "modal", "gpu=H100"],
];

fn status() -> impl Strategy<Value = JobStatus> {
    prop_oneof![
        1 => Just(JobStatus::Waiting),
        4 => Just(JobStatus::Queued),
        2 => Just(JobStatus::InProgress),
        1 => Just(JobStatus::Completed),
    ]
}

fn live_state() -> impl Strategy<Value = RunnerState> {
    prop_oneof![
        Just(RunnerState::Pending),
        Just(RunnerState::Registering),
        Just(RunnerState::Registered),
        Just(RunnerState::Running),
        Just(RunnerState::Retiring),
    ]
}

/// One job; its id is set from its position.
fn job() -> impl Strategy<Value = JobRow> {
    (
        (0..REPOS.len(), 0..LABELS.len(), status(), 1..3u64),
        (
            proptest::option::of(Just("matrix".to_string())),
            proptest::option::of(0..4u32),
            0..20_000i64,
        ),
    )
        .prop_map(
            |((repo, labels, status, run_id), (mp_group, max_parallel, age))| JobRow {
                id: JobId(0),
                repo: RepoName::parse(REPOS[repo]).expect("repo"),
                run_id,
                name: "job".into(),
                labels: LabelSet::new(LABELS[labels]),
                status,
                conclusion: None,
                runner_name: None,
                source: "webhook".into(),
                first_seen_at: NOW - age,
                mp_group,
                max_parallel,
                closed_reason: None,
            },
        )
}

/// A live runner made for job `job` (1..=16, so some jobs are gone from the snapshot),
/// which may have taken some job (made consistent with the jobs in `snapshot`).
fn runner() -> impl Strategy<Value = LiveRunner> {
    (
        (1..=16u64, 1..3u32, live_state(), 0..REPOS.len(), 0..LABELS.len()),
        proptest::option::of((1..=16u64, 1..3u64, proptest::option::of(Just("matrix")))),
    )
        .prop_map(|((job, attempt, state, repo, labels), took)| LiveRunner {
            row: RunnerRow {
                name: RunnerName::for_job(&limits(0).prefix, JobId(job), attempt),
                job: JobId(job),
                attempt,
                repo: RepoName::parse(REPOS[repo]).expect("repo"),
                labels: LabelSet::new(LABELS[labels]),
                state,
                github_id: None,
                sandbox_id: None,
                failure: None,
                created_at: NOW - 1_000,
                updated_at: NOW - 1_000,
                started_at: None,
                ended_at: None,
            },
            took: took.map(|(id, run_id, group)| TookJob {
                id: JobId(id),
                status: JobStatus::Completed,
                run_id,
                mp_group: group.map(String::from),
                completed_at: None,
            }),
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        proptest::collection::vec(job(), 0..14),
        proptest::collection::vec(runner(), 0..10),
        proptest::collection::vec((1..=14u64, 0..4u32, 0..60_000i64), 0..5),
    )
        .prop_map(|(mut jobs, mut runners, failures)| {
            for (i, j) in jobs.iter_mut().enumerate() {
                j.id = JobId(i as u64 + 1);
            }
            let mut names = HashSet::new();
            runners.retain(|r| names.insert(r.row.name.clone()));
            let mut attempts: HashMap<JobId, AttemptStats> = failures
                .into_iter()
                .map(|(job, failures, ago)| {
                    let stats = AttemptStats {
                        wasted: 0,
                        max_attempt: 3,
                        failures,
                        last_failure_at: Some(NOW - ago),
                    };
                    (JobId(job), stats)
                })
                .collect();
            // As in the store: a runner has its job's repository and labels, and the
            // attempt counts of open jobs include every runner made for them.
            for r in &mut runners {
                if let Some(j) = jobs.iter().find(|j| j.id == r.row.job) {
                    r.row.repo = j.repo.clone();
                    r.row.labels = j.labels.clone();
                    let stats = attempts.entry(j.id).or_default();
                    stats.max_attempt = stats.max_attempt.max(r.row.attempt);
                }
                r.took = took(r, &jobs);
            }
            Snapshot {
                now: NOW,
                jobs,
                runners,
                attempts,
            }
        })
}

/// What a runner took, made consistent with the jobs: only a started runner takes a job;
/// an open job it took is that job's row (so in progress); a job missing from the open
/// jobs completed.
fn took(r: &LiveRunner, jobs: &[JobRow]) -> Option<TookJob> {
    let t = r.took.clone()?;
    if !matches!(r.row.state, RunnerState::Running | RunnerState::Retiring) {
        return None;
    }
    match jobs.iter().find(|j| j.id == t.id) {
        Some(j) if j.status == JobStatus::InProgress => Some(TookJob {
            status: JobStatus::InProgress,
            run_id: j.run_id,
            mp_group: j.mp_group.clone(),
            ..t
        }),
        Some(_) => None,
        None => Some(TookJob {
            status: JobStatus::Completed,
            completed_at: Some(NOW - 1_000),
            ..t
        }),
    }
}

/// The snapshot the next pass would read once `intents` are written to the store.
fn applied(s: &Snapshot, intents: &[Intent]) -> Snapshot {
    let mut next = s.clone();
    for intent in intents {
        match intent {
            Intent::Create(r) => {
                next.runners.push(LiveRunner {
                    row: planned(r),
                    took: None,
                });
                next.attempts.entry(r.job).or_default().max_attempt = r.attempt;
            }
            Intent::Cancel(name) => next.runners.retain(|l| &l.row.name != name),
            Intent::Retire(name) => {
                for l in next.runners.iter_mut().filter(|l| &l.row.name == name) {
                    l.row.state = RunnerState::Retiring;
                }
            }
            Intent::Refuse { .. } => {}
            Intent::Abandon { job, .. } => next.jobs.retain(|j| j.id != *job),
        }
    }
    next
}

/// The row `insert_runners` writes for a planned runner.
fn planned(r: &NewRunner) -> RunnerRow {
    RunnerRow {
        name: r.name.clone(),
        job: r.job,
        attempt: r.attempt,
        repo: r.repo.clone(),
        labels: r.labels.clone(),
        state: RunnerState::Pending,
        github_id: None,
        sandbox_id: None,
        failure: None,
        created_at: NOW,
        updated_at: NOW,
        started_at: None,
        ended_at: None,
    }
}

/// Intents that change the store (a refusal only reports).
fn changes(intents: &[Intent]) -> Vec<&Intent> {
    intents
        .iter()
        .filter(|i| !matches!(i, Intent::Refuse { .. }))
        .collect()
}

/// Running matrix jobs of `(run, group)` plus live runners winding down after one.
fn active(s: &Snapshot, run: u64, group: &str) -> usize {
    let running = s
        .jobs
        .iter()
        .filter(|j| {
            j.status == JobStatus::InProgress && j.run_id == run && j.mp_group.as_deref() == Some(group)
        })
        .count();
    let winding_down = s
        .runners
        .iter()
        .filter_map(|r| r.took.as_ref())
        .filter(|t| {
            t.status == JobStatus::Completed && t.run_id == run && t.mp_group.as_deref() == Some(group)
        })
        .count();
    running + winding_down
}

/// The queued jobs GitHub would dispatch now, worked out independently of the planner:
/// allowed machine, max-parallel known (or the grace over), and among the first
/// `max − active` of its matrix group by job id.
fn eligible(s: &Snapshot, l: &Limits) -> Vec<JobRow> {
    let mut queued: Vec<&JobRow> = s
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Queued && l.machine.check(&j.labels).is_ok())
        .filter(|j| j.max_parallel.is_some() || s.now - j.first_seen_at >= GRACE.as_millis() as i64)
        .collect();
    queued.sort_by_key(|j| j.id);
    let mut taken: HashMap<(u64, String), usize> = HashMap::new();
    queued
        .into_iter()
        .filter(|j| match (j.max_parallel, &j.mp_group) {
            (Some(max), Some(g)) if max > 0 => {
                let slot = taken
                    .entry((j.run_id, g.clone()))
                    .or_insert_with(|| active(s, j.run_id, g));
                *slot += 1;
                *slot <= max as usize
            }
            _ => true,
        })
        .cloned()
        .collect()
}

fn pool(repo: &RepoName, labels: &LabelSet) -> Pool {
    (repo.as_str().to_ascii_lowercase(), labels.key().to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn planning_an_applied_plan_again_changes_nothing(s in snapshot(), max in 0..12usize) {
        let l = limits(max);
        let next = applied(&s, &plan(&s, &l));
        let again = plan(&next, &l);
        prop_assert!(changes(&again).is_empty(), "{:?}", changes(&again));
    }

    #[test]
    fn new_runners_never_exceed_max_runners_or_a_runs_max_parallel(s in snapshot(), max in 0..12usize) {
        let l = limits(max);
        let intents = plan(&s, &l);
        let created: Vec<&NewRunner> = intents
            .iter()
            .filter_map(|i| match i { Intent::Create(r) => Some(r), _ => None })
            .collect();
        if !created.is_empty() {
            prop_assert!(live(&applied(&s, &intents)) <= max, "more than MAX_RUNNERS live");
        }
        let mut per_group: HashMap<(u64, String, u32), usize> = HashMap::new();
        for r in &created {
            let j = s.jobs.iter().find(|j| j.id == r.job).expect("runners are made for known jobs");
            if let (Some(m), Some(g)) = (j.max_parallel, &j.mp_group) && m > 0 {
                *per_group.entry((j.run_id, g.clone(), m)).or_default() += 1;
            }
        }
        for ((run, group, m), n) in per_group {
            prop_assert!(n + active(&s, run, &group) <= m as usize, "run {run} group {group}: {n} new, max {m}");
        }
    }

    #[test]
    fn every_eligible_job_has_a_runner_unless_max_runners_is_reached(s in snapshot(), max in 0..12usize) {
        let l = limits(max);
        let next = applied(&s, &plan(&s, &l));
        if live(&next) >= max {
            return Ok(());
        }
        let mut needed: HashMap<Pool, usize> = HashMap::new();
        for j in eligible(&s, &l).iter().filter(|j| !backing_off(&s, j.id)) {
            *needed.entry(pool(&j.repo, &j.labels)).or_default() += 1;
        }
        for (p, n) in needed {
            let available = next
                .runners
                .iter()
                .filter(|r| is_available(r) && pool(&r.row.repo, &r.row.labels) == p)
                .count();
            prop_assert!(available >= n, "pool {p:?}: {available} runners for {n} jobs");
        }
    }

    #[test]
    fn a_cancelled_or_completed_job_gets_no_new_runner_only_queued_ones_do(s in snapshot(), max in 0..12usize) {
        for intent in plan(&s, &limits(max)) {
            if let Intent::Create(r) = intent {
                let job = s.jobs.iter().find(|j| j.id == r.job);
                prop_assert!(
                    job.is_some_and(|j| j.status == JobStatus::Queued),
                    "{:?} for {:?}", r.name, job.map(|j| j.status)
                );
            }
        }
    }
}
