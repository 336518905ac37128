use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use crate::ingest::replay;

/// Turn a dataset back into a course-format event stream.
///
/// Each rating becomes watch lines (one per minute, more for higher
/// ratings, at most --watch-minutes) followed by a rate line; watch events
/// and recommendation requests are replayed as they are. Lines are in time
/// order with the dataset's own times; each is produced to Kafka keyed by
/// user id, or written to a file with --out.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("sink").required(true).args(["brokers", "out"])),
    after_help = "Examples:\n  recsys replay dataset_1 --brokers localhost:9092 --topic movielog1 --rate 1000\n  recsys replay dataset_1 --out stream.txt"
)]
pub struct Args {
    /// Dataset version (name, digest prefix or path).
    dataset: String,
    /// Kafka bootstrap servers to produce to.
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// Topic to produce to.
    #[arg(long)]
    topic: Option<String>,
    /// Lines per second (default: as fast as possible).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Write the lines to this file instead of Kafka.
    #[arg(long, conflicts_with = "brokers")]
    out: Option<PathBuf>,
    /// Most watch minutes synthesised before one rating.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    watch_minutes: u32,
    /// Stop after this many lines.
    #[arg(long)]
    limit: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of events per second"
        )),
    }
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let row = ws.find_artifact(&a.dataset)?;
    let data = ws.load_dataset(&row)?;
    let lines = replay::lines(
        &data,
        &replay::ReplayOptions {
            watch_minutes: a.watch_minutes,
            rate: a.rate,
            limit: a.limit,
        },
    );
    let t0 = std::time::Instant::now();
    let (n, target) = match (&a.out, &a.brokers, &a.topic) {
        (Some(path), _, _) => (
            replay::write_file(&lines.lines, path)?,
            path.display().to_string(),
        ),
        (None, Some(brokers), Some(topic)) => (
            replay::produce(brokers, topic, &lines.lines, a.rate)?,
            format!("{topic} at {brokers}"),
        ),
        _ => anyhow::bail!("give --brokers and --topic, or --out"),
    };
    if a.json {
        super::print_json(&serde_json::json!({
            "dataset": row.name,
            "lines": n,
            "skipped": lines.skipped,
            "target": target,
            "seconds": t0.elapsed().as_secs_f64(),
        }))?;
    } else {
        ctx.say(format!(
            "replayed {} as {n} lines to {target} in {:.1}s{}",
            row.name,
            t0.elapsed().as_secs_f64(),
            if lines.skipped > 0 {
                format!(" ({} rows with invalid movie ids left out)", lines.skipped)
            } else {
                String::new()
            }
        ));
    }
    Ok(ExitCode::SUCCESS)
}
