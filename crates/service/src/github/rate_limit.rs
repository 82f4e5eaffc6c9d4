//! GitHub's primary rate limit as the client sees it, one budget per credential
//! (docs/github.md §2.5): the `x-ratelimit-*` headers of the last `core` answer, a block set by
//! a rate-limit answer, and the pacing of background calls as the budget drains.
//!
//! Calls are of two kinds. Essential ones (JIT registrations, runner deletions, the runner
//! lookups of provisioning and reaping) are only ever held back by an actual block: GitHub
//! asked clients to stop, so they wait it out. Background ones (run and job polling,
//! max-parallel lookups, delivery scans, runner-list sweeps) give way first: from half the
//! budget down they are spaced so that what is left above the reserve lasts until the window
//! resets, and at the reserve they stop, so registrations stay possible whatever the polling
//! costs. A block or a drained budget of one credential never holds back calls made with
//! another.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

use super::GitHub;
use super::auth::Credentials;

/// The rate-limit headers of the last `core` answer of one budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSnapshot {
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    /// Unix seconds when the window resets.
    pub reset: Option<i64>,
}

/// Whose primary budget a call spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BudgetKey {
    /// A personal access token: one budget for every call.
    Token,
    /// A GitHub App installation, named by the account (user or organisation) whose
    /// repositories it serves, lower-cased; empty for calls about no account.
    Installation(String),
    /// The App itself (JWT calls: finding an installation, minting its tokens).
    App,
}

/// How much a call matters when the budget runs low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Registrations, deletions and the runner lookups of provisioning and reaping: held
    /// back only by an actual block.
    Essential,
    /// Polling, max-parallel lookups, delivery scans, runner-list sweeps: spaced out as
    /// the budget drains, stopped at the reserve.
    Background,
}

/// What a call is, for its budget and for the ETag cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call<'a> {
    /// The account whose repository or organisation the call is about.
    pub owner: Option<&'a str>,
    pub priority: Priority,
    /// Sent with the `ETag` of the last answer to the same URL (GETs that poll).
    pub conditional: bool,
    /// Authenticated as the App (a JWT), not as an installation or a token.
    pub as_app: bool,
}

impl<'a> Call<'a> {
    pub fn essential(owner: &'a str) -> Self {
        Call {
            owner: Some(owner),
            priority: Priority::Essential,
            conditional: false,
            as_app: false,
        }
    }

    pub fn background(owner: &'a str) -> Self {
        Call {
            priority: Priority::Background,
            ..Call::essential(owner)
        }
    }

    /// A call about no account's repository (e.g. the runner's releases).
    pub fn unowned() -> Self {
        Call {
            owner: None,
            ..Call::essential("")
        }
    }

    /// A JWT call to the App endpoints.
    pub fn app() -> Self {
        Call {
            as_app: true,
            ..Call::unowned()
        }
    }

    /// Sent with the last answer's `ETag`; a 304 stands for that answer.
    pub fn conditional(self) -> Self {
        Call {
            conditional: true,
            ..self
        }
    }
}

/// Background calls are paced once the budget is below this share of the limit.
const PACE_BELOW: f64 = 0.5;
/// The longest gap pacing puts between two background calls, so a pass still moves and
/// sees the window reset.
const MAX_SPACING: Duration = Duration::from_secs(30);
/// The reserve when none is configured: a tenth of the limit, at least this many calls.
const MIN_RESERVE: i64 = 100;

/// Whether, and when, a call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Go,
    /// Go at this instant (a background slot, already taken).
    GoAt(Instant),
    /// Wait until then and ask again (a block).
    WaitUntil(Instant),
    /// Not now: a background call at the reserve, or during a block.
    Defer {
        remaining: i64,
    },
}

/// One credential's budget.
#[derive(Debug, Default)]
pub(super) struct Budget {
    seen: RateSnapshot,
    /// After a rate-limit answer every call of this budget waits until then: GitHub asks
    /// clients to stop, not to retry each request on its own schedule.
    blocked_until: Option<Instant>,
    /// The next background call's slot while the budget drains.
    next_background: Option<Instant>,
}

