use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Ctx;
use crate::monitor::http::{self, AlertRules, AlertState, SharedSink};
use crate::monitor::report::{self, By};
use crate::monitor::source::{Feed, KafkaInput, SegmentInput};
use crate::monitor::{JoinConfig, Monitor, Sink, Source};

/// Watch the service: join served answers with what users watched next,
/// per model version, into a monitoring database.
///
/// A long-running job. It consumes the course stream (watch, rate and
/// recommendation-request lines; availability is judged from the stream,
/// as the course's grader judges it) and recsys's own request log — the
/// Kafka copy `recsys serve --log-kafka` writes (--requests-topic), or the
/// local segments of a project (--requests-from) — and writes both, plus
/// the closed feedback windows and per-minute rollups, to PostgreSQL
/// (--db postgres://...) or to `monitor.db` (SQLite) in the project.
///
/// Each answer is open for --window (1 h): a watch by the same user of one
/// of its items converts it (top 10 and top 20 counted apart; the first
/// conversion wins; a movie the user was already watching in the
/// --lookback before the answer counts as "continued", not converted).
/// Event time, not arrival time: windows close when the watermark (the
/// slower source's newest event time minus --allowed-lateness) passes
/// them; later events are stored and counted as late. Rows, consumed
/// offsets and the join's checkpoint are written in one transaction per
/// batch, so after kill -9 or a database restart every event is stored
/// exactly once and the job resumes where the database says.
///
/// `recsys monitor report` prints the figures.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  recsys monitor --brokers localhost:9092 --topic movielog1 --requests-topic recsys-requests\n  recsys monitor --brokers localhost:9092 --topic movielog1 --requests-from . \\\n      --db postgres://postgres@127.0.0.1:5432/test --http 127.0.0.1:9108\n  recsys monitor report --since 24h --by model --json"
)]
pub struct Args {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Kafka bootstrap servers, host:port[,host:port...].
    #[arg(long)]
    brokers: Option<String>,
    /// The course stream's topic (movielog<N>).
    #[arg(long)]
    topic: Option<String>,
    /// The request log's Kafka topic (what `serve --log-kafka` writes).
    #[arg(long, value_name = "TOPIC", conflicts_with = "requests_from")]
    requests_topic: Option<String>,
    /// Follow the local request-log segments of the project at DIR instead.
    #[arg(long, value_name = "DIR")]
    requests_from: Option<PathBuf>,
    #[command(flatten)]
    db: DbArg,
    /// How long an answer stays open for conversions.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    window: Duration,
    /// How far behind the newest event an event may arrive and still count.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    allowed_lateness: Duration,
    /// A watch of an item this long before the answer makes it "continued".
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    lookback: Duration,
    /// A source that is caught up and silent this long stops holding the
    /// watermark back.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    idle: Duration,
    /// Write a batch at least this often.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    batch_every: Duration,
    /// Exit once every source is caught up and idle and all is written
    /// (for backfills and scripts).
    #[arg(long)]
    stop_when_idle: bool,
    /// Serve the dashboard page (and /api/*) on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<SocketAddr>,
    /// Post Slack-format alerts (firing, resolved) to this webhook URL.
    #[arg(long, value_name = "URL")]
    alert_webhook: Option<String>,
    /// How often alerts are evaluated.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    alert_every: Duration,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DbArg {
    /// postgres://user@host:port/db (or a key=value connection string);
    /// default: monitor.db (SQLite) in the project.
    #[arg(long, value_name = "URL")]
    pub(crate) db: Option<String>,
}

/// Print the monitoring figures: per model version (or arm), stream
/// availability and latency, late events, recommendation health.
///
/// Figures cover --since back from the newest minute in the database.
/// `converted_k` counts closed answers with at least one of their first k
/// items watched by the user within the window; `provisional` counts
/// answers whose windows are still open (not yet in converted_k).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys monitor report\n  recsys monitor report --since 2h --by arm\n  recsys monitor report --db postgres://postgres@127.0.0.1/test --json"
)]
struct ReportArgs {
    /// How far back to report.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    since: Duration,
    /// Group per model version (default) or per config rule/arm.
    #[arg(long, value_enum, default_value = "model")]
    by: ByArg,
    #[command(flatten)]
    db: DbArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ByArg {
    Model,
    Arm,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 1h, 5m, 200ms)"))
}

