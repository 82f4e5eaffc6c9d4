//! Spacing calls so a burst stays under an upstream rate limit instead of bouncing off it:
//! Modal creates 5 sandboxes per second per workspace by default, GitHub allows about 180
//! JIT registrations per minute per token. Callers reserve a slot and sleep until it;
//! slots are `1 / rate` apart, so no window of any length sees more than its share.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A rate limiter with a burst of one.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    /// `per_second = None` (or not positive) means unlimited.
    pub fn new(per_second: Option<f64>) -> Pacer {
        let interval = per_second
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        Pacer {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Paces under a limit someone else enforces: slots are at least `1 / (rate · share)`
    /// and at least `1 / rate + slack` apart, so network and scheduling jitter (a few
    /// milliseconds on a busy machine) cannot make two calls arrive closer than the limit.
    pub fn under_limit(per_second: Option<f64>, share: f64, slack: Duration) -> Pacer {
        let mut pacer = Pacer::new(per_second);
        if let (Some(interval), Some(rate)) = (pacer.interval, per_second) {
            let shared = Duration::from_secs_f64(1.0 / (rate * share));
            pacer.interval = Some(shared.max(interval + slack));
        }
        pacer
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Pushes every later slot back by `by`, after the upstream said it was over its limit
    /// anyway (another client shares the limit).
    pub fn back_off(&self, by: Duration) {
        if self.interval.is_none() {
            return;
        }
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *next = (*next).max(Instant::now()) + by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate() {
        let pacer = std::sync::Arc::new(Pacer::new(Some(5.0)));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..10 {
            let p = pacer.clone();
            handles.push(tokio::spawn(async move {
                p.wait().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.expect("join"));
        }
        times.sort();
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(199),
                "{:?}",
                pair[1] - pair[0]
            );
        }
        assert!(times[9] - start <= Duration::from_millis(1801));
    }

    #[test]
    fn pacing_under_a_limit_keeps_a_share_and_a_slack() {
        let p = Pacer::under_limit(Some(5.0), 0.95, Duration::from_millis(15));
        assert_eq!(p.interval, Some(Duration::from_millis(215)));
        let p = Pacer::under_limit(Some(1.0), 0.9, Duration::from_millis(15));
        assert_eq!(p.interval.map(|d| d.as_millis()), Some(1111));
        assert_eq!(
            Pacer::under_limit(None, 0.9, Duration::from_millis(15)).interval,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_means_no_wait() {
        let pacer = Pacer::new(None);
        let start = Instant::now();
        for _ in 0..100 {
            pacer.wait().await;
        }
        assert_eq!(Instant::now(), start);
    }
}
