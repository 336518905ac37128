use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use crate::workspace::{RemoteState, StoreState, WorkState};

/// Show which tracked artifacts changed, are missing, or are not pushed.
///
/// For each artifact: unchanged / modified / missing in the work tree;
/// missing from the store; not yet pushed to the default remote. Unchanged
/// files are recognised by a stat cache (size, mtime, inode) and never
/// re-hashed.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys status\n  recsys status --json | jq '.[] | select(.workspace != \"unchanged\")'\n  recsys status --exit-code || echo 'something to add or push'"
)]
pub struct Args {
    /// Only these artifacts (or their pointer files).
    paths: Vec<PathBuf>,
    /// Print every artifact as JSON.
    #[arg(long)]
    json: bool,
    /// Exit 1 when anything differs (like `git diff --exit-code`).
    #[arg(long)]
    exit_code: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let only = if a.paths.is_empty() {
        None
    } else {
        Some(
            a.paths
                .iter()
                .map(|p| ws.pointer_for_arg(p))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let st = ws.status(only.as_deref())?;
    let differs = st.iter().any(|s| s.differs());
    if a.json {
        super::print_json(&st)?;
    } else {
        for s in st.iter().filter(|s| s.differs()) {
            let mut what = Vec::new();
            match s.workspace {
                WorkState::Modified => what.push("modified"),
                WorkState::Missing => what.push("missing from the work tree"),
                WorkState::Unchanged => {}
            }
            if s.store == StoreState::Missing {
                what.push("missing from the store");
            }
            if s.remote == RemoteState::NotPushed {
                what.push("not pushed");
            }
            ctx.say(format!("{:<14} {}: {}", s.name, s.path, what.join(", ")));
        }
        if !differs {
            let pushed = if ws.config.pick(None)?.is_none() {
                ""
            } else {
                " and pushed"
            };
            ctx.say(format!(
                "{} tracked artifact(s): unchanged, in the store{pushed}",
                st.len()
            ));
        }
    }
    Ok(if differs && a.exit_code {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
