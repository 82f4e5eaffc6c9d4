//! Fault injection, artificial latency and rate-limit simulation.
//!
//! Reliability tests need GitHub's failure modes on demand: error answers,
//! hangs, both kinds of rate limit, and the nastiest one for a client that
//! retries POSTs: the server did the work but the client saw an error
//! ([`Fault::AfterSuccess`]). Benchmarks need the budgets GitHub enforces
//! (docs/github.md §2.5): an hourly core budget, 100 concurrent requests and a
//! points-per-minute budget per endpoint.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::Method;
use serde_json::{Value, json};

/// A REST endpoint of the fake, to aim faults, latency and limits at.
/// Faults and latency never touch the fake Actions service (`/_fake/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Every REST endpoint (only meaningful in rules and latency settings).
    Any,
    GenerateJitConfig,
    /// `POST …/actions/runners/registration-token`.
    CreateRegistrationToken,
    ListRunners,
    GetRunner,
    DeleteRunner,
    RunnerDownloads,
    ListRuns,
    GetRun,
    ListRunJobs,
    GetJob,
    GetContents,
    ListHookDeliveries,
    RedeliverHookDelivery,
    /// `GET /repos/{o}/{r}/hooks/{id}`, `GET /orgs/{org}/hooks/{id}`.
    GetHook,
    RateLimit,
    CreateInstallationToken,
    RepoInstallation,
    OrgInstallation,
    UserInstallation,
    ListRunnerGroups,
    /// A path the fake does not serve (answered 404).
    NotFound,
}

impl Route {
    /// Whether a rule aimed at `self` applies to a request on `actual`.
    pub fn covers(self, actual: Route) -> bool {
        self == Route::Any || self == actual
    }
}

/// A misbehaviour to inject.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status, JSON body and extra headers instead of working.
    Status {
        status: u16,
        body: Value,
        headers: Vec<(String, String)>,
    },
    /// Sleep, then answer normally (a slow or stuck GitHub).
    Hang(Duration),
    /// 403 "You have exceeded a secondary rate limit" with `retry-after`.
    SecondaryRateLimit { retry_after_secs: u64 },
    /// 403 with `x-ratelimit-remaining: 0` and a reset this far ahead.
    PrimaryRateLimit { reset_in_secs: u64 },
    /// Do the work (e.g. create the registration), then answer with the inner
    /// fault anyway. With an inner [`Fault::Hang`] the real answer comes late.
    AfterSuccess(Box<Fault>),
}

impl Fault {
    /// A plain error status with a GitHub-style body.
    pub fn status(status: u16) -> Self {
        let message = match status {
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Server Error",
        };
        Fault::Status {
            status,
            body: json!({ "message": message, "documentation_url": super::DOCS_URL }),
            headers: Vec::new(),
        }
    }

    /// Work first, then answer with `inner`.
    pub fn after_success(inner: Fault) -> Self {
        Fault::AfterSuccess(Box::new(inner))
    }
}

/// A fault aimed at some requests; it fires `times` times, then disappears.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub route: Route,
    /// `None` matches every method.
    pub method: Option<Method>,
    pub times: usize,
    pub fault: Fault,
}

impl FaultRule {
    /// A rule firing once on `route`, any method.
    pub fn new(route: Route, fault: Fault) -> Self {
        Self {
            route,
            method: None,
            times: 1,
            fault,
        }
    }

    /// Fires `times` times instead of once.
    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    /// Only for this method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    fn matches(&self, route: Route, method: &Method) -> bool {
        self.route.covers(route) && self.method.as_ref().is_none_or(|m| m == method)
    }
}

/// Takes the first live rule matching the request, consuming one firing.
pub(super) fn take_fault(rules: &mut Vec<FaultRule>, route: Route, method: &Method) -> Option<Fault> {
    let index = rules.iter().position(|rule| rule.matches(route, method))?;
    let rule = &mut rules[index];
    rule.times = rule.times.saturating_sub(1);
    let fault = rule.fault.clone();
    if rule.times == 0 {
        rules.remove(index);
    }
    Some(fault)
}

/// Rate-limit budgets (docs/github.md §2.5). Exceeding the secondary ones answers
/// 403 with `retry-after`; exhausting the core budget answers 403 with
/// `x-ratelimit-remaining: 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent REST requests allowed (GitHub: 100).
    pub max_concurrent: Option<usize>,
    /// Points per minute per endpoint (GitHub: 900); GET costs 1, other methods 5.
    pub points_per_minute_per_endpoint: Option<u32>,
    /// Primary hourly budget (GitHub: 5000 for a PAT).
    pub core_per_hour: u32,
}

impl Default for Limits {
    /// Only the primary budget of a PAT; no secondary limits.
    fn default() -> Self {
        Self {
            max_concurrent: None,
            points_per_minute_per_endpoint: None,
            core_per_hour: 5000,
        }
    }
}

/// Why a request was refused by the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    Secondary { retry_after_secs: u64 },
    Primary { reset_epoch: u64 },
}

/// The `x-ratelimit-*` numbers of the core budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RateSnapshot {
    pub limit: u32,
    pub remaining: u32,
    pub used: u32,
    pub reset_epoch: u64,
}

#[derive(Debug, Clone, Copy)]
struct PointWindow {
    started: Instant,
    points: u32,
}

