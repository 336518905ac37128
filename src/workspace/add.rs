//! Recording runs and their output artifacts: `recsys add`, and every
//! pipeline step (import, ingest, train) that produces a dataset or model.
//!
//! Order of durability: objects and the run record are durable in the
//! store, then lineage.db indexes the run, then pointer files are written.
//! A crash at any point leaves no pointer naming a missing object.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::pointer::{EXT, Kind, Pointer, valid_name};
use super::scan::{FileScan, Scan, digest_of};
use super::{Result, Workspace, WorkspaceError, write_atomic};
use crate::lineage::{ArtifactRef, RunRecord, run::RUN_FORMAT};
use crate::progress::Progress;
use crate::store::{Digest, ObjectStore, Source, Writer};
use crate::text::number_after;

#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    pub kind: Option<Kind>,
    pub name: Option<String>,
    /// Hard-link the files into the store instead of copying them; they
    /// become read-only ([`crate::store::Writer::put_link`]).
    pub hardlink: bool,
}

/// An artifact a run writes: a file or directory inside the project.
#[derive(Debug, Clone)]
pub struct Output {
    pub path: PathBuf,
    /// Default: the existing pointer's kind, else `model` under `models/`,
    /// else `dataset`.
    pub kind: Option<Kind>,
    /// A fixed version name instead of the next automatic one.
    pub name: Option<String>,
}

/// Everything about a run except its outputs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// `add`, `import`, `ingest`, `train`, `evaluate`, ...
    pub kind: String,
    pub started: i64,
    pub algorithm: Option<String>,
    pub params: serde_json::Value,
    pub metrics: serde_json::Value,
    pub source: serde_json::Value,
    pub inputs: Vec<ArtifactRef>,
}

impl RunSpec {
    pub fn new(kind: &str, started: i64) -> RunSpec {
        RunSpec {
            kind: kind.into(),
            started,
            algorithm: None,
            params: serde_json::json!({}),
            metrics: serde_json::json!({}),
            source: serde_json::json!({}),
            inputs: Vec::new(),
        }
    }
}

/// One artifact tracked by a run.
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

impl Added {}

/// An output whose bytes are in the write batch but not yet named.
struct Staged {
    art_rel: String,
    ptr_rel: String,
    file_name: String,
    existing: Option<Pointer>,
    scan: Scan,
    digest: Digest,
    size: u64,
    files: Option<u64>,
    kind: Kind,
    want_name: Option<String>,
}

impl Staged {
    fn unchanged(&self) -> bool {
        matches!(&self.existing, Some(p) if p.digest == self.digest
            && p.kind == self.kind
            && self.want_name.as_ref().is_none_or(|n| *n == p.name))
    }
}

