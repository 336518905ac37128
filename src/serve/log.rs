//! The request log: every answer becomes one JSON line in a durable local
//! segment file and one row in lineage.db, written by one thread in
//! batches, off the request path.
//!
//! Handlers hand events to a bounded queue with `try_send`: a full queue
//! drops the event (counted in `/metrics`, warned about, and noted in the
//! log itself as a `{"recsys_log_dropped":n}` line) and never waits.
//!
//! Durability: the writer takes what is queued (waiting at most
//! [`LogOptions::batch_wait`] after the first event), appends it to the
//! open segment and `fdatasync`s. Written events are indexed in lineage.db
//! in one transaction per [`LogOptions::index_wait`] (at most 1 s), and at
//! once on flush, rotation and shutdown. A crash loses at most the batch in
//! flight; recovery re-indexes the whole segment, so events written but
//! not yet indexed are not lost. Segment files are named
//! `open-<name>.jsonl` while open; when closed (size, age, shutdown) their
//! bytes become a store object — which starts with
//! `{"recsys_log_segment":` so `gc` keeps it — and the file is removed.
//! At start, segments left open by a crash are cut after their last whole
//! line, re-indexed and closed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::deploy::Served;
use super::kafka::{KafkaLogError, KafkaLogOptions, KafkaSink};
use super::metrics::Metrics;
use super::warn::{WarnGate, now_ms};
use crate::lineage::requests::{RequestRow, SegmentRef, index_segment};
use crate::lineage::{LineageDb, LineageError};
use crate::segment::{
    self, SEGMENT_FORMAT, SegmentHeader, ServedBy, header_line, parse_segment, write_request_line,
    write_served_line,
};
use crate::store::{Digest, LocalStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    #[error(transparent)]
    Lineage(#[from] LineageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaLogError),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError + use<> {
    let path = path.to_path_buf();
    move |source| LogError::Io(crate::fs_error::FsError { op, path, source })
}

/// Where and how the log is written.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Directory of open segment files.
    pub dir: PathBuf,
    pub lineage_db: PathBuf,
    pub store_root: PathBuf,
    /// Recorded in each segment (which machine served).
    pub host: String,
    /// Events the queue holds before dropping.
    pub queue: usize,
    /// Longest an event waits in the queue before it is written (<= 1 s).
    pub batch_wait: Duration,
    /// Most events per segment write.
    pub batch_max: usize,
    /// Longest a written event waits before it is indexed in lineage.db
    /// (<= 1 s): one transaction for many batches.
    pub index_wait: Duration,
    /// Most events per index transaction.
    pub index_max: usize,
    /// Close a segment after this many bytes...
    pub segment_bytes: u64,
    /// ...or after it has been open this long.
    pub segment_age: Duration,
    /// Also copy every line to this Kafka topic.
    pub kafka: Option<KafkaLogOptions>,
}

impl LogOptions {
    pub fn new(dir: PathBuf, lineage_db: PathBuf, store_root: PathBuf, host: String) -> Self {
        LogOptions {
            dir,
            lineage_db,
            store_root,
            host,
            queue: 65_536,
            batch_wait: Duration::from_millis(100),
            batch_max: 8_192,
            index_wait: Duration::from_secs(1),
            index_max: 65_536,
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(3600),
            kafka: None,
        }
    }
}

/// One answered request, as the handler hands it over.
pub struct LogEvent {
    pub id: uuid::Uuid,
    pub time_ms: i64,
    pub user: u64,
    pub served: Arc<Served>,
    pub config: Arc<str>,
    pub route: Arc<str>,
    pub status: &'static str,
    pub latency_us: u32,
    /// The response body: item ids joined by `,` (ids never hold a comma).
    pub body: Bytes,
}

enum Msg {
    Event(LogEvent),
    /// Write what is queued, then acknowledge.
    Flush(SyncSender<()>),
    /// Write what is queued, close the segment, acknowledge and stop.
    Shutdown(SyncSender<()>),
    /// Define a deployment's models in the open segment, sync, acknowledge.
    Announce(Announce, SyncSender<()>),
}

/// What a deployment about to answer serves: its models and its config.
struct Announce {
    models: Vec<Arc<Served>>,
    config: Arc<str>,
}

