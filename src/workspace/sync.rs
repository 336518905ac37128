//! `recsys push`, `fetch` and `pull`: move objects between the local store
//! and a remote, verifying every object received.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use super::{
    CheckedOut, CheckoutOptions, Pointer, PointerRoots, Result, Role, Root, RootOptions, Workspace,
    WorkspaceError,
};
use crate::lineage::RunRecord;
use crate::lineage::run::RUN_MAGIC;
use crate::progress::Progress;
use crate::store::remote::{self, Transferred};
use crate::store::{Digest, ObjectStore};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub remote: String,
    pub artifacts: usize,
    #[serde(flatten)]
    pub moved: Transferred,
    /// A whole-project push: what erasure deleted from the remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased: Option<super::RemoteErasure>,
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
    /// How to open remote `name` (or the default): its entry in
    /// config.json, credentials from config.local.json or the settings.
    /// `Ok(None)`: no name given and no default remote.
    pub(crate) fn remote_spec(&self, name: Option<&str>) -> Result<Option<remote::RemoteSpec>> {
        let Some((n, entry)) = self.config.pick(name)? else {
            return Ok(None);
        };
        let local = super::LocalConfig::load(&self.root)?;
        let credentials = match local.remotes.get(&n) {
            Some(c) => Some(crate::store::s3::S3Credentials {
                access_key_id: c.access_key_id.clone(),
                secret_access_key: c.secret_access_key.clone(),
                session_token: c.session_token.clone(),
            }),
            None => self.settings.aws.clone(),
        };
        Ok(Some(remote::RemoteSpec {
            name: n,
            url: entry.url,
            base: self.root.clone(),
            endpoint: entry.endpoint,
            region: entry.region.or_else(|| self.settings.aws_region.clone()),
            credentials,
            cache_dir: Some(self.root.join(super::STORE_DIR).join("remotes")),
        }))
    }

    pub(crate) fn open_remote(&self, name: Option<&str>) -> Result<(String, Box<dyn ObjectStore>)> {
        let spec = self.remote_spec(name)?.ok_or_else(|| {
            WorkspaceError::Remote(
                "no remote given and no default remote (recsys remote add <name> <url> --default)"
                    .into(),
            )
        })?;
        let store = remote::open(&spec)?;
        Ok((spec.name, store))
    }

    /// `recsys remote check`: reachability, credentials, bucket and the
    /// conditional-put probe (S3), or that the directory reads.
    pub fn check_remote(&self, name: Option<&str>) -> Result<(String, Vec<remote::CheckStep>)> {
        let (n, store) = self.open_remote(name)?;
        Ok((n, store.check()))
    }

    /// The keep-set a transfer moves: everything named ([`RootOptions::named`])
    /// for a whole-project command, or only `selected` (with lineage, but not
    /// what the request log names) when the command was given targets or a
    /// revision. Refused while part of it cannot be read: what it names
    /// would silently not travel.
    fn transfer_roots(
        &self,
        selected: &[(String, Pointer, String)],
        everything: bool,
        remote: Option<&dyn ObjectStore>,
    ) -> Result<super::KeepSet> {
        let opts = RootOptions {
            pointers: PointerRoots::Selected(
                selected
                    .iter()
                    .map(|(rel, p, _)| (rel.clone(), p.clone()))
                    .collect(),
            ),
            requests: everything,
            remote,
            ..RootOptions::named()
        };
        let keep = self.roots(&opts)?;
        if !keep.problems().is_empty() {
            let list: Vec<String> = keep.problems().iter().map(|p| p.to_string()).collect();
            return Err(WorkspaceError::Remote(format!(
                "cannot tell everything that must travel (`recsys audit` lists these):\n  {}",
                list.join("\n  ")
            )));
        }
        Ok(keep)
    }

    /// Push what the keep-set names and the remote lacks: the selected
    /// artifacts (all pointer files' by default) with their run records,
    /// all lineage (run records, request-log segments), and — for a whole
    /// project push — what the request log names (models, datasets and
    /// configs that answered, even retired ones).
    pub fn push(
        &self,
        targets: &[PathBuf],
        remote_name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        // The pointers first: a bad one is reported before any remote is
        // contacted.
        let selected = self.select_pointers(targets, None)?;
        let (rname, remote) = self.open_remote(remote_name)?;
        let keep = self.transfer_roots(&selected, targets.is_empty(), None)?;
        // Skip a whole directory when its manifest is already there:
        // manifests are committed only after their files.
        let mut manifest_there: HashMap<Digest, bool> = HashMap::new();
        // What the remote's index lists already: an entry a killed push
        // did not write is written by the next one.
        let indexed: std::collections::HashSet<String> = remote.index_read()?.into_iter().collect();
        let mut missing: Option<(Digest, String)> = None;
        let mut new_index = Vec::new();
        let mut phases = Vec::new();
        for phase in keep.phases(|_, _| true) {
            let mut out = Vec::with_capacity(phase.len());
            for d in phase {
                let Some(why) = keep.why(&d) else { continue };
                if !self.store.contains(&d)? {
                    // What a pointer names must go; history that is not
                    // here (collected, or never fetched) cannot.
                    if let Root::Pointer { pointer } = why.root
                        && missing.is_none()
                    {
                        missing = Some((d, pointer.clone()));
                    }
                    continue;
                }
                if why.role == Role::File
                    && let Some(m) = why.via
                {
                    let there = match manifest_there.get(&m) {
                        Some(t) => *t,
                        None => {
                            let t = remote.contains(&m)?;
                            manifest_there.insert(m, t);
                            t
                        }
                    };
                    if there {
                        continue;
                    }
                }
                let index_line = match why.role {
                    Role::RunRecord if self.object_starts_with(&d, RUN_MAGIC) => Some(INDEX_RUN),
                    Role::Segment => Some(INDEX_SEGMENT),
                    _ => None,
                };
                if let Some(prefix) = index_line {
                    let line = format!("{prefix}{d}");
                    if !indexed.contains(&line) {
                        new_index.push(line);
                    }
                }
                out.push(d);
            }
            phases.push(out);
        }
        if let Some((d, pointer)) = missing {
            return Err(WorkspaceError::Remote(format!(
                "{pointer} names {d}, which is not in the local store (`recsys fetch` \
                 brings it back from a remote that has it)"
            )));
        }
        // S3: this clone's roots go up before any object (gc --remote
        // honours them), and a remote gc that runs meanwhile is noticed.
        let epoch = match remote.as_s3() {
            Some(s3) => {
                let epoch = self.remote_gc_epoch(s3)?;
                s3.put_roots(&self.clone_id()?, self.roots_object()?)?;
                Some(epoch)
            }
            None => None,
        };
        let mut moved =
            remote::transfer(&self.store, &*remote, &phases, self.settings.jobs, progress)?;
        if let (Some(s3), Some(epoch)) = (remote.as_s3(), epoch)
            && self.remote_gc_since(s3, &epoch)?
        {
            // What was skipped as present may have been collected: every
            // object again (no directory skipped for its manifest), each
            // looked up on the remote.
            let mut all = Vec::new();
            for phase in keep.phases(|_, _| true) {
                let mut out = Vec::with_capacity(phase.len());
                for d in phase {
                    if self.store.contains(&d)? {
                        out.push(d);
                    }
                }
                all.push(out);
            }
            let again =
                remote::transfer(&self.store, &*remote, &all, self.settings.jobs, progress)?;
            moved.objects += again.objects;
            moved.bytes += again.bytes;
        }
        if !new_index.is_empty() {
            remote.index_append(&new_index)?;
        }
        // Only after the run records are there (see `remote_erase`).
        let erased = if targets.is_empty() {
            Some(self.erase_on_remote(&*remote, &keep)?)
        } else {
            None
        };
        Ok(PushReport {
            remote: rname,
            artifacts: selected.len(),
            moved,
            erased,
        })
    }

    /// Download what the selected pointers (at `rev`, or in the work tree)
    /// need, every run record and request-log segment the remote's index
    /// lists, and — for a whole-project fetch — what those segments name
    /// (the models, datasets and configs that answered); index the run
    /// records and segments into lineage.db.
    pub fn fetch(
        &mut self,
        targets: &[PathBuf],
        rev: Option<&str>,
        remote_name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<PullReport> {
        let selected = self.select_pointers(targets, rev)?;
        let (rname, remote) = self.open_remote(remote_name)?;
        // Lineage first: it says what else is needed (a segment names its
        // model), and a run record here without its outputs is ordinary
        // (collected history).
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
        let mut lineage = Vec::new();
        for d in runs.iter().chain(&segments) {
            if !self.store.contains(d)? && remote.contains(d)? {
                lineage.push(*d);
            }
        }
        let first = remote::transfer(
            &*remote,
            &self.store,
            &[lineage],
            self.settings.jobs,
            progress,
        )?;
        let origin = format!("remote {rname}");
        let (runs_indexed, mut conflicts) = self.index_runs(&runs, &origin)?;
        let segments_indexed = self.index_segments(&segments)?;

        let everything = targets.is_empty() && rev.is_none();
        let keep = self.transfer_roots(&selected, everything, Some(&*remote))?;
        let mut phases = Vec::new();
        for phase in keep.phases(|_, _| true) {
            let mut out = Vec::with_capacity(phase.len());
            for d in phase {
                if self.store.contains(&d)? {
                    continue;
                }
                // What a pointer names must come (its absence there is an
                // error); history the remote lacks cannot.
                let named = matches!(keep.why(&d).map(|w| w.root), Some(Root::Pointer { .. }));
                if named || remote.contains(&d)? {
                    out.push(d);
                }
            }
            phases.push(out);
        }
        let moved = remote::transfer(&*remote, &self.store, &phases, self.settings.jobs, progress)
            .map_err(|e| match e {
                crate::store::StoreError::Missing(d) => WorkspaceError::Remote(format!(
                    "{} is not on remote {}",
                    d.short(),
                    remote.location()
                )),
                e => e.into(),
            })?;
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
                objects: moved.objects + first.objects,
                bytes: moved.bytes + first.bytes,
                already_there: moved.already_there + first.already_there,
            },
            runs_indexed,
            segments_indexed,
            conflicts,
            checked_out: Vec::new(),
        })
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
    /// does not know yet. Returns how many. An unreadable segment is
    /// skipped: `audit` reports it.
    fn index_segments(&mut self, segments: &BTreeSet<Digest>) -> Result<usize> {
        let known: BTreeSet<String> = self
            .lineage
            .segments()?
            .into_iter()
            .filter_map(|s| s.digest)
            .collect();
        let mut n = 0;
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
            let Ok(seg) = crate::segment::parse_segment(&d.hex(), &bytes) else {
                continue;
            };
            crate::lineage::requests::index_segment(
                &self.lineage,
                &seg,
                Some((self.now_ms(), &d.hex())),
            )?;
            n += 1;
        }
        Ok(n)
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