impl Budget {
    /// Decides a call of `priority` at `now` (`epoch` = the same instant in Unix seconds).
    /// `slot_held`: a background call that already waited for its slot is not paced again,
    /// only checked against the reserve and blocks, which may have come meanwhile.
    pub fn admit(
        &mut self,
        priority: Priority,
        now: Instant,
        epoch: i64,
        reserve: Option<u32>,
        slot_held: bool,
    ) -> Admission {
        let (limit, remaining, reset) = match self.seen {
            RateSnapshot {
                limit: Some(l),
                remaining: Some(r),
                reset: Some(t),
            } if t > epoch => (l, r, t),
            // Nothing known, or the window has reset since: the budget is whole.
            _ => (0, 0, 0),
        };
        let blocked = self.blocked_until.filter(|b| *b > now).or_else(|| {
            // Known to be spent: the next call would only be refused.
            (reset > 0 && remaining <= 0).then(|| now + Duration::from_secs((reset - epoch) as u64))
        });
        if priority == Priority::Essential {
            return blocked.map_or(Admission::Go, Admission::WaitUntil);
        }
        if blocked.is_some() {
            return Admission::Defer { remaining };
        }
        if reset == 0 {
            return Admission::Go;
        }
        let reserve = reserve.map_or((limit / 10).max(MIN_RESERVE), i64::from);
        if remaining <= reserve {
            return Admission::Defer { remaining };
        }
        if slot_held || remaining as f64 >= limit as f64 * PACE_BELOW {
            return Admission::Go;
        }
        let left = Duration::from_secs((reset - epoch) as u64);
        let spacing = (left / u32::try_from(remaining - reserve).unwrap_or(u32::MAX)).min(MAX_SPACING);
        let slot = self.next_background.filter(|n| *n > now).unwrap_or(now);
        self.next_background = Some(slot + spacing);
        if slot > now {
            Admission::GoAt(slot)
        } else {
            Admission::Go
        }
    }

    fn block_until(&mut self, until: Instant) {
        if self.blocked_until.is_none_or(|b| b < until) {
            self.blocked_until = Some(until);
        }
    }
}

/// Every credential's budget.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    by_key: HashMap<BudgetKey, Budget>,
    /// `GITHUB_RATE_RESERVE`: calls kept for essential work; `None` = a tenth of the limit,
    /// at least [`MIN_RESERVE`].
    reserve: Option<u32>,
}

impl Budgets {
    pub fn with_reserve(reserve: Option<u32>) -> Self {
        Budgets {
            by_key: HashMap::new(),
            reserve,
        }
    }

    pub fn admit(
        &mut self,
        key: &BudgetKey,
        priority: Priority,
        now: Instant,
        epoch: i64,
        slot_held: bool,
    ) -> Admission {
        let reserve = self.reserve;
        self.by_key
            .entry(key.clone())
            .or_default()
            .admit(priority, now, epoch, reserve, slot_held)
    }

    pub fn note(&mut self, key: &BudgetKey, seen: RateSnapshot) {
        self.by_key.entry(key.clone()).or_default().seen = seen;
    }

    pub fn block_until(&mut self, key: &BudgetKey, until: Instant) {
        self.by_key.entry(key.clone()).or_default().block_until(until);
    }

    pub fn seen(&self, key: &BudgetKey) -> RateSnapshot {
        self.by_key.get(key).map(|b| b.seen).unwrap_or_default()
    }
}

impl GitHub {
    /// Whose budget a call spends. The one place that knows how credentials map to
    /// budgets: a token has one; an App has one per installation, named by the account the
    /// call is about.
    pub(super) fn budget_key(&self, call: &Call<'_>) -> BudgetKey {
        if call.as_app {
            return BudgetKey::App;
        }
        match &self.inner.auth.credentials {
            Credentials::Token(_) => BudgetKey::Token,
            Credentials::App(_) => BudgetKey::Installation(call.owner.unwrap_or("").to_ascii_lowercase()),
        }
    }

    /// The rate-limit headers last seen for calls about `owner`'s repositories.
    pub fn rate(&self, owner: &str) -> RateSnapshot {
        let key = self.budget_key(&Call::essential(owner));
        self.budgets(|b| b.seen(&key))
    }

    /// Waits until the call may go, or says it must not (a background call at the reserve
    /// or during a block).
    pub(super) async fn admit(&self, key: &BudgetKey, priority: Priority) -> Result<(), i64> {
        let mut slot_held = false;
        loop {
            let epoch = crate::domain::now_millis() / 1000;
            match self.budgets(|b| b.admit(key, priority, Instant::now(), epoch, slot_held)) {
                Admission::Go => return Ok(()),
                Admission::GoAt(at) => {
                    tokio::time::sleep_until(at.into()).await;
                    slot_held = true;
                }
                Admission::WaitUntil(at) => tokio::time::sleep_until(at.into()).await,
                Admission::Defer { remaining } => return Err(remaining),
            }
        }
    }

    /// Records an answer's rate-limit headers, when GitHub sent them for the `core` budget.
    pub(super) fn note_rate(&self, key: &BudgetKey, headers: &HeaderMap) {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let num = |name: &str| text(name).and_then(|v| v.trim().parse::<i64>().ok());
        if text("x-ratelimit-resource").is_some_and(|r| r != "core") {
            return;
        }
        let seen = RateSnapshot {
            limit: num("x-ratelimit-limit"),
            remaining: num("x-ratelimit-remaining"),
            reset: num("x-ratelimit-reset"),
        };
        let Some(remaining) = seen.remaining else {
            return;
        };
        self.budgets(|b| b.note(key, seen));
        if let Some(m) = &self.inner.metrics {
            m.rate_limit_remaining(remaining);
        }
    }