/// Book-keeping of every budget; lives inside the fake's state lock.
#[derive(Debug)]
pub(super) struct RateBook {
    limits: Limits,
    core_used: u32,
    core_reset_epoch: u64,
    points: HashMap<Route, PointWindow>,
    errors: u64,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR_SECS: u64 = 3600;

pub(super) fn epoch_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// GitHub's cost of one request against the per-endpoint budget.
pub(super) fn points_for(method: &Method) -> u32 {
    if method == Method::GET || method == Method::HEAD {
        1
    } else {
        5
    }
}

impl RateBook {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            core_used: 0,
            core_reset_epoch: epoch_secs(SystemTime::now()) + HOUR_SECS,
            points: HashMap::new(),
            errors: 0,
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Decides whether a request may proceed and charges it if so.
    /// `/rate_limit` is free, as on GitHub.
    pub fn admit(&mut self, route: Route, method: &Method, in_flight: usize) -> Result<(), Refusal> {
        if route == Route::RateLimit {
            return Ok(());
        }
        self.roll_core_window();
        if self.limits.max_concurrent.is_some_and(|max| in_flight > max) {
            return Err(Refusal::Secondary { retry_after_secs: 60 });
        }
        if self.core_used >= self.limits.core_per_hour {
            return Err(Refusal::Primary {
                reset_epoch: self.core_reset_epoch,
            });
        }
        self.charge_points(route, method)?;
        self.core_used += 1;
        Ok(())
    }

    fn charge_points(&mut self, route: Route, method: &Method) -> Result<(), Refusal> {
        let Some(budget) = self.limits.points_per_minute_per_endpoint else {
            return Ok(());
        };
        let now = Instant::now();
        let window = self.points.entry(route).or_insert(PointWindow {
            started: now,
            points: 0,
        });
        if now.duration_since(window.started) >= MINUTE {
            *window = PointWindow {
                started: now,
                points: 0,
            };
        }
        let cost = points_for(method);
        if window.points + cost > budget {
            let left = MINUTE.saturating_sub(now.duration_since(window.started));
            return Err(Refusal::Secondary {
                retry_after_secs: left.as_secs().max(1),
            });
        }
        window.points += cost;
        Ok(())
    }

    fn roll_core_window(&mut self) {
        let now = epoch_secs(SystemTime::now());
        if now >= self.core_reset_epoch {
            self.core_used = 0;
            self.core_reset_epoch = now + HOUR_SECS;
        }
    }

    /// Gives back the core call charged to a request answered `304 Not Modified`.
    pub fn refund_core(&mut self) {
        self.core_used = self.core_used.saturating_sub(1);
    }

    /// Spends `n` core calls, as other clients of the same token would.
    pub fn spend_core(&mut self, n: u32) {
        self.roll_core_window();
        self.core_used = self.core_used.saturating_add(n).min(self.limits.core_per_hour);
    }

    pub fn snapshot(&mut self) -> RateSnapshot {
        self.roll_core_window();
        RateSnapshot {
            limit: self.limits.core_per_hour,
            remaining: self.limits.core_per_hour.saturating_sub(self.core_used),
            used: self.core_used,
            reset_epoch: self.core_reset_epoch,
        }
    }

    /// Counts one rate-limit answer (403/429), injected or real.
    pub fn count_error(&mut self) {
        self.errors += 1;
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_fires_the_given_number_of_times_then_disappears() {
        let mut rules = vec![FaultRule::new(Route::ListRunners, Fault::status(500)).times(2)];
        assert!(take_fault(&mut rules, Route::ListRunners, &Method::GET).is_some());
        assert!(take_fault(&mut rules, Route::GetRunner, &Method::GET).is_none());
        assert!(take_fault(&mut rules, Route::ListRunners, &Method::GET).is_some());
        assert!(rules.is_empty());
        assert!(take_fault(&mut rules, Route::ListRunners, &Method::GET).is_none());
    }

    #[test]
    fn a_rule_for_any_route_respects_its_method() {
        let mut rules = vec![FaultRule::new(Route::Any, Fault::Hang(Duration::ZERO)).method(Method::POST)];
        assert!(take_fault(&mut rules, Route::ListRuns, &Method::GET).is_none());
        assert!(take_fault(&mut rules, Route::GenerateJitConfig, &Method::POST).is_some());
    }

    #[test]
    fn the_points_budget_charges_five_for_writes_and_one_for_reads() {
        let mut book = RateBook::new(Limits {
            points_per_minute_per_endpoint: Some(11),
            ..Limits::default()
        });
        assert_eq!(book.admit(Route::GenerateJitConfig, &Method::POST, 1), Ok(()));
        assert_eq!(book.admit(Route::GenerateJitConfig, &Method::POST, 1), Ok(()));
        assert_eq!(book.admit(Route::ListRunners, &Method::GET, 1), Ok(()));
        assert!(matches!(
            book.admit(Route::GenerateJitConfig, &Method::POST, 1),
            Err(Refusal::Secondary { retry_after_secs }) if (1..=60).contains(&retry_after_secs)
        ));
        assert_eq!(book.admit(Route::GenerateJitConfig, &Method::GET, 1), Ok(()));
    }

    #[test]
    fn an_exhausted_core_budget_refuses_with_the_reset_time_but_rate_limit_stays_free() {
        let mut book = RateBook::new(Limits {
            core_per_hour: 1,
            ..Limits::default()
        });
        assert_eq!(book.admit(Route::GetJob, &Method::GET, 1), Ok(()));
        assert!(matches!(
            book.admit(Route::GetJob, &Method::GET, 1),
            Err(Refusal::Primary { .. })
        ));
        assert_eq!(book.admit(Route::RateLimit, &Method::GET, 1), Ok(()));
        assert_eq!(book.snapshot().remaining, 0);
    }

    #[test]
    fn too_many_concurrent_requests_are_refused() {
        let mut book = RateBook::new(Limits {
            max_concurrent: Some(2),
            ..Limits::default()
        });
        assert_eq!(book.admit(Route::GetJob, &Method::GET, 2), Ok(()));
        assert!(book.admit(Route::GetJob, &Method::GET, 3).is_err());
    }
}
