//! `recsys ingest` and `recsys replay` through the binary, against
//! librdkafka's mock cluster started in this test process (the binary
//! reaches it at its bootstrap address like any broker).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use recsys::dataset::{Dataset, EventKind};
use recsys::stream::parse_line;

use crate::common::Env;

pub(crate) const TOPIC: &str = "movielog1";

/// A one-broker mock cluster with `TOPIC` in `partitions` partitions.
pub(crate) fn cluster(partitions: i32) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic(TOPIC, partitions, 1).expect("create topic");
    let b = c.bootstrap_servers();
    (c, b)
}

/// Produce (partition, payload) messages; `None` is a message without a value.
pub(crate) fn produce(brokers: &str, topic: &str, msgs: &[(i32, Option<String>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for (part, payload) in msgs {
        let mut rec: BaseRecord<'_, str, str> = BaseRecord::to(topic).partition(*part);
        if let Some(s) = payload {
            rec = rec.payload(s.as_str());
        }
        p.send(rec).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// A valid watch line, unique per (user, minute).
fn watch(user: u64, movie: &str, minute: u32) -> String {
    format!(
        "2024-03-01T10:{:02}:{:02},{user},GET /data/m/{movie}/{minute}.mpg",
        minute / 60 % 60,
        minute % 60
    )
}

fn rate(user: u64, movie: &str, rating: u32, sec: u32) -> String {
    format!(
        "2024-03-01T11:{:02}:{:02},{user},GET /rate/{movie}={rating}",
        sec / 60 % 60,
        sec % 60
    )
}

fn ingest_json(env: &Env, brokers: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["ingest", "--brokers", brokers, "--topic", TOPIC, "--json"];
    args.extend_from_slice(extra);
    env.json(&args)
}

fn dataset(env: &Env, name: &str) -> Dataset {
    Dataset::read_dir(&env.path(&format!("data/{name}"))).expect("read dataset")
}

/// (partition, first, last, messages) per partition of a report's offsets.
fn ranges(report: &serde_json::Value) -> BTreeMap<String, (i64, i64, u64)> {
    report["offsets"]
        .as_object()
        .expect("offsets")
        .iter()
        .filter_map(|(p, o)| {
            Some((
                p.clone(),
                (
                    o["first"].as_i64()?,
                    o["last"].as_i64()?,
                    o["messages"].as_u64()?,
                ),
            ))
        })
        .collect()
}

#[test]
fn good_malformed_and_empty_messages_are_counted_exactly() {
    let (_c, brokers) = cluster(2);
    let env = Env::new();
    let msgs: Vec<(i32, Option<String>)> = vec![
        (0, Some(watch(1, "toy+story+1995", 0))),
        (0, Some(watch(1, "toy+story+1995", 1))),
        (0, Some(rate(1, "toy+story+1995", 4, 0))),
        (0, Some("2024-03-01T10:00:00,7,recommendation request host:8082, status 200, result: heat+1995, toy+story+1995, 45 ms".into())),
        (0, Some("2024-03-01T10:00:00,1,POST /login".into())),
        (0, None),
        (1, Some(watch(2, "heat+1995", 5))),
        (1, Some("2024-03-01T10:00:01,8,recommendation request host:8082, status 500, result: java.net.ConnectException, 3 ms".into())),
        (1, Some(rate(2, "heat+1995", 9, 1))),
        (1, Some("2024-13-01T10:00:00,2,GET /rate/heat+1995=3".into())),
        (1, Some(String::new())),
        // An exact duplicate of an earlier watch line (a producer retry).
        (1, Some(watch(1, "toy+story+1995", 1))),
    ];
    produce(&brokers, TOPIC, &msgs);
    let r = ingest_json(&env, &brokers, &["--max-messages", "12"]);
    assert_eq!(r["dataset"], "dataset_1");
    assert_eq!(r["messages"], 12);
    assert_eq!(r["events"]["watch"], 4);
    assert_eq!(r["events"]["rate"], 1);
    assert_eq!(r["events"]["recommendation"], 2);
    assert_eq!(r["quarantined"], 5);
    assert_eq!(r["committed"], true);
    let q = &r["quality"];
    assert_eq!(q["schema_violations"]["empty"], 2);
    assert_eq!(q["schema_violations"]["unknown_request"], 1);
    assert_eq!(q["schema_violations"]["rating_out_of_range"], 1);
    assert_eq!(q["schema_violations"]["bad_time"], 1);
    assert_eq!(q["out_of_range_ratings"], 1);
    assert_eq!(q["duplicate_events"], 1);
    assert!(q["drift"].is_null(), "first dataset has no reference");
    assert_eq!(
        ranges(&r),
        BTreeMap::from([("0".into(), (0, 5, 6)), ("1".into(), (0, 5, 6))])
    );

    // The dataset: duplicates dropped, events sorted, requests kept.
    let d = dataset(&env, "dataset_1");
    assert_eq!(d.events.len(), 4);
    assert!(d.events.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    assert_eq!(d.requests.len(), 2);
    assert_eq!(d.requests.iter().filter(|q| q.status == 500).count(), 1);
    let users: Vec<u64> = d.users.iter().map(|u| u.user).collect();
    assert_eq!(users, vec![1, 2, 7, 8]);
    let movies: Vec<(&str, Option<u32>)> = d
        .movies
        .iter()
        .map(|m| (m.movie.as_str(), m.year))
        .collect();
    assert_eq!(
        movies,
        vec![("heat+1995", Some(1995)), ("toy+story+1995", Some(1995))]
    );

    // Quarantine: one JSON object per rejected message, with its reason.
    let qtext = String::from_utf8(env.read("data/dataset_1/quarantine.jsonl")).expect("utf8");
    let qlines: Vec<serde_json::Value> = qtext
        .lines()
        .map(|l| serde_json::from_str(l).expect("quarantine json"))
        .collect();
    assert_eq!(qlines.len(), 5);
    let at = |p: i64, o: i64| {
        qlines
            .iter()
            .find(|q| q["partition"] == p && q["offset"] == o)
            .unwrap_or_else(|| panic!("no quarantine entry for {p}/{o}: {qtext}"))
    };
    assert_eq!(at(0, 4)["kind"], "unknown_request");
    assert_eq!(at(0, 4)["line"], "2024-03-01T10:00:00,1,POST /login");
    assert_eq!(at(0, 5)["kind"], "empty");
    assert_eq!(at(1, 2)["reason"], "rating 9 out of range 1-5");

    // The run record names topic, partitions and offset ranges, and the
    // quality figures as metrics.
    let l = env.json(&["lineage", "dataset_1", "--json"]);
    let run = &l["run"];
    assert_eq!(run["kind"], "ingest");
    assert_eq!(run["source"]["kafka"]["topic"], TOPIC);
    assert_eq!(
        run["source"]["kafka"]["partitions"],
        serde_json::json!([0, 1])
    );
    assert_eq!(run["source"]["kafka"]["offsets"]["1"]["last"], 5);
    assert_eq!(run["metrics"]["quarantined"], 5);
    assert_eq!(run["metrics"]["quality"]["duplicate_events"], 1);
    assert!(env.path("data/dataset_1.recsys").exists());

    // The human summary.
    produce(&brokers, TOPIC, &[(0, Some(watch(3, "heat+1995", 9)))]);
    let out = env.ok(&[
        "ingest",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--max-messages",
        "1",
    ]);
    assert!(
        out.contains("ingested 1 messages from movielog1 into dataset_2"),
        "{out}"
    );
    assert!(out.contains("offsets: p0 6..=6 (1), p1 none"), "{out}");
}

#[test]
fn max_messages_is_exact_across_partitions_and_waits_past_the_end() {
    let (_c, brokers) = cluster(2);
    let env = Env::new();
    let msgs: Vec<(i32, Option<String>)> = (0..120)
        .map(|i| ((i % 2) as i32, Some(watch(i, "heat+1995", i as u32))))
        .collect();
    produce(&brokers, TOPIC, &msgs);

    let a = ingest_json(&env, &brokers, &["--max-messages", "70"]);
    assert_eq!(a["messages"], 70);
    let ra = ranges(&a);
    assert_eq!(ra.values().map(|r| r.2).sum::<u64>(), 70);
    let b = ingest_json(&env, &brokers, &["--max-messages", "50"]);
    assert_eq!(b["messages"], 50);
    assert_eq!(b["dataset"], "dataset_2");
    let rb = ranges(&b);
    // Each partition continues exactly where the first run stopped.
    for (p, (first, _, _)) in &rb {
        let prev_last = ra.get(p).map_or(-1, |r| r.1);
        assert_eq!(*first, prev_last + 1, "partition {p}: {ra:?} then {rb:?}");
    }
    // Together the two runs read both partitions to the end, once.
    for p in ["0", "1"] {
        let (a, b) = (ra.get(p), rb.get(p));
        let n = a.map_or(0, |r| r.2) + b.map_or(0, |r| r.2);
        let last = b.or(a).map(|r| r.1);
        assert_eq!(
            (n, last),
            (60, Some(59)),
            "partition {p}: {ra:?} then {rb:?}"
        );
    }

    // Nothing left: it does not stop at the end of the partitions, it waits
    // for the messages it was asked for.
    let child = env
        .cmd(&[
            "ingest",
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--max-messages",
            "3",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    produce(
        &brokers,
        TOPIC,
        &[
            (0, Some(watch(500, "heat+1995", 1))),
            (1, Some(watch(501, "heat+1995", 2))),
            (1, Some(watch(502, "heat+1995", 3))),
            (0, Some(watch(503, "heat+1995", 4))),
        ],
    );
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(c["messages"], 3);
    assert_eq!(c["stopped_by"], "max_messages");

    // With a time limit and nothing new, it gives up after the limit and
    // records nothing... except the one message still left over.
    let d = ingest_json(&env, &brokers, &["--minutes", "0.05"]);
    assert_eq!(d["messages"], 1);
    assert_eq!(d["stopped_by"], "minutes");
    let t0 = Instant::now();
    let err = env.fails(
        2,
        &[
            "ingest",
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--minutes",
            "0.02",
        ],
    );
    assert!(err.contains("no messages arrived"), "{err}");
    assert!(t0.elapsed() >= Duration::from_millis(1200));
    assert!(!env.path("data/dataset_5.recsys").exists());
}

/// All (user, minute) pairs of watch events across the given datasets.
fn watch_keys(env: &Env, names: &[&str]) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, u32)> = names
        .iter()
        .flat_map(|n| dataset(env, n).events)
        .filter(|e| e.kind == EventKind::Watch)
        .map(|e| (e.user, e.value))
        .collect();
    v.sort_unstable();
    v
}

/// Crash-and-rerun: every message lands in exactly one dataset.
///
/// The dangerous window is after the dataset is durable but before the
/// offsets are committed: Kafka still has the old position, so a naive
/// rerun would read those messages again into a second dataset. Ingest
/// resumes from the later of the committed offsets and the offsets the
/// last run *recorded* in lineage, so it does not. A crash earlier (while
/// consuming, or after consuming but before recording) records and
/// commits nothing, so the rerun reads the messages again — nothing lost.
///
/// `RECSYS_CRASH_AT` makes the binary abort() at those points, exactly as
/// a kill -9 would (no destructors, no commit); a real SIGKILL while it
/// waits for messages is tested too.
#[test]
fn crash_and_rerun_loses_and_duplicates_nothing() {
    let (_c, brokers) = cluster(2);
    let env = Env::new();
    let msgs: Vec<(i32, Option<String>)> = (0..300)
        .map(|i| ((i % 2) as i32, Some(watch(i, "heat+1995", i as u32))))
        .collect();
    produce(&brokers, TOPIC, &msgs);
    let args = |n: &'static str| {
        vec![
            "ingest",
            "--brokers",
            brokers.as_str(),
            "--topic",
            TOPIC,
            "--group",
            "g1",
            "--max-messages",
            n,
            "--json",
        ]
    };

    // 1. Crash after the dataset is recorded, before the commit.
    let out = env
        .cmd(&args("100"))
        .env("RECSYS_CRASH_AT", "ingest:after-record")
        .output()
        .expect("run");
    assert!(!out.status.success(), "the crash hook must abort");
    assert!(
        env.path("data/dataset_1.recsys").exists(),
        "dataset_1 was recorded"
    );
    assert_eq!(dataset(&env, "dataset_1").events.len(), 100);

    // 2. Crash after consuming, before writing anything.
    let out = env
        .cmd(&args("100"))
        .env("RECSYS_CRASH_AT", "ingest:after-consume")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(!env.path("data/dataset_2").exists());

    // 3. Crash after writing data/dataset_2/, before registering it: the
    //    leftover directory is recognised as ingest output and replaced.
    let out = env
        .cmd(&args("100"))
        .env("RECSYS_CRASH_AT", "ingest:after-write")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(env.path("data/dataset_2/events.csv").exists());
    assert!(!env.path("data/dataset_2.recsys").exists());

    // 4. SIGKILL while it waits for more messages than there are.
    let mut child = env.cmd(&args("1000")).spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(2000));
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert!(!env.path("data/dataset_2.recsys").exists());

    // 5. Rerun: exactly the 200 messages not yet in a dataset.
    let r = env.json(&args("200"));
    assert_eq!(r["dataset"], "dataset_2");
    assert_eq!(r["messages"], 200);
    // Each partition dataset_1 read from resumes after what it recorded
    // (Kafka's committed offsets are still behind).
    let l = env.json(&["lineage", "dataset_1", "--json"]);
    let recorded = l["run"]["source"]["kafka"]["offsets"]
        .as_object()
        .expect("offsets")
        .clone();
    for (p, o) in &recorded {
        if let Some(last) = o["last"].as_i64() {
            assert_eq!(r["offsets"][p]["start_from"], "recorded", "{r}");
            assert_eq!(r["offsets"][p]["start"], last + 1, "{r}");
        }
    }
    let all = watch_keys(&env, &["dataset_1", "dataset_2"]);
    let want: Vec<(u64, u32)> = (0..300).map(|i| (i, i as u32)).collect();
    assert_eq!(all, want, "every message exactly once across the datasets");

    // 6. Now the commit happened: a consumer of the same group starts at 150/150.
    produce(&brokers, TOPIC, &[(0, Some(watch(900, "heat+1995", 1)))]);
    let r = env.json(&args("1"));
    assert_eq!(r["offsets"]["0"]["start"], 150);
    assert_eq!(r["offsets"]["0"]["start_from"], "committed");
    assert_eq!(r["offsets"]["0"]["first"], 150);

    // A directory that is not an ingest's leftover is never deleted.
    env.write("data/dataset_4/notes.txt", "mine");
    produce(&brokers, TOPIC, &[(1, Some(watch(901, "heat+1995", 1)))]);
    let err = env.fails(2, &args("1"));
    assert!(
        err.contains("exists but is not a registered dataset"),
        "{err}"
    );
    assert_eq!(env.read("data/dataset_4/notes.txt"), b"mine");
}

#[test]
fn replay_to_file_parses_and_round_trips_through_kafka() {
    let (c, brokers) = cluster(3);
    c.create_topic("replayed", 2, 1).expect("create topic");
    let env = Env::new();
    let mut msgs = Vec::new();
    for u in 0..40u64 {
        for (k, m) in [
            "heat+1995",
            "toy+story+1995",
            "the+good_+the+bad+and+the+ugly+1966",
        ]
        .iter()
        .enumerate()
        {
            msgs.push((
                (u % 3) as i32,
                Some(rate(
                    u,
                    m,
                    (u as u32 + k as u32) % 5 + 1,
                    (u * 3 + k as u64) as u32,
                )),
            ));
        }
        msgs.push(((u % 3) as i32, Some(watch(u, "heat+1995", 7))));
    }
    msgs.push((0, Some("2024-03-01T10:00:00.250,5,recommendation request recsys:8082, status 200, result: heat+1995, toy+story+1995, 17 ms".into())));
    produce(&brokers, TOPIC, &msgs);
    let first = ingest_json(&env, &brokers, &["--max-messages", &msgs.len().to_string()]);
    assert_eq!(first["quarantined"], 0);
    let d1 = dataset(&env, "dataset_1");

    let out = env.json(&[
        "replay",
        "dataset_1",
        "--out",
        "stream.txt",
        "--watch-minutes",
        "4",
        "--json",
    ]);
    let text = String::from_utf8(env.read("stream.txt")).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(out["lines"], lines.len());
    let parsed: Vec<_> = lines
        .iter()
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(parsed.windows(2).all(|w| w[0].time_ms() <= w[1].time_ms()));
    let n_rate = parsed
        .iter()
        .filter(|e| matches!(e, recsys::stream::Event::Rate { .. }))
        .count();
    let n_rec = parsed
        .iter()
        .filter(|e| matches!(e, recsys::stream::Event::Recommendation { .. }))
        .count();
    assert_eq!(n_rate, 120);
    assert_eq!(n_rec, 1);
    // Ratings of heat+1995 come with the dataset's own watch event; the
    // others get 1..=4 synthetic minutes each.
    let n_watch = parsed.len() - n_rate - n_rec;
    assert!((40 + 80..=40 + 80 * 4).contains(&n_watch), "{n_watch}");

    // The same lines through Kafka and back: the same ratings and requests.
    env.ok(&[
        "replay",
        "dataset_1",
        "--brokers",
        &brokers,
        "--topic",
        "replayed",
        "--watch-minutes",
        "4",
        "--rate",
        "100000",
    ]);
    let second = env.json(&[
        "ingest",
        "--brokers",
        &brokers,
        "--topic",
        "replayed",
        "--max-messages",
        &lines.len().to_string(),
        "--json",
    ]);
    assert_eq!(second["messages"], lines.len());
    assert_eq!(second["quarantined"], 0);
    let d2 = dataset(&env, "dataset_2");
    let ratings = |d: &Dataset| {
        let mut v: Vec<_> = d
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Rate)
            .map(|e| (e.time_ms, e.user, e.movie.clone(), e.value))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ratings(&d1), ratings(&d2));
    assert_eq!(d1.requests, d2.requests);
    // Another topic is another source: its first dataset is not judged
    // against the original's (and says so).
    assert!(second["quality"]["drift"].is_null(), "{second}");
    assert!(
        second["quality"]["warnings"]
            .to_string()
            .contains("first dataset from topic replayed"),
        "{second}"
    );
}

#[test]
fn severe_drift_fails_unless_allowed_and_commits_nothing() {
    let (_c, brokers) = cluster(1);
    let env = Env::new();
    let good: Vec<(i32, Option<String>)> = (0..200)
        .map(|i| {
            (
                0,
                Some(rate(
                    i,
                    &format!("old+movie+{}", 1990 + i % 10),
                    4 + (i % 2) as u32,
                    i as u32,
                )),
            )
        })
        .collect();
    produce(&brokers, TOPIC, &good);
    ingest_json(&env, &brokers, &["--max-messages", "200"]);

    // New batch: every rating 1 star, every movie never seen before.
    let bad: Vec<(i32, Option<String>)> = (0..200)
        .map(|i| {
            (
                0,
                Some(rate(
                    i,
                    &format!("new+movie+{}", 2000 + i % 10),
                    1,
                    i as u32,
                )),
            )
        })
        .collect();
    produce(&brokers, TOPIC, &bad);
    let mut args = vec![
        "ingest",
        "--brokers",
        brokers.as_str(),
        "--topic",
        TOPIC,
        "--max-messages",
        "200",
    ];
    let err = env.fails(1, &args);
    assert!(err.contains("severe drift against dataset_1"), "{err}");
    assert!(err.contains("mean rating moved 3.50 stars"), "{err}");
    assert!(
        err.contains("100% of events are about movies dataset_1 never saw"),
        "{err}"
    );
    assert!(!env.path("data/dataset_2").exists(), "nothing recorded");

    // Nothing was committed: the same 200 messages are read again.
    args.extend_from_slice(&["--allow-drift", "--json"]);
    let r = env.json(&args);
    assert_eq!(r["dataset"], "dataset_2");
    assert_eq!(r["offsets"]["0"]["first"], 200);
    assert_eq!(r["offsets"]["0"]["last"], 399);
    let findings = r["quality"]["drift"]["findings"]
        .as_array()
        .expect("findings");
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "rating_mean" && f["severity"] == "severe")
    );
    let l = env.json(&["lineage", "dataset_2", "--json"]);
    assert_eq!(l["run"]["params"]["allow_drift"], true);
    assert_eq!(
        l["run"]["metrics"]["quality"]["drift"]["rating_mean"]["current"],
        1.0
    );
    assert_eq!(
        l["inputs"][0]["name"], "dataset_1",
        "drift reference is an input"
    );
}

