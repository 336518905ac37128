//! The figures of `recsys monitor report` and of the dashboard page, read
//! from the rollups (and, for distinct users, the raw tables) with SQL that
//! both sinks answer.
//!
//! "Now" is the newest minute in the database (event time), so a report
//! over a replayed or paused stream means the same as over a live one.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::MonitorError;
use super::sink::{INF_MS, LATENCY_BUCKETS_MS, Sink, Value};

/// What to group the per-version figures by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Model,
    Arm,
}

impl By {
    fn column(self) -> &'static str {
        match self {
            By::Model => "model",
            By::Arm => "arm",
        }
    }
}

/// Figures of one model version (or arm).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    /// The model version (or, in `by_arm`, the arm).
    pub model: String,
    pub answers: i64,
    pub users: i64,
    /// Closed answers with ≥ 1 of their first 10 items watched in the window.
    pub converted_10: i64,
    pub converted_20: i64,
    pub users_converted_20: i64,
    /// `users_converted_20 / users` (the seed's online-quality figure).
    pub online_quality: Option<f64>,
    /// Answers whose windows are closed (their conversions are final).
    pub closed: i64,
    /// Answers whose windows are still open: not yet in `converted_*`.
    pub provisional: i64,
    /// Of those, converted so far (top 20): can still change.
    pub provisional_converted_20: i64,
    /// Share of this version's stream-seen answers with 200 within 600 ms.
    pub availability: Option<f64>,
    pub stream_requests: i64,
    pub fallbacks: i64,
    /// Server-side latency from the request log (bucket upper bounds).
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// Stream-wide figures (as the course's grader sees the service).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamFigures {
    pub requests: i64,
    /// Share answered 200 within 600 ms.
    pub availability: Option<f64>,
    pub status_5xx: i64,
    /// 200 answers the request log never had.
    pub unlogged: i64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub watches: i64,
}

/// Recommendation health over the last hour of answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    /// Distinct movies recommended / movies in the catalogue seen (watched
    /// in the last 24 h or recommended in the last hour).
    pub coverage: Option<f64>,
    /// Mean popularity (watch share of the most watched movie, 0..1) of
    /// recommended items.
    pub avg_popularity: Option<f64>,
    /// Gini coefficient of how often each catalogue movie was recommended.
    pub gini: Option<f64>,
    pub fallback_share: Option<f64>,
    pub distinct_recommended: i64,
    pub catalogue: i64,
}

/// `recsys monitor report`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub since_ms: i64,
    pub until_ms: i64,
    pub by_model: Vec<Group>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_arm: Option<Vec<Group>>,
    /// Stream events and answers that arrived below the watermark.
    pub late_events: i64,
    pub late_answers: i64,
    /// Messages rejected (malformed lines, bad request records).
    pub bad_messages: i64,
    pub stream: StreamFigures,
    pub health: Health,
}

fn sum(col: &str) -> String {
    format!("CAST(COALESCE(sum({col}), 0) AS BIGINT)")
}

/// The newest minute with data, plus one minute (exclusive end).
pub(crate) fn until_ms(sink: &mut dyn Sink) -> Result<i64, MonitorError> {
    let r = sink.rows("SELECT max(minute_ms) FROM mon_minute", &[])?;
    Ok(r.first()
        .and_then(|r| r.first())
        .and_then(Value::float)
        .map_or(0, |m| m as i64 + 60_000))
}

/// The bucket bound below which a share `q` of the counts lies.
pub(crate) fn percentile(buckets: &BTreeMap<i64, i64>, q: f64) -> Option<f64> {
    let total: i64 = buckets.values().sum();
    if total == 0 {
        return None;
    }
    let mut cum = 0;
    for (&le, &n) in buckets {
        cum += n;
        if cum as f64 >= q * total as f64 {
            // +Inf: say the largest finite bound ("at least").
            let le = if le >= INF_MS {
                LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 2]
            } else {
                le
            };
            return Some(le as f64);
        }
    }
    None
}

