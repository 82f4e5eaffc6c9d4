//! The scale-set job source (`JOB_SOURCE=scaleset`): instead of receiving webhooks, the
//! service registers a GitHub runner scale set and long-polls the Actions service for job
//! messages, the way GitHub's own autoscaler does. The protocol, with its sources and open
//! questions, is `/work/shared/docs/scaleset-contract.md` ("contract §n" below).
//!
//! - `url`: the config URL of a scope (repository, organisation, enterprise) on
//!   github.com, GHE.com or a GitHub Enterprise Server;
//! - `client`: the auth chain and every Actions-service call, with typed errors;
//! - `types`: the JSON shapes;
//! - `error`: what a failed call means for the caller.

mod client;
mod error;
mod types;
mod url;

pub use client::{ScaleSetClient, ScaleSetClientConfig};
pub use error::ScaleSetError;
pub use types::{Agent, JobMessage, QueueMessage, ScaleSet, ScaleSetJit, ScaleSetLabel, Session, Statistics};
pub use url::{config_url, web_base};

#[cfg(test)]
mod tests;
