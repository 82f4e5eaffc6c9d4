//! `MAX_SPEND_PER_DAY` (issue 13 item 4): once the spend recorded today (UTC) reaches the
//! cap, the planner makes no new runners; jobs stay queued, a pause in the store tells
//! `status` why, and the next UTC day lifts it by itself (the pause ends at midnight and
//! the day's sum starts again from zero).

use std::sync::Mutex;

use super::Intent;
use crate::store::{SPEND_PAUSE, Store, StoreError, utc_day_start};

/// The cap and whether it is holding provisioning now.
#[derive(Debug, Default)]
pub struct SpendCap {
    /// US dollars per UTC day; `None`: no cap.
    pub max_per_day: Option<f64>,
    /// Whether the last pass was paused (`None` before the first pass, so a pause left by
    /// an earlier process is cleared once).
    paused: Mutex<Option<bool>>,
}

impl SpendCap {
    pub fn new(max_per_day: Option<f64>) -> SpendCap {
        SpendCap {
            max_per_day,
            paused: Mutex::new(None),
        }
    }

    /// Drops the `Create` intents while today's spend is at or over the cap, recording (and
    /// logging once) the pause, and lifting it once spend is under the cap again.
    pub async fn apply(
        &self,
        store: &Store,
        now: i64,
        intents: Vec<Intent>,
    ) -> Result<Vec<Intent>, StoreError> {
        let day = utc_day_start(now);
        let over = match self.max_per_day {
            Some(cap) => {
                let spent = store.spend_since(day).await?;
                (spent >= cap).then_some((spent, cap))
            }
            None => None,
        };
        let was = *self.paused.lock().unwrap_or_else(|p| p.into_inner());
        match over {
            Some((spent, cap)) => {
                if was != Some(true) {
                    let reason = format!(
                        "provisioning paused: today's spend ${spent:.2} reached MAX_SPEND_PER_DAY ${cap:.2}; \
                         new runners resume at 00:00 UTC"
                    );
                    store.set_pause(SPEND_PAUSE, &reason, day + 86_400_000).await?;
                    tracing::warn!("{reason}");
                }
                self.set(true);
                Ok(intents
                    .into_iter()
                    .filter(|i| !matches!(i, Intent::Create(_)))
                    .collect())
            }
            None => {
                if was != Some(false) {
                    store.clear_pause(SPEND_PAUSE).await?;
                    if was == Some(true) {
                        tracing::info!("provisioning resumed: today's spend is under MAX_SPEND_PER_DAY");
                    }
                }
                self.set(false);
                Ok(intents)
            }
        }
    }

    fn set(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = Some(paused);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::domain::{JobId, LabelSet, RepoName, RunnerName};
    use crate::store::{Durability, NewRunner, UnpricedRunner};

    fn create() -> Intent {
        Intent::Create(NewRunner {
            name: RunnerName::from_stored("modal-1-1".into()),
            job: JobId(1),
            attempt: 1,
            repo: RepoName::parse("octo/app").expect("repo"),
            labels: LabelSet::new(["self-hosted", "modal"]),
        })
    }

    fn spent(name: &str) -> UnpricedRunner {
        UnpricedRunner {
            name: RunnerName::from_stored(name.into()),
            job: JobId(1),
            repo: RepoName::parse("octo/app").expect("repo"),
            labels: LabelSet::new(["modal"]),
            sandbox_id: "sb-1".into(),
            started_at: 0,
            ended_at: 1,
        }
    }

    #[tokio::test]
    async fn the_daily_cap_holds_new_runners_until_the_next_utc_day_and_says_why() {
        // 2026-11-30 23:00 UTC.
        let start = UNIX_EPOCH + Duration::from_secs(1_796_079_600);
        let clock = ManualClock::new(start);
        let store = Store::open_with_clock("sqlite::memory:", Durability::Normal, Clock::from(clock.clone()))
            .await
            .expect("store");
        let cap = SpendCap::new(Some(1.0));
        let now = || Clock::from(clock.clone()).now_millis();

        store.record_cost(&spent("a"), 0.4, "stats").await.expect("cost");
        let kept = cap.apply(&store, now(), vec![create()]).await.expect("apply");
        assert_eq!(kept, vec![create()], "under the cap");
        assert!(store.active_pauses(now()).await.expect("pauses").is_empty());

        store.record_cost(&spent("b"), 0.6, "rates").await.expect("cost");
        let kept = cap.apply(&store, now(), vec![create()]).await.expect("apply");
        assert!(kept.is_empty(), "at the cap nothing is created: {kept:?}");
        let pauses = store.active_pauses(now()).await.expect("pauses");
        assert_eq!(pauses.len(), 1);
        assert!(pauses[0].1.contains("MAX_SPEND_PER_DAY"), "{pauses:?}");

        // The next UTC day: yesterday's spend no longer counts, the pause is over.
        let next_day = utc_day_start(now()) + 86_400_000 + 1;
        clock.set(UNIX_EPOCH + Duration::from_millis(next_day as u64));
        assert!(store.active_pauses(now()).await.expect("pauses").is_empty());
        let kept = cap.apply(&store, now(), vec![create()]).await.expect("apply");
        assert_eq!(kept, vec![create()], "resumed by itself");
    }
}
