//! A deployment: a checked config, the verified models it names, their
//! provenance and the users table routing reads — everything one answer
//! needs, built off the request path and swapped in whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::{self, ConfigErrors, Router, RouterConfig, UserAttrs};
use super::metrics::{Metrics, ModelCounters};
use crate::model::{self, Model, ModelError};
use crate::segment::ServedBy;
use crate::store::{Digest, StoreError};
use crate::workspace::{Workspace, WorkspaceError};

/// Most ids in one answer.
pub(crate) const TOP_N: usize = 20;

/// Largest config.json read by default (`recsys serve --max-config-bytes`).
pub const DEFAULT_MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("read {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a regular file: refused (a config must be a file)")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is larger than {max} bytes (at least {size}): refused (raise --max-config-bytes if it is meant to be)"
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: {errors}")]
    Config { path: PathBuf, errors: ConfigErrors },
    #[error("{path}: model {name} is not registered (no such version in lineage.db)")]
    UnknownModel { path: PathBuf, name: String },
    #[error("{name} is a {kind}, not a model")]
    NotAModel { name: String, kind: String },
    #[error("{name} ({digest}): its bytes are neither in the work tree nor in the store")]
    ModelMissing { name: String, digest: Digest },
    #[error("{name}: {path} hashes to {actual}, but {name} is registered as {expected}")]
    DigestMismatch {
        name: String,
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("{name}: {path}: {source}")]
    BadModel {
        name: String,
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{name}: read {path}: {source}")]
    ReadModel {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lineage(#[from] crate::lineage::LineageError),
}

impl DeployError {
    /// A short, fixed name of the kind of error, for `/metrics`
    /// (`metrics::RELOAD_ERROR_KINDS`).
    pub fn kind(&self) -> &'static str {
        match self {
            DeployError::ReadConfig { .. } => "read",
            DeployError::NotAFile { .. } => "not_a_file",
            DeployError::TooLarge { .. } => "too_large",
            DeployError::Config { .. } => "invalid_config",
            DeployError::UnknownModel { .. } | DeployError::NotAModel { .. } => "unknown_model",
            DeployError::ModelMissing { .. } => "model_missing",
            DeployError::DigestMismatch { .. }
            | DeployError::BadModel { .. }
            | DeployError::ReadModel { .. } => "bad_model",
            DeployError::Lineage(_) => "lineage",
            DeployError::Store(_) => "store",
            DeployError::Workspace(_) => "workspace",
        }
    }
}

/// What a file type is called in an error.
fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Read a config file without ever blocking or reading without bound:
/// only a regular file (checked through symlinks before opening, opened
/// non-blocking so a FIFO swapped in between cannot hang the open, and
/// checked again on the open descriptor), of at most `max` bytes (a file
/// growing while read is cut at `max + 1` and refused).
pub(crate) fn read_config(path: &Path, max: u64) -> Result<Vec<u8>, DeployError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| DeployError::ReadConfig {
        path: path.into(),
        source,
    };
    let check = |m: &std::fs::Metadata| -> Result<(), DeployError> {
        if !m.file_type().is_file() {
            return Err(DeployError::NotAFile {
                path: path.into(),
                kind: file_kind(m.file_type()),
            });
        }
        if m.len() > max {
            return Err(DeployError::TooLarge {
                path: path.into(),
                size: m.len(),
                max,
            });
        }
        Ok(())
    };
    check(&std::fs::metadata(path).map_err(read_err)?)?;
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    check(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(DeployError::TooLarge {
            path: path.into(),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// One loaded, verified model version and where it came from.
pub struct Served {
    pub name: String,
    pub digest: Digest,
    pub model: Model,
    pub item_names: Vec<String>,
    /// The popularity answer, precomputed: the fallback must not fail.
    pub popular_body: axum::body::Bytes,
    pub popular_items: Vec<u32>,
    /// The attributes the model groups cold users by (empty: none), and
    /// each cohort's answer, precomputed like the popularity answer.
    pub cohort_attrs: Vec<crate::model::CohortAttr>,
    pub cohort_bodies: std::collections::HashMap<String, axum::body::Bytes>,
    pub dataset: Option<(String, Digest)>,
    pub train_run: Option<Digest>,
    pub code_commit: Option<String>,
    pub algorithm: String,
    pub counters: ModelCounters,
}

impl Served {
    /// The answer for a user the model does not know: their cohort's list
    /// when the model has cohorts and their attributes are known, else the
    /// popularity list.
    pub(crate) fn cold_body(&self, attrs: Option<&UserAttrs>) -> axum::body::Bytes {
        attrs
            .and_then(|a| {
                crate::model::cohort_key(
                    &self.cohort_attrs,
                    a.age,
                    a.gender.as_deref(),
                    a.occupation.as_deref(),
                )
            })
            .and_then(|k| self.cohort_bodies.get(&k))
            .unwrap_or(&self.popular_body)
            .clone()
    }

    /// Who answered, for the request log.
    pub(crate) fn served_by(&self, config_digest: &str) -> ServedBy {
        ServedBy {
            model: self.name.clone(),
            model_digest: self.digest.hex(),
            dataset: self
                .dataset
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
            dataset_digest: self.dataset.as_ref().map(|d| d.1.hex()).unwrap_or_default(),
            train_run: self.train_run.map(|r| r.hex()).unwrap_or_default(),
            code_commit: self.code_commit.clone().unwrap_or_default(),
            config_digest: config_digest.to_string(),
        }
    }

    /// Item indices as the comma-separated answer.
    pub fn body(&self, items: &[u32]) -> String {
        let mut s = String::with_capacity(items.len() * 24);
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(
                self.item_names
                    .get(*it as usize)
                    .map(String::as_str)
                    .unwrap_or(""),
            );
        }
        s
    }
}

/// A config with everything it names, ready to answer.
pub struct Deployment {
    pub config: RouterConfig,
    pub config_digest: Digest,
    pub config_hex: Arc<str>,
    pub models: Vec<Arc<Served>>,
    pub router: Router,
    pub users: Arc<HashMap<u64, UserAttrs>>,
    /// Things worth logging that did not stop the load.
    pub notes: Vec<String>,
}

impl Deployment {
    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }
}

/// Read `config_path`, check it, load and verify every model it names,
/// read the users tables of their training datasets, and store the config
/// as an object. Models in `reuse` (already verified, files unchanged since)
/// are taken as they are when name and registered digest still match.
/// The config is read by [`read_config`] (a regular file of at most
/// `max_config_bytes`).
pub fn load(
    ws: &Workspace,
    config_path: &Path,
    max_config_bytes: u64,
    reuse: &[Arc<Served>],
    metrics: &Metrics,
) -> Result<Deployment, DeployError> {
    metrics.config_reads.inc();
    let bytes = read_config(config_path, max_config_bytes)?;
    let cfg = config::parse(&bytes).map_err(|errors| DeployError::Config {
        path: config_path.into(),
        errors,
    })?;
    let mut notes = Vec::new();
    let mut models = Vec::new();
    for name in cfg.models() {
        let art = ws
            .lineage
            .artifact_by_name(&name)?
            .ok_or_else(|| DeployError::UnknownModel {
                path: config_path.into(),
                name: name.clone(),
            })?;
        if art.kind != "model" {
            return Err(DeployError::NotAModel {
                name,
                kind: art.kind,
            });
        }
        let reused = reuse
            .iter()
            .find(|m| m.name == name && m.digest == art.digest);
        let served = match reused {
            Some(m) => m.clone(),
            None => Arc::new(load_model(ws, &art, metrics)?),
        };
        models.push(served);
    }
    let index: HashMap<&str, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let router =
        Router::compile(&cfg, |n| index.get(n).copied()).ok_or_else(|| DeployError::Config {
            path: config_path.into(),
            errors: ConfigErrors(vec![config::ConfigProblem {
                path: "$".into(),
                message: "names a model that was not loaded".into(),
            }]),
        })?;
    let mut users: HashMap<u64, UserAttrs> = HashMap::new();
    let mut read_datasets = Vec::new();
    for m in &models {
        let Some((ds_name, ds_digest)) = &m.dataset else {
            continue;
        };
        if read_datasets.contains(ds_digest) {
            continue;
        }
        read_datasets.push(*ds_digest);
        match read_users(ws, ds_digest) {
            Ok(Some((u, skipped))) => {
                if skipped > 0 {
                    notes.push(format!(
                        "{ds_name}: users.csv has {skipped} unreadable row(s), skipped"
                    ));
                }
                for (id, a) in u {
                    users.entry(id).or_insert(a);
                }
            }
            Ok(None) => notes.push(format!(
                "{ds_name} has no users.csv: rules on user attributes match nobody from it"
            )),
            Err(e) => notes.push(format!(
                "{ds_name}: users table unreadable ({e}); rules on user attributes match nobody from it"
            )),
        }
    }
    let config_digest = crate::store::put_bytes(&ws.store, &bytes)?;
    Ok(Deployment {
        config: cfg,
        config_hex: Arc::from(config_digest.hex()),
        config_digest,
        models,
        router,
        users: Arc::new(users),
        notes,
    })
}

/// Where a model's bytes are read from: the work-tree copy when it exists,
/// else the store object.
pub(crate) fn model_source(ws: &Workspace, art: &crate::lineage::ArtifactRow) -> PathBuf {
    if let Some(p) = &art.path {
        let abs = ws.root().join(p);
        if abs.is_file() {
            return abs;
        }
    }
    ws.store.object_path(&art.digest)
}

fn load_model(
    ws: &Workspace,
    art: &crate::lineage::ArtifactRow,
    metrics: &Metrics,
) -> Result<Served, DeployError> {
    let name = art.name.clone();
    let path = model_source(ws, art);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DeployError::ModelMissing {
                name,
                digest: art.digest,
            });
        }
        Err(source) => return Err(DeployError::ReadModel { name, path, source }),
    };
    let actual = Digest::of(&bytes);
    if actual != art.digest {
        return Err(DeployError::DigestMismatch {
            name,
            path,
            expected: art.digest,
            actual,
        });
    }
    let (header, model) = model::load(&bytes[..]).map_err(|source| DeployError::BadModel {
        name: name.clone(),
        path: path.clone(),
        source,
    })?;
    let run = ws.lineage.run(&art.run)?;
    let mut dataset = trained_on(ws, &art.run)?;
    if dataset.is_none()
        && let Ok(d) = header.dataset_digest.parse::<Digest>()
        && let Some(a) = ws
            .lineage
            .artifacts_by_digest_prefix(&d.hex())?
            .into_iter()
            .find(|a| a.kind == "dataset")
    {
        dataset = Some((a.name, a.digest));
    }
    let popular_items = model.popular(TOP_N).to_vec();
    let mut served = Served {
        counters: metrics.for_model(&name),
        name,
        digest: art.digest,
        item_names: header.item_names,
        popular_body: axum::body::Bytes::new(),
        popular_items,
        cohort_attrs: model.cohort_attrs(),
        cohort_bodies: Default::default(),
        dataset,
        train_run: run.as_ref().map(|r| r.id),
        code_commit: run.as_ref().and_then(|r| r.git_commit.clone()),
        algorithm: model.algo().name().to_string(),
        model,
    };
    served.popular_body = axum::body::Bytes::from(served.body(&served.popular_items));
    served.cohort_bodies = served
        .model
        .cohort_sizes()
        .into_iter()
        .map(|(key, _)| {
            let items = served.model.cohort_popular(key, TOP_N);
            (
                key.to_string(),
                axum::body::Bytes::from(served.body(&items)),
            )
        })
        .collect();
    Ok(served)
}

