//! `recsys forget --user <id>`: remove one user's requests and attributes
//! from the request log, the request index and every dataset that holds
//! them, without editing any object.
//!
//! Objects are immutable and named by their bytes, so erasure writes new
//! ones: each closed segment holding the user becomes a new segment object
//! without their request lines (same header and name), each dataset
//! holding them a new dataset directory without their rows (same version
//! name, new digest; pointer files rewritten). One `forget` run record
//! says what was removed (counts), when, why, and which objects it
//! superseded (old digest -> new digest, [`Erased`]); indexing it puts them
//! in lineage.db's `erased` table, from which on the keep-set no longer
//! keeps them, so `gc` removes them here and `push` on the remote. Models
//! trained on the old bytes are listed in the record: they were trained on
//! data that included the user, and only retraining changes that.
//!
//! The user id is recorded as a BLAKE3 hash (`user_hash`), so the record
//! does not spell the id out; ids are small integers, so the hash is not
//! anonymous (anyone can hash every id), it only lets a later `forget`
//! or an auditor check that a given id was forgotten.
//!
//! Open segments: one a running server holds (it keeps a shared `flock` on
//! the file) is never touched; if it holds a request of the user, forget
//! refuses before changing anything. One nobody holds (a crashed server's)
//! is closed into the store without the user's lines, as `serve` would
//! recover it.
//!
//! Order (a crash at any point loses nothing and leaves no pointer naming
//! a missing object): new objects durable; run record durable and indexed
//! (the old objects are now erased for the keep-set); the request index
//! updated; pointer files and work-tree files rewritten; lineage.db's WAL
//! checkpointed and the file vacuumed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{LOG_DIR, Pointer, Result, Workspace, WorkspaceError, write_atomic};
use crate::dataset::{Dataset, DatasetMeta};
use crate::lineage::ArtifactRef;
use crate::lineage::RunRecord;
use crate::lineage::erasure::Erased;
use crate::lineage::requests::index_segment;
use crate::lineage::run::RUN_FORMAT;
use crate::progress::NoProgress;
use crate::segment::{SEGMENT_MAGIC, parse_segment};
use crate::store::manifest::{Entry, Manifest};
use crate::store::{Digest, ObjectStore, Source};

/// The files of a dataset directory that can hold a user's rows: (path,
/// column of the user id), or `None` for the quarantine (JSON lines).
const USER_FILES: [(&str, Option<usize>); 4] = [
    ("events.csv", Some(1)),
    ("requests.csv", Some(1)),
    ("users.csv", Some(0)),
    ("quarantine.jsonl", None),
];
const DATASET_JSON: &str = "dataset.json";

#[derive(Debug, Clone)]
pub struct ForgetOptions {
    pub user: i64,
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// A segment rewritten without the user.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentForgotten {
    pub name: String,
    /// The closed segment object, or the open file (`log/requests/...`).
    pub old: String,
    pub new: Option<Digest>,
    pub requests_removed: u64,
}

/// A dataset rewritten without the user.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetForgotten {
    pub name: String,
    /// Work-tree pointer files that named the old bytes (rewritten).
    pub pointers: Vec<String>,
    pub old: Digest,
    pub new: Option<Digest>,
    /// Rows (lines) removed per file.
    pub removed: BTreeMap<String, u64>,
}

/// A model trained on bytes that are now erased.
#[derive(Debug, Clone, Serialize)]
pub struct TrainedOnErased {
    pub model: String,
    pub digest: Digest,
    pub run: Digest,
    pub dataset: String,
    pub dataset_digest: Digest,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    pub dry_run: bool,
    pub user_hash: String,
    /// The `forget` run record (none on a dry run).
    pub run: Option<Digest>,
    pub segments: Vec<SegmentForgotten>,
    pub datasets: Vec<DatasetForgotten>,
    /// Request rows removed from lineage.db's index.
    pub index_rows_removed: u64,
    /// Open segments a running server holds that name no request of the
    /// user: left alone.
    pub open_segments_held: Vec<String>,
    pub models_trained_on_erased: Vec<TrainedOnErased>,
    /// Earlier `forget` runs of the same user.
    pub forgotten_before: Vec<Digest>,
    /// lineage.db's WAL emptied and the file vacuumed (false: another
    /// connection kept the WAL busy; run `recsys forget` again when idle).
    pub lineage_scrubbed: bool,
    /// Files forget does not rewrite that may still hold the user.
    pub warnings: Vec<String>,
}

