//! Ingest: the movie event stream from Kafka into a versioned dataset.
//!
//! This module owns consuming a topic ([`kafka`]), turning messages into
//! dataset rows and a quarantine ([`collect`]), joining user attributes
//! ([`users`]), checking quality and drift ([`quality`]), and registering
//! the result as the next `dataset_N` through
//! [`Workspace::record_run`]. It also turns a dataset back into a stream
//! ([`replay`]). It never prints and reads no environment; the CLI does.
//!
//! # Delivery: nothing lost, nothing twice
//!
//! 1. Start positions: per partition, the later of the group's committed
//!    offset and the end of the last ingest run recorded in `lineage.db`
//!    for the same brokers, topic and group; the earliest offset when
//!    neither exists.
//! 2. Consume exactly `--max-messages` messages (or for `--minutes`).
//! 3. Write `data/<dataset_N>/` and register it with `record_run`, which
//!    makes the objects and the run record (with the offset ranges) durable
//!    before it returns.
//! 4. Only then commit the offsets to Kafka.
//!
//! A crash before 3 completes commits nothing and records nothing: the next
//! run re-reads the same messages. A crash between 3 and 4 leaves Kafka's
//! committed offsets behind, but step 1 resumes from the recorded ranges,
//! so the messages already in a dataset are not read again. The run record
//! is the source of truth; the Kafka commit keeps other tools (lag
//! monitors, `kafka-consumer-groups`) informed.
//!
//! # Layout
//!
//! `data/<dataset_N>/` holds the files of [`crate::dataset`] plus
//! `quarantine.jsonl`: every message that did not parse, one JSON object a
//! line (`partition`, `offset`, `kind`, `reason`, `line`, `bytes`). The
//! quarantine lives inside the dataset so it is versioned, pushed and
//! audited with the data it was cut from.

pub mod collect;
pub mod kafka;
pub mod quality;
pub mod replay;
pub mod users;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

pub use kafka::Stop;
pub use quality::{QualityReport, Thresholds};
pub use users::UserSource;

use crate::dataset::{Dataset, DatasetError, MovieInfo, UserInfo};
use crate::lineage::{ArtifactRef, ArtifactRow};
use crate::progress::Progress;
use crate::store::Digest;
use crate::workspace::{Kind, NewDataset, RunSpec, Workspace, WorkspaceError};

use collect::Collector;
use users::UserError;

