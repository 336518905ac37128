//! The content-addressed object store: BLAKE3-named, immutable objects.
//!
//! This module owns the object layout (`<root>/<2 hex>/<62 hex>`), atomic and
//! batched-durable writes, object verification, directory manifests, remotes
//! and the link strategies used to materialise objects. It never reads the
//! environment and never prints.
//!
//! Every store — the project's local store, a remote, the in-memory store used
//! in tests — implements [`ObjectStore`]; a missing object is `Ok(None)`.

mod digest;
pub mod link;
mod local;
pub mod manifest;
mod memory;
pub mod remote;
pub mod s3;
pub mod state;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use digest::{BadDigest, Digest};
pub use local::{LocalStore, hash_file};
pub use memory::MemoryStore;

use crate::progress::Progress;

/// Errors of the object store. Each names the object or path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    #[error("object {digest} is corrupt: its content hashes to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("received bytes for {expected} from {from} hash to {actual}; refused")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        from: String,
    },
    #[error("object {0} is not in the store")]
    Missing(Digest),
    #[error("manifest {digest}: line {line}: {reason}")]
    BadManifest {
        digest: Digest,
        line: usize,
        reason: String,
    },
    #[error("store state database {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("remote {0}")]
    Remote(String),
}

/// A writer's check of what it was handed: the bytes must hash to the
/// digest the caller expected, when it named one.
pub(crate) fn expect_source(expected: Option<&Digest>, actual: Digest) -> Result<()> {
    match expected {
        Some(exp) if *exp != actual => Err(StoreError::DigestMismatch {
            expected: *exp,
            actual,
            from: "source".into(),
        }),
        _ => Ok(()),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach an operation and a path to an `io::Error`, as this module's
/// error (the shared [`FsError`](crate::fs_error::FsError) inside).
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| crate::fs_error::FsError::new(op, path, source).into())
    }
}

/// Where the bytes of a new object come from.
pub enum Source<'a> {
    /// A file on the local filesystem (copied in kernel space where possible).
    Path(&'a Path),
    /// Bytes already in memory (manifests, run records).
    Bytes(&'a [u8]),
    /// Any reader (e.g. a network body).
    Reader(&'a mut (dyn Read + Send)),
}

/// A content-addressed object store.
pub trait ObjectStore: Send + Sync {
    /// Human-readable location with any credentials redacted.
    fn location(&self) -> String;
    fn contains(&self, digest: &Digest) -> Result<bool>;
    /// The whole object in memory; for small objects (manifests, run records).
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>>;
    /// A streaming reader over the object.
    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>>;
    /// The object's path when the store is a local directory (fast copies).
    fn local_path(&self, _digest: &Digest) -> Option<PathBuf> {
        None
    }
    /// Every object digest in the store.
    fn list(&self) -> Result<Vec<Digest>>;
    /// Delete an object; `Ok(false)` when it was not there.
    fn remove(&self, digest: &Digest) -> Result<bool>;
    /// Start a batch of writes: objects become visible (and durable) on commit.
    fn begin(&self) -> Result<Box<dyn Writer + '_>>;
    /// Append lines to the store's append-only index (run records and log
    /// segments that no pointer file names, e.g. from serving machines).
    fn index_append(&self, lines: &[String]) -> Result<()>;
    /// All lines of the append-only index.
    fn index_read(&self) -> Result<Vec<String>>;
    /// Rewrite the index without the lines in `drop` (an erasure removed
    /// what they name); the number removed. The only edit the index gets.
    fn index_remove(&self, drop: &std::collections::HashSet<String>) -> Result<usize>;
    /// Every object with its size and last change (remote gc and audit).
    fn list_info(&self) -> Result<Vec<remote::ObjectInfo>> {
        let mut out = Vec::new();
        for digest in self.list()? {
            let (size, modified_ms) = match self.local_path(&digest).map(std::fs::metadata) {
                Some(Ok(m)) => (m.len(), remote::modified_ms(&m)),
                _ => match self.get(&digest)? {
                    Some(b) => (b.len() as u64, 0),
                    None => continue,
                },
            };
            out.push(remote::ObjectInfo {
                digest,
                size,
                modified_ms,
            });
        }
        Ok(out)
    }
    /// What `recsys remote check` reports, step by step.
    fn check(&self) -> Vec<remote::CheckStep> {
        let ok = self.list().map(|l| l.len());
        vec![remote::CheckStep {
            step: "directory".into(),
            ok: ok.is_ok(),
            detail: match ok {
                Ok(n) => format!("{} readable, {n} object(s)", self.location()),
                Err(e) => e.to_string(),
            },
        }]
    }
    /// The S3 backend behind this store, for what only S3 remotes have
    /// (the conditional-put probe, roots objects, gc markers).
    fn as_s3(&self) -> Option<&s3::S3Store> {
        None
    }
}

/// A batch of object writes. Safe to share between threads.
pub trait Writer: Send + Sync {
    /// Stream `src` into the batch while hashing it. With `expected`, bytes
    /// that hash to anything else are refused and nothing is kept.
    fn put(
        &self,
        src: Source<'_>,
        expected: Option<&Digest>,
        progress: &dyn Progress,
    ) -> Result<(Digest, u64)>;
    /// Take the regular file at `path` into the batch without copying its
    /// bytes where the store can: a local store on the same filesystem
    /// hard-links it, after making it read-only (so it cannot be edited in
    /// place and change the object). Files with other hard links or execute
    /// bits, other filesystems and other stores copy, as [`Writer::put`].
    fn put_link(&self, path: &Path, progress: &dyn Progress) -> Result<(Digest, u64)> {
        self.put(Source::Path(path), None, progress)
    }
    /// Make every object of the batch durable, then visible under its name.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Put many files into one batch, in order, returning their digests. Small
/// files are read on a second thread while this one writes the previous
/// ones: the reads (in the source directory) overlap the creates (in the
/// store), which run one at a time since parallel creates in one directory
/// contend on its lock. Large files go through [`Source::Path`].
pub(crate) fn put_files(
    w: &dyn Writer,
    paths: &[&Path],
    progress: &dyn Progress,
) -> Result<Vec<Digest>> {
    const AHEAD: usize = 64;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD);
        s.spawn(move || {
            for p in paths {
                if tx.send(local::read_small(p)).is_err() {
                    return; // the writer gave up
                }
            }
        });
        // In order: one reader, one channel. (Were the reader to panic, the
        // scope would re-raise it rather than return a short list.)
        let mut out = Vec::with_capacity(paths.len());
        for (&p, read) in paths.iter().zip(rx) {
            let (d, _) = match read.ctx("read", p)? {
                Some(bytes) => w.put(Source::Bytes(&bytes), None, progress)?,
                None => w.put(Source::Path(p), None, progress)?,
            };
            out.push(d);
        }
        Ok(out)
    })
}

/// Store one small object at once (its own batch).
pub(crate) fn put_bytes(store: &dyn ObjectStore, bytes: &[u8]) -> Result<Digest> {
    let w = store.begin()?;
    let (d, _) = w.put(Source::Bytes(bytes), None, &crate::progress::NoProgress)?;
    w.commit()?;
    Ok(d)
}
