//! The `status` command's plain-text report.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Live, Status, gather};
use crate::store::{Store, StoreError};

/// Reads the store and renders the report, with up to `limit` recent jobs.
pub async fn report(store: &Store, limit: i64) -> Result<String, StoreError> {
    Ok(render(&gather(store, limit, Live::default()).await?))
}

/// What GitHub's Actions service counts for one scale set, in one line.
pub fn scale_set_counts(set: &super::ScaleSetCounts) -> String {
    format!(
        "{} available, {} assigned, {} running jobs; {} runners registered (GitHub's count)",
        set.available_jobs, set.assigned_jobs, set.running_jobs, set.registered_runners
    )
}

/// The report for `s`.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "modal-github-runner {}", s.version);
    let _ = writeln!(out, "jobs:    {}", counts(&s.jobs_by_status));
    let _ = writeln!(out, "runners: {}", counts(&s.runners_by_state));
    let _ = writeln!(out, "spend:   {}", spend(s));
    for p in &s.paused {
        let _ = writeln!(out, "paused:  {p}");
    }
    if s.warm.live > 0 || s.warm.idle_spend_usd > 0.0 {
        let _ = writeln!(
            out,
            "warm:    {} runners, {}s idle so far; idle spend of unused warm runners ${:.6}",
            s.warm.live, s.warm.live_secs, s.warm.idle_spend_usd
        );
    }
    match &s.leader {
        Some(l) => {
            let _ = write!(out, "leader:  {} since {} (Unix ms)", l.replica, l.since);
            if let (Some(token), Some(expires)) = (l.token, l.expires) {
                let _ = write!(out, ", lease token {token} until {expires} (Unix ms)");
            }
            let _ = writeln!(out);
        }
        None => {
            let _ = writeln!(out, "leader:  unknown (no live lease in the store)");
        }
    }
    let _ = writeln!(out, "github:  {}", headroom(s));
    let _ = writeln!(out, "modal:   {}", pacing(s));
    for set in &s.scale_sets {
        let _ = writeln!(out, "scale set {}: {}", set.name, scale_set_counts(set));
    }
    let _ = writeln!(out, "\nopen jobs ({}):", s.open_jobs.len());
    for j in &s.open_jobs {
        let _ = writeln!(
            out,
            "  {} {} {:<11} {:>5}s  [{}]  {}",
            j.repo, j.id, j.status, j.age_secs, j.labels, j.why
        );
    }
    if !s.machine_policy_known {
        let _ = writeln!(
            out,
            "  (refusals by SANDBOX_* limits are not shown: run `status` with the service's environment)"
        );
    }
    let _ = writeln!(out, "\nlive runners ({}):", s.live_runners.len());
    for r in &s.live_runners {
        let _ = writeln!(
            out,
            "  {} {:<11} {:>5}s  job {} {}",
            r.name, r.state, r.age_secs, r.job, r.repo
        );
    }
    if !s.recent_failures.is_empty() {
        let _ = writeln!(out, "\nrecent failures ({}):", s.recent_failures.len());
        for f in &s.recent_failures {
            let _ = writeln!(
                out,
                "  {} job {} {} {}s ago: {}",
                f.runner, f.job, f.repo, f.secs_ago, f.reason
            );
            if let Some(tail) = &f.output_tail {
                let _ = writeln!(out, "    last output (secrets masked):");
                for line in tail.lines() {
                    let _ = writeln!(out, "    | {line}");
                }
            }
        }
    }
    let _ = writeln!(out, "\nrecent jobs ({}):", s.recent_jobs.len());
    for j in &s.recent_jobs {
        let closed = j
            .closed_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let cost = match (j.cost_usd, &j.cost_source) {
            (Some(d), Some(src)) => format!(" cost=${d:.6} ({src})"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} {} {:<11} {:<10} runner={}{closed}{cost}",
            j.repo,
            j.id,
            j.status,
            j.conclusion.as_deref().unwrap_or("-"),
            j.runner.as_deref().unwrap_or("-")
        );
    }
    out
}

/// The rate-limit headroom per budget; only the running service counts it.
fn headroom(s: &Status) -> String {
    if s.github.is_empty() {
        return "headroom unknown (only the running service counts it; see /status)".into();
    }
    s.github
        .iter()
        .map(|g| {
            let n = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
            format!("{}: {} of {} calls left", g.budget, n(g.remaining), n(g.limit))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How sandbox creations are paced; only the running service counts them.
fn pacing(s: &Status) -> String {
    match &s.modal {
        Some(m) => format!(
            "{} creations since start, {}",
            m.created_since_start,
            m.create_rate_per_sec
                .map_or("not paced".to_string(), |r| format!("paced at {r}/s"))
        ),
        None => "creation pacing unknown (only the running service counts it; see /status)".into(),
    }
}

/// Today's spend and the total per repository.
fn spend(s: &Status) -> String {
    let Some(today) = s.spend_today_usd else {
        return "unknown (no cost recorded)".into();
    };
    let repos: Vec<String> = s
        .spend_by_repo
        .iter()
        .map(|r| format!("{}=${:.6}", r.repo, r.usd))
        .collect();
    format!("today ${today:.6} (UTC); by repository: {}", repos.join(" "))
}

fn counts(rows: &BTreeMap<String, i64>) -> String {
    if rows.is_empty() {
        return "none".into();
    }
    rows.iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
