//! `recsys evaluate`: offline metrics of a model next to the popularity
//! baseline, on the model's held-out part or on a later dataset.

use std::collections::HashMap;

use serde::Serialize;

use super::train::TrainSettings;
use super::{PipelineError, Result, artifact_ref, find, find_by_digest, load_model};
use crate::lineage::ArtifactRow;
use crate::model::{self, Algo, Interaction, Metrics, Model, Params, Segments};
use crate::progress::Progress;
use crate::store::Digest;
use crate::workspace::{Kind, RunSpec, Workspace, WorkspaceError};

#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    pub model: String,
    /// Default: the model's training dataset (its held-out part).
    pub dataset: Option<String>,
}

/// Which events the model is scored on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Exactly the part the model's training held out.
    Holdout,
    /// Every event of another dataset (a forward test).
    Forward,
}

/// A baseline scored on the same users as the model, overall (flattened)
/// and by segment.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    #[serde(flatten)]
    pub metrics: Metrics,
    /// The decay of `recent_popularity`; absent for all-time popularity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_life_ms: Option<u64>,
    pub by_segment: Segments,
}

/// The baselines every model is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Baselines {
    /// Distinct users per item over the whole training part.
    pub popularity: BaselineReport,
    /// `--algo recent` with its default half-life (14 days) on the same
    /// training part. `null` in a forward test when the model's training
    /// events (and so their times) cannot be recovered.
    pub recent_popularity: Option<BaselineReport>,
}

/// The figures `evaluate --json` prints: the model's own at the top level
/// and by segment (`warm`: users with training events, `cold`: without),
/// the popularity baseline's under `baseline` (as before) and both
/// baselines with their segments under `baselines`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub dataset: String,
    pub mode: Mode,
    pub algorithm: String,
    pub rmse: Option<f64>,
    pub precision_at_10: f64,
    pub recall_at_20: f64,
    pub ndcg_at_20: f64,
    pub hit_rate_at_20: f64,
    pub users_evaluated: usize,
    pub test_interactions: usize,
    /// Forward test: events on movies the model never saw (left out).
    pub unknown_movies_skipped: usize,
    pub baseline: Metrics,
    pub by_segment: Segments,
    pub baselines: Baselines,
    pub run: Option<Digest>,
}

fn baseline(
    algo: Algo,
    train_part: &[Interaction],
    test: &[Interaction],
    n_items: usize,
) -> std::result::Result<BaselineReport, model::ModelError> {
    let params = Params::default_for(algo);
    let m = model::train(train_part, n_items, algo, &params)?;
    let s = model::evaluate_segments(&m, train_part, test)?;
    Ok(BaselineReport {
        metrics: s.overall,
        half_life_ms: params.half_life_ms,
        by_segment: s.by_segment,
    })
}

/// The training part of the model's train run, re-split from its training
/// dataset with the recorded settings; `None` when the run, its settings or
/// the dataset are not here, or the dataset's items differ from the model's.
fn training_part(
    ws: &Workspace,
    model_art: &ArtifactRow,
    item_names: &[String],
    train_dataset: Option<Digest>,
) -> Result<Option<(Vec<Interaction>, Vec<Interaction>)>> {
    let Some(d) = train_dataset else {
        return Ok(None);
    };
    let Some(ds_art) = find_by_digest(ws, &d)? else {
        return Ok(None);
    };
    let run = ws
        .lineage
        .run(&model_art.run)
        .map_err(WorkspaceError::from)?;
    let Some(settings) = run
        .filter(|r| r.kind == "train")
        .and_then(|r| serde_json::from_value::<TrainSettings>(r.params).ok())
    else {
        return Ok(None);
    };
    let ds = ws.load_dataset(&ds_art)?;
    let (data, names, _) = settings.interactions(&ds, &ds_art.name)?;
    if names != item_names {
        return Ok(None);
    }
    let (tr, te) = settings.split(&data)?;
    Ok(Some((tr, te)))
}

/// Training interactions a model remembers: one per (user, seen item).
/// Popularity counts distinct users per item, so a baseline trained on
/// these equals one trained on the original training part.
fn remembered(model: &Model) -> Vec<Interaction> {
    let mut out = Vec::new();
    for &user in model.user_ids() {
        for &item in model.seen(user) {
            out.push(Interaction {
                user,
                item,
                rating: None,
                time: 0,
            });
        }
    }
    out
}

