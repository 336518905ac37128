use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::Ctx;
use crate::serve::{KafkaLogOptions, Limits, ServeOptions, Server};

/// Serve recommendations over HTTP, routed by config.json.
///
/// GET /recommend/<userid> answers up to 20 movie ids, comma-separated,
/// with an X-Request-Id header; GET /health and GET /metrics (Prometheus).
/// The server reloads config.json and the models it names within seconds of
/// a change, keeping the last good config when the new one cannot be
/// served; a failing reload is retried every poll and shown by /health
/// (`stale`, with the error) and /metrics. Every answer is logged
/// (log/requests/ and lineage.db) so that `recsys lineage <request-id>`
/// explains it. SIGTERM or Ctrl-C stops accepting, finishes requests in
/// flight (for at most --shutdown-grace) and flushes the log.
///
/// Connections are limited: a request head must arrive within
/// --header-read-timeout, a keep-alive connection may idle for
/// --idle-timeout, an answer must be written within --request-timeout, and
/// at most --max-connections are open. At the cap a new connection takes
/// the place of the one that has waited longest with no request in
/// progress; when all are busy it gets a 503 with Retry-After. Running out
/// of file descriptors never stops the server: it makes room or backs off
/// and keeps accepting. Each of these is counted in /metrics.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys serve\n  recsys serve --bind 0.0.0.0 --port 8082 --config config.json\n  recsys serve --max-connections 4096 --header-read-timeout 5s --idle-timeout 30s\n  recsys serve --log-kafka localhost:9092 --log-kafka-topic recsys-requests\n  curl -i http://127.0.0.1:8082/recommend/42"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on (0 picks a free one; the URL is printed).
    #[arg(long, default_value_t = 8082)]
    port: u16,
    /// Router config (relative to the project root).
    #[arg(long, default_value = "config.json")]
    config: PathBuf,
    /// Do not log requests (benchmarks only: answers become unexplainable).
    #[arg(long)]
    no_log: bool,
    /// How often to look for config and model changes, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=4000))]
    poll_ms: u64,
    /// Request-log queue capacity; events beyond it are dropped (counted).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    log_queue: u64,
    /// Close a request-log segment into the store after this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1024..))]
    log_segment_bytes: u64,
    /// Also copy every logged request (one JSON line, keyed by user id) to
    /// a Kafka topic at these brokers (`bootstrap.servers`). The local log
    /// stays the record: Kafka failures are counted in /metrics, never
    /// block or drop the local log.
    #[arg(long, value_name = "HOST:PORT,...", conflicts_with = "no_log")]
    log_kafka: Option<String>,
    /// Topic for --log-kafka.
    #[arg(long, default_value = crate::serve::kafka::DEFAULT_TOPIC, requires = "log_kafka")]
    log_kafka_topic: String,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Most connections open at once. The soft open-file limit is raised
    /// to fit when the hard limit allows; a warning says when it cannot.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Time a client has to send a whole request head, from connecting or
    /// from its first byte after an idle keep-alive (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,
    /// Time a keep-alive connection may stay open with no request.
    #[arg(long, default_value = "60s", value_parser = duration)]
    idle_timeout: Duration,
    /// Time from a complete request head to its answer written to the
    /// socket; a connection over it (a client not reading) is closed.
    #[arg(long, default_value = "30s", value_parser = duration)]
    request_timeout: Duration,
    /// At shutdown, time requests in flight get to finish before their
    /// connections are closed.
    #[arg(long, default_value = "10s", value_parser = duration)]
    shutdown_grace: Duration,
    /// Largest config file read, in bytes; a larger one is refused
    /// without being read (the last good config keeps serving).
    #[arg(long, default_value_t = crate::serve::DEFAULT_MAX_CONFIG_BYTES, value_parser = clap::value_parser!(u64).range(2..=1 << 30))]
    max_config_bytes: u64,
}

/// A positive duration such as `10s`, `500ms` or `2m`.
fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 10s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// File descriptors kept for everything but connections: the store,
/// lineage.db, the request log, the runtime, refused connections.
const RESERVED_FDS: u64 = 128;

/// Raise the soft open-file limit so `max_connections` fit, as far as the
/// hard limit allows; warn when they still do not (accept then meets
/// EMFILE, which the server survives by evicting idle connections).
fn fit_open_file_limit(max_connections: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = max_connections.saturating_add(RESERVED_FDS);
    let lim = getrlimit(Resource::Nofile);
    let Some(soft) = lim.current else {
        return; // unlimited
    };
    if soft >= want {
        return;
    }
    let target = lim.maximum.map_or(want, |hard| hard.min(want));
    if target > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: lim.maximum,
            },
        )
        .is_ok()
        && target >= want
    {
        return;
    }
    let have = target.max(soft);
    tracing::warn!(
        "--max-connections {max_connections} needs about {want} open files, the limit is {have} \
         (raise it with ulimit -n): past it idle connections are evicted to make room"
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let ws = ctx.open()?;
    let root = ws.root().to_path_buf();
    drop(ws);
    let mut opts = ServeOptions::new(root, hostname());
    opts.config = a.config.clone();
    opts.poll = Duration::from_millis(a.poll_ms);
    if a.no_log {
        opts.log = None;
    } else if let Some(l) = &mut opts.log {
        l.queue = a.log_queue as usize;
        l.segment_bytes = a.log_segment_bytes;
        l.kafka = a.log_kafka.clone().map(|brokers| KafkaLogOptions {
            brokers,
            topic: a.log_kafka_topic.clone(),
        });
    }
    opts.max_config_bytes = a.max_config_bytes;
    opts.limits = Limits {
        max_connections: usize::try_from(a.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: a.header_read_timeout,
        idle_timeout: a.idle_timeout,
        request_timeout: a.request_timeout,
        shutdown_grace: a.shutdown_grace,
    };
    fit_open_file_limit(a.max_connections);
    let server = Server::start(opts, ctx.settings.clone())?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = a.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.build().context("start the async runtime")?;
    rt.block_on(async move {
        // Install the signal handlers before announcing the port: a SIGTERM
        // that arrives right after the announcement must shut down
        // gracefully, not kill the process with the default action.
        let shutdown = shutdown_signal()?;
        let addr = SocketAddr::new(a.bind, a.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let local = listener.local_addr().context("listening address")?;
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            local.ip().to_string()
        };
        ctx.say(format!("recsys serving on http://{host}:{}/", local.port()));
        ctx.say(format!(
            "  try: curl -i http://{host}:{}/recommend/1",
            local.port()
        ));
        use std::io::Write;
        let _ = std::io::stdout().flush();
        server.run(listener, shutdown).await?;
        anyhow::Ok(())
    })?;
    ctx.say("recsys serve: stopped; request log flushed");
    Ok(ExitCode::SUCCESS)
}

/// Registers SIGINT and SIGTERM now; the returned future resolves on
/// the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}
