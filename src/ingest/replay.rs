//! Replay: a dataset back into a course-format event stream, for demos,
//! tests and benchmarks.
//!
//! Each interaction becomes stream lines, sorted by time:
//! - a watch event is one watch line;
//! - a rating is a rate line at its time; when the dataset has no watch
//!   events for that user and movie (an import has only ratings), it is
//!   preceded by synthetic watch lines, one per minute, ending one minute
//!   before the rating: `minutes_for` gives a count that grows with the
//!   rating (people who liked a film watched more of it), jittered per
//!   user and movie, and capped at [`ReplayOptions::watch_minutes`];
//! - a recommendation request is a recommendation line from host
//!   [`REPLAY_HOST`] (the dataset does not keep host or error text: a
//!   failed request gets [`REPLAY_ERROR`]).
//!
//! Times are the dataset's own, so a replay is reproducible; `--rate`
//! paces production in wall-clock time without rewriting them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::{IngestError, Result, io};
use crate::dataset::{Dataset, EventKind};
use crate::stream::{Event, is_valid_movie_id};

pub(crate) const REPLAY_HOST: &str = "recsys";
pub(crate) const REPLAY_PORT: u16 = 8082;
pub(crate) const REPLAY_ERROR: &str = "request failed";
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOptions {
    /// Most synthetic watch minutes before one rating.
    pub watch_minutes: u32,
    /// Lines per second when producing; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this many lines.
    pub limit: Option<u64>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            watch_minutes: 10,
            rate: None,
            limit: None,
        }
    }
}

/// The stream lines of a dataset.
#[derive(Debug, Default)]
pub struct Lines {
    /// (user, line), sorted by time; the user is the Kafka key.
    pub lines: Vec<(u64, String)>,
    /// Rows whose movie ids are not valid stream ids (they would not parse
    /// back): left out.
    pub skipped: u64,
}

/// Synthetic minutes watched before a rating: about `cap * rating / 5`,
/// +-1 by a hash of user and movie, within 1..=cap.
pub(crate) fn minutes_for(user: u64, movie: &str, rating: u32, cap: u32) -> u32 {
    let cap = cap.max(1);
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.to_le_bytes().iter().chain(movie.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let base = (u64::from(cap) * u64::from(rating.min(5))).div_ceil(5) as i64;
    let jitter = (h % 3) as i64 - 1;
    (base + jitter).clamp(1, i64::from(cap)) as u32
}

/// Turn `d` into stream lines (see the module docs).
pub fn lines(d: &Dataset, opts: &ReplayOptions) -> Lines {
    let watched: HashSet<(u64, &str)> = d
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Watch)
        .map(|e| (e.user, e.movie.as_str()))
        .collect();
    let mut out = Lines::default();
    let mut evs: Vec<Event<'_>> = Vec::with_capacity(d.events.len() * 2 + d.requests.len());
    for e in &d.events {
        if !is_valid_movie_id(&e.movie) {
            out.skipped += 1;
            continue;
        }
        let movie = Cow::Borrowed(e.movie.as_str());
        match e.kind {
            EventKind::Watch => evs.push(Event::Watch {
                time_ms: e.time_ms,
                user: e.user,
                movie,
                minute: e.value,
            }),
            EventKind::Rate => {
                let Ok(rating) = u8::try_from(e.value) else {
                    out.skipped += 1;
                    continue;
                };
                if !(1..=5).contains(&rating) {
                    out.skipped += 1;
                    continue;
                }
                if !watched.contains(&(e.user, e.movie.as_str())) {
                    let m = minutes_for(e.user, &e.movie, e.value, opts.watch_minutes);
                    for i in 0..m {
                        evs.push(Event::Watch {
                            time_ms: e.time_ms.saturating_sub(i64::from(m - i) * 60_000),
                            user: e.user,
                            movie: movie.clone(),
                            minute: i,
                        });
                    }
                }
                evs.push(Event::Rate {
                    time_ms: e.time_ms,
                    user: e.user,
                    movie,
                    rating,
                });
            }
        }
    }
    for r in &d.requests {
        let ok = r.status == 200;
        if ok && !r.items.iter().all(|i| is_valid_movie_id(i)) {
            out.skipped += 1;
            continue;
        }
        evs.push(Event::Recommendation {
            time_ms: r.time_ms,
            user: r.user,
            host: Cow::Borrowed(REPLAY_HOST),
            port: REPLAY_PORT,
            status: r.status,
            items: if ok {
                r.items.iter().map(|i| Cow::Borrowed(i.as_str())).collect()
            } else {
                Vec::new()
            },
            error: (!ok).then_some(Cow::Borrowed(REPLAY_ERROR)),
            latency_ms: r.latency_ms,
        });
    }
    evs.sort_by_key(Event::time_ms);
    let limit = opts.limit.map_or(usize::MAX, |l| l as usize);
    out.lines = evs
        .iter()
        .take(limit)
        .map(|e| (e.user(), e.to_line()))
        .collect();
    out
}

/// Write the lines to a file, one per line.
pub(crate) fn write_file(lines: &[(u64, String)], path: &Path) -> Result<u64> {
    let f = std::fs::File::create(path).map_err(io("create", path))?;
    let mut w = BufWriter::new(f);
    for (_, l) in lines {
        w.write_all(l.as_bytes()).map_err(io("write", path))?;
        w.write_all(b"\n").map_err(io("write", path))?;
    }
    w.flush().map_err(io("write", path))?;
    Ok(lines.len() as u64)
}

/// Counts deliveries the brokers refused.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = self.last_error.lock() {
                *l = Some(e.to_string());
            }
        }
    }
}

