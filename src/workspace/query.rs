//! Read-only views: `ls`, `diff`, `lineage`, and `lineage --rebuild`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{LOG_DIR, Result, Workspace, WorkspaceError};
use crate::lineage::requests::index_segment;
use crate::lineage::run::RUN_MAGIC;
use crate::lineage::{ArtifactRow, LineageError, RunRow};
use crate::segment::{SEGMENT_MAGIC, parse_segment};
use crate::store::{Digest, ObjectStore};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EdgeView {
    pub name: String,
    pub digest: Digest,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArtifactLineage {
    pub artifact: ArtifactRow,
    /// The run that produced it.
    pub run: Option<RunRow>,
    pub inputs: Vec<EdgeView>,
    pub outputs: Vec<EdgeView>,
    /// Runs that read it.
    pub used_by: Vec<RunRow>,
    /// Its inputs, their inputs and so on, each with the run that made it
    /// (e.g. model <- train run <- dataset <- import run and its source).
    pub upstream: Vec<Upstream>,
    /// The command that restores exactly these bytes.
    pub restore: String,
}

/// One artifact upstream of another, `depth` runs away.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Upstream {
    pub depth: usize,
    pub name: String,
    pub kind: String,
    pub digest: Digest,
    /// The run that produced it, when indexed here.
    pub run: Option<RunRow>,
}

/// Lineage chains are short; this only guards against a cycle of records.
const MAX_UPSTREAM_DEPTH: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct DiffEntry {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<EdgeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<EdgeView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub runs_indexed: usize,
    pub artifacts: usize,
    /// Request-log segments re-indexed (closed ones in the store, open ones
    /// in `log/requests/`) and the requests they hold.
    pub segments_indexed: usize,
    pub requests_indexed: u64,
    /// Where a damaged lineage.db was moved before this one was built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_aside: Option<String>,
    /// Run records named by pointer files but absent from the store.
    pub missing_run_records: Vec<String>,
    /// Segments that could not be read (each with the reason).
    pub bad_segments: Vec<String>,
    pub conflicts: Vec<String>,
}

