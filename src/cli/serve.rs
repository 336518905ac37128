use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::Ctx;
use crate::serve::{KafkaLogOptions, ServeOptions, Server};

/// Serve recommendations over HTTP, routed by config.json.
///
/// GET /recommend/<userid> answers up to 20 movie ids, comma-separated,
/// with an X-Request-Id header; GET /health and GET /metrics (Prometheus).
/// The server reloads config.json and the models it names within seconds of
/// a change, keeping the last good config when the new one cannot be
/// served. Every answer is logged (log/requests/ and lineage.db) so that
/// `recsys lineage <request-id>` explains it. SIGTERM or Ctrl-C stops
/// accepting, finishes requests in flight and flushes the log.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys serve\n  recsys serve --bind 0.0.0.0 --port 8082 --config config.json\n  recsys serve --log-kafka localhost:9092 --log-kafka-topic recsys-requests\n  curl -i http://127.0.0.1:8082/recommend/42"
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
