//! The on-disk dataset format: a directory artifact of kind `dataset`.
//!
//! ```text
//! data/<dataset_N>/
//!   events.csv     time_ms,user,movie,kind,value   kind = watch (value = minute) | rate (value = 1-5); sorted by time
//!   requests.csv   time_ms,user,status,latency_ms,items   (items joined with ';')
//!   users.csv      user,age,gender,occupation
//!   movies.csv     movie,title,year,genres               (genres joined with '|')
//!   dataset.json   {"format":1,"source":{...},"counts":{...}}
//! ```
//!
//! This module owns reading and writing that directory and nothing else: no
//! printing, no environment. Other files in the directory (an ingest's
//! `quarantine.jsonl`) are ignored by [`Dataset::read_dir`]. Text fields are
//! quoted CSV (RFC 4180) when they contain a comma, quote or line break;
//! empty optional fields mean "unknown".

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bumped when the layout changes incompatibly.
pub const FORMAT: u32 = 1;

pub const EVENTS: &str = "events.csv";
pub const REQUESTS: &str = "requests.csv";
pub const USERS: &str = "users.csv";
pub const MOVIES: &str = "movies.csv";
pub const META: &str = "dataset.json";

const EVENTS_HEADER: &str = "time_ms,user,movie,kind,value";
const REQUESTS_HEADER: &str = "time_ms,user,status,latency_ms,items";
const USERS_HEADER: &str = "user,age,gender,occupation";
const MOVIES_HEADER: &str = "movie,title,year,genres";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `value` is the minute watched.
    Watch,
    /// `value` is the rating, 1..=5.
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

/// A watch or rate interaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DataEvent {
    pub time_ms: i64,
    pub user: u64,
    pub movie: String,
    pub kind: EventKind,
    pub value: u32,
}

/// A recommendation request seen in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEvent {
    pub time_ms: i64,
    pub user: u64,
    pub status: u16,
    pub latency_ms: u32,
    pub items: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: u64,
    pub age: Option<u32>,
    pub gender: Option<String>,
    pub occupation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovieInfo {
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
    /// Where the data came from (import source, Kafka offsets).
    pub source: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Bad {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DatasetError + 'a {
    move |source| DatasetError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Dataset {
    /// Write the five files into `dir` (created if missing). Events are
    /// written sorted by time (stable: equal times keep their order).
    /// Files are fsync'd; storing them durably is the store's job.
    pub fn write_dir(&self, dir: &Path) -> Result<(), DatasetError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let mut sorted: Vec<&DataEvent> = self.events.iter().collect();
        sorted.sort_by_key(|e| e.time_ms);
        write_rows(&dir.join(EVENTS), EVENTS_HEADER, &sorted, |e, s| {
            let _ = write!(s, "{},{},", e.time_ms, e.user);
            push_field(s, &e.movie);
            let _ = write!(s, ",{},{}", e.kind.as_str(), e.value);
        })?;
        write_rows(
            &dir.join(REQUESTS),
            REQUESTS_HEADER,
            &self.requests,
            |r, s| {
                let _ = write!(s, "{},{},{},{},", r.time_ms, r.user, r.status, r.latency_ms);
                push_field(s, &r.items.join(";"));
            },
        )?;
        write_rows(&dir.join(USERS), USERS_HEADER, &self.users, |u, s| {
            let _ = write!(s, "{},", u.user);
            if let Some(a) = u.age {
                let _ = write!(s, "{a}");
            }
            s.push(',');
            push_field(s, u.gender.as_deref().unwrap_or(""));
            s.push(',');
            push_field(s, u.occupation.as_deref().unwrap_or(""));
        })?;
        write_rows(&dir.join(MOVIES), MOVIES_HEADER, &self.movies, |m, s| {
            push_field(s, &m.movie);
            s.push(',');
            push_field(s, m.title.as_deref().unwrap_or(""));
            s.push(',');
            if let Some(y) = m.year {
                let _ = write!(s, "{y}");
            }
            s.push(',');
            push_field(s, &m.genres.join("|"));
        })?;
        let watch = self
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Watch)
            .count();
        let meta = serde_json::json!({
            "format": FORMAT,
            "source": self.source,
            "counts": {
                "events": self.events.len(),
                "watch": watch,
                "rate": self.events.len() - watch,
                "requests": self.requests.len(),
                "users": self.users.len(),
                "movies": self.movies.len(),
            }
        });
        let mut bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        bytes.push(b'\n');
        let p = dir.join(META);
        let mut f = fs::File::create(&p).map_err(io_err("create", &p))?;
        f.write_all(&bytes).map_err(io_err("write", &p))?;
        f.sync_all().map_err(io_err("sync", &p))?;
        Ok(())
    }

    /// Read a dataset directory written by [`Dataset::write_dir`].
    pub fn read_dir(dir: &Path) -> Result<Dataset, DatasetError> {
        let meta_path = dir.join(META);
        let meta_bytes = fs::read(&meta_path).map_err(io_err("read", &meta_path))?;
        let meta: serde_json::Value =
            serde_json::from_slice(&meta_bytes).map_err(|e| DatasetError::Bad {
                path: meta_path.clone(),
                line: e.line(),
                reason: e.to_string(),
            })?;
        if meta.get("format").and_then(|v| v.as_u64()) != Some(u64::from(FORMAT)) {
            return Err(DatasetError::Bad {
                path: meta_path,
                line: 1,
                reason: format!("unsupported dataset format (this recsys reads {FORMAT})"),
            });
        }
        let source = meta
            .get("source")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let events = read_csv(&dir.join(EVENTS), EVENTS_HEADER, 5, |f| {
            let kind = match f[3].as_str() {
                "watch" => EventKind::Watch,
                "rate" => EventKind::Rate,
                other => return Err(format!("unknown kind {other:?}")),
            };
            let value = num::<u32>(&f[4], "value")?;
            if kind == EventKind::Rate && !(1..=5).contains(&value) {
                return Err(format!("rating {value} out of range 1-5"));
            }
            Ok(DataEvent {
                time_ms: num(&f[0], "time_ms")?,
                user: num(&f[1], "user")?,
                movie: nonempty(&f[2], "movie")?,
                kind,
                value,
            })
        })?;
        let requests = read_csv(&dir.join(REQUESTS), REQUESTS_HEADER, 5, |f| {
            Ok(RequestEvent {
                time_ms: num(&f[0], "time_ms")?,
                user: num(&f[1], "user")?,
                status: num(&f[2], "status")?,
                latency_ms: num(&f[3], "latency_ms")?,
                items: split_list(&f[4], ';'),
            })
        })?;
        let users = read_csv(&dir.join(USERS), USERS_HEADER, 4, |f| {
            Ok(UserInfo {
                user: num(&f[0], "user")?,
                age: opt_num(&f[1], "age")?,
                gender: opt_text(&f[2]),
                occupation: opt_text(&f[3]),
            })
        })?;
        let movies = read_csv(&dir.join(MOVIES), MOVIES_HEADER, 4, |f| {
            Ok(MovieInfo {
                movie: nonempty(&f[0], "movie")?,
                title: opt_text(&f[1]),
                year: opt_num(&f[2], "year")?,
                genres: split_list(&f[3], '|'),
            })
        })?;
        Ok(Dataset {
            events,
            requests,
            users,
            movies,
            source,
        })
    }
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

fn opt_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<Option<T>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        num(s, what).map(Some)
    }
}