impl Workspace {
    /// Find an artifact by version name, digest (or a unique prefix of at
    /// least 6 hex digits), or work-tree path.
    pub fn find_artifact(&self, q: &str) -> Result<ArtifactRow> {
        if let Some(a) = self.lineage.artifact_by_name(q)? {
            return Ok(a);
        }
        if q.len() >= 6 && q.len() <= 64 && q.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits = self
                .lineage
                .artifacts_by_digest_prefix(&q.to_ascii_lowercase())?;
            match hits.len() {
                0 => {}
                1 => return Ok(hits.into_iter().next().unwrap_or_else(|| unreachable!())),
                _ => {
                    return Err(WorkspaceError::Invalid(format!(
                        "{q} is ambiguous: {}",
                        hits.iter()
                            .map(|a| a.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        let path = std::path::Path::new(q);
        if let Ok(ptr) = self.pointer_for_arg(path)
            && self.root().join(&ptr).exists()
        {
            let (p, _) = self.read_pointer(&ptr)?;
            return self.lineage.artifact_by_name(&p.name)?.ok_or_else(|| {
                WorkspaceError::Invalid(format!(
                    "{q} is {} but lineage.db does not know it yet: run `recsys pull` \
                     (or `recsys lineage --rebuild`)",
                    p.name
                ))
            });
        }
        Err(WorkspaceError::UnknownArtifact(q.to_string()))
    }

    pub(crate) fn artifact_lineage(&self, q: &str) -> Result<ArtifactLineage> {
        let artifact = self.find_artifact(q)?;
        let run = self.lineage.run(&artifact.run)?;
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (dir, name, digest) in self.lineage.run_edges(&artifact.run)? {
            let e = EdgeView { name, digest };
            if dir == "in" {
                inputs.push(e);
            } else {
                outputs.push(e);
            }
        }
        let mut used_by = Vec::new();
        for id in self.lineage.consumers(&artifact.digest)? {
            if let Some(r) = self.lineage.run(&id)? {
                used_by.push(r);
            }
        }
        let upstream = self.upstream(&inputs)?;
        let restore = format!("recsys checkout {}", artifact.name);
        Ok(ArtifactLineage {
            artifact,
            run,
            inputs,
            outputs,
            used_by,
            upstream,
            restore,
        })
    }

    /// Walk run inputs back, depth first, each artifact once.
    fn upstream(&self, inputs: &[EdgeView]) -> Result<Vec<Upstream>> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(usize, EdgeView)> =
            inputs.iter().rev().map(|e| (1, e.clone())).collect();
        while let Some((depth, e)) = stack.pop() {
            if !seen.insert(e.digest) || depth > MAX_UPSTREAM_DEPTH {
                continue;
            }
            let art = match self.lineage.artifact_by_name(&e.name)? {
                Some(a) if a.digest == e.digest => Some(a),
                _ => self
                    .lineage
                    .artifacts_by_digest_prefix(&e.digest.hex())?
                    .into_iter()
                    .find(|a| a.digest == e.digest),
            };
            let Some(art) = art else {
                out.push(Upstream {
                    depth,
                    name: e.name,
                    kind: String::new(),
                    digest: e.digest,
                    run: None,
                });
                continue;
            };
            let run = self.lineage.run(&art.run)?;
            let mut next = Vec::new();
            for (dir, name, digest) in self.lineage.run_edges(&art.run)? {
                if dir == "in" {
                    next.push((depth + 1, EdgeView { name, digest }));
                }
            }
            stack.extend(next.into_iter().rev());
            out.push(Upstream {
                depth,
                name: art.name,
                kind: art.kind,
                digest: art.digest,
                run,
            });
        }
        Ok(out)
    }

    /// Tracked artifacts added, changed or removed between two revisions.
    /// `b = None` compares with the work tree's pointer files.
    pub fn diff(&self, a: &str, b: Option<&str>) -> Result<Vec<DiffEntry>> {
        let side = |rev: Option<&str>| -> Result<BTreeMap<String, EdgeView>> {
            let list = match rev {
                Some(r) => self.pointers_at(r)?,
                None => {
                    let mut v = Vec::new();
                    for rel in self.pointer_files()? {
                        let (p, art) = self.read_pointer(&rel)?;
                        v.push((rel, p, art));
                    }
                    v
                }
            };
            Ok(list
                .into_iter()
                .map(|(_, p, art)| {
                    (
                        art,
                        EdgeView {
                            name: p.name,
                            digest: p.digest,
                        },
                    )
                })
                .collect())
        };
        let old = side(Some(a))?;
        let new = side(b)?;
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        let mut out = Vec::new();
        for k in keys {
            let (o, n) = (old.get(k), new.get(k));
            let change = match (o, n) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (Some(o), Some(n)) if o.digest != n.digest || o.name != n.name => "changed",
                _ => continue,
            };
            out.push(DiffEntry {
                path: k.clone(),
                change,
                old: o.cloned(),
                new: n.cloned(),
            });
        }
        Ok(out)
    }

    /// Recreate the lineage index: runs and artifacts from run records
    /// (those named by pointer files in the work tree and in every commit,
    /// and every run record in the store), requests from every request-log
    /// segment (closed ones in the store, open ones in `log/requests/`,
    /// which a server's next start re-indexes anyway). A lineage.db SQLite
    /// finds damaged on the way is set aside and a new one built. Run it
    /// while no server is logging to this project.
    pub(crate) fn rebuild_lineage(&mut self) -> Result<RebuildReport> {
        match self.rebuild_lineage_once() {
            Err(WorkspaceError::Lineage(LineageError::Corrupt { .. })) => {
                let aside = self.replace_damaged_lineage()?;
                let mut r = self.rebuild_lineage_once()?;
                r.set_aside = Some(aside.display().to_string());
                Ok(r)
            }
            other => other,
        }
    }

    fn rebuild_lineage_once(&mut self) -> Result<RebuildReport> {
        let mut named: BTreeSet<Digest> = BTreeSet::new();
        let mut named_by: BTreeMap<Digest, String> = BTreeMap::new();
        for rel in self.pointer_files()? {
            if let Ok((p, _)) = self.read_pointer(&rel)
                && let Some(r) = p.run
            {
                named.insert(r);
                named_by.entry(r).or_insert(rel);
            }
        }
        if let Some(g) = self.git() {
            for c in g.all_commits()? {
                for (rel, p, _) in self.pointers_at(&c)? {
                    if let Some(r) = p.run {
                        named.insert(r);
                        named_by.entry(r).or_insert(format!("{}:{rel}", &c[..12]));
                    }
                }
            }
        }
        let mut runs = named.clone();
        for d in self.store.list()? {
            if self.object_starts_with(&d, RUN_MAGIC) {
                runs.insert(d);
            }
        }
        let mut report = RebuildReport::default();
        for (r, by) in &named_by {
            if !self.store.contains(r)? {
                report.missing_run_records.push(format!(
                    "{r} (named by {by}): not in the store; run `recsys pull`"
                ));
            }
        }
        self.lineage.clear_index()?;
        let (n, conflicts) = self.index_runs(&runs, "this project")?;
        report.runs_indexed = n;
        report.conflicts = conflicts;
        report.artifacts = self.lineage.artifacts(None)?.len();
        self.rebuild_requests(&mut report)?;
        Ok(report)
    }

    /// The request index from the segments alone.
    fn rebuild_requests(&mut self, report: &mut RebuildReport) -> Result<()> {
        self.lineage.clear_requests()?;
        let now = self.now_ms();
        // The run records are indexed: what an erasure superseded stays out.
        let erased = self.lineage.erased_digests()?;
        for d in self.store.list()? {
            if erased.contains(&d) || !self.object_starts_with(&d, SEGMENT_MAGIC) {
                continue;
            }
            let bytes = match self.store.verified_path(&d) {
                Ok(p) => std::fs::read(&p).map_err(|e| {
                    WorkspaceError::Io(crate::fs_error::FsError {
                        op: "read",
                        path: p.clone(),
                        source: e,
                    })
                })?,
                Err(e) => {
                    report.bad_segments.push(format!("{d}: {e}"));
                    continue;
                }
            };
            match parse_segment(&d.hex(), &bytes) {
                Ok(seg) => {
                    index_segment(&self.lineage, &seg, Some((now, &d.hex())))?;
                    report.segments_indexed += 1;
                    report.requests_indexed += seg.records.len() as u64;
                }
                Err(e) => report.bad_segments.push(e.to_string()),
            }
        }
        let dir = self.root.join(LOG_DIR);
        let mut open: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy())
                        .is_some_and(|n| n.starts_with("open-") && n.ends_with(".jsonl"))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        open.sort();
        for p in open {
            let Ok(mut bytes) = std::fs::read(&p) else {
                continue; // closed into the store meanwhile
            };
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(whole);
            if let Ok(seg) = parse_segment(&p.display().to_string(), &bytes) {
                index_segment(&self.lineage, &seg, None)?;
                report.segments_indexed += 1;
                report.requests_indexed += seg.records.len() as u64;
            }
        }
        Ok(())
    }
}
