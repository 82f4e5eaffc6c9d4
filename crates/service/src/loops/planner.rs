//! Decides how many runners each kind of job needs, by counts rather than by events.
//!
//! A JIT runner is not bound to the job it was made for: any idle runner whose labels match
//! may take any matching job (docs/github.md §2.4). So for every pool — one repository
//! and one label set — the planner keeps as many not-yet-busy runners as there are queued
//! jobs that GitHub will dispatch now, within `MAX_RUNNERS` and each matrix's
//! `strategy.max-parallel`. A runner "stolen" by another job leaves its own job short by
//! one, and the counts produce exactly one replacement; a cancelled job leaves one runner
//! too many, and the count retires it.
//!
//! `plan` is a pure function of a store snapshot; `run` is the loop that feeds it and
//! writes its intents back to the store, where the provisioner and the reaper pick them up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::{
    Abandoned, JobId, JobStatus, MachinePolicy, NamePrefix, RepoName, RunnerName, RunnerState,
};
use crate::metrics::Metrics;
use crate::retry::job_retry_delay;
use crate::store::{AttemptStats, JobRow, LiveRunner, NewRunner, RunnerPatch, Store, StoreError};
use crate::wake::{Rounds, Wake};

/// What the planner may do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `MAX_RUNNERS`: runners holding capacity at once, busy ones included.
    pub max_runners: usize,
    pub prefix: NamePrefix,
    /// How long a job waits for its run's max-parallel lookup before it is planned as
    /// unlimited anyway (the lookup failing must not strand it).
    pub strategy_grace: Duration,
    /// What machines (`cpu=`, `memory=`, `gpu=` labels) jobs may ask for.
    pub machine: MachinePolicy,
    /// `MAX_ATTEMPTS_PER_JOB`: runners with a sandbox that failed or ended idle before a
    /// job is abandoned.
    pub max_attempts: u32,
    /// Which jobs a runner can take besides its own: those of its repository, of its
    /// owner (organisation runners) or of any (enterprise runners) that ask for its labels.
    pub pools: PoolScope,
    /// `WARM_POOL`: idle runners kept ready per label set.
    pub warm: Vec<WarmPool>,
}

/// How far a runner's reach goes (`RUNNER_SCOPE`): runners within one pool are
/// interchangeable, so the planner counts them together before it makes a replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolScope {
    #[default]
    Repository,
    Owner,
    Everything,
}

impl PoolScope {
    fn key(self, repo: &RepoName) -> String {
        match self {
            PoolScope::Repository => repo.key(),
            PoolScope::Owner => repo.owner().to_ascii_lowercase(),
            PoolScope::Everything => String::new(),
        }
    }
}

/// The store as the planner sees it at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now: i64,
    pub jobs: Vec<JobRow>,
    pub runners: Vec<LiveRunner>,
    pub attempts: HashMap<JobId, AttemptStats>,
}

/// A decision for the provisioner or the reaper.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// Make this runner.
    Create(NewRunner),
    /// Drop a planned runner nothing has been done for yet.
    Cancel(RunnerName),
    /// Deregister and stop a surplus runner.
    Retire(RunnerName),
    /// A queued job whose labels ask for a machine this deployment does not allow.
    Refuse {
        job: JobId,
        repo: RepoName,
        reason: String,
    },
    /// A job that had `MAX_ATTEMPTS_PER_JOB` runners, none of which ran it: close it.
    Abandon {
        job: JobId,
        repo: RepoName,
        why: Abandoned,
    },
}

/// Reach (repository, owner or everything, lower-cased) and label-set key: runners in one
/// pool are interchangeable.
type Pool = (String, String);

fn pool_of_job(j: &JobRow, scope: PoolScope) -> Pool {
    (scope.key(&j.repo), j.labels.key().to_string())
}

fn pool_of_runner(r: &LiveRunner, scope: PoolScope) -> Pool {
    (scope.key(&r.row.repo), r.row.labels.key().to_string())
}

/// A runner that can still take a job: live, not retiring, and not known to have taken one.
fn is_available(r: &LiveRunner) -> bool {
    r.took.is_none()
        && matches!(
            r.row.state,
            RunnerState::Pending | RunnerState::Registering | RunnerState::Registered | RunnerState::Running
        )
}

