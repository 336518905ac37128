use std::process::ExitCode;

use super::Ctx;
use crate::model::{Algo, SplitKind};
use crate::pipeline::{self, DEFAULT_TEST_FRACTION, TrainOptions};
use crate::user_filter::UserFilter;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AlgoArg {
    /// Implicit-feedback ALS on watches and ratings (ranking).
    Als,
    /// Biased matrix factorisation of explicit ratings (SGD).
    Svd,
    /// Most-watched first (the baseline).
    Popularity,
    /// Time-decayed popularity: a pair counts 2^(-age / --half-life).
    Recent,
    /// EASE, closed-form item-item model (λ = --reg, default 300; at most
    /// 20,000 items); cold users get recent popularity.
    Ease,
    /// EASE blended with recent popularity (--blend, default 0.5) for warm
    /// users; cold users get recent popularity.
    Hybrid,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SplitArg {
    /// The latest events (by time) are the test part.
    Time,
    /// A seeded random sample of events is the test part.
    Random,
}

/// Train a model on a dataset and register it as the next model_vN.
///
/// Holds out a test part (--split, --test-fraction) and never trains on
/// it; `recsys evaluate` scores the model on exactly that part. Writes
/// models/model_vN.bin, whose header names the algorithm, parameters,
/// training dataset digest and code commit, and records a train run with
/// the split, seed and thread count, so `recsys reproduce` can retrain it
/// bit for bit. Unset parameters take the algorithm's defaults, tuned on
/// MovieLens 100K.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys train --dataset dataset_1\n  recsys train --dataset dataset_1 --algo svd --split random --seed 7 --json\n  recsys train --dataset dataset_1 --algo recent --half-life 7d\n  recsys train --dataset dataset_1 --algo ease --lambda 300\n  recsys train --dataset dataset_1 --users-where gender=F --users-where age=25-34"
)]
pub struct Args {
    /// The dataset: version name, digest (prefix) or path.
    #[arg(long)]
    dataset: String,
    #[command(flatten)]
    flags: Flags,
    /// Train on one group's events only, chosen by the users table of the
    /// dataset: attribute=value with attribute gender, age or occupation;
    /// alternatives joined by |, conditions by , (or repeat the flag), all
    /// must hold. Ages are inclusive: 30, 18-24, 50+, <18, >=65. Gender and
    /// occupation ignore case. Recorded in the run, so `reproduce` repeats it.
    #[arg(long, value_name = "ATTR=VALUE")]
    users_where: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Algorithm, parameters and split; shared with `recsys pipeline`.
#[derive(clap::Args, Debug)]
pub struct Flags {
    #[arg(long, value_enum, default_value = "als")]
    algo: AlgoArg,
    /// Latent factors (svd, als).
    #[arg(long)]
    factors: Option<u32>,
    /// SGD epochs (svd) or ALS sweeps (als).
    #[arg(long)]
    epochs: Option<u32>,
    /// L2 regularisation of the factors (svd, als), or λ (ease, default 300).
    #[arg(long, visible_alias = "lambda")]
    reg: Option<f32>,
    /// Half-life of the recency decay (recent, ease) [default: 14d]; units
    /// ms, s, m, h, d, w.
    #[arg(long, allow_hyphen_values = true)]
    half_life: Option<String>,
    /// Weight of recent popularity against EASE for warm users (hybrid),
    /// 0 to 1 [default: 0.5].
    #[arg(long, allow_hyphen_values = true)]
    blend: Option<f32>,
    /// User attributes cold users are grouped by (recent, ease, hybrid): a
    /// new user of a known age band (or gender, occupation) gets the recent
    /// favourites of their group, shrunk towards everyone's. `age`,
    /// `gender,age`, ... or `none` [hybrid's default: age].
    #[arg(long)]
    cohorts: Option<String>,
    /// Weight of everyone's recent list inside each group's: 0 is the group
    /// alone, large values approach the global list [default: 3].
    #[arg(long)]
    cohort_prior: Option<f32>,
    /// Seed of the model's initialisation and of the random split [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value = "time")]
    split: SplitArg,
    /// Share of events held out for testing, between 0 and 1.
    #[arg(long, default_value_t = DEFAULT_TEST_FRACTION)]
    test_fraction: f64,
}

impl Flags {
    pub fn options(&self, dataset: &str) -> TrainOptions {
        let a = self;
        TrainOptions {
            dataset: dataset.to_string(),
            algo: match a.algo {
                AlgoArg::Als => Algo::Als,
                AlgoArg::Svd => Algo::Svd,
                AlgoArg::Popularity => Algo::Popularity,
                AlgoArg::Recent => Algo::Recent,
                AlgoArg::Ease => Algo::Ease,
                AlgoArg::Hybrid => Algo::Hybrid,
            },
            factors: a.factors,
            epochs: a.epochs,
            reg: a.reg,
            half_life: a.half_life.clone(),
            blend: a.blend,
            cohorts: a.cohorts.clone(),
            cohort_prior: a.cohort_prior,
            seed: a.seed,
            split: match a.split {
                SplitArg::Time => SplitKind::Time,
                SplitArg::Random => SplitKind::Random,
            },
            test_fraction: a.test_fraction,
            users_where: None,
        }
    }
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let r = super::openlineage::observe(
        ctx,
        &ws,
        "train",
        || {
            let mut o = a.flags.options(&a.dataset);
            if !a.users_where.is_empty() {
                o.users_where = Some(UserFilter::parse(&a.users_where)?);
            }
            pipeline::train(&ws, &o, &ctx.progress())
        },
        |r| r.run,
    )?;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    report(ctx, &r);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn report(ctx: &Ctx, r: &pipeline::TrainReport) {
    let s = &r.settings;
    ctx.say(format!(
        "trained {} on {} ({} users, {} items; train {} / test {} events, {} split {}, seed {}) in {:.2} s",
        s.algorithm,
        r.dataset,
        r.users,
        r.items,
        r.train_interactions,
        r.test_interactions,
        match s.split {
            SplitKind::Time => "time",
            SplitKind::Random => "random",
        },
        s.test_fraction,
        s.split_seed,
        r.fit_seconds
    ));
    if let (Some(f), Some(n)) = (&s.users_where, r.group_users) {
        ctx.say(format!("users where {f}: {n} users in the group"));
    }
    ctx.say(format!(
        "registered {} as {} ({})",
        r.path,
        r.model,
        r.digest.short()
    ));
    ctx.say(format!(
        "next:  recsys evaluate --model {}   (git add {}.recsys models/.gitignore)",
        r.model, r.path
    ));
}
