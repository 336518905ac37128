//! End-to-end ingest throughput: Kafka (librdkafka's mock cluster) to a
//! durable, registered dataset.
//!
//! Produces about a million realistic stream lines (mostly watch lines,
//! some ratings and recommendation requests, a few malformed) into a
//! 32-partition topic, then times `recsys::ingest::run` on a fresh project:
//! consuming every message, parsing, quality checks, writing the dataset
//! directory, storing it (fsync'd) and registering it in lineage. Prints
//! messages/second (target: at least 100,000).
//! Run with `cargo bench --bench ingest` (`RECSYS_BENCH_MESSAGES=n` to
//! change the count).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use recsys::ingest::{self, IngestOptions, Stop};
use recsys::progress::NoProgress;
use recsys::workspace::{Settings, Workspace};

const TOPIC: &str = "movielog1";
/// The mock cluster keeps at most 5 MiB of messages per partition and
/// silently drops older ones: 32 partitions hold a million ~90-byte
/// messages with room to spare.
const PARTITIONS: i32 = 32;

#[path = "common/gen.rs"]
mod generator;
use generator::{Rng, TITLES};

/// Line `i`: 85% watch, 10% rate, 4.9% recommendation, 0.1% malformed.
fn line(i: u64, rng: &mut Rng) -> String {
    let (min, sec) = (i / 60_000 % 60, i / 1000 % 60);
    let ms = i % 1000;
    let time = format!(
        "2024-03-01T{:02}:{min:02}:{sec:02}.{ms:03}",
        10 + i / 3_600_000
    );
    let user = rng.below(100_000);
    let movie = TITLES[rng.below(TITLES.len() as u64) as usize];
    match rng.below(1000) {
        0 => format!("{time},{user},GET /rate/{movie}=11"),
        1..=100 => format!("{time},{user},GET /rate/{movie}={}", 1 + rng.below(5)),
        101..=149 => format!(
            "{time},{user},recommendation request 17645-team05.isri.cmu.edu:8082, status 200, result: {}, {}, {}, 120 ms",
            TITLES[0], TITLES[1], TITLES[2]
        ),
        _ => format!("{time},{user},GET /data/m/{movie}/{}.mpg", rng.below(120)),
    }
}

fn main() {
    let n: u64 = std::env::var("RECSYS_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create topic");
    let brokers = cluster.bootstrap_servers();

    let t = Instant::now();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..n {
        let payload = line(i, &mut rng);
        let key = (i % 997).to_string();
        let mut rec = BaseRecord::to(TOPIC).key(&key).payload(&payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    producer.poll(Duration::from_millis(5));
                    rec = r;
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let produce_s = t.elapsed().as_secs_f64();
    println!(
        "produced {n} messages into {PARTITIONS} partitions in {produce_s:.2}s ({:.0}/s)",
        n as f64 / produce_s
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let (ws, _) = Workspace::init(tmp.path(), Settings::default()).expect("init");
    let opts = IngestOptions::new(
        &brokers,
        TOPIC,
        Stop {
            max_messages: Some(n),
            // A safety net: never hang if the cluster lost messages.
            duration: Some(Duration::from_secs(300)),
        },
    );
    let t = Instant::now();
    let r = ingest::run(&ws, &opts, &NoProgress).expect("ingest");
    let s = t.elapsed().as_secs_f64();
    assert_eq!(r.messages, n, "the mock cluster dropped messages");
    println!(
        "ingest: {} messages -> {} ({} watch, {} rate, {} recommendation, {} quarantined) in {s:.2}s",
        r.messages,
        r.dataset,
        r.events.watch,
        r.events.rate,
        r.events.recommendation,
        r.quarantined
    );
    println!(
        "ingest throughput: {:.0} messages/s end to end (target >= 100000)",
        n as f64 / s
    );
}
