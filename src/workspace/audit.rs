//! `recsys audit`: prove the store and the lineage index are intact.
//!
//! Every object is re-hashed. What must be present is the keep-set
//! ([`Workspace::roots`], the same roots `gc` keeps and `push` sends): each
//! object it names and the store lacks is one problem, named after the
//! root that needs it. The request index is compared with the segments it
//! was built from, and every recorded commit must exist in git.

use std::collections::{BTreeSet, HashMap};

use rayon::prelude::*;

use super::{Result, Role, Root, RootOptions, Workspace};
use crate::segment::{SEGMENT_MAGIC, parse_segment};
use crate::store::manifest::Manifest;
use crate::store::{Digest, ObjectStore};

/// One thing wrong, reported on one line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// A stable, machine-readable kind (`corrupt-object`, `missing-object`, ...).
    pub kind: &'static str,
    /// The object, pointer file or lineage row concerned.
    pub subject: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.kind, self.subject, self.message)
    }
}

pub(crate) fn problem(
    kind: &'static str,
    subject: impl Into<String>,
    message: impl Into<String>,
) -> Problem {
    Problem {
        kind,
        subject: subject.into(),
        message: message.into(),
    }
}

/// At most this many request ids are named per segment that disagrees
/// with the index (the counts are always given).
const IDS_SHOWN: usize = 5;

impl Workspace {
    /// Re-hash every object; check that everything the keep-set names is
    /// in the store, that the request index matches the segments, and that
    /// every recorded commit exists in git. Returns (objects checked,
    /// problems).
    pub fn audit(&self) -> Result<(usize, Vec<Problem>)> {
        let objects = self.store.list()?;
        let store = &self.store;
        let mut problems: Vec<Problem> = objects
            .par_iter()
            .filter_map(|d| match store.rehash(d) {
                Ok(Some(actual)) if actual == *d => None,
                Ok(Some(actual)) => Some(problem(
                    "corrupt-object",
                    d.hex(),
                    format!("content hashes to {actual}"),
                )),
                Ok(None) => None,
                Err(e) => Some(problem("unreadable-object", d.hex(), e.to_string())),
            })
            .collect();
        problems.sort_by(|a, b| a.subject.cmp(&b.subject));

        let keep = self.roots(&RootOptions::named())?;
        problems.extend(keep.problems().iter().cloned());
        for (d, why) in keep.iter() {
            if !self.store.contains(&d)? {
                problems.push(self.missing(&d, why.root, why.role, why.via)?);
                // Its pointer lost it, and so did the answers it gave.
                if let Some((root, role)) = keep.also_served(&d) {
                    problems.push(self.missing(&d, root, role, None)?);
                }
            }
        }
        problems.extend(self.audit_requests()?);
        if let Some(g) = self.git() {
            let mut seen = std::collections::HashSet::new();
            for (run, commit) in self.lineage.commits()? {
                if seen.insert(commit.clone()) && !g.commit_exists(&commit) {
                    problems.push(problem(
                        "unknown-commit",
                        commit.clone(),
                        format!("recorded by run {} but not in git", run.short()),
                    ));
                }
            }
        }
        Ok((objects.len(), problems))
    }

    /// The problem of a kept object the store lacks, in the words of the
    /// root that needs it.
    fn missing(&self, d: &Digest, root: &Root, role: Role, via: Option<Digest>) -> Result<Problem> {
        let name = |d: &Digest| -> Result<String> {
            Ok(self
                .lineage
                .artifacts_by_digest_prefix(&d.hex())?
                .into_iter()
                .find(|a| a.digest == *d)
                .map(|a| format!("{} ({d})", a.name))
                .unwrap_or_else(|| d.to_string()))
        };
        // A directory's file is named by its path in the manifest.
        let file = |d: &Digest| -> Result<String> {
            let path = via
                .and_then(|m| self.store.get(&m).ok().flatten().map(|b| (m, b)))
                .and_then(|(m, b)| Manifest::parse(&m, &b).ok())
                .and_then(|m| m.entries.into_iter().find(|e| e.digest == *d))
                .map(|e| e.path);
            Ok(match path {
                Some(p) => format!("file {p} ({d})"),
                None => format!("file {d}"),
            })
        };
        let not_here = "is not in the store";
        Ok(match (root, role) {
            (Root::Pointer { pointer }, Role::RunRecord) => problem(
                "missing-run-record",
                pointer.clone(),
                format!("run record {d} {not_here}"),
            ),
            (Root::Pointer { pointer }, Role::File) => problem(
                "missing-object",
                pointer.clone(),
                format!("{} {not_here}", file(d)?),
            ),
            (Root::Pointer { pointer }, Role::Output) => problem(
                "missing-object",
                pointer.clone(),
                format!(
                    "{}, an output of its run {}, {not_here}",
                    name(d)?,
                    via.map(|r| r.short()).unwrap_or_default()
                ),
            ),
            (Root::Pointer { pointer }, _) => problem(
                "missing-object",
                pointer.clone(),
                format!("names {} which {not_here}", name(d)?),
            ),
            (Root::Lineage, Role::Segment) => problem(
                "missing-log-segment",
                d.hex(),
                format!("closed request-log segment {d} {not_here}"),
            ),
            (Root::Lineage, _) => problem(
                "lineage-missing-run",
                d.hex(),
                "run record is indexed but not in the store",
            ),
            (r, role) => {
                let (kind, what) = match role {
                    Role::Model => ("request-missing-model", format!("model {}", name(d)?)),
                    Role::Dataset => ("request-missing-dataset", format!("dataset {}", name(d)?)),
                    Role::File => ("request-missing-dataset", format!("dataset {}", file(d)?)),
                    Role::Config => ("request-missing-config", format!("config {d}")),
                    Role::RunRecord => ("request-missing-run", format!("run record {d}")),
                    _ => ("request-missing-object", name(d)?),
                };
                problem(
                    kind,
                    format!("requests of {r}"),
                    format!("{what} {not_here}"),
                )
            }
        })
    }

