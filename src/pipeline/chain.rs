//! `recsys pipeline`: the whole chain as one library call — ingest (with
//! its quality and drift checks), train on the new dataset, evaluate on
//! the part training held out, and, when asked, promote.
//!
//! Each step is its own run with its own run record, so a chain stopped
//! half way (severe drift, a crash) leaves what it finished registered and
//! nothing half-written; rerunning starts a new chain. The caller hears of
//! each step as it completes (the CLI prints it) through [`Step`]; a
//! report that cannot be shown does not undo the work.

use std::path::PathBuf;

use serde::Serialize;

use super::{
    EvalReport, EvaluateOptions, Promotion, Result, TrainOptions, TrainReport, check_promotable,
    evaluate, promote_if_better, train,
};
use crate::ingest::{self, IngestOptions, IngestReport};
use crate::progress::Progress;
use crate::workspace::Workspace;

/// What the chain does. `train.dataset` is ignored: the chain trains on
/// the dataset it has just ingested.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    pub ingest: IngestOptions,
    pub train: TrainOptions,
    /// Rewrite this serving config to the new model if it beats the one
    /// served (checked to be valid before anything is consumed).
    pub promote: Option<PathBuf>,
}

/// A finished step, as the chain reports it to its caller.
pub enum Step<'a> {
    Ingested(&'a IngestReport),
    Trained(&'a TrainReport),
    Evaluated(&'a EvalReport),
    Promotion(&'a Promotion),
}

/// Every step's report.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub dataset: String,
    pub model: String,
    pub ingest: IngestReport,
    pub train: TrainReport,
    pub evaluate: EvalReport,
    pub promotion: Option<Promotion>,
}

/// Run the chain. Severe drift ends it after ingest as
/// `PipelineError::Ingest(IngestError::Drift { .. })`, with nothing
/// recorded.
pub fn run_chain(
    ws: &Workspace,
    o: &ChainOptions,
    progress: &dyn Progress,
    on_step: &mut dyn FnMut(Step<'_>),
) -> Result<ChainReport> {
    if let Some(config) = &o.promote {
        // Fail before consuming anything, not after an hour of work.
        check_promotable(config)?;
    }
    // Bad training flags fail before anything is ingested, too.
    super::train::TrainSettings::from_options(&o.train, 1)?;
    let ingested = ingest::run(ws, &o.ingest, progress)?;
    on_step(Step::Ingested(&ingested));
    let trained = train(
        ws,
        &TrainOptions {
            dataset: ingested.dataset.clone(),
            ..o.train.clone()
        },
        progress,
    )?;
    on_step(Step::Trained(&trained));
    let evaluated = evaluate(
        ws,
        &EvaluateOptions {
            model: trained.model.clone(),
            dataset: None,
        },
        progress,
    )?;
    on_step(Step::Evaluated(&evaluated));
    let promotion = match &o.promote {
        Some(config) => {
            let p = promote_if_better(ws, config, &evaluated, &ingested.dataset, progress)?;
            on_step(Step::Promotion(&p));
            Some(p)
        }
        None => None,
    };
    Ok(ChainReport {
        dataset: ingested.dataset.clone(),
        model: trained.model.clone(),
        ingest: ingested,
        train: trained,
        evaluate: evaluated,
        promotion,
    })
}
