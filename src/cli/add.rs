use std::path::PathBuf;
use std::process::ExitCode;

use super::{Ctx, bytes};
use crate::workspace::{AddOptions, Kind};

/// Track files or directories: store their bytes, write pointer files.
///
/// The content is streamed into store/ while being hashed (BLAKE3), made
/// durable, registered in lineage.db with the git commit and recsys build,
/// and a pointer file `<path>.recsys` is written beside it for git to
/// track; the artifact itself is added to .gitignore.
///
/// Version names are assigned per kind: dataset_1, dataset_2, ... and
/// model_v1, model_v2, ...; a name is never reused for different bytes.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys add data/ratings.csv --kind dataset\n  recsys add models/model.bin --kind model --name model_v7\n  recsys add data/big.parquet --link hardlink   # no copy; the file becomes read-only\n  git add data/ratings.csv.recsys data/.gitignore && git commit -m 'dataset_1'"
)]
pub struct Args {
    /// Files or directories inside the project.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Artifact kind (default: the existing pointer's, else `model` under
    /// models/ and `dataset` elsewhere).
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Version name instead of the next automatic one.
    #[arg(long)]
    name: Option<String>,
    /// How the bytes get into the store. `copy` (default) leaves your file
    /// as it was. `hardlink` moves no bytes (instant for large files): the
    /// store keeps a second name for your file and makes it read-only, so
    /// change it by replacing it (write a new file, then `recsys add` it
    /// again), never by editing it in place. Files with other hard links or
    /// execute bits are copied anyway.
    #[arg(long, value_enum, default_value = "copy", value_name = "HOW")]
    link: AddLink,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AddLink {
    Copy,
    Hardlink,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let bar = ctx.progress();
    let added = ws.add(
        &a.paths,
        &AddOptions {
            kind: a.kind,
            name: a.name,
            hardlink: a.link == AddLink::Hardlink,
        },
        &bar,
    )?;
    if a.json {
        super::print_json(&added)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut to_git = Vec::new();
    for x in &added {
        let what = match x.files {
            Some(f) => format!("{f} files, {}", bytes(x.size)),
            None => bytes(x.size),
        };
        if x.unchanged {
            ctx.say(format!(
                "{}: unchanged ({}, {})",
                x.path,
                x.name,
                x.digest.short()
            ));
        } else {
            ctx.say(format!(
                "added {} as {} {} ({}, {what})",
                x.path,
                x.kind.as_str(),
                x.name,
                x.digest.short()
            ));
            to_git.push(x.pointer.clone());
        }
    }
    if !to_git.is_empty() {
        ctx.say(format!(
            "track it in git:  git add {} && git commit",
            to_git.join(" ")
        ));
    }
    Ok(ExitCode::SUCCESS)
}