/// Computes the intents that bring runner counts to what the jobs need.
pub fn plan(s: &Snapshot, limits: &Limits) -> Vec<Intent> {
    let eligible = eligible_jobs(s, limits);
    let eligible_ids: HashSet<JobId> = eligible.iter().map(|j| j.id).collect();

    let mut demand: BTreeMap<Pool, Vec<&JobRow>> = BTreeMap::new();
    for job in &eligible {
        demand
            .entry(pool_of_job(job, limits.pools))
            .or_default()
            .push(job);
    }
    let mut supply: BTreeMap<Pool, Vec<&LiveRunner>> = BTreeMap::new();
    for r in s.runners.iter().filter(|r| is_available(r)) {
        supply.entry(pool_of_runner(r, limits.pools)).or_default().push(r);
    }

    let mut creates = Vec::new();
    let mut warm_creates = Vec::new();
    let mut intents = Vec::new();
    let reaches = warm_reaches(s, limits);
    let pools: HashSet<&Pool> = demand.keys().chain(supply.keys()).chain(reaches.keys()).collect();
    for pool in pools {
        let wanted = demand.get(pool).map(Vec::as_slice).unwrap_or_default();
        let have = supply.get(pool).map(Vec::as_slice).unwrap_or_default();
        // A warm pool's runners are wanted beside its jobs' (warm::size_of is 0 without one).
        let target = wanted.len() + warm::size_of(&limits.warm, &pool.1);
        if wanted.len() > have.len() {
            creates.extend(creations(s, wanted, have, wanted.len() - have.len(), limits));
        }
        let short = target.saturating_sub(have.len().max(wanted.len()));
        if short > 0
            && let (Some(repo), Some(entry)) = (reaches.get(pool), warm::entry(&limits.warm, &pool.1))
        {
            warm_creates.extend(warm::runners(&limits.prefix, repo, &entry.labels, short, s.now));
        } else if have.len() > target {
            intents.extend(retirements(have, &eligible_ids, have.len() - target));
        }
    }

    for job in s.jobs.iter().filter(|j| j.status == JobStatus::Queued) {
        if let Some(tries) = exhausted(s, job.id, limits) {
            intents.push(Intent::Abandon {
                job: job.id,
                repo: job.repo.clone(),
                why: Abandoned::TooManyAttempts(tries),
            });
        } else if let Err(reason) = limits.machine.check(&job.labels) {
            intents.push(Intent::Refuse {
                job: job.id,
                repo: job.repo.clone(),
                reason,
            });
        }
    }
    // A cancelled runner had nothing done for it yet: its capacity is free in this pass.
    let cancelled = intents.iter().filter(|i| matches!(i, Intent::Cancel(_))).count();
    let headroom = limits
        .max_runners
        .saturating_sub(live(s).saturating_sub(cancelled));
    creates.sort_by_key(|(job, _)| (job.first_seen_at, job.id));
    // Jobs' runners first; warm runners take what capacity is left.
    let jobs_first = creates.into_iter().map(|(_, r)| r).chain(warm_creates);
    intents.extend(jobs_first.take(headroom).map(Intent::Create));
    intents
}

/// The pools with a warm size and a repository of their reach to register warm runners in.
fn warm_reaches(s: &Snapshot, limits: &Limits) -> BTreeMap<Pool, RepoName> {
    if limits.warm.is_empty() {
        return BTreeMap::new();
    }
    let jobs = s.jobs.iter().map(|j| (pool_of_job(j, limits.pools), &j.repo));
    let runners = s
        .runners
        .iter()
        .map(|r| (pool_of_runner(r, limits.pools), &r.row.repo));
    let seen: Vec<(Pool, &RepoName)> = jobs.chain(runners).collect();
    warm::reaches(&limits.warm, seen.iter().map(|(p, r)| (p, *r)))
}

/// Runners holding capacity.
fn live(s: &Snapshot) -> usize {
    s.runners.iter().filter(|r| r.row.state.is_live()).count()
}

