//! Remotes: other stores that objects are pushed to and fetched from.
//!
//! A remote is any [`ObjectStore`]: a local directory (a path or a
//! `file://` URL) or an S3-compatible bucket (`s3://bucket/prefix`,
//! [`super::s3`]); push, fetch, pull and status drive both through the same
//! trait. URLs may carry credentials: only [`redact`]ed forms are ever shown.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::s3::{S3Credentials, S3Spec, S3Store};
use super::{Digest, LocalStore, ObjectStore, Result, Source, StoreError};
use crate::progress::Progress;

/// Objects per write batch: a killed transfer loses at most one batch.
const BATCH: usize = 2000;

/// `scheme://user:secret@host/...` -> `scheme://user:***@host/...`; a
/// user-only part is kept, query strings with tokens are dropped.
pub(crate) fn redact(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => return url.to_string(),
    };
    let (auth_end, rest_path) = match rest.find('/') {
        Some(i) => (i, &rest[i..]),
        None => (rest.len(), ""),
    };
    let authority = &rest[..auth_end];
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let host = &authority[at + 1..];
            match userinfo.find(':') {
                Some(c) => format!("{}:***@{host}", &userinfo[..c]),
                None => format!("***@{host}"),
            }
        }
        None => authority.to_string(),
    };
    let path = match rest_path.find('?') {
        Some(q) => format!("{}?***", &rest_path[..q]),
        None => rest_path.to_string(),
    };
    format!("{head}{authority}{path}")
}

/// Where a remote URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// An object and its metadata, as a listing gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    pub digest: Digest,
    pub size: u64,
    /// Last change, milliseconds since the epoch (0: unknown).
    pub modified_ms: i64,
}

