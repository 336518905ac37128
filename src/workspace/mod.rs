//! A recsys project: its work tree, pointer files, store and lineage index.
//!
//! This module owns the operations users run (`add`, `status`, `checkout`,
//! `push`/`fetch`/`pull`, `gc`, `audit`, `diff`, `ls`, `lineage`). It takes
//! explicit paths and options, returns data, and never prints: the CLI
//! formats results.

mod add;
mod audit;
mod checkout;
mod config;
mod gc;
pub mod pointer;
mod query;
mod requests;
mod scan;
mod status;
mod sync;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use add::{AddOptions, Added, Output, RunSpec};
pub use audit::Problem;
pub use checkout::{CheckedOut, CheckoutOptions};
pub use config::{ProjectConfig, RemoteEntry};
pub use gc::{GcReport, SEGMENT_MAGIC};
pub use pointer::{Kind, Pointer, PointerError};
pub use query::{ArtifactLineage, DiffEntry, EdgeView, RebuildReport, Upstream};
pub use requests::{NEAR_WINDOW_MS, RequestLineage};
pub use status::{ArtifactStatus, RemoteState, StoreState, WorkState};
pub use sync::{PullReport, PushReport};

use crate::lineage::{CodeVersion, LineageDb, LineageError, git::Git};
use crate::paths::PathError;
use crate::store::{LocalStore, StoreError};

/// The project's marker directory (committed): config such as remotes.
pub const DOT_DIR: &str = ".recsys";
pub const STORE_DIR: &str = "store";
pub const LINEAGE_DB: &str = "lineage.db";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lineage(#[from] LineageError),
    #[error(transparent)]
    Pointer(#[from] PointerError),
    #[error("{path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: PathError,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not inside a recsys project (run `recsys init` first)")]
    NotAProject(PathBuf),
    #[error("{0} is outside the project")]
    OutsideProject(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{0}: would overwrite local changes that are not in the store (add them first, or pass --force)"
    )]
    WouldOverwrite(PathBuf),
    #[error("no artifact matches {0:?}")]
    UnknownArtifact(String),
    #[error("{0}")]
    Remote(String),
}

pub type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

pub(crate) trait IoCtx<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoCtx<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| WorkspaceError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `dataset_12` with prefix `dataset_` -> 12.
pub fn number_after(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 18 {
        return None;
    }
    rest.parse().ok()
}

/// Settings the caller (CLI or test) decides; the core reads no environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Milliseconds since the epoch to stamp runs with; `None` = the clock.
    pub now_ms: Option<i64>,
    /// Parallel transfers for push/fetch.
    pub jobs: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            now_ms: None,
            jobs: 8,
        }
    }
}

/// recsys's own version and the commit it was built from.
pub fn recsys_build() -> (String, String) {
    (
        env!("CARGO_PKG_VERSION").to_string(),
        option_env!("RECSYS_BUILD_COMMIT")
            .unwrap_or("unknown")
            .to_string(),
    )
}

pub struct Workspace {
    root: PathBuf,
    pub store: LocalStore,
    pub lineage: LineageDb,
    git: Option<Git>,
    pub config: ProjectConfig,
    settings: Settings,
}

/// What `init` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    pub root: PathBuf,
    pub git: bool,
    pub created: Vec<String>,
}

impl Workspace {
    /// Create (or complete) a project at `root`. Idempotent.
    pub fn init(root: &Path, settings: Settings) -> Result<(Workspace, InitReport)> {
        let root = fs::canonicalize(root).ctx("open", root)?;
        let mut created = Vec::new();
        for d in [DOT_DIR, STORE_DIR] {
            if !root.join(d).exists() {
                created.push(format!("{d}/"));
            }
        }
        if !root.join(LINEAGE_DB).exists() {
            created.push(LINEAGE_DB.into());
        }
        fs::create_dir_all(root.join(DOT_DIR)).ctx("create", &root.join(DOT_DIR))?;
        let ws = Workspace::open_at(root.clone(), settings)?;
        let git = ws.git.is_some();
        ws.lineage
            .set_meta("git", if git { "yes" } else { "no git" })?;
        if git && ws.ensure_ignored(&root, &["/store/", "/lineage.db", "/lineage.db-*"])? {
            created.push(".gitignore entries".into());
        }
        Ok((ws, InitReport { root, git, created }))
    }

    /// Open the project containing `start` (searching upwards for `.recsys/`).
    pub fn discover(start: &Path, settings: Settings) -> Result<Workspace> {
        let start = fs::canonicalize(start).ctx("open", start)?;
        let mut cur: &Path = &start;
        loop {
            if cur.join(DOT_DIR).is_dir() {
                return Workspace::open_at(cur.to_path_buf(), settings);
            }
            match cur.parent() {
                Some(p) => cur = p,
                None => return Err(WorkspaceError::NotAProject(start)),
            }
        }
    }

