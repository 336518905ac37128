use std::process::ExitCode;
use std::time::Duration;

use super::{Ctx, bytes};
use crate::workspace::GcOptions;

/// Remove objects nothing must keep, and temp files of killed writers.
///
/// Kept (the same roots push, pull and audit use): what every pointer file
/// in the work tree names (or, with --all-commits, in any git commit),
/// with the run records that made it and their other outputs; everything
/// the request log names (the models, datasets and configs that answered
/// requests, and the runs behind them), even after a model is retired;
/// the serving config; all lineage (run records, request-log segments);
/// and anything changed within the grace period (default 1h), so a
/// concurrent writer's objects are never taken. A pointer file that cannot
/// be read stops gc before it removes anything. `--dry-run --json` lists
/// every kept object with the root that keeps it.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys gc --dry-run\n  recsys gc --all-commits\n  recsys gc --dry-run --json | jq '.kept[] | select(.root == \"segment\")'\n  recsys gc --grace 0s     # nothing else writes to this store now"
)]
pub struct Args {
    /// Only report what would be removed (and, with --json, what is kept and why).
    #[arg(long)]
    dry_run: bool,
    /// Keep everything any git commit's pointer files name.
    #[arg(long)]
    all_commits: bool,
    /// Keep objects changed less than this long ago (e.g. 1h, 30m, 0s).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let r = ws.gc(&GcOptions {
        dry_run: a.dry_run,
        all_commits: a.all_commits,
        grace: a.grace,
    })?;
    if a.json {
        super::print_json(&r)?;
    } else {
        ctx.say(format!(
            "{} {} object(s) ({}) and {} temp file(s); kept {} object(s)",
            if a.dry_run { "would remove" } else { "removed" },
            r.removed_objects,
            bytes(r.removed_bytes),
            r.removed_temp_files,
            r.kept_objects
        ));
    }
    Ok(ExitCode::SUCCESS)
}
