//! Monitoring: the streaming feedback join against a plain batch SQL
//! recomputation over the stored rows (SQLite and PostgreSQL), exactly once
//! into the database across kill -9 and lost database connections, the
//! segment follower, `recsys monitor report --json`.
//!
//! PostgreSQL tests need the server at 127.0.0.1:5432 (trust auth,
//! database `test`; `scripts/postgres.sh` starts it) and fail saying so.
//! Each uses its own schema.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use recsys::monitor::sink::{Position, Sink, Value};
use recsys::monitor::{JoinConfig, Monitor};
use recsys::segment::{RequestRecord, ServedBy};
use recsys::stream::Event;

use crate::common::Env;

/// 2026-01-02T00:00:00Z
const T0: i64 = 1_767_312_000_000;
const MIN: i64 = 60_000;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A message as it arrives: stream line (partition) or request record.
#[derive(Clone, Debug)]
enum Msg {
    Stream(i32, String),
    Request(String),
}

fn movie(i: u64) -> String {
    format!("movie+number+{i}+{}", 1950 + i % 60)
}

fn record(id: u128, time: i64, user: i64, items: Vec<String>, model: &str) -> RequestRecord {
    RequestRecord {
        id: uuid::Uuid::from_u128(id).hyphenated().to_string(),
        time,
        user,
        served: ServedBy {
            model: model.into(),
            model_digest: "m".repeat(64),
            dataset: "dataset_1".into(),
            dataset_digest: "d".repeat(64),
            train_run: "r".repeat(64),
            code_commit: "c".repeat(40),
            config_digest: "f".repeat(64),
        },
        route: if model == "tick" {
            "tick".into()
        } else {
            format!("ab/{model}")
        },
        status: if user % 13 == 0 {
            "fallback_unknown_user".into()
        } else {
            "ok".into()
        },
        latency_us: 800 + (id % 500_000) as i64,
        items,
    }
}

/// About `n` messages over 3 simulated hours: answers (and the stream's
/// recommendation lines for them), watches of recommended and other
/// movies (before and after the answers), out of order by up to two
/// minutes, 1% of them 10-30 minutes late, some malformed lines, then one
/// event far in the future on each source so every window closes.
fn generate(n: usize, seed: u64) -> Vec<Msg> {
    let mut r = Lcg(seed);
    let mut timed: Vec<(i64, Msg)> = Vec::new();
    let mut id = 1u128;
    let watch = |t: i64, user: u64, m: &str, minute: u32| {
        Event::Watch {
            time_ms: t,
            user,
            movie: m.to_string().into(),
            minute,
        }
        .to_line()
    };
    while timed.len() < n {
        let t = T0 + r.below(180 * MIN as u64) as i64;
        let user = 1 + r.below(400);
        let arrive = |r: &mut Lcg, t: i64| {
            if r.below(100) == 0 {
                t + 10 * MIN + r.below(20 * MIN as u64) as i64
            } else {
                t + r.below(2 * MIN as u64) as i64
            }
        };
        match r.below(20) {
            0 => {
                let model = if user.is_multiple_of(2) {
                    "model_v1"
                } else {
                    "model_v2"
                };
                let items: Vec<String> = (0..20).map(|_| movie(r.below(300))).collect();
                let rec = record(id, t, user as i64, items.clone(), model);
                id += 1;
                let a = arrive(&mut r, t);
                timed.push((a, Msg::Request(serde_json::to_string(&rec).expect("json"))));
                // The stream's view of the same request.
                let ok = r.below(10) != 0;
                let latency = r.below(900) as u32;
                let line = Event::Recommendation {
                    time_ms: t + i64::from(latency),
                    user,
                    host: "recsys".into(),
                    port: 8082,
                    status: if ok { 200 } else { 504 },
                    items: if ok {
                        items.iter().map(|s| s.clone().into()).collect()
                    } else {
                        Vec::new()
                    },
                    error: (!ok).then(|| "timeout".into()),
                    latency_ms: latency,
                }
                .to_line();
                let a = arrive(&mut r, t);
                timed.push((a, Msg::Stream((user % 2) as i32, line)));
                // Watches of its items: some inside the window, some after
                // it, some just before it (continued).
                for _ in 0..r.below(6) {
                    let item = &items[r.below(20) as usize];
                    let wt = t - 20 * MIN + r.below(100 * MIN as u64) as i64;
                    let a = arrive(&mut r, wt);
                    timed.push((a, Msg::Stream((user % 2) as i32, watch(wt, user, item, 1))));
                }
            }
            1 if r.below(50) == 0 => {
                timed.push((t, Msg::Stream(0, format!("garbage line {t}"))));
            }
            _ => {
                let m = movie(r.below(300));
                let a = arrive(&mut r, t);
                timed.push((a, Msg::Stream((user % 2) as i32, watch(t, user, &m, 3))));
            }
        }
    }
    timed.sort_by_key(|(a, _)| *a);
    let mut out: Vec<Msg> = timed.into_iter().map(|(_, m)| m).collect();
    let end = T0 + 10 * 60 * MIN;
    for p in 0..2 {
        out.push(Msg::Stream(p, watch(end, 999_999, "end+1999", 1)));
    }
    let tick = record(u128::MAX, end, 999_999, vec![], "tick");
    out.push(Msg::Request(serde_json::to_string(&tick).expect("json")));
    out
}

