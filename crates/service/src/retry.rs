//! Capped exponential backoff with equal jitter (between half and all of the delay), shared
//! by the GitHub client and the backends so that every upstream call retries the same way.

use std::time::Duration;

/// How a call is retried: `attempts` tries in all, waiting `base · 2^n` (capped at `cap`,
/// randomised between half and all of it) between them.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(attempts: u32, base: Duration, cap: Duration) -> Backoff {
        Backoff { attempts, base, cap }
    }

    /// The wait before try `attempt + 1` (attempt counts from 0).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.cap);
        // "Equal jitter": between half and all of the capped delay, so retries of many
        // callers spread out but never retry immediately.
        let half = capped / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// The planner's backoff between attempts at one job after failures: 5 s doubling to 5 min.
pub fn job_retry_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let secs = 5u64.saturating_mul(1u64 << (failures - 1).min(10));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let b = Backoff::new(10, Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..30 {
            let d = b.delay(attempt);
            assert!(d <= Duration::from_secs(2), "attempt {attempt}: {d:?}");
        }
        let first = b.delay(0);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let later = b.delay(4);
        assert!(later >= Duration::from_millis(800), "{later:?}");
    }

    #[test]
    fn job_retries_back_off_to_five_minutes() {
        assert_eq!(job_retry_delay(0), Duration::ZERO);
        assert_eq!(job_retry_delay(1), Duration::from_secs(5));
        assert_eq!(job_retry_delay(2), Duration::from_secs(10));
        assert_eq!(job_retry_delay(20), Duration::from_secs(300));
    }
}
