use std::process::ExitCode;

use super::Ctx;
use crate::workspace::ForgetOptions;

/// Remove one user's requests and attributes from the request log, the
/// request index and every dataset that holds them.
///
/// Stored objects are immutable, so forget writes new ones: each
/// request-log segment with a request of the user becomes a new segment
/// without those lines, each dataset with their rows (events.csv,
/// requests.csv, users.csv, quarantine.jsonl) a new version under the same
/// name, with its pointer file rewritten (commit it). A `forget` run record
/// says what was removed (counts), when and why, names the user by a hash
/// (not anonymous: user ids are small numbers) and lists every object it
/// superseded; those are then kept by nothing, so `recsys gc` removes them
/// here and the next `recsys push` from the remote. lineage.db's rows go,
/// and its WAL and free pages are emptied. Models trained on the old data
/// are listed: they were trained on data that included the user (retrain
/// them). An open segment a running server holds is left alone; if it holds
/// a request of the user, forget refuses and changes nothing.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys forget --user 4242 --reason 'erasure request #17' --dry-run\n  recsys forget --user 4242 --reason 'erasure request #17'\n  recsys gc --grace 0s && recsys push"
)]
pub struct Args {
    /// The user id (as in the event stream and `GET /recommend/<id>`).
    #[arg(long)]
    user: i64,
    /// Why (recorded in the run record).
    #[arg(long)]
    reason: Option<String>,
    /// Only report what would be removed.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let r = ws.forget(&ForgetOptions {
        user: a.user,
        reason: a.reason,
        dry_run: a.dry_run,
    })?;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    ctx.say(format!(
        "{verb} {} request(s) of user {} from {} request-log segment(s) and {} row(s) from the request index",
        r.requests_removed(),
        a.user,
        r.segments.len(),
        r.index_rows_removed
    ));
    for d in &r.datasets {
        let rows: Vec<String> = d
            .removed
            .iter()
            .map(|(f, n)| format!("{n} in {f}"))
            .collect();
        ctx.say(format!(
            "{verb} from {} ({}): {}{}",
            d.name,
            d.old.short(),
            rows.join(", "),
            d.new
                .map(|n| format!("; now {}", n.short()))
                .unwrap_or_default()
        ));
    }
    for m in &r.models_trained_on_erased {
        ctx.say(format!(
            "{} ({}) was trained on {} with the user's rows: retrain it to remove their influence",
            m.model,
            m.digest.short(),
            m.dataset
        ));
    }
    for s in &r.open_segments_held {
        ctx.say(format!(
            "{s}: held by a running server, holds no request of the user; left alone"
        ));
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(run) = r.run {
        ctx.say(format!(
            "recorded as forget run {}; the old objects are unreferenced: `recsys gc` removes them, \
             `recsys push` removes them from the remote{}",
            run.short(),
            if r.datasets.iter().any(|d| !d.pointers.is_empty()) {
                "; commit the rewritten pointer files"
            } else {
                ""
            }
        ));
        if !r.lineage_scrubbed {
            eprintln!(
                "warning: another process kept lineage.db's WAL busy: its old pages may still hold \
                 the deleted rows; run `recsys forget --user {}` again when it is idle (it then only empties the WAL)",
                a.user
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
