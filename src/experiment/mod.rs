//! Experiments: the statistics of the A/B report.
//!
//! - [`stats`]: the statistics (pure functions on per-user sums).

pub mod stats;
