//! Monitoring: the feedback join between served answers and what users
//! did next, and the database it writes to.
//!
//! - [`join`]: the pure, synchronous state machine (answers and stream
//!   events in, closed windows and counters out; event time, a watermark,
//!   state evicted as windows close).
//! - [`sink`]: what a flush writes ([`sink::Batch`]) and the [`Sink`] trait;
//!   [`sqlite`] (embedded default, `monitor.db`) and [`postgres`]
//!   (`tokio-postgres`, binary `COPY`, day partitions) implement it.
//! - [`Monitor`]: the loop's core — messages in (with their source
//!   positions), batches out, restart from the stored checkpoint.
//! - [`source`]: the edges that read Kafka and request-log segments.
//! - [`report`]: the figures `recsys monitor report` and the dashboard show.
//! - [`http`]: the dashboard page and the alert webhooks.
//!
//! Exactly once: a batch's rows, the offsets they were read up to and the
//! join's checkpoint are written in one transaction. On start the
//! checkpoint is loaded, the stored inputs that can still matter are
//! replayed into a recovering join (outputs already stored are not
//! emitted again), and reading resumes from the stored offsets.
//!
//! The core prints nothing and reads no environment.

pub mod erase;
pub mod http;
pub mod join;
pub mod postgres;
pub mod report;
pub mod sink;
pub mod source;
pub mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;

pub use join::{Answer, Counters, Join, JoinConfig, Marks, Outcome, Output, Source, StreamMatch};
pub use sink::{Batch, Checkpoint, Sink};

use crate::segment::RequestRecord;
use crate::stream::Event;
use sink::{AnswerRow, BadRow, EventRow, Position, Replayed};

/// The SQLite file the monitor uses in a project when no `--db` is given.
pub(crate) const DEFAULT_DB: &str = "monitor.db";

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitor database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("monitor database {url}: {source}")]
    Postgres {
        url: String,
        #[source]
        source: Box<tokio_postgres::Error>,
    },
    #[error("monitor database {sink}: the stored checkpoint is unreadable: {reason}")]
    BadCheckpoint { sink: String, reason: String },
    #[error("monitor: {0}")]
    Runtime(String),
    #[error("Kafka topic {topic} at {brokers}: {source}")]
    Kafka {
        brokers: String,
        topic: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    #[error(transparent)]
    Lineage(#[from] crate::lineage::LineageError),
    #[error(transparent)]
    Segment(#[from] crate::segment::SegmentError),
    #[error("monitor http {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A UUID as text (hyphenated, lower case).
pub(crate) fn uuid_text(id: u128) -> String {
    uuid::Uuid::from_u128(id).hyphenated().to_string()
}

/// The (rank, movie) pairs of an answer the join tracks: the first
/// [`join::MAX_ITEMS`] items, a repeated item at its first rank only.
pub(crate) fn sink_items(items: &[String]) -> Vec<(i16, &str)> {
    let mut out: Vec<(i16, &str)> = Vec::new();
    for item in items.iter().take(join::MAX_ITEMS) {
        if out.iter().all(|(_, m)| *m != item) {
            out.push((out.len() as i16, item));
        }
    }
    out
}

/// What [`Monitor::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    pub rows: usize,
    /// The batch had already been committed (a retry after a lost reply).
    pub already: bool,
}

/// The monitor's core: inputs with their positions in, batches out.
pub struct Monitor {
    join: Join,
    sink: Box<dyn Sink>,
    /// Inputs and outputs since the last batch was built.
    next: Batch,
    /// A built batch not yet committed (retried as is).
    pending: Option<Batch>,
    committed: Checkpoint,
    next_seq: i64,
    bad: u64,
    offsets: HashMap<(String, i32), i64>,
    dirty: HashMap<(String, i32), i64>,
}

fn answer_of(a: &AnswerRow) -> Option<Answer> {
    Some(Answer {
        id: uuid::Uuid::try_parse(&a.id).ok()?.as_u128(),
        time_ms: a.time_ms,
        user: u64::try_from(a.user).ok()?,
        items: a.items.clone(),
        model: a.model.clone(),
        dataset: a.dataset.clone(),
        arm: a.arm.clone(),
        fallback: a.status != "ok",
    })
}

fn cut(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]);
    s.into_owned()
}

