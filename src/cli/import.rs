use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use crate::pipeline;

/// Import an outside dataset as the next dataset_N (with an import run).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  recsys import movielens \"$(scripts/fetch-movielens.sh)\"")]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    Movielens(MovielensArgs),
}

/// MovieLens 100K, classic (u.data, u.user, u.item) or RecBole layout
/// (ml-100k.inter, .user, .item).
///
/// Writes data/dataset_N/ (events.csv with one rate event per rating,
/// users.csv, movies.csv with course-style movie ids, requests.csv,
/// dataset.json) and records an import run whose source names the
/// directory, the layout and each input file's BLAKE3 digest. Get the data
/// with scripts/fetch-movielens.sh; never commit it.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys import movielens \"$(scripts/fetch-movielens.sh)\"\n  recsys import movielens ~/ml-100k --json"
)]
struct MovielensArgs {
    /// Directory holding the MovieLens files.
    #[arg(value_name = "DIR")]
    data_dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let What::Movielens(a) = a.what;
    let ws = ctx.open()?;
    let r = super::openlineage::observe(
        ctx,
        &ws,
        "import.movielens",
        || pipeline::import_movielens(&ws, &a.data_dir, &ctx.progress()),
        |r| if r.unchanged { None } else { r.run },
    )?;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.unchanged {
        ctx.say(format!(
            "unchanged: {} ({}) already holds exactly these files",
            r.dataset,
            r.digest.short()
        ));
        if !r.path.is_empty() && !ws.root().join(&r.path).exists() {
            ctx.say(format!(
                "its work-tree copy {} is missing: recsys checkout {}",
                r.path, r.dataset
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    ctx.say(format!(
        "imported {} ({} layout) as {} ({}): {} ratings, {} users, {} movies",
        a.data_dir.display(),
        r.layout,
        r.dataset,
        r.digest.short(),
        r.counts.rate,
        r.counts.users,
        r.counts.movies
    ));
    ctx.say(format!(
        "track it in git:  git add {}.recsys data/.gitignore && git commit",
        r.path
    ));
    Ok(ExitCode::SUCCESS)
}
