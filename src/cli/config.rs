use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use crate::serve::config::{ConfigProblem, parse};

/// Work with the serving router config (config.json).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    Check(CheckArgs),
}

/// Validate a router config and report every problem with its JSON path.
///
/// Checks what the server's loader checks, with the same code: a regular
/// file of at most --max-bytes; JSON without duplicate keys, nested at most
/// 32 deep, numbers in range; the structure (unknown fields, types, one
/// action per rule, weights and their sum, percentages, age and bucket
/// ranges, unique rule names, every user routed). Inside a project it
/// also checks that every model version named is registered as a model.
/// Exit 1 when there is any problem.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys config check\n  recsys config check staging.json --json"
)]
struct CheckArgs {
    /// The config file (default: config.json at the project root, or here).
    file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// Largest file accepted, in bytes (as `recsys serve --max-config-bytes`).
    #[arg(long, default_value_t = crate::serve::DEFAULT_MAX_CONFIG_BYTES)]
    max_bytes: u64,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match a.command {
        Sub::Check(c) => check(c, ctx),
    }
}

fn check(a: CheckArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open().ok();
    let file = match (&a.file, &ws) {
        (Some(f), _) => f.clone(),
        (None, Some(ws)) => ws.root().join("config.json"),
        (None, None) => ctx.dir.join("config.json"),
    };
    // The server's reader: a FIFO or a device is refused, never read.
    let bytes = crate::serve::deploy::read_config(&file, a.max_bytes)?;
    let mut problems: Vec<ConfigProblem> = Vec::new();
    let mut models = Vec::new();
    match parse(&bytes) {
        Ok(cfg) => {
            models = cfg.models();
            if let Some(ws) = &ws {
                for (path, name) in cfg.model_paths() {
                    match ws.lineage.artifact_by_name(&name)? {
                        None => problems.push(ConfigProblem {
                            path,
                            message: format!("{name} is not registered in this project"),
                        }),
                        Some(art) if art.kind != "model" => problems.push(ConfigProblem {
                            path,
                            message: format!("{name} is a {}, not a model", art.kind),
                        }),
                        Some(_) => {}
                    }
                }
            }
        }
        Err(e) => problems = e.0,
    }
    if a.json {
        super::print_json(&serde_json::json!({
            "file": file,
            "ok": problems.is_empty(),
            "models": models,
            "problems": problems,
        }))?;
    } else if problems.is_empty() {
        ctx.say(format!(
            "{}: ok (models: {})",
            file.display(),
            models.join(", ")
        ));
    } else {
        for p in &problems {
            super::outln!("{}: {p}", file.display())?;
        }
        eprintln!("{}: {} problem(s)", file.display(), problems.len());
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
