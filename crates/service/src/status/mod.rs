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
#[cfg(test)]
mod leader_tests;
mod text;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::domain::{JobStatus, LabelSet, MachinePolicy, RunnerState};
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
    /// Whether the open jobs' refusals were decided with the deployment's machine policy
    /// (`SANDBOX_*`); `false` when the `status` command could not read serve's configuration.
    pub machine_policy_known: bool,
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

/// Which replica acts on the store, and since when; on PostgreSQL also the lease's fencing
/// token and expiry, so an operator can tell a takeover (the token grows) from a renewal.
#[derive(Debug, Clone, Serialize)]
pub struct Leader {
    pub replica: String,
    /// Unix milliseconds.
    pub since: i64,
    /// The fencing token of the leader's term; `None` on SQLite (no lease).
    pub token: Option<i64>,
    /// Until when the lease holds unless renewed (Unix ms, the database's clock); `None` on
    /// SQLite.
    pub expires: Option<i64>,
}

/// The leader as the lease row says (PostgreSQL: `None` while nobody holds a live lease),
/// else as the running service knows it (SQLite: this replica).
async fn leader(store: &Store, known: Option<Leader>) -> Result<Option<Leader>, StoreError> {
    Ok(match store.lease_state().await? {
        Some(lease) => lease.live.then_some(Leader {
            replica: lease.holder,
            since: lease.since_ms,
            token: Some(lease.token),
            expires: Some(lease.expires_ms),
        }),
        None => known,
    })
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
    /// What machines the planner allows (its `Limits::machine`), so that a refused job's
    /// line says what the planner decided; `None` where the serve configuration is not known
    /// (then only the labels GitHub would refuse are named).
    pub machine: Option<MachinePolicy>,
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
                why: refusal(live.machine.as_ref(), j.status, &j.labels).unwrap_or_else(|| {
                    match paused.first() {
                        // A pause holds back every job still without a live runner.
                        Some(p)
                            if j.status == JobStatus::Queued && !tries.iter().any(|r| r.state.is_live()) =>
                        {
                            p.clone()
                        }
                        _ => why(j.status, j.max_parallel, tries, j.runner_name.as_deref()),
                    }
                }),
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
        leader: leader(store, live.leader).await?,
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
        machine_policy_known: live.machine.is_some(),
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

/// Why the planner gives a job no runner, decided by the very check the planner makes
/// (`MachinePolicy::check`, for queued jobs only, as the planner refuses only those);
/// without the policy, only labels GitHub would refuse are known.
fn refusal(policy: Option<&MachinePolicy>, status: JobStatus, labels: &LabelSet) -> Option<String> {
    let refused = match policy {
        Some(p) if status == JobStatus::Queued => p.check(labels).err(),
        _ => labels.registrable().err(),
    };
    refused.map(|e| format!("refused: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FeaturePolicy, JobEvent, JobId, RepoName};
    use crate::store::EventSource;

    /// A queued job of octo/repo asking for `extra` labels.
    fn queued(id: u64, extra: &[&str]) -> JobEvent {
        JobEvent {
            action: "queued".into(),
            status: JobStatus::Queued,
            job_id: JobId(id),
            run_id: 7,
            run_attempt: 1,
            name: "build".into(),
            workflow_name: Some("CI".into()),
            head_sha: Some("abc".into()),
            conclusion: None,
            labels: LabelSet::new(["self-hosted", "modal"].iter().chain(extra).copied()),
            runner_name: None,
            repo: RepoName::parse("octo/repo").expect("valid"),
            queued_for: None,
        }
    }

    /// The Modal backend's policy without Docker, with two images.
    fn policy() -> MachinePolicy {
        MachinePolicy {
            features: Some(FeaturePolicy {
                docker: false,
                default_gpu: false,
                images: vec!["node".into(), "cuda".into()],
            }),
            ..MachinePolicy::default()
        }
    }

    async fn whys(machine: Option<MachinePolicy>) -> HashMap<u64, String> {
        let store = Store::open("sqlite::memory:").await.expect("store");
        for (id, extra) in [
            (1, &[][..]),
            (2, &["docker"][..]),
            (3, &["image=rust"][..]),
            (4, &["cpu=64"][..]),
        ] {
            store
                .record(None, queued(id, extra), EventSource::Poll)
                .await
                .expect("recorded");
        }
        let live = Live {
            machine,
            ..Live::default()
        };
        let status = gather(&store, 5, live).await.expect("gathered");
        status.open_jobs.into_iter().map(|j| (j.id, j.why)).collect()
    }

    #[tokio::test]
    async fn a_job_the_machine_policy_refuses_says_why_as_the_planner_decides_it() {
        let why = whys(Some(policy())).await;
        assert!(!why[&1].starts_with("refused"), "{}", why[&1]);
        let planner = |extra: &[&str]| {
            let labels = LabelSet::new(["self-hosted", "modal"].iter().chain(extra).copied());
            format!("refused: {}", policy().check(&labels).expect_err("refused"))
        };
        assert_eq!(why[&2], planner(&["docker"]));
        assert!(why[&2].contains("SANDBOX_DOCKER=true"), "{}", why[&2]);
        assert_eq!(
            why[&3],
            "refused: image=rust is not in SANDBOX_IMAGES (node,cuda)"
        );
        assert_eq!(why[&4], "refused: cpu=64 is above SANDBOX_MAX_CPU=16");
    }

    #[tokio::test]
    async fn without_the_policy_only_labels_github_would_refuse_are_named() {
        let why = whys(None).await;
        assert!(why.values().all(|w| !w.starts_with("refused")), "{why:?}");
    }

    #[tokio::test]
    async fn the_status_text_names_the_version_leader_headroom_pacing_and_runner_ages() {
        let store = Store::open("sqlite::memory:").await.expect("store");
        store
            .record(None, queued(1, &[]), EventSource::Poll)
            .await
            .expect("recorded");
        let prefix = crate::domain::NamePrefix::parse("modal").expect("prefix");
        let name = crate::domain::RunnerName::for_job(&prefix, JobId(1), 1);
        store
            .insert_runners(&[crate::store::NewRunner {
                name: name.clone(),
                job: JobId(1),
                attempt: 1,
                repo: RepoName::parse("octo/repo").expect("valid"),
                labels: LabelSet::new(["self-hosted", "modal"]),
            }])
            .await
            .expect("inserted");
        let live = Live {
            leader: Some(Leader {
                replica: "host-7".into(),
                since: 5,
                token: None,
                expires: None,
            }),
            github: vec![GitHubHeadroom {
                budget: "token".into(),
                remaining: Some(4321),
                limit: Some(5000),
                reset: None,
            }],
            modal: Some(ModalPacing {
                create_rate_per_sec: Some(2.5),
                created_since_start: 3,
            }),
            machine: Some(policy()),
            scale_sets: Vec::new(),
        };
        let text = render_text(&gather(&store, 5, live).await.expect("gathered"));

        assert!(
            text.starts_with(&format!("modal-github-runner {}\n", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(text.contains("leader:  host-7 since 5"), "{text}");
        assert!(text.contains("github:  token: 4321 of 5000 calls left"), "{text}");
        assert!(
            text.contains("modal:   3 creations since start, paced at 2.5/s"),
            "{text}"
        );
        let runner = text
            .lines()
            .find(|l| l.trim_start().starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("no runner line:\n{text}"));
        assert!(
            runner.contains("s  job 1 octo/repo"),
            "the runner's age: {runner}"
        );
        assert!(
            !text.contains("refusals by SANDBOX_* limits are not shown"),
            "{text}"
        );

        let bare = render_text(&gather(&store, 5, Live::default()).await.expect("gathered"));
        assert!(bare.contains("leader:  unknown"), "{bare}");
        assert!(bare.contains("github:  headroom unknown"), "{bare}");
        assert!(bare.contains("modal:   creation pacing unknown"), "{bare}");
        assert!(
            bare.contains("refusals by SANDBOX_* limits are not shown"),
            "{bare}"
        );
    }
}
