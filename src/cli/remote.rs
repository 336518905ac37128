use std::process::ExitCode;

use clap::Subcommand;

use super::Ctx;
use crate::store::remote::redact;

/// Manage remotes: other stores to push to and pull from.
///
/// Remotes live in .recsys/config.json (commit it to share them). A remote
/// is a local directory (a path or a file:// URL) or an S3-compatible
/// bucket (s3://bucket/prefix, with --endpoint for MinIO, Ceph, R2, ...).
/// S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
/// (AWS_SESSION_TOKEN), AWS_PROFILE (~/.aws/credentials), or, per remote,
/// the uncommitted .recsys/config.local.json:
///   {"remotes": {"origin": {"access_key_id": "..", "secret_access_key": ".."}}}
/// They are never written to config.json and never printed.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys remote add origin /mnt/shared/recsys --default\n  recsys remote add backup file:///srv/recsys\n  recsys remote add team s3://ml-data/recs --region eu-west-1 --default\n  recsys remote add minio s3://recs/proj --endpoint http://127.0.0.1:9000\n  recsys remote check minio\n  recsys remote list\n  recsys remote remove backup"
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
        /// A directory, file:///path or s3://bucket/prefix.
        url: String,
        /// S3: the server's URL when it is not AWS (http://host:port).
        #[arg(long)]
        endpoint: Option<String>,
        /// S3: the bucket's region (default: AWS_REGION, else us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// Make it the default for push, fetch, pull and status.
        #[arg(long)]
        default: bool,
    },
    /// Check a remote (default: the default remote): endpoint reachable,
    /// credentials accepted, bucket there, and whether the server honours
    /// create-only puts (probed with a short-lived key). Exit 1 when a
    /// step fails.
    Check {
        name: Option<String>,
        #[arg(long)]
        json: bool,
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
        Cmd::Add {
            name,
            url,
            endpoint,
            region,
            default,
        } => {
            ws.config.add_remote(
                &root,
                &name,
                &url,
                endpoint.as_deref(),
                region.as_deref(),
                default,
            )?;
            ws.config.save(&root)?;
            ws.ignore_local_config()?;
            ctx.say(format!("added remote {name} -> {}", redact(&url)));
        }
        Cmd::Check { name, json } => {
            let (n, steps) = ws.check_remote(name.as_deref())?;
            let ok = steps.iter().all(|s| s.ok);
            if json {
                super::print_json(&serde_json::json!({"remote": n, "ok": ok, "steps": steps}))?;
            } else {
                for s in &steps {
                    super::outln!(
                        "{} {}: {}",
                        if s.ok { "ok  " } else { "FAIL" },
                        s.step,
                        s.detail
                    )?;
                }
            }
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
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
