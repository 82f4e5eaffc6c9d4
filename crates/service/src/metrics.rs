//! Prometheus metrics served at `/metrics`: what operators of every autoscaler ask for
//! (docs/design.md §7): webhook outcomes, runner failures by kind, queue time, jobs and
//! runners by state, and GitHub rate-limit headroom. Labels are fixed strings, never data.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels1 = [(&'static str, &'static str); 1];
type OwnedLabels1 = [(&'static str, String); 1];

pub struct Metrics {
    registry: Mutex<Registry>,
    webhooks: Family<Labels1, Counter>,
    runners_created: Counter,
    runner_failures: Family<Labels1, Counter>,
    runners_retired: Family<Labels1, Counter>,
    jobs: Family<OwnedLabels1, Gauge>,
    runners: Family<OwnedLabels1, Gauge>,
    startup_seconds: Histogram,
    rate_limit_remaining: Gauge,
    github_requests: Family<Labels1, Counter>,
    upstream_errors: Family<Labels1, Counter>,
    jobs_abandoned: Family<Labels1, Counter>,
    connections_open: Gauge,
    connection_limit_waits: Counter,
    connection_errors: Family<Labels1, Counter>,
    // ---- costs (issue 13 item 4) ----
    cost_dollars: Family<OwnedLabels1, Counter<f64, AtomicU64>>,
    leader: Family<OwnedLabels1, Gauge>,
    leader_since: Gauge,
    // ---- scale sets (issue 11) ----
    scale_set_jobs: Family<[(&'static str, String); 2], Gauge>,
    scale_set_runners: Family<[(&'static str, String); 2], Gauge>,
    /// The last statistics of each scale set, for the status page.
    scale_set_last: Mutex<std::collections::BTreeMap<String, crate::scaleset::Statistics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mgr");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            webhooks: Family::default(),
            runners_created: Counter::default(),
            runner_failures: Family::default(),
            runners_retired: Family::default(),
            jobs: Family::default(),
            runners: Family::default(),
            startup_seconds: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
            rate_limit_remaining: Gauge::default(),
            github_requests: Family::default(),
            upstream_errors: Family::default(),
            jobs_abandoned: Family::default(),
            connections_open: Gauge::default(),
            connection_limit_waits: Counter::default(),
            connection_errors: Family::default(),
            cost_dollars: Family::default(),
            leader: Family::default(),
            leader_since: Gauge::default(),
            scale_set_jobs: Family::default(),
            scale_set_runners: Family::default(),
            scale_set_last: Mutex::default(),
        };
        registry.register("webhooks", "Webhook deliveries by outcome", m.webhooks.clone());
        registry.register(
            "runners_created",
            "Runners whose sandbox was created",
            m.runners_created.clone(),
        );
        registry.register(
            "runner_failures",
            "Runners that failed, by kind",
            m.runner_failures.clone(),
        );
        registry.register(
            "runners_retired",
            "Runners removed before taking a job, by reason",
            m.runners_retired.clone(),
        );
        registry.register("jobs", "Jobs in the store by status", m.jobs.clone());
        registry.register("runners", "Runners in the store by state", m.runners.clone());
        registry.register(
            "job_startup_seconds",
            "How long jobs queued before a runner took them (GitHub's started_at - created_at)",
            m.startup_seconds.clone(),
        );
        registry.register(
            "github_rate_limit_remaining",
            "x-ratelimit-remaining of the last GitHub answer",
            m.rate_limit_remaining.clone(),
        );
        registry.register(
            "github_requests",
            "GitHub calls by outcome: answered (counted against the rate limit), not_modified \
             (a 304 to a conditional GET, not counted), deferred (a background call not sent \
             to keep the budget's reserve)",
            m.github_requests.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed GitHub and backend calls, by kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "jobs_abandoned",
            "Jobs closed without a completed event, by reason",
            m.jobs_abandoned.clone(),
        );
        registry.register(
            "http_connections",
            "HTTP connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "connection_limit_waits",
            "Times a new connection had to wait because MAX_CONNECTIONS were open",
            m.connection_limit_waits.clone(),
        );
        registry.register(
            "connection_errors",
            "HTTP connections closed by an error, by kind (header timeout, idle timeout, malformed request, aborted)",
            m.connection_errors.clone(),
        );
        registry.register(
            "cost_dollars",
            "US dollars runners cost, by repository (Modal's statistics where given, else \
             resources x seconds at COST_RATES), counted when each runner's cost is recorded",
            m.cost_dollars.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (runs the planner, provisioner, reaper and reconciler), else 0",
            m.leader.clone(),
        );
        registry.register(
            "leader_since_seconds",
            "When this replica's current term as leader began (Unix seconds); 0 while it does not lead",
            m.leader_since.clone(),
        );
        registry.register(
            "scaleset_jobs",
            "Jobs of each runner scale set by state (available, acquired, assigned, running), \
             as the Actions service's last statistics said (JOB_SOURCE=scaleset)",
            m.scale_set_jobs.clone(),
        );
        registry.register(
            "scaleset_runners",
            "Runners of each runner scale set by state (registered, busy, idle), as the \
             Actions service's last statistics said (JOB_SOURCE=scaleset)",
            m.scale_set_runners.clone(),
        );
        if let Ok(mut slot) = m.registry.lock() {
            *slot = registry;
        }
        m
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn runner_created(&self) {
        self.runners_created.inc();
    }

    /// Sandboxes created since the service started (for the status page).
    pub fn runners_created(&self) -> u64 {
        self.runners_created.get()
    }

    /// Adds a runner's recorded cost to its repository's total. The repository is the one
    /// label made of data: operators ask for spend per repository, and the set of allowed
    /// repositories bounds it.
    pub fn cost(&self, repo: &str, dollars: f64) {
        if dollars.is_finite() && dollars > 0.0 {
            self.cost_dollars
                .get_or_create(&[("repo", repo.to_string())])
                .inc_by(dollars);
        }
    }

    pub fn runner_failed(&self, kind: &'static str) {
        self.runner_failures.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn runner_retired(&self, reason: &'static str) {
        self.runners_retired.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn job_abandoned(&self, reason: &'static str) {
        self.jobs_abandoned.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub fn connection_limit_reached(&self) {
        self.connection_limit_waits.inc();
    }

    pub fn connection_error(&self, kind: &'static str) {
        self.connection_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn github_request(&self, outcome: &'static str) {
        self.github_requests.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn job_started_after(&self, seconds: f64) {
        self.startup_seconds.observe(seconds);
    }

    pub fn rate_limit_remaining(&self, remaining: i64) {
        self.rate_limit_remaining.set(remaining);
    }

    /// Whether `replica` (this one) leads, and since when (Unix ms).
    pub fn set_leader(&self, replica: &str, since_ms: Option<i64>) {
        self.leader
            .get_or_create(&[("replica", replica.to_string())])
            .set(i64::from(since_ms.is_some()));
        self.leader_since.set(since_ms.map_or(0, |ms| ms / 1000));
    }

    /// Replaces the per-state gauges with fresh counts from the store.
    pub fn set_counts(&self, jobs: &[(String, i64)], runners: &[(String, i64)]) {
        self.jobs.clear();
        for (status, n) in jobs {
            self.jobs.get_or_create(&[("status", status.clone())]).set(*n);
        }
        self.runners.clear();
        for (state, n) in runners {
            self.runners.get_or_create(&[("state", state.clone())]).set(*n);
        }
    }

    /// The Actions service's view of scale set `name` (each message and session carries
    /// it): what the service itself counts, beside the store's own counts.
    pub fn set_scale_set_statistics(&self, name: &str, stats: &crate::scaleset::Statistics) {
        if let Ok(mut last) = self.scale_set_last.lock() {
            last.insert(name.to_owned(), *stats);
        }
        let jobs = [
            ("available", stats.total_available_jobs),
            ("acquired", stats.total_acquired_jobs),
            ("assigned", stats.total_assigned_jobs),
            ("running", stats.total_running_jobs),
        ];
        for (state, n) in jobs {
            self.scale_set_jobs
                .get_or_create(&[("scale_set", name.to_owned()), ("state", state.to_owned())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let runners = [
            ("registered", stats.total_registered_runners),
            ("busy", stats.total_busy_runners),
            ("idle", stats.total_idle_runners),
        ];
        for (state, n) in runners {
            self.scale_set_runners
                .get_or_create(&[("scale_set", name.to_owned()), ("state", state.to_owned())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The last statistics of each scale set, by name.
    pub fn scale_set_statistics(&self) -> Vec<(String, crate::scaleset::Statistics)> {
        self.scale_set_last
            .lock()
            .map(|last| last.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock()
            && encode(&mut out, &registry).is_err()
        {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_sets_statistics_appear_per_set_and_state_and_the_latest_wins() {
        let m = Metrics::new();
        let mut stats = crate::scaleset::Statistics {
            total_available_jobs: 4,
            total_assigned_jobs: 3,
            total_running_jobs: 2,
            total_registered_runners: 5,
            ..Default::default()
        };
        m.set_scale_set_statistics("modal-big", &stats);
        stats.total_running_jobs = 1;
        m.set_scale_set_statistics("modal-big", &stats);
        let text = m.render();
        for line in [
            "mgr_scaleset_jobs{scale_set=\"modal-big\",state=\"available\"} 4",
            "mgr_scaleset_jobs{scale_set=\"modal-big\",state=\"assigned\"} 3",
            "mgr_scaleset_jobs{scale_set=\"modal-big\",state=\"running\"} 1",
            "mgr_scaleset_runners{scale_set=\"modal-big\",state=\"registered\"} 5",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn counters_appear_in_the_exposition_with_their_labels() {
        let m = Metrics::new();
        m.webhook("accepted");
        m.webhook("accepted");
        m.runner_failed("github_permanent");
        m.set_counts(&[("queued".into(), 3)], &[("running".into(), 2)]);
        let text = m.render();
        assert!(
            text.contains("mgr_webhooks_total{outcome=\"accepted\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mgr_runner_failures_total{kind=\"github_permanent\"} 1"),
            "{text}"
        );
        assert!(text.contains("mgr_jobs{status=\"queued\"} 3"), "{text}");
        assert!(text.contains("mgr_runners{state=\"running\"} 2"), "{text}");
    }

    #[test]
    fn the_leader_gauge_names_the_replica_and_its_term() {
        let m = Metrics::new();
        m.set_leader("web-1", Some(1_700_000_000_500));
        let text = m.render();
        assert!(text.contains("mgr_leader{replica=\"web-1\"} 1"), "{text}");
        assert!(text.contains("mgr_leader_since_seconds 1700000000"), "{text}");
        m.set_leader("web-1", None);
        let text = m.render();
        assert!(text.contains("mgr_leader{replica=\"web-1\"} 0"), "{text}");
        assert!(text.contains("mgr_leader_since_seconds 0"), "{text}");
    }

    /// `dashboards/grafana.json` may only chart series this service exports: renaming a
    /// metric without the dashboard fails here.
    #[test]
    fn the_dashboard_charts_only_metrics_the_service_exports() {
        // Families with labels show only once they have a sample.
        let m = Metrics::new();
        m.webhook("accepted");
        m.runner_failed("github_permanent");
        m.runner_retired("idle");
        m.upstream_error("timeout");
        m.job_abandoned("gone_at_github");
        m.connection_error("header_timeout");
        m.set_counts(&[("queued".into(), 1)], &[("running".into(), 1)]);
        m.cost("octo/repo", 0.5);
        let text = m.render();
        let dashboard = include_str!("../../../dashboards/grafana.json");
        let mut charted: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("mgr_"))
            .collect();
        charted.sort_unstable();
        charted.dedup();
        assert!(charted.len() >= 10, "{charted:?}");
        for name in charted {
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "{name} is not exported:\n{text}"
            );
        }
    }
}
