//! S3-compatible remotes (AWS S3, MinIO, Ceph, R2, ...) through the
//! `object_store` crate.
//!
//! Sync outside, async inside: the store owns a small tokio runtime and
//! every operation is one `block_on`, so the workspace code that drives
//! directory remotes drives this one unchanged (rayon threads give the
//! parallel transfers).
//!
//! Layout under `s3://bucket/prefix/`:
//!
//! - `objects/<2 hex>/<62 hex>`: the objects, named by their BLAKE3 digest,
//!   written create-only (`If-None-Match: *`); objects of 16 MiB and more
//!   go up in 8 MiB parts, hashed on the way and completed only when the
//!   digest is the expected one.
//! - `index/<kind>/<hex>`: the append-only index, one object per entry
//!   (`run <hex>` is `index/run/<hex>`), so concurrent pushes never lose an
//!   entry: nothing is ever rewritten.
//! - `roots/<clone-id>.json`: what each clone keeps (`gc --remote`).
//! - `gc/<time>-<id>`: one marker per remote gc, and `locks/gc` while one
//!   deletes; clones drop their cache of "present on the remote" when a
//!   new marker appears.
//! - `probe/<id>`: short-lived keys of the conditional-put probe.
//!
//! A local cache (`store/remotes/<key>.present` in the project) remembers
//! which objects the remote is known to hold, so a push of what is already
//! there makes no request per object.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore as _, ObjectStoreExt as _,
    PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use super::remote::{CheckStep, ObjectInfo};
use super::{Digest, ObjectStore, Result, Source, StoreError, Writer};
use crate::progress::Progress;

/// Objects this large or larger are uploaded in parts.
pub const MULTIPART_MIN: u64 = 16 << 20;
const PART: usize = 8 << 20;
/// Parts of one object in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Our own attempts around object_store's retries: a body cut after the
/// request was sent, a create-only put whose answer was lost.
const ATTEMPTS: u32 = 5;

#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Credentials({}, ***)", self.access_key_id)
    }
}

