use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use crate::ingest::IngestError;
use crate::pipeline::{self, ChainOptions, PipelineError, Step};

/// The whole chain, one command: ingest, check, version, train, evaluate,
/// register — and optionally promote.
///
/// Consumes the event stream for --minutes or exactly --max-messages,
/// checks data quality (severe drift stops here unless --allow-drift),
/// versions the events as the next dataset_N, trains the next model_vN on
/// it, evaluates it on the part its training held out, and registers
/// everything with lineage. With --promote, the serving config is pointed
/// at the new model only if it beats the model currently served on
/// precision@10 over the new data (the served model is scored on all of
/// it: a forward test on data it never saw).
///
/// Exit codes: 0 done (promoted or not), 1 stopped by severe drift, 2 error.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys pipeline --brokers localhost:9092 --topic movielog1 --minutes 15\n  recsys pipeline --brokers localhost:9092 --topic movielog1 --max-messages 500000 \\\n      --algo als --factors 64 --promote --json\n\nOn a schedule (cron, every night at 02:00; a systemd timer is in the README):\n  0 2 * * * cd /srv/recs && recsys pipeline --brokers kafka:9092 --topic movielog1 \\\n      --minutes 15 --promote >> pipeline.log 2>&1"
)]
pub struct Args {
    #[command(flatten)]
    source: super::ingest::Source,
    #[command(flatten)]
    train: super::train::Flags,
    /// Point the serving config at the new model if it beats the served one.
    #[arg(long)]
    promote: bool,
    /// The serving config --promote rewrites.
    #[arg(long, default_value = "config.json", value_name = "FILE")]
    config: PathBuf,
    /// Print one JSON object with every step's report.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let bar = ctx.progress();
    let config_path = if a.config.is_absolute() {
        a.config.clone()
    } else {
        ws.root().join(&a.config)
    };
    let o = ChainOptions {
        ingest: a.source.options(),
        // The chain trains on the dataset it ingests.
        train: a.train.options(""),
        promote: a.promote.then_some(config_path),
    };
    let observed = super::openlineage::Observed::start(ctx, &ws, "pipeline")?;
    let mut shown: std::io::Result<()> = Ok(());
    let mut on_step = |step: Step<'_>| {
        if let Some(o) = &observed {
            match &step {
                Step::Ingested(r) => o.step(&ws, "ingest", r.run),
                Step::Trained(r) => o.step(&ws, "train", r.run),
                Step::Evaluated(r) => o.step(&ws, "evaluate", r.run),
                Step::Promotion(_) => {}
            }
        }
        if a.json || shown.is_err() {
            return;
        }
        match step {
            Step::Ingested(r) => {
                if !ctx.quiet {
                    shown = super::ingest::print_report(r);
                }
            }
            Step::Trained(r) => super::train::report(ctx, r),
            Step::Evaluated(r) => super::evaluate::report(ctx, r),
            Step::Promotion(p) => ctx.say(format!(
                "{}: {}",
                if p.promoted {
                    "promoted"
                } else {
                    "not promoted"
                },
                p.reason
            )),
        }
    };
    let res = pipeline::run_chain(&ws, &o, &bar, &mut on_step);
    if let Some(ob) = &observed {
        match &res {
            Ok(_) => ob.complete(&ws, None),
            Err(e) => ob.fail(&ws, e),
        }
    }
    let report = match res {
        Ok(r) => r,
        Err(PipelineError::Ingest(IngestError::Drift {
            reference,
            findings,
            ..
        })) => {
            eprintln!("error: severe drift against {reference}; pipeline stopped before training:");
            for f in &findings {
                eprintln!("  {f}");
            }
            eprintln!("hint: nothing was recorded; rerun with --allow-drift to accept the data");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    shown?;
    if a.json {
        super::print_json(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}
