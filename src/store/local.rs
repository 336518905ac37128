//! A store in a local directory: the project's `store/` and local remotes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::state::{Stamp, StateDb};
use super::{Digest, IoContext, ObjectStore, Result, Source, StoreError, Writer};
use crate::progress::Progress;

/// Below this many files a batch fsyncs each; above, one `syncfs` is cheaper.
const SYNCFS_THRESHOLD: usize = 16;
/// Files at least this large are copied in kernel space and hashed with all cores.
const BIG_FILE: u64 = 1 << 20;
/// Large files are copied, hashed and flushed in chunks of this size.
const COPY_CHUNK: usize = 16 << 20;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// This process's id, asked once (it names temp files; a syscall per file
/// showed in `strace -c` of an add of 20,000 files).
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Objects under `<root>/<2 hex>/<62 hex>`, temp files under `<root>/tmp/`.
pub struct LocalStore {
    root: PathBuf,
    label: String,
    state: Option<StateDb>,
}

impl LocalStore {
    /// Open (creating if needed) a store directory. `label` is how it is
    /// shown to users (credentials already redacted).
    pub fn open(root: &Path, label: &str) -> Result<LocalStore> {
        fs::create_dir_all(root.join("tmp")).ctx("create store directory", root)?;
        Ok(LocalStore {
            root: root.to_path_buf(),
            label: label.to_string(),
            state: None,
        })
    }

