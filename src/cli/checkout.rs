use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use crate::store::link::LinkMode;
use crate::workspace::CheckoutOptions;

/// Restore work-tree copies of tracked artifacts from the store.
///
/// Objects are verified first (a corrupt object is never materialised).
/// With --rev, artifacts are restored exactly as the pointer files stood
/// at that git commit, without touching the git checkout. Local changes
/// that are not in the store are never overwritten without --force.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys checkout                       # everything the pointer files name\n  recsys checkout data/ratings.csv --rev v1.2\n  recsys checkout models/ --link hardlink"
)]
pub struct Args {
    /// Artifacts or pointer files (default: all).
    paths: Vec<PathBuf>,
    /// Git revision whose pointer files to follow.
    #[arg(long)]
    rev: Option<String>,
    /// How to make the copy (default: reflink if supported, else copy).
    /// Hard links and symlinks are read-only.
    #[arg(long, value_enum)]
    link: Option<LinkMode>,
    /// Overwrite local changes that are not in the store.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let bar = ctx.progress();
    let done = ws.checkout(
        &a.paths,
        &CheckoutOptions {
            rev: a.rev,
            link: a.link,
            force: a.force,
        },
        &bar,
    )?;
    if a.json {
        super::print_json(&done)?;
    } else {
        report(ctx, &done);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn report(ctx: &Ctx, done: &[crate::workspace::CheckedOut]) {
    let mut unchanged = 0;
    for d in done {
        if d.files_written == 0 {
            unchanged += 1;
        } else {
            ctx.say(format!(
                "restored {} ({}, {} file(s) written)",
                d.path, d.name, d.files_written
            ));
        }
    }
    if unchanged > 0 {
        ctx.say(format!("{unchanged} artifact(s) already up to date"));
    }
}
