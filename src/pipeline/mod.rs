//! Pipeline steps on top of the workspace: import a dataset, train,
//! evaluate and reproduce a model. Each step is a run with a run record.
//!
//! This module owns turning datasets into models and back into evidence:
//! it reads datasets and models only through the store (by digest, after
//! verifying their bytes), writes outputs only through
//! [`Workspace::record_run`], and never prints or reads the environment —
//! the CLI formats the reports it returns.

mod evaluate;
mod import;
mod promote;
mod reproduce;
mod train;

use std::fs;
use std::path::{Path, PathBuf};

pub use evaluate::{EvalReport, EvaluateOptions, Mode, evaluate, latest_evaluation};
pub use import::{ImportReport, import_movielens};
pub use promote::{Promotion, check_promotable, promote_if_better};
pub use reproduce::{ReproduceReport, reproduce};
pub use train::{
    DEFAULT_SEED, DEFAULT_TEST_FRACTION, TrainOptions, TrainReport, TrainSettings, train,
};

use crate::dataset::{Dataset, DatasetError};
use crate::lineage::{ArtifactRef, ArtifactRow};
use crate::model::{Header, Model, ModelError};
use crate::movielens::MovieLensError;
use crate::progress::Progress;
use crate::store::{Digest, StoreError};
use crate::workspace::{Added, Kind, Output, RunSpec, Workspace, WorkspaceError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    MovieLens(#[from] MovieLensError),
    /// `error` is not a `#[source]`: the message already includes it.
    #[error("{name}: {error}")]
    Model { name: String, error: ModelError },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    move |source| PipelineError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The run-record form of a registered artifact.
pub fn artifact_ref(a: &ArtifactRow) -> ArtifactRef {
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
pub fn find_by_digest(ws: &Workspace, d: &Digest) -> Result<Option<ArtifactRow>> {
    let hits = ws
        .lineage
        .artifacts_by_digest_prefix(&d.hex())
        .map_err(WorkspaceError::from)?;
    Ok(hits.into_iter().find(|a| a.digest == *d))
}

/// Write `ds` as the next `data/dataset_N/` and record it as the output of
/// a run described by `spec` (`import`, `ingest`, ...). The directory is
/// written under a temporary name and renamed into place, so a crash never
/// leaves a half-written `dataset_N`.
pub fn record_dataset(
    ws: &Workspace,
    ds: &Dataset,
    spec: RunSpec,
    progress: &dyn Progress,
) -> Result<Added> {
    let name = ws.next_name(Kind::Dataset)?;
    let data = ws.root().join("data");
    fs::create_dir_all(&data).map_err(io_err("create", &data))?;
    let dir = data.join(&name);
    if fs::symlink_metadata(&dir).is_ok() {
        return Err(PipelineError::Occupied {
            path: format!("data/{name}"),
        });
    }
    // 0777 less the umask, as `mkdir` makes it (tempfile's default is 0700).
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.recsys-tmp-"))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .tempdir_in(&data)
        .map_err(io_err("create temp dir in", &data))?;
    ds.write_dir(tmp.path())?;
    // The same bytes registered before (the same files imported twice):
    // that version, not a new name for it.
    let digest = staged_digest(tmp.path())?;
    if let Some(a) = ws
        .lineage
        .artifacts_by_digest_prefix(&digest.hex())
        .map_err(WorkspaceError::from)?
        .into_iter()
        .find(|a| a.digest == digest && a.kind == Kind::Dataset.as_str())
    {
        return Ok(Added {
            path: a.path.clone().unwrap_or_default(),
            pointer: a
                .path
                .as_ref()
                .map(|p| format!("{p}{}", crate::workspace::pointer::EXT))
                .unwrap_or_default(),
            kind: Kind::Dataset,
            name: a.name,
            digest: a.digest,
            size: a.size,
            files: a.files,
            run: Some(a.run),
            unchanged: true,
        });
    }
    let tmp = tmp.keep();
    fs::rename(&tmp, &dir).map_err(io_err("rename into place", &dir))?;
    let out = Output {
        path: dir.clone(),
        kind: Some(Kind::Dataset),
        name: Some(name),
    };
    match ws.record_run(spec, &[out], progress) {
        Ok((_, mut added)) => added.pop().ok_or_else(|| {
            PipelineError::Invalid("recording the dataset returned no artifact".into())
        }),
        Err(e) => {
            // Not registered: do not leave an untracked dataset_N behind.
            let _ = fs::remove_dir_all(&dir);
            Err(e.into())
        }
    }
}

/// The digest a staged dataset directory will have once added: the
/// manifest of its files (flat, written without execute bits).
fn staged_digest(dir: &Path) -> Result<crate::store::Digest> {
    let mut entries = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let p = e.path();
        let size = e.metadata().map_err(io_err("stat", &p))?.len();
        entries.push(crate::store::manifest::Entry {
            path: e.file_name().to_string_lossy().into_owned(),
            digest: crate::store::hash_file(&p)?,
            size,
            mode: 0o644,
        });
    }
    Ok(crate::store::manifest::Manifest::new(entries).digest())
}

/// Read a registered dataset from the store (verified by digest); it need
/// not be checked out. Errors name the files by the artifact's work-tree
/// path (or its name).
pub fn load_dataset(ws: &Workspace, art: &ArtifactRow) -> Result<Dataset> {
    let manifest = ws.load_manifest(&art.digest)?;
    let label = PathBuf::from(art.path.clone().unwrap_or_else(|| art.name.clone()));
    let mut files = std::collections::BTreeMap::new();
    for e in &manifest.entries {
        let p = ws.store.verified_path(&e.digest)?;
        files.insert(e.path.clone(), fs::read(&p).map_err(io_err("read", &p))?);
    }
    for need in [
        crate::dataset::EVENTS_CSV,
        crate::dataset::REQUESTS_CSV,
        crate::dataset::USERS_CSV,
        crate::dataset::MOVIES_CSV,
        crate::dataset::DATASET_JSON,
    ] {
        if !files.contains_key(need) {
            return Err(PipelineError::Invalid(format!(
                "{} is not a dataset directory: it has no {need}",
                art.name
            )));
        }
    }
    Ok(Dataset::from_files(&label, |name| {
        files.remove(name).unwrap_or_default()
    })?)
}

/// Read a registered model: the work-tree copy when present, else the
/// store's object, refusing bytes whose digest is not the registered one.
pub fn load_model(ws: &Workspace, art: &ArtifactRow) -> Result<(Header, Model)> {
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
