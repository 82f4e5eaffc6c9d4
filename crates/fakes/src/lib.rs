//! Faithful in-process fakes of GitHub and of the GitHub Actions runner.
//!
//! The service under test only ever talks to GitHub through HTTP (REST calls
//! out, webhooks in) and to runners through the JIT config it hands them. The
//! fakes reproduce exactly that surface, following
//! `docs/github.md`: the same paths, bodies, status codes, headers,
//! signatures, id ranges and quirks (non-idempotent JIT registration, webhooks
//! that are never retried, `max-parallel` that webhooks do not reveal, runners
//! that take any matching job rather than "their" job).
//!
//! * [`github`] is an HTTP server on `127.0.0.1` that plays the GitHub REST API,
//!   delivers signed `workflow_job` webhooks and hosts a tiny stand-in for the
//!   Actions service that fake runners connect to.
//! * [`runner`] plays `run.sh --jitconfig …`: it decodes the JIT config, writes
//!   the runner files, connects, takes at most one job, reports it and exits.
//!
//! Tests, the simulator and the benchmarks use them; nothing here touches a
//! network beyond the addresses the caller gives it (normally loopback).

pub mod github;
pub mod modal;
pub mod runner;

/// Installs ring as the process-wide rustls provider (reqwest is built without a default
/// one); later calls are no-ops.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