    /// Open the project's own store, with its state database (object stamps
    /// and the work-tree stat cache).
    pub(crate) fn open_with_state(root: &Path) -> Result<LocalStore> {
        let mut s = LocalStore::open(root, &root.display().to_string())?;
        s.state = Some(StateDb::open(&root.join("state.db"))?);
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state(&self) -> Option<&StateDb> {
        self.state.as_ref()
    }

    pub fn object_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Take a durable file the caller wrote and hashed as `digest` (a
    /// closed request-log segment) as an object: made read-only and renamed
    /// into place, so its bytes are not copied. Falls back to a verified
    /// copy when the file is on another filesystem. The file is gone
    /// afterwards either way.
    pub(crate) fn adopt(&self, file: &Path, digest: &Digest) -> Result<()> {
        let _lock = self.lock(false)?;
        let dst = self.object_path(digest);
        if dst.exists() {
            return fs::remove_file(file).ctx("remove", file);
        }
        let parent = dst.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).ctx("create", &parent)?;
        let ro = fs::Permissions::from_mode(0o444);
        fs::set_permissions(file, ro).ctx("make read-only", file)?;
        match fs::rename(file, &dst) {
            Ok(()) => {
                for d in [&parent, &self.root] {
                    File::open(d).and_then(|f| f.sync_all()).ctx("sync", d)?;
                }
                if let (Some(state), Ok(m)) = (&self.state, fs::metadata(&dst)) {
                    state.set_object_stamps(&[(*digest, Stamp::of(&m))])?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                let w = self.begin()?;
                w.put(
                    Source::Path(file),
                    Some(digest),
                    &crate::progress::NoProgress,
                )?;
                w.commit()?;
                fs::remove_file(file).ctx("remove", file)
            }
            Err(e) => Err(e).ctx("rename into store", &dst),
        }
    }

    /// A lock that writers hold shared and `gc` holds exclusively, so `gc`
    /// never removes the temp file of a write in progress. The OS drops it
    /// when the process dies.
    pub fn lock(&self, exclusive: bool) -> Result<File> {
        let p = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx("open lock", &p)?;
        if exclusive {
            f.lock().ctx("lock", &p)?;
        } else {
            f.lock_shared().ctx("lock", &p)?;
        }
        Ok(f)
    }

    /// The object's path after making sure its bytes still hash to its
    /// name. An object whose stat stamp (size, mtime, inode) is unchanged
    /// since it was last verified is trusted without re-hashing.
    pub(crate) fn verified_path(&self, d: &Digest) -> Result<PathBuf> {
        let p = self.object_path(d);
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(*d));
            }
            Err(e) => return Err(e).ctx("stat object", &p),
        };
        let stamp = Stamp::of(&meta);
        if let Some(state) = &self.state
            && state.object_stamp(d)? == Some(stamp)
        {
            return Ok(p);
        }
        let actual = hash_file(&p)?;
        if actual != *d {
            if let Some(state) = &self.state {
                state.forget_object(d)?;
            }
            return Err(StoreError::Corrupt { digest: *d, actual });
        }
        if let Some(state) = &self.state {
            state.set_object_stamps(&[(*d, stamp)])?;
        }
        Ok(p)
    }

    /// [`LocalStore::verified_path`] for many objects: stamps are read in
    /// one batch and only objects whose stamp changed are re-hashed (in
    /// parallel). Fails on the first missing or corrupt object.
    pub(crate) fn verified_paths(&self, ds: &[Digest]) -> Result<Vec<PathBuf>> {
        use rayon::prelude::*;
        let metas: Vec<(PathBuf, Stamp)> = ds
            .par_iter()
            .map(|d| {
                let p = self.object_path(d);
                match fs::metadata(&p) {
                    Ok(m) => Ok((p, Stamp::of(&m))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(StoreError::Missing(*d))
                    }
                    Err(e) => Err(e).ctx("stat object", &p),
                }
            })
            .collect::<Result<_>>()?;
        let known = match &self.state {
            Some(s) => s.object_stamps(ds)?,
            None => vec![None; ds.len()],
        };
        let stale: Vec<usize> = (0..ds.len())
            .filter(|&i| known[i] != Some(metas[i].1))
            .collect();
        let fresh: Vec<(Digest, Stamp)> = stale
            .par_iter()
            .map(|&i| {
                let actual = hash_file(&metas[i].0)?;
                if actual != ds[i] {
                    return Err(StoreError::Corrupt {
                        digest: ds[i],
                        actual,
                    });
                }
                Ok((ds[i], metas[i].1))
            })
            .collect::<Result<_>>()?;
        if let Some(s) = &self.state {
            s.set_object_stamps(&fresh)?;
        }
        Ok(metas.into_iter().map(|(p, _)| p).collect())
    }

    /// Re-hash an object unconditionally (audit). `Ok(None)` when missing.
    pub(crate) fn rehash(&self, d: &Digest) -> Result<Option<Digest>> {
        let p = self.object_path(d);
        if !p.exists() {
            return Ok(None);
        }
        let actual = hash_file(&p)?;
        if let Some(state) = &self.state {
            if actual == *d {
                let meta = fs::metadata(&p).ctx("stat object", &p)?;
                state.set_object_stamps(&[(*d, Stamp::of(&meta))])?;
            } else {
                state.forget_object(d)?;
            }
        }
        Ok(Some(actual))
    }

    /// Leftover temp files of killed writers: (path, size). Only safe to
    /// delete while holding the exclusive [`LocalStore::lock`].
    pub(crate) fn temp_files(&self) -> Result<Vec<(PathBuf, u64)>> {
        let dir = self.tmp_dir();
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).ctx("list", &dir),
        };
        for e in rd {
            let e = e.ctx("list", &dir)?;
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((e.path(), len));
        }
        Ok(out)
    }

    /// Size of an object on disk, if present.
    pub(crate) fn size_of(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.object_path(d)).ok().map(|m| m.len())
    }

    fn new_temp(&self) -> Result<(PathBuf, File)> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = self.tmp_dir().join(format!("{}-{seq}-{nanos:08x}", pid()));
        // Created read-only: objects are immutable, and this saves a chmod
        // per object (the open descriptor can still write).
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&p)
            .ctx("create temp file", &p)?;
        Ok((p, f))
    }
}

