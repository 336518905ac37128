//! Data quality checks on an ingested batch: pure functions, no I/O.
//!
//! What is measured (all recorded as run metrics):
//! - schema violations by [`ParseError::kind`](crate::stream::ParseError::kind)
//!   (malformed lines, counted by the collector);
//! - out-of-range ratings (a `rate` line whose rating is a number outside
//!   1-5; also a schema violation, reported on its own because it is a
//!   data problem rather than a format problem);
//! - duplicate events: watch/rate events identical in time, user, movie,
//!   kind and value. They are dropped (kept once): a producer retry
//!   re-sends the same line, and the same minute of the same movie cannot be
//!   streamed twice in the same millisecond;
//! - unknown users (no age/gender/occupation from the user source) and
//!   unknown movies (absent from the previous dataset's movie table);
//! - drift against the previous dataset, see [`drift`] and [`Thresholds`].

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::dataset::{DataEvent, EventKind};

/// When drift is a warning and when it fails the ingest (unless
/// `--allow-drift`). Each check runs only with enough data on both sides
/// for its figure to mean something.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Event rate (watch+rate events per minute of event time) changed by
    /// more than this factor, up or down: warning.
    pub rate_ratio_warn: f64,
    /// ... severe.
    pub rate_ratio_severe: f64,
    /// Mean rating moved by more than this many stars: warning.
    pub rating_shift_warn: f64,
    /// ... severe.
    pub rating_shift_severe: f64,
    /// Share of watch/rate events about movies the previous dataset never
    /// saw: warning above this.
    pub new_movie_share_warn: f64,
    /// ... severe.
    pub new_movie_share_severe: f64,
    /// Fewest watch/rate events on each side for the rate and new-movie checks.
    pub min_events: u64,
    /// Fewest ratings on each side for the rating-mean check.
    pub min_ratings: u64,
    /// Shortest event-time span (ms) on each side for a rate to be computed.
    pub min_span_ms: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rate_ratio_warn: 1.5,
            rate_ratio_severe: 3.0,
            rating_shift_warn: 0.25,
            rating_shift_severe: 0.5,
            new_movie_share_warn: 0.2,
            new_movie_share_severe: 0.5,
            min_events: 100,
            min_ratings: 30,
            min_span_ms: 60_000,
        }
    }
}

/// The figures of one dataset that drift is measured on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Watch + rate events.
    pub events: u64,
    /// Latest minus earliest event time.
    pub span_ms: i64,
    pub ratings: u64,
    pub rating_sum: u64,
    /// Events per movie.
    pub movies: HashMap<String, u64>,
    /// The dataset came from the stream (an ingest), so its event rate is
    /// comparable with another ingest's. An import spans months of
    /// ratings without watch events: its rate says nothing about a stream.
    pub from_stream: bool,
}

impl Profile {
    pub fn of(events: &[DataEvent], from_stream: bool) -> Profile {
        let mut p = Profile {
            from_stream,
            ..Profile::default()
        };
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for e in events {
            p.events += 1;
            lo = lo.min(e.time_ms);
            hi = hi.max(e.time_ms);
            if e.kind == EventKind::Rate {
                p.ratings += 1;
                p.rating_sum += u64::from(e.value);
            }
            match p.movies.get_mut(e.movie.as_str()) {
                Some(n) => *n += 1,
                None => {
                    p.movies.insert(e.movie.clone(), 1);
                }
            }
        }
        p.span_ms = if p.events > 0 {
            hi.saturating_sub(lo)
        } else {
            0
        };
        p
    }

    /// Events per minute of event time, when the span is long enough.
    pub(crate) fn rate_per_minute(&self, t: &Thresholds) -> Option<f64> {
        (self.span_ms >= t.min_span_ms && self.events >= t.min_events)
            .then(|| self.events as f64 / (self.span_ms as f64 / 60_000.0))
    }

    pub fn rating_mean(&self, t: &Thresholds) -> Option<f64> {
        (self.ratings >= t.min_ratings.max(1)).then(|| self.rating_sum as f64 / self.ratings as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Severe,
}

/// One drift check that crossed a threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// `event_rate`, `rating_mean` or `new_movie_share`.
    pub check: &'static str,
    pub severity: Severity,
    pub message: String,
}

/// A figure before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub previous: f64,
    pub current: f64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Drift {
    /// Name of the dataset compared against.
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_rate_per_min: Option<Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rating_mean: Option<Change>,
    /// Share of this batch's watch/rate events whose movie the reference
    /// never saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_movie_share: Option<f64>,
    pub findings: Vec<Finding>,
}

impl Drift {
    pub fn severe(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Severe)
    }
}