/// The sink `--db` names (or the project's SQLite file).
pub(crate) fn open_sink(db: &DbArg, ctx: &Ctx) -> anyhow::Result<Box<dyn Sink + Send>> {
    match &db.db {
        Some(url)
            if url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.contains("host=") =>
        {
            let s = crate::monitor::postgres::PgSink::connect(url).with_context(|| {
                "cannot use the PostgreSQL monitoring database (is the server running and the URL right?)"
            })?;
            Ok(Box::new(s))
        }
        Some(path) => {
            let p = Path::new(path.strip_prefix("sqlite:").unwrap_or(path));
            Ok(Box::new(crate::monitor::sqlite::SqliteSink::open(p)?))
        }
        None => {
            let ws = ctx.open()?;
            let p = ws.root().join(crate::monitor::DEFAULT_DB);
            Ok(Box::new(crate::monitor::sqlite::SqliteSink::open(&p)?))
        }
    }
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    match a.sub {
        Some(Sub::Report(r)) => report_cmd(r, ctx),
        None => run_monitor(a.run, ctx),
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn report_cmd(a: ReportArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut sink = open_sink(&a.db, ctx)?;
    let by = match a.by {
        ByArg::Model => By::Model,
        ByArg::Arm => By::Arm,
    };
    let r = report::report(sink.as_mut(), ms(a.since), by)?;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let num = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
    writeln!(
        out,
        "monitoring {} .. {} ({})",
        super::date(r.since_ms),
        super::date(r.until_ms),
        sink.describe()
    )?;
    let show = |out: &mut std::io::StdoutLock<'_>, title: &str, groups: &[report::Group]| {
        writeln!(
            out,
            "{title:<16} {:>8} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>7}",
            "answers", "users", "conv@10", "conv@20", "quality", "open", "avail", "p50ms", "p95ms"
        )?;
        for g in groups {
            writeln!(
                out,
                "{:<16} {:>8} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>7}",
                g.model,
                g.answers,
                g.users,
                g.converted_10,
                g.converted_20,
                pct(g.online_quality),
                g.provisional,
                pct(g.availability),
                num(g.latency_p50_ms),
                num(g.latency_p95_ms)
            )?;
        }
        std::io::Result::Ok(())
    };
    show(&mut out, "model", &r.by_model)?;
    if let Some(arms) = &r.by_arm {
        show(&mut out, "arm", arms)?;
    }
    writeln!(
        out,
        "stream: {} requests, availability {}, p95 {} ms, {} 5xx, {} answers not in the request log",
        r.stream.requests,
        pct(r.stream.availability),
        num(r.stream.latency_p95_ms),
        r.stream.status_5xx,
        r.stream.unlogged
    )?;
    writeln!(
        out,
        "late: {} events, {} answers; rejected messages: {}",
        r.late_events, r.late_answers, r.bad_messages
    )?;
    let h = &r.health;
    writeln!(
        out,
        "last hour: coverage {} ({} of {} movies), avg popularity {}, gini {}, fallbacks {}",
        pct(h.coverage),
        h.distinct_recommended,
        h.catalogue,
        h.avg_popularity.map_or("-".into(), |x| format!("{x:.3}")),
        h.gini.map_or("-".into(), |x| format!("{x:.3}")),
        pct(h.fallback_share)
    )?;
    writeln!(
        out,
        "(conv@k: closed answers with a top-k item watched within the window; open: windows not closed yet)"
    )?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT/SIGTERM set the flag (a runtime on its own thread waits for them).
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("recsys-monitor-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
                f.store(true, Ordering::SeqCst);
            });
        })
        .context("start the signal thread")?;
    rx.recv().context("signal thread")??;
    Ok(flag)
}

