//! What a request id says when the index does not hold it: the answer's
//! log line never reached the disk (a `kill -9` of the server loses the
//! batch in flight), but the id names the config that was deployed and the
//! model of it that answered ([`super::request_id`]), and the config is a
//! store object from before the first answer carrying it left. From those,
//! `recsys lineage <id>` names model, dataset, train run, code and config
//! as for a logged answer; only user, items, route, status and latency are
//! unknown.

use serde::Serialize;

use super::config;
use super::deploy::{DEFAULT_MAX_CONFIG_BYTES, trained_on};
use super::request_id::{self, Decoded, Slot};
use crate::lineage::LineageError;
use crate::segment::ServedBy;
use crate::store::{Digest, ObjectStore, StoreError};
use crate::workspace::{ArtifactLineage, Workspace, WorkspaceError};

#[derive(Debug, thiserror::Error)]
pub enum UnloggedError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Lineage(#[from] LineageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("list {path}: {source}")]
    List {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fields of an answer only its log line holds.
pub(crate) const UNKNOWN_WITHOUT_LOG: [&str; 5] =
    ["user", "items", "route", "status", "latency_us"];

/// An answer known from its id alone.
#[derive(Debug, Clone, Serialize)]
pub struct UnloggedAnswer {
    pub id: String,
    /// Always false: no log line of this answer is indexed (it never
    /// reached the disk, or is on another machine).
    pub logged: bool,
    /// When it was answered (Unix ms, from the id).
    pub time: i64,
    /// False when no model answered (a rejection, `/health`, a 404...).
    pub recommendation: bool,
    /// The first 8 hex digits of the config's digest, as the id carries them.
    pub config_prefix: String,
    /// The config's full digest, when found in the store or the index.
    pub config_digest: Option<String>,
    /// The model's index in the config (`RouterConfig::models()`).
    pub slot: Option<usize>,
    /// What answered, as the server would have logged it.
    pub served: Option<ServedBy>,
    pub model: Option<ArtifactLineage>,
    pub dataset: Option<ArtifactLineage>,
    pub restore: Vec<String>,
    /// What only the log line held: unknown for this answer.
    pub unknown: Vec<&'static str>,
    pub notes: Vec<String>,
}

impl UnloggedAnswer {
    /// Whether the id was resolved as far as an id can be: the config
    /// found and, for a recommendation, the model named.
    pub fn resolved(&self) -> bool {
        self.config_digest.is_some() && (!self.recommendation || self.served.is_some())
    }
}

/// A config the id's prefix may name.
struct Candidate {
    digest: Digest,
    models: Option<Vec<String>>,
}

/// When request-log lines were removed on purpose (`recsys forget`,
/// `gc --requests-older-than`), an id missing from the index may be one of
/// them: say so, with the runs, instead of only blaming a crash.
fn erasure_note(ws: &Workspace) -> Result<Option<String>, UnloggedError> {
    let mut forgets = std::collections::BTreeSet::new();
    let mut retentions = std::collections::BTreeSet::new();
    for (e, run) in ws.lineage.erased()? {
        if e.what != "segment" {
            continue;
        }
        if e.replaced_by.is_some() {
            forgets.insert(run.short());
        } else {
            retentions.insert(run.short());
        }
    }
    let mut how = Vec::new();
    if !forgets.is_empty() {
        let runs: Vec<String> = forgets.into_iter().map(|r| r.to_string()).collect();
        how.push(format!("`recsys forget` (run {})", runs.join(", ")));
    }
    if !retentions.is_empty() {
        let runs: Vec<String> = retentions.into_iter().map(|r| r.to_string()).collect();
        how.push(format!("retention (run {})", runs.join(", ")));
    }
    Ok((!how.is_empty()).then(|| {
        format!(
            "not in the request log: its line never reached the disk, or {} removed it",
            how.join(" or ")
        )
    }))
}

/// Explain an id of ours that the index does not hold; `None` when it is
/// not one of ours (not a UUIDv8 of the RFC variant).
pub fn explain(ws: &Workspace, id: &uuid::Uuid) -> Result<Option<UnloggedAnswer>, UnloggedError> {
    let Some(d) = request_id::decode(id) else {
        return Ok(None);
    };
    let mut notes = erasure_note(ws)?.into_iter().collect::<Vec<_>>();
    let logged_served = ws.lineage.served_with_config_prefix(&d.config_hex())?;
    let candidates = candidates(ws, &d, &logged_served)?;
    let slot = match d.slot {
        Slot::Model(i) => Some(i),
        _ => None,
    };
    let mut out = UnloggedAnswer {
        id: id.hyphenated().to_string(),
        logged: false,
        time: d.time_ms as i64,
        recommendation: d.slot != Slot::None,
        config_prefix: d.config_hex(),
        config_digest: None,
        slot,
        served: None,
        model: None,
        dataset: None,
        restore: Vec::new(),
        unknown: UNKNOWN_WITHOUT_LOG.to_vec(),
        notes: Vec::new(),
    };
    // Only configs that parse (any object may share 32 bits of digest).
    let configs: Vec<&Candidate> = candidates.iter().filter(|c| c.models.is_some()).collect();
    let chosen: Option<&Candidate> = match configs.len() {
        1 => Some(configs[0]),
        0 => {
            // Known from the index only (its object not in this store).
            let named: Vec<&Candidate> = candidates.iter().collect();
            if named.len() == 1 {
                notes.push(format!(
                    "config {} is not in the local store{}",
                    named[0].digest,
                    pull_hint(ws)
                ));
                Some(named[0])
            } else {
                None
            }
        }
        _ => {
            notes.push(format!(
                "{} stored configs start with {}: {}",
                configs.len(),
                d.config_hex(),
                configs
                    .iter()
                    .map(|c| c.digest.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            None
        }
    };
    let Some(cfg) = chosen else {
        if candidates.is_empty() {
            notes.push(format!(
                "no config starting with {} is in this project's store or index{}",
                d.config_hex(),
                pull_hint(ws)
            ));
        }
        out.notes = notes;
        return Ok(Some(out));
    };
    out.config_digest = Some(cfg.digest.hex());
    let model = match (d.slot, &cfg.models) {
        (Slot::None, _) => {
            notes.push(format!(
                "not a recommendation: no model answered it (a rejection, /health, /metrics or \
                 another path), while config {} was deployed",
                cfg.digest.short()
            ));
            None
        }
        (Slot::Model(i), Some(models)) => match models.get(i) {
            Some(m) => Some(m.clone()),
            None => {
                notes.push(format!(
                    "config {} names {} model(s), but the id says model {i} answered",
                    cfg.digest.short(),
                    models.len()
                ));
                None
            }
        },
        (Slot::Many, Some(models)) => {
            notes.push(format!(
                "one of the config's models after the 62nd answered: {}",
                models.get(62..).unwrap_or_default().join(", ")
            ));
            None
        }
        (_, None) => {
            // The config's bytes are not here; the index may name one model.
            let mut models: Vec<&ServedBy> = logged_served
                .iter()
                .filter(|s| s.config_digest == cfg.digest.hex())
                .collect();
            models.dedup_by(|a, b| a.model == b.model);
            match models.as_slice() {
                [one] => Some(one.model.clone()),
                _ => None,
            }
        }
    };
    if let Some(name) = model {
        let served = match logged_served
            .iter()
            .find(|s| s.config_digest == cfg.digest.hex() && s.model == name)
        {
            // What the server logged (or announced) for this config.
            Some(s) => Some(s.clone()),
            None => served_by_lineage(ws, &name, &cfg.digest, &mut notes)?,
        };
        if let Some(s) = &served {
            let e = ws.explain_served(s)?;
            out.model = e.model;
            out.dataset = e.dataset;
            out.restore = e.restore;
            notes.extend(e.notes);
        }
        out.served = served;
    }
    if out.recommendation {
        notes.push(
            "its user and items are unknown: this answer's log line never reached the disk \
             (the server was stopped before writing it, or its log queue was full)"
                .into(),
        );
    }
    out.notes = notes;
    Ok(Some(out))
}

/// " (`recsys pull` may bring it)" when a remote is configured.
fn pull_hint(ws: &Workspace) -> &'static str {
    if ws.config.remotes.is_empty() {
        ""
    } else {
        " (`recsys pull` may bring it from the remote)"
    }
}

/// Stored objects and indexed configs whose digest starts with the id's
/// prefix; the stored ones read as configs when they parse.
fn candidates(
    ws: &Workspace,
    d: &Decoded,
    logged: &[ServedBy],
) -> Result<Vec<Candidate>, UnloggedError> {
    let hex = d.config_hex();
    let mut out: Vec<Candidate> = Vec::new();
    let dir = ws.store.root().join(&hex[..2]);
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(|source| UnloggedError::List {
                    path: dir.clone(),
                    source,
                })?;
                let name = e.file_name();
                let Some(rest) = name.to_str() else { continue };
                if !rest.starts_with(&hex[2..]) {
                    continue;
                }
                let Ok(digest) = format!("{}{rest}", &hex[..2]).parse::<Digest>() else {
                    continue;
                };
                out.push(Candidate {
                    digest,
                    models: stored_config_models(ws, &digest)?,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(UnloggedError::List { path: dir, source }),
    }
    for s in logged {
        if s.config_digest.starts_with(&hex)
            && let Ok(digest) = s.config_digest.parse::<Digest>()
            && !out.iter().any(|c| c.digest == digest)
        {
            out.push(Candidate {
                digest,
                models: None,
            });
        }
    }
    out.sort_by_key(|c| c.digest);
    Ok(out)
}

/// The models a stored config names, in slot order; `None` when the
/// object is not a config (or too large to be one, or damaged).
fn stored_config_models(ws: &Workspace, d: &Digest) -> Result<Option<Vec<String>>, StoreError> {
    if ws
        .store
        .size_of(d)
        .is_none_or(|n| n > DEFAULT_MAX_CONFIG_BYTES)
    {
        return Ok(None);
    }
    let Some(bytes) = ws.store.get(d)? else {
        return Ok(None);
    };
    if Digest::of(&bytes) != *d {
        return Ok(None);
    }
    Ok(config::parse(&bytes).ok().map(|c| c.models()))
}

/// What answered, from lineage, as the server computes it when it loads
/// a model (`deploy::load`).
fn served_by_lineage(
    ws: &Workspace,
    name: &str,
    config: &Digest,
    notes: &mut Vec<String>,
) -> Result<Option<ServedBy>, UnloggedError> {
    let Some(art) = ws.lineage.artifact_by_name(name)? else {
        notes.push(format!(
            "the config names {name}, which this lineage.db does not know{}",
            pull_hint(ws)
        ));
        return Ok(None);
    };
    let run = ws.lineage.run(&art.run)?;
    let dataset = trained_on(ws, &art.run)?;
    Ok(Some(ServedBy {
        model: art.name,
        model_digest: art.digest.hex(),
        dataset: dataset.as_ref().map(|d| d.0.clone()).unwrap_or_default(),
        dataset_digest: dataset.map(|d| d.1.hex()).unwrap_or_default(),
        train_run: run.as_ref().map(|r| r.id.hex()).unwrap_or_default(),
        code_commit: run.and_then(|r| r.git_commit).unwrap_or_default(),
        config_digest: config.hex(),
    }))
}