fn ratio(a: i64, b: i64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn groups(sink: &mut dyn Sink, by: By, since: i64) -> Result<Vec<Group>, MonitorError> {
    let col = by.column();
    let mut out: BTreeMap<String, Group> = BTreeMap::new();
    let sql = format!(
        "SELECT {col}, {}, {}, {}, {}, {}, {}, {} FROM mon_minute
         WHERE minute_ms >= $1 AND model <> '-' GROUP BY {col}",
        sum("answers"),
        sum("fallbacks"),
        sum("closed"),
        sum("converted_10"),
        sum("converted_20"),
        sum("stream_requests"),
        sum("stream_ok"),
    );
    let mut ok = HashMap::new();
    for r in sink.rows(&sql, &[since])? {
        let name = r[0].text();
        ok.insert(name.clone(), r[7].int());
        out.insert(
            name.clone(),
            Group {
                model: name,
                answers: r[1].int(),
                fallbacks: r[2].int(),
                closed: r[3].int(),
                converted_10: r[4].int(),
                converted_20: r[5].int(),
                stream_requests: r[6].int(),
                ..Group::default()
            },
        );
    }
    let sql = format!(
        "SELECT {col}, count(DISTINCT user_id) FROM mon_answers
         WHERE late = 0 AND time_ms >= $1 GROUP BY {col}"
    );
    for r in sink.rows(&sql, &[since])? {
        if let Some(g) = out.get_mut(&r[0].text()) {
            g.users = r[1].int();
        }
    }
    let sql = format!(
        "SELECT {col}, count(DISTINCT user_id) FROM mon_outcomes
         WHERE converted_20 = 1 AND time_ms >= $1 GROUP BY {col}"
    );
    for r in sink.rows(&sql, &[since])? {
        if let Some(g) = out.get_mut(&r[0].text()) {
            g.users_converted_20 = r[1].int();
        }
    }
    let sql = format!(
        "SELECT {col}, {}, {} FROM mon_provisional GROUP BY {col}",
        sum("open"),
        sum("converted_20")
    );
    for r in sink.rows(&sql, &[])? {
        if let Some(g) = out.get_mut(&r[0].text()) {
            g.provisional = r[1].int();
            g.provisional_converted_20 = r[2].int();
        }
    }
    let sql = format!(
        "SELECT {col}, le_ms, {} FROM mon_latency_minute
         WHERE source = 'server' AND minute_ms >= $1 AND model <> '-' GROUP BY {col}, le_ms",
        sum("n")
    );
    let mut lat: HashMap<String, BTreeMap<i64, i64>> = HashMap::new();
    for r in sink.rows(&sql, &[since])? {
        *lat.entry(r[0].text())
            .or_default()
            .entry(r[1].int())
            .or_default() += r[2].int();
    }
    for g in out.values_mut() {
        g.online_quality = ratio(g.users_converted_20, g.users);
        g.availability = ratio(ok.get(&g.model).copied().unwrap_or(0), g.stream_requests);
        if let Some(b) = lat.get(&g.model) {
            g.latency_p50_ms = percentile(b, 0.50);
            g.latency_p95_ms = percentile(b, 0.95);
            g.latency_p99_ms = percentile(b, 0.99);
        }
    }
    Ok(out.into_values().collect())
}

/// Every figure over `[until − since_ms, until)`.
pub fn report(sink: &mut dyn Sink, since_ms: i64, by: By) -> Result<Report, MonitorError> {
    let until = until_ms(sink)?;
    let since = until - since_ms;
    let by_model = groups(sink, By::Model, since)?;
    let by_arm = match by {
        By::Arm => Some(groups(sink, By::Arm, since)?),
        By::Model => None,
    };
    let sql = format!(
        "SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM mon_minute WHERE minute_ms >= $1 AND model = '-'",
        sum("stream_requests"),
        sum("stream_ok"),
        sum("stream_5xx"),
        sum("stream_unlogged"),
        sum("late_events"),
        sum("late_answers"),
        sum("bad"),
        sum("watches"),
    );
    let t = sink.rows(&sql, &[since])?;
    let t = t.first().cloned().unwrap_or_else(|| vec![Value::Int(0); 8]);
    // Late answers are counted in their model's rows.
    let sql = format!(
        "SELECT {} FROM mon_minute WHERE minute_ms >= $1",
        sum("late_answers")
    );
    let late_answers = sink
        .rows(&sql, &[since])?
        .first()
        .and_then(|r| r.first())
        .map_or(0, Value::int);
    let mut stream = StreamFigures {
        requests: t[0].int(),
        availability: ratio(t[1].int(), t[0].int()),
        status_5xx: t[2].int(),
        unlogged: t[3].int(),
        watches: t[7].int(),
        ..StreamFigures::default()
    };
    let sql = format!(
        "SELECT le_ms, {} FROM mon_latency_minute WHERE source = 'stream' AND model = '-'
         AND minute_ms >= $1 GROUP BY le_ms",
        sum("n")
    );
    let b: BTreeMap<i64, i64> = sink
        .rows(&sql, &[since])?
        .iter()
        .map(|r| (r[0].int(), r[1].int()))
        .collect();
    stream.latency_p50_ms = percentile(&b, 0.50);
    stream.latency_p95_ms = percentile(&b, 0.95);
    stream.latency_p99_ms = percentile(&b, 0.99);
    Ok(Report {
        since_ms: since,
        until_ms: until,
        by_model,
        by_arm,
        late_events: t[4].int(),
        late_answers,
        bad_messages: t[6].int(),
        stream,
        health: health(sink, until)?,
    })
}

/// Recommendation health of the hour before `until`.
pub fn health(sink: &mut dyn Sink, until: i64) -> Result<Health, MonitorError> {
    let hour = until - 3_600_000;
    let day = until - 86_400_000;
    let sql = format!(
        "SELECT movie, {} FROM mon_item_minute WHERE minute_ms >= $1 GROUP BY movie",
        sum("n")
    );
    let recommended: HashMap<String, i64> = sink
        .rows(&sql, &[hour])?
        .iter()
        .map(|r| (r[0].text(), r[1].int()))
        .collect();
    let sql = format!(
        "SELECT movie, {} FROM mon_watch_minute WHERE minute_ms >= $1 GROUP BY movie",
        sum("n")
    );
    let watched: HashMap<String, i64> = sink
        .rows(&sql, &[day])?
        .iter()
        .map(|r| (r[0].text(), r[1].int()))
        .collect();
    let sql = format!(
        "SELECT {}, {} FROM mon_minute WHERE minute_ms >= $1 AND model <> '-'",
        sum("answers"),
        sum("fallbacks")
    );
    let f = sink.rows(&sql, &[hour])?;
    let (answers, fallbacks) = f.first().map_or((0, 0), |r| (r[0].int(), r[1].int()));
    let mut catalogue: Vec<&String> = watched.keys().chain(recommended.keys()).collect();
    catalogue.sort();
    catalogue.dedup();
    let max_watch = watched.values().copied().max().unwrap_or(0);
    let total_rec: i64 = recommended.values().sum();
    let avg_popularity = (total_rec > 0 && max_watch > 0).then(|| {
        recommended
            .iter()
            .map(|(m, &n)| n as f64 * watched.get(m).copied().unwrap_or(0) as f64)
            .sum::<f64>()
            / (total_rec as f64 * max_watch as f64)
    });
    let mut counts: Vec<i64> = catalogue
        .iter()
        .map(|m| recommended.get(*m).copied().unwrap_or(0))
        .collect();
    counts.sort_unstable();
    Ok(Health {
        coverage: ratio(recommended.len() as i64, catalogue.len() as i64),
        avg_popularity,
        gini: gini(&counts),
        fallback_share: ratio(fallbacks, answers),
        distinct_recommended: recommended.len() as i64,
        catalogue: catalogue.len() as i64,
    })
}

/// Gini coefficient of sorted non-negative counts (0: even, →1: one item).
pub(crate) fn gini(sorted: &[i64]) -> Option<f64> {
    let n = sorted.len() as f64;
    let total: i64 = sorted.iter().sum();
    if sorted.is_empty() || total == 0 {
        return None;
    }
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as f64 + 1.0) * x as f64)
        .sum();
    Some((2.0 * weighted) / (n * total as f64) - (n + 1.0) / n)
}