fn serve_connection(
    stream: std::net::TcpStream,
    hits: &Mutex<BTreeMap<String, u32>>,
    known: &[(u64, &'static str)],
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let mut w = stream;
    loop {
        let mut first = String::new();
        if r.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
        *hits.lock().expect("lock").entry(path.clone()).or_insert(0) += 1;
        let id: Option<u64> = path.strip_prefix("/user/").and_then(|s| s.parse().ok());
        let resp = match known.iter().find(|(u, _)| Some(*u) == id) {
            Some((_, b)) => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string(),
        };
        if w.write_all(resp.as_bytes())
            .and_then(|_| w.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Requests per path.
type Hits = Arc<Mutex<BTreeMap<String, u32>>>;

/// A tiny user API on 127.0.0.1:0 serving `known` users; counts requests
/// per path. Stops when the returned flag is set.
fn user_api(known: Vec<(u64, &'static str)>) -> (String, Hits, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    l.set_nonblocking(true).expect("nonblocking");
    let hits = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s) = (hits.clone(), stop.clone());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((stream, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let (h, known) = (h.clone(), known.clone());
            // One thread per connection: the client keeps connections alive
            // and asks several users in parallel.
            std::thread::spawn(move || serve_connection(stream, &h, &known));
        }
    });
    (format!("http://{addr}/user/"), hits, stop)
}

#[test]
fn user_attributes_from_a_file_and_from_the_api_once_per_user() {
    let (_c, brokers) = cluster(1);
    let env = Env::new();
    let batch = |users: &[u64], base: u32| -> Vec<(i32, Option<String>)> {
        users
            .iter()
            .flat_map(|&u| {
                (0..3).map(move |k| (0, Some(watch(u, "heat+1995", base + u as u32 * 3 + k))))
            })
            .collect()
    };

    // From a file: users 1 and 2 described, 3 not.
    env.write(
        "users.jsonl",
        "{\"user_id\":1,\"age\":29,\"occupation\":\"college/grad student\",\"gender\":\"M\"}\n\
         {\"user_id\":2,\"age\":41,\"occupation\":\"writer\",\"gender\":\"F\"}\n",
    );
    produce(&brokers, TOPIC, &batch(&[1, 2, 3], 0));
    let r = ingest_json(
        &env,
        &brokers,
        &["--max-messages", "9", "--users", "users.jsonl"],
    );
    assert_eq!(r["quality"]["unknown_users"], 1);
    assert_eq!(r["quality"]["users"], 3);
    let d = dataset(&env, "dataset_1");
    assert_eq!(d.users[0].age, Some(29));
    assert_eq!(
        d.users[0].occupation.as_deref(),
        Some("college/grad student")
    );
    assert_eq!(d.users[1].gender.as_deref(), Some("F"));
    assert_eq!(d.users[2].age, None);

    // From the API: users 1-2 are already known from dataset_1 and are not
    // asked; 3 (unknown there) and 4 are asked exactly once although each
    // appears three times; 5 is unknown to the API (404).
    let (url, hits, stop) = user_api(vec![
        (
            3,
            r#"{"user_id":3,"age":35,"occupation":"engineer","gender":"F"}"#,
        ),
        (
            4,
            r#"{"user_id":4,"age":"52","occupation":"retired","gender":"M"}"#,
        ),
    ]);
    produce(&brokers, TOPIC, &batch(&[1, 2, 3, 4, 5], 100));
    let r = ingest_json(
        &env,
        &brokers,
        &["--max-messages", "15", "--user-api", &url],
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(r["quality"]["unknown_users"], 1);
    let hits = hits.lock().expect("lock").clone();
    assert_eq!(
        hits,
        BTreeMap::from([
            ("/user/3".into(), 1),
            ("/user/4".into(), 1),
            ("/user/5".into(), 1)
        ])
    );
    let d = dataset(&env, "dataset_2");
    let by: BTreeMap<u64, _> = d.users.iter().map(|u| (u.user, u)).collect();
    assert_eq!(by[&1].age, Some(29), "kept from the previous dataset");
    assert_eq!(by[&3].occupation.as_deref(), Some("engineer"));
    assert_eq!(by[&4].age, Some(52));
    assert_eq!(by[&5].age, None);

    // A bad user file is an error before anything is consumed.
    env.write("bad.jsonl", "{\"age\":3}\n");
    let err = env.fails(
        2,
        &[
            "ingest",
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--max-messages",
            "1",
            "--users",
            "bad.jsonl",
        ],
    );
    assert!(err.contains("bad.jsonl:1: not a user record"), "{err}");
}

/// Ratings with a learnable structure: users and movies fall in two taste
/// groups; a user rates movies of their own group high.
pub(crate) fn taste_batch(users: std::ops::Range<u64>, day: u32) -> Vec<(i32, Option<String>)> {
    let mut out = Vec::new();
    let mut sec = 0u32;
    for u in users {
        for m in 0..24u64 {
            if (u * 7 + m * 3) % 5 == 0 {
                continue; // leave some pairs unseen
            }
            let rating = if u % 2 == m % 2 { 5 } else { 1 };
            let movie = format!("movie+{m}+1999");
            out.push((0, Some(watch(u, &movie, sec % 3000))));
            out.push((
                0,
                Some(
                    rate(u, &movie, rating, sec)
                        .replace("2024-03-01", &format!("2024-03-{day:02}")),
                ),
            ));
            sec += 1;
        }
    }
    out
}

#[test]
fn pipeline_ingests_trains_evaluates_registers_and_promotes_only_a_better_model() {
    let env = Env::new();
    let (_c, brokers) = cluster(1);
    let a = taste_batch(1..41, 1);
    produce(&brokers, TOPIC, &a);
    let n = a.len().to_string();
    let base = [
        "pipeline",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--max-messages",
        &n,
    ];
    let mut args = base.to_vec();
    args.extend(["--json"]);
    let first = env.json(&args);
    assert_eq!(first["dataset"], "dataset_1");
    assert_eq!(first["model"], "model_v1");
    assert_eq!(first["ingest"]["messages"], a.len());
    assert_eq!(first["evaluate"]["mode"], "holdout");
    assert!(first["evaluate"]["precision_at_10"].is_number());
    assert!(first["promotion"].is_null(), "no --promote, no promotion");
    // The chain is in lineage: model <- train <- dataset <- ingest (offsets).
    let l = env.json(&["lineage", "model_v1", "--json"]);
    assert_eq!(l["inputs"][0]["name"], "dataset_1");
    let d = env.json(&["lineage", "dataset_1", "--json"]);
    assert_eq!(d["run"]["kind"], "ingest");
    assert!(
        d["run"]["source"].to_string().contains(TOPIC),
        "{}",
        d["run"]["source"]
    );

    // A broken serving config is never touched.
    env.write("config.json", "{ not json");
    let b = taste_batch(41..81, 2);
    produce(&brokers, TOPIC, &b);
    let n2 = b.len().to_string();
    let second = [
        "pipeline",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--max-messages",
        &n2,
        "--allow-drift",
        "--promote",
    ];
    let err = env.fails(2, &second);
    assert!(err.contains("config.json is invalid"), "{err}");
    assert_eq!(env.read("config.json"), b"{ not json");
    assert!(
        !env.path("data/dataset_2").exists(),
        "refused before consuming"
    );

    // With a valid config the decision follows the scores it reports.
    env.write("config.json", r#"{"default": "model_v1"}"#);
    let c = taste_batch(81..121, 3);
    produce(&brokers, TOPIC, &c);
    let n3 = c.len().to_string();
    let mut third = vec![
        "pipeline",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--max-messages",
        &n3,
        "--allow-drift",
        "--promote",
        "--json",
    ];
    third.extend(["--algo", "als"]);
    let r = env.json(&third);
    let p = &r["promotion"];
    let new_model = r["model"].as_str().expect("model").to_string();
    let cand = p["candidate_score"].as_f64().expect("candidate score");
    let served = p["served_score"].as_f64().expect("served score");
    assert_eq!(p["served"], "model_v1");
    let cfg: serde_json::Value = serde_json::from_slice(&env.read("config.json")).unwrap();
    if cand > served {
        assert_eq!(p["promoted"], true);
        assert_eq!(cfg["default"], new_model.as_str());
    } else {
        assert_eq!(p["promoted"], false);
        assert_eq!(cfg["default"], "model_v1");
    }
    env.ok(&["config", "check"]);
}

/// Drift is judged against the previous dataset from the same topic: not
/// against a MovieLens import (another source, whose ratings and movies
/// differ by design), and not against another topic's latest dataset.
#[test]
fn drift_reference_is_the_previous_dataset_of_the_same_topic() {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic(TOPIC, 1, 1).expect("topic");
    c.create_topic("movielog2", 1, 1).expect("topic");
    let brokers = c.bootstrap_servers();
    let env = Env::new();
    let ml = env.tmp.path().join("ml");
    crate::pipeline::classic_fixture(&ml);
    env.ok(&["import", "movielens", ml.to_str().expect("utf8")]);

    // Every rating 1 star, about movies the import never saw: severe drift
    // against dataset_1, were it the reference.
    let lows = |prefix: &str| -> Vec<(i32, Option<String>)> {
        (0..200)
            .map(|i| {
                (
                    0,
                    Some(rate(
                        i,
                        &format!("{prefix}+movie+{}", 2000 + i % 10),
                        1,
                        i as u32,
                    )),
                )
            })
            .collect()
    };
    produce(&brokers, TOPIC, &lows("low"));
    let first = ingest_json(&env, &brokers, &["--max-messages", "200"]);
    assert_eq!(first["dataset"], "dataset_2");
    assert!(first["quality"]["drift"].is_null(), "{first}");
    let warnings = first["quality"]["warnings"].to_string();
    assert!(
        warnings.contains("first dataset from topic movielog1"),
        "{warnings}"
    );
    // The import still seeds what it knows: its users keep their attributes.
    let d2 = dataset(&env, "dataset_2");
    assert!(
        d2.users.iter().any(|u| u.user == 1 && u.age.is_some()),
        "attributes from the import"
    );

    // Another topic with high ratings: its first dataset, not a drift
    // from movielog1's.
    let highs: Vec<(i32, Option<String>)> = (0..200)
        .map(|i| (0, Some(rate(i, "high+movie+1999", 5, i as u32))))
        .collect();
    produce(&brokers, "movielog2", &highs);
    let other = env.json(&[
        "ingest",
        "--brokers",
        &brokers,
        "--topic",
        "movielog2",
        "--max-messages",
        "200",
        "--json",
    ]);
    assert_eq!(other["dataset"], "dataset_3");
    assert!(other["quality"]["drift"].is_null(), "{other}");

    // Back on movielog1: compared with dataset_2 (same topic, same
    // distribution), not dataset_3 (the newest) — so no severe drift.
    produce(&brokers, TOPIC, &lows("low"));
    let again = env.json(&[
        "ingest",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--max-messages",
        "200",
        "--json",
    ]);
    assert_eq!(again["quality"]["drift"]["reference"], "dataset_2");
    let findings = again["quality"]["drift"]["findings"].to_string();
    assert!(!findings.contains("severe"), "{findings}");
}
