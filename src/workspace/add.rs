//! `recsys add`: stream artifacts into the store and track them.

use std::collections::HashMap;
use std::path::PathBuf;

use rayon::prelude::*;

use super::pointer::{EXT, Kind, Pointer, valid_name};
use super::scan::{Scan, digest_of};
use super::{Result, Workspace, WorkspaceError, number_after, write_atomic};
use crate::lineage::{ArtifactRef, RunRecord, run::RUN_FORMAT};
use crate::progress::Progress;
use crate::store::{Digest, ObjectStore, Source};

#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    pub kind: Option<Kind>,
    pub name: Option<String>,
}

/// One artifact `add` tracked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    pub path: String,
    pub pointer: String,
    pub kind: Kind,
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    pub run: Option<Digest>,
    /// Already tracked with these exact bytes: nothing changed.
    pub unchanged: bool,
}

impl Workspace {
    /// Names used by pointer files in the work tree and at HEAD:
    /// name -> digests. A version name is never reused for other bytes.
    fn names_in_pointers(&self) -> Result<HashMap<String, Vec<Digest>>> {
        let mut names: HashMap<String, Vec<Digest>> = HashMap::new();
        for rel in self.pointer_files()? {
            if let Ok((p, _)) = self.read_pointer(&rel) {
                names.entry(p.name).or_default().push(p.digest);
            }
        }
        if let Some(g) = self.git()
            && g.head()?.is_some()
        {
            for (_, p, _) in self.pointers_at("HEAD")? {
                names.entry(p.name).or_default().push(p.digest);
            }
        }
        Ok(names)
    }

