//! `recsys gc`: remove the objects the keep-set ([`Workspace::roots`]) does
//! not name, and leftover temp files.
//!
//! Everything a root names stays: pointer files' artifacts (and run
//! records, and their outputs), what the request log names (models,
//! datasets, configs, runs), all lineage (run records and segments), and
//! anything changed within the grace period. A keep-set with a problem (a
//! pointer file that cannot be read, a damaged manifest) removes nothing:
//! what it would name is unknown.

use std::fs;
use std::time::Duration;

use super::{Result, Role, Root, RootOptions, Workspace, WorkspaceError};
use crate::store::{Digest, ObjectStore};

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Keep everything any git commit's pointer files name.
    pub all_commits: bool,
    /// Keep objects changed less than this long ago.
    pub grace: Duration,
    /// Retention: first drop closed request-log segments whose newest
    /// request is older than this ([`super::retention`]).
    pub requests_older_than: Option<Duration>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            all_commits: false,
            grace: super::GRACE,
            requests_older_than: None,
        }
    }
}

/// A kept object and why (in a dry run's report).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptObject {
    pub digest: Digest,
    #[serde(flatten)]
    pub root: Root,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Digest>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub removed_objects: usize,
    pub removed_bytes: u64,
    pub removed_temp_files: usize,
    pub kept_objects: usize,
    /// Digests removed (or that would be, on a dry run).
    pub removed: Vec<Digest>,
    /// On a dry run: every object kept, with the root that keeps it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptObject>,
    /// What retention dropped (or would), with `--requests-older-than`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<super::RetentionReport>,
}

impl Workspace {
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        // Retention first (its run record names what goes), outside the
        // exclusive lock: recording takes it shared.
        let retention = match opts.requests_older_than {
            Some(age) => Some(self.retention(age, opts.dry_run)?),
            None => None,
        };
        // Exclusive: no writer is mid-batch, and none has stored objects it
        // has not named yet (`record_run` holds the lock shared until its
        // pointer files are written).
        let _lock = self.store.lock(true)?;
        let mut roots = RootOptions::gc(opts.all_commits, opts.grace);
        if let Some(r) = &retention {
            // A dry run recorded nothing: say what the record would erase.
            roots.erased = r.dropped.iter().map(|s| s.digest).collect();
        }
        let keep = self.roots(&roots)?;
        if !keep.problems().is_empty() {
            let list: Vec<String> = keep.problems().iter().map(|p| p.to_string()).collect();
            return Err(WorkspaceError::UnsureWhatToKeep(list.join("\n  ")));
        }
        let mut report = GcReport {
            dry_run: opts.dry_run,
            retention,
            ..GcReport::default()
        };
        for d in self.store.list()? {
            if let Some(why) = keep.why(&d) {
                report.kept_objects += 1;
                if opts.dry_run {
                    report.kept.push(KeptObject {
                        digest: d,
                        root: why.root.clone(),
                        role: why.role,
                        via: why.via,
                    });
                }
                continue;
            }
            report.removed_bytes += self.store.size_of(&d).unwrap_or(0);
            report.removed_objects += 1;
            report.removed.push(d);
            if !opts.dry_run {
                self.store.remove(&d)?;
            }
        }
        for (p, _) in self.store.temp_files()? {
            report.removed_temp_files += 1;
            if !opts.dry_run {
                let _ = fs::remove_file(&p);
            }
        }
        Ok(report)
    }

    /// Whether an object's first bytes are `magic` (reads only those bytes).
    pub(crate) fn object_starts_with(&self, d: &Digest, magic: &[u8]) -> bool {
        let p = self.store.object_path(d);
        let mut head = vec![0u8; magic.len()];
        match fs::File::open(&p) {
            Ok(mut f) => std::io::Read::read_exact(&mut f, &mut head).is_ok() && head == magic,
            Err(_) => false,
        }
    }
}
