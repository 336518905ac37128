//! The feedback join: served answers in, stream events in, closed windows
//! and counters out.
//!
//! A pure, synchronous state machine: no I/O, no clock. Time is event time
//! (the `time_ms` of each input); the only notion of "now" is the
//! *watermark*, `min over the active sources of (max event time seen) −
//! allowed lateness`, which never goes back.
//!
//! # What an answer's outcome is
//!
//! An answer of user `u` at time `t` with items `i_0..i_n` (best first) is
//! open for `[t, t + window)`. For each item `i_r`, let the user's watches
//! of `i_r` be the non-late watch events with that user and movie. Then
//!
//! - `i_r` is *continued* when one of those watches lies in
//!   `[t − lookback, t)`: the user was already watching it, so a watch after
//!   the answer is not credited to the recommendation;
//! - `i_r` *converts* when it is not continued and one of those watches lies
//!   in `[t, t + window)`; its conversion time is the earliest such watch.
//!
//! `converted_k` is "some item of rank < k converts"; the answer's first
//! conversion (time and rank) is the earliest converting watch over all
//! ranks (ties: the better rank), so each answer converts at most once however
//! many of its items are watched. `continued_20` is "some item of rank < 20
//! is continued and watched again inside the window".
//!
//! The outcome is emitted once, when the watermark passes `t + window`, and
//! then the answer's state is dropped. It depends only on the *set* of
//! non-late inputs, never on their arrival order, which is what makes it
//! comparable to a batch recomputation over the stored rows.
//!
//! # Late inputs
//!
//! An input whose event time is below the watermark when it arrives is
//! *late*: it is counted and reported as such ([`Verdict::late`]) and does
//! not take part in the join (the sink stores it flagged). Nothing is
//! dropped silently.
//!
//! # Memory
//!
//! State is bounded by the inputs of the last `window + lateness` (open
//! answers) and `lookback + lateness` plus one minute (watches, kept per
//! user as (time, movie) pairs of 16 bytes: an answer scans its user's
//! few hundred, and a sweep each minute of event time drops those below
//! `watermark − lookback`). Everything older is evicted as the watermark
//! advances. Movie ids and served-by labels
//! are interned (bounded by the catalogue and the model versions).
//!
//! # Stream recommendation lines
//!
//! The course stream also carries one line per recommendation request as
//! the client saw it (status, latency, items). Once the watermark passes
//! its time plus `match_slack`, a line with status 200 is matched to the
//! answer of the same user with the same items closest in time (within the
//! slack), which attributes the client-side status and latency to a model
//! version and arm; a 200 line no answer matches is *unlogged* (its answer
//! never reached the request log).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Longest answer the join tracks (the serving contract's top 20).
pub(crate) const MAX_ITEMS: usize = 20;
const NONE_S: u16 = u16::MAX;

/// Parameters of the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// How long an answer stays open (`--window`, default 1 h).
    pub window_ms: i64,
    /// Watermark = max event time − this (`--allowed-lateness`, default 5 min).
    pub lateness_ms: i64,
    /// A watch of an item this long before the answer makes it "continued".
    pub lookback_ms: i64,
    /// Stream recommendation lines match answers at most this far apart.
    pub match_slack_ms: i64,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            window_ms: 3_600_000,
            lateness_ms: 300_000,
            lookback_ms: 1_800_000,
            match_slack_ms: 10_000,
        }
    }
}

/// Where an input came from: each source has its own event-time high mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The course stream (watch, rate, recommendation-request lines).
    Stream = 0,
    /// recsys's request log (its Kafka copy or its local segments).
    Requests = 1,
}

/// One served answer, from the request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u128,
    pub time_ms: i64,
    pub user: u64,
    /// Best first; only the first [`MAX_ITEMS`] take part.
    pub items: Vec<String>,
    pub model: String,
    pub dataset: String,
    /// The config rule (and split arm) that routed the user.
    pub arm: String,
    /// The answer was a fallback (popularity list).
    pub fallback: bool,
}

/// What the join said about one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Below the watermark on arrival: counted, not joined.
    pub late: bool,
}

/// A closed answer window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: u128,
    pub time_ms: i64,
    pub user: u64,
    pub model: String,
    pub dataset: String,
    pub arm: String,
    pub fallback: bool,
    pub converted_10: bool,
    pub converted_20: bool,
    pub continued_20: bool,
    /// The earliest converting watch, and the rank of its item.
    pub first_conversion: Option<(i64, u8)>,
    /// A stream recommendation line was matched to this answer.
    pub seen_in_stream: bool,
}

