//! Monitoring benchmarks (issue 12's targets). Prints figures, asserts
//! nothing:
//!
//! - throughput of the join and sink, one core: a sink that discards (the
//!   baseline: parsing and the join alone), SQLite, PostgreSQL — interleaved,
//!   best of `BENCH_RUNS` runs each (target: ≥ 100,000 events/s into
//!   SQLite, ≥ 50,000/s into PostgreSQL);
//! - peak memory of the join with 100 answers/s and 1,000 events/s over 3
//!   simulated hours (target: < 64 MiB);
//! - the dashboard and report queries over `BENCH_EVENTS` (default 10
//!   million) stored events in PostgreSQL (target: < 200 ms each).
//!
//!   cargo bench --bench monitor                 # everything (~10 min)
//!   BENCH_ONLY=throughput cargo bench --bench monitor
//!   BENCH_EVENTS=1000000 BENCH_ONLY=queries cargo bench --bench monitor
//!
//! PostgreSQL parts need the server at 127.0.0.1:5432 (database `test`);
//! they use (and drop) the schema `recsys_bench`.

use std::time::Instant;

use recsys::monitor::sink::{Batch, Checkpoint, Offset, Position, Replayed, Sink, Value};
use recsys::monitor::{JoinConfig, Monitor, MonitorError};
use recsys::segment::{RequestRecord, ServedBy};
use recsys::stream::Event;

const T0: i64 = 1_767_312_000_000;
const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test \
                  options='-c search_path=recsys_bench'";

struct Null;

impl Sink for Null {
    fn describe(&self) -> String {
        "null".into()
    }
    fn load(&mut self) -> Result<(Checkpoint, Vec<Offset>), MonitorError> {
        Ok((Checkpoint::default(), Vec::new()))
    }
    fn replay(&mut self, _: i64, _: &mut dyn FnMut(Replayed)) -> Result<(), MonitorError> {
        Ok(())
    }
    fn write(&mut self, b: &Batch) -> Result<bool, MonitorError> {
        std::hint::black_box(b.rows());
        Ok(true)
    }
    fn rows(&mut self, _: &str, _: &[i64]) -> Result<Vec<Vec<Value>>, MonitorError> {
        Ok(Vec::new())
    }
    fn announce_running(&mut self) -> Result<(), MonitorError> {
        Ok(())
    }
    fn erase_user(
        &mut self,
        _: i64,
        _: bool,
    ) -> Result<recsys::monitor::erase::UserRows, MonitorError> {
        Ok(Default::default())
    }
}

struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

enum Msg {
    Stream(Vec<u8>),
    Request(Box<RequestRecord>),
}

fn movie(i: u64) -> String {
    format!("movie+number+{i}+{}", 1950 + i % 60)
}

/// `answers_per_s` answers and `events_per_s` watch events a second for
/// `secs` seconds, in order, with 10,000 users and 5,000 movies.
fn stream(secs: i64, answers_per_s: u64, events_per_s: u64, mut f: impl FnMut(Msg)) {
    let mut r = Lcg(1);
    let served = ServedBy {
        model: "model_v1".into(),
        model_digest: "m".repeat(64),
        dataset: "dataset_1".into(),
        dataset_digest: "d".repeat(64),
        train_run: "r".repeat(64),
        code_commit: "c".repeat(40),
        config_digest: "f".repeat(64),
    };
    let mut id = 1u128;
    for s in 0..secs {
        let t = T0 + s * 1000;
        for k in 0..answers_per_s {
            let mut served = served.clone();
            if k % 2 == 1 {
                served.model = "model_v2".into();
            }
            f(Msg::Request(Box::new(RequestRecord {
                id: uuid::Uuid::from_u128(id).hyphenated().to_string(),
                time: t + k as i64,
                user: r.below(10_000) as i64,
                served,
                route: "ab".into(),
                status: "ok".into(),
                latency_us: 2_000 + r.below(300_000) as i64,
                items: (0..20).map(|_| movie(r.below(5_000))).collect(),
            })));
            id += 1;
        }
        for k in 0..events_per_s {
            let line = Event::Watch {
                time_ms: t + (k * 1000 / events_per_s) as i64,
                user: r.below(10_000),
                movie: movie(r.below(5_000)).into(),
                minute: r.below(120) as u32,
            }
            .to_line();
            f(Msg::Stream(line.into_bytes()));
        }
    }
}

fn feed(m: &mut Monitor, secs: i64, aps: u64, eps: u64, flush_every: usize) -> u64 {
    let mut n = 0u64;
    let mut since = 0usize;
    stream(secs, aps, eps, |msg| {
        let pos = Position {
            source: "bench".into(),
            part: 0,
            off: n as i64,
        };
        match msg {
            Msg::Stream(b) => m.stream_message(pos, &b),
            Msg::Request(r) => m.request_record(pos, *r),
        }
        n += 1;
        since += 1;
        if since >= flush_every {
            since = 0;
            if let Err(e) = m.flush() {
                eprintln!("flush: {e}");
            }
        }
    });
    if let Err(e) = m.flush() {
        eprintln!("flush: {e}");
    }
    n
}