/// The file of rejected messages inside an ingested dataset directory.
pub(crate) const QUARANTINE_FILE: &str = "quarantine.jsonl";
/// The consumer group used when none is given.
pub(crate) const DEFAULT_GROUP: &str = "recsys-ingest";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka: {op} topic {topic} at {brokers}: {source}")]
    Kafka {
        op: &'static str,
        brokers: String,
        topic: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("topic {topic} does not exist at {brokers} (or has no partitions)")]
    NoTopic { topic: String, brokers: String },
    #[error("no messages arrived on topic {topic} before the time limit; nothing recorded")]
    NoMessages { topic: String },
    #[error("severe drift against {reference}: {}", findings.join("; "))]
    Drift {
        reference: String,
        findings: Vec<String>,
        quality: Box<QualityReport>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    #[error(transparent)]
    Users(#[from] UserError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IngestError + 'a {
    move |source| {
        IngestError::Io(crate::fs_error::FsError {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub stop: Stop,
    pub users: UserSource,
    pub allow_drift: bool,
    pub thresholds: Thresholds,
}

impl IngestOptions {
    pub fn new(brokers: &str, topic: &str, stop: Stop) -> IngestOptions {
        IngestOptions {
            brokers: brokers.into(),
            topic: topic.into(),
            group: DEFAULT_GROUP.into(),
            stop,
            users: UserSource::None,
            allow_drift: false,
            thresholds: Thresholds::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventCounts {
    pub watch: u64,
    pub rate: u64,
    pub recommendation: u64,
}

/// One partition's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionOffsets {
    /// Where reading started (next offset), `None` = the earliest.
    pub start: Option<i64>,
    /// `committed`, `recorded` (an earlier run's record) or `earliest`.
    pub start_from: &'static str,
    /// First and last offset consumed, inclusive; absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<i64>,
    pub messages: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub dataset: String,
    pub digest: Digest,
    pub run: Option<Digest>,
    /// The dataset directory, relative to the project root.
    pub path: String,
    pub topic: String,
    pub group: String,
    pub messages: u64,
    pub events: EventCounts,
    pub requests: u64,
    pub quarantined: u64,
    /// Partition id -> offsets consumed.
    pub offsets: BTreeMap<String, PartitionOffsets>,
    pub quality: QualityReport,
    /// `max_messages` or `minutes`.
    pub stopped_by: &'static str,
    /// Offsets were committed to the group after the dataset was recorded.
    pub committed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_error: Option<String>,
    pub seconds: f64,
}

/// The previous dataset, read back for drift checks, movie info and the
/// user-attribute cache.
struct Reference {
    row: ArtifactRow,
    data: Dataset,
    from_stream: bool,
    /// The Kafka topic it was ingested from (`None`: not ingested).
    topic: Option<String>,
}

/// Consume, check, write and register one dataset; commit offsets last.
pub fn run(ws: &Workspace, opts: &IngestOptions, progress: &dyn Progress) -> Result<IngestReport> {
    if opts.stop.max_messages.is_none() && opts.stop.duration.is_none() {
        return Err(IngestError::Invalid(
            "give --max-messages or --minutes: ingest never stops at the end of a partition".into(),
        ));
    }
    if opts.stop.max_messages == Some(0) {
        return Err(IngestError::Invalid(
            "--max-messages must be at least 1".into(),
        ));
    }
    let t0 = Instant::now();
    let started = ws.now_ms();
    // Fail on a bad user source before consuming anything.
    let user_file = match &opts.users {
        UserSource::File(p) => Some(users::read_user_file(p)?),
        UserSource::Api(url) => {
            users::check_url(url)?;
            None
        }
        UserSource::None => None,
    };
    let mut warnings = Vec::new();
    // Two roles: the latest dataset of any source seeds user attributes
    // and movie info (a MovieLens import knows both); drift is judged only
    // against the latest dataset ingested from this same topic, so the
    // first ingest after an import is not refused for being another source.
    let reference = previous_dataset(ws, None, &mut warnings)?;
    let before = warnings.len();
    let drift_ref = match &reference {
        Some(r) if r.topic.as_deref() == Some(opts.topic.as_str()) => None,
        _ => previous_dataset(ws, Some(&opts.topic), &mut warnings)?,
    };
    // Say "first dataset from this topic" only when that is why.
    let drift_unreadable = warnings.len() > before;
    warnings.dedup();

    let source = kafka::KafkaSource::connect(&opts.brokers, &opts.topic, &opts.group)?;
    let partitions = source.partitions()?;
    let committed = source.committed(&partitions)?;
    let recorded = recorded_positions(ws, &opts.brokers, &opts.topic, &opts.group)?;
    let mut starts: BTreeMap<i32, (Option<i64>, &'static str)> = BTreeMap::new();
    for &p in &partitions {
        let start = match (committed.get(&p), recorded.get(&p)) {
            (Some(&c), Some(&r)) if r > c => (Some(r), "recorded"),
            (Some(&c), _) => (Some(c), "committed"),
            (None, Some(&r)) => (Some(r), "recorded"),
            (None, None) => (None, "earliest"),
        };
        starts.insert(p, start);
    }
    source.assign(&starts.iter().map(|(&p, &(o, _))| (p, o)).collect())?;
    let mut c = Collector::new();
    let outcome = source.consume(&opts.stop, &mut c);
    crate::failpoint::hit("ingest:after-consume");
    if c.messages == 0 {
        return Err(IngestError::NoMessages {
            topic: opts.topic.clone(),
        });
    }
    if outcome.errors > 0 {
        warnings.push(format!(
            "the consumer reported {} errors (last: {})",
            outcome.errors,
            outcome.last_error.as_deref().unwrap_or("-")
        ));
    }

    // Rows.
    let mut events = std::mem::take(&mut c.events);
    let duplicate_events = quality::dedupe(&mut events);
    let requests = std::mem::take(&mut c.requests);
    let user_ids: BTreeSet<u64> = events
        .iter()
        .map(|e| e.user)
        .chain(requests.iter().map(|r| r.user))
        .collect();
    let users = join_users(
        &user_ids,
        reference.as_ref(),
        user_file,
        opts,
        &mut warnings,
    );
    let movies = movie_table(&events, reference.as_ref());

    // Quality.
    let known_users = users
        .iter()
        .filter(|u| u.age.is_some() || u.gender.is_some() || u.occupation.is_some())
        .count() as u64;
    let mut q = QualityReport {
        schema_violations: c
            .violations
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        out_of_range_ratings: c.out_of_range_ratings(),
        duplicate_events,
        users: users.len() as u64,
        unknown_users: users.len() as u64 - known_users,
        movies: movies.len() as u64,
        unknown_movies: None,
        drift: None,
        warnings,
    };
    let current = quality::Profile::of(&events, true);
    if let Some(r) = &reference {
        let known: HashSet<String> = r
            .data
            .movies
            .iter()
            .map(|m| m.movie.clone())
            .chain(r.data.events.iter().map(|e| e.movie.clone()))
            .collect();
        q.unknown_movies = Some(quality::count_unknown(
            movies.iter().map(|m| &m.movie),
            &known,
        ));
    }
    let same_topic = match (&drift_ref, &reference) {
        (Some(d), _) => Some(d),
        (None, Some(r)) if r.topic.as_deref() == Some(opts.topic.as_str()) => Some(r),
        _ => None,
    };
    match same_topic {
        Some(r) => {
            let prev = quality::Profile::of(&r.data.events, r.from_stream);
            q.drift = Some(quality::drift(
                &r.row.name,
                &prev,
                &current,
                &opts.thresholds,
            ));
        }
        None if !drift_unreadable => q.warnings.push(format!(
            "first dataset from topic {}: drift not checked (no earlier ingest of it)",
            opts.topic
        )),
        None => {}
    }
    let severe: Vec<String> = q.severe().iter().map(|f| f.message.clone()).collect();
    if !severe.is_empty() && !opts.allow_drift {
        return Err(IngestError::Drift {
            reference: same_topic.map(|r| r.row.name.clone()).unwrap_or_default(),
            findings: severe,
            quality: Box::new(q),
        });
    }

    // Source description: what the run record and dataset.json say.
    let offsets: BTreeMap<String, PartitionOffsets> = starts
        .iter()
        .map(|(&p, &(start, start_from))| {
            let r = c.ranges.get(&p);
            (
                p.to_string(),
                PartitionOffsets {
                    start,
                    start_from,
                    first: r.map(|r| r.first),
                    last: r.map(|r| r.last),
                    messages: r.map_or(0, |r| r.messages),
                },
            )
        })
        .collect();
    let stop_json = serde_json::json!({
        "max_messages": opts.stop.max_messages,
        "minutes": opts.stop.duration.map(|d| d.as_secs_f64() / 60.0),
    });
    let source_json = serde_json::json!({
        "kafka": {
            "brokers": opts.brokers,
            "topic": opts.topic,
            "group": opts.group,
            "partitions": partitions,
            "offsets": offsets,
        },
        "stop": stop_json,
        "stopped_by": outcome.stopped_by,
    });

    let dataset = Dataset {
        events,
        requests,
        users,
        movies,
        source: source_json.clone(),
    };

    let counts = EventCounts {
        watch: c.watch,
        rate: c.rate,
        recommendation: c.recommendation,
    };
    let mut spec = RunSpec::new("ingest", started);
    spec.params = serde_json::json!({
        "group": opts.group,
        "stop": stop_json,
        "allow_drift": opts.allow_drift,
        "users": match &opts.users {
            UserSource::None => serde_json::Value::Null,
            UserSource::File(p) => serde_json::json!({ "file": p }),
            UserSource::Api(u) => serde_json::json!({ "api": u }),
        },
        "thresholds": opts.thresholds,
    });
    spec.metrics = serde_json::json!({
        "messages": c.messages,
        "events": counts,
        "requests": dataset.requests.len(),
        "events_kept": dataset.events.len(),
        "quarantined": c.quarantined(),
        "quality": q.to_metrics(),
    });
    spec.source = source_json;
    if let Some(r) = &reference {
        spec.inputs.push(ArtifactRef {
            digest: r.row.digest,
            kind: r.row.kind.clone(),
            name: r.row.name.clone(),
            size: r.row.size,
            files: r.row.files,
            path: r.row.path.clone(),
        });
    }
    // Written under a temporary name and renamed into place. A crashed
    // ingest's own output (renamed into place, killed before it was
    // recorded) is replaced: its messages were neither recorded nor
    // committed, so this run has read them again. Anything else at the
    // name is not ours to delete.
    let (run_id, added) = ws.record_dataset(
        NewDataset {
            dataset: &dataset,
            extra: vec![(QUARANTINE_FILE, c.quarantine_jsonl())],
            replaceable: Some(&is_ingest_leftover),
            failpoint: Some("ingest:after-write"),
        },
        spec,
        progress,
    )?;
    crate::failpoint::hit("ingest:after-record");

    // The dataset is durable: now, and only now, move the group forward.
    let next: BTreeMap<i32, i64> = c
        .ranges
        .iter()
        .map(|(&p, r)| (p, r.last.saturating_add(1)))
        .collect();
    let commit_error = source.commit(&next).err().map(|e| e.to_string());
    Ok(IngestReport {
        dataset: added.name,
        digest: added.digest,
        run: run_id,
        path: added.path,
        topic: opts.topic.clone(),
        group: opts.group.clone(),
        messages: c.messages,
        events: counts,
        requests: dataset.requests.len() as u64,
        quarantined: c.quarantined(),
        offsets,
        quality: q,
        stopped_by: outcome.stopped_by,
        committed: commit_error.is_none(),
        commit_error,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A directory an ingest wrote: `dataset.json` naming a Kafka source, and
/// a quarantine file.
fn is_ingest_leftover(dir: &Path) -> bool {
    let meta = std::fs::read(dir.join(crate::dataset::DATASET_JSON)).ok();
    let source_is_kafka = meta
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["source"]["kafka"]["topic"].is_string());
    source_is_kafka && dir.join(QUARANTINE_FILE).is_file()
}

/// Next offset per partition after the ingest runs recorded for these
/// brokers, topic and group. Keyed on the brokers string too: a same-named
/// topic on another cluster must not be skipped (re-reading is recoverable,
/// skipping is not).
fn recorded_positions(
    ws: &Workspace,
    brokers: &str,
    topic: &str,
    group: &str,
) -> Result<BTreeMap<i32, i64>> {
    let mut out: BTreeMap<i32, i64> = BTreeMap::new();
    for id in ws.lineage.run_ids().map_err(WorkspaceError::from)? {
        let Some(run) = ws.lineage.run(&id).map_err(WorkspaceError::from)? else {
            continue;
        };
        let k = &run.source["kafka"];
        if run.kind != "ingest"
            || k["brokers"].as_str() != Some(brokers)
            || k["topic"].as_str() != Some(topic)
            || k["group"].as_str() != Some(group)
        {
            continue;
        }
        let Some(offsets) = k["offsets"].as_object() else {
            continue;
        };
        for (p, o) in offsets {
            if let (Ok(p), Some(last)) = (p.parse::<i32>(), o["last"].as_i64()) {
                let next = last.saturating_add(1);
                let e = out.entry(p).or_insert(next);
                *e = (*e).max(next);
            }
        }
    }
    Ok(out)
}

/// The highest-numbered dataset (with `topic`: the highest ingested from
/// that topic), read from the store. A dataset that cannot be read (not in
/// the local store, not in the dataset format) is a warning: drift is then
/// not checked, and the report says so.
fn previous_dataset(
    ws: &Workspace,
    topic: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<Reference>> {
    let rows = ws
        .lineage
        .artifacts(Some(Kind::Dataset.as_str()))
        .map_err(WorkspaceError::from)?;
    let mut numbered: Vec<(u64, ArtifactRow)> = rows
        .into_iter()
        .filter_map(|r| crate::text::number_after(&r.name, Kind::Dataset.prefix()).map(|n| (n, r)))
        .collect();
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (_, row) in numbered {
        let run = ws.lineage.run(&row.run).map_err(WorkspaceError::from)?;
        let from_stream = run.as_ref().is_some_and(|r| r.kind == "ingest");
        let its_topic = run
            .as_ref()
            .filter(|_| from_stream)
            .and_then(|r| r.source["kafka"]["topic"].as_str().map(str::to_string));
        if topic.is_some() && its_topic.as_deref() != topic {
            continue;
        }
        return match ws.load_dataset(&row) {
            Ok(data) => Ok(Some(Reference {
                row,
                data,
                from_stream,
                topic: its_topic,
            })),
            Err(e) => {
                warnings.push(format!(
                    "previous dataset {} could not be read ({e}); drift not checked",
                    row.name
                ));
                Ok(None)
            }
        };
    }
    Ok(None)
}

/// Attributes for each user: the previous dataset's users seed the cache,
/// then the file, then (for users still unknown) the API.
fn join_users(
    ids: &BTreeSet<u64>,
    reference: Option<&Reference>,
    file: Option<HashMap<u64, UserInfo>>,
    opts: &IngestOptions,
    warnings: &mut Vec<String>,
) -> Vec<UserInfo> {
    let mut known: HashMap<u64, UserInfo> = HashMap::new();
    if let Some(r) = reference {
        for u in &r.data.users {
            if u.age.is_some() || u.gender.is_some() || u.occupation.is_some() {
                known.insert(u.user, u.clone());
            }
        }
    }
    if let Some(f) = file {
        known.extend(f);
    }
    if let UserSource::Api(base) = &opts.users {
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|u| !known.contains_key(u))
            .collect();
        if !missing.is_empty() {
            let f = users::fetch_users(base, &missing);
            if f.failures > 0 {
                warnings.push(format!(
                    "user API: {} of {} requests failed{} (last: {})",
                    f.failures,
                    f.requests,
                    if f.skipped > 0 {
                        format!(", {} users not asked", f.skipped)
                    } else {
                        String::new()
                    },
                    f.last_error.as_deref().unwrap_or("-")
                ));
            }
            known.extend(f.found);
        }
    }
    ids.iter()
        .map(|&u| {
            known.remove(&u).unwrap_or(UserInfo {
                user: u,
                age: None,
                gender: None,
                occupation: None,
            })
        })
        .collect()
}

/// One row per movie in `events`, sorted by id: the previous dataset's
/// info when it has the movie, else the year read from the id's
/// `+YYYY` suffix.
fn movie_table(
    events: &[crate::dataset::DataEvent],
    reference: Option<&Reference>,
) -> Vec<MovieInfo> {
    let ids: BTreeSet<&str> = events.iter().map(|e| e.movie.as_str()).collect();
    let prev: HashMap<&str, &MovieInfo> = reference
        .map(|r| {
            r.data
                .movies
                .iter()
                .map(|m| (m.movie.as_str(), m))
                .collect()
        })
        .unwrap_or_default();
    ids.into_iter()
        .map(|id| match prev.get(id) {
            Some(m) => (*m).clone(),
            None => MovieInfo {
                movie: id.to_string(),
                title: None,
                year: year_of(id),
                genres: Vec::new(),
            },
        })
        .collect()
}

/// `toy+story+1995` -> 1995.
pub(crate) fn year_of(id: &str) -> Option<u32> {
    let last = id.rsplit('+').next()?;
    if last.len() == 4 && last.bytes().all(|b| b.is_ascii_digit()) && id.len() > 4 {
        last.parse().ok().filter(|y| (1870..=2100).contains(y))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_from_ids() {
        assert_eq!(year_of("toy+story+1995"), Some(1995));
        assert_eq!(year_of("1995"), None);
        assert_eq!(year_of("alien"), None);
        assert_eq!(year_of("blade+runner+2049+3000"), None);
        assert_eq!(year_of("x+12345"), None);
    }
}