pub fn evaluate(
    ws: &Workspace,
    o: &EvaluateOptions,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    let started = ws.now_ms();
    let model_art = find(ws, &o.model, Kind::Model)?;
    let (header, model) = load_model(ws, &model_art)?;
    let train_dataset: Option<Digest> = header.dataset_digest.parse().ok();
    let ds_art: ArtifactRow = match &o.dataset {
        Some(q) => find(ws, q, Kind::Dataset)?,
        None => {
            let d = train_dataset.ok_or_else(|| {
                PipelineError::Invalid(format!(
                    "{} does not name its training dataset; pass --dataset",
                    model_art.name
                ))
            })?;
            find_by_digest(ws, &d)?.ok_or_else(|| {
                PipelineError::Invalid(format!(
                    "{}'s training dataset {d} is not registered here: \
                     `recsys pull` it, or pass --dataset",
                    model_art.name
                ))
            })?
        }
    };
    let ds = ws.load_dataset(&ds_art)?;
    let err = |source| PipelineError::Model {
        name: model_art.name.clone(),
        error: source,
    };

    let (mode, train_part, test, skipped, timed) = if train_dataset == Some(ds_art.digest) {
        let Some((tr, te)) = training_part(ws, &model_art, &header.item_names, train_dataset)?
        else {
            let (_, names) = ds.interactions()?;
            return Err(PipelineError::Invalid(if names != header.item_names {
                format!(
                    "{}'s items differ from those of its training dataset {}",
                    model_art.name, ds_art.name
                )
            } else {
                format!(
                    "{} was not made by `recsys train`, so its held-out part is unknown; \
                     pass --dataset with a later dataset for a forward test",
                    model_art.name
                )
            }));
        };
        (Mode::Holdout, tr, te, 0, true)
    } else {
        let index: HashMap<&str, u32> = header
            .item_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u32))
            .collect();
        let (data, names) = ds.interactions()?;
        let mut test = Vec::with_capacity(data.len());
        let mut skipped = 0;
        for e in data {
            match names
                .get(e.item as usize)
                .and_then(|n| index.get(n.as_str()))
            {
                Some(&item) => test.push(Interaction { item, ..e }),
                None => skipped += 1,
            }
        }
        // The real training events (with their times) when they are here;
        // else what the model remembers (no times: no recency baseline).
        match training_part(ws, &model_art, &header.item_names, train_dataset)? {
            Some((tr, _)) => (Mode::Forward, tr, test, skipped, true),
            None => (Mode::Forward, remembered(&model), test, skipped, false),
        }
    };

    // Cold users as serving answers them: in their cohort, from the users
    // table of the evaluated dataset (a later one knows the new users).
    let cohorts = super::train::cohort_keys(&ds, model.params());
    let seg = model::evaluate_segments_in(&model, &train_part, &test, &cohorts).map_err(err)?;
    let m = seg.overall;
    let n_items = model.n_items();
    let popularity = baseline(Algo::Popularity, &train_part, &test, n_items).map_err(err)?;
    let recent_popularity = if timed {
        Some(baseline(Algo::Recent, &train_part, &test, n_items).map_err(err)?)
    } else {
        None
    };

    let mut report = EvalReport {
        model: model_art.name.clone(),
        dataset: ds_art.name.clone(),
        mode,
        algorithm: model.algo().name().to_string(),
        rmse: m.rmse,
        precision_at_10: m.precision_at_10,
        recall_at_20: m.recall_at_20,
        ndcg_at_20: m.ndcg_at_20,
        hit_rate_at_20: m.hit_rate_at_20,
        users_evaluated: m.users_evaluated,
        test_interactions: test.len(),
        unknown_movies_skipped: skipped,
        baseline: popularity.metrics,
        by_segment: seg.by_segment,
        baselines: Baselines {
            popularity,
            recent_popularity,
        },
        run: None,
    };
    let mut spec = RunSpec::new("evaluate", started);
    spec.algorithm = Some(report.algorithm.clone());
    spec.params = serde_json::json!({ "mode": mode, "k": [10, 20] });
    spec.metrics = serde_json::to_value(&report).unwrap_or_default();
    if let Some(obj) = spec.metrics.as_object_mut() {
        for k in ["model", "dataset", "mode", "algorithm", "run"] {
            obj.remove(k);
        }
    }
    spec.inputs = vec![artifact_ref(&model_art), artifact_ref(&ds_art)];
    let (run, _) = ws.record_run(spec, &[], progress)?;
    report.run = run;
    Ok(report)
}

/// The metrics of the latest `evaluate` run that read this model.
pub fn latest_evaluation(ws: &Workspace, model: &ArtifactRow) -> Result<Option<serde_json::Value>> {
    let mut best: Option<(i64, i64, Digest, serde_json::Value)> = None;
    for id in ws
        .lineage
        .consumers(&model.digest)
        .map_err(WorkspaceError::from)?
    {
        if let Some(r) = ws.lineage.run(&id).map_err(WorkspaceError::from)?
            && r.kind == "evaluate"
        {
            let key = (r.started, r.ended, r.id);
            if best.as_ref().is_none_or(|(s, e, i, _)| key > (*s, *e, *i)) {
                best = Some((r.started, r.ended, r.id, r.metrics));
            }
        }
    }
    Ok(best.map(|(_, _, _, m)| m))
}
