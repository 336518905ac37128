//! Looking at a work-tree artifact: which files, with which stat stamps,
//! and — through the stat cache in `store/state.db` — which digests, so an
//! unchanged file is never re-hashed.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{IoCtx, Result, Workspace, WorkspaceError};
use crate::store::Digest;
use crate::store::manifest::{Entry, Manifest};
use crate::store::state::Stamp;

/// One regular file of an artifact.
#[derive(Debug, Clone)]
pub(crate) struct FileScan {
    /// Relative to the artifact (`""` for a single-file artifact).
    pub rel: String,
    pub abs: PathBuf,
    pub stamp: Stamp,
    pub mode: u32,
    /// Known from the stat cache; `None` = must be hashed.
    pub digest: Option<Digest>,
}

#[derive(Debug)]
pub(crate) enum Scan {
    Missing,
    File(FileScan),
    Dir(Vec<FileScan>),
}

impl Scan {
    pub fn files(&self) -> &[FileScan] {
        match self {
            Scan::Missing => &[],
            Scan::File(f) => std::slice::from_ref(f),
            Scan::Dir(v) => v,
        }
    }
}

type Cache = HashMap<String, (Stamp, Digest, u32)>;

fn encode(files: &[FileScan]) -> Vec<u8> {
    let mut out = Vec::with_capacity(files.len() * 80);
    for f in files {
        let Some(d) = f.digest else { continue };
        out.extend_from_slice(&(f.rel.len() as u32).to_le_bytes());
        out.extend_from_slice(f.rel.as_bytes());
        out.extend_from_slice(&f.stamp.size.to_le_bytes());
        out.extend_from_slice(&f.stamp.mtime_ns.to_le_bytes());
        out.extend_from_slice(&f.stamp.ino.to_le_bytes());
        out.extend_from_slice(&f.mode.to_le_bytes());
        out.extend_from_slice(&d.0);
    }
    out
}

/// A damaged cache blob decodes to as much as is intact: it is only a cache.
fn decode(mut b: &[u8]) -> Cache {
    let mut m = HashMap::new();
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    fn u64_of(s: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    }
    while !b.is_empty() {
        let Some(len) = take(&mut b, 4) else { break };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (Some(rel), Some(size), Some(mt), Some(ino), Some(mode), Some(d)) = (
            take(&mut b, len),
            take(&mut b, 8),
            take(&mut b, 8),
            take(&mut b, 8),
            take(&mut b, 4),
            take(&mut b, 32),
        ) else {
            break;
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d);
        let stamp = Stamp {
            size: u64_of(size),
            mtime_ns: u64_of(mt) as i64,
            ino: u64_of(ino),
        };
        m.insert(
            String::from_utf8_lossy(rel).into_owned(),
            (
                stamp,
                Digest(digest),
                u32::from_le_bytes([mode[0], mode[1], mode[2], mode[3]]),
            ),
        );
    }
    m
}

fn mode_of(m: &fs::Metadata) -> u32 {
    if m.mode() & 0o111 != 0 { 0o755 } else { 0o644 }
}

impl Workspace {
    /// Regular-file metadata of `abs`, following a symlink only when it
    /// stays inside the project (e.g. a `--link symlink` checkout).
    fn file_meta(&self, abs: &Path, lmeta: fs::Metadata) -> Result<Option<fs::Metadata>> {
        if !lmeta.file_type().is_symlink() {
            return Ok(Some(lmeta));
        }
        let target = match fs::canonicalize(abs) {
            Ok(t) => t,
            Err(_) => return Ok(None), // dangling link: treated as missing
        };
        if !target.starts_with(&self.root) {
            return Err(WorkspaceError::Path {
                path: abs.to_path_buf(),
                source: crate::paths::PathError::SymlinkEscape {
                    path: abs.to_path_buf(),
                    link: target,
                },
            });
        }
        Ok(Some(fs::metadata(abs).ctx("stat", abs)?))
    }