fn pg_reset() -> bool {
    std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-qAt",
            "-c",
            "DROP SCHEMA IF EXISTS recsys_bench CASCADE; CREATE SCHEMA recsys_bench",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn throughput(runs: usize) {
    println!(
        "== join + sink throughput (one thread; 1,000 events/s + 50 answers/s of stream, 10 min simulated)"
    );
    let mut best = [f64::MAX; 3];
    let names = ["discard (baseline)", "SQLite", "PostgreSQL"];
    for _ in 0..runs {
        for (i, name) in names.iter().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let sink: Box<dyn Sink> = match i {
                0 => Box::new(Null),
                1 => Box::new(
                    recsys::monitor::sqlite::SqliteSink::open(&dir.path().join("m.db"))
                        .expect("sqlite"),
                ),
                _ => {
                    if !pg_reset() {
                        println!("  {name}: skipped (no PostgreSQL at 127.0.0.1:5432)");
                        continue;
                    }
                    match recsys::monitor::postgres::PgSink::connect(PG) {
                        Ok(s) => Box::new(s),
                        Err(e) => {
                            println!("  {name}: {e}");
                            continue;
                        }
                    }
                }
            };
            let mut m = Monitor::open(sink, JoinConfig::default()).expect("monitor");
            let t = Instant::now();
            let n = feed(&mut m, 600, 50, 1_000, 20_000);
            let secs = t.elapsed().as_secs_f64();
            best[i] = best[i].min(secs / n as f64);
        }
    }
    for (i, name) in names.iter().enumerate() {
        if best[i] < f64::MAX {
            println!("  {name:<20} {:>10.0} events/s", 1.0 / best[i]);
        }
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn memory() {
    println!(
        "== memory: 100 answers/s + 1,000 events/s for 3 simulated hours (join, discarding sink)"
    );
    let before = peak_rss_kib();
    let mut m = Monitor::open(Box::new(Null), JoinConfig::default()).expect("monitor");
    let t = Instant::now();
    let n = feed(&mut m, 3 * 3600, 100, 1_000, 20_000);
    println!(
        "  {n} inputs in {:.1} s; open windows {}, history entries {}; peak RSS {:.1} MiB (process before: {:.1} MiB)",
        t.elapsed().as_secs_f64(),
        m.join().open_answers(),
        m.join().history_len(),
        peak_rss_kib() as f64 / 1024.0,
        before as f64 / 1024.0
    );
}

fn queries() {
    let events: i64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    println!("== dashboard and report queries over {events} stored events (PostgreSQL)");
    if !pg_reset() {
        println!("  skipped: no PostgreSQL at 127.0.0.1:5432");
        return;
    }
    let sink = recsys::monitor::postgres::PgSink::connect(PG).expect("postgres");
    let mut m = Monitor::open(Box::new(sink), JoinConfig::default()).expect("monitor");
    let eps = 1_000u64;
    let secs = events / eps as i64;
    let t = Instant::now();
    let n = feed(&mut m, secs, 10, eps, 50_000);
    println!(
        "  loaded {n} inputs in {:.0} s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let sink = m.sink_mut();
    let _ = sink.rows("ANALYZE", &[]);
    let (from, to) = (T0, T0 + secs * 1000);
    for file in [
        "monitoring/grafana/dashboards/service-health.json",
        "monitoring/grafana/dashboards/online-quality.json",
    ] {
        let text = std::fs::read_to_string(file).expect("dashboard");
        let d: serde_json::Value = serde_json::from_str(&text).expect("json");
        for p in d["panels"].as_array().into_iter().flatten() {
            for tgt in p["targets"].as_array().into_iter().flatten() {
                let Some(sql) = tgt["rawSql"].as_str() else {
                    continue;
                };
                // The last 6 hours, Grafana's default range.
                let q = sql
                    .replace("$__from", &(to - 6 * 3_600_000).max(from).to_string())
                    .replace("$__to", &to.to_string());
                let mut best = f64::MAX;
                let mut rows = 0;
                for _ in 0..3 {
                    let t = Instant::now();
                    rows = sink.rows(&q, &[]).map(|r| r.len()).unwrap_or(0);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "  {:>8.1} ms  {:>6} rows  {}",
                    best * 1000.0,
                    rows,
                    p["title"].as_str().unwrap_or("?")
                );
            }
        }
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let _ =
            recsys::monitor::report::report(sink, 86_400_000, recsys::monitor::report::By::Model);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "  {:>8.1} ms  recsys monitor report --since 24h",
        best * 1000.0
    );
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "throughput" {
        throughput(runs);
    }
    if only.is_empty() || only == "memory" {
        memory();
    }
    if only.is_empty() || only == "queries" {
        queries();
    }
    let _ = pg_reset();
}
