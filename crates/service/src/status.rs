//! `modal-github-runner status`: what the store knows, so an operator sees at once why a
//! job waits (no runner yet, backing off after a failure, held by max-parallel, waiting
//! for an approval).

use std::collections::HashMap;
use std::fmt::Write;

use crate::domain::{JobStatus, RunnerState};
use crate::store::{RunnerRow, Store, StoreError};

/// Renders the report.
pub async fn report(store: &Store, limit: i64) -> Result<String, StoreError> {
    let mut out = String::new();
    let jobs = store.job_counts().await?;
    let runners = store.runner_counts().await?;
    let _ = writeln!(out, "jobs:    {}", counts(&jobs));
    let _ = writeln!(out, "runners: {}", counts(&runners));

    let open = store.open_jobs().await?;
    let all_runners = store.all_runners().await?;
    let mut by_job: HashMap<u64, Vec<&RunnerRow>> = HashMap::new();
    for r in &all_runners {
        by_job.entry(r.job.0).or_default().push(r);
    }
    let now = store.clock().now_millis();
    let _ = writeln!(out, "\nopen jobs ({}):", open.len());
    for j in &open {
        let age = (now - j.first_seen_at) / 1000;
        let tries = by_job.get(&j.id.0).map(Vec::as_slice).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {} {:<11} {:>5}s  [{}]  {}",
            j.repo,
            j.id,
            j.status.as_str(),
            age,
            j.labels,
            j.labels.registrable().map_or_else(
                |e| format!("refused: {e}"),
                |()| why(j.status, j.max_parallel, tries, j.runner_name.as_deref())
            )
        );
    }
    let live: Vec<&RunnerRow> = all_runners.iter().filter(|r| r.state.is_live()).collect();
    let _ = writeln!(out, "\nlive runners ({}):", live.len());
    for r in live {
        let _ = writeln!(
            out,
            "  {} {:<11} job {} {}",
            r.name,
            r.state.as_str(),
            r.job,
            r.repo
        );
    }
    let recent = store.recent_jobs(limit).await?;
    let _ = writeln!(out, "\nrecent jobs ({}):", recent.len());
    for j in recent {
        let closed = j
            .closed_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {} {:<11} {:<10} runner={}{closed}",
            j.repo,
            j.id,
            j.status.as_str(),
            j.conclusion.as_deref().unwrap_or("-"),
            j.runner_name.as_deref().unwrap_or("-")
        );
    }
    Ok(out)
}

fn counts(rows: &[(String, i64)]) -> String {
    if rows.is_empty() {
        return "none".into();
    }
    rows.iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
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