/// One minute of one model version, for charts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MinutePoint {
    pub minute_ms: i64,
    pub model: String,
    pub answers: i64,
    pub closed: i64,
    pub converted_20: i64,
    pub stream_requests: i64,
    pub stream_ok: i64,
    pub latency_p95_ms: Option<f64>,
}

/// Per-minute figures per model version since `until − since_ms`
/// (stream-wide figures under model `-`: every stream line, on arrival).
pub fn minutes(sink: &mut dyn Sink, since_ms: i64) -> Result<Vec<MinutePoint>, MonitorError> {
    let until = until_ms(sink)?;
    let since = until - since_ms;
    let sql = format!(
        "SELECT minute_ms, model, {}, {}, {}, {}, {} FROM mon_minute WHERE minute_ms >= $1
         GROUP BY minute_ms, model ORDER BY minute_ms, model",
        sum("answers"),
        sum("closed"),
        sum("converted_20"),
        sum("stream_requests"),
        sum("stream_ok")
    );
    let mut pts: Vec<MinutePoint> = sink
        .rows(&sql, &[since])?
        .iter()
        .map(|r| MinutePoint {
            minute_ms: r[0].int(),
            model: r[1].text(),
            answers: r[2].int(),
            closed: r[3].int(),
            converted_20: r[4].int(),
            stream_requests: r[5].int(),
            stream_ok: r[6].int(),
            latency_p95_ms: None,
        })
        .collect();
    let sql = format!(
        "SELECT minute_ms, model, le_ms, {} FROM mon_latency_minute
         WHERE source = 'server' AND minute_ms >= $1 GROUP BY minute_ms, model, le_ms",
        sum("n")
    );
    let mut lat: HashMap<(i64, String), BTreeMap<i64, i64>> = HashMap::new();
    for r in sink.rows(&sql, &[since])? {
        lat.entry((r[0].int(), r[1].text()))
            .or_default()
            .insert(r[2].int(), r[3].int());
    }
    for p in &mut pts {
        if let Some(b) = lat.get(&(p.minute_ms, p.model.clone())) {
            p.latency_p95_ms = percentile(b, 0.95);
        }
    }
    Ok(pts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_bucket_bounds_and_gini_spans_even_to_one() {
        let b: BTreeMap<i64, i64> = [(10, 50), (400, 45), (450, 5)].into_iter().collect();
        assert_eq!(percentile(&b, 0.5), Some(10.0));
        assert_eq!(percentile(&b, 0.95), Some(400.0));
        assert_eq!(percentile(&b, 0.99), Some(450.0));
        assert_eq!(percentile(&BTreeMap::new(), 0.5), None);
        assert_eq!(gini(&[5, 5, 5, 5]), Some(0.0));
        let g = gini(&[0, 0, 0, 10]).expect("gini");
        assert!((g - 0.75).abs() < 1e-9, "{g}");
        assert_eq!(gini(&[0, 0]), None);
    }
}

/// Guard figures of one route (config rule and arm) over a time range,
/// from the raw answers: what a canary controller compares.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArmHealth {
    /// The route label the server logged (`rules[0] canary canary`, `default`).
    pub arm: String,
    pub answers: u64,
    /// Answers the routed model failed (`fallback_error`).
    pub errors: u64,
    /// Answers that were popularity fallbacks (unknown user or error).
    pub fallbacks: u64,
    pub error_rate: Option<f64>,
    pub fallback_share: Option<f64>,
    /// Server-side latency, nearest-rank 95th percentile of the answers.
    pub latency_p95_ms: Option<f64>,
}