impl Monitor {
    /// Open on a sink: load its checkpoint and rebuild the join from the
    /// stored inputs.
    pub fn open(mut sink: Box<dyn Sink>, cfg: JoinConfig) -> Result<Monitor, MonitorError> {
        let (cp, offsets) = sink.load()?;
        let join = if cp.batch_no == 0 {
            Join::new(cfg)
        } else {
            let mut j = Join::recovering(cfg);
            let from = j.replay_from(&cp.marks);
            sink.replay(from, &mut |r| match r {
                Replayed::Answer(a) => {
                    if let Some(a) = answer_of(&a) {
                        j.answer(&a);
                    }
                }
                Replayed::Event(e) => feed_event(&mut j, &e),
            })?;
            j.restore(cp.marks, cp.counters);
            j
        };
        Ok(Monitor {
            join,
            sink,
            next: Batch::default(),
            pending: None,
            committed: cp,
            next_seq: cp.next_seq,
            bad: cp.bad,
            offsets: offsets.into_iter().map(|(s, p, o)| ((s, p), o)).collect(),
            dirty: HashMap::new(),
        })
    }

    pub fn describe(&self) -> String {
        self.sink.describe()
    }

    /// Where to resume reading `source`'s partition `part` (the next
    /// offset), if anything was ever committed from it.
    pub(crate) fn resume_offset(&self, source: &str, part: i32) -> Option<i64> {
        self.offsets.get(&(source.to_string(), part)).copied()
    }

    /// Every stored position of sources starting with `prefix`.
    pub(crate) fn offsets_with_prefix(&self, prefix: &str) -> Vec<(String, i32, i64)> {
        let mut v: Vec<_> = self
            .offsets
            .iter()
            .filter(|((s, _), _)| s.starts_with(prefix))
            .map(|((s, p), o)| (s.clone(), *p, *o))
            .collect();
        v.sort();
        v
    }

    pub fn join(&self) -> &Join {
        &self.join
    }

    pub fn counters(&self) -> Counters {
        self.join.counters()
    }

    /// Messages rejected so far (malformed lines, bad request records).
    pub fn bad(&self) -> u64 {
        self.bad
    }

    /// Rows waiting for the next flush.
    pub(crate) fn buffered(&self) -> usize {
        self.next.rows() + self.pending.as_ref().map_or(0, Batch::rows)
    }

    /// A batch failed to commit and is waiting to be retried.
    pub fn stuck(&self) -> bool {
        self.pending.is_some()
    }

    fn consumed(&mut self, pos: &Position) {
        let key = (pos.source.clone(), pos.part);
        self.offsets.insert(key.clone(), pos.off + 1);
        self.dirty.insert(key, pos.off + 1);
    }

    fn seq(&mut self) -> i64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn reject(&mut self, pos: Position, reason: String, bytes: &[u8]) {
        self.bad += 1;
        let at = self.join.marks().max_time[0].max(self.join.marks().max_time[1]);
        self.next.roll_bad(at.max(0));
        self.consumed(&pos);
        self.next.bad.push(BadRow {
            pos,
            reason,
            text: cut(bytes),
        });
    }

    /// Mark a position read without an input (e.g. a segment header line).
    pub fn skip(&mut self, pos: Position) {
        self.consumed(&pos);
    }

    /// One message of the course stream.
    pub fn stream_message(&mut self, pos: Position, bytes: &[u8]) {
        let ev = match crate::stream::parse_bytes(bytes) {
            Ok(e) => e,
            Err(e) => return self.reject(pos, format!("stream line: {e}"), bytes),
        };
        let Ok(user) = i64::try_from(ev.user()) else {
            return self.reject(pos, "stream line: user id beyond 2^63".into(), bytes);
        };
        let mut row = EventRow {
            seq: 0,
            time_ms: ev.time_ms(),
            user,
            kind: "watch",
            movie: None,
            value: 0,
            latency_ms: None,
            items: None,
            late: false,
            pos: pos.clone(),
        };
        match &ev {
            Event::Watch { movie, minute, .. } => {
                row.movie = Some(movie.to_string());
                row.value = i32::try_from(*minute).unwrap_or(i32::MAX);
            }
            Event::Rate { movie, rating, .. } => {
                row.kind = "rate";
                row.movie = Some(movie.to_string());
                row.value = i32::from(*rating);
            }
            Event::Recommendation {
                status,
                items,
                latency_ms,
                ..
            } => {
                row.kind = "rec";
                row.value = i32::from(*status);
                row.latency_ms = Some(i32::try_from(*latency_ms).unwrap_or(i32::MAX));
                row.items = Some(items.join(","));
            }
        }
        row.late = self.join.is_late(row.time_ms);
        feed_event(&mut self.join, &row);
        row.seq = self.seq();
        self.next.roll_event(&row);
        self.next.events.push(row);
        self.consumed(&pos);
    }

