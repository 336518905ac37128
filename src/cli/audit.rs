use std::process::ExitCode;

use super::Ctx;

/// Prove the store and lineage are intact.
///
/// Re-hashes every object in the store; checks that every pointer file
/// resolves, that every lineage row names an existing object, and that
/// every recorded commit exists in git. One line per problem; exit 1 when
/// there is any.
///
/// `--remote [NAME]` audits a remote instead: every object a pointer file,
/// run record or request-log segment names (and every index entry) must be
/// listed there with the size it has here; `--deep` downloads and
/// re-hashes each one.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys audit\n  recsys audit --json | jq '.problems[].kind'\n  recsys audit --remote\n  recsys audit --remote team --deep"
)]
pub struct Args {
    /// Audit this remote (default: the default remote), not the store.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    remote: Option<String>,
    /// With --remote: download and re-hash every named object.
    #[arg(long, requires = "remote")]
    deep: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    if let Some(name) = &a.remote {
        let name = (!name.is_empty()).then_some(name.as_str());
        let r = ws.audit_remote(name, a.deep)?;
        if a.json {
            super::print_json(&r)?;
        } else {
            for p in &r.problems {
                super::outln!("{p}")?;
            }
            let what = format!(
                "remote {}: {} named object(s) checked against {} listed{}",
                r.remote,
                r.checked,
                r.listed,
                if a.deep {
                    format!(", {} re-hashed", r.rehashed)
                } else {
                    String::new()
                }
            );
            if r.problems.is_empty() {
                ctx.say(format!("{what}: no problems"));
            } else {
                eprintln!("{what}: {} problem(s)", r.problems.len());
            }
        }
        return Ok(if r.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
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
