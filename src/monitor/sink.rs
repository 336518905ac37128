//! What the monitor writes, and the trait its databases implement.
//!
//! A [`Batch`] is everything one flush produces: the raw inputs (flagged
//! late or not, each with the source position it was read from), the
//! closed windows and matched stream lines, the per-minute rollup deltas,
//! the consumed offsets and the join's checkpoint. A [`Sink`] writes a
//! batch in **one transaction**, so after a crash the database holds every
//! input up to the stored offsets exactly once and none after them.
//!
//! A batch carries a number; a sink that finds that number (or a later
//! one) already committed does nothing, so retrying a batch whose COMMIT
//! was sent but not acknowledged (the database restarted) cannot write it
//! twice.
//!
//! Both backends have the same tables and answer the same SQL (the
//! placeholders are `$1`, `$2`, ...; SQLite gets `?1`, `?2`, ...).

use std::collections::HashMap;

use super::join::{Counters, Marks, Outcome, Provisional, StreamMatch};

/// Upper bounds (ms) of the latency buckets the rollups keep; the last one
/// stands for +Inf. 400 is a bound, so "share above 400 ms" is exact.
pub(crate) const LATENCY_BUCKETS_MS: [i64; 31] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600,
    700, 800, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, INF_MS,
];

/// The +Inf bucket's bound as stored.
pub(crate) const INF_MS: i64 = 1_000_000_000;

/// A stream answered "available" when it answered 200 within this.
pub(crate) const AVAILABLE_MS: u32 = 600;

/// The bucket bound for a latency in milliseconds.
pub(crate) fn bucket_of(ms: f64) -> i64 {
    LATENCY_BUCKETS_MS
        .iter()
        .copied()
        .find(|&b| ms <= b as f64)
        .unwrap_or(INF_MS)
}

pub(crate) fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

/// Where an input was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// `stream:<topic>`, `requests:<topic>` or `segment:<name>`.
    pub source: String,
    pub part: i32,
    pub off: i64,
}

/// One stream event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub time_ms: i64,
    pub user: i64,
    /// `watch`, `rate` or `rec`.
    pub kind: &'static str,
    pub movie: Option<String>,
    /// Minute (watch), rating (rate) or HTTP status (rec).
    pub value: i32,
    pub latency_ms: Option<i32>,
    /// A rec line's items, joined by `,`.
    pub items: Option<String>,
    pub late: bool,
    pub pos: Position,
}

/// One served answer as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRow {
    pub seq: i64,
    pub id: String,
    pub time_ms: i64,
    pub user: i64,
    pub model: String,
    pub dataset: String,
    pub arm: String,
    /// `ok`, `fallback_unknown_user`, `fallback_error`.
    pub status: String,
    pub latency_us: i64,
    pub items: Vec<String>,
    pub late: bool,
    pub pos: Position,
}

/// A message that could not be used, kept with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub pos: Position,
    pub reason: String,
    /// The message, lossily decoded and cut to 500 bytes.
    pub text: String,
}

/// The join's state besides the inputs (restored on start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub batch_no: i64,
    pub next_seq: i64,
    pub marks: Marks,
    pub counters: Counters,
    /// Rejected messages so far.
    pub bad: u64,
}

/// Per-minute counters of one (model, arm); `-` for stream-wide rows.
///
/// `stream_*` of a `-` row count every stream recommendation line on
/// arrival; of a model row, the lines matched to that model's answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    pub answers: i64,
    pub fallbacks: i64,
    pub late_answers: i64,
    pub closed: i64,
    pub converted_10: i64,
    pub converted_20: i64,
    pub continued_20: i64,
    pub stream_requests: i64,
    pub stream_ok: i64,
    pub stream_5xx: i64,
    pub stream_unlogged: i64,
    pub watches: i64,
    pub late_events: i64,
    pub bad: i64,
}

