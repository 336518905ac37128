//! `recsys gc`: remove objects nothing references, and leftover temp files.
//!
//! Kept: every object a pointer file names (in the work tree, or in any
//! commit with `all_commits`), the files of those directory manifests, and
//! all lineage — run records and request-log segments are never collected,
//! so history stays explainable even after its data is gone locally (it can
//! be pulled again from a remote).

use std::collections::HashSet;
use std::fs;

use super::{Result, Workspace};
use crate::lineage::run::RUN_MAGIC;
use crate::store::{Digest, ObjectStore};

/// Request-log segments (serving) start with this line.
pub const SEGMENT_MAGIC: &[u8] = b"{\"recsys_log_segment\":";

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub removed_objects: usize,
    pub removed_bytes: u64,
    pub removed_temp_files: usize,
    pub kept_objects: usize,
    /// Digests removed (or that would be, on a dry run).
    pub removed: Vec<Digest>,
}

impl Workspace {
    pub fn gc(&self, dry_run: bool, all_commits: bool) -> Result<GcReport> {
        // Exclusive: no writer is mid-batch while we look at temp files.
        let _lock = self.store.lock(true)?;
        let mut keep: HashSet<Digest> = HashSet::new();
        let mut pointers = Vec::new();
        for rel in self.pointer_files()? {
            let (p, _) = self.read_pointer(&rel)?;
            pointers.push(p);
        }
        if all_commits && let Some(g) = self.git() {
            for c in g.all_commits()? {
                for (_, p, _) in self.pointers_at(&c)? {
                    pointers.push(p);
                }
            }
        }
        for p in &pointers {
            keep.insert(p.digest);
            if let Some(r) = p.run {
                keep.insert(r);
            }
            if p.is_dir
                && let Some(bytes) = self.store.get(&p.digest)?
                && let Ok(m) = crate::store::manifest::Manifest::parse(&p.digest, &bytes)
            {
                keep.extend(m.entries.iter().map(|e| e.digest));
            }
        }
        keep.extend(self.lineage.run_ids()?);

        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        for d in self.store.list()? {
            if keep.contains(&d) || self.is_lineage_object(&d) {
                report.kept_objects += 1;
                continue;
            }
            report.removed_bytes += self.store.size_of(&d).unwrap_or(0);
            report.removed_objects += 1;
            report.removed.push(d);
            if !dry_run {
                self.store.remove(&d)?;
            }
        }
        for (p, _) in self.store.temp_files()? {
            report.removed_temp_files += 1;
            if !dry_run {
                let _ = fs::remove_file(&p);
            }
        }
        Ok(report)
    }

    /// Run records and log segments are lineage: recognised by their first
    /// bytes, so they survive even if lineage.db was lost.
    fn is_lineage_object(&self, d: &Digest) -> bool {
        self.object_starts_with(d, RUN_MAGIC) || self.object_starts_with(d, SEGMENT_MAGIC)
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