/// A file's bytes when it is smaller than [`BIG_FILE`], `None` when not.
pub(crate) fn read_small(p: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = File::open(p)?;
    let len = f.metadata()?.len();
    if len >= BIG_FILE {
        return Ok(None);
    }
    // The bytes the file had when it was stat'ed: read up to that length
    // and stop, without a last read to see EOF (`File::read_to_end` would
    // also stat and seek again for its size hint; strace of an add of
    // 20,000 files showed all three per file). A file that shrank meanwhile
    // ends early; one that grew is taken as it was.
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match (&f).read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(Some(buf))
}

/// Copy a large file into the temp file `out` in kernel space while two
/// helper threads work behind the copy: one hashes each copied chunk, read
/// back from the temp file (so the digest names the stored bytes even if
/// the source changes under us), the other flushes the chunks to disk
/// (`fdatasync`). By the time the copy ends the hash is nearly done and
/// little is left for the commit's sync; `cp` then `sync` does the three
/// one after the other.
fn copy_big(
    input: &mut File,
    out: &mut File,
    src: &Path,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<(Digest, u64)> {
    use std::os::unix::fs::FileExt;
    use std::sync::mpsc::{TrySendError, sync_channel};
    let reader = File::open(tmp).ctx("open", tmp)?;
    let flusher = out.try_clone().ctx("open", tmp)?;
    std::thread::scope(|s| {
        // Bytes copied so far, to the hasher; "more to flush", to the flusher.
        let (copied_tx, copied_rx) = sync_channel::<u64>(1024);
        let (flush_tx, flush_rx) = sync_channel::<()>(1);
        let hasher = s.spawn(move || -> std::io::Result<Digest> {
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; COPY_CHUNK];
            let mut pos = 0u64;
            for end in copied_rx {
                while pos < end {
                    let n = (end - pos).min(buf.len() as u64) as usize;
                    reader.read_exact_at(&mut buf[..n], pos)?;
                    h.update_rayon(&buf[..n]);
                    pos += n as u64;
                }
            }
            Ok(h.finalize().into())
        });
        let flushed = s.spawn(move || -> std::io::Result<()> {
            while flush_rx.recv().is_ok() {
                flusher.sync_data()?;
            }
            flusher.sync_data()
        });
        let copied = (|| -> Result<u64> {
            let mut copied = 0u64;
            loop {
                match rustix::fs::copy_file_range(&*input, None, &*out, None, COPY_CHUNK) {
                    Ok(0) => break,
                    Ok(n) => {
                        copied += n as u64;
                        progress.advance(n as u64);
                    }
                    Err(_) if copied == 0 => {
                        copied = std::io::copy(input, out).ctx("copy", src)?;
                        progress.advance(copied);
                        let _ = copied_tx.send(copied);
                        break;
                    }
                    Err(e) => return Err(std::io::Error::from(e)).ctx("copy", src),
                }
                if copied_tx.send(copied).is_err() {
                    break; // the hasher failed: its error is reported below
                }
                match flush_tx.try_send(()) {
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    Err(TrySendError::Disconnected(())) => break,
                }
            }
            Ok(copied)
        })();
        drop(copied_tx);
        drop(flush_tx);
        let digest = hasher
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let flush = flushed
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let copied = copied?;
        let digest = digest.ctx("hash", tmp)?;
        flush.ctx("sync", tmp)?;
        Ok((digest, copied))
    })
}

/// BLAKE3 of a file, memory-mapped and hashed on all cores when large.
pub fn hash_file(p: &Path) -> Result<Digest> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(p).ctx("hash", p)?;
    Ok(h.finalize().into())
}

impl ObjectStore for LocalStore {
    fn location(&self) -> String {
        self.label.clone()
    }

