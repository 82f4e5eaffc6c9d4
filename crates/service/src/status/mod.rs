//! What an operator needs at a glance, read from the store (and, inside the service, from
//! the clients' in-memory counters): open jobs and why each waits, runners by state with
//! their ages, recent failures with their reasons, GitHub rate-limit headroom, Modal
//! creation pacing, the leader and the version. Gathered once into [`Status`], then
//! rendered as text (`status`), JSON (`/status.json`, `status --json`) or HTML (`/status`).
//!
//! Only what the store and the counters hold is shown: names, states, reasons, counts, costs,
//! and the output tails of failed sandboxes. Secrets and JIT configurations are never in the
//! store (a tail is masked before it is stored, `failure_log`), so they cannot appear here.

mod html;
mod text;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::domain::{JobStatus, RunnerState};
use crate::store::{RunnerRow, Store, StoreError};

pub use html::page;
pub use text::{render as render_text, report};

/// How many recent failures the status shows.
const RECENT_FAILURES: usize = 20;

/// The state of the service at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// Unix milliseconds.
    pub generated_at: i64,
    pub leader: Option<Leader>,
    pub jobs_by_status: BTreeMap<String, i64>,
    pub runners_by_state: BTreeMap<String, i64>,
    pub open_jobs: Vec<OpenJob>,
    pub live_runners: Vec<LiveRunnerView>,
    pub recent_failures: Vec<Failure>,
    pub recent_jobs: Vec<RecentJob>,
    /// One entry per rate-limit budget (the token, or each owner's App installation); empty
    /// outside the service (the `status` command reads only the store).
    pub github: Vec<GitHubHeadroom>,
    pub modal: Option<ModalPacing>,
    /// Spend recorded today (UTC) in US dollars; `None` while no cost was ever recorded
    /// (the local backend records none), and the page says "unknown" rather than a guess.
    pub spend_today_usd: Option<f64>,
    /// Spend per repository, all recorded time.
    pub spend_by_repo: Vec<RepoSpend>,
    /// Why provisioning is paused, if it is (e.g. MAX_SPEND_PER_DAY reached).
    pub paused: Vec<String>,
    /// The warm pool (`WARM_POOL`) and what its idling costs.
    pub warm: WarmView,
    /// Each runner scale set as the Actions service last counted it (`JOB_SOURCE=scaleset`);
    /// empty outside the running service (the `status` command reads only the store, and
    /// the counts are GitHub's, not the store's).
    pub scale_sets: Vec<ScaleSetCounts>,
}

/// A runner scale set's jobs and runners as the Actions service's statistics count them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ScaleSetCounts {
    pub name: String,
    pub available_jobs: u64,
    pub assigned_jobs: u64,
    pub running_jobs: u64,
    pub registered_runners: u64,
}

/// Warm runners (made for no job) and their idle cost.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WarmView {
    /// Live warm runners (idle, or just given a job).
    pub live: usize,
    /// Seconds the live warm runners have existed, summed: what they are idling.
    pub live_secs: i64,
    /// Recorded cost of warm runners that ended without a job (a warm runner that ran a job
    /// bills that job instead).
    pub idle_spend_usd: f64,
}

/// What one repository's runners cost.
#[derive(Debug, Clone, Serialize)]
pub struct RepoSpend {
    pub repo: String,
    pub usd: f64,
}

