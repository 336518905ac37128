//! Datasets in a project: the one writer (`record_dataset`: stage, rename
//! into place, record) `import` and `ingest` share, and the one loader
//! (`load_dataset`) `train`, `evaluate`, `reproduce`, `ingest` (its drift
//! reference) and `replay` share.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Added, IoCtx, Kind, Output, Result, RunSpec, Workspace, WorkspaceError};
use crate::dataset::{self, Dataset};
use crate::lineage::ArtifactRow;
use crate::progress::Progress;
use crate::store::manifest::{Entry, Manifest};
use crate::store::{Digest, hash_file};

impl Workspace {
    /// Read a registered dataset from the store, every file verified by
    /// its digest; it need not be checked out. Errors name the files by
    /// the artifact's work-tree path (or its name).
    pub fn load_dataset(&self, art: &ArtifactRow) -> Result<Dataset> {
        if art.files.is_none() {
            return Err(WorkspaceError::Invalid(format!(
                "{} is a single file, not a dataset directory",
                art.name
            )));
        }
        let manifest = self.load_manifest(&art.digest)?;
        let label = PathBuf::from(art.path.clone().unwrap_or_else(|| art.name.clone()));
        let mut files = BTreeMap::new();
        for e in &manifest.entries {
            if e.path.contains('/') {
                continue; // datasets are flat; nothing nested is read
            }
            let p = self.store.verified_path(&e.digest)?;
            files.insert(e.path.clone(), fs::read(&p).ctx("read", &p)?);
        }
        for need in [
            dataset::EVENTS_CSV,
            dataset::REQUESTS_CSV,
            dataset::USERS_CSV,
            dataset::MOVIES_CSV,
            dataset::DATASET_JSON,
        ] {
            if !files.contains_key(need) {
                return Err(WorkspaceError::Invalid(format!(
                    "{} is not a dataset directory: it has no {need}",
                    art.name
                )));
            }
        }
        Ok(Dataset::from_files(&label, |name| {
            files.remove(name).unwrap_or_default()
        })?)
    }
}

/// A dataset to write as the next `data/dataset_N/` (see
/// [`Workspace::record_dataset`]).
pub struct NewDataset<'a> {
    pub dataset: &'a Dataset,
    /// Files written beside the dataset's own, e.g. ingest's
    /// `quarantine.jsonl`: versioned with the data.
    pub extra: Vec<(&'static str, Vec<u8>)>,
    /// Says whether an unregistered directory already at the next name is
    /// the caller's own crashed output, safe to replace. Anything else
    /// there is refused as [`WorkspaceError::Occupied`].
    pub replaceable: Option<&'a dyn Fn(&Path) -> bool>,
    /// A failpoint hit once the directory is in place, before it is
    /// recorded (crash tests).
    pub failpoint: Option<&'static str>,
}