fn opt_text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn nonempty(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() {
        Err(format!("empty {what}"))
    } else {
        Ok(s.to_string())
    }
}

fn split_list(s: &str, sep: char) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(sep).map(str::to_string).collect()
    }
}

/// Append `s` as one CSV field, quoted when it must be.
fn push_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// Write `header` then the lines `next` produces (each ending in '\n'),
/// buffered, then fsync.
fn write_csv(
    path: &Path,
    header: &str,
    mut next: impl FnMut(&mut String) -> Option<()>,
) -> Result<(), DatasetError> {
    let f = fs::File::create(path).map_err(io_err("create", path))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    writeln!(w, "{header}").map_err(io_err("write", path))?;
    let mut line = String::with_capacity(256);
    while next(&mut line).is_some() {
        w.write_all(line.as_bytes())
            .map_err(io_err("write", path))?;
    }
    let f = w.into_inner().map_err(|e| DatasetError::Io {
        op: "write",
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io_err("sync", path))
}

fn write_rows<T>(
    path: &Path,
    header: &str,
    rows: &[T],
    mut row: impl FnMut(&T, &mut String),
) -> Result<(), DatasetError> {
    let mut it = rows.iter();
    write_csv(path, header, |line| {
        let r = it.next()?;
        line.clear();
        row(r, line);
        line.push('\n');
        Some(())
    })
}

/// Read a CSV file with exactly `header` and `width` fields per record.
fn read_csv<T>(
    path: &Path,
    header: &str,
    width: usize,
    mut row: impl FnMut(&[String]) -> Result<T, String>,
) -> Result<Vec<T>, DatasetError> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    let bad = |line: usize, reason: String| DatasetError::Bad {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut rest = text.as_str();
    let mut line_no = 1;
    let first = match rest.find('\n') {
        Some(i) => {
            let h = &rest[..i];
            rest = &rest[i + 1..];
            h
        }
        None => std::mem::take(&mut rest),
    };
    if first.trim_end_matches('\r') != header {
        return Err(bad(1, format!("expected header {header:?}")));
    }
    let mut out = Vec::new();
    let mut fields = Vec::with_capacity(width);
    while !rest.is_empty() {
        line_no += 1;
        let start_line = line_no;
        let consumed = parse_record(rest, &mut fields, &mut line_no)
            .map_err(|reason| bad(start_line, reason))?;
        rest = &rest[consumed..];
        if fields.len() != width {
            return Err(bad(
                start_line,
                format!("{} fields, expected {width}", fields.len()),
            ));
        }
        out.push(row(&fields).map_err(|reason| bad(start_line, reason))?);
    }
    Ok(out)
}

/// Parse one CSV record at the start of `s` into `fields`; returns the bytes
/// consumed (including the line break). Counts extra line breaks inside
/// quoted fields into `line_no`.
fn parse_record(s: &str, fields: &mut Vec<String>, line_no: &mut usize) -> Result<usize, String> {
    fields.clear();
    let b = s.as_bytes();
    let mut i = 0;
    let mut field = String::new();
    loop {
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated quoted field".into()),
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                        field.push('"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        // Copy up to the next quote in one go (UTF-8 safe:
                        // '"' is never inside a multi-byte sequence).
                        let end = s[i..].find('"').map_or(s.len(), |j| i + j);
                        let chunk = &s[i..end];
                        *line_no += chunk.matches('\n').count();
                        field.push_str(chunk);
                        i = end;
                    }
                }
            }
            match b.get(i) {
                None | Some(b',') | Some(b'\n') | Some(b'\r') => {}
                Some(_) => return Err("text after a closing quote".into()),
            }
        } else {
            let end = s[i..].find([',', '\n', '\r']).map_or(s.len(), |j| i + j);
            let chunk = &s[i..end];
            if chunk.contains('"') {
                return Err("quote inside an unquoted field".into());
            }
            field.push_str(chunk);
            i = end;
        }
        fields.push(std::mem::take(&mut field));
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'\r') if b.get(i + 1) == Some(&b'\n') => return Ok(i + 2),
            Some(b'\n') | Some(b'\r') => return Ok(i + 1),
            None => return Ok(i),
            Some(_) => return Err("unexpected character".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dataset {
        Dataset {
            events: vec![
                DataEvent {
                    time_ms: 20,
                    user: 2,
                    movie: "toy+story+1995".into(),
                    kind: EventKind::Rate,
                    value: 4,
                },
                DataEvent {
                    time_ms: 10,
                    user: 1,
                    movie: "the+good_+the+bad+and+the+ugly+1966".into(),
                    kind: EventKind::Watch,
                    value: 7,
                },
            ],
            requests: vec![
                RequestEvent {
                    time_ms: 5,
                    user: 1,
                    status: 200,
                    latency_ms: 31,
                    items: vec!["a+1990".into(), "b+1991".into()],
                },
                RequestEvent {
                    time_ms: 6,
                    user: 3,
                    status: 500,
                    latency_ms: 2,
                    items: vec![],
                },
            ],
            users: vec![
                UserInfo {
                    user: 1,
                    age: Some(29),
                    gender: Some("M".into()),
                    occupation: Some("college/grad student".into()),
                },
                UserInfo {
                    user: 2,
                    age: None,
                    gender: None,
                    occupation: Some("writer, \"freelance\"\nand more".into()),
                },
            ],
            movies: vec![MovieInfo {
                movie: "toy+story+1995".into(),
                title: Some("Toy Story, the movie".into()),
                year: Some(1995),
                genres: vec!["Animation".into(), "Children's".into()],
            }],
            source: serde_json::json!({"kind": "test"}),
        }
    }

    #[test]
    fn round_trip_sorts_events_by_time() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = sample();
        d.write_dir(tmp.path()).expect("write");
        let back = Dataset::read_dir(tmp.path()).expect("read");
        let mut want = d.clone();
        want.events.sort_by_key(|e| e.time_ms);
        assert_eq!(back, want);
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(tmp.path().join(META)).expect("meta")).expect("json");
        assert_eq!(meta["counts"]["watch"], 1);
        assert_eq!(meta["counts"]["rate"], 1);
        assert_eq!(meta["format"], 1);
    }

    #[test]
    fn rejects_bad_rows_with_line_numbers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        sample().write_dir(tmp.path()).expect("write");
        fs::write(
            tmp.path().join(EVENTS),
            "time_ms,user,movie,kind,value\n1,2,m,watch,3\n1,2,m,rate,9\n",
        )
        .expect("write");
        let err = Dataset::read_dir(tmp.path()).expect_err("bad rating");
        assert!(err.to_string().contains(":3: rating 9"), "{err}");
        fs::write(tmp.path().join(EVENTS), "nope\n").expect("write");
        assert!(Dataset::read_dir(tmp.path()).is_err());
    }
}