/// Everything needed to open an S3 remote.
#[derive(Debug, Clone)]
pub struct S3Spec {
    /// The remote's name in the project (for messages).
    pub name: String,
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `http://127.0.0.1:9000` for a local server; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials: Option<S3Credentials>,
    /// Where the cache of known-present objects lives (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

pub struct S3Store {
    rt: tokio::runtime::Runtime,
    s3: Arc<AmazonS3>,
    spec: S3Spec,
    label: String,
    /// Objects known to be on the remote.
    present: Mutex<HashSet<Digest>>,
    /// Known-present objects not yet in the cache file.
    unsaved: Mutex<Vec<Digest>>,
    /// Whether the cache was checked against the remote's gc markers.
    fresh: Mutex<bool>,
    probe: Mutex<Option<bool>>,
}

/// Parse `s3://bucket[/prefix]`. Credentials in the URL are refused: the
/// URL is committed.
pub(crate) fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let shown = super::remote::redact(url);
    let bad = |why: &str| StoreError::Remote(format!("{shown}: {why}"));
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("an S3 URL starts with s3://"))?;
    let (bucket, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i + 1..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if bucket.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL (it is committed): use AWS_ACCESS_KEY_ID/\
             AWS_SECRET_ACCESS_KEY, AWS_PROFILE or .recsys/config.local.json",
        ));
    }
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !valid_bucket {
        return Err(bad(&format!(
            "`{bucket}` is not a bucket name (3-63 characters: a-z, 0-9, `-`, `.`)"
        )));
    }
    if !prefix.is_empty()
        && prefix.split('/').any(|seg| {
            seg.is_empty()
                || seg == "."
                || seg == ".."
                || !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
    {
        return Err(bad(&format!(
            "`{prefix}` is not a key prefix (segments of a-z, A-Z, 0-9, `-`, `_`, `.`)"
        )));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Whether an error is worth another attempt: the connection, the body or
/// the server failed, not the request.
fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { .. } => {
            let s = chain(e);
            // A 4xx answer is final; a 5xx one outlived object_store's
            // retries and gets ours.
            !(s.contains("status 4")
                || s.contains("status code: 4")
                || s.contains("NoSuchBucket")
                || s.contains("AccessDenied")
                || s.contains("InvalidAccessKeyId")
                || s.contains("SignatureDoesNotMatch"))
        }
        _ => false,
    }
}

impl S3Store {
    pub fn open(spec: S3Spec) -> Result<S3Store> {
        let url = if spec.prefix.is_empty() {
            format!("s3://{}", spec.bucket)
        } else {
            format!("s3://{}/{}", spec.bucket, spec.prefix)
        };
        let label = match &spec.endpoint {
            Some(e) => format!("{} ({url} at {})", spec.name, super::remote::redact(e)),
            None => format!("{} ({url})", spec.name),
        };
        let creds = spec.credentials.clone().ok_or_else(|| {
            StoreError::Remote(format!(
                "{label}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or AWS_PROFILE), or put them under remotes.{} in .recsys/config.local.json",
                spec.name
            ))
        })?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&spec.bucket)
            .with_region(spec.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 6,
                retry_timeout: Duration::from_secs(60),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120))
                    .with_pool_max_idle_per_host(64),
            );
        if let Some(t) = &creds.session_token {
            b = b.with_token(t);
        }
        if let Some(e) = &spec.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let s3 = b
            .build()
            .map_err(|e| StoreError::Remote(format!("{label}: {}", chain(&e))))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("recsys-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Remote(format!("{label}: tokio runtime: {e}")))?;
        let store = S3Store {
            rt,
            s3: Arc::new(s3),
            spec,
            label,
            present: Mutex::new(HashSet::new()),
            unsaved: Mutex::new(Vec::new()),
            fresh: Mutex::new(false),
            probe: Mutex::new(None),
        };
        store.load_cache();
        Ok(store)
    }

    fn key(&self, rel: &str) -> Key {
        if self.spec.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.spec.prefix))
        }
    }

    fn object_key(&self, d: &Digest) -> Key {
        let h = d.hex();
        self.key(&format!("objects/{}/{}", &h[..2], &h[2..]))
    }

    /// A one-line error naming the remote, what was done and to what.
    fn err(&self, what: &str, e: &object_store::Error) -> StoreError {
        let s = chain(e);
        let why = if s.contains("NoSuchBucket") {
            format!("bucket `{}` does not exist", self.spec.bucket)
        } else if s.contains("InvalidAccessKeyId")
            || s.contains("SignatureDoesNotMatch")
            || s.contains("AccessDenied")
            || s.contains("403")
            || matches!(
                e,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            )
        {
            "the server refused the credentials (access denied)".to_string()
        } else if s.contains("Connect")
            || s.contains("connection refused")
            || s.contains("Connection refused")
            || s.contains("dns error")
        {
            format!(
                "cannot reach {}",
                self.spec
                    .endpoint
                    .as_deref()
                    .map(super::remote::redact)
                    .unwrap_or_else(|| "S3".into())
            )
        } else {
            let mut s = s;
            if s.len() > 300 {
                let mut cut = 300;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                s.push('…');
            }
            s
        };
        StoreError::Remote(format!("{}: {what}: {why}", self.label))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run `op` up to [`ATTEMPTS`] times while it fails transiently.
    fn attempt<T>(
        &self,
        mut op: impl FnMut() -> std::result::Result<T, object_store::Error>,
    ) -> std::result::Result<T, object_store::Error> {
        let mut n = 0;
        loop {
            match op() {
                Err(e) if transient(&e) && n + 1 < ATTEMPTS => {
                    n += 1;
                    std::thread::sleep(Duration::from_millis(50 << n));
                }
                r => return r,
            }
        }
    }

    /// A create-only put of small bytes; `Ok(false)` when the key existed.
    fn create(&self, key: &Key, bytes: Bytes) -> std::result::Result<bool, object_store::Error> {
        let mut tries = 0;
        self.attempt(|| {
            tries += 1;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self.block_on(self.s3.put_opts(key, PutPayload::from(bytes.clone()), opts)) {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn list_keys(
        &self,
        rel: &str,
    ) -> std::result::Result<Vec<object_store::ObjectMeta>, object_store::Error> {
        let prefix = self.key(rel);
        self.attempt(|| self.block_on(self.s3.list(Some(&prefix)).try_collect::<Vec<_>>()))
    }

    /// The part of a listed key after `<prefix>/<rel>/`.
    fn tail<'k>(&self, rel: &str, k: &'k Key) -> Option<&'k str> {
        let full = self.key(rel);
        k.as_ref()
            .strip_prefix(full.as_ref())
            .and_then(|r| r.strip_prefix('/'))
    }

    // ----- the cache of objects known to be present -----

    fn cache_file(&self, ext: &str) -> Option<PathBuf> {
        let dir = self.spec.cache_dir.as_ref()?;
        let id = format!(
            "{}\n{}\n{}",
            self.spec.endpoint.as_deref().unwrap_or(""),
            self.spec.bucket,
            self.spec.prefix
        );
        Some(dir.join(format!("{}.{ext}", &Digest::of(id.as_bytes()).hex()[..24])))
    }

    fn load_cache(&self) {
        let Some(p) = self.cache_file("present") else {
            return;
        };
        let Ok(bytes) = std::fs::read(&p) else {
            return;
        };
        if let Ok(mut set) = self.present.lock() {
            for c in bytes.chunks_exact(32) {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                set.insert(Digest(d));
            }
        }
    }

    /// Append the known-present objects not yet saved. A lost cache only
    /// costs requests, so errors are ignored.
    fn save_cache(&self) {
        let Some(p) = self.cache_file("present") else {
            return;
        };
        let new = match self.unsaved.lock() {
            Ok(mut u) => std::mem::take(&mut *u),
            Err(_) => return,
        };
        if new.is_empty() {
            return;
        }
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut buf = Vec::with_capacity(new.len() * 32);
        for d in &new {
            buf.extend_from_slice(&d.0);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
        {
            let _ = f.write_all(&buf);
        }
    }

    fn known(&self, d: &Digest) {
        let new = self
            .present
            .lock()
            .map(|mut s| s.insert(*d))
            .unwrap_or(false);
        if new && let Ok(mut u) = self.unsaved.lock() {
            u.push(*d);
        }
    }

    fn forget_known(&self, d: &Digest) {
        let removed = self
            .present
            .lock()
            .map(|mut s| s.remove(d))
            .unwrap_or(false);
        if removed {
            self.rewrite_cache();
        }
    }

    fn rewrite_cache(&self) {
        let Some(p) = self.cache_file("present") else {
            return;
        };
        let Ok(set) = self.present.lock() else { return };
        let mut buf = Vec::with_capacity(set.len() * 32);
        for d in set.iter() {
            buf.extend_from_slice(&d.0);
        }
        drop(set);
        if let Ok(mut u) = self.unsaved.lock() {
            u.clear();
        }
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension("present.tmp");
        if std::fs::write(&tmp, &buf).is_ok() {
            let _ = std::fs::rename(&tmp, &p);
        }
    }

    /// Before the cache is trusted: one listing of the gc markers. A
    /// marker this clone has not seen means objects may have gone, and the
    /// cache is dropped. This listing is also where a missing bucket,
    /// refused credentials or an unreachable endpoint show first.
    fn ensure_fresh(&self) -> Result<()> {
        let mut fresh = self
            .fresh
            .lock()
            .map_err(|_| StoreError::Remote("cache lock poisoned".into()))?;
        if *fresh {
            return Ok(());
        }
        let markers = self
            .list_keys("gc")
            .map_err(|e| self.err("list gc markers", &e))?;
        let newest = markers
            .iter()
            .filter_map(|m| self.tail("gc", &m.location).map(str::to_string))
            .max()
            .unwrap_or_default();
        if let Some(p) = self.cache_file("epoch") {
            let seen = std::fs::read_to_string(&p).unwrap_or_default();
            if seen.trim() != newest {
                if let Ok(mut s) = self.present.lock() {
                    s.clear();
                }
                self.rewrite_cache();
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = std::fs::write(&p, &newest);
            }
        }
        *fresh = true;
        Ok(())
    }

    // ----- the conditional-put probe -----

    /// Whether the server refuses a second create-only put of one key
    /// (asked once per store, and remembered in the project's cache).
    pub fn conditional_put(&self) -> Result<bool> {
        if let Ok(p) = self.probe.lock()
            && let Some(v) = *p
        {
            return Ok(v);
        }
        if let Some(p) = self.cache_file("probe")
            && let Ok(s) = std::fs::read_to_string(&p)
        {
            let v = s.trim() == "honoured";
            if let Ok(mut pr) = self.probe.lock() {
                *pr = Some(v);
            }
            return Ok(v);
        }
        self.run_probe()
    }

    /// Probe now: create a key twice; the second must be refused.
    pub fn run_probe(&self) -> Result<bool> {
        let key = self.key(&format!("probe/{}", uuid::Uuid::now_v7()));
        let first = self
            .create(&key, Bytes::from_static(b"probe\n"))
            .map_err(|e| self.err("conditional-put probe", &e))?;
        let second = self
            .create(&key, Bytes::from_static(b"probe again\n"))
            .map_err(|e| self.err("conditional-put probe", &e))?;
        let _ = self.block_on(self.s3.delete(&key));
        let honoured = first && !second;
        if let Ok(mut p) = self.probe.lock() {
            *p = Some(honoured);
        }
        if let Some(p) = self.cache_file("probe") {
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&p, if honoured { "honoured\n" } else { "ignored\n" });
        }
        Ok(honoured)
    }

    /// Refuse `what` on a server that ignores create-only puts.
    pub fn require_conditional_put(&self, what: &str) -> Result<()> {
        if self.conditional_put()? {
            return Ok(());
        }
        Err(StoreError::Remote(format!(
            "{}: the server ignores create-only puts (If-None-Match: *): a second create \
             of the same key succeeded, so {what} cannot be made safe there; refused",
            self.label
        )))
    }

    /// Create `rel` only if it does not exist; `Ok(false)` when it did.
    pub(crate) fn create_named(&self, rel: &str, bytes: Vec<u8>) -> Result<bool> {
        self.create(&self.key(rel), Bytes::from(bytes))
            .map_err(|e| self.err(&format!("create {rel}"), &e))
    }

    pub(crate) fn get_named(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(rel);
        match self.attempt(|| self.block_on(async { self.s3.get(&key).await?.bytes().await })) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(&format!("get {rel}"), &e)),
        }
    }

    /// Put this clone's roots list (`roots/<clone>.json`), unless the
    /// same bytes went up last time (remembered in the project's cache).
    pub(crate) fn put_roots(&self, clone: &str, bytes: Vec<u8>) -> Result<()> {
        let sum = Digest::of(&bytes).hex();
        let cache = self.cache_file("roots");
        if let Some(c) = &cache
            && std::fs::read_to_string(c).is_ok_and(|s| s.trim() == sum)
        {
            return Ok(());
        }
        let rel = format!("roots/{clone}.json");
        let key = self.key(&rel);
        let b = Bytes::from(bytes);
        self.attempt(|| {
            self.block_on(self.s3.put(&key, PutPayload::from(b.clone())))
                .map(|_| ())
        })
        .map_err(|e| self.err(&format!("put {rel}"), &e))?;
        if let Some(c) = cache {
            if let Some(dir) = c.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(c, sum);
        }
        Ok(())
    }

    /// The newest gc marker seen when the cache was checked.
    pub(crate) fn gc_epoch(&self) -> Result<String> {
        let markers = self.list_named("gc")?;
        Ok(markers
            .into_iter()
            .map(|(n, _, _)| n)
            .max()
            .unwrap_or_default())
    }

    /// Drop the cache of what the remote holds (a gc ran meanwhile).
    pub(crate) fn forget_cache(&self) {
        if let Ok(mut s) = self.present.lock() {
            s.clear();
        }
        self.rewrite_cache();
    }

    pub(crate) fn delete_named(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        match self.attempt(|| self.block_on(self.s3.delete(&key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(&format!("delete {rel}"), &e)),
        }
    }

    /// Names (after `rel/`) and metadata of the keys under `rel/`.
    pub(crate) fn list_named(&self, rel: &str) -> Result<Vec<(String, u64, i64)>> {
        let metas = self
            .list_keys(rel)
            .map_err(|e| self.err(&format!("list {rel}/"), &e))?;
        Ok(metas
            .iter()
            .filter_map(|m| {
                self.tail(rel, &m.location)
                    .map(|t| (t.to_string(), m.size, m.last_modified.timestamp_millis()))
            })
            .collect())
    }

    // ----- uploads -----

    fn upload_small(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        self.create(&self.object_key(d), bytes)
            .map_err(|e| self.err(&format!("upload object {}", d.hex()), &e))?;
        Ok(())
    }

    /// Upload a large object in parts while hashing it; completed only
    /// when its digest is `expected` (when given). Returns (digest, size).
    fn upload_big(
        &self,
        src: &mut dyn Read,
        head: Vec<u8>,
        expected: Option<&Digest>,
        progress: &dyn Progress,
    ) -> Result<(Digest, u64)> {
        // The name is the digest, known only at the end: stage under a
        // temporary key, then copy into place create-only... S3 cannot
        // rename, so when no digest is expected the bytes are hashed first.
        let d = match expected {
            Some(d) => *d,
            None => {
                return Err(StoreError::Remote(format!(
                    "{}: a large object needs its digest before upload",
                    self.label
                )));
            }
        };
        let key = self.object_key(&d);
        let what = format!("upload object {}", d.hex());
        // The parts are spawned onto the runtime as they fill.
        let _rt = self.rt.enter();
        let upload = self
            .block_on(self.s3.put_multipart(&key))
            .map_err(|e| self.err(&what, &e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut h = blake3::Hasher::new();
        let mut n_total = 0u64;
        let mut buf = vec![0u8; PART];
        let mut pending_head = Some(head);
        let res: Result<()> = (|| {
            loop {
                let n = match pending_head.take() {
                    Some(hd) if !hd.is_empty() => {
                        let n = hd.len();
                        buf[..n].copy_from_slice(&hd);
                        n
                    }
                    _ => {
                        let mut filled = 0;
                        while filled < buf.len() {
                            let k = src.read(&mut buf[filled..]).map_err(|e| {
                                StoreError::Remote(format!(
                                    "{}: {what}: reading the source: {e}",
                                    self.label
                                ))
                            })?;
                            if k == 0 {
                                break;
                            }
                            filled += k;
                        }
                        filled
                    }
                };
                if n == 0 {
                    break;
                }
                h.update_rayon(&buf[..n]);
                self.block_on(w.wait_for_capacity(PARTS_IN_FLIGHT))
                    .map_err(|e| self.err(&what, &e))?;
                w.write(&buf[..n]);
                n_total += n as u64;
                progress.advance(n as u64);
            }
            Ok(())
        })();
        let got: Digest = h.finalize().into();
        if res.is_err() || got != d {
            let _ = self.block_on(w.abort());
            res?;
            return Err(StoreError::DigestMismatch {
                expected: d,
                actual: got,
                from: "source".into(),
            });
        }
        self.block_on(w.finish()).map_err(|e| self.err(&what, &e))?;
        Ok((d, n_total))
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        self.save_cache();
    }
}

/// A body read from the remote that picks up where it stopped (a ranged
/// GET) when the connection drops mid-body.
struct ResumingReader<'a> {
    store: &'a S3Store,
    key: Key,
    digest: Digest,
    size: u64,
    offset: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    chunk: Bytes,
    resumes: u32,
}

impl ResumingReader<'_> {
    fn reopen(&mut self) -> std::io::Result<()> {
        let opts = GetOptions {
            range: Some(GetRange::Offset(self.offset)),
            ..Default::default()
        };
        let r = self
            .store
            .attempt(|| {
                self.store
                    .block_on(self.store.s3.get_opts(&self.key, opts.clone()))
            })
            .map_err(|e| {
                std::io::Error::other(
                    self.store
                        .err(&format!("download object {}", self.digest.hex()), &e)
                        .to_string(),
                )
            })?;
        self.stream = Some(r.into_stream());
        Ok(())
    }
}

impl Read for ResumingReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.chunk.is_empty() {
                let n = out.len().min(self.chunk.len());
                out[..n].copy_from_slice(&self.chunk[..n]);
                self.chunk = self.chunk.slice(n..);
                self.offset += n as u64;
                return Ok(n);
            }
            if self.offset >= self.size {
                return Ok(0);
            }
            if self.stream.is_none() {
                self.reopen()?;
            }
            let next = match self.stream.as_mut() {
                Some(s) => self.store.block_on(s.next()),
                None => None,
            };
            match next {
                Some(Ok(b)) => self.chunk = b,
                // Cut short (an error, or the end before `size`): resume.
                Some(Err(_)) | None => {
                    self.stream = None;
                    self.resumes += 1;
                    if self.resumes > 2 * ATTEMPTS {
                        return Err(std::io::Error::other(format!(
                            "remote {}: download object {}: the connection dropped {} times",
                            self.store.label,
                            self.digest.hex(),
                            self.resumes
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20 * u64::from(self.resumes)));
                }
            }
        }
    }
}

