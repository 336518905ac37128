//! Monitoring: the feedback join between served answers and what users
//! did next, and the database it writes to.
//!
//! - [`join`]: the pure, synchronous state machine (answers and stream
//!   events in, closed windows and counters out; event time, a watermark,
//!   state evicted as windows close).
//!
//! This module prints nothing and reads no environment.

pub mod join;

pub use join::{Answer, Counters, Join, JoinConfig, Marks, Outcome, Output, Source, StreamMatch};