    /// Stat an artifact (relative path) and fill digests from the cache.
    pub(crate) fn scan(&self, art_rel: &str) -> Result<Scan> {
        let abs = self.root.join(art_rel);
        crate::paths::check_no_symlink_ancestors(&self.root, &abs).map_err(|source| {
            WorkspaceError::Path {
                path: art_rel.into(),
                source,
            }
        })?;
        let lmeta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Scan::Missing),
            Err(e) => return Err(e).ctx("stat", &abs),
        };
        let Some(meta) = self.file_meta(&abs, lmeta)? else {
            return Ok(Scan::Missing);
        };
        let cache = match self.store.state() {
            Some(s) => decode(&s.worktree_get(art_rel)?.unwrap_or_default()),
            None => Cache::new(),
        };
        let lookup = |rel: &str, stamp: Stamp, mode: u32| {
            cache
                .get(rel)
                .filter(|(s, _, m)| *s == stamp && *m == mode)
                .map(|(_, d, _)| *d)
        };
        if meta.is_file() {
            let stamp = Stamp::of(&meta);
            let mode = mode_of(&meta);
            return Ok(Scan::File(FileScan {
                rel: String::new(),
                digest: lookup("", stamp, mode),
                abs,
                stamp,
                mode,
            }));
        }
        if !meta.is_dir() {
            return Err(WorkspaceError::Invalid(format!(
                "{art_rel} is neither a file nor a directory"
            )));
        }
        let mut files = Vec::new();
        let mut stack = vec![(abs.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            for e in fs::read_dir(&dir).ctx("list", &dir)? {
                let e = e.ctx("list", &dir)?;
                let name = e.file_name();
                let Some(name) = name.to_str() else {
                    return Err(WorkspaceError::Invalid(format!(
                        "{}: file names must be UTF-8",
                        e.path().display()
                    )));
                };
                let child = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                crate::paths::check_relative(&child).map_err(|source| WorkspaceError::Path {
                    path: e.path(),
                    source,
                })?;
                let p = e.path();
                let lm = e.metadata().ctx("stat", &p)?;
                if lm.is_dir() {
                    stack.push((p, child));
                    continue;
                }
                let Some(m) = self.file_meta(&p, lm)? else {
                    continue;
                };
                if m.is_dir() {
                    return Err(WorkspaceError::Invalid(format!(
                        "{}: symlinks to directories inside a tracked directory are not supported",
                        p.display()
                    )));
                }
                if !m.is_file() {
                    continue;
                }
                let stamp = Stamp::of(&m);
                let mode = mode_of(&m);
                files.push(FileScan {
                    digest: lookup(&child, stamp, mode),
                    rel: child,
                    abs: p,
                    stamp,
                    mode,
                });
            }
        }
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(Scan::Dir(files))
    }

    /// Hash every file the cache did not know, in parallel.
    pub(crate) fn hash_uncached(&self, scan: &mut Scan) -> Result<bool> {
        let files: &mut [FileScan] = match scan {
            Scan::Missing => return Ok(false),
            Scan::File(f) => std::slice::from_mut(f),
            Scan::Dir(v) => v,
        };
        let todo: Vec<&mut FileScan> = files.iter_mut().filter(|f| f.digest.is_none()).collect();
        if todo.is_empty() {
            return Ok(false);
        }
        todo.into_par_iter().try_for_each(|f| -> Result<()> {
            f.digest = Some(crate::store::hash_file(&f.abs)?);
            Ok(())
        })?;
        Ok(true)
    }

    /// Remember the digests of a scan for next time.
    pub(crate) fn remember(&self, art_rel: &str, scan: &Scan) -> Result<()> {
        if let Some(s) = self.store.state() {
            s.worktree_set(art_rel, &encode(scan.files()))?;
        }
        Ok(())
    }
}

/// The artifact digest of a fully hashed scan: the file's digest, or the
/// digest of the directory's manifest.
pub(crate) fn digest_of(scan: &Scan) -> Option<(Digest, u64, Option<Manifest>)> {
    match scan {
        Scan::Missing => None,
        Scan::File(f) => Some((f.digest?, f.stamp.size, None)),
        Scan::Dir(files) => {
            let mut entries = Vec::with_capacity(files.len());
            for f in files {
                entries.push(Entry {
                    path: f.rel.clone(),
                    digest: f.digest?,
                    size: f.stamp.size,
                    mode: f.mode,
                });
            }
            let m = Manifest::new(entries);
            Some((m.digest(), m.total_size(), Some(m)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_blob_round_trip_and_truncation_is_harmless() {
        let f = FileScan {
            rel: "a/b".into(),
            abs: "/x".into(),
            stamp: Stamp {
                size: 3,
                mtime_ns: 7,
                ino: 9,
            },
            mode: 0o644,
            digest: Some(Digest::of(b"x")),
        };
        let b = encode(&[
            f.clone(),
            FileScan {
                rel: "c".into(),
                ..f.clone()
            },
        ]);
        let m = decode(&b);
        assert_eq!(m.len(), 2);
        assert_eq!(m["a/b"].1, Digest::of(b"x"));
        assert_eq!(decode(&b[..b.len() - 5]).len(), 1);
        assert!(decode(&[1, 2]).is_empty());
    }
}
