use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::Ctx;
use crate::simulate::{self, FileSink, KafkaSink, LineSink, Server, SimOptions};

/// Simulate users that ask a running server for recommendations and react
/// to what they are shown, as a course-format event stream.
///
/// A seeded population with hidden tastes from MovieLens 100K (a reference
/// ALS model fitted on all its ratings, never shown to the served models)
/// asks the server (GET /recommend/<user>, a few clients, kept-alive
/// connections), watches a listed movie with a probability that rises with
/// its hidden affinity (sometimes one of their favourites instead), one
/// line per minute, rates some, and comes back for another list. Users
/// 1..943 are MovieLens's own; more than that are new users (cold for
/// every model).
///
/// Time: users ask for lists during --minutes of simulated time; what they
/// started watching goes on until they stop. Simulated time runs --speed
/// times faster than the wall clock, and the stream's timestamps with it
/// (an event s simulated seconds in is stamped start + s / speed), so the
/// stream stays on the server's clock: each recommendation line carries
/// the server's answer time, and the monitor joins them as they happened.
/// With --speed 60, an hour of simulated behaviour is a minute of stream:
/// run the monitor with --window 1m. The same --seed against the same
/// answers writes the same lines.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("sink").required(true).args(["brokers", "out"])),
    after_help = "Examples:\n  recsys simulate --server http://127.0.0.1:8082 --users 5000 --minutes 10 --seed 7 \\\n      --brokers localhost:9092 --topic movielog1 --movielens ~/.cache/recsys/ml-100k\n  recsys simulate --server http://127.0.0.1:8082 --users 500 --minutes 10 --speed 60 --out stream.txt --json"
)]
pub struct Args {
    /// The recommendation server, http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    server: String,
    /// Simulated users.
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Simulated minutes during which users ask for recommendations.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seed of the population and of every user's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time per wall-clock time (1 = real time; at most 3600).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    clients: u16,
    /// The MovieLens 100K directory (scripts/fetch-movielens.sh prints it).
    #[arg(long, env = "RECSYS_ML100K", value_name = "DIR")]
    movielens: Option<PathBuf>,
    /// Kafka bootstrap servers to produce the stream to.
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// Topic to produce to.
    #[arg(long)]
    topic: Option<String>,
    /// Write the stream to this file instead of Kafka.
    #[arg(long, conflicts_with = "brokers")]
    out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let server = Server::parse(&a.server)?;
    let Some(dir) = &a.movielens else {
        anyhow::bail!(
            "recsys simulate needs the MovieLens 100K directory: --movielens DIR or RECSYS_ML100K \
             (scripts/fetch-movielens.sh fetches it and prints the path)"
        );
    };
    let o = SimOptions {
        server,
        users: a.users,
        minutes: a.minutes,
        seed: a.seed,
        speed: a.speed,
        clients: usize::from(a.clients),
        // The server stamps answers with the wall clock: so does the stream
        // (RECSYS_NOW does not apply).
        start_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_millis() as i64,
    };
    // Bad options and an unreachable server fail before anything is
    // created or produced.
    simulate::validate(&o)?;
    simulate::check_server(&o.server)?;
    let ml = crate::movielens::read_dir(dir)
        .with_context(|| format!("read MovieLens 100K from {}", dir.display()))?;
    let (mut sink, target): (Box<dyn LineSink>, String) = match (&a.out, &a.brokers, &a.topic) {
        (Some(p), _, _) => (Box::new(FileSink::create(p)?), p.display().to_string()),
        (None, Some(b), Some(t)) => (Box::new(KafkaSink::connect(b, t)?), format!("{t} at {b}")),
        _ => anyhow::bail!("give --brokers and --topic, or --out"),
    };
    let r = simulate::run(&ml, &o, sink.as_mut())?;
    if a.json {
        super::print_json(&r)?;
    } else {
        ctx.say(format!(
            "simulated {} users ({} from MovieLens, {} new) for {} min at {}x against {}: {} requests ({} failed), {} watched from the list ({} from the top 10), {} off the list, {} ratings; {} lines to {target} ({} .. {}, {:.1}s)",
            r.users,
            r.movielens_users,
            r.new_users,
            r.minutes,
            r.speed,
            r.server,
            r.requests,
            r.failed,
            r.watched_from_list,
            r.watched_from_top10,
            r.watched_off_list,
            r.ratings,
            r.lines,
            super::date(r.start_ms),
            super::date(r.end_ms),
            r.wall_ms as f64 / 1000.0
        ));
    }
    Ok(ExitCode::SUCCESS)
}
