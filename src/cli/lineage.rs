use std::process::ExitCode;

use super::{Ctx, bytes, date, short};

/// Where an artifact or a served recommendation came from.
///
/// Accepts a version name (dataset_3, model_v2), a digest or a unique
/// prefix of one (6+ hex digits), a work-tree path, or a request id (the
/// X-Request-Id of an answer): then it tells which model version answered,
/// which code commit and algorithm trained it, which dataset it was trained
/// on, where that data came from, and the commands that restore those
/// exact bytes. An id whose answer was never logged (the server was
/// killed before its log line reached the disk) still names the config
/// and the model that answered: they are shown, the user and items are
/// said to be unknown, and `--json` has `"logged": false`. `--user U --at TIME` finds the request behind a
/// recommendation line of the event stream. `--rebuild` recreates
/// lineage.db's index from the run records in the store and the pointer
/// files in every commit, and the request index from every request-log
/// segment in the store; a lineage.db SQLite finds damaged is set aside as
/// lineage.db.corrupt-<time> first (run it while no server is logging).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys lineage dataset_3\n  recsys lineage models/model_v2.bin --json\n  recsys lineage 01890a5d-ac96-774b-bcce-b302099a8057\n  recsys lineage --user 42 --at 2026-01-02T03:04:05.123\n  recsys lineage --rebuild\n  recsys lineage export --openlineage --out events.jsonl",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    export: Option<Sub>,
    /// Version name, digest (prefix), path or request id.
    #[arg(required_unless_present_any = ["rebuild", "user"])]
    what: Option<String>,
    /// The user of a served recommendation (with --at).
    #[arg(long, requires = "at", conflicts_with_all = ["what", "rebuild"])]
    user: Option<u64>,
    /// When it was served: ISO-8601 (UTC, as in the event stream) or Unix ms.
    #[arg(long, requires = "user")]
    at: Option<String>,
    /// Rebuild the index from run records, pointer files and request-log segments.
    #[arg(long, conflicts_with = "what")]
    rebuild: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    Export(ExportArgs),
}

