//! `recsys checkout`: materialise work-tree copies from verified objects.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::scan::{Scan, artifact_digest};
use super::{IoCtx, Pointer, Result, Workspace, WorkspaceError};
use crate::progress::Progress;
use crate::store::link::{LinkMode, materialize};
use crate::store::manifest::{Entry, Manifest};
use crate::store::{Digest, ObjectStore};

#[derive(Debug, Clone, Default)]
pub struct CheckoutOptions {
    /// Restore artifacts as the pointer files stood at this git revision.
    pub rev: Option<String>,
    /// `None`: reflink where supported, else copy.
    pub link: Option<LinkMode>,
    /// Overwrite local changes that are not in the store.
    pub force: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckedOut {
    pub path: String,
    pub name: String,
    pub digest: Digest,
    /// `restored` or `unchanged`.
    pub action: &'static str,
    pub files_written: u64,
}

const TMP_SUFFIX: &str = ".recsys-tmp";

impl Workspace {
    /// The pointers a command applies to: all in the work tree (or at
    /// `rev`), or those named by `targets` (artifacts or pointer files).
    pub(crate) fn select_pointers(
        &self,
        targets: &[PathBuf],
        rev: Option<&str>,
    ) -> Result<Vec<(String, Pointer, String)>> {
        let all: Vec<(String, Pointer, String)> = match rev {
            Some(r) => self.pointers_at(r)?,
            None if targets.is_empty() => {
                let mut v = Vec::new();
                for rel in self.pointer_files()? {
                    let (p, art) = self.read_pointer(&rel)?;
                    v.push((rel, p, art));
                }
                v
            }
            None => {
                let mut v = Vec::new();
                for t in targets {
                    let rel = self.pointer_for_arg(t)?;
                    if self.root.join(&rel).exists() {
                        let (p, art) = self.read_pointer(&rel)?;
                        v.push((rel, p, art));
                    } else {
                        v.push(self.pointer_for_version(t)?);
                    }
                }
                return Ok(v);
            }
        };
        if targets.is_empty() {
            return Ok(all);
        }
        let mut out = Vec::new();
        for t in targets {
            let want = self.pointer_for_arg(t)?;
            match all.iter().find(|(rel, _, _)| *rel == want) {
                Some(x) => out.push(x.clone()),
                None => return Err(WorkspaceError::UnknownArtifact(t.display().to_string())),
            }
        }
        Ok(out)
    }

    /// A registered version (name or digest) as a pointer at the path it was
    /// registered at: `recsys checkout model_v3` restores those exact bytes
    /// even when no pointer file in the work tree names them any more.
    fn pointer_for_version(&self, t: &Path) -> Result<(String, Pointer, String)> {
        let q = t.to_string_lossy();
        let a = self
            .find_artifact(&q)
            .map_err(|_| WorkspaceError::UnknownArtifact(q.to_string()))?;
        let art = a.path.clone().ok_or_else(|| {
            WorkspaceError::Invalid(format!("{} has no recorded work-tree path", a.name))
        })?;
        crate::paths::check_relative(&art).map_err(|source| WorkspaceError::Path {
            path: art.clone().into(),
            source,
        })?;
        let file = art.rsplit('/').next().unwrap_or(&art).to_string();
        let p = Pointer {
            path: file,
            is_dir: a.files.is_some(),
            kind: super::Kind::parse(&a.kind).unwrap_or(super::Kind::Dataset),
            name: a.name,
            digest: a.digest,
            size: a.size,
            files: a.files,
            run: Some(a.run),
        };
        Ok((format!("{art}{}", super::pointer::EXT), p, art))
    }

    /// Verified object paths of a directory manifest's entries.
    pub(crate) fn load_manifest(&self, digest: &Digest) -> Result<Manifest> {
        let p = self.store.verified_path(digest)?;
        let bytes = fs::read(&p).ctx("read", &p)?;
        Ok(Manifest::parse(digest, &bytes)?)
    }

