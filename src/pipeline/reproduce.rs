//! `recsys reproduce`: retrain a registered model from its recorded dataset
//! bytes and settings, and compare content digests.

use serde::Serialize;

use super::train::{TrainSettings, fit};
use super::{PipelineError, Result, find, find_by_digest, load_model};
use crate::lineage::ArtifactRow;
use crate::model::{self, Header};
use crate::store::Digest;
use crate::workspace::Workspace;
use crate::workspace::{Kind, WorkspaceError};

#[derive(Debug, Clone, Serialize)]
pub struct ReproduceReport {
    pub model: String,
    pub dataset: String,
    pub dataset_digest: Digest,
    pub settings: TrainSettings,
    /// Content digest of the registered model.
    pub recorded: String,
    /// Content digest of the model retrained now.
    pub retrained: String,
    #[serde(rename = "match")]
    pub matches: bool,
    pub fit_seconds: f64,
}

/// Retrain `model` exactly as its train run did. The dataset is read from
/// the store by the digest the run recorded, so it need not be checked
/// out; a missing object is reported with its digest.
pub fn reproduce(ws: &Workspace, model_q: &str) -> Result<ReproduceReport> {
    let art = find(ws, model_q, Kind::Model)?;
    let run = ws
        .lineage
        .run(&art.run)
        .map_err(WorkspaceError::from)?
        .filter(|r| r.kind == "train")
        .ok_or_else(|| {
            PipelineError::Invalid(format!(
                "{} was not made by `recsys train`: there is no recorded training to repeat",
                art.name
            ))
        })?;
    let settings: TrainSettings = serde_json::from_value(run.params).map_err(|e| {
        PipelineError::Invalid(format!(
            "the train run {} of {} has unreadable parameters: {e}",
            art.run.short(),
            art.name
        ))
    })?;
    let (header, model) = load_model(ws, &art)?;
    let inputs: Vec<Digest> = ws
        .lineage
        .run_edges(&art.run)
        .map_err(WorkspaceError::from)?
        .into_iter()
        .filter(|(dir, _, _)| dir == "in")
        .map(|(_, _, d)| d)
        .collect();
    let ds_digest: Digest = header.dataset_digest.parse().map_err(|_| {
        PipelineError::Invalid(format!(
            "{}'s header names no dataset digest ({:?})",
            art.name, header.dataset_digest
        ))
    })?;
    if !inputs.contains(&ds_digest) {
        return Err(PipelineError::Invalid(format!(
            "{}'s header names dataset {ds_digest}, but its train run read {}",
            art.name,
            inputs
                .iter()
                .map(Digest::short)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let ds_art = match find_by_digest(ws, &ds_digest)? {
        Some(a) => a,
        // Not registered under a name here: still readable from the store.
        None => ArtifactRow {
            name: ds_digest.short(),
            kind: "dataset".into(),
            digest: ds_digest,
            size: 0,
            files: None,
            path: None,
            created: 0,
            git_commit: None,
            dirty: false,
            recsys_version: String::new(),
            build_commit: String::new(),
            run: art.run,
        },
    };
    let ds = ws.load_dataset(&ds_art)?;
    let f = fit(&ds, &ds_art.name, &settings, &art.name)?;
    let recorded = model::content_digest(&model, &header);
    let retrained = model::content_digest(
        &f.model,
        &Header {
            item_names: f.item_names,
            ..header.clone()
        },
    );
    Ok(ReproduceReport {
        model: art.name,
        dataset: ds_art.name,
        dataset_digest: ds_digest,
        settings,
        matches: recorded == retrained,
        recorded,
        retrained,
        fit_seconds: f.fit_seconds,
    })
}
