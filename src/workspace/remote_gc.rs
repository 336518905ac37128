//! `recsys gc --remote`: mark and sweep on a shared S3 remote.
//!
//! Several projects (and several clones of one) may share a bucket, and no
//! clone knows what the others need. So every push leaves this clone's
//! keep-set ([`Workspace::roots`], what gc keeps locally) on the remote as
//! `roots/<clone-id>.json`, and the remote gc keeps the union of every
//! roots object there, every index entry (lineage is never collected), and
//! every object younger than the grace period (default 24 h: a push in
//! flight whose roots are not up yet). Only `objects/` is ever swept.
//!
//! A dry run (the default) changes nothing. `--force` first takes
//! `locks/gc` with a create-only put (refused on a server that ignores
//! them: two collectors could both "hold" it), and leaves a marker
//! `gc/<time>-<id>`; a push that sees a new marker after its transfer
//! waits for the lock to go, forgets its cache of what the remote holds
//! and checks again, so an object it skipped as present and a concurrent
//! gc then took is sent again.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Result, RootOptions, Workspace, WorkspaceError};
use crate::store::s3::S3Store;
use crate::store::{Digest, ObjectStore};

/// Remote gc keeps what changed less than this long ago.
pub const REMOTE_GRACE: Duration = Duration::from_secs(24 * 3600);
/// A lock older than this is a gc that died: taken over.
const STALE_LOCK_MS: i64 = 3600 * 1000;
const LOCK: &str = "locks/gc";

/// `roots/<clone-id>.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RootsObject {
    pub clone: String,
    pub objects: Vec<Digest>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteGcReport {
    pub remote: String,
    pub dry_run: bool,
    /// Roots objects honoured (one per clone that pushed).
    pub roots_objects: usize,
    pub kept_objects: usize,
    /// Unnamed, but younger than the grace period.
    pub young_objects: usize,
    pub removed_objects: usize,
    pub removed_bytes: u64,
    /// Removed (or, on a dry run, that would be).
    pub removed: Vec<Digest>,
}

#[derive(Debug, Clone)]
pub struct RemoteGcOptions {
    pub grace: Duration,
    /// Delete (default: only report).
    pub force: bool,
}

