//! Pipeline steps on top of the workspace: import a dataset, train,
//! evaluate and reproduce a model. Each step is a run with a run record.
//!
//! This module owns turning datasets into models and back into evidence:
//! it reads datasets and models only through the store (by digest, after
//! verifying their bytes), writes outputs only through
//! [`Workspace::record_run`], and never prints or reads the environment —
//! the CLI formats the reports it returns.

mod chain;
mod evaluate;
mod import;
mod promote;
mod reproduce;
mod train;

use std::fs;
use std::path::Path;

pub use chain::{ChainOptions, ChainReport, Step, run_chain};
pub use evaluate::{EvalReport, EvaluateOptions, Mode, evaluate, latest_evaluation};
pub use import::{ImportReport, import_movielens};
pub use promote::{Promotion, check_promotable, promote_if_better};
pub use reproduce::{ReproduceReport, reproduce};
pub use train::{
    DEFAULT_SEED, DEFAULT_TEST_FRACTION, TrainOptions, TrainReport, TrainSettings,
    parse_duration_ms, train,
};

use crate::dataset::DatasetError;
use crate::lineage::{ArtifactRef, ArtifactRow};
use crate::model::{Header, Model, ModelError};
use crate::movielens::MovieLensError;
use crate::store::{Digest, StoreError};
use crate::workspace::{Kind, Workspace, WorkspaceError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    MovieLens(#[from] MovieLensError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    /// `error` is not a `#[source]`: the message already includes it.
    #[error("{name}: {error}")]
    Model { name: String, error: ModelError },
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    #[error("{name} is a {actual}, not a {expected}")]
    WrongKind {
        name: String,
        actual: String,
        expected: &'static str,
    },
    #[error(
        "{path} does not match {name}: it hashes to {actual}, the registered version is {expected}; \
         the file was changed after it was registered and is refused"
    )]
    ModifiedFile {
        path: String,
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "{path} exists but is not a registered version (left over from an interrupted run?); \
         move it away or `recsys add` it, then retry"
    )]
    Occupied { path: String },
    #[error(transparent)]
    UsersWhere(#[from] crate::user_filter::FilterError),
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for PipelineError {
    fn from(e: StoreError) -> Self {
        PipelineError::Workspace(WorkspaceError::Store(e))
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PipelineError + 'a {
    move |source| {
        PipelineError::Io(crate::fs_error::FsError {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The run-record form of a registered artifact.
pub(crate) fn artifact_ref(a: &ArtifactRow) -> ArtifactRef {
    ArtifactRef {
        digest: a.digest,
        kind: a.kind.clone(),
        name: a.name.clone(),
        size: a.size,
        files: a.files,
        path: a.path.clone(),
    }
}

/// Find a registered artifact of `kind` by name, digest (prefix) or path.
pub fn find(ws: &Workspace, q: &str, kind: Kind) -> Result<ArtifactRow> {
    let a = ws.find_artifact(q)?;
    if a.kind != kind.as_str() {
        return Err(PipelineError::WrongKind {
            name: a.name,
            actual: a.kind,
            expected: kind.as_str(),
        });
    }
    Ok(a)
}

/// The registered artifact with exactly this digest, preferring `kind`.
pub(crate) fn find_by_digest(ws: &Workspace, d: &Digest) -> Result<Option<ArtifactRow>> {
    let hits = ws
        .lineage
        .artifacts_by_digest_prefix(&d.hex())
        .map_err(WorkspaceError::from)?;
    Ok(hits.into_iter().find(|a| a.digest == *d))
}

/// Read a registered model: the work-tree copy when present, else the
/// store's object, refusing bytes whose digest is not the registered one.
pub(crate) fn load_model(ws: &Workspace, art: &ArtifactRow) -> Result<(Header, Model)> {
    let local = art
        .path
        .as_ref()
        .map(|p| (p.clone(), ws.root().join(p)))
        .filter(|(_, abs)| abs.is_file());
    let (label, bytes) = match local {
        Some((rel, abs)) => (rel, fs::read(&abs).map_err(io_err("read", &abs))?),
        None => {
            let p = ws.store.verified_path(&art.digest)?;
            (
                format!("store object {}", art.digest),
                fs::read(&p).map_err(io_err("read", &p))?,
            )
        }
    };
    let actual = Digest::of(&bytes);
    if actual != art.digest {
        return Err(PipelineError::ModifiedFile {
            path: label,
            name: art.name.clone(),
            expected: art.digest,
            actual,
        });
    }
    crate::model::load(&bytes[..]).map_err(|source| PipelineError::Model {
        name: art.name.clone(),
        error: source,
    })
}

/// The code version as one header string: project commit (`+dirty` when
/// the work tree differed) and recsys's version and build commit.
fn code_string(ws: &Workspace) -> Result<String> {
    let c = ws.code_version()?;
    Ok(format!(
        "{}{} (recsys {} build {})",
        c.git_commit.as_deref().unwrap_or("uncommitted"),
        if c.dirty { "+dirty" } else { "" },
        c.recsys_version,
        c.build_commit
    ))
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
