//! Rate-limited warnings. Anyone who can reach the port can make the service refuse
//! requests; a warning line per refusal would let them fill the disk and bury the lines
//! that matter. So one line per reason per interval is written, carrying how many were held
//! back since the last one; the metric of each refusal is counted every time, by its caller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a warning of one reason is written at most.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Decides which warnings are written: the first of each reason, then at most one per
/// interval.
#[derive(Debug)]
pub struct WarnThrottle {
    interval: Duration,
    reasons: Mutex<HashMap<&'static str, Slot>>,
}

/// One reason's state: when its next line may be written, and how many were held back.
#[derive(Debug)]
struct Slot {
    next: Instant,
    held_back: u64,
}

impl Default for WarnThrottle {
    fn default() -> Self {
        WarnThrottle::new(WARN_INTERVAL)
    }
}

impl WarnThrottle {
    pub fn new(interval: Duration) -> WarnThrottle {
        WarnThrottle {
            interval,
            reasons: Mutex::default(),
        }
    }

    /// Whether a warning for `reason` may be written at `now`. When it may: how many
    /// warnings of that reason were held back since the last one written (to say in the
    /// line). Reasons are fixed strings, so the map stays as small as their list.
    pub fn admit(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self
            .reasons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match reasons.get_mut(reason) {
            Some(slot) if now < slot.next => {
                slot.held_back += 1;
                None
            }
            Some(slot) => {
                slot.next = now + self.interval;
                Some(std::mem::take(&mut slot.held_back))
            }
            None => {
                reasons.insert(
                    reason,
                    Slot {
                        next: now + self.interval,
                        held_back: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// `admit` at the current time.
    pub fn admit_now(&self, reason: &'static str) -> Option<u64> {
        self.admit(reason, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_reason_per_interval_passes_with_the_count_held_back() {
        let throttle = WarnThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);

        assert_eq!(throttle.admit("invalid signature", at(0)), Some(0));
        assert_eq!(throttle.admit("invalid signature", at(1)), None);
        assert_eq!(throttle.admit("invalid signature", at(9)), None);
        assert_eq!(
            throttle.admit("invalid signature", at(10)),
            Some(2),
            "the next line says two were held back"
        );
        assert_eq!(throttle.admit("invalid signature", at(11)), None);
        assert_eq!(
            throttle.admit("invalid signature", at(60)),
            Some(1),
            "the count restarts after each line"
        );
    }

    #[test]
    fn reasons_are_throttled_independently() {
        let throttle = WarnThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.admit("invalid signature", t0), Some(0));
        assert_eq!(
            throttle.admit("payload too large", t0),
            Some(0),
            "another reason's first line is written"
        );
        assert_eq!(throttle.admit("invalid signature", t0), None);
        assert_eq!(throttle.admit("payload too large", t0), None);
    }
}
