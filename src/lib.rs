//! recsys: a movie-recommendation service whose every answer is traceable
//! to the model, data and code behind it.
//!
//! The library holds all logic; `src/main.rs` only calls [`cli::main`].
//! See ARCHITECTURE.md for the module map and the on-disk layout.
//!
//! Only `cli` prints, and it writes stdout through a locked handle that
//! reports errors (a closed pipe is a quiet exit, not a panic): `println!`
//! is refused everywhere, `eprintln!` everywhere but `cli`.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[allow(clippy::print_stderr)]
pub mod cli;
pub mod dataset;
pub mod experiment;
pub mod failpoint;
pub mod fs_error;
pub mod ingest;
pub mod lineage;
pub mod mlflow;
pub mod model;
pub mod monitor;
pub mod movielens;
pub mod openlineage;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod segment;
pub mod serve;
pub mod simulate;
pub mod store;
pub mod stream;
pub mod text;
pub mod user_filter;
pub mod workspace;