/// Queued jobs GitHub would dispatch now: runnable, and within their matrix's
/// max-parallel once the jobs already running (or whose runner is still winding down)
/// are counted. Oldest first.
fn eligible_jobs<'a>(s: &'a Snapshot, limits: &Limits) -> Vec<&'a JobRow> {
    let grace = i64::try_from(limits.strategy_grace.as_millis()).unwrap_or(i64::MAX);
    let mut active: HashMap<(u64, &str), usize> = HashMap::new();
    for j in &s.jobs {
        if j.status == JobStatus::InProgress
            && let Some(g) = &j.mp_group
        {
            *active.entry((j.run_id, g)).or_default() += 1;
        }
    }
    for r in &s.runners {
        if let Some(t) = &r.took
            && t.status == JobStatus::Completed
            && let Some(g) = &t.mp_group
        {
            *active.entry((t.run_id, g)).or_default() += 1;
        }
    }
    let mut used: HashMap<(u64, &str), usize> = HashMap::new();
    let mut out = Vec::new();
    let mut queued: Vec<&JobRow> = s.jobs.iter().filter(|j| j.status == JobStatus::Queued).collect();
    // Matrix jobs are dispatched in order; job ids follow that order.
    queued.sort_by_key(|j| j.id);
    for job in queued {
        let resolved = job.max_parallel.is_some() || s.now - job.first_seen_at >= grace;
        if !resolved || limits.machine.check(&job.labels).is_err() || exhausted(s, job.id, limits).is_some() {
            continue;
        }
        match (job.max_parallel, &job.mp_group) {
            (Some(max), Some(group)) if max > 0 => {
                let key = (job.run_id, group.as_str());
                let taken = active.get(&key).copied().unwrap_or(0) + used.get(&key).copied().unwrap_or(0);
                if taken < max as usize {
                    *used.entry(key).or_default() += 1;
                    out.push(job);
                }
            }
            _ => out.push(job),
        }
    }
    out.sort_by_key(|j| (j.first_seen_at, j.id));
    out
}

/// New runners for `count` of the pool's jobs: first the jobs with no available runner made
/// for them, skipping jobs still backing off after failed attempts.
fn creations<'a>(
    s: &Snapshot,
    wanted: &[&'a JobRow],
    have: &[&LiveRunner],
    count: usize,
    limits: &Limits,
) -> Vec<(&'a JobRow, NewRunner)> {
    let covered: HashSet<JobId> = have.iter().map(|r| r.row.job).collect();
    wanted
        .iter()
        .filter(|j| !covered.contains(&j.id))
        .filter(|j| !backing_off(s, j.id))
        .take(count)
        .map(|job| {
            let attempt = s.attempts.get(&job.id).map_or(0, |a| a.max_attempt) + 1;
            let runner = NewRunner {
                name: RunnerName::for_job(&limits.prefix, job.id, attempt),
                job: job.id,
                attempt,
                repo: job.repo.clone(),
                labels: job.labels.clone(),
            };
            (*job, runner)
        })
        .collect()
}

/// The failed attempts of a job that has had all it may have, if it has.
fn exhausted(s: &Snapshot, job: JobId, limits: &Limits) -> Option<u32> {
    let wasted = s.attempts.get(&job).map_or(0, |a| a.wasted);
    (limits.max_attempts > 0 && wasted >= limits.max_attempts).then_some(wasted)
}

fn backing_off(s: &Snapshot, job: JobId) -> bool {
    let Some(a) = s.attempts.get(&job) else {
        return false;
    };
    let Some(last) = a.last_failure_at else {
        return false;
    };
    let wait = i64::try_from(job_retry_delay(a.failures).as_millis()).unwrap_or(i64::MAX);
    s.now - last < wait
}

/// Up to `count` surplus runners, never one made for a job that still needs it: planned
/// ones first (nothing to undo), then running ones. Runners mid-registration are left for
/// the next pass.
fn retirements(have: &[&LiveRunner], eligible: &HashSet<JobId>, count: usize) -> Vec<Intent> {
    let spare = || have.iter().filter(|r| !eligible.contains(&r.row.job));
    let pending = spare()
        .filter(|r| r.row.state == RunnerState::Pending)
        .map(|r| Intent::Cancel(r.row.name.clone()));
    let running = spare()
        .filter(|r| r.row.state == RunnerState::Running)
        .map(|r| Intent::Retire(r.row.name.clone()));
    pending.chain(running).take(count).collect()
}