/// Which replica acts on the store, and since when.
#[derive(Debug, Clone, Serialize)]
pub struct Leader {
    pub replica: String,
    /// Unix milliseconds.
    pub since: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenJob {
    pub repo: String,
    pub id: u64,
    pub status: String,
    pub age_secs: i64,
    pub labels: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveRunnerView {
    pub name: String,
    pub state: String,
    pub job: u64,
    pub repo: String,
    pub age_secs: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub runner: String,
    pub job: u64,
    pub repo: String,
    pub reason: String,
    pub secs_ago: i64,
    /// The end of the sandbox's output, secrets masked, when it was kept.
    pub output_tail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentJob {
    pub repo: String,
    pub id: u64,
    pub status: String,
    pub conclusion: Option<String>,
    pub runner: Option<String>,
    pub closed_reason: Option<String>,
    /// What the job's runners cost, once known.
    pub cost_usd: Option<f64>,
    /// `stats` (Modal's figure), `rates` (estimated) or `mixed`.
    pub cost_source: Option<String>,
}

/// The GitHub rate-limit headroom the last answers reported for one budget.
#[derive(Debug, Clone, Serialize)]
pub struct GitHubHeadroom {
    /// `token`, or the owner whose App installation it is.
    pub budget: String,
    pub remaining: Option<i64>,
    pub limit: Option<i64>,
    /// Unix seconds.
    pub reset: Option<i64>,
}

/// How sandbox creations are paced.
#[derive(Debug, Clone, Serialize)]
pub struct ModalPacing {
    /// `MODAL_CREATE_RATE`; `None`: not paced (or not the Modal backend).
    pub create_rate_per_sec: Option<f64>,
    /// Sandboxes created since the service started.
    pub created_since_start: u64,
}

/// What only the running service knows, added to what the store holds.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub leader: Option<Leader>,
    pub github: Vec<GitHubHeadroom>,
    pub modal: Option<ModalPacing>,
    pub scale_sets: Vec<ScaleSetCounts>,
}

/// Reads the store once and puts `live` beside it.
pub async fn gather(store: &Store, recent: i64, live: Live) -> Result<Status, StoreError> {
    let now = store.clock().now_millis();
    let jobs_by_status = store.job_counts().await?.into_iter().collect();
    let runners_by_state = store.runner_counts().await?.into_iter().collect();
    let all_runners = store.all_runners().await?;
    let mut by_job: HashMap<u64, Vec<&RunnerRow>> = HashMap::new();
    for r in &all_runners {
        by_job.entry(r.job.0).or_default().push(r);
    }
    let paused: Vec<String> = store
        .active_pauses(now)
        .await?
        .into_iter()
        .map(|(_, reason)| reason)
        .collect();
    let open_jobs = store
        .open_jobs()
        .await?
        .into_iter()
        .map(|j| {
            let tries = by_job.get(&j.id.0).map(Vec::as_slice).unwrap_or_default();
            OpenJob {
                why: j.labels.registrable().map_or_else(
                    |e| format!("refused: {e}"),
                    |()| match paused.first() {
                        // A pause holds back every job still without a live runner.
                        Some(p)
                            if j.status == JobStatus::Queued && !tries.iter().any(|r| r.state.is_live()) =>
                        {
                            p.clone()
                        }
                        _ => why(j.status, j.max_parallel, tries, j.runner_name.as_deref()),
                    },
                ),
                repo: j.repo.to_string(),
                id: j.id.0,
                status: j.status.as_str().to_string(),
                age_secs: (now - j.first_seen_at) / 1000,
                labels: j.labels.to_string(),
            }
        })
        .collect();
    let live_runners = all_runners
        .iter()
        .filter(|r| r.state.is_live())
        .map(|r| LiveRunnerView {
            name: r.name.to_string(),
            state: r.state.as_str().to_string(),
            job: r.job.0,
            repo: r.repo.to_string(),
            age_secs: (now - r.created_at) / 1000,
        })
        .collect();
    let recent_rows = store.recent_jobs(recent).await?;
    let ids: Vec<u64> = recent_rows.iter().map(|j| j.id.0).collect();
    let costs: HashMap<u64, (f64, String)> = store
        .job_costs(&ids)
        .await?
        .into_iter()
        .map(|(id, d, src)| (id, (d, src)))
        .collect();
    let recent_jobs = recent_rows
        .into_iter()
        .map(|j| RecentJob {
            cost_usd: costs.get(&j.id.0).map(|c| c.0),
            cost_source: costs.get(&j.id.0).map(|c| c.1.clone()),
            repo: j.repo.to_string(),
            id: j.id.0,
            status: j.status.as_str().to_string(),
            conclusion: j.conclusion,
            runner: j.runner_name,
            closed_reason: j.closed_reason,
        })
        .collect();
    let spend_by_repo: Vec<RepoSpend> = store
        .spend_by_repo()
        .await?
        .into_iter()
        .map(|(repo, usd)| RepoSpend { repo, usd })
        .collect();
    let spend_today_usd = if spend_by_repo.is_empty() {
        None
    } else {
        Some(store.spend_since(crate::store::utc_day_start(now)).await?)
    };
    let warm_live: Vec<&RunnerRow> = all_runners
        .iter()
        .filter(|r| r.state.is_live() && r.job == crate::loops::planner::WARM_JOB)
        .collect();
    let warm = WarmView {
        live: warm_live.len(),
        live_secs: warm_live.iter().map(|r| (now - r.created_at) / 1000).sum(),
        idle_spend_usd: store
            .job_costs(&[crate::loops::planner::WARM_JOB.0])
            .await?
            .first()
            .map_or(0.0, |c| c.1),
    };
    let tails: HashMap<String, String> = store
        .failure_logs(RECENT_FAILURES as i64 * 4)
        .await?
        .into_iter()
        .map(|f| (f.runner, f.tail))
        .collect();
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        generated_at: now,
        leader: live.leader,
        jobs_by_status,
        runners_by_state,
        open_jobs,
        live_runners,
        recent_failures: recent_failures(&all_runners, now, &tails),
        recent_jobs,
        github: live.github,
        modal: live.modal,
        spend_today_usd,
        spend_by_repo,
        paused,
        warm,
        scale_sets: live.scale_sets,
    })
}

