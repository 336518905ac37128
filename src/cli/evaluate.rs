use std::process::ExitCode;

use super::Ctx;
use crate::model::Metrics;
use crate::pipeline::{self, EvaluateOptions, Mode};

/// Score a model offline next to two baselines; record the run.
///
/// By default on exactly the part its training held out (the split and
/// seed recorded by `recsys train`); with --dataset naming another dataset,
/// on all of that dataset's events (a forward test; movies the model never
/// saw are skipped). Metrics: RMSE on ratings (svd), precision@10,
/// recall@20, NDCG@20 and hit-rate@20 of the top-20 list with already-seen
/// movies excluded. Baselines, scored on the same users: all-time
/// popularity and recent popularity (`--algo recent`, half-life 14 days),
/// both trained on the model's training part. Every figure is also given
/// for warm users (with training events) and cold users (without) apart.
/// The model file's digest is checked against the store before it is
/// loaded.
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
    /// Print the result as JSON: model metrics at the top level and under
    /// "by_segment" ("warm", "cold"); the popularity baseline under
    /// "baseline"; both baselines, each with its own "by_segment", under
    /// "baselines" ("popularity", "recent_popularity").
    #[arg(long)]
    json: bool,
}

fn fmt_rmse(m: Option<f64>) -> String {
    m.map_or("-".into(), |r| format!("{r:.4}"))
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let o = EvaluateOptions {
        model: a.model,
        dataset: a.dataset,
    };
    let r = super::openlineage::observe(
        ctx,
        &ws,
        "evaluate",
        || pipeline::evaluate(&ws, &o, &ctx.progress()),
        |r| r.run,
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
    if let Some(recent) = &r.baselines.recent_popularity {
        ctx.say(row("recent pop.", recent.metrics.rmse, &recent.metrics));
    }
    // By segment: users, then NDCG@20 and P@10 of the model and baselines.
    ctx.say(format!(
        "  {:<11} {:>6} {:>17} {:>17} {:>17}",
        "segment", "users", "NDCG@20 model", "popularity", "recent pop."
    ));
    let pop = &r.baselines.popularity.by_segment;
    let rec = r
        .baselines
        .recent_popularity
        .as_ref()
        .map(|b| &b.by_segment);
    let segs = [
        ("warm", &r.by_segment.warm, &pop.warm, rec.map(|s| &s.warm)),
        ("cold", &r.by_segment.cold, &pop.cold, rec.map(|s| &s.cold)),
    ];
    let cell = |m: &Metrics| format!("{:.4} (P {:.3})", m.ndcg_at_20, m.precision_at_10);
    for (name, own, p, rc) in segs {
        ctx.say(format!(
            "  {name:<11} {:>6} {:>17} {:>17} {:>17}",
            own.users_evaluated,
            cell(own),
            cell(p),
            rc.map_or("-".into(), cell)
        ));
    }
}