/// The dataset a train run read (its first dataset input), by lineage.
pub(crate) fn trained_on(
    ws: &Workspace,
    run: &Digest,
) -> Result<Option<(String, Digest)>, crate::lineage::LineageError> {
    for (dir, input, digest) in ws.lineage.run_edges(run)? {
        if dir != "in" {
            continue;
        }
        if let Some(a) = ws.lineage.artifact_by_name(&input)?
            && a.kind == "dataset"
        {
            return Ok(Some((input, digest)));
        }
    }
    Ok(None)
}

/// The users table of a dataset directory artifact, when it has one.
#[allow(clippy::type_complexity)]
pub(crate) fn read_users(
    ws: &Workspace,
    dataset: &Digest,
) -> Result<Option<(HashMap<u64, UserAttrs>, usize)>, String> {
    let manifest = ws.load_manifest(dataset).map_err(|e| e.to_string())?;
    let Some(entry) = manifest
        .entries
        .iter()
        .find(|e| e.path == crate::dataset::USERS_CSV)
    else {
        return Ok(None);
    };
    let p = ws
        .store
        .verified_path(&entry.digest)
        .map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
    let (rows, skipped) =
        crate::dataset::read_users_lenient(Path::new(crate::dataset::USERS_CSV), &bytes)
            .map_err(|e| e.to_string())?;
    let users = rows
        .into_iter()
        .map(|u| {
            let attrs = UserAttrs {
                age: u.age,
                gender: u.gender,
                occupation: u.occupation,
            };
            (u.user, attrs)
        })
        .collect();
    Ok(Some((users, skipped)))
}

/// Stat stamps of everything a set of model versions is read from, for the
/// watcher: (registered digest, stamp of the file the bytes come from).
pub(crate) fn model_fingerprint(ws: &Workspace, names: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in names {
        let entry = match ws.lineage.artifact_by_name(n) {
            Ok(Some(a)) => {
                let p = model_source(ws, &a);
                format!("{} {}", a.digest, stamp(&p))
            }
            Ok(None) => "unregistered".into(),
            Err(e) => format!("lineage error {e}"),
        };
        out.push((n.clone(), entry));
    }
    out
}

/// What identifies a file's content without reading it: type, permission
/// bits, device, inode, size, mtime and ctime (a `chmod` changes ctime),
/// through symlinks; or the error that hides them. `stat` never blocks on
/// a FIFO or a device.
pub(crate) fn stamp(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{}:{:o}:{}:{}:{}:{}.{}:{}.{}",
            p.display(),
            m.mode(),
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ),
        Err(e) => format!("{}:error {:?}", p.display(), e.kind()),
    }
}