impl MinuteCounts {
    pub(crate) const COLUMNS: [&'static str; 14] = [
        "answers",
        "fallbacks",
        "late_answers",
        "closed",
        "converted_10",
        "converted_20",
        "continued_20",
        "stream_requests",
        "stream_ok",
        "stream_5xx",
        "stream_unlogged",
        "watches",
        "late_events",
        "bad",
    ];

    pub fn values(&self) -> [i64; 14] {
        [
            self.answers,
            self.fallbacks,
            self.late_answers,
            self.closed,
            self.converted_10,
            self.converted_20,
            self.continued_20,
            self.stream_requests,
            self.stream_ok,
            self.stream_5xx,
            self.stream_unlogged,
            self.watches,
            self.late_events,
            self.bad,
        ]
    }
}

/// Rollup deltas of one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollups {
    /// (minute, model, arm) -> counts.
    pub minute: HashMap<(i64, String, String), MinuteCounts>,
    /// (minute, model, arm, source `server`|`stream`, bucket bound) -> n.
    pub latency: HashMap<(i64, String, String, &'static str, i64), i64>,
    /// (minute, model, movie) -> times recommended (top 20, non-late).
    pub items: HashMap<(i64, String, String), i64>,
    /// (minute, movie) -> non-late watch events.
    pub watched: HashMap<(i64, String), i64>,
}

/// Everything one flush writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub events: Vec<EventRow>,
    pub answers: Vec<AnswerRow>,
    pub outcomes: Vec<Outcome>,
    pub matches: Vec<StreamMatch>,
    pub bad: Vec<BadRow>,
    pub rollups: Rollups,
    /// Replaces the stored snapshot of open windows.
    pub provisional: Vec<Provisional>,
    /// Next offset to read, per (source, partition).
    pub offsets: Vec<(String, i32, i64)>,
    pub checkpoint: Checkpoint,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.answers.is_empty()
            && self.outcomes.is_empty()
            && self.matches.is_empty()
            && self.bad.is_empty()
            && self.offsets.is_empty()
    }

    pub fn rows(&self) -> usize {
        self.events.len() + self.answers.len() + self.outcomes.len() + self.matches.len()
    }

    fn minute(&mut self, t: i64, model: &str, arm: &str) -> &mut MinuteCounts {
        self.rollups
            .minute
            .entry((minute_of(t), model.to_string(), arm.to_string()))
            .or_default()
    }

    /// Count a stored event into the rollups.
    pub(crate) fn roll_event(&mut self, e: &EventRow) {
        if e.late {
            self.minute(e.time_ms, "-", "-").late_events += 1;
            return;
        }
        if e.kind == "rec" {
            // Stream-wide availability counts on arrival (per-model figures
            // wait for the match, a watermark later).
            let status = e.value;
            let latency = e.latency_ms.unwrap_or(0);
            let m = self.minute(e.time_ms, "-", "-");
            m.stream_requests += 1;
            if status == 200 && latency >= 0 && latency as u32 <= AVAILABLE_MS {
                m.stream_ok += 1;
            }
            if (500..600).contains(&status) || status == 0 {
                m.stream_5xx += 1;
            }
            if status == 200 {
                let key = (
                    minute_of(e.time_ms),
                    "-".to_string(),
                    "-".to_string(),
                    "stream",
                    bucket_of(f64::from(latency)),
                );
                *self.rollups.latency.entry(key).or_default() += 1;
            }
        }
        if e.kind == "watch" {
            self.minute(e.time_ms, "-", "-").watches += 1;
            if let Some(m) = &e.movie {
                *self
                    .rollups
                    .watched
                    .entry((minute_of(e.time_ms), m.clone()))
                    .or_default() += 1;
            }
        }
    }

    /// Count a stored answer into the rollups.
    pub(crate) fn roll_answer(&mut self, a: &AnswerRow) {
        let m = self.minute(a.time_ms, &a.model, &a.arm);
        if a.late {
            m.late_answers += 1;
            return;
        }
        m.answers += 1;
        if a.status != "ok" {
            m.fallbacks += 1;
        }
        let key = (
            minute_of(a.time_ms),
            a.model.clone(),
            a.arm.clone(),
            "server",
            bucket_of(a.latency_us as f64 / 1000.0),
        );
        *self.rollups.latency.entry(key).or_default() += 1;
        let mut seen: Vec<&str> = Vec::new();
        for item in a.items.iter().take(super::join::MAX_ITEMS) {
            if seen.contains(&item.as_str()) {
                continue;
            }
            seen.push(item);
            *self
                .rollups
                .items
                .entry((minute_of(a.time_ms), a.model.clone(), item.clone()))
                .or_default() += 1;
        }
    }

    pub(crate) fn roll_outcome(&mut self, o: &Outcome) {
        let m = self.minute(o.time_ms, &o.model, &o.arm);
        m.closed += 1;
        m.converted_10 += i64::from(o.converted_10);
        m.converted_20 += i64::from(o.converted_20);
        m.continued_20 += i64::from(o.continued_20);
    }

    /// A resolved stream line: per-model figures of the answer it matched
    /// (stream-wide ones were counted on arrival), or an unlogged answer.
    pub(crate) fn roll_match(&mut self, s: &StreamMatch) {
        let Some((model, arm)) = &s.served else {
            if s.status == 200 {
                self.minute(s.time_ms, "-", "-").stream_unlogged += 1;
            }
            return;
        };
        let (model, arm) = (model.clone(), arm.clone());
        let m = self.minute(s.time_ms, &model, &arm);
        m.stream_requests += 1;
        if s.status == 200 && s.latency_ms <= AVAILABLE_MS {
            m.stream_ok += 1;
        }
    }

    pub(crate) fn roll_bad(&mut self, at_ms: i64) {
        self.minute(at_ms, "-", "-").bad += 1;
    }
}