/// Conversions per model version as a plain SQL recomputation over the
/// stored (non-late) rows: (converted_10, converted_20).
const BATCH_SQL: &str = "
SELECT a.model,
       count(DISTINCT CASE WHEN c.rank < 10 THEN a.id END),
       count(DISTINCT a.id)
  FROM mon_answers a JOIN mon_answer_items c ON c.id = a.id
 WHERE a.late = 0 AND a.model <> 'tick'
   AND EXISTS (SELECT 1 FROM mon_events w
                WHERE w.kind = 'watch' AND w.late = 0 AND w.user_id = a.user_id
                  AND w.movie = c.movie
                  AND w.time_ms >= a.time_ms AND w.time_ms < a.time_ms + 3600000)
   AND NOT EXISTS (SELECT 1 FROM mon_events w
                    WHERE w.kind = 'watch' AND w.late = 0 AND w.user_id = a.user_id
                      AND w.movie = c.movie
                      AND w.time_ms >= a.time_ms - 1800000 AND w.time_ms < a.time_ms)
 GROUP BY a.model";

const STREAMING_SQL: &str = "
SELECT model, CAST(sum(converted_10) AS BIGINT), CAST(sum(converted_20) AS BIGINT), count(*)
  FROM mon_outcomes WHERE model <> 'tick' GROUP BY model";

type PerModel = BTreeMap<String, (i64, i64)>;

fn batch_and_streaming(sink: &mut dyn Sink) -> (PerModel, PerModel, i64) {
    let batch: PerModel = sink
        .rows(BATCH_SQL, &[])
        .expect("batch SQL")
        .iter()
        .map(|r| (r[0].text(), (r[1].int(), r[2].int())))
        .collect();
    let mut closed = 0;
    let streaming: PerModel = sink
        .rows(STREAMING_SQL, &[])
        .expect("streaming SQL")
        .iter()
        .filter_map(|r| {
            closed += r[3].int();
            // The batch query lists only models with a conversion; a model
            // whose closed windows all came out unconverted is (0, 0) here.
            // Which answers of a rarely served model count as late depends
            // on how partitions interleave, so such a row may or may not
            // appear.
            let counts = (r[1].int(), r[2].int());
            (counts != (0, 0)).then(|| (r[0].text(), counts))
        })
        .collect();
    (batch, streaming, closed)
}

fn scalar(sink: &mut dyn Sink, sql: &str) -> i64 {
    sink.rows(sql, &[]).expect(sql)[0][0].int()
}

/// Feed messages in arrival order straight into a `Monitor`, flushing
/// every `every` messages, and check the streaming join against the batch
/// recomputation.
fn feed_and_check(sink: Box<dyn Sink>, msgs: &[Msg], check: &mut dyn FnMut() -> Box<dyn Sink>) {
    let mut m = Monitor::open(sink, JoinConfig::default()).expect("open monitor");
    let mut offs = [0i64; 3];
    for (i, msg) in msgs.iter().enumerate() {
        match msg {
            Msg::Stream(p, line) => {
                let pos = Position {
                    source: "stream:movielog1".into(),
                    part: *p,
                    off: offs[*p as usize],
                };
                offs[*p as usize] += 1;
                m.stream_message(pos, line.as_bytes());
            }
            Msg::Request(json) => {
                let pos = Position {
                    source: "requests:recsys-requests".into(),
                    part: 0,
                    off: offs[2],
                };
                offs[2] += 1;
                m.request_message(pos, json.as_bytes());
            }
        }
        if i % 5_000 == 4_999 {
            m.flush().expect("flush");
        }
    }
    m.flush().expect("flush");
    let c = m.counters();
    drop(m);
    let mut sink = check();
    let (batch, streaming, closed) = batch_and_streaming(sink.as_mut());
    assert!(c.converted_20 > 500 && c.late_events > 100, "{c:?}");
    assert!(
        c.continued_20 > 50,
        "continued watches are exercised: {c:?}"
    );
    assert_eq!(
        streaming, batch,
        "streaming conversions per model = batch SQL"
    );
    assert_eq!(
        closed as u64, c.closed,
        "every answer but the final tick closed"
    );
    // Every message is stored exactly once (events, answers or rejects).
    let stored = scalar(sink.as_mut(), "SELECT count(*) FROM mon_events")
        + scalar(sink.as_mut(), "SELECT count(*) FROM mon_answers")
        + scalar(sink.as_mut(), "SELECT count(*) FROM mon_bad");
    assert_eq!(stored as usize, msgs.len());
    // The rollups agree with the rows.
    let rolled = scalar(
        sink.as_mut(),
        "SELECT CAST(sum(converted_20) AS BIGINT) FROM mon_minute WHERE model <> 'tick'",
    );
    assert_eq!(rolled, streaming.values().map(|v| v.1).sum::<i64>());
    let late = scalar(
        sink.as_mut(),
        "SELECT count(*) FROM mon_events WHERE late = 1",
    );
    assert_eq!(late as u64, c.late_events);
}

#[test]
fn streaming_conversions_equal_a_batch_sql_recomputation_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("monitor.db");
    let msgs = generate(200_000, 7);
    let open = |p: &Path| -> Box<dyn Sink> {
        Box::new(recsys::monitor::sqlite::SqliteSink::open(p).expect("sqlite sink"))
    };
    let sink = open(&path);
    let p2 = path.clone();
    feed_and_check(sink, &msgs, &mut || {
        let mut s = open(&p2);
        s.rows(
            "CREATE INDEX IF NOT EXISTS w ON mon_events(user_id, movie, time_ms)",
            &[],
        )
        .ok();
        s
    });
}

// ---------------------------------------------------------------------------
// PostgreSQL

