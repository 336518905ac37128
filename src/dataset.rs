//! The dataset directory format: what `import`, `ingest` and `train` share.
//!
//! ```text
//! data/<dataset_N>/      a directory artifact, kind dataset
//!   events.csv     time_ms,user,movie,kind,value   kind watch (value = minute) | rate (value = 1-5)
//!   requests.csv   time_ms,user,status,latency_ms,items   (items joined with ';'; may be empty)
//!   users.csv      user,age,gender,occupation           (empty field = unknown)
//!   movies.csv     movie,title,year,genres             (genres joined with '|')
//!   dataset.json   {"format":1,"source":{..},"counts":{..}}
//! ```
//!
//! Writing is deterministic: rows are sorted (events and requests by time,
//! then by every other field; users by id; movies by id), CSV fields are
//! quoted only when they must be, and `dataset.json` has a fixed key order.
//! So the same [`Dataset`] always gives the same bytes and the same digest.
//!
//! Reading is strict: headers must match exactly and every defect is a
//! [`DatasetError`] naming the file and line. This module reads and writes
//! the directory it is given and nothing else; recording it as a versioned
//! artifact is the pipeline's job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Interaction;
use crate::text::{CLIP, clip, clip_to};

/// Version of the directory layout, recorded in `dataset.json`.
pub(crate) const DATASET_FORMAT: u32 = 1;

pub(crate) const EVENTS_CSV: &str = "events.csv";
pub(crate) const REQUESTS_CSV: &str = "requests.csv";
pub(crate) const USERS_CSV: &str = "users.csv";
pub(crate) const MOVIES_CSV: &str = "movies.csv";
pub(crate) const DATASET_JSON: &str = "dataset.json";

const EVENTS_HEADER: [&str; 5] = ["time_ms", "user", "movie", "kind", "value"];
const REQUESTS_HEADER: [&str; 5] = ["time_ms", "user", "status", "latency_ms", "items"];
const USERS_HEADER: [&str; 4] = ["user", "age", "gender", "occupation"];
const MOVIES_HEADER: [&str; 4] = ["movie", "title", "year", "genres"];

/// Every table of the format with its columns and their types, in file
/// order: what lineage tools are told the dataset holds (OpenLineage's
/// schema facet). The names are the headers above (a test checks).
pub(crate) const TABLES: [(&str, &[(&str, &str)]); 4] = [
    (
        EVENTS_CSV,
        &[
            ("time_ms", "int64"),
            ("user", "uint64"),
            ("movie", "string"),
            ("kind", "string"),
            ("value", "uint32"),
        ],
    ),
    (
        REQUESTS_CSV,
        &[
            ("time_ms", "int64"),
            ("user", "uint64"),
            ("status", "uint16"),
            ("latency_ms", "uint32"),
            ("items", "string"),
        ],
    ),
    (
        USERS_CSV,
        &[
            ("user", "uint64"),
            ("age", "uint32"),
            ("gender", "string"),
            ("occupation", "string"),
        ],
    ),
    (
        MOVIES_CSV,
        &[
            ("movie", "string"),
            ("title", "string"),
            ("year", "uint32"),
            ("genres", "string"),
        ],
    ),
];

/// What a user did with a movie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Watched one minute; `value` is the minute.
    Watch,
    /// Rated it; `value` is the rating, 1-5.
    Rate,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Watch => "watch",
            EventKind::Rate => "rate",
        }
    }
}

/// One watch or rate event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DataEvent {
    /// Unix milliseconds.
    pub time_ms: i64,
    pub user: u64,
    /// Course-style movie id (`toy+story+1995`).
    pub movie: String,
    pub kind: EventKind,
    /// The minute watched, or the rating (1-5).
    pub value: u32,
}

/// One recommendation request the service answered (or failed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestEvent {
    pub time_ms: i64,
    pub user: u64,
    pub status: u16,
    pub latency_ms: u32,
    /// The recommended movie ids, best first; empty for a failed request.
    pub items: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: u64,
    pub age: Option<u32>,
    pub gender: Option<String>,
    pub occupation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MovieInfo {
    /// Course-style movie id.
    pub movie: String,
    pub title: Option<String>,
    pub year: Option<u32>,
    pub genres: Vec<String>,
}

