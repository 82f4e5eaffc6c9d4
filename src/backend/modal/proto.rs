//! Messages and stubs generated from `proto/modal.proto` (our own subset of Modal's API).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("modal.client");
