//! `recsys push`, `fetch` and `pull`: move objects between the local store
//! and a remote, verifying every object received.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{CheckedOut, CheckoutOptions, Pointer, Result, Workspace, WorkspaceError};
use crate::lineage::RunRecord;
use crate::lineage::run::RUN_MAGIC;
use crate::progress::Progress;
use crate::store::manifest::Manifest;
use crate::store::remote::{self, Transferred};
use crate::store::{Digest, ObjectStore};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub remote: String,
    pub artifacts: usize,
    #[serde(flatten)]
    pub moved: Transferred,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    pub remote: String,
    pub artifacts: usize,
    #[serde(flatten)]
    pub moved: Transferred,
    /// Run records newly indexed into lineage.db.
    pub runs_indexed: usize,
    /// Request-log segments newly indexed into lineage.db.
    pub segments_indexed: usize,
    /// Version names that arrived for other bytes than they have here.
    pub conflicts: Vec<String>,
    pub checked_out: Vec<CheckedOut>,
}

const INDEX_RUN: &str = "run ";
/// Closed request-log segments: serving machines commit nothing to git, so
/// the remote's index is how another machine finds them.
const INDEX_SEGMENT: &str = "segment ";

impl Workspace {
    fn open_remote(&self, name: Option<&str>) -> Result<(String, Box<dyn ObjectStore>)> {
        let (n, url) = self.config.pick(name)?.ok_or_else(|| {
            WorkspaceError::Remote(
                "no remote given and no default remote (recsys remote add <name> <url> --default)"
                    .into(),
            )
        })?;
        let store = remote::open(&url, &self.root)?;
        Ok((n, store))
    }

    /// Push the objects of the selected artifacts, their run records, and
    /// every other run record in lineage.db.
    pub fn push(
        &self,
        targets: &[PathBuf],
        remote_name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        let (rname, remote) = self.open_remote(remote_name)?;
        let selected = self.select_pointers(targets, None)?;
        let mut leaves = BTreeSet::new();
        let mut tops = BTreeSet::new();
        for (_, p, _) in &selected {
            // Skip a whole directory when its manifest is already there:
            // manifests are committed only after their files.
            if p.is_dir && !remote.contains(&p.digest)? {
                for e in self.load_manifest(&p.digest)?.entries {
                    leaves.insert(e.digest);
                }
            }
            if !p.is_dir {
                self.store.verified_path(&p.digest)?;
            }
            tops.insert(p.digest);
            if let Some(r) = p.run
                && self.store.contains(&r)?
            {
                tops.insert(r);
            }
        }
        let mut runs = Vec::new();
        for id in self.lineage.run_ids()? {
            if self.store.contains(&id)? {
                tops.insert(id);
                runs.push(id);
            }
        }
        for (_, p, _) in &selected {
            if let Some(r) = p.run
                && !runs.contains(&r)
                && self.store.contains(&r)?
            {
                runs.push(r);
            }
        }
        // Request-log segments and the configs their requests name.
        let mut new_segments = Vec::new();
        for seg in self.lineage.segments()? {
            if let Some(d) = seg.digest.as_deref().and_then(|h| h.parse::<Digest>().ok())
                && self.store.contains(&d)?
            {
                tops.insert(d);
                if !remote.contains(&d)? {
                    new_segments.push(d);
                }
            }
        }
        for (s, _) in self.lineage.served_summary()? {
            if let Ok(d) = s.config_digest.parse::<Digest>()
                && self.store.contains(&d)?
            {
                tops.insert(d);
            }
        }
        let new_runs: Vec<Digest> = runs
            .iter()
            .filter(|r| remote.contains(r).map(|c| !c).unwrap_or(true))
            .copied()
            .collect();
        let phases = vec![
            leaves.into_iter().collect::<Vec<_>>(),
            tops.into_iter().collect::<Vec<_>>(),
        ];
        let moved = remote::transfer(&self.store, &*remote, &phases, self.settings.jobs, progress)?;
        let lines: Vec<String> = new_runs
            .iter()
            .map(|r| format!("{INDEX_RUN}{r}"))
            .chain(new_segments.iter().map(|s| format!("{INDEX_SEGMENT}{s}")))
            .collect();
        if !lines.is_empty() {
            remote.index_append(&lines)?;
        }
        Ok(PushReport {
            remote: rname,
            artifacts: selected.len(),
            moved,
        })
    }

