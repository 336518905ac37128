use std::process::ExitCode;

use super::Ctx;
use crate::model::Metrics;
use crate::pipeline::{self, EvaluateOptions, Mode};

/// Score a model offline next to the popularity baseline; record the run.
///
/// By default on exactly the part its training held out (the split and
/// seed recorded by `recsys train`); with --dataset naming another dataset,
/// on all of that dataset's events (a forward test; movies the model never
/// saw are skipped). Metrics: RMSE on ratings (svd), precision@10,
/// recall@20, NDCG@20 and hit-rate@20 of the top-20 list with already-seen
/// movies excluded. The model file's digest is checked against the store
/// before it is loaded.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys evaluate --model model_v1\n  recsys evaluate --model model_v1 --dataset dataset_2 --json\n  recsys ls --kind model"
)]
pub struct Args {
    /// The model: version name, digest (prefix) or path.
    #[arg(long)]
    model: String,
    /// Evaluate on this dataset instead of the model's held-out part.
    #[arg(long)]
    dataset: Option<String>,
    /// Print the result as JSON (model metrics at the top level, the
    /// baseline's under "baseline").
    #[arg(long)]
    json: bool,
}

fn fmt_rmse(m: Option<f64>) -> String {
    m.map_or("-".into(), |r| format!("{r:.4}"))
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let r = pipeline::evaluate(
        &ws,
        &EvaluateOptions {
            model: a.model,
            dataset: a.dataset,
        },
        &ctx.progress(),
    )?;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    report(ctx, &r);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn report(ctx: &Ctx, r: &pipeline::EvalReport) {
    let on = match r.mode {
        Mode::Holdout => format!("the held-out part of {}", r.dataset),
        Mode::Forward => format!("all of {}", r.dataset),
    };
    ctx.say(format!(
        "{} ({}) on {on}: {} test events, {} users",
        r.model, r.algorithm, r.test_interactions, r.users_evaluated
    ));
    if r.unknown_movies_skipped > 0 {
        ctx.say(format!(
            "  {} events on movies the model never saw were skipped",
            r.unknown_movies_skipped
        ));
    }
    let row = |name: &str, rmse: Option<f64>, m: &Metrics| {
        format!(
            "  {name:<11} {:>7} {:>8.4} {:>9.4} {:>8.4} {:>8.4}",
            fmt_rmse(rmse),
            m.precision_at_10,
            m.recall_at_20,
            m.ndcg_at_20,
            m.hit_rate_at_20
        )
    };
    ctx.say(format!(
        "  {:<11} {:>7} {:>8} {:>9} {:>8} {:>8}",
        "", "RMSE", "P@10", "R@20", "NDCG@20", "HIT@20"
    ));
    let own = Metrics {
        rmse: r.rmse,
        precision_at_10: r.precision_at_10,
        recall_at_20: r.recall_at_20,
        ndcg_at_20: r.ndcg_at_20,
        hit_rate_at_20: r.hit_rate_at_20,
        users_evaluated: r.users_evaluated,
    };
    ctx.say(row(&r.model, r.rmse, &own));
    ctx.say(row("popularity", r.baseline.rmse, &r.baseline));
}
