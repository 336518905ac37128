use std::process::ExitCode;

use super::Ctx;
use crate::pipeline;

/// Retrain a model from its recorded data and settings; compare digests.
///
/// Reads the exact dataset bytes the train run recorded from the store (by
/// digest: it need not be checked out), retrains with the recorded
/// algorithm, parameters, split, seed and thread count, and compares the
/// model's content digest (weights and parameters; not the header's commit
/// or time). Exit 0 when they match, 1 when they do not.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys reproduce model_v3\n  recsys reproduce model_v3 --json"
)]
pub struct Args {
    /// The model: version name, digest (prefix) or path.
    model: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let r = pipeline::reproduce(&ws, &a.model)?;
    let code = if r.matches {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if a.json {
        super::print_json(&r)?;
        return Ok(code);
    }
    ctx.say(format!(
        "retrained {} ({}) on {} ({}) with {} threads in {:.2} s",
        r.model,
        r.settings.algorithm,
        r.dataset,
        r.dataset_digest.short(),
        r.settings.threads,
        r.fit_seconds
    ));
    ctx.say(format!("  registered content digest {}", r.recorded));
    ctx.say(format!("  retrained  content digest {}", r.retrained));
    if r.matches {
        ctx.say("reproduced: the digests match");
    } else {
        eprintln!("NOT reproduced: the retrained model differs from the registered one");
    }
    Ok(code)
}
