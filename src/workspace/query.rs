//! Read-only views: `ls`, `diff`, `lineage`, and `lineage --rebuild`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Result, Workspace, WorkspaceError};
use crate::lineage::run::RUN_MAGIC;
use crate::lineage::{ArtifactRow, RunRow};
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
    /// Run records named by pointer files but absent from the store.
    pub missing_run_records: Vec<String>,
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

    pub fn artifact_lineage(&self, q: &str) -> Result<ArtifactLineage> {
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

    /// Recreate the lineage index from run records: those named by pointer
    /// files in the work tree and in every commit, and every run record in
    /// the store.
    pub fn rebuild_lineage(&mut self) -> Result<RebuildReport> {
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
        Ok(report)
    }
}
