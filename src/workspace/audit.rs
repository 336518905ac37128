//! `recsys audit`: prove the store and the lineage index are intact.

use rayon::prelude::*;

use super::{Result, Workspace};
use crate::store::ObjectStore;

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

fn problem(kind: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        kind,
        subject: subject.into(),
        message: message.into(),
    }
}

impl Workspace {
    /// Re-hash every object; check every pointer file resolves, every
    /// lineage row names an existing object, and every recorded commit
    /// exists in git. Returns (objects checked, problems).
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

        for rel in self.pointer_files()? {
            let (p, _) = match self.read_pointer(&rel) {
                Ok(x) => x,
                Err(e) => {
                    problems.push(problem("bad-pointer", rel.clone(), e.to_string()));
                    continue;
                }
            };
            if !self.store.contains(&p.digest)? {
                problems.push(problem(
                    "missing-object",
                    rel.clone(),
                    format!("{} names {} which is not in the store", p.name, p.digest),
                ));
            } else if p.is_dir
                && let Some(bytes) = self.store.get(&p.digest)?
            {
                match crate::store::manifest::Manifest::parse(&p.digest, &bytes) {
                    Ok(m) => {
                        for e in m.entries {
                            if !self.store.contains(&e.digest)? {
                                problems.push(problem(
                                    "missing-object",
                                    rel.clone(),
                                    format!("file {} ({}) is not in the store", e.path, e.digest),
                                ));
                            }
                        }
                    }
                    Err(e) => problems.push(problem("bad-manifest", rel.clone(), e.to_string())),
                }
            }
            if let Some(r) = p.run
                && !self.store.contains(&r)?
            {
                problems.push(problem(
                    "missing-run-record",
                    rel.clone(),
                    format!("run record {r} is not in the store"),
                ));
            }
        }

        for a in self.lineage.artifacts(None)? {
            if !self.store.contains(&a.digest)? {
                problems.push(problem(
                    "lineage-missing-object",
                    a.name.clone(),
                    format!("lineage names {} which is not in the store", a.digest),
                ));
            }
        }
        for id in self.lineage.run_ids()? {
            if !self.store.contains(&id)? {
                problems.push(problem(
                    "lineage-missing-run",
                    id.hex(),
                    "run record is indexed but not in the store",
                ));
            }
        }
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
}
