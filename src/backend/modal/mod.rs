//! The Modal backend (in progress).
pub mod client;
pub mod proto;
