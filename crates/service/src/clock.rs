//! The current time, injected. The store stamps rows with wall-clock milliseconds and the
//! loops compare those stamps with "now" to apply their timeouts (registration, idle,
//! maximum runtime, retry backoff, the max-parallel grace). Reading the time through one
//! `Clock` handed to all of them keeps those comparisons consistent, and lets a test move
//! time forward past a timeout at once instead of sleeping through it.
//!
//! Timers that only pace a loop (`tokio::time::sleep`) stay on tokio's clock, which tests
//! can pause; they decide when a loop runs, not what it decides.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::domain::Millis;

/// Where the store and the loops read the current time. Cheap to clone; clones of a
/// manual clock share its time.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The operating system's clocks (production).
    #[default]
    System,
    /// A clock that moves only when a test moves it.
    Manual(ManualClock),
}

impl Clock {
    /// Wall-clock time: what rows are stamped with and timeouts are measured against.
    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Manual(m) => m.lock().wall,
        }
    }

    /// Wall-clock time in milliseconds since the Unix epoch, the unit of every stored time.
    pub fn now_millis(&self) -> Millis {
        to_millis(self.now())
    }

    /// Monotonic time, for intervals that must not jump with the wall clock (how long ago
    /// a sweep ran, until when provisioning is paused).
    pub fn instant(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(m) => m.lock().monotonic,
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Clock {
        Clock::Manual(manual)
    }
}

/// A clock for tests: it stands still until `advance` or `set` moves it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

#[derive(Debug)]
struct ManualState {
    wall: SystemTime,
    monotonic: Instant,
}

impl ManualClock {
    /// A clock showing `start` as the wall-clock time.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock {
            state: Arc::new(Mutex::new(ManualState {
                wall: start,
                monotonic: Instant::now(),
            })),
        }
    }

    /// Moves both the wall clock and the monotonic clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        state.wall += by;
        state.monotonic += by;
    }

    /// Sets the wall clock (which may jump backwards, as a real one can); monotonic time
    /// does not move.
    pub fn set(&self, to: SystemTime) {
        self.lock().wall = to;
    }

    fn lock(&self) -> MutexGuard<'_, ManualState> {
        // The state is two plain values, consistent after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Milliseconds since the Unix epoch; times before it count as the epoch.
fn to_millis(t: SystemTime) -> Millis {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Millis::try_from(since.as_millis()).unwrap_or(Millis::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_share_its_time() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let manual = ManualClock::new(start);
        let clock = Clock::from(manual.clone());
        let before = clock.instant();
        assert_eq!(clock.now(), start);
        assert_eq!(clock.now_millis(), 1_000_000);

        manual.advance(Duration::from_millis(1_500));
        assert_eq!(clock.clone().now_millis(), 1_001_500);
        assert_eq!(clock.instant() - before, Duration::from_millis(1_500));

        manual.set(UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(clock.now_millis(), 10_000);
        assert_eq!(
            clock.instant() - before,
            Duration::from_millis(1_500),
            "setting the wall clock leaves monotonic time alone"
        );
    }

    #[test]
    fn the_system_clock_reads_the_operating_system() {
        let read = Clock::System.now_millis();
        let os = to_millis(SystemTime::now());
        assert!((os - read).abs() < 60_000, "{read} vs {os}");
    }
}
