use std::process::ExitCode;

use super::{Ctx, bytes, date, short};

/// Where an artifact came from: its run, code commit, inputs and outputs.
///
/// Accepts a version name (dataset_3, model_v2), a digest or a unique
/// prefix of one (6+ hex digits), or a work-tree path. `--rebuild`
/// recreates lineage.db's index from the run records in the store and the
/// pointer files in every commit.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys lineage dataset_3\n  recsys lineage models/model_v2.bin --json\n  recsys lineage --rebuild"
)]
pub struct Args {
    /// Version name, digest (prefix) or path.
    #[arg(required_unless_present = "rebuild")]
    what: Option<String>,
    /// Rebuild the index from run records and pointer files.
    #[arg(long, conflicts_with = "what")]
    rebuild: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut ws = ctx.open()?;
    if a.rebuild {
        let r = ws.rebuild_lineage()?;
        if a.json {
            super::print_json(&r)?;
        } else {
            ctx.say(format!(
                "rebuilt lineage.db: {} run(s), {} artifact version(s)",
                r.runs_indexed, r.artifacts
            ));
            for m in &r.missing_run_records {
                eprintln!("missing run record: {m}");
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
    let what = a.what.unwrap_or_default();
    let l = ws.artifact_lineage(&what)?;
    if a.json {
        super::print_json(&l)?;
        return Ok(ExitCode::SUCCESS);
    }
    let art = &l.artifact;
    println!("{} ({})", art.name, art.kind);
    println!("  digest:     {}", art.digest);
    println!(
        "  size:       {}{}",
        bytes(art.size),
        art.files
            .map(|f| format!(" in {f} files"))
            .unwrap_or_default()
    );
    if let Some(p) = &art.path {
        println!("  path:       {p}");
    }
    println!(
        "  registered: {} at commit {}{}",
        date(art.created),
        short(&art.git_commit),
        if art.dirty { " (dirty work tree)" } else { "" }
    );
    println!(
        "  by:         recsys {} (build {})",
        art.recsys_version,
        &art.build_commit[..art.build_commit.len().min(12)]
    );
    if let Some(r) = &l.run {
        println!(
            "  run:        {} {} ({} -> {})",
            r.kind,
            r.id.short(),
            date(r.started),
            date(r.ended)
        );
        if let Some(alg) = &r.algorithm {
            println!("  algorithm:  {alg} {}", r.params);
        }
        if !r.source.is_null() && r.source != serde_json::json!({}) {
            println!("  source:     {}", r.source);
        }
        if !r.metrics.is_null() && r.metrics != serde_json::json!({}) {
            println!("  metrics:    {}", r.metrics);
        }
    }
    for i in &l.inputs {
        println!("  input:      {} {}", i.name, i.digest.short());
    }
    for o in &l.outputs {
        if o.digest != art.digest {
            println!("  output:     {} {}", o.name, o.digest.short());
        }
    }
    for u in &l.used_by {
        println!(
            "  used by:    {} run {} ({})",
            u.kind,
            u.id.short(),
            date(u.started)
        );
    }
    if !l.upstream.is_empty() {
        println!("  upstream:");
        for u in &l.upstream {
            let pad = "  ".repeat(u.depth);
            match &u.run {
                Some(r) => {
                    println!(
                        "  {pad}<- {} {} ({}) made by {} run {} at commit {}",
                        u.kind,
                        u.name,
                        u.digest.short(),
                        r.kind,
                        r.id.short(),
                        short(&r.git_commit)
                    );
                    if let Some(alg) = &r.algorithm {
                        println!("  {pad}   algorithm: {alg} {}", r.params);
                    }
                    if !r.source.is_null() && r.source != serde_json::json!({}) {
                        println!("  {pad}   source:    {}", r.source);
                    }
                }
                None => println!(
                    "  {pad}<- {} {} (its run is not indexed here)",
                    u.name,
                    u.digest.short()
                ),
            }
        }
    }
    println!("  restore:    {}", l.restore);
    Ok(ExitCode::SUCCESS)
}
