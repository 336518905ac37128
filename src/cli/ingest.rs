use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::Ctx;
use crate::ingest::{
    self, IngestError, IngestOptions, IngestReport, QualityReport, Stop, UserSource,
};

/// Consume the event stream from Kafka into the next dataset version.
///
/// Reads every partition of the topic from the group's position (or the
/// earliest message), stops after exactly --max-messages messages (empty
/// ones included) or after --minutes, never at the end of a partition.
/// The parsed events become `data/dataset_N/`, registered with the topic,
/// partitions and offset ranges in its run record; consumer offsets are
/// committed only after that, so a crash re-reads rather than loses.
/// Lines that do not parse are kept with their reasons in
/// `data/dataset_N/quarantine.jsonl`, counted, never fatal.
///
/// Quality figures (schema violations by kind, out-of-range ratings,
/// duplicates, unknown users and movies, drift against the previous
/// dataset) are printed and recorded as run metrics. Severe drift — event
/// rate changed more than 3x, mean rating moved more than 0.5 stars, or
/// over half the events about movies the previous dataset never saw —
/// fails the ingest (exit 1, nothing recorded or committed) unless
/// --allow-drift.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys ingest --brokers localhost:9092 --topic movielog1 --minutes 15\n  recsys ingest --brokers localhost:9092 --topic movielog1 --max-messages 100000 \\\n      --user-api http://localhost:8080/user/ --json"
)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Where and how long to consume; shared with `recsys pipeline`.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("stop").required(true).multiple(true).args(["minutes", "max_messages"])),
    group(clap::ArgGroup::new("user_source").args(["users", "user_api"])),
)]
pub struct Source {
    /// Kafka bootstrap servers, host:port[,host:port...].
    #[arg(long)]
    brokers: String,
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Stop after this many minutes (fractions allowed).
    #[arg(long, value_parser = parse_minutes)]
    minutes: Option<f64>,
    /// Stop after exactly this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_messages: Option<u64>,
    /// Consumer group whose committed offsets mark where to resume.
    #[arg(long, default_value = ingest::DEFAULT_GROUP)]
    group: String,
    /// JSON-lines file of user records ({"user_id":1,"age":29,"occupation":"...","gender":"M"}).
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// User API base URL; GET <url><user id> per new user, cached.
    #[arg(long, value_name = "URL")]
    user_api: Option<String>,
    /// Record the dataset even when drift is severe.
    #[arg(long)]
    allow_drift: bool,
}

fn parse_minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 && m < 1e6 => Ok(m),
        _ => Err(format!("{s:?} is not a positive number of minutes")),
    }
}

impl Source {
    pub fn options(&self) -> IngestOptions {
        let a = self;
        let mut opts = IngestOptions::new(
            &a.brokers,
            &a.topic,
            Stop {
                max_messages: a.max_messages,
                duration: a.minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
            },
        );
        opts.group = a.group.clone();
        opts.allow_drift = a.allow_drift;
        opts.users = match (&a.users, &a.user_api) {
            (Some(f), _) => UserSource::File(f.clone()),
            (None, Some(u)) => UserSource::Api(u.clone()),
            (None, None) => UserSource::None,
        };
        opts
    }
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let opts = a.source.options();
    let bar = ctx.progress();
    let observed = super::openlineage::Observed::start(ctx, &ws, "ingest")?;
    let res = ingest::run(&ws, &opts, &bar);
    if let Some(o) = &observed {
        match &res {
            Ok(r) => o.complete(&ws, r.run),
            Err(e) => o.fail(&ws, e),
        }
    }
    match res {
        Ok(r) => {
            if a.json {
                super::print_json(&r)?;
            } else if !ctx.quiet {
                print_report(&r)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(IngestError::Drift {
            reference,
            findings,
            quality,
        }) => {
            if a.json {
                super::print_json(&serde_json::json!({
                    "error": "drift",
                    "reference": reference,
                    "findings": findings,
                    "quality": quality,
                }))?;
            } else if !ctx.quiet {
                print_quality(&mut std::io::stdout().lock(), &quality)?;
            }
            eprintln!("error: severe drift against {reference}:");
            for f in &findings {
                eprintln!("  {f}");
            }
            eprintln!(
                "hint: nothing was recorded and no offsets were committed; \
                 rerun with --allow-drift to accept the data"
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn print_report(r: &IngestReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ingested {} messages from {} into {} ({}) in {:.1}s",
        r.messages,
        r.topic,
        r.dataset,
        r.digest.short(),
        r.seconds
    )?;
    writeln!(
        out,
        "  events: {} watch, {} rate, {} recommendation; {} quarantined{}",
        r.events.watch,
        r.events.rate,
        r.events.recommendation,
        r.quarantined,
        if r.quarantined > 0 {
            format!(" ({}/{})", r.path, ingest::QUARANTINE_FILE)
        } else {
            String::new()
        }
    )?;
    let parts: Vec<String> = r
        .offsets
        .iter()
        .map(|(p, o)| match (o.first, o.last) {
            (Some(f), Some(l)) => format!("p{p} {f}..={l} ({})", o.messages),
            _ => format!("p{p} none"),
        })
        .collect();
    writeln!(out, "  offsets: {}", parts.join(", "))?;
    print_quality(&mut out, &r.quality)?;
    match &r.commit_error {
        None => writeln!(out, "  offsets committed to group {}", r.group)?,
        Some(e) => writeln!(
            out,
            "  warning: dataset recorded but the offset commit failed ({e}); \
             the next ingest resumes from the recorded offsets anyway"
        )?,
    }
    writeln!(
        out,
        "track it in git:  git add {}.recsys && git commit",
        r.path
    )?;
    out.flush()
}

pub(crate) fn print_quality(out: &mut impl Write, q: &QualityReport) -> std::io::Result<()> {
    let viol: Vec<String> = q
        .schema_violations
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    writeln!(
        out,
        "  quality: schema violations: {}; out-of-range ratings {}; duplicates {}; \
         unknown users {}/{}; unknown movies {}",
        if viol.is_empty() {
            "none".to_string()
        } else {
            viol.join(", ")
        },
        q.out_of_range_ratings,
        q.duplicate_events,
        q.unknown_users,
        q.users,
        match q.unknown_movies {
            Some(n) => format!("{n}/{}", q.movies),
            None => format!("- of {} (no previous dataset)", q.movies),
        }
    )?;
    if let Some(d) = &q.drift {
        let mut parts = Vec::new();
        if let Some(c) = &d.event_rate_per_min {
            parts.push(format!(
                "event rate {:.1} -> {:.1}/min",
                c.previous, c.current
            ));
        }
        if let Some(c) = &d.rating_mean {
            parts.push(format!("rating mean {:.2} -> {:.2}", c.previous, c.current));
        }
        if let Some(s) = d.new_movie_share {
            parts.push(format!("new-movie share {:.1}%", s * 100.0));
        }
        writeln!(
            out,
            "  drift vs {}: {}",
            d.reference,
            if parts.is_empty() {
                "too little data to compare".into()
            } else {
                parts.join(", ")
            }
        )?;
        for f in &d.findings {
            writeln!(out, "  drift {:?}: {}", f.severity, f.message)?;
        }
    }
    for w in &q.warnings {
        writeln!(out, "  warning: {w}")?;
    }
    Ok(())
}
