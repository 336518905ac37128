use std::process::ExitCode;

use super::Ctx;

/// Which tracked artifacts were added, changed or removed between revisions.
///
/// With no revision: HEAD against the work tree's pointer files. With one:
/// that revision against the work tree. With two: the first against the
/// second.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys diff\n  recsys diff HEAD~1\n  recsys diff v1.0 v2.0 --json"
)]
pub struct Args {
    rev_a: Option<String>,
    rev_b: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let base = a.rev_a.unwrap_or_else(|| "HEAD".into());
    let d = ws.diff(&base, a.rev_b.as_deref())?;
    if a.json {
        super::print_json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    if d.is_empty() {
        ctx.say("no tracked artifact changed");
    }
    for e in d {
        let v = |x: &Option<crate::workspace::EdgeView>| match x {
            Some(x) => format!("{} {}", x.name, x.digest.short()),
            None => "-".into(),
        };
        let sign = match e.change {
            "added" => "+",
            "removed" => "-",
            _ => "~",
        };
        super::outln!("{sign} {}: {} -> {}", e.path, v(&e.old), v(&e.new))?;
    }
    Ok(ExitCode::SUCCESS)
}