    fn contains(&self, d: &Digest) -> Result<bool> {
        let p = self.object_path(d);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("stat object", &p),
        }
    }

    fn get(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let p = self.object_path(d);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read object", &p),
        }
    }

    fn open(&self, d: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>> {
        let p = self.object_path(d);
        match File::open(&p) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("open object", &p),
        }
    }

    fn local_path(&self, d: &Digest) -> Option<PathBuf> {
        Some(self.object_path(d))
    }

    fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.root).ctx("list", &self.root)?;
        for e in rd {
            let e = e.ctx("list", &self.root)?;
            let name = e.file_name();
            let Some(prefix) = name.to_str() else {
                continue;
            };
            if prefix.len() != 2 || !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let sub = e.path();
            for f in fs::read_dir(&sub).ctx("list", &sub)? {
                let f = f.ctx("list", &sub)?;
                if let Some(rest) = f.file_name().to_str()
                    && let Ok(d) = format!("{prefix}{rest}").parse::<Digest>()
                {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn remove(&self, d: &Digest) -> Result<bool> {
        let p = self.object_path(d);
        match fs::remove_file(&p) {
            Ok(()) => {
                if let Some(state) = &self.state {
                    state.forget_object(d)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("remove object", &p),
        }
    }

    fn begin(&self) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(LocalWriter {
            store: self,
            pending: Mutex::new(Vec::new()),
            store_dev: std::sync::OnceLock::new(),
            _lock: self.lock(false)?,
        }))
    }

    fn index_append(&self, lines: &[String]) -> Result<()> {
        let _lock = self.lock(false)?;
        let p = self.root.join("index.log");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .ctx("open index", &p)?;
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        f.write_all(buf.as_bytes()).ctx("append to index", &p)?;
        f.sync_data().ctx("sync index", &p)
    }

    fn index_read(&self) -> Result<Vec<String>> {
        let p = self.root.join("index.log");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(s.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).ctx("read index", &p),
        }
    }

    fn index_remove(&self, drop: &std::collections::HashSet<String>) -> Result<usize> {
        // Exclusive: appenders hold the lock shared, so no line appended
        // meanwhile is lost by the rename.
        let _lock = self.lock(true)?;
        let lines = self.index_read()?;
        let kept: Vec<&String> = lines.iter().filter(|l| !drop.contains(*l)).collect();
        let removed = lines.len() - kept.len();
        if removed == 0 {
            return Ok(0);
        }
        let p = self.root.join("index.log");
        let tmp = self.root.join(format!("index.log.tmp-{}", pid()));
        let mut buf = String::new();
        for l in kept {
            buf.push_str(l);
            buf.push('\n');
        }
        let mut f = File::create(&tmp).ctx("create", &tmp)?;
        f.write_all(buf.as_bytes()).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
        fs::rename(&tmp, &p).ctx("replace index", &p)?;
        if let Ok(d) = File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(removed)
    }
}

/// An object of a batch, durable and visible on commit.
struct Pending {
    /// A temp file to rename into place, or (with `linked`) a work-tree
    /// file to hard-link into place.
    path: PathBuf,
    digest: Digest,
    /// For a hard-linked work-tree file: its stamp when it was hashed,
    /// checked again just before it is linked.
    stamp: Option<Stamp>,
    /// For a hard-linked work-tree file: its mode before it was made
    /// read-only, restored if the batch is abandoned.
    linked: Option<u32>,
}

struct LocalWriter<'a> {
    store: &'a LocalStore,
    /// The batch's objects. Their stamps are taken after publishing: a
    /// rename or link changes the change time.
    pending: Mutex<Vec<Pending>>,
    /// The store's filesystem, asked once per batch by `put_link`.
    store_dev: std::sync::OnceLock<u64>,
    _lock: File,
}