    /// Every logged request must name a model and a dataset registered in
    /// lineage as exactly those bytes, and the request index must hold
    /// exactly the requests of the closed segments in the store.
    fn audit_requests(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for s in self.lineage.served_all()? {
            let subject = format!(
                "requests served by {} with config {}",
                s.model,
                &s.config_digest[..s.config_digest.len().min(12)]
            );
            for (what, name, digest) in [
                ("model", &s.model, &s.model_digest),
                ("dataset", &s.dataset, &s.dataset_digest),
            ] {
                if name.is_empty() {
                    problems.push(problem(
                        "request-without-dataset",
                        subject.clone(),
                        format!("the {what} version is not recorded"),
                    ));
                    continue;
                }
                match self.lineage.artifact_by_name(name)? {
                    Some(a) if a.digest.hex() == *digest => {}
                    // A `forget` rewrote the bytes that answered under the
                    // same name; its run record says so.
                    Some(a)
                        if digest.parse::<Digest>().ok().is_some_and(|d| {
                            self.lineage
                                .superseded(&d)
                                .ok()
                                .flatten()
                                .is_some_and(|(now, _)| now == Some(a.digest))
                        }) => {}
                    Some(a) => problems.push(problem(
                        "request-lineage-mismatch",
                        subject.clone(),
                        format!(
                            "{what} {name} is {} in lineage, but requests name {digest}",
                            a.digest
                        ),
                    )),
                    None => problems.push(problem(
                        if what == "model" {
                            "request-unknown-model"
                        } else {
                            "request-unknown-dataset"
                        },
                        subject.clone(),
                        format!("{what} {name} ({digest}) is not in lineage"),
                    )),
                }
            }
        }
        problems.extend(self.compare_index_with_segments()?);
        Ok(problems)
    }

    /// The request index against the closed segments in the store: requests
    /// a segment holds that the index lacks, and requests the index holds
    /// for a segment that lacks them.
    fn compare_index_with_segments(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let (indexed, orphans) = self.lineage.segment_request_counts()?;
        let by_name: HashMap<&str, u64> =
            indexed.iter().map(|(s, n)| (s.name.as_str(), *n)).collect();
        let rebuild = "`recsys lineage --rebuild` re-indexes every segment in the store";
        // Superseded by an erasure: their rows left the index on purpose.
        let erased = self.lineage.erased_digests()?;
        for d in self.store.list()? {
            if erased.contains(&d) || !self.object_starts_with(&d, SEGMENT_MAGIC) {
                continue;
            }
            let Some(bytes) = self.store.get(&d)? else {
                continue;
            };
            // A damaged object is reported by the re-hash.
            if Digest::of(&bytes) != d {
                continue;
            }
            let seg = match parse_segment(&d.hex(), &bytes) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(problem("bad-log-segment", d.hex(), e.to_string()));
                    continue;
                }
            };
            let name = seg.header.name.as_str();
            let subject = format!("segment {name} ({})", d.short());
            let in_index = by_name.get(name).copied().unwrap_or(0);
            if in_index == seg.records.len() as u64 && in_index > 0 {
                continue;
            }
            if seg.records.is_empty() && in_index == 0 {
                continue;
            }
            let logged: BTreeSet<&str> = seg.records.iter().map(|r| r.id.as_str()).collect();
            let ids = if in_index == 0 {
                Vec::new()
            } else {
                self.lineage.request_ids_of_segment(name)?
            };
            let have: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
            let unindexed: Vec<&str> = logged.difference(&have).copied().collect();
            let unlogged: Vec<&str> = have.difference(&logged).copied().collect();
            let show = |v: &[&str]| {
                let mut s = v
                    .iter()
                    .take(IDS_SHOWN)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                if v.len() > IDS_SHOWN {
                    s.push_str(", ...");
                }
                s
            };
            if !unindexed.is_empty() {
                problems.push(problem(
                    "requests-missing-from-index",
                    subject.clone(),
                    format!(
                        "{} of its {} request(s) are not in the request index ({}); {rebuild}",
                        unindexed.len(),
                        logged.len(),
                        show(&unindexed)
                    ),
                ));
            }
            if !unlogged.is_empty() {
                problems.push(problem(
                    "requests-missing-from-log",
                    subject,
                    format!(
                        "the request index holds {} request(s) the segment does not ({}); {rebuild}",
                        unlogged.len(),
                        show(&unlogged)
                    ),
                ));
            }
        }
        if orphans > 0 {
            problems.push(problem(
                "requests-missing-from-log",
                "lineage.db",
                format!("{orphans} indexed request(s) belong to no known segment; {rebuild}"),
            ));
        }
        Ok(problems)
    }
}