    fn open_at(root: PathBuf, settings: Settings) -> Result<Workspace> {
        let store = LocalStore::open_with_state(&root.join(STORE_DIR))?;
        let lineage = LineageDb::open(&root.join(LINEAGE_DB))?;
        let git = Git::discover(&root)?;
        let config = ProjectConfig::load(&root)?;
        Ok(Workspace {
            root,
            store,
            lineage,
            git,
            config,
            settings,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn git(&self) -> Option<&Git> {
        self.git.as_ref()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn now_ms(&self) -> i64 {
        self.settings.now_ms.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
    }

    /// The code version to record in a run started now.
    pub fn code_version(&self) -> Result<CodeVersion> {
        let (v, b) = recsys_build();
        let (commit, dirty) = match &self.git {
            Some(g) => (g.head()?, g.is_dirty()?),
            None => (None, false),
        };
        Ok(CodeVersion {
            git_commit: commit,
            dirty,
            recsys_version: v,
            build_commit: b,
        })
    }

    /// `p` (absolute, or relative to the current directory) as a path
    /// inside the project, relative to the root, with `/` separators.
    pub fn rel_path(&self, p: &Path) -> Result<String> {
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().ctx("current dir", p)?.join(p)
        };
        let norm = normalize(&abs);
        // Resolve symlinks in the parent so a link out of the project is caught.
        let parent_real = match norm.parent() {
            Some(par) if par.exists() => fs::canonicalize(par).ctx("resolve", par)?,
            Some(par) => par.to_path_buf(),
            None => return Err(WorkspaceError::OutsideProject(p.into())),
        };
        let full = match norm.file_name() {
            Some(n) => parent_real.join(n),
            None => parent_real,
        };
        let rel = full
            .strip_prefix(&self.root)
            .map_err(|_| WorkspaceError::OutsideProject(p.into()))?;
        let s = rel.to_string_lossy().to_string();
        if s.is_empty() {
            return Err(WorkspaceError::Invalid(
                "the project root itself cannot be tracked; name a file or directory in it".into(),
            ));
        }
        let first = s.split('/').next().unwrap_or("");
        if [DOT_DIR, STORE_DIR, ".git", LINEAGE_DB].contains(&first)
            || first.starts_with("lineage.db-")
        {
            return Err(WorkspaceError::Invalid(format!(
                "{s} belongs to recsys or git and cannot be tracked"
            )));
        }
        Ok(s)
    }

    /// Add `/<name>` lines to the `.gitignore` in `dir` when missing;
    /// written atomically. Returns whether anything changed.
    pub(crate) fn ensure_ignored(&self, dir: &Path, entries: &[&str]) -> Result<bool> {
        let gi = dir.join(".gitignore");
        let existing = match fs::read_to_string(&gi) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).ctx("read", &gi),
        };
        let have: Vec<&str> = existing.lines().map(str::trim).collect();
        let missing: Vec<&&str> = entries.iter().filter(|e| !have.contains(e)).collect();
        if missing.is_empty() {
            return Ok(false);
        }
        let mut out = existing.clone();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for m in missing {
            out.push_str(m);
            out.push('\n');
        }
        write_atomic(&gi, out.as_bytes())?;
        Ok(true)
    }

    /// Every pointer file in the work tree (paths relative to the root),
    /// sorted. Does not descend into `.git`, the store, tracked artifact
    /// directories, directories tagged with `CACHEDIR.TAG`, or symlinks.
    pub fn pointer_files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("list", &dir),
            };
            let mut names = Vec::new();
            for e in rd {
                let e = e.ctx("list", &dir)?;
                let ft = e.file_type().ctx("stat", &e.path())?;
                names.push((e.file_name().to_string_lossy().to_string(), ft));
            }
            if rel.is_empty() {
                names.retain(|(n, _)| n != ".git" && n != STORE_DIR && n != DOT_DIR);
            }
            if names.iter().any(|(n, _)| n == "CACHEDIR.TAG") {
                continue;
            }
            let pointers: Vec<&String> = names
                .iter()
                .filter(|(n, ft)| ft.is_file() && n.ends_with(pointer::EXT))
                .map(|(n, _)| n)
                .collect();
            for (n, ft) in &names {
                let child_rel = if rel.is_empty() {
                    n.clone()
                } else {
                    format!("{rel}/{n}")
                };
                if ft.is_file() && n.ends_with(pointer::EXT) {
                    out.push(child_rel);
                } else if ft.is_dir() && n != ".git" {
                    let tracked = pointers
                        .iter()
                        .any(|p| **p == format!("{n}{}", pointer::EXT));
                    if !tracked {
                        stack.push((dir.join(n), child_rel));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Read and check one pointer file (relative to the root). Returns the
    /// pointer and the artifact's path relative to the root.
    pub fn read_pointer(&self, rel: &str) -> Result<(Pointer, String)> {
        let abs = self.root.join(rel);
        crate::paths::check_no_symlink_ancestors(&self.root, &abs).map_err(|source| {
            WorkspaceError::Path {
                path: rel.into(),
                source,
            }
        })?;
        let meta = fs::symlink_metadata(&abs).ctx("open pointer file", &abs)?;
        if meta.file_type().is_symlink() {
            return Err(WorkspaceError::Path {
                path: rel.into(),
                source: PathError::SymlinkEscape {
                    path: rel.into(),
                    link: abs.clone(),
                },
            });
        }
        let bytes = fs::read(&abs).ctx("read pointer file", &abs)?;
        let p = Pointer::parse(Path::new(rel), &bytes)?;
        let art = artifact_rel(rel, &p.path);
        Ok((p, art))
    }

    /// Pointers at git revision `rev`: (pointer path, pointer, artifact path).
    pub fn pointers_at(&self, rev: &str) -> Result<Vec<(String, Pointer, String)>> {
        let git = self.git.as_ref().ok_or_else(|| {
            WorkspaceError::Invalid(format!(
                "--rev {rev}: this project is not in a git repository"
            ))
        })?;
        let commit = git.resolve(rev)?;
        let mut out = Vec::new();
        for (rel, bytes) in git.pointer_files_at(&commit, pointer::EXT)? {
            let p = Pointer::parse(Path::new(&format!("{rev}:{rel}")), &bytes)?;
            let art = artifact_rel(&rel, &p.path);
            out.push((rel, p, art));
        }
        Ok(out)
    }

    /// The pointer file path for an argument naming an artifact or its
    /// pointer file.
    pub fn pointer_for_arg(&self, arg: &Path) -> Result<String> {
        let rel = self.rel_path(arg)?;
        let rel = rel.trim_end_matches('/').to_string();
        if rel.ends_with(pointer::EXT) {
            Ok(rel)
        } else {
            Ok(format!("{rel}{}", pointer::EXT))
        }
    }
}

/// The artifact named `name` beside pointer file `pointer_rel`.
fn artifact_rel(pointer_rel: &str, name: &str) -> String {
    match pointer_rel.rfind('/') {
        Some(i) => format!("{}/{name}", &pointer_rel[..i]),
        None => name.to_string(),
    }
}

/// Lexically remove `.` and `..` (no filesystem access).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Write a small file atomically and durably: temp file beside it, fsync,
/// rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_as(path, bytes, true).map(|_| ())
}

/// [`write_atomic`], but only if nothing is at `path` yet: the complete
/// file appears there (hard link, then the temp name is dropped) or
/// `Ok(false)` says another writer got there first. Two processes claiming
/// the same name this way never both succeed, and neither leaves a partial
/// file.
pub fn write_atomic_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    write_atomic_as(path, bytes, false)
}

fn write_atomic_as(path: &Path, bytes: &[u8], replace: bool) -> Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Created 0666 less the umask, like any file a user's tool writes
    // (tempfile's default is 0600, which git would commit as-is).
    let mut tmp = tempfile::Builder::new()
        .prefix(".recsys-tmp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .ctx("create temp file in", dir)?;
    tmp.write_all(bytes).ctx("write", tmp.path())?;
    tmp.as_file().sync_all().ctx("sync", tmp.path())?;
    if replace {
        tmp.persist(path)
            .map_err(|e| e.error)
            .ctx("rename into place", path)?;
    } else {
        match tmp.persist_noclobber(path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e.error).ctx("link into place", path),
        }
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_after_prefix() {
        assert_eq!(number_after("dataset_12", "dataset_"), Some(12));
        assert_eq!(number_after("model_v3", "model_v"), Some(3));
        assert_eq!(number_after("dataset_", "dataset_"), None);
        assert_eq!(number_after("dataset_1a", "dataset_"), None);
        assert_eq!(number_after("model_v99999999999999999999", "model_v"), None);
    }

    #[test]
    fn artifact_beside_pointer() {
        assert_eq!(artifact_rel("data/x.recsys", "x"), "data/x");
        assert_eq!(artifact_rel("x.recsys", "x"), "x");
    }
}