impl LocalWriter<'_> {
    fn write_temp(
        &self,
        src: Source<'_>,
        tmp: &Path,
        f: &mut File,
        progress: &dyn Progress,
    ) -> Result<(Digest, u64)> {
        match src {
            Source::Bytes(b) => {
                f.write_all(b).ctx("write", tmp)?;
                progress.advance(b.len() as u64);
                Ok((Digest::of(b), b.len() as u64))
            }
            Source::Path(p) => {
                if let Some(buf) = read_small(p).ctx("read", p)? {
                    f.write_all(&buf).ctx("write", tmp)?;
                    progress.advance(buf.len() as u64);
                    return Ok((Digest::of(&buf), buf.len() as u64));
                }
                let mut input = File::open(p).ctx("open", p)?;
                copy_big(&mut input, f, p, tmp, progress)
            }
            Source::Reader(r) => {
                let mut h = blake3::Hasher::new();
                // Small first: a fetch of many small objects would spend
                // its time zeroing 4 MiB per object.
                let mut buf = vec![0u8; 64 << 10];
                let mut n_total = 0u64;
                loop {
                    let n = r.read(&mut buf).ctx("read", tmp)?;
                    if n == 0 {
                        break;
                    }
                    if n == buf.len() && buf.len() < 4 << 20 {
                        buf.resize(4 << 20, 0);
                    }
                    if n >= 1 << 20 {
                        h.update_rayon(&buf[..n]);
                    } else {
                        h.update(&buf[..n]);
                    }
                    f.write_all(&buf[..n]).ctx("write", tmp)?;
                    n_total += n as u64;
                    progress.advance(n as u64);
                }
                Ok((h.finalize().into(), n_total))
            }
        }
    }
}