    /// Makes every call of this budget wait `wait` from now (a longer block already set stays).
    pub(super) fn block_for(&self, key: &BudgetKey, wait: Duration) {
        self.budgets(|b| b.block_until(key, Instant::now() + wait));
    }

    fn budgets<T>(&self, f: impl FnOnce(&mut Budgets) -> T) -> T {
        let mut guard = self.inner.budgets.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: i64 = 1_800_000_000;

    fn budget(limit: i64, remaining: i64, reset_in: i64) -> Budget {
        Budget {
            seen: RateSnapshot {
                limit: Some(limit),
                remaining: Some(remaining),
                reset: Some(EPOCH + reset_in),
            },
            ..Budget::default()
        }
    }

    #[test]
    fn background_calls_go_freely_above_half_the_budget_and_stop_at_the_reserve() {
        let now = Instant::now();
        let mut b = budget(5000, 2600, 1800);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::Go
        );
        let mut b = budget(5000, 500, 1800);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::Defer { remaining: 500 },
            "the default reserve is a tenth of the limit"
        );
        assert_eq!(
            b.admit(Priority::Essential, now, EPOCH, None, false),
            Admission::Go
        );
        let mut b = budget(1000, 100, 1800);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::Defer { remaining: 100 },
            "at least a hundred calls are kept"
        );
        let mut b = budget(5000, 500, 1800);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, Some(50), false),
            Admission::Go,
            "a configured reserve replaces the default"
        );
    }

    #[test]
    fn between_half_and_the_reserve_background_calls_are_spaced_to_last_until_the_reset() {
        let now = Instant::now();
        // 1,500 above a reserve of 500, 1,500 s to the reset: one call a second.
        let mut b = budget(5000, 2000, 1500);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::Go
        );
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::GoAt(now + Duration::from_secs(1))
        );
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::GoAt(now + Duration::from_secs(2))
        );
        assert_eq!(
            b.admit(Priority::Essential, now, EPOCH, None, false),
            Admission::Go,
            "essential calls are never paced"
        );
        // A call that waited for its slot is not paced again, but still stops at the reserve
        // if the budget drained meanwhile.
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, true),
            Admission::Go
        );
        b.seen.remaining = Some(400);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, true),
            Admission::Defer { remaining: 400 }
        );
        // Nearly at the reserve the gap is capped, so a pass still moves.
        let mut b = budget(5000, 501, 3000);
        b.admit(Priority::Background, now, EPOCH, None, false);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::GoAt(now + MAX_SPACING)
        );
    }

    #[test]
    fn a_window_that_has_reset_counts_as_a_whole_budget() {
        let now = Instant::now();
        let mut b = budget(5000, 3, -1);
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::Go
        );
    }

    #[test]
    fn a_spent_budget_or_a_block_holds_essential_calls_and_defers_background_ones() {
        let now = Instant::now();
        let mut b = budget(5000, 0, 60);
        assert_eq!(
            b.admit(Priority::Essential, now, EPOCH, None, false),
            Admission::WaitUntil(now + Duration::from_secs(60))
        );
        assert_eq!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::Defer { remaining: 0 }
        );
        let mut b = Budget::default();
        b.block_until(now + Duration::from_secs(7));
        assert_eq!(
            b.admit(Priority::Essential, now, EPOCH, None, false),
            Admission::WaitUntil(now + Duration::from_secs(7))
        );
        assert!(matches!(
            b.admit(Priority::Background, now, EPOCH, None, false),
            Admission::Defer { .. }
        ));
        assert_eq!(
            b.admit(
                Priority::Essential,
                now + Duration::from_secs(8),
                EPOCH,
                None,
                false
            ),
            Admission::Go,
            "the block ends"
        );
    }

    #[test]
    fn a_block_of_one_budget_never_holds_back_another() {
        let now = Instant::now();
        let mut budgets = Budgets::default();
        let (a, b) = (
            BudgetKey::Installation("alpha".into()),
            BudgetKey::Installation("beta".into()),
        );
        budgets.block_until(&a, now + Duration::from_secs(600));
        budgets.note(
            &a,
            RateSnapshot {
                limit: Some(5000),
                remaining: Some(0),
                reset: Some(EPOCH + 600),
            },
        );
        assert!(matches!(
            budgets.admit(&a, Priority::Essential, now, EPOCH, false),
            Admission::WaitUntil(_)
        ));
        assert_eq!(
            budgets.admit(&b, Priority::Essential, now, EPOCH, false),
            Admission::Go
        );
        assert_eq!(
            budgets.admit(&b, Priority::Background, now, EPOCH, false),
            Admission::Go
        );
    }
}
