//! Experiments: versioned definitions, the routing rule they own in
//! `config.json`, and the A/B report.
//!
//! - [`stats`]: the statistics (pure functions on per-user sums).
//! - [`define`]: `create`/`start`/`stop`/`list`/`show`. An experiment is a
//!   chain of run records (kind `experiment`) in the store, indexed by
//!   lineage.db; the newest says its state. Each one carries the whole
//!   definition (arms, salt, rule, metric, guardrails, planned size,
//!   periods), so the store alone says which experiment a user was in, in
//!   which arm and why.
//! - [`report`]: per-arm figures, effect, SRM, power, guardrails and the
//!   decision, from the monitor's tables (conversions are the feedback
//!   join's `converted_10`; nothing here recomputes them).
//! - [`plot`]: the SVG of cumulative conversion per arm.
//! - [`rollout`]: the canary controller (`recsys rollout`): config.json
//!   rewritten step by step while guards read from the monitor hold, rolled
//!   back (and a webhook posted) on the first failure.
//!
//! The core prints nothing and reads no environment.

pub(crate) mod define;
pub(crate) mod plot;
pub(crate) mod report;
pub(crate) mod rollout;
pub mod stats;

pub(crate) use define::ExperimentState;

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("bad experiment name {0:?}: use 1-64 letters, digits, `_`, `-`, `.`")]
    BadName(String),
    #[error("experiment {0} already exists (names are never reused); pick another name")]
    Duplicate(String),
    #[error("no experiment named {0}; `recsys experiment list` shows them")]
    Unknown(String),
    #[error("model {0} does not exist in this project (`recsys ls --kind model` lists them)")]
    NoModel(String),
    #[error("experiment {name} would overlap running experiment {other} on the same users ({why})")]
    Overlap {
        name: String,
        other: String,
        why: String,
    },
    #[error("experiment {name} is already {state}")]
    State { name: String, state: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error("config {path}: {reason}; nothing was changed")]
    Config { path: String, reason: String },
    #[error(
        "experiment {0} has no exposures in the monitor database: no answer of its arms \
         has a closed window yet (is `recsys monitor` reading this server's requests?)"
    )]
    NoExposures(String),
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
    #[error(transparent)]
    Lineage(#[from] crate::lineage::LineageError),
    #[error(transparent)]
    Monitor(#[from] crate::monitor::MonitorError),
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
}

pub type Result<T, E = ExperimentError> = std::result::Result<T, E>;
