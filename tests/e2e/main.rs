//! End-to-end tests: the real service binary on a random port, against the in-process fake
//! GitHub, running the fake runner in local sandboxes.

mod helpers;
mod lifecycle;
mod modal;
mod reliability;
mod scale;
mod simulator;