/// A resolved stream recommendation line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMatch {
    pub time_ms: i64,
    pub user: u64,
    pub status: u16,
    pub latency_ms: u32,
    /// (model, arm) of the matched answer; `None` when nothing matched.
    pub served: Option<(String, String)>,
}

/// What the join emits, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Closed(Outcome),
    Matched(StreamMatch),
}

/// Running totals since the join started (or was restored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    pub answers: u64,
    pub watches: u64,
    pub rates: u64,
    pub stream_requests: u64,
    pub late_events: u64,
    pub late_answers: u64,
    pub closed: u64,
    pub converted_10: u64,
    pub converted_20: u64,
    pub continued_20: u64,
    pub matched: u64,
    pub unlogged: u64,
    /// Answers with more than [`MAX_ITEMS`] items (the rest is ignored).
    pub truncated_answers: u64,
}

/// Conversions so far of the answers whose windows are still open, per
/// served-by label: figures that can still change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisional {
    pub model: String,
    pub dataset: String,
    pub arm: String,
    pub open: u64,
    pub converted_10: u64,
    pub converted_20: u64,
}

/// The state a restarted join needs besides the replayed inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Marks {
    /// Highest event time seen per source (`i64::MIN`: none yet).
    pub max_time: [i64; 2],
    pub watermark: i64,
}

struct Open {
    id: u128,
    time: i64,
    user: u64,
    label: u32,
    fallback: bool,
    matched: bool,
    n: u8,
    items: [u32; MAX_ITEMS],
    /// Seconds after `time` of the earliest in-window watch per rank.
    first_s: [u16; MAX_ITEMS],
    continued: u32,
}

impl Open {
    fn rank_of(&self, movie: u32) -> Option<usize> {
        self.items[..self.n as usize]
            .iter()
            .position(|&m| m == movie)
    }

    fn converting(&self) -> impl Iterator<Item = (usize, u16)> + '_ {
        (0..self.n as usize)
            .filter(|&r| self.first_s[r] != NONE_S && self.continued & (1 << r) == 0)
            .map(|r| (r, self.first_s[r]))
    }

    fn converted(&self, k: usize) -> bool {
        self.converting().any(|(r, _)| r < k)
    }
}

/// One kept watch of a user: when, and the interned movie.
#[derive(Debug, Clone, Copy)]
struct Watched {
    time: i64,
    movie: u32,
}

/// How far (event time) the watermark moves between two sweeps of the
/// watch history: history holds at most this much more than it must.
const SWEEP_MS: i64 = 60_000;

struct PendingRec {
    time: i64,
    user: u64,
    status: u16,
    latency_ms: u32,
    items: Vec<u32>,
}

/// The feedback join. See the module docs for its semantics.
pub struct Join {
    cfg: JoinConfig,
    marks: Marks,
    idle: [bool; 2],
    movies: HashMap<Box<str>, u32>,
    labels: Vec<(String, String, String)>,
    label_ids: HashMap<(String, String, String), u32>,
    slots: Vec<Option<Open>>,
    free: Vec<u32>,
    by_user: HashMap<u64, Vec<u32>>,
    /// (close time, request id, slot): closes in an order that does not
    /// depend on slot numbers, which differ after a restart.
    closing: BinaryHeap<Reverse<(i64, u128, u32)>>,
    /// Per user, their non-late watches at or after `watermark −
    /// lookback` (and, until the next sweep, up to [`SWEEP_MS`] older):
    /// all an answer at or above the watermark can need.
    hist: HashMap<u64, Vec<Watched>>,
    hist_len: usize,
    swept_at: i64,
    pending: BinaryHeap<Reverse<(i64, u64)>>,
    pending_recs: HashMap<u64, PendingRec>,
    next_rec: u64,
    out: Vec<Output>,
    counters: Counters,
    frozen: bool,
}

fn add(t: i64, d: i64) -> i64 {
    t.saturating_add(d)
}

impl Join {
    pub fn new(cfg: JoinConfig) -> Join {
        Join {
            cfg,
            marks: Marks {
                max_time: [i64::MIN; 2],
                watermark: i64::MIN,
            },
            idle: [false; 2],
            movies: HashMap::new(),
            labels: Vec::new(),
            label_ids: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_user: HashMap::new(),
            closing: BinaryHeap::new(),
            hist: HashMap::new(),
            hist_len: 0,
            swept_at: i64::MIN,
            pending: BinaryHeap::new(),
            pending_recs: HashMap::new(),
            next_rec: 0,
            out: Vec::new(),
            counters: Counters::default(),
            frozen: false,
        }
    }

