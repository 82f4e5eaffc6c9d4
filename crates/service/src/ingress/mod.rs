//! HTTP ingress: verifies, parses, filters and records webhook deliveries, and serves the
//! health, readiness, metrics and status endpoints. It never calls GitHub or a backend: GitHub drops
//! a delivery it has waited 10 s for and never retries it, so the answer must come from the
//! store alone.

mod event;
mod handler;
mod server;
pub mod signature;
mod status_page;
mod throttle;

pub use event::{EventError, parse as parse_event};
pub use handler::{Ingress, router, router_without_webhooks};
pub use server::{ServerContext, ServerLimits, serve};
pub use status_page::{StatusPage, router as status_router};
pub use throttle::{WARN_INTERVAL, WarnThrottle};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
