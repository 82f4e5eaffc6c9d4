//! GitHub's rate limits as the client sees them: the headers of the last answer (the
//! reconciler stops a pass early when few calls are left), and a block that makes every call
//! wait after a rate-limit answer, since GitHub asks clients to stop, not to retry each
//! request on its own schedule.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

use super::GitHub;

/// The last rate-limit headers seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSnapshot {
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    /// Unix seconds when the window resets.
    pub reset: Option<i64>,
}

#[derive(Default)]
pub(super) struct RateState {
    seen: RateSnapshot,
    /// After a rate-limit answer every call waits until this instant: GitHub asks clients
    /// to stop, not to retry each request on its own schedule.
    blocked_until: Option<Instant>,
}

impl GitHub {
    /// The rate-limit headers of the last answer.
    pub fn rate(&self) -> RateSnapshot {
        self.inner.rate.lock().map(|r| r.seen).unwrap_or_default()
    }

    /// Records an answer's rate-limit headers, when GitHub sent them.
    pub(super) fn note_rate(&self, headers: &HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let (limit, remaining, reset) = (
            num("x-ratelimit-limit"),
            num("x-ratelimit-remaining"),
            num("x-ratelimit-reset"),
        );
        if remaining.is_none() {
            return;
        }
        if let Ok(mut rate) = self.inner.rate.lock() {
            rate.seen = RateSnapshot {
                limit,
                remaining,
                reset,
            };
        }
        if let (Some(m), Some(r)) = (&self.inner.metrics, remaining) {
            m.rate_limit_remaining(r);
        }
    }

    /// Makes every call wait `wait` from now (a longer block already set stays).
    pub(super) fn block_for(&self, wait: Duration) {
        if let Ok(mut rate) = self.inner.rate.lock() {
            let until = Instant::now() + wait;
            if rate.blocked_until.is_none_or(|b| b < until) {
                rate.blocked_until = Some(until);
            }
        }
    }

    /// Waits out the current block, if any.
    pub(super) async fn wait_for_rate_block(&self) {
        let until = self.inner.rate.lock().ok().and_then(|r| r.blocked_until);
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}
