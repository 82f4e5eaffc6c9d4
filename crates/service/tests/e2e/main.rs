//! End-to-end tests: the real service on a random port against the fake GitHub and the fake
//! Modal. It runs in this process (through `Application::build`) unless a test must kill or
//! restart its process.

mod budget;
mod check;
mod costs_and_pools;
mod hardening;
mod helpers;
mod job_ends;
mod lifecycle;
mod modal;
mod reaping;
mod reliability;
mod replicas;
mod sandbox_features;
mod scale;
mod scaleset;
mod scopes;
mod status_page;
mod upstream;
