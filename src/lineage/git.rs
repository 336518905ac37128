//! The project's git repository, read through git2: HEAD, the dirty flag,
//! and pointer files as they stood at any commit.

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, StatusOptions, TreeWalkMode, TreeWalkResult};

use super::{LineageError, Result};

pub struct Git {
    repo: Repository,
    /// The project root relative to the repository's work tree ("" when equal).
    prefix: PathBuf,
}

fn gerr(e: git2::Error) -> LineageError {
    LineageError::Git(e.message().to_string())
}

impl Git {
    /// The repository containing `root`, or `None` outside git.
    pub fn discover(root: &Path) -> Result<Option<Git>> {
        let repo = match Repository::discover(root) {
            Ok(r) => r,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(gerr(e)),
        };
        let Some(wt) = repo.workdir() else {
            return Ok(None);
        };
        let wt = std::fs::canonicalize(wt).map_err(|e| LineageError::Git(e.to_string()))?;
        let prefix = root
            .strip_prefix(&wt)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        Ok(Some(Git { repo, prefix }))
    }

    /// HEAD's commit id, `None` on an unborn branch.
    pub fn head(&self) -> Result<Option<String>> {
        match self.repo.head() {
            Ok(h) => Ok(h.peel_to_commit().ok().map(|c| c.id().to_string())),
            Err(e)
                if e.code() == git2::ErrorCode::UnbornBranch
                    || e.code() == git2::ErrorCode::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(gerr(e)),
        }
    }

    /// The URL of the `origin` remote, if it has one.
    pub fn origin_url(&self) -> Option<String> {
        let r = self.repo.find_remote("origin").ok()?;
        r.url().ok().map(str::to_string)
    }

    /// The project root's path inside the repository ("" at its top).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Whether tracked files differ from HEAD (untracked files do not count,
    /// as with `git describe --dirty`).
    pub(crate) fn is_dirty(&self) -> Result<bool> {
        let mut opts = StatusOptions::new();
        opts.include_untracked(false)
            .include_ignored(false)
            .exclude_submodules(true);
        let st = self.repo.statuses(Some(&mut opts)).map_err(gerr)?;
        Ok(!st.is_empty())
    }

    pub(crate) fn commit_exists(&self, id: &str) -> bool {
        Oid::from_str(id)
            .ok()
            .and_then(|o| self.repo.find_commit(o).ok())
            .is_some()
    }

    /// Resolve a revision (`HEAD~1`, a branch, a commit id) to a commit id.
    pub fn resolve(&self, rev: &str) -> Result<String> {
        let obj = self
            .repo
            .revparse_single(rev)
            .map_err(|e| LineageError::BadRev(rev.to_string(), e.message().to_string()))?;
        let c = obj
            .peel_to_commit()
            .map_err(|e| LineageError::BadRev(rev.to_string(), e.message().to_string()))?;
        Ok(c.id().to_string())
    }

    /// Every pointer file (path relative to the project root, content) in
    /// the tree of commit `id`.
    pub(crate) fn pointer_files_at(&self, id: &str, ext: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let oid = Oid::from_str(id).map_err(gerr)?;
        let commit = self.repo.find_commit(oid).map_err(gerr)?;
        let tree = commit.tree().map_err(gerr)?;
        let mut found = Vec::new();
        let prefix = self.prefix.to_string_lossy().to_string();
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(ObjectType::Blob)
                && let Ok(name) = entry.name()
                && name.ends_with(ext)
            {
                found.push((format!("{dir}{name}"), entry.id()));
            }
            TreeWalkResult::Ok
        })
        .map_err(gerr)?;
        let mut out = Vec::new();
        for (path, blob) in found {
            let rel = if prefix.is_empty() {
                path
            } else {
                match path.strip_prefix(&format!("{prefix}/")) {
                    Some(r) => r.to_string(),
                    None => continue,
                }
            };
            let blob = self.repo.find_blob(blob).map_err(gerr)?;
            out.push((rel, blob.content().to_vec()));
        }
        out.sort();
        Ok(out)
    }

    /// Whether git tracks `rel` (relative to the project root) as a
    /// symlink, in the index or in HEAD's tree: such a link came with
    /// someone's commit.
    pub(crate) fn tracks_symlink(&self, rel: &str) -> Result<bool> {
        const LINK: u32 = 0o120000;
        let path = self.prefix.join(rel);
        let index = self.repo.index().map_err(gerr)?;
        if index.get_path(&path, 0).is_some_and(|e| e.mode == LINK) {
            return Ok(true);
        }
        Ok(self
            .repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_tree().ok())
            .and_then(|t| t.get_path(&path).ok())
            .is_some_and(|e| e.filemode() as u32 == LINK))
    }

    /// Every commit reachable from any reference.
    pub(crate) fn all_commits(&self) -> Result<Vec<String>> {
        let mut walk = self.repo.revwalk().map_err(gerr)?;
        if walk.push_glob("*").is_err() {
            return Ok(Vec::new());
        }
        let _ = walk.push_head();
        let mut out = Vec::new();
        for id in walk {
            out.push(id.map_err(gerr)?.to_string());
        }
        Ok(out)
    }
}