impl Default for RemoteGcOptions {
    fn default() -> Self {
        RemoteGcOptions {
            grace: REMOTE_GRACE,
            force: false,
        }
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Workspace {
    /// This clone's id on shared remotes (made once, kept in lineage.db).
    pub(crate) fn clone_id(&self) -> Result<String> {
        if let Some(id) = self.lineage.meta("clone_id")? {
            return Ok(id);
        }
        let id = uuid::Uuid::now_v7().to_string();
        self.lineage.set_meta("clone_id", &id)?;
        Ok(id)
    }

    /// Everything this clone keeps, as the roots object a push leaves.
    pub(crate) fn roots_object(&self) -> Result<Vec<u8>> {
        let all = self.select_pointers(&[], None)?;
        let keep = self.roots(&RootOptions {
            pointers: super::PointerRoots::Selected(
                all.iter().map(|(r, p, _)| (r.clone(), p.clone())).collect(),
            ),
            ..RootOptions::named()
        })?;
        let mut objects: Vec<Digest> = keep.iter().map(|(d, _)| d).collect();
        objects.sort();
        let r = RootsObject {
            clone: self.clone_id()?,
            objects,
        };
        serde_json::to_vec(&r).map_err(|e| WorkspaceError::Invalid(e.to_string()))
    }

    /// Before a push: wait for a running remote gc to finish; the newest
    /// gc marker then. A gc that starts later leaves a newer one.
    pub(crate) fn remote_gc_epoch(&self, s3: &S3Store) -> Result<String> {
        self.wait_for_remote_gc(s3)?;
        Ok(s3.gc_epoch()?)
    }

    /// After a push's transfer: if a remote gc started meanwhile, wait for
    /// it and forget the cache of what the remote holds (the caller checks
    /// everything again). Whether one did.
    pub(crate) fn remote_gc_since(&self, s3: &S3Store, epoch: &str) -> Result<bool> {
        if s3.gc_epoch()? == epoch {
            return Ok(false);
        }
        self.wait_for_remote_gc(s3)?;
        s3.forget_cache();
        Ok(true)
    }

    fn wait_for_remote_gc(&self, s3: &S3Store) -> Result<()> {
        let start = std::time::Instant::now();
        while s3.get_named(LOCK)?.is_some() {
            if start.elapsed() > Duration::from_secs(600) {
                return Err(WorkspaceError::Remote(format!(
                    "{}: a gc --remote has held {LOCK} for 10 minutes; push again when it is done",
                    s3.location()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Mark and sweep on the remote (see the module docs).
    pub fn gc_remote(
        &self,
        remote_name: Option<&str>,
        opts: &RemoteGcOptions,
    ) -> Result<RemoteGcReport> {
        let (rname, remote) = self.open_remote(remote_name)?;
        let s3 = remote.as_s3().ok_or_else(|| {
            WorkspaceError::Remote(format!(
                "gc --remote collects s3:// remotes; {} is a directory (run `recsys gc` in a \
                 project there)",
                remote.location()
            ))
        })?;
        // This clone's roots first: what it names now counts.
        let mine = self.roots_object()?;
        if opts.force {
            s3.require_conditional_put("gc --remote --force (its lock)")?;
            self.take_lock(s3)?;
        }
        let res = self.sweep(&rname, s3, mine, opts);
        if opts.force {
            s3.delete_named(LOCK)?;
        }
        res
    }

    fn take_lock(&self, s3: &S3Store) -> Result<()> {
        let body = serde_json::json!({"clone": self.clone_id()?, "started_ms": wall_ms()})
            .to_string()
            .into_bytes();
        if s3.create_named(LOCK, body.clone())? {
            return Ok(());
        }
        let held = s3.list_named("locks")?;
        let age = held
            .iter()
            .find(|(n, _, _)| n == "gc")
            .map(|(_, _, m)| wall_ms() - m)
            .unwrap_or(0);
        if age < STALE_LOCK_MS {
            return Err(WorkspaceError::Remote(format!(
                "{}: another gc --remote holds {LOCK} (taken {} s ago); nothing removed",
                s3.location(),
                age / 1000
            )));
        }
        // A gc that died an hour ago: take its lock over.
        s3.delete_named(LOCK)?;
        if !s3.create_named(LOCK, body)? {
            return Err(WorkspaceError::Remote(format!(
                "{}: another gc --remote took {LOCK} just now; nothing removed",
                s3.location()
            )));
        }
        Ok(())
    }

    fn sweep(
        &self,
        rname: &str,
        s3: &S3Store,
        mine: Vec<u8>,
        opts: &RemoteGcOptions,
    ) -> Result<RemoteGcReport> {
        let clone = self.clone_id()?;
        if opts.force {
            let marker = format!("gc/{:016}-{}", wall_ms(), uuid::Uuid::now_v7());
            s3.create_named(&marker, clone.clone().into_bytes())?;
            s3.put_roots(&clone, mine.clone())?;
        }
        // The marker is up before the roots are read: a push that starts
        // later sees it, one that started earlier has its roots up or its
        // objects young.
        let mut keep: HashSet<Digest> = HashSet::new();
        let mut roots_objects = 0;
        let mut saw_mine = false;
        for (name, _, _) in s3.list_named("roots")? {
            let Some(bytes) = s3.get_named(&format!("roots/{name}"))? else {
                continue; // replaced meanwhile: its successor is listed too or newer
            };
            let r: RootsObject = serde_json::from_slice(&bytes).map_err(|e| {
                WorkspaceError::Remote(format!(
                    "{}: roots/{name} cannot be read ({e}); nothing removed: what it keeps is unknown",
                    s3.location()
                ))
            })?;
            saw_mine |= r.clone == clone;
            keep.extend(r.objects);
            roots_objects += 1;
        }
        if !saw_mine {
            // A dry run leaves nothing on the remote; this clone's roots
            // still count.
            let r: RootsObject = serde_json::from_slice(&mine)
                .map_err(|e| WorkspaceError::Invalid(e.to_string()))?;
            keep.extend(r.objects);
            roots_objects += 1;
        }
        for line in s3.index_read()? {
            if let Some(d) = line.split_once(' ').and_then(|(_, h)| h.parse().ok()) {
                keep.insert(d);
            }
        }
        let cutoff = wall_ms() - opts.grace.as_millis() as i64;
        let mut report = RemoteGcReport {
            remote: rname.to_string(),
            dry_run: !opts.force,
            roots_objects,
            kept_objects: 0,
            young_objects: 0,
            removed_objects: 0,
            removed_bytes: 0,
            removed: Vec::new(),
        };
        for info in s3.list_info()? {
            if keep.contains(&info.digest) {
                report.kept_objects += 1;
            } else if info.modified_ms > cutoff {
                report.young_objects += 1;
            } else {
                report.removed_objects += 1;
                report.removed_bytes += info.size;
                report.removed.push(info.digest);
            }
        }
        if opts.force {
            for d in &report.removed {
                s3.remove(d)?;
            }
        }
        Ok(report)
    }
}