    pub fn config(&self) -> JoinConfig {
        self.cfg
    }

    #[cfg(test)]
    pub(crate) fn watermark(&self) -> i64 {
        self.marks.watermark
    }

    pub(crate) fn marks(&self) -> Marks {
        self.marks
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Answers whose windows are open now.
    pub fn open_answers(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Watches now kept in the per-user history.
    pub fn history_len(&self) -> usize {
        self.hist_len
    }

    /// Take what was emitted since the last call.
    pub(crate) fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// A source that has caught up and gone quiet stops holding the
    /// watermark back (the caller decides when; `false` when it speaks
    /// again). Closing windows this allows happens now.
    pub(crate) fn set_idle(&mut self, source: Source, idle: bool) {
        if self.frozen || self.idle[source as usize] == idle {
            return;
        }
        self.idle[source as usize] = idle;
        self.advance();
    }

    /// Is this time below the watermark (would an input at it be late)?
    pub(crate) fn is_late(&self, time_ms: i64) -> bool {
        !self.frozen && time_ms < self.marks.watermark
    }

    fn movie(&mut self, id: &str) -> u32 {
        if let Some(&m) = self.movies.get(id) {
            return m;
        }
        let m = self.movies.len() as u32;
        self.movies.insert(id.into(), m);
        m
    }

    fn label(&mut self, model: &str, dataset: &str, arm: &str) -> u32 {
        let key = (model.to_string(), dataset.to_string(), arm.to_string());
        if let Some(&l) = self.label_ids.get(&key) {
            return l;
        }
        let l = self.labels.len() as u32;
        self.labels.push(key.clone());
        self.label_ids.insert(key, l);
        l
    }

    /// Account for an input's time on its source, then close what the new
    /// watermark allows.
    fn seen(&mut self, source: Source, time: i64) {
        if self.frozen {
            return;
        }
        let s = source as usize;
        self.idle[s] = false;
        if time > self.marks.max_time[s] {
            self.marks.max_time[s] = time;
        }
        self.advance();
    }

    fn advance(&mut self) {
        let mut low = i64::MAX;
        let mut any = false;
        for s in 0..2 {
            if self.idle[s] {
                continue;
            }
            any = true;
            low = low.min(self.marks.max_time[s]);
        }
        if !any {
            // Every source idle: the latest time seen anywhere rules.
            low = self.marks.max_time[0].max(self.marks.max_time[1]);
        }
        if low == i64::MIN {
            return;
        }
        let wm = low.saturating_sub(self.cfg.lateness_ms);
        if wm > self.marks.watermark {
            self.marks.watermark = wm;
            self.on_watermark();
        }
    }

    fn on_watermark(&mut self) {
        let wm = self.marks.watermark;
        // Stream recommendation lines whose answers have all arrived.
        while let Some(&Reverse((due, key))) = self.pending.peek() {
            if due > wm {
                break;
            }
            self.pending.pop();
            if let Some(rec) = self.pending_recs.remove(&key) {
                self.resolve(rec);
            }
        }
        // Windows that closed.
        while let Some(&Reverse((close, _, slot))) = self.closing.peek() {
            if close > wm {
                break;
            }
            self.closing.pop();
            self.close(slot);
        }
        // History nobody can need any more: answers from now on are at or
        // above the watermark and look back `lookback`. Swept as the
        // watermark moves on by SWEEP_MS, so the cost per watch is a
        // constant share of one pass.
        if self.swept_at == i64::MIN || wm >= add(self.swept_at, SWEEP_MS) {
            self.swept_at = wm;
            let keep_from = wm.saturating_sub(self.cfg.lookback_ms);
            let mut kept = 0;
            self.hist.retain(|_, v| {
                v.retain(|w| w.time >= keep_from);
                if v.capacity() > 2 * v.len() + 4 {
                    v.shrink_to_fit();
                }
                kept += v.len();
                !v.is_empty()
            });
            self.hist_len = kept;
        }
    }

    /// A served answer from the request log.
    pub fn answer(&mut self, a: &Answer) -> Verdict {
        if self.is_late(a.time_ms) {
            self.counters.late_answers += 1;
            self.seen(Source::Requests, a.time_ms);
            return Verdict { late: true };
        }
        self.counters.answers += 1;
        if a.items.len() > MAX_ITEMS {
            self.counters.truncated_answers += 1;
        }
        let label = self.label(&a.model, &a.dataset, &a.arm);
        let mut open = Open {
            id: a.id,
            time: a.time_ms,
            user: a.user,
            label,
            fallback: a.fallback,
            matched: false,
            n: 0,
            items: [u32::MAX; MAX_ITEMS],
            first_s: [NONE_S; MAX_ITEMS],
            continued: 0,
        };
        for item in a.items.iter().take(MAX_ITEMS) {
            let m = self.movie(item);
            // A repeated item counts at its first (best) rank only.
            if open.rank_of(m).is_none() {
                open.items[open.n as usize] = m;
                open.n += 1;
            }
        }
        // Watches that arrived before the answer.
        let (w, l) = (self.cfg.window_ms, self.cfg.lookback_ms);
        let t0 = a.time_ms;
        for h in self.hist.get(&a.user).into_iter().flatten() {
            let Some(r) = open.rank_of(h.movie) else {
                continue;
            };
            if h.time < t0 && h.time >= t0 - l {
                open.continued |= 1 << r;
            } else if h.time >= t0 && h.time < add(t0, w) {
                let off = secs(h.time - t0);
                if open.first_s[r] == NONE_S || off < open.first_s[r] {
                    open.first_s[r] = off;
                }
            }
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(open);
                s
            }
            None => {
                self.slots.push(Some(open));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_user.entry(a.user).or_default().push(slot);
        self.closing.push(Reverse((add(a.time_ms, w), a.id, slot)));
        self.seen(Source::Requests, a.time_ms);
        Verdict { late: false }
    }

    /// A watch event from the stream.
    pub fn watch(&mut self, time_ms: i64, user: u64, movie: &str) -> Verdict {
        if self.is_late(time_ms) {
            self.counters.late_events += 1;
            self.seen(Source::Stream, time_ms);
            return Verdict { late: true };
        }
        self.counters.watches += 1;
        let m = self.movie(movie);
        let (w, l) = (self.cfg.window_ms, self.cfg.lookback_ms);
        if let Some(slots) = self.by_user.get(&user) {
            for &s in slots {
                let Some(Some(a)) = self.slots.get_mut(s as usize) else {
                    continue;
                };
                let Some(r) = a.rank_of(m) else { continue };
                if time_ms >= a.time && time_ms < add(a.time, w) {
                    let off = secs(time_ms - a.time);
                    if off < a.first_s[r] || a.first_s[r] == NONE_S {
                        a.first_s[r] = off;
                    }
                } else if time_ms < a.time && time_ms >= a.time - l {
                    a.continued |= 1 << r;
                }
            }
        }
        self.hist.entry(user).or_default().push(Watched {
            time: time_ms,
            movie: m,
        });
        self.hist_len += 1;
        self.seen(Source::Stream, time_ms);
        Verdict { late: false }
    }

    /// A rate event (counted; it moves the stream's event time).
    pub fn rate(&mut self, time_ms: i64) -> Verdict {
        let late = self.is_late(time_ms);
        if late {
            self.counters.late_events += 1;
        } else {
            self.counters.rates += 1;
        }
        self.seen(Source::Stream, time_ms);
        Verdict { late }
    }

    /// A recommendation-request line of the stream.
    pub(crate) fn stream_request(
        &mut self,
        time_ms: i64,
        user: u64,
        status: u16,
        latency_ms: u32,
        items: &[&str],
    ) -> Verdict {
        if self.is_late(time_ms) {
            self.counters.late_events += 1;
            self.seen(Source::Stream, time_ms);
            return Verdict { late: true };
        }
        self.counters.stream_requests += 1;
        let items = items
            .iter()
            .take(MAX_ITEMS)
            .map(|i| self.movie(i))
            .collect();
        let key = self.next_rec;
        self.next_rec += 1;
        self.pending_recs.insert(
            key,
            PendingRec {
                time: time_ms,
                user,
                status,
                latency_ms,
                items,
            },
        );
        self.pending
            .push(Reverse((add(time_ms, self.cfg.match_slack_ms), key)));
        self.seen(Source::Stream, time_ms);
        Verdict { late: false }
    }

    fn resolve(&mut self, rec: PendingRec) {
        let mut best: Option<(i64, u32)> = None;
        if rec.status == 200
            && let Some(slots) = self.by_user.get(&rec.user)
        {
            for &s in slots {
                let Some(Some(a)) = self.slots.get(s as usize) else {
                    continue;
                };
                let d = (a.time - rec.time).abs();
                if a.matched
                    || d > self.cfg.match_slack_ms
                    || a.items[..a.n as usize] != rec.items[..]
                {
                    continue;
                }
                if best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, s));
                }
            }
        }
        let served = match best {
            Some((_, s)) => self
                .slots
                .get_mut(s as usize)
                .and_then(|a| a.as_mut())
                .map(|a| {
                    a.matched = true;
                    let (model, _, arm) = &self.labels[a.label as usize];
                    (model.clone(), arm.clone())
                }),
            None => None,
        };
        if served.is_some() {
            self.counters.matched += 1;
        } else if rec.status == 200 {
            self.counters.unlogged += 1;
        }
        self.out.push(Output::Matched(StreamMatch {
            time_ms: rec.time,
            user: rec.user,
            status: rec.status,
            latency_ms: rec.latency_ms,
            served,
        }));
    }