impl Writer for LocalWriter<'_> {
    fn put(
        &self,
        src: Source<'_>,
        expected: Option<&Digest>,
        progress: &dyn Progress,
    ) -> Result<(Digest, u64)> {
        let (tmp, mut f) = self.store.new_temp()?;
        let res = self.write_temp(src, &tmp, &mut f, progress);
        drop(f);
        let (d, n) = match res {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = super::expect_source(expected, d) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // No check whether the object exists: callers ask before they put
        // (a stat per object saved), and a duplicate is found by the
        // commit's rename, which never replaces an object.
        if let Ok(mut p) = self.pending.lock() {
            p.push(Pending {
                path: tmp,
                digest: d,
                stamp: None,
                linked: None,
            });
        }
        Ok((d, n))
    }

    fn put_link(&self, path: &Path, progress: &dyn Progress) -> Result<(Digest, u64)> {
        let before = fs::symlink_metadata(path).ctx("stat", path)?;
        // Copied instead: a file with other names (they could still change
        // the object), with execute bits (objects are 0444), or on another
        // filesystem.
        let store_dev = match self.store_dev.get() {
            Some(d) => *d,
            None => {
                let root = &self.store.root;
                let d = fs::metadata(root).ctx("stat", root)?.dev();
                *self.store_dev.get_or_init(|| d)
            }
        };
        if !before.is_file()
            || before.nlink() != 1
            || before.mode() & 0o111 != 0
            || before.dev() != store_dev
        {
            return self.put(Source::Path(path), None, progress);
        }
        let mode = before.mode() & 0o7777;
        // Read-only before it is hashed, so it cannot be opened for
        // writing between the hash and the link.
        fs::set_permissions(path, fs::Permissions::from_mode(0o444)).ctx("make read-only", path)?;
        let restore = || {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
        };
        let hashed = (|| -> Result<(Digest, fs::Metadata)> {
            // Stamped after the chmod (which moves the change time).
            let locked = fs::symlink_metadata(path).ctx("stat", path)?;
            let unmoved = Stamp {
                ctime_ns: 0,
                ..Stamp::of(&locked)
            } == Stamp {
                ctime_ns: 0,
                ..Stamp::of(&before)
            };
            if !unmoved {
                return Err(StoreError::Io(crate::fs_error::FsError {
                    op: "add",
                    path: path.to_path_buf(),
                    source: std::io::Error::other("the file changed while it was being added"),
                }));
            }
            let d = hash_file(path)?;
            let after = fs::symlink_metadata(path).ctx("stat", path)?;
            if Stamp::of(&after) != Stamp::of(&locked) {
                return Err(StoreError::Io(crate::fs_error::FsError {
                    op: "add",
                    path: path.to_path_buf(),
                    source: std::io::Error::other("the file changed while it was being hashed"),
                }));
            }
            if after.len() >= BIG_FILE {
                // Small files are made durable by the commit's syncfs.
                File::open(path)
                    .and_then(|f| f.sync_data())
                    .ctx("sync", path)?;
            }
            Ok((d, after))
        })();
        let (d, meta) = match hashed {
            Ok(v) => v,
            Err(e) => {
                restore();
                return Err(e);
            }
        };
        progress.advance(meta.len());
        if self.store.contains(&d)? {
            restore();
            return Ok((d, meta.len()));
        }
        if let Ok(mut p) = self.pending.lock() {
            p.push(Pending {
                path: path.to_path_buf(),
                digest: d,
                stamp: Some(Stamp::of(&meta)),
                linked: Some(mode),
            });
        }
        Ok((d, meta.len()))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let pending = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Err(StoreError::Remote("writer poisoned".into())),
        };
        if pending.is_empty() {
            return Ok(());
        }
        // 1. Make every temp file durable: one syncfs for a big batch.
        if pending.len() <= SYNCFS_THRESHOLD {
            for p in &pending {
                File::open(&p.path)
                    .and_then(|f| f.sync_all())
                    .ctx("sync", &p.path)?;
            }
        } else {
            syncfs(&self.store.tmp_dir())?;
        }
        // 2. Publish under the content name. Fan-out directories are made
        // once per batch, and an object that appeared meanwhile (another
        // writer, same bytes) is kept: rename refuses to replace it.
        let mut made = [false; 256];
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stamps = Vec::with_capacity(pending.len());
        for p in &pending {
            let d = &p.digest;
            let dst = self.store.object_path(d);
            let parent = dst.parent().unwrap_or(&self.store.root);
            let fan = usize::from(d.0[0]);
            if !made[fan] {
                fs::create_dir_all(parent).ctx("create", parent)?;
                made[fan] = true;
                dirs.push(parent.to_path_buf());
            }
            let published = match p.linked {
                None => rename_new(&p.path, &dst)?,
                Some(mode) => {
                    // Still the bytes that were hashed: made read-only then,
                    // and its stamp (change time included) has not moved.
                    let now = fs::symlink_metadata(&p.path).ctx("stat", &p.path)?;
                    if Some(Stamp::of(&now)) != p.stamp {
                        return Err(StoreError::Io(crate::fs_error::FsError {
                            op: "add",
                            path: p.path.clone(),
                            source: std::io::Error::other("the file changed after it was hashed"),
                        }));
                    }
                    let new = link_new(&p.path, &dst)?;
                    if !new {
                        fs::set_permissions(&p.path, fs::Permissions::from_mode(mode))
                            .ctx("restore mode", &p.path)?;
                    }
                    new
                }
            };
            if published {
                // Stamps are kept only by a store with a state database
                // (the project's own, not a remote).
                if self.store.state.is_some() {
                    let m = fs::symlink_metadata(&dst).ctx("stat object", &dst)?;
                    stamps.push((*d, Stamp::of(&m)));
                }
            } else if p.linked.is_none() {
                fs::remove_file(&p.path).ctx("remove temp", &p.path)?;
            }
        }
        // 3. Make the renames durable before anyone names these objects.
        if dirs.len() <= SYNCFS_THRESHOLD {
            dirs.push(self.store.root.clone());
            for d in &dirs {
                File::open(d).and_then(|f| f.sync_all()).ctx("sync", d)?;
            }
        } else {
            syncfs(&self.store.root)?;
        }
        if let Some(state) = &self.store.state {
            state.set_object_stamps(&stamps)?;
        }
        Ok(())
    }
}

impl Drop for LocalWriter<'_> {
    fn drop(&mut self) {
        if let Ok(p) = self.pending.lock() {
            for p in p.iter() {
                match p.linked {
                    None => {
                        let _ = fs::remove_file(&p.path);
                    }
                    // Abandoned: the work-tree file is the user's again.
                    Some(mode) => {
                        let _ = fs::set_permissions(&p.path, fs::Permissions::from_mode(mode));
                    }
                }
            }
        }
    }
}