/// The sending side, shared by all handlers.
pub struct RequestLog {
    tx: SyncSender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    writer: std::thread::Thread,
    metrics: Arc<Metrics>,
    dropped: Arc<AtomicU64>,
    warned: WarnGate,
}

impl RequestLog {
    /// Recover segments a crash left open, then start the writer thread.
    pub fn start(opts: LogOptions, metrics: Arc<Metrics>) -> Result<RequestLog, LogError> {
        fs::create_dir_all(&opts.dir).map_err(io("create", &opts.dir))?;
        let db = LineageDb::open(&opts.lineage_db)?;
        let store = LocalStore::open(&opts.store_root, "store")?;
        for rec in recover(&opts.dir, &db, &store)? {
            tracing::warn!("{rec}");
        }
        let kafka = match &opts.kafka {
            Some(k) => Some(KafkaSink::connect(k, metrics.clone())?),
            None => None,
        };
        let (tx, rx) = sync_channel(opts.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut w = Writer {
            opts,
            db,
            store,
            metrics: metrics.clone(),
            seg: None,
            dropped: dropped.clone(),
            dropped_noted: 0,
            served_cache: Vec::new(),
            kafka,
        };
        let thread = std::thread::Builder::new()
            .name("recsys-request-log".into())
            .spawn(move || w.run(rx))
            .map_err(io("start thread for", Path::new("request log")))?;
        Ok(RequestLog {
            tx,
            writer: thread.thread().clone(),
            thread: std::sync::Mutex::new(Some(thread)),
            metrics,
            dropped,
            warned: WarnGate::default(),
        })
    }

    /// Queue an event; never blocks. A full queue drops it, counted.
    pub fn log(&self, ev: LogEvent) {
        match self.tx.try_send(Msg::Event(ev)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.log_dropped.inc();
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if self.warned.open() {
                    tracing::warn!(
                        "request log queue full: {n} event(s) dropped so far (see recsys_request_log_dropped_total)"
                    );
                }
            }
        }
    }

    /// Write everything queued so far (blocking; not for request handlers).
    pub fn flush(&self) {
        self.control(Msg::Flush)
    }

    /// Write what a deployment serves (each model with its config, as the
    /// `{"recsys_served":n,...}` lines its answers will refer to) to the
    /// open segment and sync it, before the deployment answers (blocking;
    /// the watcher calls it before the swap). The segment then names the
    /// config and models every request id of the deployment names, so
    /// `gc` keeps them and `push` sends them even when no answer of it was
    /// logged before a crash.
    pub(crate) fn announce(&self, d: &super::deploy::Deployment) {
        let a = Announce {
            models: d.models.clone(),
            config: d.config_hex.clone(),
        };
        self.send_control(|ack| Msg::Announce(a, ack))
    }

    fn control(&self, make: fn(SyncSender<()>) -> Msg) {
        self.send_control(make)
    }

    fn send_control(&self, make: impl FnOnce(SyncSender<()>) -> Msg) {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(make(ack_tx)).is_ok() {
            // The writer may be sleeping out its batch wait.
            self.writer.unpark();
            let _ = ack_rx.recv();
        }
    }