impl Workspace {
    /// Names used by pointer files in the work tree and at HEAD:
    /// name -> digests. A version name is never reused for other bytes.
    pub(super) fn names_in_pointers(&self) -> Result<HashMap<String, Vec<Digest>>> {
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

    /// The version name the next new artifact of `kind` will get (one past
    /// the highest used in lineage.db, the work tree's pointer files and
    /// HEAD's). A step that names its output file after its version
    /// (`data/dataset_3/`, `models/model_v2.bin`) asks first and then passes
    /// the name in [`Output::name`]; if another process took it meanwhile,
    /// `record_run` refuses rather than reusing it.
    pub(crate) fn next_name(&self, kind: Kind) -> Result<String> {
        let prefix = kind.prefix();
        let from_pointers = self
            .names_in_pointers()?
            .keys()
            .filter_map(|k| number_after(k, prefix))
            .max()
            .unwrap_or(0);
        let from_db = self
            .lineage
            .write_txn(|tx| tx.max_number(prefix).map_err(WorkspaceError::from))?;
        Ok(format!("{prefix}{}", from_db.max(from_pointers) + 1))
    }

    /// `recsys add`: each path becomes its own `add` run.
    pub fn add(
        &self,
        paths: &[PathBuf],
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<Added>> {
        if opts.name.is_some() && paths.len() != 1 {
            return Err(WorkspaceError::Invalid(
                "--name names one version: give exactly one path".into(),
            ));
        }
        let mut out = Vec::new();
        for p in paths {
            let rel = self.rel_path(p)?;
            let mut spec = RunSpec::new("add", self.now_ms());
            spec.source = serde_json::json!({ "path": rel });
            let (_, mut added) = self.record_run_linked(
                spec,
                &[Output {
                    path: p.clone(),
                    kind: opts.kind,
                    name: opts.name.clone(),
                }],
                opts.hardlink,
                progress,
            )?;
            out.append(&mut added);
        }
        Ok(out)
    }

    /// Store `outputs`, write a run record naming `spec.inputs` and the
    /// outputs, index it, then write the outputs' pointer files. Returns the
    /// run id (`None` for an `add` that changed nothing) and the outputs.
    pub fn record_run(
        &self,
        spec: RunSpec,
        outputs: &[Output],
        progress: &dyn Progress,
    ) -> Result<(Option<Digest>, Vec<Added>)> {
        self.record_run_linked(spec, outputs, false, progress)
    }

    /// [`Workspace::record_run`], hard-linking the outputs' files into the
    /// store when `hardlink`.
    fn record_run_linked(
        &self,
        spec: RunSpec,
        outputs: &[Output],
        hardlink: bool,
        progress: &dyn Progress,
    ) -> Result<(Option<Digest>, Vec<Added>)> {
        for o in outputs {
            if let Some(n) = &o.name
                && !valid_name(n)
            {
                return Err(WorkspaceError::Invalid(format!(
                    "bad version name {n:?}: use letters, digits, `_`, `-`, `.`"
                )));
            }
        }
        // Held until the pointer files are written: until then nothing but
        // this process names the new objects, and `gc` (which takes the
        // lock exclusively) must not see them unnamed. The writer's own
        // lock is let go at its commit, before the pointers exist.
        let _named = self.store.lock(false)?;
        let used = if outputs.is_empty() {
            HashMap::new()
        } else {
            self.names_in_pointers()?
        };
        let writer = self.store.begin()?;
        let mut staged = Vec::with_capacity(outputs.len());
        for o in outputs {
            staged.push(self.stage(o, &*writer, hardlink, progress)?);
        }
        if spec.kind == "add" && staged.iter().all(Staged::unchanged) {
            writer.commit()?;
            if hardlink {
                for s in &mut staged {
                    self.restamp_linked(&mut s.scan)?;
                }
            }
            let mut out = Vec::new();
            for s in &staged {
                let p = s.existing.as_ref();
                out.push(self.finish_output(
                    s,
                    p.map(|p| p.name.clone()).unwrap_or_default(),
                    p.and_then(|p| p.run),
                    false,
                )?);
            }
            return Ok((None, out));
        }

        let code = self.code_version()?;
        let ended = self.now_ms();
        let (names, run_id) = self
            .lineage
            .write_txn(|tx| -> Result<(Vec<String>, Digest)> {
                let mut names: Vec<String> = Vec::new();
                for s in &staged {
                    let name = match (&s.want_name, &s.existing) {
                        (Some(n), _) => {
                            let clash_db = tx.artifact_by_name(n)?.filter(|a| a.digest != s.digest);
                            let clash_ptr = used
                                .get(n)
                                .and_then(|ds| ds.iter().find(|d| **d != s.digest).copied());
                            if let Some(other) = clash_db.map(|a| a.digest).or(clash_ptr) {
                                return Err(WorkspaceError::Invalid(format!(
                                    "version name {n} is already used for other bytes ({}); \
                                 a name is never reused — pick another",
                                    other.short()
                                )));
                            }
                            n.clone()
                        }
                        (None, Some(p)) if p.digest == s.digest && p.kind == s.kind => {
                            p.name.clone()
                        }
                        (None, _)
                            if let Some(a) =
                                tx.artifact_at(&s.digest, &s.art_rel, s.kind.as_str())? =>
                        {
                            a.name
                        }
                        (None, _) => {
                            let prefix = s.kind.prefix();
                            let from_pointers = used
                                .keys()
                                .map(String::as_str)
                                .chain(names.iter().map(String::as_str))
                                .filter_map(|k| number_after(k, prefix))
                                .max()
                                .unwrap_or(0);
                            let next = tx.max_number(prefix)?.max(from_pointers) + 1;
                            format!("{prefix}{next}")
                        }
                    };
                    names.push(name);
                }
                let record = RunRecord {
                    recsys_run: RUN_FORMAT,
                    kind: spec.kind.clone(),
                    started: spec.started,
                    ended,
                    code,
                    algorithm: spec.algorithm.clone(),
                    params: spec.params.clone(),
                    metrics: spec.metrics.clone(),
                    source: spec.source.clone(),
                    inputs: spec.inputs.clone(),
                    outputs: staged
                        .iter()
                        .zip(&names)
                        .map(|(s, n)| ArtifactRef {
                            digest: s.digest,
                            kind: s.kind.as_str().into(),
                            name: n.clone(),
                            size: s.size,
                            files: s.files,
                            path: Some(s.art_rel.clone()),
                        })
                        .collect(),
                };
                let (run_id, _) = writer.put(Source::Bytes(&record.to_bytes()), None, progress)?;
                // Objects and run record are durable before lineage or any
                // pointer file names them.
                writer.commit()?;
                tx.index_run(&run_id, &record, "this project")?;
                Ok((names, run_id))
            })?;
        if hardlink {
            for s in &mut staged {
                self.restamp_linked(&mut s.scan)?;
            }
        }
        let mut out = Vec::new();
        for (s, name) in staged.iter().zip(names) {
            out.push(self.finish_output(s, name, Some(run_id), true)?);
        }
        Ok((Some(run_id), out))
    }

    /// Copy an output's files the store lacks into the batch and hash it.
    fn stage(
        &self,
        o: &Output,
        writer: &dyn Writer,
        hardlink: bool,
        progress: &dyn Progress,
    ) -> Result<Staged> {
        let art_rel = self.rel_path(&o.path)?.trim_end_matches('/').to_string();
        if art_rel.ends_with(EXT) {
            return Err(WorkspaceError::Invalid(format!(
                "{art_rel} is a pointer file; add the artifact it names instead"
            )));
        }
        let ptr_rel = format!("{art_rel}{EXT}");
        self.check_writable(&ptr_rel)?;
        let existing = if self.root.join(&ptr_rel).exists() {
            Some(self.read_pointer(&ptr_rel)?.0)
        } else {
            None
        };
        let mut scan = self.scan(&art_rel)?;
        let files: &mut [FileScan] = match &mut scan {
            Scan::File(f) => std::slice::from_mut(f),
            Scan::Dir(v) => v,
            Scan::Missing => {
                return Err(WorkspaceError::Invalid(format!(
                    "{art_rel}: no such file or directory"
                )));
            }
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
        // Written one at a time (creating files in one directory from
        // several threads contends on its lock: measured 10x slower on ext4
        // with 2 threads) while the next files are read ahead; a big file is
        // still hashed on every core.
        let paths: Vec<&Path> = todo.iter().map(|f| f.abs.as_path()).collect();
        let digests = if hardlink {
            paths
                .iter()
                .map(|p| writer.put_link(p, progress).map(|(d, _)| d))
                .collect::<crate::store::Result<Vec<_>>>()?
        } else {
            crate::store::put_files(writer, &paths, progress)?
        };
        for (f, d) in todo.into_iter().zip(digests) {
            f.digest = Some(d);
        }
        progress.finish();
        let Some((digest, size, manifest)) = digest_of(&scan) else {
            return Err(WorkspaceError::Invalid(format!(
                "{art_rel}: could not hash"
            )));
        };
        if let Some(m) = &manifest {
            writer.put(Source::Bytes(&m.to_bytes()), None, progress)?;
        }
        let kind = o.kind.or(existing.as_ref().map(|p| p.kind)).unwrap_or(
            if art_rel.starts_with("models/") {
                Kind::Model
            } else {
                Kind::Dataset
            },
        );
        Ok(Staged {
            file_name: art_rel.rsplit('/').next().unwrap_or(&art_rel).to_string(),
            ptr_rel,
            existing,
            files: manifest.as_ref().map(|m| m.entries.len() as u64),
            scan,
            digest,
            size,
            kind,
            want_name: o.name.clone(),
            art_rel,
        })
    }

    /// Write the pointer (when new), the .gitignore entry and the stat cache.
    fn finish_output(
        &self,
        s: &Staged,
        name: String,
        run: Option<Digest>,
        write: bool,
    ) -> Result<Added> {
        let unchanged = s.unchanged() && s.existing.as_ref().map(|p| &p.name) == Some(&name);
        if write && !unchanged {
            let pointer = Pointer {
                path: s.file_name.clone(),
                is_dir: matches!(s.scan, Scan::Dir(_)),
                kind: s.kind,
                name: name.clone(),
                digest: s.digest,
                size: s.size,
                files: s.files,
                run,
            };
            write_atomic(&self.root.join(&s.ptr_rel), pointer.to_text().as_bytes())?;
        }
        let abs = self.root.join(&s.art_rel);
        let dir = abs.parent().unwrap_or(Path::new(&self.root));
        self.ensure_ignored(dir, &[&format!("/{}", s.file_name)])?;
        self.remember(&s.art_rel, &s.scan)?;
        Ok(Added {
            path: s.art_rel.clone(),
            pointer: s.ptr_rel.clone(),
            kind: s.kind,
            name,
            digest: s.digest,
            size: s.size,
            files: s.files,
            run: if unchanged {
                s.existing.as_ref().and_then(|p| p.run)
            } else {
                run
            },
            unchanged,
        })
    }
}