fn run_monitor(a: RunArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let (Some(brokers), Some(topic)) = (a.brokers.clone(), a.topic.clone()) else {
        anyhow::bail!(
            "recsys monitor needs --brokers and --topic (the course stream); `recsys monitor report` prints figures"
        );
    };
    let stop = stop_flag()?;
    let cfg = JoinConfig {
        window_ms: ms(a.window),
        lateness_ms: ms(a.allowed_lateness),
        lookback_ms: ms(a.lookback),
        ..JoinConfig::default()
    };
    let mut sink = open_sink(&a.db, ctx)?;
    // So `recsys forget` can tell a monitor is writing (and warn that the
    // user's answers still open are written when their windows close).
    sink.announce_running()?;
    let started = Instant::now();
    let mut mon = Monitor::open(sink, cfg)?;
    let restored = mon.counters();
    let mut stream = KafkaInput::open(&brokers, &topic, Feed::Stream, &mon)?;
    let mut reqs = match &a.requests_topic {
        Some(t) => Some(KafkaInput::open(&brokers, t, Feed::Requests, &mon)?),
        None => None,
    };
    let mut segs = a
        .requests_from
        .as_ref()
        .map(|p| SegmentInput::open(p, &mon));
    let has_requests = reqs.is_some() || segs.is_some();
    if !has_requests {
        mon.set_idle(Source::Requests, true);
    }
    // The dashboard and the alerts read through their own connection.
    let alerts_shown: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let mut side: Vec<std::thread::JoinHandle<()>> = Vec::new();
    if a.http.is_some() || a.alert_webhook.is_some() {
        let shared: SharedSink = Arc::new(Mutex::new(open_sink(&a.db, ctx)?));
        if let Some(addr) = a.http {
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
            listener.set_nonblocking(true)?;
            let local = listener.local_addr()?;
            ctx.say(format!("recsys monitor dashboard on http://{local}/"));
            let (s, al, st) = (shared.clone(), alerts_shown.clone(), stop.clone());
            side.push(std::thread::spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!("monitor http: {e}"),
                };
                let res = rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(listener)?;
                    http::serve(l, s, al, async move {
                        while !st.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    })
                    .await
                });
                if let Err(e) = res {
                    tracing::error!("monitor http: {e}");
                }
            }));
        }
        if let Some(url) = a.alert_webhook.clone() {
            let (s, al, st, every) = (shared, alerts_shown.clone(), stop.clone(), a.alert_every);
            side.push(std::thread::spawn(move || {
                let rules = AlertRules::default();
                let mut state = AlertState::default();
                let mut next = Instant::now();
                while !st.load(Ordering::SeqCst) {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    next = Instant::now() + every;
                    let checks = match s.lock() {
                        Ok(mut g) => http::evaluate(g.as_mut(), &rules),
                        Err(_) => return,
                    };
                    let checks = match checks {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("alerts: {e}");
                            continue;
                        }
                    };
                    for n in state.update(&checks) {
                        match http::post(&url, &n) {
                            Ok(()) => tracing::info!(
                                "alert {} {}: posted",
                                n.name,
                                if n.firing { "firing" } else { "resolved" }
                            ),
                            Err(e) => tracing::warn!("{e}"),
                        }
                    }
                    if let Ok(mut shown) = al.lock() {
                        *shown = state.snapshot();
                    }
                }
            }));
        }
    }
    ctx.say(format!(
        "recsys monitor: stream {topic}{} -> {} (window {}, allowed lateness {}){}",
        match (&a.requests_topic, &a.requests_from) {
            (Some(t), _) => format!(", request log topic {t}"),
            (_, Some(p)) => format!(", request log of {}", p.display()),
            _ => ", no request log (availability only)".into(),
        },
        mon.describe(),
        humantime::format_duration(a.window),
        humantime::format_duration(a.allowed_lateness),
        if restored.answers + restored.watches > 0 {
            format!(
                "; resumed from the stored checkpoint in {:.1?}",
                started.elapsed()
            )
        } else {
            String::new()
        }
    ));
    let _ = std::io::stdout().flush();

    let mut last_flush = Instant::now();
    let mut last_stream = Instant::now();
    let mut last_req = Instant::now();
    let mut seg_caught_up = false;
    let mut last_seg_poll = Instant::now() - Duration::from_secs(1);
    let mut backoff = Duration::from_millis(250);
    let mut failing_since: Option<Instant> = None;
    let mut kafka_warned = Instant::now() - Duration::from_secs(60);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !stopping && !mon.stuck() && mon.buffered() < 200_000 {
            let res = (|| -> Result<(), crate::monitor::MonitorError> {
                if stream.poll(&mut mon, 5_000, Duration::from_millis(20))? > 0 {
                    last_stream = Instant::now();
                }
                if let Some(r) = &mut reqs
                    && r.poll(&mut mon, 5_000, Duration::from_millis(5))? > 0
                {
                    last_req = Instant::now();
                }
                if let Some(s) = &mut segs
                    && last_seg_poll.elapsed() >= Duration::from_millis(200)
                {
                    last_seg_poll = Instant::now();
                    let n = s.poll(&mut mon)?;
                    seg_caught_up = n == 0;
                    if n > 0 {
                        last_req = Instant::now();
                    }
                }
                Ok(())
            })();
            if let Err(e) = res {
                if kafka_warned.elapsed() > Duration::from_secs(10) {
                    tracing::warn!("{} (retrying)", crate::text::error_chain(&e));
                    kafka_warned = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if stream.caught_up() && last_stream.elapsed() >= a.idle {
                mon.set_idle(Source::Stream, true);
            }
            let req_caught_up = match (&reqs, &segs) {
                (Some(r), _) => r.caught_up(),
                (_, Some(_)) => seg_caught_up,
                _ => true,
            };
            if has_requests && req_caught_up && last_req.elapsed() >= a.idle {
                mon.set_idle(Source::Requests, true);
            }
        }
        let due = last_flush.elapsed() >= a.batch_every || mon.buffered() >= 20_000 || stopping;
        if due {
            match mon.flush() {
                Ok(_) => {
                    last_flush = Instant::now();
                    if let Some(t) = failing_since.take() {
                        tracing::info!(
                            "monitoring database {} is writable again after {:.1?}; nothing was lost",
                            mon.describe(),
                            t.elapsed()
                        );
                    }
                    backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::error!(
                            "cannot write to the monitoring database: {}; holding {} rows and retrying (reading paused)",
                            crate::text::error_chain(&e),
                            mon.buffered()
                        );
                    }
                    if stopping
                        && failing_since.is_some_and(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        anyhow::bail!(
                            "stopping with a batch not written to {}: it will be read again from the stored offsets on the next start",
                            mon.describe()
                        );
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        if stopping {
            break;
        }
        let all_idle = stream.caught_up()
            && last_stream.elapsed() >= a.idle
            && (!has_requests
                || (match &reqs {
                    Some(r) => r.caught_up(),
                    None => seg_caught_up,
                } && last_req.elapsed() >= a.idle));
        if a.stop_when_idle && all_idle && mon.buffered() == 0 && !mon.stuck() {
            // One more flush so the checkpoint has the final watermark. A
            // connection lost right now is retried like any other flush.
            match mon.flush() {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(
                        "cannot write the final checkpoint to {}: {} (retrying)",
                        mon.describe(),
                        crate::text::error_chain(&e)
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in side {
        let _ = t.join();
    }
    let c = mon.counters();
    ctx.say(format!(
        "recsys monitor: stopped; {} answers, {} watches, {} stream requests, {} windows closed ({} converted@20), {} late events, {} late answers, {} rejected messages",
        c.answers, c.watches, c.stream_requests, c.closed, c.converted_20, c.late_events, c.late_answers, mon.bad()
    ));
    Ok(ExitCode::SUCCESS)
}