impl ForgetReport {
    pub fn requests_removed(&self) -> u64 {
        self.segments.iter().map(|s| s.requests_removed).sum()
    }
}

/// The hash a `forget` run record names its user by.
pub fn user_hash(user: i64) -> String {
    blake3::hash(format!("recsys-forget-user:{user}").as_bytes())
        .to_hex()
        .to_string()
}

/// A segment's bytes without `user`'s request lines; the ids removed.
fn segment_without(bytes: &[u8], user: i64) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut removed = Vec::new();
    for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if i > 0
            && !body.starts_with(b"{\"recsys_served\"")
            && !body.starts_with(b"{\"recsys_log_dropped\"")
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
            && v.get("user").and_then(|u| u.as_i64()) == Some(user)
        {
            removed.push(
                v.get("id")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string(),
            );
            continue;
        }
        out.extend_from_slice(line);
    }
    (out, removed)
}

/// The user id a data line names: CSV column `col`, or the stream line of
/// a quarantine entry (`<time>,<user>,...`).
fn line_user(line: &[u8], col: Option<usize>) -> Option<String> {
    let field = |s: &str, i: usize| {
        s.split(',')
            .nth(i)
            .map(|f| f.trim().trim_matches('"').to_string())
    };
    let text = std::str::from_utf8(line).ok()?;
    match col {
        Some(i) => field(text.trim_end_matches('\r'), i),
        None => {
            let v: serde_json::Value = serde_json::from_str(text).ok()?;
            field(v.get("line")?.as_str()?, 1)
        }
    }
}

/// A file without the lines naming `user` (a CSV's header is kept); the
/// number removed.
fn file_without(bytes: &[u8], col: Option<usize>, user: &str) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut removed = 0;
    for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let header = col.is_some() && i == 0;
        if !header && line_user(body, col).as_deref() == Some(user) {
            removed += 1;
            continue;
        }
        out.extend_from_slice(line);
    }
    (out, removed)
}

/// A work-tree copy of a dataset: (artifact path, pointer file, pointer).
type WorkCopy = (String, String, Pointer);

/// A dataset rewrite worked out before anything is written.
struct DatasetPlan {
    report: DatasetForgotten,
    /// The work-tree pointers naming it.
    work: Vec<WorkCopy>,
    old_manifest: Manifest,
    /// path -> new bytes, for the files that change.
    new_files: BTreeMap<String, Vec<u8>>,
    manifest: Manifest,
    size: u64,
}

/// A closed segment rewrite worked out before anything is written.
struct SegmentPlan {
    name: String,
    old: Digest,
    bytes: Vec<u8>,
    removed: u64,
}

/// An open segment nobody holds, to close without the user.
struct OpenPlan {
    path: PathBuf,
    bytes: Vec<u8>,
    removed: u64,
}

