//! Messages and stubs generated from `proto/modal.proto`: the subset of Modal's
//! `modal.client.ModalClient` API this project uses, written here from Modal's public
//! client sources (field numbers and names only). The client is always built; the server
//! trait only with the `server` feature, which the fake Modal enables and the service
//! does not, so the service's binary holds no server code.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("modal.client");