/// What the planning loop needs.
pub struct PlannerContext {
    pub store: Store,
    pub limits: Limits,
    pub wake: Arc<Wake>,
    pub metrics: Arc<Metrics>,
    /// Tells the snapshot's `now`, against which backoffs and the max-parallel grace run.
    pub clock: Clock,
    pub interval: Duration,
    /// Refused jobs already reported, so each is logged once.
    pub refused: Mutex<HashSet<JobId>>,
    /// `MAX_SPEND_PER_DAY`: holds new runners back once today's spend reaches it.
    pub spend: SpendCap,
}

/// Plans on every wake-up and at least every `interval`, until `stop`.
pub async fn run(ctx: PlannerContext, stop: CancellationToken) {
    let mut rounds = Rounds::default();
    loop {
        if let Err(e) = pass(&ctx).await {
            tracing::error!(error = %e, "planning pass failed");
        }
        if !rounds.next(&ctx.wake.planner, ctx.interval, &stop).await {
            return;
        }
    }
}

/// One planning pass: snapshot, plan, write the intents.
pub async fn pass(ctx: &PlannerContext) -> Result<(), StoreError> {
    // One read transaction: jobs and runners from the same committed state.
    let inputs = ctx.store.plan_inputs().await?;
    let snapshot = Snapshot {
        now: ctx.clock.now_millis(),
        jobs: inputs.jobs,
        runners: inputs.runners,
        attempts: inputs.attempts,
    };
    let intents = plan(&snapshot, &ctx.limits);
    let intents = ctx.spend.apply(&ctx.store, snapshot.now, intents).await?;
    apply(ctx, &snapshot, intents).await
}

async fn apply(ctx: &PlannerContext, s: &Snapshot, intents: Vec<Intent>) -> Result<(), StoreError> {
    let mut new = Vec::new();
    let mut cancelled = 0;
    for intent in intents {
        match intent {
            Intent::Create(r) => new.push(r),
            Intent::Refuse { job, repo, reason } => {
                if ctx
                    .refused
                    .lock()
                    .map(|mut seen| seen.insert(job))
                    .unwrap_or(false)
                {
                    tracing::warn!(repo = %repo, job.id = %job, runner.name = "", "job gets no runner: {reason}");
                }
            }
            Intent::Abandon { job, repo, why } => {
                if ctx.store.abandon_job(job, &why).await? {
                    ctx.metrics.job_abandoned(why.kind());
                    tracing::warn!(repo = %repo, job.id = %job, runner.name = "", "job abandoned: {why}");
                }
            }
            Intent::Cancel(name) => {
                let patch = RunnerPatch::ended_because("not needed any more");
                if ctx
                    .store
                    .transition(&name, &[RunnerState::Pending], RunnerState::Done, patch)
                    .await?
                {
                    cancelled += 1;
                    log_runner(s, &name, "planned runner dropped: no job needs it");
                    ctx.metrics.runner_retired("cancelled_before_start");
                }
            }
            Intent::Retire(name) => {
                let patch = RunnerPatch {
                    failure: Some("surplus: no queued job needs it".into()),
                    ..Default::default()
                };
                if ctx
                    .store
                    .transition(&name, &[RunnerState::Running], RunnerState::Retiring, patch)
                    .await?
                {
                    log_runner(s, &name, "surplus runner will be removed");
                    ctx.wake.reaper.notify_one();
                }
            }
        }
    }
    // `plan` counted on every cancellation freeing capacity; one that lost the race with
    // the provisioner (the runner is registering already) did not.
    new.truncate(
        ctx.limits
            .max_runners
            .saturating_sub(live(s).saturating_sub(cancelled)),
    );
    if !new.is_empty() {
        ctx.store.insert_runners(&new).await?;
        for r in &new {
            tracing::info!(repo = %r.repo, job.id = %r.job, runner.name = %r.name, labels = %r.labels, "runner planned");
        }
        ctx.wake.provisioner.notify_one();
    }
    Ok(())
}

fn log_runner(s: &Snapshot, name: &RunnerName, message: &str) {
    if let Some(r) = s.runners.iter().find(|r| &r.row.name == name) {
        tracing::info!(repo = %r.row.repo, job.id = %r.row.job, runner.name = %name, "{message}");
    }
}

// The daily spend cap (issue 13 item 4).
mod spend;
pub use spend::SpendCap;
// Warm runners (issue 13 item 3).
pub mod warm;
pub use warm::{WARM_JOB, WarmPool};

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