impl ObjectStore for S3Store {
    fn location(&self) -> String {
        format!("remote {}", self.label)
    }

    fn contains(&self, d: &Digest) -> Result<bool> {
        self.ensure_fresh()?;
        if self.present.lock().map(|s| s.contains(d)).unwrap_or(false) {
            return Ok(true);
        }
        let key = self.object_key(d);
        match self.attempt(|| self.block_on(self.s3.head(&key))) {
            Ok(_) => {
                self.known(d);
                Ok(true)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(&format!("look up object {}", d.hex()), &e)),
        }
    }

    fn get(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(mut r) = self.open(d)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| StoreError::Remote(e.to_string()))?;
        Ok(Some(out))
    }

    fn open(&self, d: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>> {
        let key = self.object_key(d);
        let r = match self.attempt(|| self.block_on(self.s3.get(&key))) {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(&format!("download object {}", d.hex()), &e)),
        };
        let size = r.meta.size;
        Ok(Some(Box::new(ResumingReader {
            store: self,
            key,
            digest: *d,
            size,
            offset: 0,
            stream: Some(r.into_stream()),
            chunk: Bytes::new(),
            resumes: 0,
        })))
    }

    fn list(&self) -> Result<Vec<Digest>> {
        Ok(self.list_info()?.into_iter().map(|i| i.digest).collect())
    }

    fn list_info(&self) -> Result<Vec<ObjectInfo>> {
        let mut out: Vec<ObjectInfo> = self
            .list_named("objects")?
            .into_iter()
            .filter_map(|(tail, size, modified_ms)| {
                let hex: String = tail.split('/').collect();
                hex.parse().ok().map(|digest| ObjectInfo {
                    digest,
                    size,
                    modified_ms,
                })
            })
            .collect();
        out.sort_by_key(|i| i.digest);
        Ok(out)
    }

    fn remove(&self, d: &Digest) -> Result<bool> {
        let key = self.object_key(d);
        let there = match self.attempt(|| self.block_on(self.s3.head(&key))) {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(self.err(&format!("look up object {}", d.hex()), &e)),
        };
        self.forget_known(d);
        if !there {
            return Ok(false);
        }
        self.attempt(|| self.block_on(self.s3.delete(&key)))
            .map_err(|e| self.err(&format!("delete object {}", d.hex()), &e))?;
        Ok(true)
    }

    fn begin(&self) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(S3Writer {
            store: self,
            done: Mutex::new(Vec::new()),
        }))
    }

    fn index_append(&self, lines: &[String]) -> Result<()> {
        let keys: Vec<(String, String)> = lines
            .iter()
            .map(|l| index_key(l).map(|k| (k, l.clone())))
            .collect::<Result<_>>()?;
        let s3 = Arc::clone(&self.s3);
        let full: Vec<(Key, String)> = keys.into_iter().map(|(k, l)| (self.key(&k), l)).collect();
        // Create-only, in parallel; an entry already there is the same entry.
        let results: Vec<(Key, std::result::Result<(), object_store::Error>)> =
            self.block_on(async {
                futures_util::stream::iter(full)
                    .map(|(k, l)| {
                        let s3 = Arc::clone(&s3);
                        async move {
                            let opts = PutOptions {
                                mode: PutMode::Create,
                                ..Default::default()
                            };
                            let r = match s3
                                .put_opts(&k, PutPayload::from(format!("{l}\n")), opts)
                                .await
                            {
                                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                                Err(e) => Err(e),
                            };
                            (k, r)
                        }
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await
            });
        for (k, r) in results {
            if let Err(e) = r {
                // Once more, one at a time, with our own retries.
                if transient(&e) {
                    let line = self
                        .tail("index", &k)
                        .unwrap_or_default()
                        .replacen('/', " ", 1);
                    self.create(&k, Bytes::from(format!("{line}\n")))
                        .map_err(|e| self.err(&format!("append index entry {k}"), &e))?;
                } else {
                    return Err(self.err(&format!("append index entry {k}"), &e));
                }
            }
        }
        Ok(())
    }

    fn index_read(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list_named("index")?
            .into_iter()
            .filter_map(|(tail, _, _)| {
                let (kind, hex) = tail.split_once('/')?;
                Some(format!("{kind} {hex}"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn index_remove(&self, drop: &HashSet<String>) -> Result<usize> {
        let present: HashSet<String> = self.index_read()?.into_iter().collect();
        let mut n = 0;
        for line in drop {
            if !present.contains(line) {
                continue;
            }
            let rel = index_key(line)?;
            self.delete_named(&rel)?;
            n += 1;
        }
        Ok(n)
    }

    fn check(&self) -> Vec<CheckStep> {
        let mut steps = Vec::new();
        let step = |name: &str, ok: bool, detail: String| CheckStep {
            step: name.to_string(),
            ok,
            detail,
        };
        let listed = self.list_keys("index");
        match &listed {
            Ok(_) => {
                steps.push(step(
                    "endpoint",
                    true,
                    self.spec
                        .endpoint
                        .as_deref()
                        .map(super::remote::redact)
                        .unwrap_or_else(|| "AWS S3".into()),
                ));
                steps.push(step("credentials", true, "accepted".into()));
                steps.push(step("bucket", true, format!("{} exists", self.spec.bucket)));
            }
            Err(e) => {
                let msg = self.err("list", e).to_string();
                let (reach, creds) = if msg.contains("cannot reach") {
                    (false, None)
                } else if msg.contains("credentials") {
                    (true, Some(false))
                } else {
                    (true, Some(true))
                };
                steps.push(step(
                    "endpoint",
                    reach,
                    if reach { "answers".into() } else { msg.clone() },
                ));
                if let Some(c) = creds {
                    steps.push(step(
                        "credentials",
                        c,
                        if c { "accepted".into() } else { msg.clone() },
                    ));
                    if c {
                        steps.push(step("bucket", false, msg));
                    }
                }
                return steps;
            }
        }
        match self.run_probe() {
            Ok(true) => steps.push(step(
                "conditional put",
                true,
                "honoured: a second create-only put of one key is refused".into(),
            )),
            Ok(false) => steps.push(step(
                "conditional put",
                false,
                "IGNORED: a second create-only put of one key succeeded; \
                 `gc --remote --force` is refused on this remote"
                    .into(),
            )),
            Err(e) => steps.push(step("conditional put", false, e.to_string())),
        }
        steps
    }

    fn as_s3(&self) -> Option<&S3Store> {
        Some(self)
    }
}

/// `run <hex>` -> `index/run/<hex>`.
fn index_key(line: &str) -> Result<String> {
    let bad = || StoreError::Remote(format!("index line {line:?} is not `<kind> <digest>`"));
    let (kind, hex) = line.split_once(' ').ok_or_else(bad)?;
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(bad());
    }
    let d: Digest = hex.parse().map_err(|_| bad())?;
    Ok(format!("index/{kind}/{}", d.hex()))
}

struct S3Writer<'a> {
    store: &'a S3Store,
    done: Mutex<Vec<Digest>>,
}

impl S3Writer<'_> {
    fn small(&self, bytes: Bytes, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let d = Digest::of(&bytes);
        super::expect_source(expected, d)?;
        let n = bytes.len() as u64;
        self.store.upload_small(&d, bytes)?;
        Ok((d, n))
    }
}

impl Writer for S3Writer<'_> {
    fn put(
        &self,
        src: Source<'_>,
        expected: Option<&Digest>,
        progress: &dyn Progress,
    ) -> Result<(Digest, u64)> {
        let read_err = |p: &std::path::Path, e: std::io::Error| {
            StoreError::Io(crate::fs_error::FsError::new("read", p, e))
        };
        let (d, n) = match src {
            Source::Bytes(b) => {
                let r = self.small(Bytes::copy_from_slice(b), expected)?;
                progress.advance(r.1);
                r
            }
            Source::Path(p) => {
                let len = std::fs::metadata(p).map_err(|e| read_err(p, e))?.len();
                if len < MULTIPART_MIN {
                    let b = std::fs::read(p).map_err(|e| read_err(p, e))?;
                    let r = self.small(Bytes::from(b), expected)?;
                    progress.advance(r.1);
                    r
                } else {
                    // Hashed first when no digest is given (a large file
                    // pushed without one), then streamed up in parts.
                    let want = match expected {
                        Some(d) => *d,
                        None => super::hash_file(p)?,
                    };
                    let mut last = None;
                    let mut out = None;
                    for _ in 0..3 {
                        let mut f = std::fs::File::open(p).map_err(|e| read_err(p, e))?;
                        match self
                            .store
                            .upload_big(&mut f, Vec::new(), Some(&want), progress)
                        {
                            Ok(r) => {
                                out = Some(r);
                                break;
                            }
                            Err(e @ StoreError::DigestMismatch { .. }) => return Err(e),
                            Err(e) => last = Some(e),
                        }
                    }
                    match out {
                        Some(r) => r,
                        None => {
                            return Err(
                                last.unwrap_or_else(|| StoreError::Remote("upload failed".into()))
                            );
                        }
                    }
                }
            }
            Source::Reader(r) => {
                let mut head = Vec::new();
                r.take(MULTIPART_MIN)
                    .read_to_end(&mut head)
                    .map_err(|e| StoreError::Remote(format!("read: {e}")))?;
                if (head.len() as u64) < MULTIPART_MIN {
                    let res = self.small(Bytes::from(head), expected)?;
                    progress.advance(res.1);
                    res
                } else {
                    let mut first = head;
                    let rest = first.split_off(PART);
                    let mut chained = std::io::Cursor::new(rest).chain(r);
                    self.store
                        .upload_big(&mut chained, first, expected, progress)?
                }
            }
        };
        if let Ok(mut done) = self.done.lock() {
            done.push(d);
        }
        Ok((d, n))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let done = self.done.lock().map(|d| d.clone()).unwrap_or_default();
        for d in &done {
            self.store.known(d);
        }
        self.store.save_cache();
        Ok(())
    }
}

/// An error and its sources on one line, whitespace collapsed (server
/// messages carry newlines).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::text::error_chain(e)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_s3_url("s3://my-bucket/team/recs/").unwrap(),
            ("my-bucket".into(), "team/recs".into())
        );
        assert_eq!(
            parse_s3_url("s3://my-bucket").unwrap(),
            ("my-bucket".into(), "".into())
        );
        for bad in [
            "s3://",
            "s3://B",
            "s3://ab",
            "s3://-bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/a b",
        ] {
            assert!(parse_s3_url(bad).is_err(), "{bad}");
        }
        let e = parse_s3_url("s3://AKIA:s3cr3t@bucket/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("credentials do not belong"), "{e}");
    }

    #[test]
    fn index_keys() {
        let d = Digest::of(b"x");
        assert_eq!(
            index_key(&format!("run {d}")).unwrap(),
            format!("index/run/{d}")
        );
        assert!(index_key("run nothex").is_err());
        assert!(index_key("Run/x 00").is_err());
    }
}