fn grade(value: f64, warn: f64, severe: f64) -> Option<Severity> {
    if value > severe {
        Some(Severity::Severe)
    } else if value > warn {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// Compare `cur` against the reference `prev` (named `reference`).
pub fn drift(reference: &str, prev: &Profile, cur: &Profile, t: &Thresholds) -> Drift {
    let mut d = Drift {
        reference: reference.to_string(),
        ..Drift::default()
    };
    if prev.from_stream
        && cur.from_stream
        && let (Some(a), Some(b)) = (prev.rate_per_minute(t), cur.rate_per_minute(t))
    {
        // A factor either way: 100/min -> 25/min is as far as 100 -> 400.
        let factor = if a > 0.0 && b > 0.0 {
            (b / a).max(a / b)
        } else {
            f64::INFINITY
        };
        if let Some(severity) = grade(factor, t.rate_ratio_warn, t.rate_ratio_severe) {
            d.findings.push(Finding {
                check: "event_rate",
                severity,
                message: format!(
                    "event rate changed {factor:.2}x: {a:.1}/min in {reference}, {b:.1}/min now"
                ),
            });
        }
        d.event_rate_per_min = Some(Change {
            previous: a,
            current: b,
        });
    }
    if let (Some(a), Some(b)) = (prev.rating_mean(t), cur.rating_mean(t)) {
        let shift = (b - a).abs();
        if let Some(severity) = grade(shift, t.rating_shift_warn, t.rating_shift_severe) {
            d.findings.push(Finding {
                check: "rating_mean",
                severity,
                message: format!(
                    "mean rating moved {shift:.2} stars: {a:.2} in {reference}, {b:.2} now"
                ),
            });
        }
        d.rating_mean = Some(Change {
            previous: a,
            current: b,
        });
    }
    if prev.events >= t.min_events && cur.events >= t.min_events {
        let share = new_movie_share(&prev.movies, cur);
        if let Some(severity) = grade(share, t.new_movie_share_warn, t.new_movie_share_severe) {
            d.findings.push(Finding {
                check: "new_movie_share",
                severity,
                message: format!(
                    "{:.0}% of events are about movies {reference} never saw",
                    share * 100.0
                ),
            });
        }
        d.new_movie_share = Some(share);
    }
    d
}

/// Share of `cur`'s events (weighted by event, not by distinct movie) whose
/// movie is not among `known`'s.
fn new_movie_share(known: &HashMap<String, u64>, cur: &Profile) -> f64 {
    if cur.events == 0 {
        return 0.0;
    }
    let unseen: u64 = cur
        .movies
        .iter()
        .filter(|(m, _)| !known.contains_key(*m))
        .map(|(_, n)| n)
        .sum();
    unseen as f64 / cur.events as f64
}

/// Drop exact duplicate watch/rate events; returns how many were dropped.
/// The survivors end up sorted by (time, user, movie, kind, value).
pub(crate) fn dedupe(events: &mut Vec<DataEvent>) -> u64 {
    use rayon::slice::ParallelSliceMut;
    let before = events.len();
    events.par_sort_unstable();
    events.dedup();
    (before - events.len()) as u64
}

/// How many of `items` are not in `known`.
pub(crate) fn count_unknown<'a>(
    items: impl IntoIterator<Item = &'a String>,
    known: &HashSet<String>,
) -> u64 {
    items.into_iter().filter(|m| !known.contains(*m)).count() as u64
}

/// Everything the quality step measured about one batch.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct QualityReport {
    /// Malformed lines by parse-error kind (`empty`, `bad_time`, ...).
    pub schema_violations: BTreeMap<String, u64>,
    pub out_of_range_ratings: u64,
    pub duplicate_events: u64,
    pub users: u64,
    /// Users without age/gender/occupation from any user source.
    pub unknown_users: u64,
    pub movies: u64,
    /// Movies absent from the previous dataset's movie table; `None` when
    /// there is no previous dataset.
    pub unknown_movies: Option<u64>,
    /// `None` when there is no previous dataset to compare with.
    pub drift: Option<Drift>,
    /// Notes that are not drift (an unreachable user API, ...).
    pub warnings: Vec<String>,
}

impl QualityReport {
    pub fn severe(&self) -> Vec<&Finding> {
        self.drift
            .as_ref()
            .map(|d| d.severe().collect())
            .unwrap_or_default()
    }

    pub(crate) fn to_metrics(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: i64, user: u64, movie: &str, kind: EventKind, value: u32) -> DataEvent {
        DataEvent {
            time_ms: t,
            user,
            movie: movie.into(),
            kind,
            value,
        }
    }

    /// `n` events, one per `gap_ms`, ratings all `rating`, movies `m0..m{k}`.
    fn batch(n: usize, gap_ms: i64, rating: u32, movie_prefix: &str, k: usize) -> Vec<DataEvent> {
        (0..n)
            .map(|i| {
                let movie = format!("{movie_prefix}{}", i % k);
                if i % 2 == 0 {
                    ev(i as i64 * gap_ms, i as u64, &movie, EventKind::Rate, rating)
                } else {
                    ev(i as i64 * gap_ms, i as u64, &movie, EventKind::Watch, 3)
                }
            })
            .collect()
    }