    fn close(&mut self, slot: u32) {
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        if let Some(v) = self.by_user.get_mut(&a.user) {
            v.retain(|&s| s != slot);
            if v.is_empty() {
                self.by_user.remove(&a.user);
            }
        }
        let first = a
            .converting()
            .min_by_key(|&(r, s)| (s, r))
            .map(|(r, s)| (a.time + i64::from(s) * 1000, r as u8));
        let continued_20 =
            (0..a.n as usize).any(|r| a.continued & (1 << r) != 0 && a.first_s[r] != NONE_S);
        let (c10, c20) = (a.converted(10), a.converted(20));
        self.counters.closed += 1;
        self.counters.converted_10 += u64::from(c10);
        self.counters.converted_20 += u64::from(c20);
        self.counters.continued_20 += u64::from(continued_20);
        let (model, dataset, arm) = self.labels[a.label as usize].clone();
        self.out.push(Output::Closed(Outcome {
            id: a.id,
            time_ms: a.time,
            user: a.user,
            model,
            dataset,
            arm,
            fallback: a.fallback,
            converted_10: c10,
            converted_20: c20,
            continued_20,
            first_conversion: first,
            seen_in_stream: a.matched,
        }));
    }

    /// Conversions so far of the open windows, per served-by label.
    pub fn provisional(&self) -> Vec<Provisional> {
        let mut by: HashMap<u32, (u64, u64, u64)> = HashMap::new();
        for a in self.slots.iter().flatten() {
            let e = by.entry(a.label).or_default();
            e.0 += 1;
            e.1 += u64::from(a.converted(10));
            e.2 += u64::from(a.converted(20));
        }
        let mut out: Vec<Provisional> = by
            .into_iter()
            .map(|(l, (open, c10, c20))| {
                let (model, dataset, arm) = self.labels[l as usize].clone();
                Provisional {
                    model,
                    dataset,
                    arm,
                    open,
                    converted_10: c10,
                    converted_20: c20,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.model, &a.arm).cmp(&(&b.model, &b.arm)));
        out
    }

    /// A join that is being rebuilt after a restart: feed it, in their
    /// original order, the stored non-late inputs from
    /// [`Join::replay_from`] on through the ordinary methods (nothing is late
    /// and nothing closes meanwhile), then call [`Join::restore`].
    pub(crate) fn recovering(cfg: JoinConfig) -> Join {
        let mut j = Join::new(cfg);
        j.frozen = true;
        j
    }

    /// End a recovery: set the marks the stopped join had reached. Windows
    /// and stream lines it had already closed close again here; their
    /// outputs (already stored) are discarded.
    pub fn restore(&mut self, marks: Marks, counters: Counters) {
        self.frozen = false;
        self.marks = marks;
        self.idle = [false; 2];
        if marks.watermark > i64::MIN {
            self.on_watermark();
        }
        self.out.clear();
        self.counters = counters;
    }

    /// How far back (event time) a restart must replay stored inputs.
    pub(crate) fn replay_from(&self, marks: &Marks) -> i64 {
        marks
            .watermark
            .saturating_sub(self.cfg.window_ms.max(self.cfg.match_slack_ms))
            .saturating_sub(self.cfg.lookback_ms)
    }
}

/// Whole seconds of an in-window offset (the window is at most 18 h).
fn secs(ms: i64) -> u16 {
    u16::try_from(ms / 1000)
        .unwrap_or(NONE_S - 1)
        .min(NONE_S - 1)
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
