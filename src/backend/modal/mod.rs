//! The Modal backend (in progress).
pub mod proto;