/// A value read back by [`Sink::rows`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

impl Value {
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(i) => *i,
            Value::Float(f) => *f as i64,
            Value::Text(t) => t.parse().unwrap_or(0),
            Value::Null => 0,
        }
    }

    pub fn float(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Text(t) => t.parse().ok(),
            Value::Null => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Null => String::new(),
        }
    }
}

/// A stored input fed back to a restarting join.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    Answer(AnswerRow),
    Event(EventRow),
}

/// A stored position: (source, partition, next offset).
pub type Offset = (String, i32, i64);

/// Where the monitor's tables live.
pub trait Sink {
    /// A short description for messages (never a password).
    fn describe(&self) -> String;

    /// The last committed checkpoint and offsets (defaults when new).
    fn load(&mut self) -> Result<(Checkpoint, Vec<Offset>), super::MonitorError>;

    /// The stored non-late answers, watches and rec lines with event time
    /// at or after `from_ms`, in the order they were read (by `seq`).
    fn replay(
        &mut self,
        from_ms: i64,
        f: &mut dyn FnMut(Replayed),
    ) -> Result<(), super::MonitorError>;

    /// Write a batch in one transaction (a batch number already committed
    /// is skipped). Returns whether it was written.
    fn write(&mut self, batch: &Batch) -> Result<bool, super::MonitorError>;

    /// Run a read-only query (`$n` placeholders, integer arguments).
    fn rows(&mut self, sql: &str, args: &[i64]) -> Result<Vec<Vec<Value>>, super::MonitorError>;

    /// Mark this connection as the running `recsys monitor` job, so that
    /// [`Sink::erase_user`] elsewhere can tell one is writing.
    fn announce_running(&mut self) -> Result<(), super::MonitorError>;

    /// Count (`dry_run`) or delete one user's rows in one transaction, then
    /// empty the freed pages (see [`super::erase`]).
    fn erase_user(
        &mut self,
        user: i64,
        dry_run: bool,
    ) -> Result<super::erase::UserRows, super::MonitorError>;
}

