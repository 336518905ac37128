use std::process::ExitCode;

use super::{Ctx, bytes, date, short};
use crate::workspace::Kind;

/// List registered versions with digest, size, commit and date.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  recsys ls\n  recsys ls --kind model --json")]
pub struct Args {
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let rows = ws.lineage.artifacts(a.kind.map(|k| k.as_str()))?;
    if a.json {
        super::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        ctx.say("no versions registered yet (recsys add <path> --kind dataset)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<8} {:<12} {:>10} {:<13} {:<20} PATH",
        "NAME", "KIND", "DIGEST", "SIZE", "COMMIT", "DATE"
    );
    for r in rows {
        println!(
            "{:<16} {:<8} {:<12} {:>10} {:<13} {:<20} {}",
            r.name,
            r.kind,
            r.digest.short(),
            bytes(r.size),
            format!("{}{}", short(&r.git_commit), if r.dirty { "+" } else { "" }),
            date(r.created),
            r.path.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