/// Every run record of the project as OpenLineage 2-0-2 events, one JSON
/// object per line: a START and a COMPLETE per run, at the times the record
/// names, with the run id derived from the record's digest (the id a
/// pipeline step was announced with; a command run with --openlineage-url
/// was announced with its own UUIDv7). For backfilling a lineage tool
/// (Marquez: `curl -X POST -H 'Content-Type: application/json' -d @line
/// <url>/api/v1/lineage` per line).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys lineage export --openlineage > events.jsonl\n  recsys lineage export --openlineage --openlineage-namespace recs-prod --out events.jsonl"
)]
struct ExportArgs {
    /// The format (the only one): OpenLineage RunEvents.
    #[arg(long, required = true)]
    openlineage: bool,
    /// Write the events here (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

fn export(a: ExportArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    use crate::store::ObjectStore as _;
    let ws = ctx.open()?;
    let olctx =
        crate::openlineage::Context::for_workspace(&ws, ctx.openlineage_namespace.as_deref());
    let mut text = String::new();
    let mut missing = 0usize;
    let mut runs = 0usize;
    for id in ws.lineage.run_ids()? {
        let record = ws
            .store
            .get(&id)?
            .and_then(|b| crate::lineage::RunRecord::parse(&id, &b).ok());
        let Some(r) = record else {
            eprintln!(
                "warning: run record {id} is not in the store (`recsys fetch` brings it); left out"
            );
            missing += 1;
            continue;
        };
        for e in crate::openlineage::from_record(&olctx, &id, &r) {
            text.push_str(&e.to_string());
            text.push('\n');
        }
        runs += 1;
    }
    match &a.out {
        Some(p) => {
            crate::workspace::write_atomic(p, text.as_bytes())?;
            ctx.say(format!(
                "wrote {} events of {runs} runs to {}",
                2 * runs,
                p.display()
            ));
        }
        None => {
            let mut out = std::io::stdout().lock();
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            std::io::Write::flush(&mut out)?;
        }
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if let Some(Sub::Export(e)) = a.export {
        return export(e, ctx);
    }
    if a.rebuild {
        let (mut ws, aside) =
            crate::workspace::Workspace::discover_for_rebuild(&ctx.dir, ctx.settings.clone())?;
        let mut r = ws.rebuild_lineage()?;
        if let Some(p) = aside {
            r.set_aside = Some(p.display().to_string());
        }
        if let Some(p) = &r.set_aside {
            eprintln!("lineage.db was damaged: set aside as {p}");
        }
        if a.json {
            super::print_json(&r)?;
        } else {
            ctx.say(format!(
                "rebuilt lineage.db: {} run(s), {} artifact version(s), {} request(s) from {} request-log segment(s)",
                r.runs_indexed, r.artifacts, r.requests_indexed, r.segments_indexed
            ));
            for m in &r.missing_run_records {
                eprintln!("missing run record: {m}");
            }
            for b in &r.bad_segments {
                eprintln!("unreadable request-log segment: {b}");
            }
            for c in &r.conflicts {
                eprintln!("conflict: {c}");
            }
        }
        return Ok(if r.conflicts.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let ws = ctx.open()?;
    if let (Some(user), Some(at)) = (a.user, &a.at) {
        let at_ms = super::parse_now(at).ok_or_else(|| {
            anyhow::anyhow!("--at {at:?} is neither an ISO-8601 time nor Unix milliseconds")
        })?;
        let user =
            i64::try_from(user).map_err(|_| anyhow::anyhow!("--user {user} is out of range"))?;
        return match ws.request_lineage_near(user, at_ms)? {
            Some(r) => {
                show_requests(&ws, &[r], a.json)?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "no request of user {user} logged within {} s of {at}",
                    crate::workspace::NEAR_WINDOW_MS / 1000
                );
                Ok(ExitCode::from(1))
            }
        };
    }
    let what = a.what.unwrap_or_default();
    if let Ok(id) = uuid::Uuid::try_parse(what.trim()) {
        let found = ws.request_lineage(&id.hyphenated().to_string())?;
        if !found.is_empty() {
            show_requests(&ws, &found, a.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        // Not logged (or not here): our ids say what answered.
        if let Some(u) = crate::serve::unlogged::explain(&ws, &id)? {
            let ok = u.resolved();
            show_unlogged(&u, a.json)?;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        let hint = if ws.config.remotes.is_empty() {
            ""
        } else {
            " (a request logged on another machine arrives with `recsys pull`)"
        };
        anyhow::bail!(
            "no request {id} in lineage.db or the open request log, and it is not a recsys \
             request id (those are UUIDv8s naming the config and model that answered){hint}"
        );
    }
    let l = ws.artifact_lineage(&what)?;
    if a.json {
        super::print_json(&l)?;
        return Ok(ExitCode::SUCCESS);
    }
    let art = &l.artifact;
    outln!("{} ({})", art.name, art.kind)?;
    outln!("  digest:     {}", art.digest)?;
    outln!(
        "  size:       {}{}",
        bytes(art.size),
        art.files
            .map(|f| format!(" in {f} files"))
            .unwrap_or_default()
    )?;
    if let Some(p) = &art.path {
        outln!("  path:       {p}")?;
    }
    outln!(
        "  registered: {} at commit {}{}",
        date(art.created),
        short(&art.git_commit),
        if art.dirty { " (dirty work tree)" } else { "" }
    )?;
    outln!(
        "  by:         recsys {} (build {})",
        art.recsys_version,
        &art.build_commit[..art.build_commit.len().min(12)]
    )?;
    if let Some(r) = &l.run {
        outln!(
            "  run:        {} {} ({} -> {})",
            r.kind,
            r.id.short(),
            date(r.started),
            date(r.ended)
        )?;
        if let Some(alg) = &r.algorithm {
            outln!("  algorithm:  {alg} {}", r.params)?;
        }
        if !r.source.is_null() && r.source != serde_json::json!({}) {
            outln!("  source:     {}", r.source)?;
        }
        if !r.metrics.is_null() && r.metrics != serde_json::json!({}) {
            outln!("  metrics:    {}", r.metrics)?;
        }
    }
    for i in &l.inputs {
        outln!("  input:      {} {}", i.name, i.digest.short())?;
    }
    for o in &l.outputs {
        if o.digest != art.digest {
            outln!("  output:     {} {}", o.name, o.digest.short())?;
        }
    }
    for u in &l.used_by {
        outln!(
            "  used by:    {} run {} ({})",
            u.kind,
            u.id.short(),
            date(u.started)
        )?;
    }
    if !l.upstream.is_empty() {
        outln!("  upstream:")?;
        for u in &l.upstream {
            let pad = "  ".repeat(u.depth);
            match &u.run {
                Some(r) => {
                    outln!(
                        "  {pad}<- {} {} ({}) made by {} run {} at commit {}",
                        u.kind,
                        u.name,
                        u.digest.short(),
                        r.kind,
                        r.id.short(),
                        short(&r.git_commit)
                    )?;
                    if let Some(alg) = &r.algorithm {
                        outln!("  {pad}   algorithm: {alg} {}", r.params)?;
                    }
                    if !r.source.is_null() && r.source != serde_json::json!({}) {
                        outln!("  {pad}   source:    {}", r.source)?;
                    }
                }
                None => outln!(
                    "  {pad}<- {} {} (its run is not indexed here)",
                    u.name,
                    u.digest.short()
                )?,
            }
        }
    }
    outln!("  restore:    {}", l.restore)?;
    Ok(ExitCode::SUCCESS)
}

/// An answer known from its id alone (its log line never reached the disk).
fn show_unlogged(u: &crate::serve::unlogged::UnloggedAnswer, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(u);
    }
    outln!("request {} (not logged)", u.id)?;
    outln!(
        "  served:     {} {}",
        date(u.time),
        if u.recommendation {
            "to an unknown user"
        } else {
            "(not a recommendation)"
        }
    )?;
    match &u.config_digest {
        Some(c) => outln!("  config:     {c}")?,
        None => outln!("  config:     {}… (not found)", u.config_prefix)?,
    }
    if u.recommendation {
        outln!("  items:      unknown")?;
    }
    if let Some(s) = &u.served {
        show_served(s, u.model.as_ref(), u.dataset.as_ref())?;
    }
    show_tail(&u.restore, &u.notes)?;
    Ok(())
}

fn show_requests(
    ws: &crate::workspace::Workspace,
    found: &[crate::workspace::RequestLineage],
    json: bool,
) -> anyhow::Result<()> {
    // The experiment (if any) whose rule routed each answer.
    let mut experiments = Vec::new();
    for l in found {
        let r = &l.request;
        let user = u64::try_from(r.user).unwrap_or(0);
        experiments.push(crate::experiment::define::explain_route(
            ws, &r.route, user, r.time,
        )?);
    }
    if json {
        let mut v = Vec::new();
        for (l, e) in found.iter().zip(&experiments) {
            let mut x = serde_json::to_value(l)?;
            if let (Some(e), Some(o)) = (e, x.as_object_mut()) {
                o.insert("experiment".into(), serde_json::to_value(e)?);
            }
            v.push(x);
        }
        return if v.len() == 1 {
            super::print_json(&v[0])
        } else {
            super::print_json(&v)
        };
    }
    for (l, e) in found.iter().zip(&experiments) {
        let r = &l.request;
        let s = &r.served;
        outln!("request {}", r.id)?;
        outln!(
            "  served:     {} to user {} ({}, {} µs)",
            date(r.time),
            r.user,
            r.status,
            r.latency_us
        )?;
        outln!(
            "  route:      {} (config {})",
            r.route,
            &s.config_digest[..s.config_digest.len().min(12)]
        )?;
        if let Some(e) = e {
            outln!(
                "  experiment: {}, arm {} ({}): {}",
                e.experiment,
                e.arm,
                e.model,
                e.why
            )?;
        }
        outln!("  items:      {}", r.items.join(","))?;
        show_served(s, l.model.as_ref(), l.dataset.as_ref())?;
        show_tail(&l.restore, &l.notes)?;
    }
    Ok(())
}

/// What answered (model, its train run, dataset, the run that made it), as
/// both a logged and an unlogged answer explain it.
fn show_served(
    s: &crate::segment::ServedBy,
    model: Option<&crate::workspace::ArtifactLineage>,
    dataset: Option<&crate::workspace::ArtifactLineage>,
) -> std::io::Result<()> {
    outln!("  model:      {} {}", s.model, s.model_digest)?;
    if let Some(run) = model.and_then(|m| m.run.as_ref()) {
        outln!(
            "  trained by: {} run {} at commit {}{} (recsys {} build {})",
            run.kind,
            run.id.short(),
            short(&run.git_commit),
            if run.dirty { " (dirty work tree)" } else { "" },
            run.recsys_version,
            &run.build_commit[..run.build_commit.len().min(12)]
        )?;
        if let Some(alg) = &run.algorithm {
            outln!("  algorithm:  {alg} {}", run.params)?;
        }
    }
    if s.dataset.is_empty() {
        outln!("  dataset:    -")?;
    } else {
        outln!("  dataset:    {} {}", s.dataset, s.dataset_digest)?;
    }
    if let Some(run) = dataset.and_then(|d| d.run.as_ref()) {
        outln!(
            "  data from:  {} run {} {}",
            run.kind,
            run.id.short(),
            run.source
        )?;
    }
    Ok(())
}

/// The restore commands and notes that end an answer's explanation.
fn show_tail(restore: &[String], notes: &[String]) -> std::io::Result<()> {
    for c in restore {
        outln!("  restore:    {c}")?;
    }
    for n in notes {
        outln!("  note:       {n}")?;
    }
    Ok(())
}