    #[test]
    fn dedupe_drops_exact_copies_only() {
        let mut v = vec![
            ev(1, 1, "a", EventKind::Watch, 1),
            ev(1, 1, "a", EventKind::Watch, 1),
            ev(1, 1, "a", EventKind::Watch, 2),
            ev(1, 1, "a", EventKind::Rate, 1),
            ev(0, 1, "a", EventKind::Watch, 1),
        ];
        assert_eq!(dedupe(&mut v), 1);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].time_ms, 0);
        assert_eq!(dedupe(&mut v), 0);
    }

    #[test]
    fn profile_figures() {
        let v = batch(200, 1000, 4, "m", 10);
        let p = Profile::of(&v, true);
        let t = Thresholds::default();
        assert_eq!(p.events, 200);
        assert_eq!(p.ratings, 100);
        assert_eq!(p.span_ms, 199_000);
        assert_eq!(p.movies.len(), 10);
        assert_eq!(p.movies["m0"], 20);
        assert_eq!(p.rating_mean(&t), Some(4.0));
        let rate = p.rate_per_minute(&t).expect("rate");
        assert!((rate - 200.0 / (199.0 / 60.0)).abs() < 1e-9);
        // Too short a span, too few events: no figure rather than a wild one.
        assert_eq!(
            Profile::of(&batch(200, 1, 4, "m", 3), true).rate_per_minute(&t),
            None
        );
        assert_eq!(
            Profile::of(&batch(50, 1000, 4, "m", 3), true).rate_per_minute(&t),
            None
        );
        assert_eq!(Profile::of(&[], true).rating_mean(&t), None);
    }

    #[test]
    fn same_distribution_is_no_drift() {
        let t = Thresholds::default();
        let a = Profile::of(&batch(300, 1000, 4, "m", 10), true);
        let b = Profile::of(&batch(400, 1000, 4, "m", 10), true);
        let d = drift("dataset_1", &a, &b, &t);
        assert!(d.findings.is_empty(), "{d:?}");
        assert!(d.event_rate_per_min.is_some());
        assert_eq!(d.new_movie_share, Some(0.0));
    }

    #[test]
    fn rating_shift_grades() {
        let t = Thresholds::default();
        let a = Profile::of(&batch(300, 1000, 4, "m", 10), true);
        // 4 -> 3: one star, severe.
        let b = Profile::of(&batch(300, 1000, 3, "m", 10), true);
        let d = drift("dataset_1", &a, &b, &t);
        assert_eq!(d.findings.len(), 1);
        assert_eq!(d.findings[0].check, "rating_mean");
        assert_eq!(d.findings[0].severity, Severity::Severe);
        assert_eq!(d.severe().count(), 1);
        // 0.3 stars: a warning only.
        let mut c = batch(300, 1000, 4, "m", 10);
        for e in c.iter_mut().filter(|e| e.kind == EventKind::Rate).take(15) {
            e.value = 1;
        }
        let d = drift("dataset_1", &a, &Profile::of(&c, true), &t);
        assert_eq!(d.findings.len(), 1, "{d:?}");
        assert_eq!(d.findings[0].severity, Severity::Warning);
    }

    #[test]
    fn event_rate_change_both_ways_and_only_between_streams() {
        let t = Thresholds::default();
        let a = Profile::of(&batch(300, 1000, 4, "m", 10), true);
        let slow = Profile::of(&batch(300, 4000, 4, "m", 10), true);
        let d = drift("x", &a, &slow, &t);
        assert_eq!(d.findings.len(), 1, "{d:?}");
        assert_eq!(d.findings[0].check, "event_rate");
        assert_eq!(d.findings[0].severity, Severity::Severe);
        let d = drift("x", &slow, &a, &t);
        assert_eq!(d.severe().count(), 1);
        let mid = Profile::of(&batch(300, 2000, 4, "m", 10), true);
        assert_eq!(
            drift("x", &a, &mid, &t).findings[0].severity,
            Severity::Warning
        );
        // An import reference has no comparable rate.
        let imported = Profile::of(&batch(300, 4000, 4, "m", 10), false);
        let d = drift("x", &imported, &a, &t);
        assert!(d.event_rate_per_min.is_none());
        assert!(d.findings.is_empty());
    }

    #[test]
    fn new_movies_share() {
        let t = Thresholds::default();
        let a = Profile::of(&batch(300, 1000, 4, "m", 10), true);
        // 100 events about known movies, 300 about new ones.
        let mut v = batch(100, 1000, 4, "m", 4);
        v.extend(batch(300, 1000, 4, "new", 6));
        let d = drift("x", &a, &Profile::of(&v, true), &t);
        assert_eq!(d.new_movie_share, Some(0.75));
        assert_eq!(d.severe().count(), 1);
        assert_eq!(d.findings[0].check, "new_movie_share");
        // Too few events: not judged.
        let d = drift("x", &a, &Profile::of(&batch(20, 1000, 4, "z", 5), true), &t);
        assert_eq!(d.new_movie_share, None);
    }

    #[test]
    fn unknown_counts() {
        let known: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        let items = ["a".to_string(), "c".to_string(), "d".to_string()];
        assert_eq!(count_unknown(&items, &known), 2);
    }

    #[test]
    fn report_metrics_are_json() {
        let mut r = QualityReport::default();
        r.schema_violations.insert("bad_time".into(), 2);
        let m = r.to_metrics();
        assert_eq!(m["schema_violations"]["bad_time"], 2);
        assert!(m["drift"].is_null());
        assert!(r.severe().is_empty());
    }
}