/// The tables both backends create (PostgreSQL adds partitioning and BRIN
/// indexes, SQLite b-tree indexes). Columns are plain integers and text so
/// the same SQL reads both.
pub(crate) const TABLE_COLUMNS: &[(&str, &str)] = &[
    (
        "mon_events",
        "seq BIGINT NOT NULL, time_ms BIGINT NOT NULL, user_id BIGINT NOT NULL, kind TEXT NOT NULL, \
         movie TEXT, value INTEGER, latency_ms INTEGER, items TEXT, late SMALLINT NOT NULL, \
         source TEXT NOT NULL, part INTEGER NOT NULL, off BIGINT NOT NULL",
    ),
    (
        "mon_answers",
        "seq BIGINT NOT NULL, id TEXT NOT NULL, time_ms BIGINT NOT NULL, user_id BIGINT NOT NULL, \
         model TEXT NOT NULL, dataset TEXT NOT NULL, arm TEXT NOT NULL, status TEXT NOT NULL, \
         latency_us BIGINT NOT NULL, items TEXT NOT NULL, late SMALLINT NOT NULL, \
         source TEXT NOT NULL, part INTEGER NOT NULL, off BIGINT NOT NULL",
    ),
    (
        "mon_answer_items",
        "time_ms BIGINT NOT NULL, id TEXT NOT NULL, user_id BIGINT NOT NULL, model TEXT NOT NULL, \
         rank SMALLINT NOT NULL, movie TEXT NOT NULL",
    ),
    (
        "mon_outcomes",
        "time_ms BIGINT NOT NULL, id TEXT NOT NULL, user_id BIGINT NOT NULL, model TEXT NOT NULL, \
         dataset TEXT NOT NULL, arm TEXT NOT NULL, fallback SMALLINT NOT NULL, \
         converted_10 SMALLINT NOT NULL, converted_20 SMALLINT NOT NULL, \
         continued_20 SMALLINT NOT NULL, first_conversion_ms BIGINT, first_rank SMALLINT, \
         seen_in_stream SMALLINT NOT NULL",
    ),
    (
        "mon_stream_requests",
        "time_ms BIGINT NOT NULL, user_id BIGINT NOT NULL, status INTEGER NOT NULL, \
         latency_ms INTEGER NOT NULL, model TEXT, arm TEXT",
    ),
];

/// Small tables both backends create the same way.
pub(crate) const SMALL_TABLES: &str = "
CREATE TABLE IF NOT EXISTS mon_minute(
    minute_ms BIGINT NOT NULL, model TEXT NOT NULL, arm TEXT NOT NULL,
    answers BIGINT NOT NULL DEFAULT 0, fallbacks BIGINT NOT NULL DEFAULT 0,
    late_answers BIGINT NOT NULL DEFAULT 0, closed BIGINT NOT NULL DEFAULT 0,
    converted_10 BIGINT NOT NULL DEFAULT 0, converted_20 BIGINT NOT NULL DEFAULT 0,
    continued_20 BIGINT NOT NULL DEFAULT 0, stream_requests BIGINT NOT NULL DEFAULT 0,
    stream_ok BIGINT NOT NULL DEFAULT 0, stream_5xx BIGINT NOT NULL DEFAULT 0,
    stream_unlogged BIGINT NOT NULL DEFAULT 0, watches BIGINT NOT NULL DEFAULT 0,
    late_events BIGINT NOT NULL DEFAULT 0, bad BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (minute_ms, model, arm));
CREATE TABLE IF NOT EXISTS mon_latency_minute(
    minute_ms BIGINT NOT NULL, model TEXT NOT NULL, arm TEXT NOT NULL, source TEXT NOT NULL,
    le_ms BIGINT NOT NULL, n BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, model, arm, source, le_ms));
CREATE TABLE IF NOT EXISTS mon_item_minute(
    minute_ms BIGINT NOT NULL, model TEXT NOT NULL, movie TEXT NOT NULL, n BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, model, movie));