impl Workspace {
    /// Write `new` as the next `data/dataset_N/` and record it as the
    /// output of the run `spec` describes (`import`, `ingest`, ...): the
    /// one staging-then-rename path datasets take. The directory is
    /// written under a temporary name in `data/` and renamed into place,
    /// so a crash never leaves a half-written `dataset_N`; bytes already
    /// registered as a dataset come back as that version (`unchanged`),
    /// not a new name. Returns the run record's digest and the artifact.
    pub(crate) fn record_dataset(
        &self,
        new: NewDataset<'_>,
        spec: RunSpec,
        progress: &dyn Progress,
    ) -> Result<(Option<Digest>, Added)> {
        let name = self.next_name(Kind::Dataset)?;
        let data = self.root().join("data");
        fs::create_dir_all(&data).ctx("create", &data)?;
        let dir = data.join(&name);
        if fs::symlink_metadata(&dir).is_ok() {
            match new.replaceable {
                Some(ours) if ours(&dir) => fs::remove_dir_all(&dir).ctx("remove", &dir)?,
                _ => return Err(WorkspaceError::Occupied(PathBuf::from("data").join(&name))),
            }
        }
        remove_stale_staging(&data, &name);
        // 0777 less the umask, as `mkdir` makes it (tempfile's default is
        // 0700).
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.recsys-tmp-"))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .tempdir_in(&data)
            .ctx("create temp dir in", &data)?;
        new.dataset.write_dir(tmp.path())?;
        for (file, bytes) in &new.extra {
            let p = tmp.path().join(file);
            let mut f = fs::File::create(&p).ctx("create", &p)?;
            f.write_all(bytes).ctx("write", &p)?;
            f.sync_all().ctx("sync", &p)?;
        }
        let digest = staged_digest(tmp.path())?;
        if let Some(a) = self
            .lineage
            .artifacts_by_digest_prefix(&digest.hex())?
            .into_iter()
            .find(|a| a.digest == digest && a.kind == Kind::Dataset.as_str())
        {
            let run = a.run;
            if let Some(path) = &a.path {
                self.complete_registration(&a, path, tmp)?;
            }
            return Ok((
                Some(run),
                Added {
                    path: a.path.clone().unwrap_or_default(),
                    pointer: a
                        .path
                        .as_ref()
                        .map(|p| format!("{p}{}", super::pointer::EXT))
                        .unwrap_or_default(),
                    kind: Kind::Dataset,
                    name: a.name,
                    digest: a.digest,
                    size: a.size,
                    files: a.files,
                    run: Some(run),
                    unchanged: true,
                },
            ));
        }
        let tmp = tmp.keep();
        fs::rename(&tmp, &dir).ctx("rename into place", &dir)?;
        if let Some(point) = new.failpoint {
            crate::failpoint::hit(point);
        }
        let out = Output {
            path: dir.clone(),
            kind: Some(Kind::Dataset),
            name: Some(name),
        };
        match self.record_run(spec, &[out], progress) {
            Ok((run, mut added)) => match added.pop() {
                Some(a) => Ok((run, a)),
                None => Err(WorkspaceError::Invalid(
                    "recording the dataset returned no artifact".into(),
                )),
            },
            Err(e) => {
                // Not registered: do not leave an untracked dataset_N behind.
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

impl Workspace {
    /// A registered dataset whose pointer file is missing: the registering
    /// process died after recording it and before writing the pointer (or
    /// the pointer was deleted). Finish what it started: the staged copy
    /// (the same bytes) goes into place when the directory is gone too, and
    /// the pointer and `.gitignore` entry are written. A pointer elsewhere
    /// naming the version (a moved one) is left as the only one.
    fn complete_registration(
        &self,
        art: &ArtifactRow,
        rel: &str,
        staged: tempfile::TempDir,
    ) -> Result<()> {
        let abs = self.root().join(rel);
        let ptr = PathBuf::from(format!("{}{}", abs.display(), super::pointer::EXT));
        if fs::symlink_metadata(&ptr).is_ok() || self.names_in_pointers()?.contains_key(&art.name) {
            return Ok(());
        }
        if fs::symlink_metadata(&abs).is_err() {
            let kept = staged.keep();
            fs::rename(&kept, &abs).ctx("rename into place", &abs)?;
        }
        let file_name = rel.rsplit('/').next().unwrap_or(rel).to_string();
        let pointer = super::pointer::Pointer {
            path: file_name.clone(),
            is_dir: true,
            kind: Kind::Dataset,
            name: art.name.clone(),
            digest: art.digest,
            size: art.size,
            files: art.files,
            run: Some(art.run),
        };
        super::write_atomic(&ptr, pointer.to_text().as_bytes())?;
        let dir = abs.parent().unwrap_or(self.root());
        self.ensure_ignored(dir, &[&format!("/{file_name}")])?;
        Ok(())
    }
}

/// A killed writer leaves its staging directory (`.dataset_N.recsys-tmp-*`)
/// behind: remove those of this name older than the grace period (a
/// younger one may be a concurrent writer's). Best effort: a leftover that
/// cannot be removed only wastes space.
fn remove_stale_staging(data: &Path, name: &str) {
    let prefix = format!(".{name}.recsys-tmp-");
    let Ok(rd) = fs::read_dir(data) else {
        return;
    };
    for e in rd.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(&prefix)
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > super::GRACE);
        if stale {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The digest a staged dataset directory will have once added: the
/// manifest of its files (flat, written without execute bits).
fn staged_digest(dir: &Path) -> Result<Digest> {
    let mut entries = Vec::new();
    for e in fs::read_dir(dir).ctx("list", dir)? {
        let e = e.ctx("list", dir)?;
        let p = e.path();
        let size = e.metadata().ctx("stat", &p)?.len();
        entries.push(Entry {
            path: e.file_name().to_string_lossy().into_owned(),
            digest: hash_file(&p)?,
            size,
            mode: 0o644,
        });
    }
    Ok(Manifest::new(entries).digest())
}