/// A Kafka producer of stream lines, keyed by user (a user's lines stay in
/// order on one partition): what `replay` and `simulate` write through.
pub struct StreamProducer {
    producer: BaseProducer<Deliveries>,
    brokers: String,
    topic: String,
    sent: u64,
    key: String,
}

impl StreamProducer {
    pub fn connect(brokers: &str, topic: &str, client_id: &str) -> Result<StreamProducer> {
        let producer: BaseProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", client_id)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(Deliveries::default())
            .map_err(|e| kafka_error("create producer for", brokers, topic, e))?;
        Ok(StreamProducer {
            producer,
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            sent: 0,
            key: String::new(),
        })
    }

    /// Queue one line (waits while librdkafka's local queue is full).
    pub fn send(&mut self, user: u64, line: &str) -> Result<()> {
        use std::fmt::Write as _;
        self.key.clear();
        let _ = write!(self.key, "{user}");
        let mut record = BaseRecord::to(&self.topic)
            .key(self.key.as_str())
            .payload(line);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Local queue full: serve delivery reports, then retry.
                    self.producer.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => {
                    return Err(kafka_error("produce to", &self.brokers, &self.topic, e));
                }
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Wait for every queued line; any failed delivery is an error.
    /// Returns the number delivered.
    pub fn finish(&mut self) -> Result<u64> {
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(|e| kafka_error("flush", &self.brokers, &self.topic, e))?;
        let ctx = self.producer.context();
        let failed = ctx.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let last = ctx
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            return Err(IngestError::Invalid(format!(
                "{failed} of {} messages were not delivered to {} at {} (last error: {last})",
                self.sent, self.topic, self.brokers
            )));
        }
        Ok(self.sent)
    }
}

fn kafka_error(op: &'static str, brokers: &str, topic: &str, source: KafkaError) -> IngestError {
    IngestError::Kafka {
        op,
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        source: Box::new(source),
    }
}

/// Produce `lines` to `topic`, keyed by user, at `rate` lines per second
/// if given. Returns the number delivered; any failed delivery is an error.
pub fn produce(
    brokers: &str,
    topic: &str,
    lines: &[(u64, String)],
    rate: Option<f64>,
) -> Result<u64> {
    let mut p = StreamProducer::connect(brokers, topic, "recsys-replay")?;
    let t0 = Instant::now();
    for (i, (user, line)) in lines.iter().enumerate() {
        if let Some(r) = rate.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(i as f64 / r);
            let now = t0.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        p.send(*user, line)?;
    }
    p.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DataEvent, RequestEvent};
    use crate::stream::parse_line;

    fn ev(t: i64, user: u64, movie: &str, kind: EventKind, value: u32) -> DataEvent {
        DataEvent {
            time_ms: t,
            user,
            movie: movie.into(),
            kind,
            value,
        }
    }

    #[test]
    fn minutes_grow_with_rating_and_stay_capped() {
        for cap in [1, 5, 10, 90] {
            for r in 1..=5 {
                let m = minutes_for(42, "toy+story+1995", r, cap);
                assert!((1..=cap).contains(&m), "cap {cap} rating {r}: {m}");
            }
        }
        let total = |r| {
            (0..200)
                .map(|u| minutes_for(u, "m+2000", r, 10))
                .sum::<u32>()
        };
        assert!(total(5) > total(3) && total(3) > total(1));
        assert_eq!(minutes_for(7, "a", 4, 10), minutes_for(7, "a", 4, 10));
        assert_eq!(minutes_for(7, "a", 4, 0), 1);
    }

    #[test]
    fn ratings_get_watch_minutes_unless_already_watched() {
        let d = Dataset {
            events: vec![
                ev(1_000_000, 1, "toy+story+1995", EventKind::Rate, 5),
                ev(2_000_000, 2, "heat+1995", EventKind::Watch, 7),
                ev(2_100_000, 2, "heat+1995", EventKind::Rate, 3),
                ev(3_000_000, 3, "bad id", EventKind::Rate, 3),
            ],
            requests: vec![
                RequestEvent {
                    time_ms: 500_000,
                    user: 1,
                    status: 200,
                    latency_ms: 12,
                    items: vec!["heat+1995".into(), "toy+story+1995".into()],
                },
                RequestEvent {
                    time_ms: 600_000,
                    user: 9,
                    status: 503,
                    latency_ms: 1,
                    items: vec![],
                },
            ],
            ..Dataset::default()
        };
        let out = lines(&d, &ReplayOptions::default());
        assert_eq!(out.skipped, 1);
        let m = minutes_for(1, "toy+story+1995", 5, 10) as usize;
        // m watch + 1 rate for user 1, 1 watch + 1 rate for user 2, 2 requests.
        assert_eq!(out.lines.len(), m + 1 + 2 + 2);
        let parsed: Vec<Event<'_>> = out
            .lines
            .iter()
            .map(|(_, l)| parse_line(l).expect("replayed lines parse"))
            .collect();
        assert!(parsed.windows(2).all(|w| w[0].time_ms() <= w[1].time_ms()));
        let watches_1 = parsed
            .iter()
            .filter(|e| matches!(e, Event::Watch { user: 1, .. }))
            .count();
        assert_eq!(watches_1, m);
        assert!(matches!(
            &parsed[parsed.len() - 1],
            Event::Rate {
                user: 2,
                rating: 3,
                ..
            }
        ));
        assert!(parsed.iter().any(|e| matches!(
            e,
            Event::Recommendation {
                status: 503,
                error: Some(_),
                ..
            }
        )));
        let limited = lines(
            &d,
            &ReplayOptions {
                limit: Some(3),
                ..ReplayOptions::default()
            },
        );
        assert_eq!(limited.lines.len(), 3);
    }
}
