use std::process::ExitCode;

use super::{Ctx, bytes};

/// Remove objects nothing references, and temp files of killed writers.
///
/// Kept: objects named by a pointer file in the work tree (or, with
/// --all-commits, in any git commit), the files of those directories, and
/// all lineage (run records, request-log segments) — lineage is never
/// collected.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  recsys gc --dry-run\n  recsys gc --all-commits")]
pub struct Args {
    /// Only report what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Keep everything any git commit's pointer files name.
    #[arg(long)]
    all_commits: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let r = ws.gc(a.dry_run, a.all_commits)?;
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
