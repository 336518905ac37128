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
}

impl Workspace {
    /// Every logged request must name a model and a dataset present in the
    /// store and in lineage (as exactly those bytes), and a config in the
    /// store; every closed log segment must be in the store.
    fn audit_requests(&self) -> Result<Vec<Problem>> {
        use crate::store::Digest;
        let mut problems = Vec::new();
        let present = |hex: &str| -> Result<bool> {
            Ok(match hex.parse::<Digest>() {
                Ok(d) => self.store.contains(&d)?,
                Err(_) => false,
            })
        };
        for (s, n) in self.lineage.served_summary()? {
            if n == 0 {
                continue;
            }
            let subject = format!(
                "{n} request(s) served by {} with config {}",
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
                if !present(digest)? {
                    problems.push(problem(
                        if what == "model" {
                            "request-missing-model"
                        } else {
                            "request-missing-dataset"
                        },
                        subject.clone(),
                        format!("{what} {name} ({digest}) is not in the store"),
                    ));
                }
                match self.lineage.artifact_by_name(name)? {
                    Some(a) if a.digest.hex() == *digest => {}
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
            if !present(&s.config_digest)? {
                problems.push(problem(
                    "request-missing-config",
                    subject.clone(),
                    format!("config {} is not in the store", s.config_digest),
                ));
            }
        }
        for seg in self.lineage.segments()? {
            if let Some(d) = &seg.digest
                && !present(d)?
            {
                problems.push(problem(
                    "missing-log-segment",
                    seg.name.clone(),
                    format!("closed request-log segment {d} is not in the store"),
                ));
            }
        }
        Ok(problems)
    }
}
