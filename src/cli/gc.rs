use std::process::ExitCode;
use std::time::Duration;

use super::{Ctx, bytes};
use crate::workspace::{GcOptions, REMOTE_GRACE, RemoteGcOptions};

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
///
/// `--remote [NAME]` collects an S3 remote instead (mark and sweep), and is
/// a dry run unless `--force`: kept is every object named by the roots
/// list any clone of any project left there with its last push
/// (roots/<clone>.json; this clone's is refreshed first), every index
/// entry, and anything younger than --grace (default 24h there). Deleting
/// needs a server that honours create-only puts (`recsys remote check`).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys gc --dry-run\n  recsys gc --remote team            # what would go from the shared bucket\n  recsys gc --remote team --force    # delete it\n  recsys gc --all-commits\n  recsys gc --dry-run --json | jq '.kept[] | select(.root == \"segment\")'\n  recsys gc --grace 0s     # nothing else writes to this store now\n  recsys gc --requests-older-than 90d --dry-run"
)]
pub struct Args {
    /// Only report what would be removed (and, with --json, what is kept and why).
    #[arg(long)]
    dry_run: bool,
    /// Keep everything any git commit's pointer files name.
    #[arg(long)]
    all_commits: bool,
    /// Keep objects changed less than this long ago (e.g. 1h, 30m, 0s;
    /// default 1h, and 24h with --remote).
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Collect this S3 remote (default: the default remote) instead of
    /// the local store.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    remote: Option<String>,
    /// With --remote: delete (default: only report).
    #[arg(long, requires = "remote")]
    force: bool,
    /// Retention: first drop closed request-log segments whose newest
    /// request is older than this (e.g. 90d), with their index rows, in a
    /// `retention` run record; then collect what only they kept. The open
    /// segment is never dropped.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    requests_older_than: Option<Duration>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    if let Some(name) = &a.remote {
        anyhow::ensure!(
            !a.all_commits && a.requests_older_than.is_none(),
            "--all-commits and --requests-older-than are for the local store, not --remote"
        );
        let name = (!name.is_empty()).then_some(name.as_str());
        let r = ws.gc_remote(
            name,
            &RemoteGcOptions {
                grace: a.grace.unwrap_or(REMOTE_GRACE),
                force: a.force && !a.dry_run,
            },
        )?;
        if a.json {
            super::print_json(&r)?;
        } else {
            ctx.say(format!(
                "remote {}: {} {} object(s) ({}); kept {} named by {} roots list(s) and {} younger than the grace period{}",
                r.remote,
                if r.dry_run { "would remove" } else { "removed" },
                r.removed_objects,
                bytes(r.removed_bytes),
                r.kept_objects,
                r.roots_objects,
                r.young_objects,
                if r.dry_run { " (dry run: --force deletes)" } else { "" }
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = ws.gc(&GcOptions {
        dry_run: a.dry_run,
        all_commits: a.all_commits,
        grace: a.grace.unwrap_or(crate::workspace::GRACE),
        requests_older_than: a.requests_older_than,
    })?;
    if a.json {
        super::print_json(&r)?;
    } else {
        if let Some(t) = &r.retention {
            ctx.say(format!(
                "retention: {} {} request-log segment(s) ({} request(s)) whose newest request is                  older than {}; kept {}{}",
                if a.dry_run { "would drop" } else { "dropped" },
                t.dropped.len(),
                t.dropped.iter().map(|s| s.requests).sum::<u64>(),
                humantime::format_duration(Duration::from_secs(t.older_than_s)),
                t.kept_segments,
                t.run
                    .map(|r| format!(" (retention run {})", r.short()))
                    .unwrap_or_default()
            ));
        }
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