    /// Download what the selected pointers (at `rev`, or in the work tree)
    /// need, plus every run record the remote's index lists, and index the
    /// run records into lineage.db.
    pub fn fetch(
        &mut self,
        targets: &[PathBuf],
        rev: Option<&str>,
        remote_name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<PullReport> {
        let (rname, remote) = self.open_remote(remote_name)?;
        let selected = self.select_pointers(targets, rev)?;
        let mut leaves = BTreeSet::new();
        let mut tops = BTreeSet::new();
        for (_, p, _) in &selected {
            self.plan_fetch(&*remote, p, &mut leaves, &mut tops)?;
        }
        let mut runs: BTreeSet<Digest> = selected.iter().filter_map(|(_, p, _)| p.run).collect();
        let mut segments: BTreeSet<Digest> = BTreeSet::new();
        for line in remote.index_read()? {
            if let Some(d) = line.strip_prefix(INDEX_RUN).and_then(|h| h.parse().ok()) {
                runs.insert(d);
            } else if let Some(d) = line
                .strip_prefix(INDEX_SEGMENT)
                .and_then(|h| h.parse().ok())
            {
                segments.insert(d);
            }
        }
        for s in &segments {
            if !self.store.contains(s)? && remote.contains(s)? {
                tops.insert(*s);
            }
        }
        for r in &runs {
            if !self.store.contains(r)? && remote.contains(r)? {
                tops.insert(*r);
            }
        }
        let phases = vec![
            leaves.into_iter().collect::<Vec<_>>(),
            tops.into_iter().collect::<Vec<_>>(),
        ];
        let moved = remote::transfer(&*remote, &self.store, &phases, self.settings.jobs, progress)?;
        let origin = format!("remote {rname}");
        let (runs_indexed, mut conflicts) = self.index_runs(&runs, &origin)?;
        let (segments_indexed, configs) = self.index_segments(&segments)?;
        let configs: Vec<Digest> = configs
            .into_iter()
            .filter(|d| {
                !self.store.contains(d).unwrap_or(true) && remote.contains(d).unwrap_or(false)
            })
            .collect();
        let more = if configs.is_empty() {
            Transferred::default()
        } else {
            remote::transfer(
                &*remote,
                &self.store,
                &[configs],
                self.settings.jobs,
                progress,
            )?
        };
        for (_, p, _) in &selected {
            if let Some(a) = self.lineage.artifact_by_name(&p.name)?
                && a.digest != p.digest
            {
                let e = crate::lineage::LineageError::NameConflict {
                    name: p.name.clone(),
                    existing: a.digest,
                    incoming: p.digest,
                    origin: origin.clone(),
                }
                .to_string();
                if !conflicts.contains(&e) {
                    conflicts.push(e);
                }
            }
        }
        Ok(PullReport {
            remote: rname,
            artifacts: selected.len(),
            moved: Transferred {
                objects: moved.objects + more.objects,
                bytes: moved.bytes + more.bytes,
                already_there: moved.already_there + more.already_there,
            },
            runs_indexed,
            segments_indexed,
            conflicts,
            checked_out: Vec::new(),
        })
    }

    fn plan_fetch(
        &self,
        remote: &dyn ObjectStore,
        p: &Pointer,
        leaves: &mut BTreeSet<Digest>,
        tops: &mut BTreeSet<Digest>,
    ) -> Result<()> {
        if p.is_dir {
            let m = if self.store.contains(&p.digest)? {
                self.load_manifest(&p.digest)?
            } else {
                let bytes = remote.get(&p.digest)?.ok_or_else(|| {
                    WorkspaceError::Remote(format!(
                        "{} ({}) is not on remote {}",
                        p.name,
                        p.digest.short(),
                        remote.location()
                    ))
                })?;
                let actual = Digest::of(&bytes);
                if actual != p.digest {
                    return Err(crate::store::StoreError::DigestMismatch {
                        expected: p.digest,
                        actual,
                        from: remote.location(),
                    }
                    .into());
                }
                Manifest::parse(&p.digest, &bytes)?
            };
            for e in m.entries {
                if !self.store.contains(&e.digest)? {
                    leaves.insert(e.digest);
                }
            }
        }
        if !self.store.contains(&p.digest)? {
            tops.insert(p.digest);
        }
        Ok(())
    }

    /// Index run records present in the store. Returns (newly indexed,
    /// conflicts); a conflicting run is reported, not merged.
    pub(crate) fn index_runs(
        &mut self,
        runs: &BTreeSet<Digest>,
        origin: &str,
    ) -> Result<(usize, Vec<String>)> {
        let mut records = Vec::new();
        for id in runs {
            if self.lineage.run(id)?.is_some() {
                continue;
            }
            let Some(bytes) = self.store.get(id)? else {
                continue;
            };
            if !bytes.starts_with(RUN_MAGIC) || Digest::of(&bytes) != *id {
                continue;
            }
            if let Ok(r) = RunRecord::parse(id, &bytes) {
                records.push((*id, r));
            }
        }
        records.sort_by_key(|(id, r)| (r.started, *id));
        let mut n = 0;
        let mut conflicts = Vec::new();
        for (id, r) in records {
            let res = self.lineage.write_txn(|tx| tx.index_run(&id, &r, origin));
            match res {
                Ok(()) => n += 1,
                Err(e @ crate::lineage::LineageError::NameConflict { .. }) => {
                    conflicts.push(e.to_string())
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((n, conflicts))
    }

    /// Index request-log segments present in the store that lineage.db
    /// does not know yet. Returns (indexed, config digests their requests
    /// name). An unreadable segment is skipped: `audit` reports it.
    fn index_segments(&mut self, segments: &BTreeSet<Digest>) -> Result<(usize, BTreeSet<Digest>)> {
        let known: BTreeSet<String> = self
            .lineage
            .segments()?
            .into_iter()
            .filter_map(|s| s.digest)
            .collect();
        let mut n = 0;
        let mut configs = BTreeSet::new();
        for d in segments {
            if known.contains(&d.hex()) {
                continue;
            }
            let Some(bytes) = self.store.get(d)? else {
                continue;
            };
            if Digest::of(&bytes) != *d {
                continue;
            }
            let Ok(seg) = crate::lineage::requests::parse_segment(&d.hex(), &bytes) else {
                continue;
            };
            for r in &seg.records {
                if let Ok(c) = r.served.config_digest.parse() {
                    configs.insert(c);
                }
            }
            crate::lineage::requests::index_segment(
                &self.lineage,
                &seg,
                Some((self.now_ms(), &d.hex())),
            )?;
            n += 1;
        }
        Ok((n, configs))
    }

    /// `fetch`, then `checkout` of what was fetched.
    pub fn pull(
        &mut self,
        targets: &[PathBuf],
        remote_name: Option<&str>,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<PullReport> {
        let mut report = self.fetch(targets, opts.rev.as_deref(), remote_name, progress)?;
        report.checked_out = self.checkout(targets, opts, progress)?;
        Ok(report)
    }
}
