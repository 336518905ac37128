use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use super::Ctx;
use super::monitor::{DbArg, open_sink};
use crate::monitor::erase::UserRows;
use crate::monitor::sink::Sink;
use crate::workspace::{ForgetOptions, ForgetReport, WorkspaceError};

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
///
/// The monitoring database loses the user's rows too: the project's
/// monitor.db when there is one, and each --monitor-db (PostgreSQL). Its
/// per-minute rollups hold counts only and stay. A `recsys monitor` still
/// running writes the outcomes of the user's answers still open in its
/// window when they close: forget says so, and running it again after the
/// window removes them. Kafka topics are not rewritten: their retention
/// ages the user's lines out.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys forget --user 4242 --reason 'erasure request #17' --dry-run\n  recsys forget --user 4242 --reason 'erasure request #17'\n  recsys forget --user 4242 --monitor-db postgres://postgres@127.0.0.1/test\n  recsys gc --grace 0s && recsys push"
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
    /// Another monitoring database (as `recsys monitor --db`: postgres://...
    /// or a SQLite file) to remove the user's rows from; repeatable.
    #[arg(long, value_name = "URL")]
    monitor_db: Vec<String>,
    #[arg(long)]
    json: bool,
}

/// `--json`: the workspace's report (absent when only the monitoring
/// database held the user) and one entry per monitoring database.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    project: Option<ForgetReport>,
    monitor: Vec<UserRows>,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    // Every monitoring database is opened and counted before anything
    // changes: one that cannot be reached fails the command here.
    let mut sinks: Vec<Box<dyn Sink + Send>> = Vec::new();
    if ws.root().join(crate::monitor::DEFAULT_DB).exists() {
        sinks.push(open_sink(&DbArg { db: None }, ctx)?);
    }
    for url in &a.monitor_db {
        let db = DbArg {
            db: Some(url.clone()),
        };
        sinks.push(open_sink(&db, ctx)?);
    }
    let mut monitor = Vec::new();
    for s in &mut sinks {
        monitor.push(
            s.erase_user(a.user, true)
                .with_context(|| format!("count the user's rows in {}", s.describe()))?,
        );
    }
    let in_monitor: u64 = monitor.iter().map(UserRows::total).sum();
    let project = match ws.forget(&ForgetOptions {
        user: a.user,
        reason: a.reason,
        dry_run: a.dry_run,
    }) {
        Ok(r) => Some(r),
        Err(WorkspaceError::UnknownUser { .. }) if in_monitor > 0 => None,
        Err(e) => return Err(e.into()),
    };
    if !a.dry_run {
        monitor.clear();
        for s in &mut sinks {
            monitor.push(
                s.erase_user(a.user, false)
                    .with_context(|| format!("remove the user's rows from {}", s.describe()))?,
            );
        }
    }
    if a.json {
        super::print_json(&Report { project, monitor })?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(r) = &project {
        print_project(r, a.user, ctx);
    }
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for m in &monitor {
        let rows: Vec<String> = m
            .tables
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| format!("{n} in {t}"))
            .chain((m.bad_lines > 0).then(|| format!("{} in mon_bad", m.bad_lines)))
            .collect();
        ctx.say(format!(
            "{verb} from the monitoring database {}: {}",
            m.db,
            if rows.is_empty() {
                "no row of the user".to_string()
            } else {
                rows.join(", ")
            }
        ));
        if m.monitor_running {
            eprintln!(
                "warning: a `recsys monitor` is writing to {}: the outcomes of the user's answers \
                 still open in its window are written when they close; run `recsys forget --user {}` \
                 again after the window (default 1 h)",
                m.db, a.user
            );
        }
        if !a.dry_run && m.total() > 0 && !m.scrubbed {
            eprintln!(
                "warning: another connection kept {} busy: freed pages may still hold the deleted \
                 rows until it is idle and the database is vacuumed",
                m.db
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_project(r: &ForgetReport, user: i64, ctx: &Ctx) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    ctx.say(format!(
        "{verb} {} request(s) of user {} from {} request-log segment(s) and {} row(s) from the request index",
        r.requests_removed(),
        user,
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
                user
            );
        }
    }
}
