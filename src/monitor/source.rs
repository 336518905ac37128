//! The edges the monitor reads: Kafka topics (the course stream, the
//! request log's Kafka copy) and a project's local request-log segments.
//!
//! Kafka partitions are `assign()`ed (no consumer group rebalancing) and
//! positioned at the offsets stored in the monitor's database, so the
//! database, not Kafka, says what was consumed. Segments are followed by
//! line: an open segment is re-read from the last line consumed, a closed
//! one is read from the store object `lineage.db` names.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::sink::Position;
use super::{Monitor, MonitorError};
use crate::segment::parse_segment;

/// Which kind of messages a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Stream,
    Requests,
}

/// One assigned topic.
pub struct KafkaInput {
    consumer: BaseConsumer,
    brokers: String,
    topic: String,
    source: String,
    feed: Feed,
    partitions: Vec<i32>,
    at_end: HashSet<i32>,
}

impl KafkaInput {
    /// Assign every partition of `topic`, each at its stored offset (the
    /// beginning when none is stored).
    pub fn open(
        brokers: &str,
        topic: &str,
        feed: Feed,
        monitor: &Monitor,
    ) -> Result<KafkaInput, MonitorError> {
        let err = |e: KafkaError| MonitorError::Kafka {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            source: Box::new(e),
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "recsys-monitor")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("client.id", "recsys-monitor")
            .create()
            .map_err(err)?;
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(err)?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(MonitorError::Runtime(format!(
                "Kafka topic {topic} at {brokers} has no partitions (does it exist?)"
            )));
        }
        let source = match feed {
            Feed::Stream => format!("stream:{topic}"),
            Feed::Requests => format!("requests:{topic}"),
        };
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let at = match monitor.resume_offset(&source, p) {
                Some(o) => Offset::Offset(o),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, p, at).map_err(err)?;
        }
        consumer.assign(&tpl).map_err(err)?;
        Ok(KafkaInput {
            consumer,
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            source,
            feed,
            partitions,
            at_end: HashSet::new(),
        })
    }

    /// Every assigned partition has reported its end since its last message.
    pub(crate) fn caught_up(&self) -> bool {
        self.at_end.len() == self.partitions.len()
    }

    /// Read up to `max` messages into the monitor, waiting at most
    /// `timeout` for the first. Returns how many were read.
    pub fn poll(
        &mut self,
        monitor: &mut Monitor,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, MonitorError> {
        let mut n = 0;
        let mut wait = timeout;
        while n < max {
            let Some(m) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            match m {
                Ok(m) => {
                    self.at_end.remove(&m.partition());
                    let pos = Position {
                        source: self.source.clone(),
                        part: m.partition(),
                        off: m.offset(),
                    };
                    let bytes = m.payload().unwrap_or_default();
                    match self.feed {
                        Feed::Stream => monitor.stream_message(pos, bytes),
                        Feed::Requests => monitor.request_message(pos, bytes),
                    }
                    n += 1;
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    self.at_end.insert(p);
                }
                Err(e) => {
                    return Err(MonitorError::Kafka {
                        brokers: self.brokers.clone(),
                        topic: self.topic.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
        Ok(n)
    }
}

struct Followed {
    /// Lines consumed (the header is line 0).
    lines: i64,
    /// Byte offset just after the last consumed line.
    bytes: u64,
    /// The header line and every served-by definition seen, each ending in
    /// `\n`: what a later line needs to be parsed on its own.
    prefix: Vec<u8>,
    done: bool,
}

/// A project's request log, followed segment by segment.
pub struct SegmentInput {
    root: PathBuf,
    segs: HashMap<String, Followed>,
}

fn open_name(p: &Path) -> Option<String> {
    let f = p.file_name()?.to_str()?;
    Some(f.strip_prefix("open-")?.strip_suffix(".jsonl")?.to_string())
}

impl SegmentInput {
    /// Follow the request log of the project at `root`.
    pub fn open(root: &Path, monitor: &Monitor) -> SegmentInput {
        let mut segs = HashMap::new();
        for (source, _, next) in monitor.offsets_with_prefix("segment:") {
            if let Some(name) = source.strip_prefix("segment:") {
                segs.insert(
                    name.to_string(),
                    Followed {
                        lines: next,
                        bytes: 0,
                        prefix: Vec::new(),
                        done: false,
                    },
                );
            }
        }
        // Byte positions are found again on the first read.
        for f in segs.values_mut() {
            f.bytes = u64::MAX;
        }
        SegmentInput {
            root: root.to_path_buf(),
            segs,
        }
    }

    /// The segments there are now, oldest first: (name, path, closed).
    fn list(&self) -> Result<Vec<(String, PathBuf, bool)>, MonitorError> {
        let mut out = Vec::new();
        let db_path = self.root.join(crate::workspace::LINEAGE_DB);
        let mut closed = HashSet::new();
        if db_path.exists() {
            let db = crate::lineage::LineageDb::open(&db_path)?;
            for s in db.segments()? {
                if let Some(d) = s
                    .digest
                    .as_deref()
                    .and_then(|d| d.parse::<crate::store::Digest>().ok())
                {
                    let hex = d.hex();
                    let path = self
                        .root
                        .join(crate::workspace::STORE_DIR)
                        .join(&hex[..2])
                        .join(&hex[2..]);
                    closed.insert(s.name.clone());
                    out.push((s.opened, s.name, path, true));
                }
            }
        }
        let dir = self.root.join(crate::workspace::LOG_DIR);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if let Some(name) = open_name(&p)
                    && !closed.contains(&name)
                {
                    out.push((i64::MAX, name, p, false));
                }
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, n, p, c)| (n, p, c)).collect())
    }

    /// Read every new whole line of every segment into the monitor.
    pub fn poll(&mut self, monitor: &mut Monitor) -> Result<usize, MonitorError> {
        let mut n = 0;
        for (name, path, closed) in self.list()? {
            let f = self.segs.entry(name.clone()).or_insert(Followed {
                lines: 0,
                bytes: 0,
                prefix: Vec::new(),
                done: false,
            });
            if f.done {
                continue;
            }
            n += read_new(&name, &path, f, monitor)?;
            if closed {
                f.done = true;
            }
        }
        Ok(n)
    }
}

fn read_new(
    name: &str,
    path: &Path,
    f: &mut Followed,
    monitor: &mut Monitor,
) -> Result<usize, MonitorError> {
    let io = |e| {
        MonitorError::Io(crate::fs_error::FsError {
            op: "read",
            path: path.to_path_buf(),
            source: e,
        })
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        // Closed and renamed into the store between listing and reading.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    // After a restart: find the byte position of the stored line count and
    // rebuild the prefix from the lines before it.
    let skip = if f.bytes == u64::MAX {
        f.bytes = 0;
        f.lines
    } else {
        0
    };
    let mut rebuilding = skip > 0;
    file.seek(SeekFrom::Start(f.bytes)).map_err(io)?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(io)?;
    let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok(0);
    };
    let whole = &buf[..=last_nl];
    let source = format!("segment:{name}");
    let mut n = 0;
    let mut line_no = if rebuilding { 0 } else { f.lines };
    for line in whole[..last_nl].split(|b| *b == b'\n') {
        f.bytes += line.len() as u64 + 1;
        let pos = Position {
            source: source.clone(),
            part: 0,
            off: line_no,
        };
        let is_prefix = line_no == 0 || line.starts_with(b"{\"recsys_served\"");
        if is_prefix {
            f.prefix.extend_from_slice(line);
            f.prefix.push(b'\n');
        }
        line_no += 1;
        if rebuilding {
            if line_no >= skip {
                rebuilding = false;
            }
            continue;
        }
        if is_prefix || line.is_empty() {
            monitor.skip(pos);
            continue;
        }
        if line.starts_with(b"{\"recsys_log_dropped\"") {
            monitor.request_message(pos, line);
            continue;
        }
        let mut one = f.prefix.clone();
        one.extend_from_slice(line);
        one.push(b'\n');
        match parse_segment(name, &one) {
            Ok(mut p) if p.records.len() == 1 => {
                if let Some(r) = p.records.pop() {
                    monitor.request_record(pos, r);
                    n += 1;
                }
            }
            Ok(_) => monitor.request_message(pos, line),
            Err(e) => {
                // The header itself is bad: nothing in this segment can be read.
                return Err(MonitorError::Segment(e));
            }
        }
    }
    f.lines = line_no;
    Ok(n)
}
