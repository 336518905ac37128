use std::process::ExitCode;

use clap::Subcommand;

use super::Ctx;
use crate::store::remote::redact;

/// Manage remotes: other stores to push to and pull from.
///
/// Remotes live in .recsys/config.json (commit it to share them). Today a
/// remote is a local directory (a path or a file:// URL); credentials in a
/// URL are never printed.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys remote add origin /mnt/shared/recsys --default\n  recsys remote add backup file:///srv/recsys\n  recsys remote list\n  recsys remote remove backup"
)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Add a remote.
    Add {
        name: String,
        url: String,
        /// Make it the default for push, fetch, pull and status.
        #[arg(long)]
        default: bool,
    },
    /// List remotes (the default is marked with *).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a remote (its objects are left alone).
    Remove { name: String },
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut ws = ctx.open()?;
    let root = ws.root().to_path_buf();
    match a.cmd {
        Cmd::Add { name, url, default } => {
            ws.config.add_remote(&root, &name, &url, default)?;
            ws.config.save(&root)?;
            ctx.say(format!("added remote {name} -> {}", redact(&url)));
        }
        Cmd::List { json } => {
            let list = ws.config.list();
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(n, u, d)| serde_json::json!({"name": n, "url": u, "default": d}))
                    .collect();
                super::print_json(&v)?;
            } else {
                for (n, u, d) in list {
                    super::outln!("{} {n}\t{u}", if d { "*" } else { " " })?;
                }
            }
        }
        Cmd::Remove { name } => {
            ws.config.remove_remote(&name)?;
            ws.config.save(&root)?;
            ctx.say(format!("removed remote {name}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