pub(crate) fn modified_ms(m: &std::fs::Metadata) -> i64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One step of `recsys remote check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckStep {
    pub step: String,
    pub ok: bool,
    pub detail: String,
}

/// Everything needed to open a remote.
#[derive(Debug, Clone)]
pub struct RemoteSpec {
    /// The remote's name in the project.
    pub name: String,
    pub url: String,
    /// Relative directory URLs are relative to this (the project root).
    pub base: PathBuf,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials: Option<S3Credentials>,
    /// Where a network remote caches what it is known to hold.
    pub cache_dir: Option<PathBuf>,
}

/// Parse a remote URL; relative paths are relative to `base`.
pub(crate) fn parse_url(url: &str, base: &Path) -> Result<RemoteUrl> {
    if let Some(rest) = url.strip_prefix("file://") {
        // file:///abs/path or file://localhost/abs/path
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(StoreError::Remote(format!(
                "{}: a file:// URL needs an absolute path (file:///path/to/dir)",
                redact(url)
            )));
        }
        return Ok(RemoteUrl::Local(PathBuf::from(path)));
    }
    if url.starts_with("s3://") {
        let (bucket, prefix) = super::s3::parse_s3_url(url)?;
        return Ok(RemoteUrl::S3 { bucket, prefix });
    }
    if let Some(i) = url.find("://") {
        return Err(StoreError::Remote(format!(
            "{}: remote scheme `{}` is not supported (a directory, file:// or s3://)",
            redact(url),
            &url[..i]
        )));
    }
    if url.is_empty() {
        return Err(StoreError::Remote("empty remote URL".into()));
    }
    let p = Path::new(url);
    Ok(RemoteUrl::Local(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }))
}

/// Open the store behind a remote.
pub fn open(spec: &RemoteSpec) -> Result<Box<dyn ObjectStore>> {
    match parse_url(&spec.url, &spec.base)? {
        RemoteUrl::Local(p) => Ok(Box::new(LocalStore::open(&p, &redact(&spec.url))?)),
        RemoteUrl::S3 { bucket, prefix } => Ok(Box::new(S3Store::open(S3Spec {
            name: spec.name.clone(),
            bucket,
            prefix,
            endpoint: spec.endpoint.clone(),
            region: spec.region.clone(),
            credentials: spec.credentials.clone(),
            cache_dir: spec.cache_dir.clone(),
        })?)),
    }
}

/// What a transfer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Transferred {
    pub objects: usize,
    pub bytes: u64,
    pub already_there: usize,
}

/// Copy the objects of each phase that `to` lacks, in parallel, verifying
/// every object's digest as it is received. Phases are committed in order
/// (a directory's files before its manifest, data before run records), so a
/// reader never sees an object whose references are missing. A rerun after
/// an interruption moves only what is still missing.
pub(crate) fn transfer(
    from: &dyn ObjectStore,
    to: &dyn ObjectStore,
    phases: &[Vec<Digest>],
    jobs: usize,
    progress: &dyn Progress,
) -> Result<Transferred> {
    // Between two local directories parallel writers gain nothing: they
    // contend on the directory lock (measured 10x slower on ext4). A
    // network store on either side (no local path) gets `jobs` transfers
    // in flight.
    let probe = Digest([0; 32]);
    // From a network store into a local directory: downloads in parallel,
    // writes one at a time.
    let download = to.local_path(&probe).is_some() && from.local_path(&probe).is_none();
    let jobs = if to.local_path(&probe).is_some() && from.local_path(&probe).is_some() {
        1
    } else {
        jobs
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| StoreError::Remote(format!("thread pool: {e}")))?;
    pool.install(|| {
        let mut stats = Transferred::default();
        let mut todo_phases = Vec::new();
        for phase in phases {
            let missing: Vec<Digest> = phase
                .par_iter()
                .filter_map(|d| match to.contains(d) {
                    Ok(true) => None,
                    Ok(false) => Some(Ok(*d)),
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_>>()?;
            stats.already_there += phase.len() - missing.len();
            todo_phases.push(missing);
        }
        // The total only feeds a progress bar: a stat per object is not
        // spent on it when none is shown.
        let total: u64 = if progress.shown() {
            todo_phases
                .iter()
                .flatten()
                .map(|d| size_hint(from, d))
                .sum()
        } else {
            0
        };
        progress.start("transfer", total);
        for missing in todo_phases {
            for chunk in missing.chunks(BATCH) {
                let w = to.begin()?;
                let moved: Vec<u64> = if download {
                    download_chunk(from, &*w, chunk, progress)?
                } else {
                    chunk
                        .par_iter()
                        .map(|d| copy_one(from, &*w, d, progress))
                        .collect::<Result<_>>()?
                };
                w.commit()?;
                stats.objects += moved.len();
                stats.bytes += moved.iter().sum::<u64>();
            }
        }
        progress.finish();
        Ok(stats)
    })
}

/// What a download thread hands the writer: a small object's bytes, or
/// the open body of a large one (streamed by the writer).
enum Fetched<'a> {
    Bytes(Vec<u8>),
    Body(Box<dyn std::io::Read + Send + 'a>),
}

/// Objects below this are read whole by the download threads.
const IN_MEMORY: u64 = 16 << 20;

/// Download `chunk` on the current pool's threads and write it through
/// `w` on this one, in arrival order: parallel creates in one local
/// directory contend on its lock.
fn download_chunk(
    from: &dyn ObjectStore,
    w: &dyn super::Writer,
    chunk: &[Digest],
    progress: &dyn Progress,
) -> Result<Vec<u64>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Digest, Result<Fetched<'_>>)>(16);
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut out = Vec::with_capacity(chunk.len());
            let mut first_err = None;
            for (d, r) in rx {
                if first_err.is_some() {
                    continue; // drain: the downloads finish, nothing more is written
                }
                let res = r.and_then(|f| match f {
                    Fetched::Bytes(b) => w.put(Source::Bytes(&b), Some(&d), progress),
                    Fetched::Body(mut body) => w.put(Source::Reader(&mut body), Some(&d), progress),
                });
                match res {
                    Ok((_, n)) => out.push(n),
                    Err(StoreError::DigestMismatch {
                        expected, actual, ..
                    }) => {
                        first_err = Some(StoreError::DigestMismatch {
                            expected,
                            actual,
                            from: from.location(),
                        })
                    }
                    Err(e) => first_err = Some(e),
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(out),
            }
        });
        // The downloads run on this thread's pool (`jobs` of them).
        chunk.par_iter().for_each_with(tx, |tx, d| {
            let r = (|| {
                let mut body = from.open(d)?.ok_or(StoreError::Missing(*d))?;
                let mut head = Vec::new();
                std::io::Read::by_ref(&mut body)
                    .take(IN_MEMORY)
                    .read_to_end(&mut head)
                    .map_err(|e| StoreError::Remote(e.to_string()))?;
                if (head.len() as u64) < IN_MEMORY {
                    Ok(Fetched::Bytes(head))
                } else {
                    let rest: Box<dyn std::io::Read + Send + '_> =
                        Box::new(std::io::Cursor::new(head).chain(body));
                    Ok(Fetched::Body(rest))
                }
            })();
            let _ = tx.send((*d, r));
        });
        writer
            .join()
            .unwrap_or_else(|_| Err(StoreError::Remote("download writer panicked".into())))
    })
}

fn size_hint(from: &dyn ObjectStore, d: &Digest) -> u64 {
    from.local_path(d)
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .unwrap_or(0)
}

fn copy_one(
    from: &dyn ObjectStore,
    w: &dyn super::Writer,
    d: &Digest,
    progress: &dyn Progress,
) -> Result<u64> {
    // A local source is read by path (no stat first: a missing object
    // fails the open and is reported as missing).
    let res = match from.local_path(d) {
        Some(p) => match w.put(Source::Path(&p), Some(d), progress) {
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && !p.exists() => {
                Err(StoreError::Missing(*d))
            }
            r => r,
        },
        None => {
            let mut r = from.open(d)?.ok_or(StoreError::Missing(*d))?;
            w.put(Source::Reader(&mut r), Some(d), progress)
        }
    };
    match res {
        Ok((_, n)) => Ok(n),
        Err(StoreError::DigestMismatch {
            expected, actual, ..
        }) => Err(StoreError::DigestMismatch {
            expected,
            actual,
            from: from.location(),
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::store::{MemoryStore, put_bytes};

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact("s3://AKIA123:s3cr3t@bucket/path"),
            "s3://AKIA123:***@bucket/path"
        );
        assert_eq!(
            redact("https://tok@host/x?sig=abc"),
            "https://***@host/x?***"
        );
        assert_eq!(redact("/plain/path"), "/plain/path");
        let e = parse_url("s3://AKIA:s3cr3t@bucket/x", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("credentials do not belong"), "{e}");
        let e = parse_url("gs://bucket/x", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn local_urls() {
        let base = Path::new("/proj");
        assert_eq!(
            parse_url("file:///srv/r", base).unwrap(),
            RemoteUrl::Local("/srv/r".into())
        );
        assert_eq!(
            parse_url("../r", base).unwrap(),
            RemoteUrl::Local("/proj/../r".into())
        );
        assert!(parse_url("file://relative", base).is_err());
    }

    #[test]
    fn an_object_missing_from_a_local_source_is_reported_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let from = LocalStore::open(&dir.path().join("from"), "from").unwrap();
        let to = LocalStore::open(&dir.path().join("to"), "to").unwrap();
        let here = put_bytes(&from, b"here").unwrap();
        let gone = put_bytes(&from, b"gone").unwrap();
        std::fs::remove_file(from.object_path(&gone)).unwrap();
        let e = transfer(&from, &to, &[vec![here, gone]], 1, &NoProgress).unwrap_err();
        assert!(matches!(e, StoreError::Missing(d) if d == gone), "{e}");
        assert!(!to.contains(&gone).unwrap());
        assert!(to.temp_files().unwrap().is_empty(), "no temp file left");
    }

    #[test]
    fn transfer_moves_only_missing_and_refuses_corrupt_source() {
        let a = MemoryStore::new();
        let b = MemoryStore::new();
        let d1 = put_bytes(&a, b"one").unwrap();
        let d2 = put_bytes(&a, b"two").unwrap();
        put_bytes(&b, b"one").unwrap();
        let t = transfer(&a, &b, &[vec![d1, d2]], 2, &NoProgress).unwrap();
        assert_eq!((t.objects, t.already_there), (1, 1));
        assert_eq!(b.get(&d2).unwrap().unwrap(), b"two");

        let d3 = put_bytes(&a, b"three").unwrap();
        a.corrupt(&d3, b"thr3e".to_vec());
        let e = transfer(&a, &b, &[vec![d3]], 2, &NoProgress).unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!b.contains(&d3).unwrap());
    }
}
