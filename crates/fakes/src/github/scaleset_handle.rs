//! The test-facing controls and views of the fake Actions service's scale sets
//! (see `scaleset.rs` for the behaviour).

use std::time::{Duration, Instant};

use super::FakeGitHub;
use super::broker::BROKER_PATH;
use super::scaleset::{PollRecord, ScaleSetMessageView, ScaleSetView, SessionCreate};

impl FakeGitHub {
    /// The Actions service base URL `runner-registration` answers.
    pub fn scale_set_service_url(&self) -> String {
        self.with_state(|s| format!("{}{BROKER_PATH}", s.root_url))
    }

    /// How long admin tokens (from `runner-registration`) and message-queue tokens (from
    /// session create and refresh) live; their JWT `exp` says so. Whole seconds, at least 1.
    pub fn set_scale_set_token_lifetimes(&self, admin: Duration, queue: Duration) {
        self.with_state(|s| {
            s.scale_sets.admin_ttl = admin;
            s.scale_sets.queue_ttl = queue;
        });
    }

    /// How long a message poll waits before answering 202 (real: about 50 s).
    pub fn set_scale_set_poll_hold(&self, hold: Duration) {
        self.with_state(|s| s.scale_sets.poll_hold = hold);
    }

    /// `true` (the default): jobs arrive as `JobAvailable` and must be acquired, as on
    /// GHES; `false`: as `JobAssigned` to the first matching set, as on github.com.
    pub fn set_scale_set_acquire_required(&self, required: bool) {
        self.with_state(|s| s.scale_sets.acquire_required = required);
    }

    /// Makes every session create for a scale set named `name` answer 409 for `hold`, as
    /// when a crashed predecessor's session has not lapsed yet.
    pub fn hold_scale_set_session(&self, name: &str, hold: Duration) {
        self.with_state(|s| {
            s.scale_sets
                .held
                .insert(name.to_ascii_lowercase(), Instant::now() + hold);
        });
    }

    /// How long a session nobody polls keeps holding its set (default 2 minutes; the real
    /// lapse is unknown).
    pub fn set_scale_set_session_lapse(&self, lapse: Duration) {
        self.with_state(|s| s.scale_sets.session_lapse = lapse);
    }

    /// Makes `runner-registration` answer 403 (`refused`) or work again, as for a token
    /// without the rights to administer the scope's runners.
    pub fn refuse_scale_set_registration(&self, refused: bool) {
        self.with_state(|s| s.scale_sets.registration_refused = refused);
    }

    /// Session refreshes answered 200 so far.
    pub fn scale_set_session_refreshes(&self) -> u64 {
        self.with_state(|s| s.scale_sets.refreshes)
    }

    /// Forgets every live session (their queue tokens stop working and a refresh answers
    /// 404), as when the service loses its session store.
    pub fn drop_scale_set_sessions(&self) {
        self.with_state(|s| s.scale_sets.sessions.clear());
    }

    /// The scale sets that exist.
    pub fn scale_sets(&self) -> Vec<ScaleSetView> {
        self.with_state(|s| s.scale_sets.views())
    }

    /// How many sessions are live now.
    pub fn scale_set_sessions(&self) -> usize {
        self.with_state(|s| s.scale_sets.sessions.len())
    }

    /// Every queue message sent so far, oldest first.
    pub fn scale_set_messages(&self) -> Vec<ScaleSetMessageView> {
        self.with_state(|s| s.scale_sets.message_views())
    }

    /// Every poll received, oldest first.
    pub fn scale_set_polls(&self) -> Vec<PollRecord> {
        self.with_state(|s| s.scale_sets.polls.clone())
    }

    /// Every session create and its status, oldest first.
    pub fn scale_set_session_creates(&self) -> Vec<SessionCreate> {
        self.with_state(|s| s.scale_sets.session_creates.clone())
    }

    /// Every scale-set `generatejitconfig` request: runner name and arrival time.
    pub fn scale_set_jit_requests(&self) -> Vec<(String, std::time::SystemTime)> {
        self.with_state(|s| s.scale_sets.jit_requests.clone())
    }

    /// Admin tokens issued so far.
    pub fn scale_set_admin_tokens_issued(&self) -> u64 {
        self.with_state(|s| s.scale_sets.admin_tokens_issued)
    }

    /// Checks that no message was lost or acknowledged twice: every message sent was
    /// deleted exactly once, and none is still pending. The error lists the offenders.
    pub fn scale_set_messages_accounted(&self) -> Result<(), String> {
        self.with_state(|s| {
            let mut problems: Vec<String> = s
                .scale_sets
                .messages
                .values()
                .filter(|m| m.deletions != 1)
                .map(|m| format!("message {} deleted {} times", m.id, m.deletions))
                .collect();
            for set in s.scale_sets.sets.values().filter(|set| !set.pending.is_empty()) {
                problems.push(format!(
                    "{} job messages of set {} never sent",
                    set.pending.len(),
                    set.id
                ));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        })
    }
}