impl Workspace {
    /// Remove `opts.user` from the request log, the index and the
    /// datasets (see the module docs). An unknown user changes nothing
    /// and is an error.
    pub fn forget(&self, opts: &ForgetOptions) -> Result<ForgetReport> {
        let user = opts.user;
        let user_s = user.to_string();
        let hash = user_hash(user);
        // Shared, like every writer: gc must not take the new objects
        // before the pointer files name them.
        let _lock = self.store.lock(false)?;
        let erased = self.lineage.erased_digests()?;
        let mut report = ForgetReport {
            dry_run: opts.dry_run,
            user_hash: hash.clone(),
            ..ForgetReport::default()
        };
        for id in self.lineage.run_ids()? {
            if let Some(r) = self.lineage.run(&id)?
                && r.kind == "forget"
                && r.params.get("user_hash").and_then(|h| h.as_str()) == Some(hash.as_str())
            {
                report.forgotten_before.push(id);
            }
        }

        // Open segments first: one a server holds and that names the user
        // stops everything.
        let open = self.plan_open_segments(user, &mut report)?;

        // Closed segments: in the store or known to the index.
        let mut closed: BTreeSet<Digest> = BTreeSet::new();
        for d in self.store.list()? {
            if self.object_starts_with(&d, SEGMENT_MAGIC) {
                closed.insert(d);
            }
        }
        for s in self.lineage.segments()? {
            if let Some(d) = s.digest.as_deref().and_then(|h| h.parse::<Digest>().ok()) {
                if !self.store.contains(&d)? && !erased.contains(&d) {
                    return Err(WorkspaceError::Invalid(format!(
                        "request-log segment {} ({d}) is indexed but not in the local store: \
                         `recsys fetch` it first, so forget can rewrite it",
                        s.name
                    )));
                }
                closed.insert(d);
            }
        }
        let mut segments = Vec::new();
        for d in closed.into_iter().filter(|d| !erased.contains(d)) {
            let bytes = self.read_verified(&d)?;
            let seg = parse_segment(&d.hex(), &bytes)?;
            if !seg.records.iter().any(|r| r.user == user) {
                continue;
            }
            let (new, removed) = segment_without(&bytes, user);
            segments.push(SegmentPlan {
                name: seg.header.name,
                old: d,
                bytes: new,
                removed: removed.len() as u64,
            });
        }

        let datasets = self.plan_datasets(&user_s, &erased)?;
        let index_rows = self.lineage.user_request_count(user)?;
        if segments.is_empty() && open.is_empty() && datasets.is_empty() && index_rows == 0 {
            // Forgotten before: a WAL a server kept busy then is emptied now.
            if !opts.dry_run && !report.forgotten_before.is_empty() {
                self.lineage.scrub()?;
            }
            return Err(WorkspaceError::UnknownUser {
                user,
                before: report.forgotten_before.first().map(|d| d.short()),
            });
        }
        report.index_rows_removed = index_rows;

        // Write the new objects (none on a dry run).
        let writer = (!opts.dry_run).then(|| self.store.begin()).transpose()?;
        let put = |bytes: &[u8]| -> Result<Option<Digest>> {
            match &writer {
                Some(w) => Ok(Some(w.put(Source::Bytes(bytes), None, &NoProgress)?.0)),
                None => Ok(None),
            }
        };
        let mut erased_list: Vec<Erased> = Vec::new();
        for s in &segments {
            let new = put(&s.bytes)?;
            report.segments.push(SegmentForgotten {
                name: s.name.clone(),
                old: s.old.hex(),
                new,
                requests_removed: s.removed,
            });
            if let Some(n) = new {
                erased_list.push(Erased {
                    digest: s.old,
                    what: "segment".into(),
                    name: s.name.clone(),
                    replaced_by: Some(n),
                });
            }
        }
        let mut open_new = Vec::new();
        for o in &open {
            let new = put(&o.bytes)?;
            let name = o
                .path
                .file_name()
                .map(|n| format!("{LOG_DIR}/{}", n.to_string_lossy()))
                .unwrap_or_default();
            report.segments.push(SegmentForgotten {
                name: parse_segment(&name, &o.bytes)?.header.name,
                old: name,
                new,
                requests_removed: o.removed,
            });
            open_new.push(new);
        }
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for p in &datasets {
            let mut new = None;
            for (path, bytes) in &p.new_files {
                let d = put(bytes)?;
                if let (Some(d), Some(old)) =
                    (d, p.old_manifest.entries.iter().find(|e| e.path == *path))
                    && d != old.digest
                    && USER_FILES.iter().any(|(f, _)| f == path)
                {
                    erased_list.push(Erased {
                        digest: old.digest,
                        what: "file".into(),
                        name: format!("{}/{path}", p.report.name),
                        replaced_by: Some(d),
                    });
                }
            }
            if writer.is_some() {
                new = put(&p.manifest.to_bytes())?;
            }
            if let Some(n) = new {
                erased_list.push(Erased {
                    digest: p.report.old,
                    what: "dataset".into(),
                    name: p.report.name.clone(),
                    replaced_by: Some(n),
                });
                let path = p.work.first().map(|(a, _, _)| a.clone());
                inputs.push(ArtifactRef {
                    digest: p.report.old,
                    kind: "dataset".into(),
                    name: p.report.name.clone(),
                    size: p.old_manifest.total_size(),
                    files: Some(p.old_manifest.entries.len() as u64),
                    path: path.clone(),
                });
                outputs.push(ArtifactRef {
                    digest: n,
                    kind: "dataset".into(),
                    name: p.report.name.clone(),
                    size: p.size,
                    files: Some(p.manifest.entries.len() as u64),
                    path,
                });
            }
            let mut r = p.report.clone();
            r.new = new;
            report.datasets.push(r);
        }
        // Models trained on the old bytes.
        for p in &datasets {
            for run in self.lineage.consumers(&p.report.old)? {
                for (dir, name, d) in self.lineage.run_edges(&run)? {
                    if dir == "out" && self.lineage.run(&run)?.is_some_and(|r| r.kind == "train") {
                        report.models_trained_on_erased.push(TrainedOnErased {
                            model: name,
                            digest: d,
                            run,
                            dataset: p.report.name.clone(),
                            dataset_digest: p.report.old,
                        });
                    }
                }
            }
        }
        let Some(writer) = writer else {
            return Ok(report);
        };
        writer.commit()?;

        // The run record: what was removed, when and why, and what it
        // superseded. Durable and indexed before anything names the new
        // objects or forgets the old.
        let now = self.now_ms();
        let count = |f: &str| -> u64 {
            report
                .datasets
                .iter()
                .map(|d| d.removed.get(f).copied().unwrap_or(0))
                .sum()
        };
        let record = RunRecord {
            recsys_run: RUN_FORMAT,
            kind: "forget".into(),
            started: now,
            ended: now,
            code: self.code_version()?,
            algorithm: None,
            params: serde_json::json!({
                "user_hash": hash,
                "reason": opts.reason,
            }),
            metrics: serde_json::json!({
                "requests_removed": report.requests_removed(),
                "index_rows_removed": index_rows,
                "segments_rewritten": report.segments.len(),
                "datasets_rewritten": report.datasets.len(),
                "events_removed": count("events.csv"),
                "stream_requests_removed": count("requests.csv"),
                "user_rows_removed": count("users.csv"),
                "quarantine_lines_removed": count("quarantine.jsonl"),
            }),
            source: serde_json::json!({
                "erased": erased_list,
                "trained_on_erased": report.models_trained_on_erased,
                "note": "models trained on an erased dataset were trained on data that \
                         included this user; retrain them to remove the user's influence",
            }),
            inputs,
            outputs: outputs.clone(),
        };
        let run_id = crate::store::put_bytes(&self.store, &record.to_bytes())?;
        self.lineage
            .write_txn(|tx| tx.index_run(&run_id, &record, "this project"))?;
        report.run = Some(run_id);

        // The request index: closed segments now name their new objects;
        // the user's rows go.
        for (s, r) in segments.iter().zip(&report.segments) {
            if let Some(n) = r.new {
                self.lineage.set_segment_digest(&s.name, &n)?;
            }
        }
        for (o, new) in open.iter().zip(&open_new) {
            let Some(d) = new else { continue };
            let seg = parse_segment(&o.path.display().to_string(), &o.bytes)?;
            index_segment(&self.lineage, &seg, Some((now, &d.hex())))?;
            fs::remove_file(&o.path).map_err(|e| io_err("remove", &o.path, e))?;
        }
        self.lineage.forget_user_requests(user)?;

        // Pointer files and work-tree copies.
        for (p, out) in datasets.iter().zip(&outputs) {
            for (art, ptr_rel, old) in &p.work {
                let pointer = Pointer {
                    digest: out.digest,
                    size: out.size,
                    files: out.files,
                    run: Some(run_id),
                    ..old.clone()
                };
                write_atomic(&self.root.join(ptr_rel), pointer.to_text().as_bytes())?;
                let dir = self.root.join(art);
                if dir.is_dir() {
                    for (path, bytes) in &p.new_files {
                        let f = dir.join(path);
                        if f.exists() {
                            write_atomic(&f, bytes)?;
                        }
                    }
                }
            }
        }
        report.lineage_scrubbed = self.lineage.scrub()?;
        Ok(report)
    }

