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
    pub async fn apply(&self, store: &Store, now: i64, intents: Vec<Intent>) -> Result<Vec<Intent>, StoreError> {
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
                Ok(intents.into_iter().filter(|i| !matches!(i, Intent::Create(_))).collect())
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
