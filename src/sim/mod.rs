//! The simulator and the benchmarks: the real service between the fake GitHub and the fake
//! Modal, with configurable latencies, limits and arrival patterns, and no credentials.

pub mod bench;
pub mod service;
pub mod simulate;
pub mod world;