/// The newest failed runners, with their reasons.
fn recent_failures(runners: &[RunnerRow], now: i64, tails: &HashMap<String, String>) -> Vec<Failure> {
    let mut failed: Vec<&RunnerRow> = runners
        .iter()
        .filter(|r| r.state == RunnerState::Failed)
        .collect();
    failed.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
    failed
        .into_iter()
        .take(RECENT_FAILURES)
        .map(|r| Failure {
            runner: r.name.to_string(),
            job: r.job.0,
            repo: r.repo.to_string(),
            reason: r.failure.clone().unwrap_or_else(|| "no reason recorded".into()),
            secs_ago: (now - r.updated_at) / 1000,
            output_tail: tails.get(r.name.as_str()).cloned(),
        })
        .collect()
}

/// One line on why an open job is where it is.
fn why(status: JobStatus, max_parallel: Option<u32>, tries: &[&RunnerRow], taken_by: Option<&str>) -> String {
    if status == JobStatus::InProgress {
        return format!("running on {}", taken_by.unwrap_or("an unknown runner"));
    }
    if status == JobStatus::Waiting {
        return "waiting for an approval (not runnable yet)".into();
    }
    if let Some(r) = tries.iter().rev().find(|r| r.state.is_live()) {
        // A pending retry says nothing by itself; the failure before it says why it waits
        // (a backoff, or provisioning paused after GitHub refused the token).
        let failed_before = tries
            .iter()
            .rev()
            .find(|t| t.state == RunnerState::Failed)
            .and_then(|t| t.failure.as_deref());
        return match failed_before {
            Some(why) if r.state == RunnerState::Pending => {
                format!("runner {} is pending; the attempt before failed: {why}", r.name)
            }
            _ => format!("runner {} is {}", r.name, r.state.as_str()),
        };
    }
    if let Some(r) = tries.last() {
        return format!(
            "last runner {} {}: {}",
            r.name,
            r.state.as_str(),
            r.failure.as_deref().unwrap_or("no reason recorded")
        );
    }
    match max_parallel {
        None => "looking up the workflow's max-parallel".into(),
        Some(n) if n > 0 => format!("held back by max-parallel {n} or MAX_RUNNERS"),
        _ => "no runner yet (MAX_RUNNERS reached or planning pending)".into(),
    }
}
