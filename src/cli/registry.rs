use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use crate::mlflow;

/// Mirror recsys's model versions into another model registry.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys registry sync --mlflow http://127.0.0.1:5000\n  recsys registry sync --mlflow http://mlflow:5000 --name movie-recommender --json"
)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    Sync(SyncArgs),
}

/// Make an MLflow model registry mirror this project's models.
///
/// One registered model (--name, default: the project directory's name)
/// whose versions are model_v1, model_v2, ... oldest first, found again by
/// their `recsys.model` tag. Each version's tags: recsys.digest (BLAKE3 of
/// the model file), recsys.dataset and recsys.dataset_digest (what it was
/// trained on), recsys.code_commit, recsys.algorithm, recsys.train_run
/// (the run record) and metric.<name> from its latest `recsys evaluate`.
/// The arms config.json serves become aliases: `default`, `<rule>`,
/// `<rule>-split-<i>`, `<rule>-canary`; aliases an earlier sync set that
/// are no longer served are removed, others are left alone.
///
/// Idempotent: the registry is read first and only what differs is
/// written; a second sync changes nothing and says so. Versions are never
/// deleted. Exit codes: 0 in sync (changed or not), 2 an error (an
/// unreachable MLflow, a config arm naming an unregistered model).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys registry sync --mlflow http://127.0.0.1:5000\n  recsys registry sync --mlflow http://mlflow:5000 --name movie-recommender --json"
)]
struct SyncArgs {
    /// The MLflow tracking server, http://host:port.
    #[arg(long, value_name = "URL", required = true)]
    mlflow: String,
    /// The registered model's name [default: the project directory's name].
    #[arg(long)]
    name: Option<String>,
    /// The serving config whose arms become aliases.
    #[arg(long, default_value = "config.json", value_name = "FILE")]
    config: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let What::Sync(a) = a.what;
    let client = mlflow::Client::new(&a.mlflow)?;
    let ws = ctx.open()?;
    let project = ws
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "recsys".into());
    let name = a.name.clone().unwrap_or_else(|| project.clone());
    let config = if a.config.is_absolute() {
        a.config.clone()
    } else {
        ws.root().join(&a.config)
    };
    let wanted = mlflow::wanted(&ws, &name, &project, &config)?;
    let r = mlflow::sync(&client, &wanted)?;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.unchanged {
        ctx.say(format!(
            "in sync: registered model {} at {} already mirrors {} model version(s) and {} alias(es); nothing changed",
            r.registered_model,
            r.url,
            r.versions.len(),
            wanted.aliases.len()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if r.created_registered_model {
        ctx.say(format!(
            "created registered model {} at {}",
            r.registered_model, r.url
        ));
    }
    for m in &r.versions_created {
        ctx.say(format!(
            "  {m} -> version {}",
            r.versions.get(m).map_or("?", String::as_str)
        ));
    }
    if r.tags_set > 0 {
        ctx.say(format!("  {} tag(s) updated", r.tags_set));
    }
    for al in &r.aliases_set {
        let model = wanted.aliases.get(al).map_or("?", String::as_str);
        ctx.say(format!("  alias {al} -> {model}"));
    }
    for al in &r.aliases_removed {
        ctx.say(format!("  alias {al} removed (no longer served)"));
    }
    ctx.say(format!(
        "synced {} model version(s) to {} at {}",
        r.versions.len(),
        r.registered_model,
        r.url
    ));
    Ok(ExitCode::SUCCESS)
}