    pub fn checkout(
        &self,
        targets: &[PathBuf],
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<CheckedOut>> {
        let selected = self.select_pointers(targets, opts.rev.as_deref())?;
        let mut out = Vec::new();
        for (_, p, art_rel) in selected {
            out.push(self.checkout_one(&p, &art_rel, opts, progress)?);
        }
        Ok(out)
    }

    fn checkout_one(
        &self,
        p: &Pointer,
        art_rel: &str,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<CheckedOut> {
        let abs = self.root.join(art_rel);
        self.check_writable(art_rel)?;
        let parent = abs.parent().unwrap_or(&self.root).to_path_buf();
        let fname = abs
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{fname}{TMP_SUFFIX}"));
        remove_any(&tmp)?; // a killed checkout's leftovers

        // Verify before touching anything: a corrupt object is never
        // materialised.
        let target: Vec<Entry> = if p.is_dir {
            let m = self.load_manifest(&p.digest)?;
            m.entries
        } else {
            vec![Entry {
                path: String::new(),
                digest: p.digest,
                size: p.size,
                mode: 0o644,
            }]
        };
        let digests: Vec<Digest> = target.iter().map(|e| e.digest).collect();
        let paths = self.store.verified_paths(&digests)?;
        let objects: HashMap<Digest, PathBuf> = digests.into_iter().zip(paths).collect();

        let mut scan = self.scan(art_rel)?;
        let done = |files_written| CheckedOut {
            path: art_rel.to_string(),
            name: p.name.clone(),
            digest: p.digest,
            action: if files_written == 0 {
                "unchanged"
            } else {
                "restored"
            },
            files_written,
        };
        if !matches!(scan, Scan::Missing) {
            self.hash_uncached(&mut scan)?;
            if artifact_digest(&scan) == Some(p.digest) {
                self.remember(art_rel, &scan)?;
                return Ok(done(0));
            }
        }
        let total: u64 = target.iter().map(|e| e.size).sum();
        progress.start("checkout", total);
        let written = match (&scan, p.is_dir) {
            (Scan::Missing, false) => {
                materialize(&objects[&p.digest], &tmp, opts.link, false, None)
                    .ctx("create", &tmp)?;
                fs::rename(&tmp, &abs).ctx("rename into place", &abs)?;
                progress.advance(total);
                1
            }
            (Scan::Missing, true) | (Scan::File(_), true) => {
                self.refuse_precious(&scan, &abs, opts.force)?;
                self.build_dir(&tmp, &target, &objects, opts.link, progress)?;
                remove_any(&abs)?;
                fs::rename(&tmp, &abs).ctx("rename into place", &abs)?;
                target.len() as u64
            }
            (Scan::File(_) | Scan::Dir(_), false) => {
                self.refuse_precious(&scan, &abs, opts.force)?;
                materialize(&objects[&p.digest], &tmp, opts.link, false, None)
                    .ctx("create", &tmp)?;
                if abs.is_dir() {
                    fs::remove_dir_all(&abs).ctx("remove", &abs)?;
                }
                fs::rename(&tmp, &abs).ctx("rename into place", &abs)?;
                progress.advance(total);
                1
            }
            (Scan::Dir(current), true) => {
                self.update_dir(&abs, current, &target, &objects, opts, progress)?
            }
        };
        progress.finish();

        // Refresh the stat cache: the files now hold the target digests.
        let mut after = self.scan(art_rel)?;
        let want: HashMap<&str, &Entry> = target.iter().map(|e| (e.path.as_str(), e)).collect();
        match &mut after {
            Scan::Missing => {}
            Scan::File(f) => f.digest = Some(p.digest),
            Scan::Dir(files) => {
                for f in files.iter_mut() {
                    if let Some(e) = want.get(f.rel.as_str())
                        && e.size == f.stamp.size
                    {
                        f.digest = Some(e.digest);
                    }
                }
            }
        }
        self.remember(art_rel, &after)?;
        Ok(done(written))
    }

    /// Refuse to replace content that exists nowhere else.
    fn refuse_precious(&self, scan: &Scan, abs: &Path, force: bool) -> Result<()> {
        if force {
            return Ok(());
        }
        for f in scan.files() {
            if f.rel.ends_with(TMP_SUFFIX) {
                continue;
            }
            let safe = match f.digest {
                Some(d) => self.store.contains(&d)?,
                None => false,
            };
            if !safe {
                return Err(WorkspaceError::WouldOverwrite(if f.rel.is_empty() {
                    abs.to_path_buf()
                } else {
                    abs.join(&f.rel)
                }));
            }
        }
        Ok(())
    }

    fn build_dir(
        &self,
        dir: &Path,
        entries: &[Entry],
        objects: &HashMap<Digest, PathBuf>,
        link: Option<LinkMode>,
        progress: &dyn Progress,
    ) -> Result<()> {
        fs::create_dir_all(dir).ctx("create", dir)?;
        let subdirs: BTreeSet<&str> = entries
            .iter()
            .filter_map(|e| e.path.rfind('/').map(|i| &e.path[..i]))
            .collect();
        for s in subdirs {
            let d = dir.join(s);
            fs::create_dir_all(&d).ctx("create", &d)?;
        }
        // Sequential: parallel creates in one directory contend on its lock.
        entries.iter().try_for_each(|e| -> Result<()> {
            let dst = dir.join(&e.path);
            materialize(
                &objects[&e.digest],
                &dst,
                link,
                e.mode == 0o755,
                Some(e.size),
            )
            .ctx("create", &dst)?;
            progress.advance(e.size);
            Ok(())
        })
    }

    /// Bring an existing directory to the manifest, file by file (each
    /// replaced atomically), removing files the manifest does not list.
    fn update_dir(
        &self,
        abs: &Path,
        current: &[super::scan::FileScan],
        target: &[Entry],
        objects: &HashMap<Digest, PathBuf>,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let have: HashMap<&str, &super::scan::FileScan> =
            current.iter().map(|f| (f.rel.as_str(), f)).collect();
        let wanted: BTreeSet<&str> = target.iter().map(|e| e.path.as_str()).collect();
        // Files to replace or remove must be recoverable from the store.
        let mut doomed = Vec::new();
        for f in current {
            let replaced = match target.iter().find(|e| e.path == f.rel) {
                Some(e) => f.digest != Some(e.digest) || f.mode != e.mode,
                None => true,
            };
            if replaced {
                doomed.push(f.clone());
            }
        }
        self.refuse_precious(&Scan::Dir(doomed.clone()), abs, opts.force)?;
        for f in &doomed {
            if !wanted.contains(f.rel.as_str()) {
                fs::remove_file(&f.abs).ctx("remove", &f.abs)?;
            }
        }
        let todo: Vec<&Entry> = target
            .iter()
            .filter(|e| {
                have.get(e.path.as_str())
                    .is_none_or(|f| f.digest != Some(e.digest) || f.mode != e.mode)
            })
            .collect();
        todo.iter().try_for_each(|e| -> Result<()> {
            let dst = abs.join(&e.path);
            crate::paths::check_no_symlink_ancestors(abs, &dst).map_err(|source| {
                WorkspaceError::Path {
                    path: dst.clone(),
                    source,
                }
            })?;
            if let Some(par) = dst.parent() {
                fs::create_dir_all(par).ctx("create", par)?;
            }
            let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", dst.display()));
            remove_any(&tmp)?;
            materialize(
                &objects[&e.digest],
                &tmp,
                opts.link,
                e.mode == 0o755,
                Some(e.size),
            )
            .ctx("create", &tmp)?;
            if dst.is_dir() {
                fs::remove_dir_all(&dst).ctx("remove", &dst)?;
            }
            fs::rename(&tmp, &dst).ctx("rename into place", &dst)?;
            progress.advance(e.size);
            Ok(())
        })?;
        Ok(todo.len() as u64
            + doomed
                .iter()
                .filter(|f| !wanted.contains(f.rel.as_str()))
                .count() as u64)
    }
}

fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).ctx("remove", p),
        Ok(_) => fs::remove_file(p).ctx("remove", p),
        Err(_) => Ok(()),
    }
}
