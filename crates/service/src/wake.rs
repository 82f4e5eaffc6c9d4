//! Wake-up hints between loops. The store is the only shared state; a hint only says "look
//! again now" so a loop need not wait for its next tick. Every loop also runs on a timer,
//! so a lost hint delays work but never loses it.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Wake {
    /// New or changed jobs: demand may have changed.
    pub planner: Notify,
    /// New pending runners to provision.
    pub provisioner: Notify,
    /// Runners to retire or jobs that finished.
    pub reaper: Notify,
    /// Runs whose max-parallel settings must be looked up.
    pub strategy: Notify,
}

/// After a hint that follows another closely, a loop waits this long so that hints
/// arriving together (a burst of webhooks) cost one pass, not one each.
pub const COALESCE: Duration = Duration::from_millis(20);

/// A loop counts as busy for this long after a round begins: a hint within it is coalesced;
/// a hint after it (an idle service's first webhook) starts the round at once.
pub const BUSY_WINDOW: Duration = Duration::from_millis(100);

/// When a loop's rounds begin, to tell a burst of hints from the first after a quiet spell.
#[derive(Debug, Default)]
pub struct Rounds {
    busy_until: Option<Instant>,
}

impl Rounds {
    /// Waits for `hint` or `interval`, whichever comes first; after a hint in a busy spell,
    /// a further `COALESCE`. Returns `false` once `stop` is cancelled.
    pub async fn next(&mut self, hint: &Notify, interval: Duration, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = stop.cancelled() => return false,
            () = hint.notified() => {}
            () = tokio::time::sleep(interval) => {
                self.busy_until = None;
                return true;
            }
        }
        let now = Instant::now();
        let busy = coalesces(now, self.busy_until);
        self.busy_until = Some(now + BUSY_WINDOW);
        if !busy {
            return !stop.is_cancelled();
        }
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(COALESCE) => true,
        }
    }
}

/// Whether a hint at `now` joins a burst (the loop's last round began within the busy
/// window) and so waits for the rest of it.
fn coalesces(now: Instant, busy_until: Option<Instant>) -> bool {
    busy_until.is_some_and(|until| now < until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_hint_after_a_quiet_spell_is_served_at_once_and_a_burst_is_coalesced() {
        let start = Instant::now();
        assert!(!coalesces(start, None), "an idle loop's first hint");
        let busy_until = Some(start + BUSY_WINDOW);
        assert!(
            coalesces(start + Duration::from_millis(5), busy_until),
            "a hint in a burst"
        );
        assert!(
            !coalesces(start + BUSY_WINDOW, busy_until),
            "a hint after the spell"
        );
    }

    #[tokio::test]
    async fn a_round_after_a_quiet_spell_starts_without_the_coalescing_wait() {
        let (hint, stop) = (Notify::new(), CancellationToken::new());
        let mut rounds = Rounds::default();
        hint.notify_one();
        assert!(rounds.next(&hint, Duration::from_secs(60), &stop).await);
        assert!(rounds.busy_until.is_some(), "the round marked the loop busy");
        stop.cancel();
        assert!(!rounds.next(&hint, Duration::from_secs(60), &stop).await);
    }
}
