use std::process::ExitCode;

use super::Ctx;
use crate::workspace::Workspace;

/// Create the store, lineage.db and .gitignore entries (idempotent).
///
/// Inside a git work tree, `store/` and `lineage.db` are git-ignored.
/// Outside git it works too and records "no git".
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  git init my-recs && cd my-recs && recsys init")]
pub struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let (_, report) = Workspace::init(&ctx.dir, ctx.settings.clone())?;
    if a.json {
        super::print_json(&report)?;
    } else if report.created.is_empty() {
        ctx.say(format!(
            "recsys project at {} is already initialised",
            report.root.display()
        ));
    } else {
        ctx.say(format!(
            "initialised recsys project at {} ({}); created {}",
            report.root.display(),
            if report.git { "git" } else { "no git" },
            report.created.join(", ")
        ));
    }
    Ok(ExitCode::SUCCESS)
}
