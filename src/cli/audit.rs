use std::process::ExitCode;

use super::Ctx;

/// Prove the store and lineage are intact.
///
/// Re-hashes every object in the store; checks that every pointer file
/// resolves, that every lineage row names an existing object, and that
/// every recorded commit exists in git. One line per problem; exit 1 when
/// there is any.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  recsys audit\n  recsys audit --json | jq '.problems[].kind'")]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let (objects, problems) = ws.audit()?;
    if a.json {
        super::print_json(&serde_json::json!({ "objects": objects, "problems": problems }))?;
    } else {
        for p in &problems {
            super::outln!("{p}")?;
        }
        if problems.is_empty() {
            ctx.say(format!("audited {objects} object(s): no problems"));
        } else {
            eprintln!("audited {objects} object(s): {} problem(s)", problems.len());
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
