//! `GET /status`: the status as one server-rendered page. No script: it refreshes itself
//! with a meta tag, and its few styles make the tables scroll sideways on a phone instead of
//! shrinking the text.

use maud::{DOCTYPE, Markup, html};

use super::Status;

/// How often the page reloads itself.
const REFRESH_SECS: u32 = 10;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem;color:#1b1f24;background:#fff}\
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.5rem}\
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem}\
td,th{border-bottom:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}\
.facts{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem}.muted{color:#57606a}";

/// The page for `s`.
pub fn page(s: &Status) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECS);
                title { "modal-github-runner status" }
                style { (STYLE) }
            }
            body {
                h1 { "modal-github-runner " (s.version) }
                (facts(s))
                h2 { "Open jobs (" (s.open_jobs.len()) ")" }
                div.scroll { table {
                    tr { th { "repository" } th { "job" } th { "status" } th { "age" } th { "labels" } th { "why" } }
                    @for j in &s.open_jobs {
                        tr { td { (j.repo) } td { (j.id) } td { (j.status) } td { (age(j.age_secs)) } td { (j.labels) } td { (j.why) } }
                    }
                } }
                h2 { "Live runners (" (s.live_runners.len()) ")" }
                div.scroll { table {
                    tr { th { "runner" } th { "state" } th { "age" } th { "job" } th { "repository" } }
                    @for r in &s.live_runners {
                        tr { td { (r.name) } td { (r.state) } td { (age(r.age_secs)) } td { (r.job) } td { (r.repo) } }
                    }
                } }
                h2 { "Recent failures (" (s.recent_failures.len()) ")" }
                div.scroll { table {
                    tr { th { "runner" } th { "job" } th { "when" } th { "reason" } }
                    @for f in &s.recent_failures {
                        tr { td { (f.runner) } td { (f.job) } td { (age(f.secs_ago)) " ago" } td {
                            (f.reason)
                            @if let Some(tail) = &f.output_tail { details { summary { "last output (secrets masked)" } pre { (tail) } } }
                        } }
                    }
                } }
                h2 { "Recent jobs" }
                div.scroll { table {
                    tr { th { "repository" } th { "job" } th { "status" } th { "conclusion" } th { "runner" } }
                    @for j in &s.recent_jobs {
                        tr {
                            td { (j.repo) } td { (j.id) } td { (j.status) }
                            td { (j.conclusion.as_deref().unwrap_or("-")) @if let Some(r) = &j.closed_reason { " (" (r) ")" } }
                            td { (j.runner.as_deref().unwrap_or("-")) }
                        }
                    }
                } }
                p.muted { "Refreshes every " (REFRESH_SECS) " s. JSON: " a href="status.json" { "status.json" } }
            }
        }
    }
}

/// The summary line: counts, leader, GitHub headroom, Modal pacing and spend.
fn facts(s: &Status) -> Markup {
    let count = |m: &std::collections::BTreeMap<String, i64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    html! {
        div.facts {
            span { "Jobs: " (count(&s.jobs_by_status)) }
            span { "Runners: " (count(&s.runners_by_state)) }
            span {
                "Leader: "
                @match &s.leader {
                    Some(l) => {
                        (l.replica)
                        @if let (Some(token), Some(expires)) = (l.token, l.expires) {
                            " (lease token " (token) ", until " (expires) " Unix ms)"
                        }
                    },
                    None => { "unknown" }
                }
            }
            @if s.github.is_empty() {
                span { "GitHub headroom: unknown" }
            }
            @for g in &s.github {
                span {
                    "GitHub headroom (" (g.budget) "): "
                    (g.remaining.map_or("unknown".into(), |r| r.to_string())) " of "
                    (g.limit.map_or("?".into(), |l| l.to_string())) " calls left"
                }
            }
            span { "Modal creations: " @match &s.modal {
                Some(m) => { (m.created_since_start) " since start, " (m.create_rate_per_sec.map_or("not paced".into(), |r| format!("paced at {r}/s"))) },
                None => { "unknown" },
            } }
            span { "Spend today: " (s.spend_today_usd.map_or("unknown".into(), |d| format!("${d:.2}"))) }
            @for r in &s.spend_by_repo {
                span { "Spend (" (r.repo) "): " (format!("${:.4}", r.usd)) }
            }
            @for p in &s.paused {
                span { "Paused: " (p) }
            }
            @for set in &s.scale_sets {
                span { "Scale set " (set.name) ": " (super::text::scale_set_counts(set)) }
            }
            @if s.warm.live > 0 || s.warm.idle_spend_usd > 0.0 {
                span { "Warm pool: " (s.warm.live) " runners, " (s.warm.live_secs) " s idle; unused warm runners cost " (format!("${:.4}", s.warm.idle_spend_usd)) }
            }
        }
    }
}

/// `75` → `1m15s`.
fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
