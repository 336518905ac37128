//! The one integration-test program (one binary links faster than many).
//! Every test drives the real `recsys` binary in a hermetic temp project:
//! cleared environment, fixed git identity and dates, fixed recsys clock.

mod common;
mod ingest;
mod pipeline;
mod store;
