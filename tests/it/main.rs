//! The one integration-test program (one binary links faster than many).
//! Tests drive the real `recsys` binary in a hermetic temp project:
//! cleared environment, fixed git identity and dates, fixed recsys clock
//! (serving tests also call the library's `app` directly with `oneshot`).

mod common;
mod ingest;
mod pipeline;
mod provenance;
mod serve;
mod store;