    /// Write what is queued, close the segment into the store and stop the
    /// writer (blocking). Events logged afterwards are dropped, counted.
    pub fn close(&self) {
        let t = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(t) = t {
            self.control(Msg::Shutdown);
            let _ = t.join();
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Gives the core back (`sched_yield`) after every `slice` of continuous
/// work, so a batch never holds a core that request handlers wait for.
/// A yield can cost a few milliseconds of wall time when both cores are
/// busy, so it is rationed by time: yielding every few dozen events starved
/// the writer under load (the queue filled and events were dropped).
struct Pacer {
    since: Instant,
    slice: Duration,
}

impl Pacer {
    fn new(slice: Duration) -> Pacer {
        Pacer {
            since: Instant::now(),
            slice,
        }
    }

    fn tick(&mut self) {
        if self.since.elapsed() >= self.slice {
            std::thread::yield_now();
            self.since = Instant::now();
        }
    }
}

/// Continuous work between two yields of the writer.
const PACE_SLICE: Duration = Duration::from_millis(1);

struct OpenSegment {
    name: String,
    host: String,
    opened: i64,
    started: Instant,
    path: PathBuf,
    file: File,
    bytes: u64,
    /// BLAKE3 of every byte written so far: closing needs no re-read.
    hash: blake3::Hasher,
    /// The number the next `{"recsys_served":n,...}` line defines.
    next_served: u32,
}

impl OpenSegment {
    fn seg_ref(&self) -> SegmentRef<'_> {
        SegmentRef {
            name: &self.name,
            host: &self.host,
            opened: self.opened,
        }
    }
}

struct Writer {
    opts: LogOptions,
    db: LineageDb,
    store: LocalStore,
    metrics: Arc<Metrics>,
    seg: Option<OpenSegment>,
    dropped: Arc<AtomicU64>,
    dropped_noted: u64,
    /// `ServedBy` per (model, config) seen recently, by address, with its
    /// JSON fields pre-rendered (they repeat on every line).
    /// The entries hold the `Arc`s themselves, so an address in the cache
    /// cannot be reused by a later deployment.
    served_cache: Vec<CachedServed>,
    kafka: Option<KafkaSink>,
}

struct CachedServed {
    key: (usize, usize),
    _served: Arc<Served>,
    _config: Arc<str>,
    by: ServedBy,
    /// `by` as JSON object fields, for the log lines.
    fields: String,
    /// Its number in the open segment, once defined there.
    in_segment: Option<u32>,
}

/// Which (model, config) served an event, by address: events of one
/// deployment share both.
fn served_key(served: &Arc<Served>, config: &Arc<str>) -> (usize, usize) {
    (Arc::as_ptr(served) as usize, config.as_ptr() as usize)
}

/// `"model":..,"model_digest":..,...` for a line: the fields of `ServedBy`.
fn served_fields(s: &ServedBy) -> String {
    let v = serde_json::to_value(s).unwrap_or_default();
    let obj = v.to_string();
    // `{...}` without the braces.
    obj.get(1..obj.len().saturating_sub(1))
        .unwrap_or("")
        .to_string()
}

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<LogEvent> = Vec::new();
        // Written to the segment, not yet indexed; and since when.
        let mut pending: Vec<LogEvent> = Vec::new();
        let mut pending_since = Instant::now();
        loop {
            let mut tick = Duration::from_millis(250);
            if !pending.is_empty() {
                tick = tick.min(self.opts.index_wait.saturating_sub(pending_since.elapsed()));
            }
            let mut ack: Option<(SyncSender<()>, bool)> = None;
            let mut closed = false;
            match rx.recv_timeout(tick) {
                Ok(Msg::Event(ev)) => {
                    batch.push(ev);
                    // Gather for `batch_wait`, sleeping rather than waiting
                    // on the channel: a receiver blocked in `recv` is woken
                    // (a futex call in the request handler) by every event.
                    // Control messages unpark this thread.
                    let deadline = Instant::now() + self.opts.batch_wait;
                    while batch.len() < self.opts.batch_max {
                        match rx.try_recv() {
                            Ok(Msg::Event(ev)) => batch.push(ev),
                            Ok(Msg::Flush(a)) => {
                                ack = Some((a, false));
                                break;
                            }
                            Ok(Msg::Shutdown(a)) => {
                                ack = Some((a, true));
                                closed = true;
                                break;
                            }
                            Ok(Msg::Announce(an, a)) => {
                                // Events queued before it are older: first.
                                if self.write(&batch) {
                                    if pending.is_empty() {
                                        pending_since = Instant::now();
                                    }
                                    pending.append(&mut batch);
                                } else {
                                    batch.clear();
                                }
                                self.announce(&an);
                                let _ = a.send(());
                            }
                            Err(TryRecvError::Empty) => {
                                let left = deadline.saturating_duration_since(Instant::now());
                                if left.is_zero() {
                                    break;
                                }
                                std::thread::park_timeout(left);
                            }
                            Err(TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                }
                Ok(Msg::Flush(a)) => ack = Some((a, false)),
                Ok(Msg::Shutdown(a)) => {
                    ack = Some((a, true));
                    closed = true;
                }
                Ok(Msg::Announce(an, a)) => {
                    self.announce(&an);
                    let _ = a.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
            if ack.is_some() || closed {
                // Everything queued before the request counts as before it.
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Event(ev) => batch.push(ev),
                        Msg::Flush(a) | Msg::Shutdown(a) => {
                            let _ = a.send(());
                        }
                        Msg::Announce(an, a) => {
                            self.announce(&an);
                            let _ = a.send(());
                        }
                    }
                }
            }
            if !batch.is_empty() || self.dropped.load(Ordering::Relaxed) != self.dropped_noted {
                if self.write(&batch) {
                    if pending.is_empty() {
                        pending_since = Instant::now();
                    }
                    pending.append(&mut batch);
                } else {
                    batch.clear();
                }
            }
            let rotate = matches!(ack, Some((_, true)))
                || closed
                || self.seg.as_ref().is_some_and(|s| {
                    s.bytes >= self.opts.segment_bytes
                        || s.started.elapsed() >= self.opts.segment_age
                });
            if !pending.is_empty()
                && (ack.is_some()
                    || rotate
                    || pending.len() >= self.opts.index_max
                    || pending_since.elapsed() >= self.opts.index_wait)
            {
                self.index(&pending);
                pending.clear();
            }
            if rotate && let Some(seg) = self.seg.take() {
                match close_segment(seg, &self.db, &self.store) {
                    Ok(d) => tracing::info!("request log segment closed as object {d}"),
                    Err(e) => {
                        self.metrics.log_errors.inc();
                        tracing::error!("closing request log segment: {e}");
                    }
                }
            }
            if let Some(k) = &self.kafka {
                if closed {
                    k.close();
                } else {
                    k.poll();
                }
            }
            if let Some((a, _)) = ack {
                let _ = a.send(());
            }
            if closed {
                return;
            }
        }
    }

    fn served_by(&mut self, ev: &LogEvent) -> usize {
        self.served_index(&ev.served, &ev.config)
    }

    fn served_index(&mut self, served: &Arc<Served>, config: &Arc<str>) -> usize {
        let key = served_key(served, config);
        if let Some(i) = self.served_cache.iter().position(|c| c.key == key) {
            return i;
        }
        let by = served.served_by(config);
        self.served_cache.push(CachedServed {
            key,
            _served: served.clone(),
            _config: config.clone(),
            fields: served_fields(&by),
            by,
            in_segment: None,
        });
        self.served_cache.len() - 1
    }

    /// Define each model of a deployment in the open segment (opening one
    /// if needed) and sync. A failure is counted and logged: the server
    /// answers anyway (the config and models stay in the store, named by
    /// the ids; only gc's and push's roots miss them until an answer of
    /// the deployment is logged).
    fn announce(&mut self, a: &Announce) {
        if let Err(e) = self.try_announce(a) {
            for c in &mut self.served_cache {
                c.in_segment = None;
            }
            self.metrics.log_errors.inc();
            tracing::error!("request log: announcing a deployment: {e}");
        }
    }

    fn try_announce(&mut self, a: &Announce) -> Result<(), LogError> {
        if self.seg.is_none() {
            self.seg = Some(open_segment(&self.opts)?);
            for c in &mut self.served_cache {
                c.in_segment = None;
            }
        }
        if self.served_cache.len() + a.models.len() > 64 {
            self.served_cache.clear();
        }
        let idx: Vec<usize> = a
            .models
            .iter()
            .map(|m| self.served_index(m, &a.config))
            .collect();
        let Some(seg) = self.seg.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let mut defined = Vec::new();
        for i in idx {
            let served = &self.served_cache[i];
            if served.in_segment.is_none() {
                let n = seg.next_served + defined.len() as u32;
                write_served_line(&mut buf, n, &served.fields);
                defined.push((i, n));
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        seg.file
            .write_all(&buf)
            .map_err(io("append to", &seg.path))?;
        seg.file.sync_data().map_err(io("sync", &seg.path))?;
        seg.bytes += buf.len() as u64;
        seg.hash.update(&buf);
        seg.next_served += defined.len() as u32;
        for (i, n) in defined {
            self.served_cache[i].in_segment = Some(n);
        }
        Ok(())
    }

    /// Append a batch to the open segment (opening one if needed) and sync.
    /// Errors are counted and logged; the server goes on. True when the
    /// batch is durable (and so may be indexed).
    fn write(&mut self, batch: &[LogEvent]) -> bool {
        match self.try_write(batch) {
            Ok(()) => true,
            Err(e) => {
                // Definitions in the failed write may not be in the file:
                // the next batch defines its served-by again.
                for c in &mut self.served_cache {
                    c.in_segment = None;
                }
                self.metrics.log_errors.inc();
                tracing::error!("request log: {e}");
                false
            }
        }
    }

    /// Index written events in lineage.db in one transaction. A failure is
    /// counted and logged; the events stay in the segment, which recovery
    /// and `recsys lineage --rebuild` re-index.
    fn index(&mut self, events: &[LogEvent]) {
        if let Err(e) = self.try_index(events) {
            self.metrics.log_errors.inc();
            tracing::error!("request log index: {e}");
        }
    }

    fn try_index(&mut self, events: &[LogEvent]) -> Result<(), LogError> {
        // The cache is only cleared in `try_write`, so these stay valid.
        let served_idx: Vec<usize> = events.iter().map(|e| self.served_by(e)).collect();
        let Some(seg) = self.seg.as_ref() else {
            return Ok(());
        };
        let ids: Vec<String> = events
            .iter()
            .map(|e| e.id.hyphenated().to_string())
            .collect();
        let rows: Vec<RequestRow<'_>> = events
            .iter()
            .enumerate()
            .map(|(i, e)| RequestRow {
                id: &ids[i],
                time: e.time_ms,
                user: e.user as i64,
                served: &self.served_cache[served_idx[i]].by,
                route: &e.route,
                status: e.status,
                latency_us: i64::from(e.latency_us),
                items: std::str::from_utf8(&e.body).unwrap_or(""),
            })
            .collect();
        // A second of requests is ~100 ms of inserts: see `Pacer`.
        let mut pacer = Pacer::new(PACE_SLICE);
        self.db
            .insert_requests_paced(&seg.seg_ref(), &rows, &mut || pacer.tick())?;
        Ok(())
    }

    fn try_write(&mut self, batch: &[LogEvent]) -> Result<(), LogError> {
        if self.seg.is_none() {
            self.seg = Some(open_segment(&self.opts)?);
            // A new segment defines every served-by again.
            for c in &mut self.served_cache {
                c.in_segment = None;
            }
        }
        // Old deployments leave the cache between batches, never within
        // one (the indexes below point into it).
        if self.served_cache.len() > 64 {
            self.served_cache.clear();
        }
        let served_idx: Vec<usize> = batch.iter().map(|e| self.served_by(e)).collect();
        let Some(seg) = self.seg.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(batch.len() * 320);
        // The Kafka copy: self-contained lines (served-by fields inline),
        // each with the user it is keyed by.
        let mut kafka_buf = Vec::new();
        let mut kafka_lines: Vec<(usize, Option<u64>)> = Vec::new();
        let to_kafka = self.kafka.is_some();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped != self.dropped_noted {
            let note = segment::dropped_line(dropped - self.dropped_noted, now_ms());
            buf.extend_from_slice(note.as_bytes());
            if to_kafka {
                kafka_buf.extend_from_slice(note.trim_end().as_bytes());
                kafka_lines.push((kafka_buf.len(), None));
            }
            self.dropped_noted = dropped;
        }
        let mut pacer = Pacer::new(PACE_SLICE);
        for (e, &ci) in batch.iter().zip(&served_idx) {
            pacer.tick();
            let served = &mut self.served_cache[ci];
            let n = match served.in_segment {
                Some(n) => n,
                None => {
                    let n = seg.next_served;
                    seg.next_served += 1;
                    served.in_segment = Some(n);
                    write_served_line(&mut buf, n, &served.fields);
                    n
                }
            };
            let start = buf.len();
            let id = e.id.hyphenated();
            let (head_end, tail_start) = write_request_line(
                &mut buf,
                id.encode_lower(&mut uuid::Uuid::encode_buffer()),
                e.time_ms,
                e.user,
                n,
                &e.route,
                e.status,
                u64::from(e.latency_us),
                &e.body,
            );
            if to_kafka {
                kafka_buf.extend_from_slice(&buf[start..head_end]);
                kafka_buf.extend_from_slice(served.fields.as_bytes());
                // Without the newline: the sink sends one line per message.
                kafka_buf.extend_from_slice(&buf[tail_start..buf.len() - 1]);
                kafka_lines.push((kafka_buf.len(), Some(e.user)));
            }
        }
        seg.file
            .write_all(&buf)
            .map_err(io("append to", &seg.path))?;
        seg.file.sync_data().map_err(io("sync", &seg.path))?;
        seg.bytes += buf.len() as u64;
        seg.hash.update(&buf);
        if let Some(k) = &mut self.kafka {
            let mut start = 0;
            for (end, user) in kafka_lines {
                k.send(user, &kafka_buf[start..end]);
                start = end;
            }
        }
        self.metrics.log_written.inc_by(batch.len() as u64);
        Ok(())
    }
}

fn open_segment(opts: &LogOptions) -> Result<OpenSegment, LogError> {
    let name = format!("seg-{}", uuid::Uuid::now_v7().hyphenated());
    let path = opts.dir.join(format!("open-{name}.jsonl"));
    let opened = now_ms();
    let header = SegmentHeader {
        recsys_log_segment: SEGMENT_FORMAT,
        name: name.clone(),
        host: opts.host.clone(),
        opened,
    };
    let line = header_line(&header);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io("create", &path))?;
    // Held while the file is open (the OS drops it with the process):
    // `recsys forget` leaves a segment a server still writes alone.
    let _ = file.try_lock_shared();
    file.write_all(&line).map_err(io("write", &path))?;
    file.sync_all().map_err(io("sync", &path))?;
    if let Ok(d) = File::open(&opts.dir) {
        let _ = d.sync_all();
    }
    let mut hash = blake3::Hasher::new();
    hash.update(&line);
    Ok(OpenSegment {
        hash,
        name,
        host: opts.host.clone(),
        opened,
        started: Instant::now(),
        bytes: line.len() as u64,
        path,
        file,
        next_served: 0,
    })
}

/// Move a segment's file into the store as an object (it was hashed as it
/// was written), mark it closed.
fn close_segment(seg: OpenSegment, db: &LineageDb, store: &LocalStore) -> Result<Digest, LogError> {
    seg.file.sync_all().map_err(io("sync", &seg.path))?;
    let digest: Digest = seg.hash.finalize().into();
    store.adopt(&seg.path, &digest)?;
    db.close_segment(&seg.seg_ref(), now_ms(), &digest.hex())?;
    Ok(digest)
}

/// Close segments a crashed server left open: cut a torn last line,
/// re-index every line (the last batch may have missed the index), store
/// the bytes, remove the file. Returns one message per segment recovered.
pub fn recover(dir: &Path, db: &LineageDb, store: &LocalStore) -> Result<Vec<String>, LogError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for e in rd {
        let e = e.map_err(io("list", dir))?;
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("open-") && n.ends_with(".jsonl") {
            files.push(e.path());
        }
    }
    files.sort();
    for p in files {
        let mut bytes = fs::read(&p).map_err(io("read", &p))?;
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let torn = bytes.len() - whole;
        bytes.truncate(whole);
        let label = p.display().to_string();
        let seg = match parse_segment(&label, &bytes) {
            Ok(s) => s,
            Err(e) => {
                // Not even a whole header: nothing was logged in it.
                let aside = p.with_extension("unreadable");
                fs::rename(&p, &aside).map_err(io("set aside", &p))?;
                out.push(format!("{e}; set aside as {}", aside.display()));
                continue;
            }
        };
        let digest = crate::store::put_bytes(store, &bytes)?;
        index_segment(db, &seg, Some((now_ms(), &digest.hex())))?;
        fs::remove_file(&p).map_err(io("remove", &p))?;
        out.push(format!(
            "recovered request log segment {} left open by a crash: {} request(s){}, stored as {digest}",
            seg.header.name,
            seg.records.len(),
            if torn > 0 {
                format!(", a torn last line of {torn} byte(s) cut")
            } else {
                String::new()
            }
        ));
    }
    Ok(out)
}