CREATE TABLE IF NOT EXISTS mon_watch_minute(
    minute_ms BIGINT NOT NULL, movie TEXT NOT NULL, n BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, movie));
CREATE TABLE IF NOT EXISTS mon_provisional(
    model TEXT NOT NULL, dataset TEXT NOT NULL, arm TEXT NOT NULL, open BIGINT NOT NULL,
    converted_10 BIGINT NOT NULL, converted_20 BIGINT NOT NULL, watermark_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS mon_bad(
    source TEXT NOT NULL, part INTEGER NOT NULL, off BIGINT NOT NULL, reason TEXT NOT NULL,
    text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mon_offsets(
    source TEXT NOT NULL, part INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (source, part));
CREATE TABLE IF NOT EXISTS mon_checkpoint(
    id INTEGER PRIMARY KEY, batch_no BIGINT NOT NULL, state TEXT NOT NULL,
    updated_ms BIGINT NOT NULL);
";

/// The minute rollup's upsert (same text for both backends).
pub(crate) fn minute_upsert(placeholder: impl Fn(usize) -> String) -> String {
    let cols = MinuteCounts::COLUMNS;
    let names = cols.join(", ");
    let vals: Vec<String> = (1..=cols.len() + 3).map(&placeholder).collect();
    let set: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} = mon_minute.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO mon_minute (minute_ms, model, arm, {names}) VALUES ({}) \
         ON CONFLICT (minute_ms, model, arm) DO UPDATE SET {}",
        vals.join(", "),
        set.join(", ")
    )
}

/// Replace `$n` placeholders by SQLite's `?n`.
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// The columns [`Sink::replay`] selects, answers and events in one order.
pub(crate) const REPLAY_SQL: &str = "
SELECT seq, 0 AS k, time_ms, user_id, kind, movie, value, latency_ms, items,
       NULL AS id, NULL AS model, NULL AS dataset, NULL AS arm, NULL AS status, NULL AS latency_us
  FROM mon_events WHERE late = 0 AND kind IN ('watch', 'rec') AND time_ms >= $1
UNION ALL
SELECT seq, 1 AS k, time_ms, user_id, NULL, NULL, NULL, NULL, items,
       id, model, dataset, arm, status, latency_us
  FROM mon_answers WHERE late = 0 AND time_ms >= $1
ORDER BY seq";

/// One row of [`REPLAY_SQL`] back into an input.
pub fn replayed(v: &[Value]) -> Option<Replayed> {
    let pos = Position {
        source: "replay".into(),
        part: 0,
        off: 0,
    };
    let items = v.get(8).map(Value::text).unwrap_or_default();
    if v.get(1)?.int() == 1 {
        return Some(Replayed::Answer(AnswerRow {
            seq: v[0].int(),
            id: v[9].text(),
            time_ms: v[2].int(),
            user: v[3].int(),
            model: v[10].text(),
            dataset: v[11].text(),
            arm: v[12].text(),
            status: v[13].text(),
            latency_us: v[14].int(),
            items: if items.is_empty() {
                Vec::new()
            } else {
                items.split(',').map(str::to_string).collect()
            },
            late: false,
            pos,
        }));
    }
    let kind = match v[4].text().as_str() {
        "watch" => "watch",
        "rec" => "rec",
        _ => return None,
    };
    Some(Replayed::Event(EventRow {
        seq: v[0].int(),
        time_ms: v[2].int(),
        user: v[3].int(),
        kind,
        movie: match &v[5] {
            Value::Null => None,
            m => Some(m.text()),
        },
        value: v[6].int() as i32,
        latency_ms: v[7].float().map(|f| f as i32),
        items: (!items.is_empty()).then_some(items),
        late: false,
        pos,
    }))
}

/// A checkpoint as stored (JSON in `mon_checkpoint.state`).
pub(crate) fn checkpoint_json(c: &Checkpoint) -> String {
    serde_json::to_string(c).unwrap_or_default()
}