    /// Open segments: (those nobody holds that name the user, to close
    /// without them). One a server holds that names the user is refused.
    fn plan_open_segments(&self, user: i64, report: &mut ForgetReport) -> Result<Vec<OpenPlan>> {
        let dir = self.root.join(LOG_DIR);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir, e)),
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy())
                    .is_some_and(|n| n.starts_with("open-") && n.ends_with(".jsonl"))
            })
            .collect();
        files.sort();
        let mut out = Vec::new();
        for p in files {
            let f = match fs::File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open", &p, e)),
            };
            let held = matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock));
            let mut bytes = fs::read(&p).map_err(|e| io_err("read", &p, e))?;
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(whole);
            let rel = format!(
                "{LOG_DIR}/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            );
            let Ok(seg) = parse_segment(&rel, &bytes) else {
                continue; // no whole header: nothing logged
            };
            let names_user = seg.records.iter().any(|r| r.user == user);
            if held {
                if names_user {
                    return Err(WorkspaceError::Invalid(format!(
                        "{rel} is open and held by a running `recsys serve`, and holds requests \
                         of user {user}: stop the server (it closes the segment into the store) \
                         and run forget again; nothing was changed"
                    )));
                }
                report.open_segments_held.push(rel);
                continue;
            }
            if names_user {
                let (new, removed) = segment_without(&bytes, user);
                out.push(OpenPlan {
                    path: p,
                    bytes: new,
                    removed: removed.len() as u64,
                });
            }
        }
        Ok(out)
    }

    /// Every dataset directory (a work-tree pointer's, or one lineage
    /// knows and the store holds) with rows of `user`, rewritten in memory.
    fn plan_datasets(
        &self,
        user: &str,
        erased: &std::collections::HashSet<Digest>,
    ) -> Result<Vec<DatasetPlan>> {
        // digest -> (name, work-tree (artifact, pointer, pointer file)).
        let mut found: BTreeMap<Digest, (String, Vec<WorkCopy>)> = BTreeMap::new();
        for rel in self.pointer_files()? {
            let (p, _) = self.read_pointer(&rel)?;
            if !p.is_dir {
                continue;
            }
            let art = match rel.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{}", p.path),
                None => p.path.clone(),
            };
            found
                .entry(p.digest)
                .or_insert_with(|| (p.name.clone(), Vec::new()))
                .1
                .push((art, rel, p));
        }
        for a in self.lineage.artifacts(Some("dataset"))? {
            if a.files.is_some() && !erased.contains(&a.digest) && self.store.contains(&a.digest)? {
                found
                    .entry(a.digest)
                    .or_insert_with(|| (a.name, Vec::new()));
            }
        }
        let mut plans = Vec::new();
        for (digest, (name, work)) in found {
            if work.is_empty() && erased.contains(&digest) {
                continue;
            }
            if !self.store.contains(&digest)? {
                if work.is_empty() {
                    continue;
                }
                return Err(WorkspaceError::Invalid(format!(
                    "{} names {digest}, which is not in the local store: `recsys fetch` it \
                     first, so forget can rewrite it",
                    work[0].1
                )));
            }
            let m = Manifest::parse(&digest, &self.read_verified(&digest)?)?;
            let mut new_files = BTreeMap::new();
            let mut removed = BTreeMap::new();
            for (file, col) in USER_FILES {
                let Some(e) = m.entries.iter().find(|e| e.path == file) else {
                    continue;
                };
                let (bytes, n) = file_without(&self.read_verified(&e.digest)?, col, user);
                if n > 0 {
                    removed.insert(file.to_string(), n);
                    new_files.insert(file.to_string(), bytes);
                }
            }
            if removed.is_empty() {
                continue;
            }
            // Before any change: the work tree's copy must be what the
            // pointer names, or its edits would be lost.
            for (art, _, _) in &work {
                for path in new_files.keys() {
                    let f = self.root.join(art).join(path);
                    let old = m.entries.iter().find(|e| e.path == *path);
                    if f.exists()
                        && old.is_some_and(|e| crate::store::hash_file(&f).ok() != Some(e.digest))
                    {
                        return Err(WorkspaceError::WouldOverwrite(f));
                    }
                }
            }
            self.recount(&digest, &m, &mut new_files)?;
            let mut entries = Vec::new();
            for e in &m.entries {
                match new_files.get(&e.path) {
                    Some(b) => entries.push(Entry {
                        path: e.path.clone(),
                        digest: Digest::of(b),
                        size: b.len() as u64,
                        mode: e.mode,
                    }),
                    None => entries.push(e.clone()),
                }
            }
            let manifest = Manifest::new(entries);
            plans.push(DatasetPlan {
                report: DatasetForgotten {
                    name,
                    pointers: work.iter().map(|(_, p, _)| p.clone()).collect(),
                    old: digest,
                    new: None,
                    removed,
                },
                work,
                size: manifest.total_size(),
                old_manifest: m,
                new_files,
                manifest,
            });
        }
        Ok(plans)
    }

    /// Rewrite `dataset.json`'s counts for the filtered files, checking
    /// that the result reads back as a dataset. A directory that is not in
    /// the dataset format (a plain `add`ed directory) keeps its other files.
    fn recount(
        &self,
        digest: &Digest,
        m: &Manifest,
        new_files: &mut BTreeMap<String, Vec<u8>>,
    ) -> Result<()> {
        let Some(meta_entry) = m.entries.iter().find(|e| e.path == DATASET_JSON) else {
            return Ok(());
        };
        let Ok(meta) =
            serde_json::from_slice::<DatasetMeta>(&self.read_verified(&meta_entry.digest)?)
        else {
            return Ok(());
        };
        let mut files = BTreeMap::new();
        for e in &m.entries {
            let b = match new_files.get(&e.path) {
                Some(b) => b.clone(),
                None => self.read_verified(&e.digest)?,
            };
            files.insert(e.path.clone(), b);
        }
        // Rows per file (a CSV's header is not one), watches by the kind column.
        let rows = |f: &str| -> Vec<&[u8]> {
            files
                .get(f)
                .map(|b| {
                    b.split(|c| *c == b'\n')
                        .skip(1)
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let events = rows("events.csv");
        let watch = events
            .iter()
            .filter(|l| l.split(|c| *c == b',').nth(3) == Some(b"watch"))
            .count() as u64;
        let mut counts = meta.counts;
        counts.events = events.len() as u64;
        counts.watch = watch;
        counts.rate = counts.events - watch;
        counts.requests = rows("requests.csv").len() as u64;
        counts.users = rows("users.csv").len() as u64;
        let meta = DatasetMeta { counts, ..meta };
        let mut json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| WorkspaceError::Invalid(format!("dataset.json: {e}")))?;
        json.push(b'\n');
        // The strict reader checks the counts against the rows.
        files.insert(DATASET_JSON.into(), json.clone());
        Dataset::from_files(Path::new(&digest.short()), |n| {
            files.remove(n).unwrap_or_default()
        })
        .map_err(|e| WorkspaceError::Invalid(format!("dataset without the user: {e}")))?;
        new_files.insert(DATASET_JSON.into(), json);
        Ok(())
    }

    fn read_verified(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.store.verified_path(d)?;
        fs::read(&p).map_err(|e| io_err("read", &p, e))
    }
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> WorkspaceError {
    crate::fs_error::FsError::new(op, path, source).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_lines_of_the_user_go_and_everything_else_stays_byte_for_byte() {
        let seg = b"{\"recsys_log_segment\":2,\"name\":\"s\",\"host\":\"h\",\"opened\":1}\n\
{\"recsys_served\":0,\"model\":\"m\",\"user\":7}\n\
{\"id\":\"a\",\"time\":1,\"user\":7,\"served\":0}\n\
{\"recsys_log_dropped\":2}\n\
{\"id\":\"b\",\"time\":2,\"user\":70,\"served\":0}\n";
        let (out, removed) = segment_without(seg, 7);
        assert_eq!(removed, ["a"]);
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains("\"id\":\"a\""));
        assert!(text.contains("\"user\":70"));
        assert!(text.contains("recsys_served") && text.contains("recsys_log_dropped"));
    }

    #[test]
    fn csv_and_quarantine_lines_are_matched_by_the_user_column_only() {
        let csv = b"time_ms,user,movie,kind,value\n1,7,a+1999,watch,1\n2,77,b+2000,rate,7\n";
        let (out, n) = file_without(csv, Some(1), "7");
        assert_eq!(n, 1);
        assert_eq!(out, b"time_ms,user,movie,kind,value\n2,77,b+2000,rate,7\n");
        let users = b"user,age,gender,occupation\n7,30,F,writer\n8,7,M,7\n";
        assert_eq!(file_without(users, Some(0), "7").1, 1);
        let q = b"{\"partition\":0,\"offset\":1,\"line\":\"2026-01-01T00:00:00,7,GET /x\"}\n\
{\"partition\":0,\"offset\":2,\"line\":\"garbage\"}\n";
        let (out, n) = file_without(q, None, "7");
        assert_eq!(n, 1);
        assert!(out.starts_with(b"{\"partition\":0,\"offset\":2"));
    }
}