/// [`ArmHealth`] per route of the non-late answers with `since_ms <=
/// time_ms < until_ms`, sorted by route.
pub fn arm_health(
    sink: &mut dyn Sink,
    since_ms: i64,
    until_ms: i64,
) -> Result<Vec<ArmHealth>, MonitorError> {
    let rows = sink.rows(
        "SELECT arm, status, latency_us FROM mon_answers
         WHERE late = 0 AND time_ms >= $1 AND time_ms < $2",
        &[since_ms, until_ms],
    )?;
    let mut by: BTreeMap<String, (ArmHealth, Vec<i64>)> = BTreeMap::new();
    for r in rows {
        let arm = r[0].text();
        let status = r[1].text();
        let e = by.entry(arm.clone()).or_insert_with(|| {
            (
                ArmHealth {
                    arm,
                    ..ArmHealth::default()
                },
                Vec::new(),
            )
        });
        e.0.answers += 1;
        e.0.errors += u64::from(status == "fallback_error");
        e.0.fallbacks += u64::from(status != "ok");
        e.1.push(r[2].int());
    }
    Ok(by
        .into_values()
        .map(|(mut h, mut lat)| {
            lat.sort_unstable();
            let n = h.answers as f64;
            if h.answers > 0 {
                h.error_rate = Some(h.errors as f64 / n);
                h.fallback_share = Some(h.fallbacks as f64 / n);
                let rank = ((0.95 * n).ceil() as usize).clamp(1, lat.len());
                h.latency_p95_ms = Some(lat[rank - 1] as f64 / 1000.0);
            }
            h
        })
        .collect())
}