fn require_postgres() {
    let ok = Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`): \
         start it with scripts/postgres.sh"
    );
}

fn psql(sql: &str) -> String {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-qAt",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql (Debian package postgresql-client)");
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A fresh schema; the connection string that uses it.
pub(crate) fn pg_schema(name: &str) -> String {
    require_postgres();
    let schema = format!("mon_test_{name}_{}", std::process::id());
    psql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ));
    format!(
        "host=127.0.0.1 port=5432 user=postgres dbname=test application_name={schema} \
         options='-c search_path={schema}'"
    )
}

pub(crate) fn drop_schema(conn: &str) {
    if let Some(s) = conn.split("application_name=").nth(1) {
        let s = s.split_whitespace().next().unwrap_or_default();
        psql(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"));
    }
}

#[test]
fn streaming_conversions_equal_a_batch_sql_recomputation_postgres() {
    let conn = pg_schema("batch");
    let msgs = generate(200_000, 11);
    let open = |c: &str| -> Box<dyn Sink> {
        Box::new(recsys::monitor::postgres::PgSink::connect(c).expect("postgres sink"))
    };
    let c2 = conn.clone();
    feed_and_check(open(&conn), &msgs, &mut || {
        let mut s = open(&c2);
        s.rows(
            "CREATE INDEX IF NOT EXISTS w ON mon_events (user_id, movie, time_ms)",
            &[],
        )
        .expect("index");
        s.rows("ANALYZE", &[]).expect("analyze");
        s
    });
    // Day partitions with BRIN indexes, autosummarize on.
    let schema = conn
        .split("application_name=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let parts = psql(&format!(
        "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
           JOIN pg_namespace n ON n.oid = p.relnamespace
          WHERE n.nspname = '{schema}' AND p.relname = 'mon_events'"
    ));
    assert!(
        parts.contains("mon_events_p20260101") && parts.contains("mon_events_p20260102"),
        "{parts}"
    );
    let brin = psql(&format!(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}'
            AND tablename = 'mon_events_p20260102' AND indexdef LIKE '%USING brin (time_ms)%'
            AND indexdef LIKE '%autosummarize%'"
    ));
    assert_eq!(brin, "1");
    drop_schema(&conn);
}

#[test]
fn a_database_that_refuses_connections_is_a_clear_error() {
    let env = Env::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let (_c, brokers) = cluster(&[("movielog1", 1)]);
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let err = env.fails(
        2,
        &[
            "monitor",
            "--brokers",
            &brokers,
            "--topic",
            "movielog1",
            "--db",
            &url,
        ],
    );
    assert!(
        err.contains("PostgreSQL monitoring database")
            && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

// ---------------------------------------------------------------------------
// The binary against Kafka: exactly once across kill -9.

fn cluster(topics: &[(&str, i32)]) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let c = MockCluster::new(1).expect("mock cluster");
    for (t, p) in topics {
        c.create_topic(t, *p, 1).expect("create topic");
    }
    let b = c.bootstrap_servers();
    (c, b)
}

fn produce(brokers: &str, msgs: &[Msg]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for m in msgs {
        let (topic, part, payload) = match m {
            Msg::Stream(part, line) => ("movielog1", *part, line.as_str()),
            Msg::Request(json) => ("recsys-requests", 0, json.as_str()),
        };
        let rec: BaseRecord<'_, str, str> = BaseRecord::to(topic).partition(part).payload(payload);
        p.send(rec).map_err(|(e, _)| e).expect("send");
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

fn spawn_monitor(env: &Env, brokers: &str, db: &[&str], extra: &[&str]) -> Child {
    let mut args = vec![
        "monitor",
        "--brokers",
        brokers,
        "--topic",
        "movielog1",
        "--requests-topic",
        "recsys-requests",
        "--idle",
        "1s",
        "--batch-every",
        "50ms",
    ];
    args.extend_from_slice(db);
    args.extend_from_slice(extra);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.tmp.path().join("monitor.err"))
        .expect("stderr file");
    env.cmd(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn recsys monitor")
}

fn wait_ok(env: &Env, mut child: Child, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let err =
                std::fs::read_to_string(env.tmp.path().join("monitor.err")).unwrap_or_default();
            assert!(st.success(), "recsys monitor failed ({st:?}): {err}");
            return err;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let err =
                std::fs::read_to_string(env.tmp.path().join("monitor.err")).unwrap_or_default();
            let tail: String = err
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!("recsys monitor did not stop within {limit:?}; its stderr ends:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every produced message is stored exactly once: (source, partition,
/// offset) over events, answers and rejects is exactly the produced set.
fn assert_exactly_once(sink: &mut dyn Sink, msgs: &[Msg]) {
    let mut expect: BTreeSet<(String, i64, i64)> = BTreeSet::new();
    let mut offs = [0i64; 3];
    for m in msgs {
        match m {
            Msg::Stream(p, _) => {
                expect.insert(("stream:movielog1".into(), i64::from(*p), offs[*p as usize]));
                offs[*p as usize] += 1;
            }
            Msg::Request(_) => {
                expect.insert(("requests:recsys-requests".into(), 0, offs[2]));
                offs[2] += 1;
            }
        }
    }
    let mut got: Vec<(String, i64, i64)> = Vec::new();
    for t in ["mon_events", "mon_answers", "mon_bad"] {
        for r in sink
            .rows(&format!("SELECT source, part, off FROM {t}"), &[])
            .expect("positions")
        {
            got.push((r[0].text(), r[1].int(), r[2].int()));
        }
    }
    let n = got.len();
    let set: BTreeSet<_> = got.into_iter().collect();
    assert_eq!(n, set.len(), "a message was stored twice");
    assert_eq!(
        set.len(),
        expect.len(),
        "stored {} of {} messages",
        set.len(),
        expect.len()
    );
    assert!(set == expect, "the stored positions are the produced ones");
}

fn kill_9_cycle(db: &[&str], open: &dyn Fn() -> Box<dyn Sink>) {
    let env = Env::new();
    let (_cluster, brokers) = cluster(&[("movielog1", 2), ("recsys-requests", 1)]);
    let msgs = generate(30_000, 3);
    produce(&brokers, &msgs);
    let mut r = Lcg(42);
    for round in 0..5 {
        let child = spawn_monitor(&env, &brokers, db, &[]);
        // Kill at some moment: while starting, replaying, mid-batch.
        std::thread::sleep(Duration::from_millis(300 + r.below(900)));
        let mut child = child;
        child.kill().expect("kill -9");
        let _ = child.wait();
        if round == 4 {
            break;
        }
    }
    let child = spawn_monitor(&env, &brokers, db, &["--stop-when-idle"]);
    wait_ok(&env, child, Duration::from_secs(120));
    let mut sink = open();
    assert_exactly_once(sink.as_mut(), &msgs);
    let (batch, streaming, _) = batch_and_streaming(sink.as_mut());
    assert_eq!(
        streaming, batch,
        "after restarts, streaming = batch recomputation"
    );
    // Every non-late answer's window closed exactly once.
    let dup = scalar(
        sink.as_mut(),
        "SELECT count(*) FROM (SELECT id FROM mon_outcomes GROUP BY id HAVING count(*) > 1) d",
    );
    assert_eq!(dup, 0);
    let open_answers = scalar(
        sink.as_mut(),
        "SELECT count(*) FROM mon_answers a WHERE a.late = 0 AND a.model <> 'tick'
           AND NOT EXISTS (SELECT 1 FROM mon_outcomes o WHERE o.id = a.id)",
    );
    assert_eq!(open_answers, 0);
    // Running again reads nothing new and writes nothing twice.
    let child = spawn_monitor(&env, &brokers, db, &["--stop-when-idle"]);
    wait_ok(&env, child, Duration::from_secs(60));
    let mut sink = open();
    assert_exactly_once(sink.as_mut(), &msgs);
}

#[test]
fn kill_9_at_any_moment_stores_every_event_exactly_once_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.db");
    let p = path.to_str().expect("utf-8").to_string();
    kill_9_cycle(&["--db", &p], &|| {
        Box::new(recsys::monitor::sqlite::SqliteSink::open(&path).expect("open"))
    });
}

#[test]
fn kill_9_and_lost_postgres_connections_store_every_event_exactly_once() {
    let conn = pg_schema("kill");
    // The test's own connection is not one the server drops.
    let c2 = conn.replacen("application_name=", "application_name=check_", 1);
    let app = conn
        .split("application_name=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    // Meanwhile, the server drops the monitor's connections now and then
    // (a running monitor tags its sessions with its schema, for forget).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let killer = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1500));
            let k = psql(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name IN ('{app}', 'recsys-monitor:{app}')
                    AND pid <> pg_backend_pid()"
            ));
            n += k.parse::<i64>().unwrap_or(0);
        }
        n
    });
    kill_9_cycle(&["--db", &conn], &|| {
        Box::new(recsys::monitor::postgres::PgSink::connect(&c2).expect("connect"))
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let terminated = killer.join().expect("killer");
    assert!(terminated > 0, "no connection was terminated");
    drop_schema(&conn);
}

// ---------------------------------------------------------------------------
// Segments and the report.

const SEG_HEADER: &str =
    r#"{"recsys_log_segment":2,"name":"seg-test","host":"h","opened":1767312000000}"#;

fn served_line() -> String {
    let by = record(1, 0, 1, vec![], "model_v1").served;
    let v = serde_json::to_value(&by).expect("json");
    let inner = v.to_string();
    format!("{{\"recsys_served\":0,{}", &inner[1..])
}

fn seg_request(id: u128, t: i64, user: i64, items: &[&str]) -> String {
    serde_json::json!({
        "id": uuid::Uuid::from_u128(id).hyphenated().to_string(),
        "time": t, "user": user, "served": 0, "route": "default", "status": "ok",
        "latency_us": 450_000, "items": items,
    })
    .to_string()
}

#[test]
fn requests_from_follows_local_segments_and_report_json_has_the_keys_scripts_use() {
    let env = Env::new();
    let (_cluster, brokers) = cluster(&[("movielog1", 1)]);
    let seg = env.path("log/requests/open-seg-test.jsonl");
    env.write(
        "log/requests/open-seg-test.jsonl",
        format!(
            "{SEG_HEADER}\n{}\n{}\n{}\n",
            served_line(),
            seg_request(1, T0, 5, &["a+1999", "b+1999"]),
            seg_request(2, T0 + 1_000, 6, &["c+1999"]),
        ),
    );
    let w = |t: i64, u: u64, m: &str| {
        Msg::Stream(
            0,
            Event::Watch {
                time_ms: t,
                user: u,
                movie: m.to_string().into(),
                minute: 0,
            }
            .to_line(),
        )
    };
    produce(
        &brokers,
        &[w(T0 + 5 * MIN, 5, "b+1999"), w(T0 + 6 * MIN, 6, "zzz+1999")],
    );
    let root = env.root.to_str().expect("utf-8").to_string();
    let args = |extra: &'static [&'static str]| {
        let mut v: Vec<String> = [
            "monitor",
            "--brokers",
            &brokers,
            "--topic",
            "movielog1",
            "--requests-from",
            &root,
            "--idle",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &'static [&'static str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        env.ok(&refs)
    };
    run(&["--stop-when-idle"]);
    // More lines arrive (one torn at the end), plus a bad one.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .expect("append");
    writeln!(f, "{}", seg_request(3, T0 + 2 * MIN, 7, &["d+1999"])).expect("write");
    writeln!(f, "{{\"id\":\"not-a-uuid\",\"time\":1,\"user\":1,\"served\":0,\"route\":\"x\",\"status\":\"ok\",\"latency_us\":1,\"items\":[]}}").expect("write");
    write!(f, "{{\"id\":\"torn").expect("write");
    drop(f);
    produce(&brokers, &[w(T0 + 3 * 60 * MIN, 7, "end+1999")]);
    run(&["--stop-when-idle"]);
    let db = recsys::monitor::sqlite::SqliteSink::open(&env.path("monitor.db")).expect("db");
    let mut db: Box<dyn Sink> = Box::new(db);
    // Each answer once, the torn line not yet, the bad one rejected.
    assert_eq!(scalar(db.as_mut(), "SELECT count(*) FROM mon_answers"), 3);
    assert_eq!(
        scalar(
            db.as_mut(),
            "SELECT count(*) FROM mon_bad WHERE reason LIKE '%not a UUID%'"
        ),
        1
    );
    let conv = db
        .rows("SELECT id, converted_20 FROM mon_outcomes ORDER BY id", &[])
        .expect("outcomes");
    let conv: Vec<(String, i64)> = conv.iter().map(|r| (r[0].text(), r[1].int())).collect();
    assert_eq!(conv.len(), 3, "{conv:?}");
    assert_eq!(conv[0].1, 1, "user 5 watched b within the hour");
    assert_eq!(conv[1].1, 0);

    // The segment closes into the store (as `recsys serve` closes it) and a
    // new one opens: the closed one is read from its object, never twice.
    let bytes = std::fs::read(&seg).expect("segment");
    let digest = recsys::store::Digest::of(&bytes);
    let hex = digest.hex();
    let obj = env.path(&format!("store/{}/{}", &hex[..2], &hex[2..]));
    std::fs::create_dir_all(obj.parent().expect("parent")).expect("mkdir");
    std::fs::write(&obj, &bytes).expect("object");
    std::fs::remove_file(&seg).expect("rm open segment");
    let lineage = recsys::lineage::LineageDb::open(&env.path("lineage.db")).expect("lineage");
    lineage
        .close_segment(
            &recsys::lineage::requests::SegmentRef {
                name: "seg-test",
                host: "h",
                opened: T0,
            },
            T0 + 3 * MIN,
            &hex,
        )
        .expect("close segment");
    drop(lineage);
    env.write(
        "log/requests/open-seg-test2.jsonl",
        format!(
            "{}\n{}\n{}\n",
            SEG_HEADER.replace("seg-test", "seg-test2"),
            served_line(),
            seg_request(4, T0 + 3 * 60 * MIN, 8, &["e+1999"]),
        ),
    );
    produce(&brokers, &[w(T0 + 5 * 60 * MIN, 8, "e+1999")]);
    run(&["--stop-when-idle"]);
    assert_eq!(scalar(db.as_mut(), "SELECT count(*) FROM mon_answers"), 4);
    assert_eq!(
        scalar(db.as_mut(), "SELECT count(DISTINCT id) FROM mon_answers"),
        4,
        "no answer stored twice"
    );

    let rep = env.json(&["monitor", "report", "--since", "24h", "--json"]);
    let by = rep["by_model"].as_array().expect("by_model");
    let v1 = by
        .iter()
        .find(|g| g["model"] == "model_v1")
        .expect("model_v1");
    for key in [
        "model",
        "answers",
        "users",
        "converted_10",
        "converted_20",
        "users_converted_20",
        "provisional",
        "availability",
        "latency_p95_ms",
    ] {
        assert!(v1.get(key).is_some(), "by_model lacks {key}: {v1}");
    }
    assert_eq!(v1["answers"], 4);
    assert_eq!(v1["users"], 4);
    assert_eq!(v1["converted_20"], 1);
    assert_eq!(v1["users_converted_20"], 1);
    assert_eq!(v1["latency_p95_ms"], 450.0);
    assert!(rep.get("late_events").is_some());
    assert_eq!(rep["bad_messages"], 1);
    let arm = env.json(&["monitor", "report", "--by", "arm", "--json"]);
    assert_eq!(arm["by_arm"][0]["model"], "default");
    let text = env.ok(&["monitor", "report"]);
    assert!(
        text.contains("model_v1") && text.contains("conv@20"),
        "{text}"
    );
    let _ = Value::Null;
}

// ---------------------------------------------------------------------------
// monitoring/: rules, Alertmanager, dashboards, against the real tools.

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn tool(name: &str, package: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: install the Debian package {package} (scripts/setup.sh does)"
    );
    Command::new(name)
}

fn run_ok(mut c: Command) -> String {
    let o = c.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{c:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_tests_and_alertmanager_config_passes_amtool() {
    let mut t = tool("promtool", "prometheus");
    t.args(["test", "rules"])
        .arg(repo("monitoring/alerts_test.yml"))
        .arg(repo("monitoring/alerts_quality_test.yml"));
    let out = run_ok(t);
    assert!(out.contains("SUCCESS"), "{out}");
    let mut t = tool("promtool", "prometheus");
    t.args(["check", "config"])
        .arg(repo("monitoring/prometheus.yml"));
    run_ok(t);
    // Every alert rule has a test that expects it to fire.
    let rules = std::fs::read_to_string(repo("monitoring/alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(repo("monitoring/alerts_test.yml")).expect("tests")
        + &std::fs::read_to_string(repo("monitoring/alerts_quality_test.yml")).expect("tests");
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = tests.split("alertname: ").skip(1).any(|chunk| {
            chunk.starts_with(line)
                && chunk
                    .lines()
                    .nth(1)
                    .is_some_and(|l| l.trim() == "exp_alerts:")
        });
        assert!(fires, "alert {line} has no promtool test in which it fires");
    }
    let mut t = tool("amtool", "prometheus-alertmanager");
    t.arg("check-config")
        .arg(repo("monitoring/alertmanager.yml"));
    let out = run_ok(t);
    assert!(
        out.contains("SUCCESS") && out.contains("1 receivers"),
        "{out}"
    );
}

/// Every SQL target of a dashboard, with Grafana's `$__from`/`$__to`.
fn panel_targets(file: &str) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(repo(file)).expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let kind = t["datasource"]["type"]
                .as_str()
                .expect("datasource")
                .to_string();
            let q = t["rawSql"]
                .as_str()
                .or_else(|| t["expr"].as_str())
                .expect("a query")
                .to_string();
            out.push((p["title"].as_str().expect("title").to_string(), kind, q));
        }
    }
    out
}

#[test]
fn every_dashboard_sql_panel_returns_rows_from_postgres() {
    let conn = pg_schema("panels");
    let schema = conn
        .split("application_name=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let sink = recsys::monitor::postgres::PgSink::connect(&conn).expect("postgres");
    let mut m = Monitor::open(Box::new(sink), JoinConfig::default()).expect("monitor");
    // The stream ends 2 h in (not at +10 h) so some windows stay open.
    let mut msgs = generate(20_000, 5);
    msgs.truncate(msgs.len() - 3);
    for (i, msg) in msgs.iter().enumerate() {
        let pos = |s: &str| Position {
            source: s.into(),
            part: 0,
            off: i as i64,
        };
        match msg {
            Msg::Stream(_, l) => m.stream_message(pos("stream:t"), l.as_bytes()),
            Msg::Request(j) => m.request_message(pos("requests:t"), j.as_bytes()),
        }
    }
    m.flush().expect("flush");
    drop(m);
    let mut n = 0;
    for file in [
        "monitoring/grafana/dashboards/service-health.json",
        "monitoring/grafana/dashboards/online-quality.json",
    ] {
        for (title, kind, q) in panel_targets(file) {
            if kind != "postgres" {
                continue;
            }
            let q = q
                .replace("$__from", &(T0 - 3_600_000).to_string())
                .replace("$__to", &(T0 + 11 * 3_600_000).to_string());
            let out = psql(&format!("SET search_path = {schema}; {q}"));
            assert!(
                out.lines().count() >= 1,
                "{file}: panel {title:?} returned no rows"
            );
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} SQL panels");
    drop_schema(&conn);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A tiny HTTP server that keeps every POSTed body.
pub(crate) fn webhook_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let got: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            g.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, got)
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    // Not listening (yet): status 0.
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A project with `dataset_1` and a popularity model `model_v1` serving all.
fn served_project() -> Env {
    let env = Env::new();
    let mut events = String::from("time_ms,user,movie,kind,value\n");
    let mut users = String::from("user,age,gender,occupation\n");
    for u in 1..=50u32 {
        users.push_str(&format!("{u},30,F,engineer\n"));
        for i in 0..10u32 {
            if (u + i) % 3 == 0 {
                events.push_str(&format!(
                    "{},{u},{},rate,4\n",
                    1000 + u,
                    movie(u64::from(i))
                ));
            }
        }
    }
    env.write("data/dataset_1/users.csv", users);
    env.write("data/dataset_1/events.csv", &events);
    env.write("data/dataset_1/movies.csv", "movie,title,year,genres\n");
    env.write(
        "data/dataset_1/requests.csv",
        "time_ms,user,status,latency_ms,items\n",
    );
    let rates = events.lines().count() - 1;
    env.write(
        "data/dataset_1/dataset.json",
        format!(
            r#"{{"format":1,"source":{{"import":"synthetic monitoring test data"}},"counts":{{"events":{rates},"watch":0,"rate":{rates},"requests":0,"users":50,"movies":0}}}}"#
        ),
    );
    env.ok(&["add", "data/dataset_1", "--kind", "dataset"]);
    env.ok(&["train", "--dataset", "dataset_1", "--algo", "popularity"]);
    env.write("config.json", r#"{"default": "model_v1"}"#);
    env.commit("model");
    env
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_and_alertmanager_deliver_a_slack_message_about_a_real_server_under_load() {
    let prom_bin = tool("prometheus", "prometheus").get_program().to_owned();
    let am_bin = tool("prometheus-alertmanager", "prometheus-alertmanager")
        .get_program()
        .to_owned();
    let env = served_project();
    let mut serve = env
        .cmd(&["serve", "--port", "0", "--poll-ms", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(serve.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("read url");
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).unwrap_or(0) > 0 {}
        });
    }
    let serve = Killed(serve);
    let serve_port: u16 = line
        .trim_end()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let (hook_port, hooks) = webhook_receiver();
    let dir = env.tmp.path();
    // Alertmanager: the shipped config, with the secret URL file and a
    // short group wait.
    let url_file = dir.join("slack-url");
    std::fs::write(&url_file, format!("http://127.0.0.1:{hook_port}/slack\n")).expect("url");
    let am_cfg = std::fs::read_to_string(repo("monitoring/alertmanager.yml"))
        .expect("am config")
        .replace(
            "/etc/recsys/slack-webhook-url",
            url_file.to_str().expect("utf-8"),
        )
        .replace("group_wait: 30s", "group_wait: 1s");
    std::fs::write(dir.join("am.yml"), am_cfg).expect("write");
    let am_port = free_port();
    let am = Killed(
        Command::new(&am_bin)
            .arg(format!("--config.file={}", dir.join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("am.log")).expect("log"))
            .spawn()
            .expect("start alertmanager"),
    );
    // Prometheus: the shipped rules with the `for` durations shortened
    // (their timing is promtool's to test), scraping every second.
    let rules = std::fs::read_to_string(repo("monitoring/alerts.yml"))
        .expect("rules")
        .replace("for: 5m", "for: 1s")
        .replace("for: 2m", "for: 1s")
        .replace("for: 30m", "for: 1s");
    std::fs::write(dir.join("alerts.yml"), rules).expect("write");
    let prom_cfg = std::fs::read_to_string(repo("monitoring/prometheus.yml"))
        .expect("prometheus config")
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("127.0.0.1:9093", &format!("127.0.0.1:{am_port}"))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{serve_port}"));
    std::fs::write(dir.join("prometheus.yml"), prom_cfg).expect("write");
    let prom_port = free_port();
    let prom = Killed(
        Command::new(&prom_bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prom-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prom.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );
    wait_until("prometheus ready", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", prom_port)).is_ok()
            && http_get(prom_port, "/-/ready").0 == 200
    });
    // Load: bounded in count and time; every third user is unknown, so a
    // third of the answers are popularity fallbacks.
    let start = Instant::now();
    let mut ids = BTreeSet::new();
    let mut sent = 0u32;
    let delivered = || {
        hooks
            .lock()
            .expect("lock")
            .iter()
            .any(|b| b.contains("RecsysFallbackShareHigh"))
    };
    while !delivered() && start.elapsed() < Duration::from_secs(90) && sent < 50_000 {
        for k in 0..20u32 {
            let user = if k % 3 == 0 {
                10_000 + sent
            } else {
                1 + sent % 50
            };
            let (status, _) = http_get(serve_port, &format!("/recommend/{user}"));
            assert_eq!(status, 200);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bodies = hooks.lock().expect("lock").clone();
    let msg = bodies
        .iter()
        .find(|b| b.contains("RecsysFallbackShareHigh"))
        .unwrap_or_else(|| {
            panic!(
                "no Slack message after {sent} requests in {:?}; alertmanager log:\n{}\nprometheus log tail:\n{}",
                start.elapsed(),
                std::fs::read_to_string(dir.join("am.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("prom.log")).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            )
        });
    let v: serde_json::Value = serde_json::from_str(msg).expect("Slack JSON");
    assert_eq!(v["channel"], "#recsys-alerts", "{v}");
    let att = &v["attachments"][0];
    assert!(
        att["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("[FIRING] RecsysFallbackShareHigh")),
        "{v}"
    );
    assert!(
        att["text"]
            .as_str()
            .is_some_and(|t| t.contains("of answers are popularity fallbacks")),
        "{v}"
    );
    // The latency exemplars are the request ids of logged answers.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (st, body) = http_get(
        prom_port,
        &format!(
            "/api/v1/query_exemplars?query=recsys_request_duration_seconds_bucket&start={}&end={}",
            now - 600,
            now + 60
        ),
    );
    assert_eq!(st, 200, "{body}");
    let ex: serde_json::Value = serde_json::from_str(&body).expect("exemplars JSON");
    for set in ex["data"].as_array().expect("data") {
        for e in set["exemplars"].as_array().expect("exemplars") {
            if let Some(id) = e["labels"]["request_id"].as_str() {
                ids.insert(id.to_string());
            }
        }
    }
    assert!(!ids.is_empty(), "no request-id exemplars in {body}");
    // Every PromQL panel of the dashboards answers with data.
    let mut n = 0;
    for file in [
        "monitoring/grafana/dashboards/service-health.json",
        "monitoring/grafana/dashboards/online-quality.json",
    ] {
        for (title, kind, q) in panel_targets(file) {
            if kind != "prometheus" {
                continue;
            }
            let enc: String = q
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let mut result = serde_json::Value::Null;
            wait_until(
                &format!("panel {title:?}: {q}"),
                Duration::from_secs(30),
                || {
                    let (st, body) = http_get(prom_port, &format!("/api/v1/query?query={enc}"));
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    result = v["data"]["result"].clone();
                    st == 200 && result.as_array().is_some_and(|r| !r.is_empty())
                },
            );
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} PromQL panels");
    drop((prom, am, serve));
}

// ---------------------------------------------------------------------------
// `recsys monitor --http`: the dashboard page in headless Chromium, and
// Slack-format webhooks from the monitor itself.

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    let mut c = tool("chromium", "chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,1100",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    c.output().expect("run chromium")
}

/// Pixels of the PNG within `tol` of `rgb`.
fn count_color(png_path: &Path, rgb: (u8, u8, u8), tol: i32) -> (usize, usize) {
    let f = std::fs::File::open(png_path).expect("screenshot");
    let mut d = png::Decoder::new(f);
    d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = d.read_info().expect("png header");
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).expect("png frame");
    let ch = info.color_type.samples();
    let px = &buf[..info.buffer_size()];
    let n = px
        .chunks(ch)
        .filter(|p| {
            (i32::from(p[0]) - i32::from(rgb.0)).abs() <= tol
                && (i32::from(p[1]) - i32::from(rgb.1)).abs() <= tol
                && (i32::from(p[2]) - i32::from(rgb.2)).abs() <= tol
        })
        .count();
    (n, px.len() / ch)
}

/// Ten minutes of answers, one a second, each `latency_ms` slow on the
/// server and in the stream; every `fail_every`-th stream request (when not
/// 0) is a 504.
fn steady(from: i64, first_id: u128, latency_ms: u32, fail_every: u64) -> Vec<Msg> {
    let mut out = Vec::new();
    for i in 0..600u64 {
        let t = from + i as i64 * 1000;
        let user = 1 + i % 40;
        let items: Vec<String> = (0..20).map(|k| movie((i + k) % 300)).collect();
        let model = if i % 2 == 0 { "model_v1" } else { "model_v2" };
        let mut rec = record(
            first_id + u128::from(i),
            t,
            user as i64,
            items.clone(),
            model,
        );
        rec.latency_us = i64::from(latency_ms) * 1000;
        out.push(Msg::Request(serde_json::to_string(&rec).expect("json")));
        let fail = fail_every > 0 && i % fail_every == 0;
        let line = Event::Recommendation {
            time_ms: t + i64::from(latency_ms),
            user,
            host: "recsys".into(),
            port: 8082,
            status: if fail { 504 } else { 200 },
            items: if fail {
                Vec::new()
            } else {
                items.iter().map(|s| s.clone().into()).collect()
            },
            error: fail.then(|| "timeout".into()),
            latency_ms,
        }
        .to_line();
        out.push(Msg::Stream((user % 2) as i32, line));
    }
    out
}

fn slack_texts(hooks: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
    hooks
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_dashboard_page_draws_the_stream_per_model_and_alerts_fire_and_resolve_once() {
    let env = Env::new();
    let (_cluster, brokers) = cluster(&[("movielog1", 2), ("recsys-requests", 1)]);
    let mut msgs = generate(6_000, 9);
    // Keep the last hour's windows open: drop the final ticks. Then ten
    // minutes of a slow service (450 ms) whose every fifth request times out.
    msgs.truncate(msgs.len() - 3);
    msgs.extend(steady(T0 + 300 * MIN, 1_000_000, 450, 5));
    produce(&brokers, &msgs);
    let (hook_port, hooks) = webhook_receiver();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let hook = format!("http://127.0.0.1:{hook_port}/hook");
    let child = spawn_monitor(
        &env,
        &brokers,
        &[],
        &[
            "--http",
            &addr,
            "--alert-webhook",
            &hook,
            "--alert-every",
            "500ms",
        ],
    );
    let _child = Killed(child);
    wait_until("the monitor's figures", Duration::from_secs(60), || {
        let (st, body) = http_get(port, "/api/report");
        st == 200
            && serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["by_model"].as_array().map(|a| a.len()))
                .unwrap_or(0)
                >= 2
    });
    // The service is slow and a fifth of its requests time out: both
    // alerts fire, once each.
    let start = Instant::now();
    while slack_texts(&hooks)
        .iter()
        .filter(|t| t.starts_with("[FIRING]"))
        .count()
        < 2
    {
        if start.elapsed() > Duration::from_secs(60) {
            panic!(
                "no two firing alerts: {:?}\nreport of the last 5 minutes: {}\nmonitor log: {}",
                slack_texts(&hooks),
                http_get(port, "/api/report?minutes=5").1,
                std::fs::read_to_string(env.tmp.path().join("monitor.err")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));
    let texts = slack_texts(&hooks);
    let firing: Vec<&String> = texts.iter().filter(|t| t.starts_with("[FIRING]")).collect();
    assert_eq!(firing.len(), 2, "no repeats while firing: {texts:?}");
    assert!(
        firing.iter().any(|t| t.contains("RecsysLatencyP95High")),
        "{texts:?}"
    );
    assert!(
        firing.iter().any(|t| t.contains("RecsysAvailabilityLow")),
        "{texts:?}"
    );
    let (st, metrics) = http_get(port, "/metrics");
    assert_eq!(st, 200);
    assert!(
        metrics.contains("recsys_monitor_conversion_rate{model=\"model_v1\",k=\"20\"}"),
        "{metrics}"
    );

    // The page: loads with no console errors, fills its table and charts.
    let profile = tempfile::tempdir().expect("profile");
    let url = format!("http://{addr}/");
    let out = chromium(&["--dump-dom", &url], profile.path());
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never loaded its figures:\n{dom}\n{log}"
    );
    for bad in ["Uncaught", "CONSOLE(", "Failed to load resource"] {
        let errs: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(bad) && (bad != "CONSOLE(" || l.contains(":ERROR:")))
            .collect();
        assert!(errs.is_empty(), "console errors: {errs:?}");
    }
    assert!(
        dom.contains("<td>model_v1</td>") && dom.contains("<td>model_v2</td>"),
        "{dom}"
    );
    for chart in ["c-answers", "c-avail", "c-lat", "c-conv"] {
        let tag = dom
            .split("<canvas ")
            .find(|t| t.contains(&format!("id=\"{chart}\"")))
            .unwrap_or_else(|| panic!("no canvas {chart}"));
        let points: usize = tag
            .split("data-points=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(points >= 20, "chart {chart} has {points} points");
    }
    let shot = env.tmp.path().join("dashboard.png");
    let out = chromium(
        &[&format!("--screenshot={}", shot.display()), &url],
        profile.path(),
    );
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both model versions' lines are on the charts (first two palette colours).
    let (blue, total) = count_color(&shot, (0x1f, 0x77, 0xb4), 12);
    let (red, _) = count_color(&shot, (0xd6, 0x27, 0x28), 12);
    assert!(total > 1_000_000, "screenshot of {total} pixels");
    assert!(
        blue > 500 && red > 500,
        "chart lines: {blue} blue, {red} red pixels"
    );

    // A fast, available service an hour later: both alerts resolve, once.
    produce(&brokers, &steady(T0 + 6 * 60 * MIN, 5_000_000, 2, 0));
    wait_until("two resolved alerts", Duration::from_secs(60), || {
        slack_texts(&hooks)
            .iter()
            .filter(|t| t.starts_with("[RESOLVED]"))
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let texts = slack_texts(&hooks);
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("[RESOLVED]")).count(),
        2,
        "{texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("[FIRING]")).count(),
        2,
        "{texts:?}"
    );
}
