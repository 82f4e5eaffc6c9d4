//! Records what each ended runner cost (issue 13 item 4): Modal's own statistics when they
//! cover the sandbox's life (they arrive minutes late, so a runner is looked at again on
//! each pass), else, `COST_STATS_WAIT_SECS` after it ended, an estimate from its resources
//! × seconds at `COST_RATES`. Each cost is recorded once per runner, added to
//! `mgr_cost_dollars_total{repo}`, and logged: the last line the service writes about a
//! job. The local backend reports no resources, so it records no cost.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, StatsCost};
use crate::clock::Clock;
use crate::config::CostSettings;
use crate::domain::MachineSpec;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, UnpricedRunner};
use crate::wake::{Rounds, Wake};

/// Runners looked at per pass (oldest end first), bounding each pass's calls to Modal.
const PER_PASS: i64 = 50;

/// What the cost loop needs.
pub struct CostContext {
    pub store: Store,
    pub backend: Arc<Backend>,
    pub metrics: Arc<Metrics>,
    pub settings: CostSettings,
    pub clock: Clock,
    pub wake: Arc<Wake>,
}

/// Looks for costs every `COST_POLL_SECS` until `stop`.
pub async fn run(ctx: CostContext, stop: CancellationToken) {
    let mut rounds = Rounds::default();
    // Nothing hints at new costs: the loop runs on its timer only.
    let never = tokio::sync::Notify::new();
    loop {
        if let Err(e) = pass(&ctx).await {
            tracing::warn!(error = %e, "cost pass failed");
        }
        if !rounds.next(&never, ctx.settings.poll, &stop).await {
            return;
        }
    }
}

/// One look at every ended runner without a cost.
pub async fn pass(ctx: &CostContext) -> Result<(), StoreError> {
    let mut recorded = false;
    for runner in ctx.store.unpriced_runners(PER_PASS).await? {
        let Some((dollars, source)) = price(ctx, &runner).await else {
            continue;
        };
        if ctx.store.record_cost(&runner, dollars, source).await? {
            recorded = true;
            ctx.metrics.cost(&runner.repo.to_string(), dollars);
            tracing::info!(
                repo = %runner.repo,
                job.id = %runner.job,
                runner.name = %runner.name,
                cost.usd = dollars,
                cost.source = source,
                "runner's cost recorded: ${dollars:.6} ({source})"
            );
        }
    }
    if recorded {
        // The daily spend cap is the planner's to apply.
        ctx.wake.planner.notify_one();
    }
    Ok(())
}

/// The runner's cost and where it came from, or `None` to look again later.
async fn price(ctx: &CostContext, r: &UnpricedRunner) -> Option<(f64, &'static str)> {
    let machine = MachineSpec::from_labels(&r.labels).unwrap_or_default();
    let resources = ctx.backend.resources(&machine)?;
    match ctx.backend.stats_cost(&r.sandbox_id, r.ended_at).await {
        Ok(StatsCost::Dollars(d)) => return Some((d, "stats")),
        Ok(StatsCost::NotYet) => {}
        Err(e) => tracing::debug!(runner.name = %r.name, error = %e, "no sandbox statistics"),
    }
    let waited = ctx.clock.now_millis() - r.ended_at;
    let wait = i64::try_from(ctx.settings.stats_wait.as_millis()).unwrap_or(i64::MAX);
    if waited < wait {
        return None;
    }
    let seconds = (r.ended_at - r.started_at).max(0) as f64 / 1000.0;
    Some((ctx.settings.rates.estimate(&resources, seconds), "rates"))
}