/// Rename `tmp` to `dst` unless `dst` exists (one `renameat2` with
/// `RENAME_NOREPLACE`). False when it existed.
fn rename_new(tmp: &Path, dst: &Path) -> Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, tmp, CWD, dst, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        // A filesystem without the flag: check, then rename.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if dst.exists() {
                return Ok(false);
            }
            fs::rename(tmp, dst).ctx("rename into store", dst)?;
            Ok(true)
        }
        Err(e) => Err(std::io::Error::from(e)).ctx("rename into store", dst),
    }
}

/// Hard-link `src` as `dst` unless `dst` exists. False when it existed.
fn link_new(src: &Path, dst: &Path) -> Result<bool> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).ctx("link into store", dst),
    }
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).ctx("open", dir)?;
    rustix::fs::syncfs(&f)
        .map_err(std::io::Error::from)
        .ctx("syncfs", dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn two_writers_of_the_same_bytes_leave_one_object_and_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open_with_state(&dir.path().join("store")).expect("open");
        let a = store.begin().expect("writer a");
        let b = store.begin().expect("writer b");
        // Both stage before either publishes: the second rename finds the
        // object in place and keeps it.
        let (da, _) = a.put(Source::Bytes(b"same"), None, &NoProgress).expect("a");
        let (db, _) = b.put(Source::Bytes(b"same"), None, &NoProgress).expect("b");
        assert_eq!(da, db);
        // Enough files for the syncfs path too.
        let many: Vec<Vec<u8>> = (0..40).map(|i| format!("file {i}").into_bytes()).collect();
        for m in &many {
            a.put(Source::Bytes(m), None, &NoProgress).expect("put");
        }
        a.commit().expect("commit a");
        let first = fs::metadata(store.object_path(&da)).expect("object").ino();
        b.commit().expect("commit b");
        let meta = fs::metadata(store.object_path(&da)).expect("object");
        assert_eq!(meta.ino(), first, "the published object was not replaced");
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        assert_eq!(store.get(&da).expect("get").as_deref(), Some(&b"same"[..]));
        assert!(store.temp_files().expect("temp").is_empty());
        // Stamps taken after publishing match the published object.
        let path = store.verified_path(&da).expect("verified");
        assert_eq!(path, store.object_path(&da));
        let stamps = store.state().expect("state");
        for m in &many {
            let d = Digest::of(m);
            let meta = fs::metadata(store.object_path(&d)).expect("object");
            assert_eq!(
                stamps.object_stamp(&d).expect("stamp"),
                Some(Stamp::of(&meta))
            );
        }
    }

    #[test]
    fn put_files_keeps_order_reads_small_and_big_files_and_names_a_missing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(&dir.path().join("store"), "store").expect("open");
        let mut paths = Vec::new();
        let mut contents = Vec::new();
        for (i, len) in [10usize, BIG_FILE as usize + 5, 0, 300]
            .into_iter()
            .enumerate()
        {
            let p = dir.path().join(format!("f{i}"));
            let bytes: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
            fs::write(&p, &bytes).expect("write");
            paths.push(p);
            contents.push(bytes);
        }
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let w = store.begin().expect("writer");
        let ds = crate::store::put_files(&*w, &refs, &NoProgress).expect("put");
        w.commit().expect("commit");
        let want: Vec<Digest> = contents.iter().map(|c| Digest::of(c)).collect();
        assert_eq!(ds, want);
        for (d, c) in ds.iter().zip(&contents) {
            assert_eq!(store.get(d).expect("get").as_ref(), Some(c));
        }
        let gone = dir.path().join("gone");
        let w = store.begin().expect("writer");
        let err = crate::store::put_files(&*w, &[refs[0], &gone, refs[3]], &NoProgress)
            .expect_err("missing file");
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
