//! Keeping a burst under an upstream rate limit instead of bouncing off it. Modal creates 5
//! sandboxes per second per workspace by default: `Pacer` spaces calls evenly. GitHub allows
//! 900 points a minute per endpoint, 180 JIT registrations: `Window` lets a burst through
//! at once and then holds calls so no minute ever sees more than the limit. Callers reserve
//! a slot and sleep until it.

use std::collections::VecDeque;
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

/// At most `max` calls in any `per`-long window (a sliding window of reserved slots).
#[derive(Debug)]
pub struct Window {
    max: usize,
    per: Duration,
    slots: Mutex<VecDeque<Instant>>,
}

impl Window {
    /// `max = 0` means unlimited.
    pub fn new(max: usize, per: Duration) -> Window {
        Window {
            max,
            per,
            slots: Mutex::new(VecDeque::with_capacity(max)),
        }
    }

    /// Waits for this caller's slot: now if fewer than `max` slots fall within the last
    /// `per`, else when the oldest of the last `max` slots leaves the window.
    pub async fn wait(&self) {
        if self.max == 0 {
            return;
        }
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = if slots.len() < self.max {
                now.max(slots.back().copied().unwrap_or(now))
            } else {
                now.max(slots.front().copied().unwrap_or(now) + self.per)
            };
            slots.push_back(slot);
            if slots.len() > self.max {
                slots.pop_front();
            }
            slot
        };
        tokio::time::sleep_until(slot).await;
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

    #[tokio::test(start_paused = true)]
    async fn a_window_lets_a_burst_through_then_holds_the_rest_for_the_next_minute() {
        let window = std::sync::Arc::new(Window::new(5, Duration::from_secs(60)));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..12 {
            let w = window.clone();
            handles.push(tokio::spawn(async move {
                w.wait().await;
                Instant::now() - start
            }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.expect("join"));
        }
        times.sort();
        assert!(times[..5].iter().all(|t| *t == Duration::ZERO), "{times:?}");
        assert!(
            times[5..10].iter().all(|t| *t == Duration::from_secs(60)),
            "{times:?}"
        );
        assert!(
            times[10..].iter().all(|t| *t == Duration::from_secs(120)),
            "{times:?}"
        );
        // No 60 s window holds more than 5.
        for (i, t) in times.iter().enumerate() {
            let within = times[i..]
                .iter()
                .filter(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(within <= 5);
        }
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