/// A whole dataset in memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    pub events: Vec<DataEvent>,
    pub requests: Vec<RequestEvent>,
    pub users: Vec<UserInfo>,
    pub movies: Vec<MovieInfo>,
    /// Where the data came from (import directory and file digests, Kafka
    /// topic and offsets, ...), recorded verbatim in `dataset.json`.
    pub source: serde_json::Value,
}

/// Row counts, as recorded in `dataset.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub events: u64,
    pub watch: u64,
    pub rate: u64,
    pub requests: u64,
    pub users: u64,
    pub movies: u64,
}

/// `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    pub format: u32,
    pub source: serde_json::Value,
    pub counts: Counts,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    /// A row or header that does not follow the format. `line` is 1-based.
    #[error("{path}:{line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// A value that cannot be written in the format.
    #[error("cannot write {what}: {reason}")]
    Invalid { what: String, reason: String },
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DatasetError + 'a {
    move |source| {
        DatasetError::Io(crate::fs_error::FsError {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Movie ids and item lists are joined with `;` in requests.csv and genres
/// with `|` in movies.csv, so neither may hold its separator.
fn check_token(what: &str, s: &str, sep: char) -> Result<()> {
    if s.is_empty() || s.contains(sep) || s.contains(['\n', '\r']) {
        return Err(DatasetError::Invalid {
            what: what.into(),
            reason: format!("{:?} is empty or contains {sep:?} or a line break", clip(s)),
        });
    }
    Ok(())
}

fn check_text(what: &str, s: &str) -> Result<()> {
    if s.contains(['\n', '\r']) {
        return Err(DatasetError::Invalid {
            what: what.into(),
            reason: format!("{:?} contains a line break", clip(s)),
        });
    }
    Ok(())
}

impl Dataset {
    /// Row counts of this dataset.
    pub fn counts(&self) -> Counts {
        let watch = self
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Watch)
            .count() as u64;
        Counts {
            events: self.events.len() as u64,
            watch,
            rate: self.events.len() as u64 - watch,
            requests: self.requests.len() as u64,
            users: self.users.len() as u64,
            movies: self.movies.len() as u64,
        }
    }

    /// Check every value can be written and read back unchanged.
    fn validate(&self) -> Result<()> {
        for e in &self.events {
            check_token("movie id", &e.movie, ',')?;
            check_token("movie id", &e.movie, ';')?;
            if e.kind == EventKind::Rate && !(1..=5).contains(&e.value) {
                return Err(DatasetError::Invalid {
                    what: format!("rating of {} by user {}", e.movie, e.user),
                    reason: format!("{} is not within 1-5", e.value),
                });
            }
        }
        for r in &self.requests {
            for i in &r.items {
                check_token("recommended movie id", i, ';')?;
            }
        }
        let mut users = BTreeSet::new();
        for u in &self.users {
            if !users.insert(u.user) {
                return Err(DatasetError::Invalid {
                    what: format!("user {}", u.user),
                    reason: "listed twice in the users table".into(),
                });
            }
            for s in [&u.gender, &u.occupation].into_iter().flatten() {
                check_text("user attribute", s)?;
            }
        }
        let mut movies = BTreeSet::new();
        for m in &self.movies {
            check_token("movie id", &m.movie, ',')?;
            if !movies.insert(m.movie.as_str()) {
                return Err(DatasetError::Invalid {
                    what: format!("movie {}", m.movie),
                    reason: "listed twice in the movies table".into(),
                });
            }
            if let Some(t) = &m.title {
                check_text("movie title", t)?;
            }
            for g in &m.genres {
                check_token("genre", g, '|')?;
            }
        }
        Ok(())
    }

    /// Write the dataset's five files into `dir` (created if missing;
    /// existing files of the same names are replaced). Deterministic: the
    /// same dataset always gives the same bytes.
    pub(crate) fn write_dir(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;

        let mut events: Vec<&DataEvent> = self.events.iter().collect();
        events.sort();
        write_csv(&dir.join(EVENTS_CSV), &EVENTS_HEADER, |w| {
            for e in events {
                w.write_record([
                    e.time_ms.to_string().as_str(),
                    &e.user.to_string(),
                    &e.movie,
                    e.kind.as_str(),
                    &e.value.to_string(),
                ])?;
            }
            Ok(())
        })?;

        let mut requests: Vec<&RequestEvent> = self.requests.iter().collect();
        requests.sort();
        write_csv(&dir.join(REQUESTS_CSV), &REQUESTS_HEADER, |w| {
            for r in requests {
                w.write_record([
                    r.time_ms.to_string().as_str(),
                    &r.user.to_string(),
                    &r.status.to_string(),
                    &r.latency_ms.to_string(),
                    &r.items.join(";"),
                ])?;
            }
            Ok(())
        })?;

        let mut users: Vec<&UserInfo> = self.users.iter().collect();
        users.sort_by_key(|u| u.user);
        write_csv(&dir.join(USERS_CSV), &USERS_HEADER, |w| {
            for u in users {
                w.write_record([
                    u.user.to_string().as_str(),
                    &u.age.map(|a| a.to_string()).unwrap_or_default(),
                    u.gender.as_deref().unwrap_or(""),
                    u.occupation.as_deref().unwrap_or(""),
                ])?;
            }
            Ok(())
        })?;

        let mut movies: Vec<&MovieInfo> = self.movies.iter().collect();
        movies.sort_by(|a, b| a.movie.cmp(&b.movie));
        write_csv(&dir.join(MOVIES_CSV), &MOVIES_HEADER, |w| {
            for m in movies {
                w.write_record([
                    m.movie.as_str(),
                    m.title.as_deref().unwrap_or(""),
                    &m.year.map(|y| y.to_string()).unwrap_or_default(),
                    &m.genres.join("|"),
                ])?;
            }
            Ok(())
        })?;

        let meta = DatasetMeta {
            format: DATASET_FORMAT,
            source: self.source.clone(),
            counts: self.counts(),
        };
        let mut json = serde_json::to_vec_pretty(&meta).map_err(|e| DatasetError::Invalid {
            what: DATASET_JSON.into(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        let p = dir.join(DATASET_JSON);
        fs::write(&p, json).map_err(io_err("write", &p))?;
        Ok(())
    }

    /// Read a dataset directory written by [`Dataset::write_dir`].
    pub fn read_dir(dir: &Path) -> Result<Dataset> {
        let mut files = BTreeMap::new();
        for name in [
            EVENTS_CSV,
            REQUESTS_CSV,
            USERS_CSV,
            MOVIES_CSV,
            DATASET_JSON,
        ] {
            let p = dir.join(name);
            files.insert(name, fs::read(&p).map_err(io_err("read", &p))?);
        }
        Dataset::from_files(dir, |name| files.remove(name).unwrap_or_default())
    }

    /// Parse the five files, handed out by `get(name)`; errors name them
    /// as `dir/<name>`.
    pub(crate) fn from_files(dir: &Path, mut get: impl FnMut(&str) -> Vec<u8>) -> Result<Dataset> {
        let path = |name: &str| dir.join(name);

        let meta_path = path(DATASET_JSON);
        let meta: DatasetMeta =
            serde_json::from_slice(&get(DATASET_JSON)).map_err(|e| DatasetError::Malformed {
                path: meta_path.clone(),
                line: e.line() as u64,
                reason: e.to_string(),
            })?;
        if meta.format != DATASET_FORMAT {
            return Err(DatasetError::Malformed {
                path: meta_path,
                line: 1,
                reason: format!(
                    "dataset format {} is not supported (this recsys reads {DATASET_FORMAT})",
                    meta.format
                ),
            });
        }

        let mut events = Vec::new();
        read_csv(&path(EVENTS_CSV), &get(EVENTS_CSV), &EVENTS_HEADER, |r| {
            let kind = match r.get(3) {
                "watch" => EventKind::Watch,
                "rate" => EventKind::Rate,
                other => return Err(format!("kind {other:?} is neither watch nor rate")),
            };
            let value: u32 = r.num(4, "value")?;
            if kind == EventKind::Rate && !(1..=5).contains(&value) {
                return Err(format!("rating {value} is not within 1-5"));
            }
            events.push(DataEvent {
                time_ms: r.num(0, "time_ms")?,
                user: r.num(1, "user")?,
                movie: r.token(2, "movie")?.to_string(),
                kind,
                value,
            });
            Ok(())
        })?;

        let mut requests = Vec::new();
        read_csv(
            &path(REQUESTS_CSV),
            &get(REQUESTS_CSV),
            &REQUESTS_HEADER,
            |r| {
                let items = r.get(4);
                let items: Vec<String> = if items.is_empty() {
                    Vec::new()
                } else {
                    items.split(';').map(str::to_string).collect()
                };
                if items.iter().any(String::is_empty) {
                    return Err("empty movie id in items".into());
                }
                requests.push(RequestEvent {
                    time_ms: r.num(0, "time_ms")?,
                    user: r.num(1, "user")?,
                    status: r.num(2, "status")?,
                    latency_ms: r.num(3, "latency_ms")?,
                    items,
                });
                Ok(())
            },
        )?;

        let mut users = Vec::new();
        let mut seen_users = BTreeSet::new();
        read_csv(&path(USERS_CSV), &get(USERS_CSV), &USERS_HEADER, |r| {
            let u = user_info(r)?;
            if !seen_users.insert(u.user) {
                return Err(format!("user {} is listed twice", u.user));
            }
            users.push(u);
            Ok(())
        })?;

        let mut movies = Vec::new();
        let mut seen_movies = BTreeSet::new();
        read_csv(&path(MOVIES_CSV), &get(MOVIES_CSV), &MOVIES_HEADER, |r| {
            let movie = r.token(0, "movie")?.to_string();
            if !seen_movies.insert(movie.clone()) {
                return Err(format!("movie {movie} is listed twice"));
            }
            let genres = r.get(3);
            movies.push(MovieInfo {
                movie,
                title: r.opt(1),
                year: r.opt_num(2, "year")?,
                genres: if genres.is_empty() {
                    Vec::new()
                } else {
                    genres.split('|').map(str::to_string).collect()
                },
            });
            Ok(())
        })?;

        let ds = Dataset {
            events,
            requests,
            users,
            movies,
            source: meta.source,
        };
        let counts = ds.counts();
        if counts != meta.counts {
            return Err(DatasetError::Malformed {
                path: path(DATASET_JSON),
                line: 1,
                reason: format!(
                    "counts {:?} do not match the files' rows {:?}",
                    meta.counts, counts
                ),
            });
        }
        Ok(ds)
    }

    /// The dataset as training input: (interactions, item names). Item
    /// index `i` is `item_names[i]`; names are every movie of the events
    /// and the movies table, sorted. Watches are aggregated to one implicit
    /// interaction per (user, movie) at its first watch; each rating is one
    /// explicit interaction. Times are milliseconds. Sorted by (time, user,
    /// item, rating) so the result does not depend on row order.
    pub fn interactions(&self) -> Result<(Vec<Interaction>, Vec<String>)> {
        let names: BTreeSet<&str> = self
            .events
            .iter()
            .map(|e| e.movie.as_str())
            .chain(self.movies.iter().map(|m| m.movie.as_str()))
            .collect();
        let index: HashMap<&str, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, i as u32))
            .collect();
        let mut first_watch: HashMap<(u32, u32), i64> = HashMap::new();
        let mut out = Vec::new();
        for e in &self.events {
            let user = u32::try_from(e.user).map_err(|_| DatasetError::Invalid {
                what: format!("user {}", e.user),
                reason: "user ids above 4294967295 cannot be trained on".into(),
            })?;
            let item = index.get(e.movie.as_str()).copied().unwrap_or(0);
            match e.kind {
                EventKind::Watch => {
                    let t = first_watch.entry((user, item)).or_insert(e.time_ms);
                    *t = (*t).min(e.time_ms);
                }
                EventKind::Rate => out.push(Interaction {
                    user,
                    item,
                    rating: Some(e.value as f32),
                    time: e.time_ms,
                }),
            }
        }
        out.extend(
            first_watch
                .into_iter()
                .map(|((user, item), time)| Interaction {
                    user,
                    item,
                    rating: None,
                    time,
                }),
        );
        out.sort_by(|a, b| {
            (a.time, a.user, a.item)
                .cmp(&(b.time, b.user, b.item))
                .then_with(|| a.rating.unwrap_or(0.0).total_cmp(&b.rating.unwrap_or(0.0)))
        });
        Ok((out, names.into_iter().map(str::to_string).collect()))
    }
}

fn write_csv(
    path: &Path,
    header: &[&str],
    rows: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>,
) -> Result<()> {
    let bad = |e: csv::Error| DatasetError::Invalid {
        what: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(header).map_err(bad)?;
    rows(&mut w).map_err(bad)?;
    let bytes = w.into_inner().map_err(|e| DatasetError::Invalid {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    fs::write(path, bytes).map_err(io_err("write", path))
}

/// One CSV row being parsed; field accessors return a reason on error.
struct Row<'a> {
    rec: &'a csv::StringRecord,
}

impl Row<'_> {
    fn get(&self, i: usize) -> &str {
        self.rec.get(i).unwrap_or("")
    }

    fn num<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<T, String> {
        let s = self.get(i);
        s.parse().map_err(|_| format!("bad {what} {:?}", clip(s)))
    }

    fn opt_num<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<Option<T>, String> {
        if self.get(i).is_empty() {
            Ok(None)
        } else {
            self.num(i, what).map(Some)
        }
    }

    fn opt(&self, i: usize) -> Option<String> {
        Some(self.get(i))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn token(&self, i: usize, what: &str) -> Result<&str, String> {
        let s = self.get(i);
        if s.is_empty() {
            Err(format!("empty {what}"))
        } else {
            Ok(s)
        }
    }
}

/// A `users.csv` row.
fn user_info(r: &Row<'_>) -> Result<UserInfo, String> {
    Ok(UserInfo {
        user: r.num(0, "user")?,
        age: r.opt_num(1, "age")?,
        gender: r.opt(2),
        occupation: r.opt(3),
    })
}

/// `users.csv` alone, for serving (routing on user attributes): a row that
/// does not parse is skipped and counted, because a bad row must not take
/// a model out of service, it only loses that user's attributes; a later
/// row for the same user wins. A wrong header or bytes that are not CSV
/// are still an error. Returns (users, skipped rows).
pub(crate) fn read_users_lenient(path: &Path, bytes: &[u8]) -> Result<(Vec<UserInfo>, usize)> {
    let mut users = Vec::new();
    let mut skipped = 0;
    read_csv_rows(path, bytes, &USERS_HEADER, Some(&mut skipped), |r| {
        users.push(user_info(r)?);
        Ok(())
    })?;
    Ok((users, skipped))
}

fn read_csv(
    path: &Path,
    bytes: &[u8],
    header: &[&str],
    each: impl FnMut(&Row<'_>) -> Result<(), String>,
) -> Result<()> {
    read_csv_rows(path, bytes, header, None, each)
}

/// [`read_csv`], but with `skipped` given, a row with the wrong number of
/// fields or that `each` refuses is counted there instead of failing the
/// file (the header and the CSV syntax still must be right).
fn read_csv_rows(
    path: &Path,
    bytes: &[u8],
    header: &[&str],
    mut skipped: Option<&mut usize>,
    mut each: impl FnMut(&Row<'_>) -> Result<(), String>,
) -> Result<()> {
    // Reasons quote input: never let one grow without bound.
    let malformed = |line: u64, reason: String| DatasetError::Malformed {
        path: path.to_path_buf(),
        line,
        reason: clip_to(&reason, 4 * CLIP).into_owned(),
    };
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut rec = csv::StringRecord::new();
    let mut first = true;
    loop {
        let line = r.position().line();
        match r.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                let reason = match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
                    _ => e.to_string(),
                };
                return Err(malformed(line, reason));
            }
        }
        let line = rec.position().map_or(line, |p| p.line());
        if first {
            first = false;
            if rec.iter().ne(header.iter().copied()) {
                return Err(malformed(
                    line,
                    format!(
                        "header is {:?}, expected {:?}",
                        clip(&rec.iter().collect::<Vec<_>>().join(",")),
                        header.join(",")
                    ),
                ));
            }
            continue;
        }
        let row = if rec.len() != header.len() {
            Err(format!(
                "expected {} fields, got {}",
                header.len(),
                rec.len()
            ))
        } else {
            each(&Row { rec: &rec })
        };
        match (row, skipped.as_deref_mut()) {
            (Ok(()), _) => {}
            (Err(_), Some(n)) => *n += 1,
            (Err(reason), None) => return Err(malformed(line, reason)),
        }
    }
    if first {
        return Err(malformed(1, "empty file: no header".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_columns_are_the_headers() {
        let headers: [(&str, &[&str]); 4] = [
            (EVENTS_CSV, &EVENTS_HEADER),
            (REQUESTS_CSV, &REQUESTS_HEADER),
            (USERS_CSV, &USERS_HEADER),
            (MOVIES_CSV, &MOVIES_HEADER),
        ];
        for ((file, cols), (hfile, header)) in TABLES.iter().zip(headers) {
            assert_eq!(*file, hfile);
            let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, header, "{file}");
        }
    }

    fn sample() -> Dataset {
        Dataset {
            events: vec![
                DataEvent {
                    time_ms: 2000,
                    user: 7,
                    movie: "toy+story+1995".into(),
                    kind: EventKind::Rate,
                    value: 4,
                },
                DataEvent {
                    time_ms: 1000,
                    user: 7,
                    movie: "toy+story+1995".into(),
                    kind: EventKind::Watch,
                    value: 1,
                },
                DataEvent {
                    time_ms: 1500,
                    user: 7,
                    movie: "toy+story+1995".into(),
                    kind: EventKind::Watch,
                    value: 2,
                },
                DataEvent {
                    time_ms: 1200,
                    user: 8,
                    movie: "heat+1995".into(),
                    kind: EventKind::Watch,
                    value: 0,
                },
            ],
            requests: vec![
                RequestEvent {
                    time_ms: 900,
                    user: 7,
                    status: 200,
                    latency_ms: 12,
                    items: vec!["heat+1995".into(), "toy+story+1995".into()],
                },
                RequestEvent {
                    time_ms: 950,
                    user: 8,
                    status: 500,
                    latency_ms: 3,
                    items: vec![],
                },
            ],
            users: vec![
                UserInfo {
                    user: 8,
                    age: None,
                    gender: None,
                    occupation: None,
                },
                UserInfo {
                    user: 7,
                    age: Some(29),
                    gender: Some("F".into()),
                    occupation: Some("college/grad student".into()),
                },
            ],
            movies: vec![
                MovieInfo {
                    movie: "toy+story+1995".into(),
                    title: Some("Toy Story, \"the\" one".into()),
                    year: Some(1995),
                    genres: vec!["Animation".into(), "Children's".into()],
                },
                MovieInfo {
                    movie: "heat+1995".into(),
                    title: None,
                    year: None,
                    genres: vec![],
                },
            ],
            source: serde_json::json!({"type": "test"}),
        }
    }

    fn sorted(mut d: Dataset) -> Dataset {
        d.events.sort();
        d.requests.sort();
        d.users.sort_by_key(|u| u.user);
        d.movies.sort_by(|a, b| a.movie.cmp(&b.movie));
        d
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let d = sample();
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        d.write_dir(a.path()).expect("write a");
        let mut shuffled = d.clone();
        shuffled.events.reverse();
        shuffled.users.reverse();
        shuffled.movies.reverse();
        shuffled.requests.reverse();
        shuffled.write_dir(b.path()).expect("write b");
        for f in [
            EVENTS_CSV,
            REQUESTS_CSV,
            USERS_CSV,
            MOVIES_CSV,
            DATASET_JSON,
        ] {
            assert_eq!(
                fs::read(a.path().join(f)).expect("a"),
                fs::read(b.path().join(f)).expect("b"),
                "{f}"
            );
        }
        let back = Dataset::read_dir(a.path()).expect("read");
        assert_eq!(back, sorted(d));
        let events = fs::read_to_string(a.path().join(EVENTS_CSV)).expect("events");
        assert!(
            events.starts_with("time_ms,user,movie,kind,value\n1000,7,toy+story+1995,watch,1\n")
        );
        let movies = fs::read_to_string(a.path().join(MOVIES_CSV)).expect("movies");
        assert!(
            movies.contains(
                "toy+story+1995,\"Toy Story, \"\"the\"\" one\",1995,Animation|Children's\n"
            ),
            "{movies}"
        );
        let requests = fs::read_to_string(a.path().join(REQUESTS_CSV)).expect("requests");
        assert!(requests.contains("900,7,200,12,heat+1995;toy+story+1995\n950,8,500,3,\n"));
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(a.path().join(DATASET_JSON)).expect("json"))
                .expect("parse");
        assert_eq!(meta["counts"]["watch"], 3);
        assert_eq!(meta["counts"]["rate"], 1);
        assert_eq!(meta["counts"]["requests"], 2);
    }

    #[test]
    fn interactions_aggregate_watches() {
        let (data, names) = sample().interactions().expect("interactions");
        assert_eq!(names, ["heat+1995", "toy+story+1995"]);
        let got: Vec<(u32, u32, Option<f32>, i64)> = data
            .iter()
            .map(|i| (i.user, i.item, i.rating, i.time))
            .collect();
        assert_eq!(
            got,
            [
                (7, 1, None, 1000),
                (8, 0, None, 1200),
                (7, 1, Some(4.0), 2000)
            ]
        );
    }

    #[test]
    fn write_rejects_values_the_format_cannot_hold() {
        let mut d = sample();
        d.events[0].value = 6;
        assert!(
            d.write_dir(tempfile::tempdir().expect("tmp").path())
                .is_err()
        );
        let mut d = sample();
        d.movies[0].genres.push("A|B".into());
        assert!(
            d.write_dir(tempfile::tempdir().expect("tmp").path())
                .is_err()
        );
        let mut d = sample();
        d.requests[0].items.push("x;y".into());
        assert!(
            d.write_dir(tempfile::tempdir().expect("tmp").path())
                .is_err()
        );
    }

    fn broken(file: &str, text: &str) -> DatasetError {
        let dir = tempfile::tempdir().expect("tmp");
        sample().write_dir(dir.path()).expect("write");
        fs::write(dir.path().join(file), text).expect("break");
        Dataset::read_dir(dir.path()).expect_err("must fail")
    }

    #[test]
    fn read_errors_name_file_and_line() {
        let e = broken(
            EVENTS_CSV,
            "time_ms,user,movie,kind,value\n1,2,a+1999,watch,1\n1,2,a+1999,rate,9\n",
        );
        assert!(
            e.to_string()
                .ends_with("events.csv:3: rating 9 is not within 1-5"),
            "{e}"
        );
        let e = broken(EVENTS_CSV, "time_ms,user,movie,kind\n");
        assert!(e.to_string().contains("events.csv:1: header is"), "{e}");
        let e = broken(EVENTS_CSV, "time_ms,user,movie,kind,value\n1,x,a,watch,1\n");
        assert!(
            e.to_string().ends_with("events.csv:2: bad user \"x\""),
            "{e}"
        );
        let e = broken(EVENTS_CSV, "time_ms,user,movie,kind,value\n1,2,a,like,1\n");
        assert!(e.to_string().contains("events.csv:2: kind \"like\""), "{e}");
        let e = broken(EVENTS_CSV, "time_ms,user,movie,kind,value\n1,2,a\n");
        assert!(
            e.to_string().contains("events.csv:2: expected 5 fields"),
            "{e}"
        );
        let e = broken(USERS_CSV, "user,age,gender,occupation\n1,,,\n1,3,M,x\n");
        assert!(
            e.to_string()
                .ends_with("users.csv:3: user 1 is listed twice"),
            "{e}"
        );
        let e = broken(MOVIES_CSV, "movie,title,year,genres\na,\"unterminated\n");
        assert!(e.to_string().contains("movies.csv:"), "{e}");
        let e = broken(REQUESTS_CSV, "");
        assert!(e.to_string().contains("requests.csv:1: empty file"), "{e}");
        let e = broken(DATASET_JSON, "{\"format\":2,\"source\":{},\"counts\":{}}");
        assert!(e.to_string().contains("dataset.json"), "{e}");
        // Rows and dataset.json disagree: a truncated copy is caught.
        let e = broken(EVENTS_CSV, "time_ms,user,movie,kind,value\n");
        assert!(e.to_string().contains("do not match"), "{e}");
        let dir = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            Dataset::read_dir(dir.path()),
            Err(DatasetError::Io(_))
        ));
    }

    #[test]
    fn users_for_serving_skip_bad_rows_and_keep_the_rest() {
        let p = Path::new("users.csv");
        let (u, skipped) = read_users_lenient(
            p,
            b"user,age,gender,occupation\n1,24,M,technician\n2,,F,\"writer, poet\"\nx,1,M,a\n3\n",
        )
        .expect("parses");
        assert_eq!(skipped, 2);
        assert_eq!(u.len(), 2);
        assert_eq!((u[0].user, u[0].age), (1, Some(24)));
        assert_eq!((u[1].user, u[1].age), (2, None));
        assert_eq!(u[1].occupation.as_deref(), Some("writer, poet"));
        let err = read_users_lenient(p, b"id,age\n").expect_err("bad header");
        assert!(err.to_string().contains("header is"), "{err}");
    }
}
