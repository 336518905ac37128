//! The one integration-test program (one binary links faster than many).
//! Tests drive the real `recsys` binary in a hermetic temp project:
//! cleared environment, fixed git identity and dates, fixed recsys clock
//! (serving tests also call the library's `app` directly with `oneshot`).

mod cli;
mod common;
mod erasure;
mod experiment;
mod ingest;
mod mlflow;
mod models;
mod monitor;
mod movielens;
mod openlineage;
mod pipeline;
mod provenance;
mod rollout;
mod s3;
mod serve;
mod serve_limits;
mod simulate;
mod store;
mod torture;
