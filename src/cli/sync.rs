use std::path::PathBuf;
use std::process::ExitCode;

use super::{Ctx, bytes};
use crate::store::link::LinkMode;
use crate::workspace::{CheckoutOptions, PullReport};

/// Upload missing objects (and run records) to a remote.
///
/// Sends what gc keeps (one definition): what the pointer files name, with
/// their run records, all lineage (run records, request-log segments) and,
/// without paths, every model, dataset and config that answered a logged
/// request, retired ones included. Only objects the remote lacks are sent,
/// in parallel; the remote checks each object's digest as it arrives. An
/// interrupted push, rerun, sends only what is still missing.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys push\n  recsys push data/ratings.csv -r backup\n  recsys push -r team --jobs 32   # many small files to S3"
)]
pub struct PushArgs {
    /// Only these artifacts (default: all tracked).
    paths: Vec<PathBuf>,
    /// Remote name (default: the default remote).
    #[arg(short, long)]
    remote: Option<String>,
    /// Parallel transfers (default: RECSYS_JOBS, else 8).
    #[arg(short, long)]
    jobs: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// Download missing objects (and run records) from a remote into the store.
///
/// Brings what the pointer files name, every run record and request-log
/// segment the remote's index lists, and, without paths or --rev, what
/// those segments name (the models, datasets and configs that answered).
/// Every object is verified as it arrives. Run records are indexed into
/// lineage.db; a version name that arrives for other bytes than it has
/// here is reported as a conflict (exit 1), never merged.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  recsys fetch\n  recsys fetch --rev HEAD~3")]
pub struct FetchArgs {
    /// Only these artifacts (default: all tracked).
    paths: Vec<PathBuf>,
    #[arg(short, long)]
    remote: Option<String>,
    /// Fetch what the pointer files at this git revision name.
    #[arg(long)]
    rev: Option<String>,
    /// Parallel transfers (default: RECSYS_JOBS, else 8).
    #[arg(short, long)]
    jobs: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// `fetch`, then `checkout`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  git clone ... && cd project && recsys pull\n  recsys pull data/ratings.csv --link hardlink"
)]
pub struct PullArgs {
    paths: Vec<PathBuf>,
    #[arg(short, long)]
    remote: Option<String>,
    #[arg(long)]
    rev: Option<String>,
    #[arg(long, value_enum)]
    link: Option<LinkMode>,
    /// Overwrite local changes that are not in the store.
    #[arg(long)]
    force: bool,
    /// Parallel transfers (default: RECSYS_JOBS, else 8).
    #[arg(short, long)]
    jobs: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn push(a: PushArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open_jobs(a.jobs)?;
    let bar = ctx.progress();
    let r = ws.push(&a.paths, a.remote.as_deref(), &bar)?;
    if a.json {
        super::print_json(&r)?;
    } else {
        ctx.say(format!(
            "pushed {} object(s) ({}) to {}; {} already there",
            r.moved.objects,
            bytes(r.moved.bytes),
            r.remote,
            r.moved.already_there
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn finish(r: &PullReport, json: bool, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if json {
        super::print_json(r)?;
    } else {
        ctx.say(format!(
            "fetched {} object(s) ({}) from {}; {} already here; {} run record(s), {} request-log segment(s) indexed",
            r.moved.objects,
            bytes(r.moved.bytes),
            r.remote,
            r.moved.already_there,
            r.runs_indexed,
            r.segments_indexed
        ));
        super::checkout::report(ctx, &r.checked_out);
        for c in &r.conflicts {
            eprintln!("conflict: {c}");
        }
    }
    Ok(if r.conflicts.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn fetch(a: FetchArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut ws = ctx.open_jobs(a.jobs)?;
    let bar = ctx.progress();
    let r = ws.fetch(&a.paths, a.rev.as_deref(), a.remote.as_deref(), &bar)?;
    finish(&r, a.json, ctx)
}

pub fn pull(a: PullArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut ws = ctx.open_jobs(a.jobs)?;
    let bar = ctx.progress();
    let r = ws.pull(
        &a.paths,
        a.remote.as_deref(),
        &CheckoutOptions {
            rev: a.rev,
            link: a.link,
            force: a.force,
        },
        &bar,
    )?;
    finish(&r, a.json, ctx)
}