    /// Add files or directories: copy their bytes into the store (verified
    /// and durable), register a run in lineage, then write the pointer.
    pub fn add(
        &mut self,
        paths: &[PathBuf],
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<Added>> {
        if opts.name.is_some() && paths.len() != 1 {
            return Err(WorkspaceError::Invalid(
                "--name names one version: give exactly one path".into(),
            ));
        }
        if let Some(n) = &opts.name
            && !valid_name(n)
        {
            return Err(WorkspaceError::Invalid(format!(
                "bad version name {n:?}: use letters, digits, `_`, `-`, `.`"
            )));
        }
        let mut used = self.names_in_pointers()?;
        let mut out = Vec::new();
        for p in paths {
            let a = self.add_one(p, opts, &mut used, progress)?;
            used.entry(a.name.clone()).or_default().push(a.digest);
            out.push(a);
        }
        Ok(out)
    }

    fn add_one(
        &mut self,
        path: &std::path::Path,
        opts: &AddOptions,
        used: &mut HashMap<String, Vec<Digest>>,
        progress: &dyn Progress,
    ) -> Result<Added> {
        let started = self.now_ms();
        let art_rel = self.rel_path(path)?.trim_end_matches('/').to_string();
        if art_rel.ends_with(EXT) {
            return Err(WorkspaceError::Invalid(format!(
                "{art_rel} is a pointer file; add the artifact it names instead"
            )));
        }
        let ptr_rel = format!("{art_rel}{EXT}");
        let existing = if self.root.join(&ptr_rel).exists() {
            Some(self.read_pointer(&ptr_rel)?.0)
        } else {
            None
        };
        let mut scan = self.scan(&art_rel)?;
        if matches!(scan, Scan::Missing) {
            return Err(WorkspaceError::Invalid(format!(
                "{art_rel}: no such file or directory"
            )));
        }

        // 1. Stream every file the store lacks into one write batch.
        let writer = self.store.begin()?;
        {
            let files: &mut [super::scan::FileScan] = match &mut scan {
                Scan::File(f) => std::slice::from_mut(f),
                Scan::Dir(v) => v,
                Scan::Missing => &mut [],
            };
            let store = &self.store;
            let mut todo = Vec::new();
            for f in files.iter_mut() {
                let known = match f.digest {
                    Some(d) => store.contains(&d)?,
                    None => false,
                };
                if !known {
                    todo.push(f);
                }
            }
            progress.start("add", todo.iter().map(|f| f.stamp.size).sum());
            let w = &*writer;
            todo.into_par_iter().try_for_each(|f| -> Result<()> {
                let (d, _) = w.put(Source::Path(&f.abs), None, progress)?;
                f.digest = Some(d);
                Ok(())
            })?;
            progress.finish();
        }
        let Some((digest, size, manifest)) = digest_of(&scan) else {
            return Err(WorkspaceError::Invalid(format!(
                "{art_rel}: could not hash"
            )));
        };
        let files = manifest.as_ref().map(|m| m.entries.len() as u64);
        if let Some(m) = &manifest {
            writer.put(Source::Bytes(&m.to_bytes()), None, progress)?;
        }

        let kind = opts.kind.or(existing.as_ref().map(|p| p.kind)).unwrap_or(
            if art_rel.starts_with("models/") {
                Kind::Model
            } else {
                Kind::Dataset
            },
        );
        let file_name = art_rel.rsplit('/').next().unwrap_or(&art_rel).to_string();
        let art_dir = self.root.join(&art_rel);
        let art_dir = art_dir.parent().unwrap_or(&self.root).to_path_buf();

        // Unchanged: same bytes, same name, same kind. Nothing to record.
        if let Some(p) = &existing
            && p.digest == digest
            && p.kind == kind
            && opts.name.as_ref().is_none_or(|n| *n == p.name)
        {
            writer.commit()?;
            self.ensure_ignored(&art_dir, &[&format!("/{file_name}")])?;
            self.remember(&art_rel, &scan)?;
            return Ok(Added {
                path: art_rel,
                pointer: ptr_rel,
                kind,
                name: p.name.clone(),
                digest,
                size,
                files,
                run: p.run,
                unchanged: true,
            });
        }

        // 2. Name the version and record the run, serialised with every
        //    other writer of lineage.db.
        let code = self.code_version()?;
        let ended = self.now_ms();
        let store = &self.store;
        let (name, run_id) = self.lineage.write_txn(|tx| -> Result<(String, Digest)> {
            let name = match &opts.name {
                Some(n) => {
                    let clash_db = tx.artifact_by_name(n)?.filter(|a| a.digest != digest);
                    let clash_ptr = used
                        .get(n)
                        .and_then(|ds| ds.iter().find(|d| **d != digest).copied());
                    if let Some(other) = clash_db.map(|a| a.digest).or(clash_ptr) {
                        return Err(WorkspaceError::Invalid(format!(
                            "version name {n} is already used for other bytes ({}); \
                             a name is never reused — pick another",
                            other.short()
                        )));
                    }
                    n.clone()
                }
                None => {
                    let prefix = kind.prefix();
                    let from_pointers = used
                        .keys()
                        .filter_map(|k| number_after(k, prefix))
                        .max()
                        .unwrap_or(0);
                    let next = tx.max_number(prefix)?.max(from_pointers) + 1;
                    format!("{prefix}{next}")
                }
            };
            let record = RunRecord {
                recsys_run: RUN_FORMAT,
                kind: "add".into(),
                started,
                ended,
                code,
                algorithm: None,
                params: serde_json::json!({}),
                metrics: serde_json::json!({}),
                source: serde_json::json!({ "path": art_rel }),
                inputs: vec![],
                outputs: vec![ArtifactRef {
                    digest,
                    kind: kind.as_str().into(),
                    name: name.clone(),
                    size,
                    files,
                    path: Some(art_rel.clone()),
                }],
            };
            let bytes = record.to_bytes();
            let (run_id, _) = writer.put(Source::Bytes(&bytes), None, progress)?;
            // Objects and run record are durable before lineage or any
            // pointer file names them.
            writer.commit()?;
            tx.index_run(&run_id, &record, "this project")?;
            Ok((name, run_id))
        })?;
        let _ = store;

        // 3. The pointer file, last.
        let pointer = Pointer {
            path: file_name.clone(),
            is_dir: manifest.is_some(),
            kind,
            name: name.clone(),
            digest,
            size,
            files,
            run: Some(run_id),
        };
        write_atomic(&self.root.join(&ptr_rel), pointer.to_text().as_bytes())?;
        self.ensure_ignored(&art_dir, &[&format!("/{file_name}")])?;
        self.remember(&art_rel, &scan)?;
        Ok(Added {
            path: art_rel,
            pointer: ptr_rel,
            kind,
            name,
            digest,
            size,
            files,
            run: Some(run_id),
            unchanged: false,
        })
    }
}