#[cfg(test)]
mod arm_health_tests {
    use super::*;
    use crate::monitor::sink::Position;
    use crate::monitor::sqlite::SqliteSink;
    use crate::monitor::{JoinConfig, Monitor};
    use crate::segment::{RequestRecord, ServedBy};

    #[test]
    fn per_route_rates_and_p95_come_from_the_answers_in_range() {
        let dir = tempfile::tempdir().expect("tmp");
        let sink = SqliteSink::open(&dir.path().join("m.db")).expect("db");
        let mut mon = Monitor::open(Box::new(sink), JoinConfig::default()).expect("monitor");
        for i in 0..40u64 {
            let (route, status) = if i % 2 == 0 {
                (
                    "rules[0] r canary",
                    if i % 4 == 0 {
                        "fallback_unknown_user"
                    } else {
                        "ok"
                    },
                )
            } else {
                ("default", if i == 1 { "fallback_error" } else { "ok" })
            };
            let rec = RequestRecord {
                id: uuid::Uuid::from_u128(u128::from(i) + 1)
                    .hyphenated()
                    .to_string(),
                time: 1_000_000 + i as i64 * 1000,
                user: i as i64,
                served: ServedBy {
                    model: "m".into(),
                    model_digest: "0".repeat(64),
                    dataset: "d".into(),
                    dataset_digest: "0".repeat(64),
                    train_run: "0".repeat(64),
                    code_commit: "0".repeat(40),
                    config_digest: "0".repeat(64),
                },
                route: route.into(),
                status: status.into(),
                latency_us: (i as i64 + 1) * 1000,
                items: vec!["a+1999".into()],
            };
            let pos = Position {
                source: "segment:t".into(),
                part: 0,
                off: i as i64,
            };
            mon.request_record(pos, rec);
        }
        mon.flush().expect("flush");
        let h = arm_health(mon.sink_mut(), 1_000_000, 1_040_000).expect("health");
        assert_eq!(h.len(), 2);
        let (canary, default) = (&h[1], &h[0]);
        assert_eq!(canary.arm, "rules[0] r canary");
        assert_eq!(
            (canary.answers, canary.fallbacks, canary.errors),
            (20, 10, 0)
        );
        assert_eq!(default.errors, 1);
        assert_eq!(default.error_rate, Some(0.05));
        // Canary latencies 1, 3, ..., 39 ms: the 19th of 20 is 37 ms.
        assert_eq!(canary.latency_p95_ms, Some(37.0));
        let later = arm_health(mon.sink_mut(), 1_030_000, i64::MAX).expect("health");
        assert_eq!(later.iter().map(|h| h.answers).sum::<u64>(), 10);
    }
}
