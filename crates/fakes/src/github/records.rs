//! What the fake GitHub did, as tests inspect it: the REST calls it answered and the
//! webhook deliveries it attempted, and how a test steers one delivery.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::faults::Route;
use super::views::Scope;

/// One REST call the fake answered.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Request body, when it was JSON.
    pub body: Option<serde_json::Value>,
    pub status: u16,
    /// Which endpoint it hit ([`Route::NotFound`] for unknown paths).
    pub route: Route,
    /// What the call was about, as its path says (`None` for the App's own endpoints,
    /// the rate limit and unknown paths).
    pub scope: Option<Scope>,
    /// The installation whose token made the call (`None` for the personal token and
    /// the App's JWT).
    pub installation: Option<u64>,
    /// Whether it counted against the primary (core) budget, as GitHub counts: not a
    /// `304 Not Modified`, not a refused or unauthenticated request, not `/rate_limit`.
    pub counted: bool,
    /// When the request arrived.
    pub at: SystemTime,
    /// Time spent answering (including injected latency).
    pub duration: Duration,
}

/// What a delivery filter sees about a webhook about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub guid: Uuid,
    pub event: String,
    pub action: Option<String>,
    pub job_id: Option<u64>,
    /// Sent through the redeliver API rather than by the event itself.
    pub redelivery: bool,
    /// The hook it goes to.
    pub hook_id: u64,
}

/// What to do with one delivery (see [`super::FakeGitHub::set_delivery_filter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Send it now.
    Deliver,
    /// Never send it; it shows up as a failed delivery (status code 0).
    Drop,
    /// Send it twice, concurrently, with the same GUID.
    Duplicate,
    /// Send it after this delay.
    Delay(Duration),
}

/// One delivery attempt, as the deliveries API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Delivery id (used by the redeliver API).
    pub id: u64,
    /// The hook it went to.
    pub hook_id: u64,
    /// `X-GitHub-Delivery`; shared by duplicates and redeliveries.
    pub guid: Uuid,
    pub event: String,
    pub action: Option<String>,
    pub job_id: Option<u64>,
    /// HTTP status of the receiver; `None` when nothing answered (dropped,
    /// refused, timed out).
    pub status_code: Option<u16>,
    /// `OK` or GitHub-style error text.
    pub status: String,
    pub redelivery: bool,
    pub delivered_at: SystemTime,
    pub duration: Duration,
}

impl DeliveryRecord {
    /// A 2xx answer, which is all GitHub counts as success.
    pub fn is_success(&self) -> bool {
        matches!(self.status_code, Some(code) if (200..300).contains(&code))
    }
}
