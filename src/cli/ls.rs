use std::io::Write;
use std::process::ExitCode;

use super::{Ctx, bytes, date, short};
use crate::lineage::ArtifactRow;
use crate::workspace::Kind;

/// List registered versions with digest, size, commit and date.
///
/// With --kind model, each model's headline metrics from its latest
/// `recsys evaluate` run sit side by side (P@10 of the popularity baseline
/// on the same split in BASE@10).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  recsys ls\n  recsys ls --kind model --json")]
pub struct Args {
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    artifact: ArtifactRow,
    /// Models: the metrics of the latest evaluate run.
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<serde_json::Value>,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let artifacts = ws.lineage.artifacts(a.kind.map(|k| k.as_str()))?;
    let mut rows = Vec::with_capacity(artifacts.len());
    for artifact in artifacts {
        let metrics = if artifact.kind == Kind::Model.as_str() {
            crate::pipeline::latest_evaluation(&ws, &artifact)?
        } else {
            None
        };
        rows.push(Row { artifact, metrics });
    }
    if a.json {
        super::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        ctx.say("no versions registered yet (recsys add <path> --kind dataset)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    if a.kind == Some(Kind::Model) {
        return models(&mut out, &rows);
    }
    writeln!(
        out,
        "{:<16} {:<8} {:<12} {:>10} {:<13} {:<20} PATH",
        "NAME", "KIND", "DIGEST", "SIZE", "COMMIT", "DATE"
    )?;
    for Row { artifact: r, .. } in rows {
        writeln!(
            out,
            "{:<16} {:<8} {:<12} {:>10} {:<13} {:<20} {}",
            r.name,
            r.kind,
            r.digest.short(),
            bytes(r.size),
            format!("{}{}", short(&r.git_commit), if r.dirty { "+" } else { "" }),
            date(r.created),
            r.path.unwrap_or_default()
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Models with their latest offline metrics side by side.
fn models(out: &mut impl Write, rows: &[Row]) -> anyhow::Result<ExitCode> {
    let num = |m: &Option<serde_json::Value>, path: &[&str]| -> String {
        let mut v = m.as_ref();
        for k in path {
            v = v.and_then(|x| x.get(k));
        }
        v.and_then(serde_json::Value::as_f64)
            .map_or("-".into(), |x| format!("{x:.4}"))
    };
    writeln!(
        out,
        "{:<16} {:<12} {:>10} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:<13} DATE",
        "NAME", "DIGEST", "SIZE", "RMSE", "P@10", "R@20", "NDCG@20", "HIT@20", "BASE@10", "COMMIT"
    )?;
    for Row {
        artifact: r,
        metrics: m,
    } in rows
    {
        writeln!(
            out,
            "{:<16} {:<12} {:>10} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:<13} {}",
            r.name,
            r.digest.short(),
            bytes(r.size),
            num(m, &["rmse"]),
            num(m, &["precision_at_10"]),
            num(m, &["recall_at_20"]),
            num(m, &["ndcg_at_20"]),
            num(m, &["hit_rate_at_20"]),
            num(m, &["baseline", "precision_at_10"]),
            format!("{}{}", short(&r.git_commit), if r.dirty { "+" } else { "" }),
            date(r.created),
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