    /// One message of the request log's Kafka copy (a JSON request record).
    pub fn request_message(&mut self, pos: Position, bytes: &[u8]) {
        if bytes.starts_with(b"{\"recsys_log_dropped\"") {
            let n = serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| v["recsys_log_dropped"].as_u64())
                .unwrap_or(0);
            return self.reject(
                pos,
                format!(
                    "the server dropped {n} request-log event(s): their answers are not in the log"
                ),
                bytes,
            );
        }
        match serde_json::from_slice::<RequestRecord>(bytes) {
            Ok(r) => self.request_record(pos, r),
            Err(e) => self.reject(pos, format!("request record: {e}"), bytes),
        }
    }

    /// One answer from the request log.
    pub fn request_record(&mut self, pos: Position, r: RequestRecord) {
        let mut row = AnswerRow {
            seq: 0,
            id: r.id,
            time_ms: r.time,
            user: r.user,
            model: r.served.model,
            dataset: r.served.dataset,
            arm: r.route,
            status: r.status,
            latency_us: r.latency_us,
            items: r.items,
            late: false,
            pos: pos.clone(),
        };
        let Some(a) = answer_of(&row) else {
            let why = if row.user < 0 {
                format!("request {}: negative user id {}", row.id, row.user)
            } else {
                format!("request id {:?} is not a UUID", row.id)
            };
            let text = serde_json::json!({"id": row.id, "user": row.user, "time": row.time_ms});
            return self.reject(pos, why, text.to_string().as_bytes());
        };
        row.late = self.join.answer(&a).late;
        row.seq = self.seq();
        self.next.roll_answer(&row);
        self.next.answers.push(row);
        self.consumed(&pos);
    }

    /// See [`Join::set_idle`].
    pub(crate) fn set_idle(&mut self, source: Source, idle: bool) {
        self.join.set_idle(source, idle);
    }

    fn build(&mut self) -> Batch {
        let mut b = std::mem::take(&mut self.next);
        for o in self.join.drain() {
            match o {
                Output::Closed(c) => {
                    b.roll_outcome(&c);
                    b.outcomes.push(c);
                }
                Output::Matched(m) => {
                    b.roll_match(&m);
                    b.matches.push(m);
                }
            }
        }
        b.provisional = self.join.provisional();
        let mut offsets: Vec<(String, i32, i64)> =
            self.dirty.drain().map(|((s, p), o)| (s, p, o)).collect();
        offsets.sort();
        b.offsets = offsets;
        b.checkpoint = Checkpoint {
            batch_no: self.committed.batch_no + 1,
            next_seq: self.next_seq,
            marks: self.join.marks(),
            counters: self.join.counters(),
            bad: self.bad,
        };
        b
    }

    /// Write what was read since the last flush, in one transaction. On an
    /// error the batch is kept and the next call retries it unchanged
    /// (inputs read meanwhile go into the batch after it).
    pub fn flush(&mut self) -> Result<Flushed, MonitorError> {
        let batch = match self.pending.take() {
            Some(b) => b,
            None => {
                let b = self.build();
                if b.is_empty() && b.checkpoint.marks == self.committed.marks {
                    return Ok(Flushed::default());
                }
                b
            }
        };
        match self.sink.write(&batch) {
            Ok(written) => {
                self.committed = batch.checkpoint;
                Ok(Flushed {
                    rows: batch.rows(),
                    already: !written,
                })
            }
            Err(e) => {
                self.pending = Some(batch);
                Err(e)
            }
        }
    }

    /// Run a read query on the sink (reports).
    pub fn rows(&mut self, sql: &str, args: &[i64]) -> Result<Vec<Vec<sink::Value>>, MonitorError> {
        self.sink.rows(sql, args)
    }

    pub fn sink_mut(&mut self) -> &mut dyn Sink {
        self.sink.as_mut()
    }
}

fn feed_event(j: &mut Join, e: &EventRow) {
    let user = e.user as u64;
    match e.kind {
        "watch" => {
            j.watch(e.time_ms, user, e.movie.as_deref().unwrap_or(""));
        }
        "rate" => {
            j.rate(e.time_ms);
        }
        _ => {
            let items: Vec<&str> = match e.items.as_deref() {
                Some("") | None => Vec::new(),
                Some(s) => s.split(',').collect(),
            };
            let status = u16::try_from(e.value).unwrap_or(0);
            let latency = u32::try_from(e.latency_ms.unwrap_or(0)).unwrap_or(0);
            j.stream_request(e.time_ms, user, status, latency, &items);
        }
    }
}
