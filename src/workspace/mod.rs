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
mod datasets;
mod forget;
mod gc;
pub mod pointer;
mod query;
mod remote_audit;
mod remote_erase;
mod remote_gc;
mod requests;
mod retention;
mod roots;
mod scan;
mod status;
mod sync;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use add::{AddOptions, Added, Output, RunSpec};
pub use audit::Problem;
pub use checkout::{CheckedOut, CheckoutOptions};
pub use config::{LocalConfig, LocalRemote, ProjectConfig, RemoteEntry};
pub use datasets::NewDataset;
pub use forget::{
    DatasetForgotten, ForgetOptions, ForgetReport, SegmentForgotten, TrainedOnErased, user_hash,
};
pub use gc::{GcOptions, GcReport, KeptObject};
pub use pointer::{Kind, Pointer, PointerError};
pub use query::{ArtifactLineage, DiffEntry, EdgeView, RebuildReport, Upstream};
pub use remote_audit::RemoteAudit;
pub use remote_erase::RemoteErasure;
pub use remote_gc::{REMOTE_GRACE, RemoteGcOptions, RemoteGcReport};
pub use requests::{NEAR_WINDOW_MS, RequestLineage, ServedLineage};
pub use retention::{DroppedSegment, RetentionReport};
pub use roots::{GRACE, KeepSet, PointerRoots, Reason, Role, Root, RootOptions, SERVING_CONFIG};
pub use status::{ArtifactStatus, RemoteState, StoreState, WorkState};
pub use sync::{PullReport, PushReport};

use crate::lineage::{CodeVersion, LineageDb, LineageError, git::Git};
use crate::paths::PathError;
use crate::store::{LocalStore, StoreError};

/// The project's marker directory (committed): config such as remotes.
pub(crate) const DOT_DIR: &str = ".recsys";
pub(crate) const STORE_DIR: &str = "store";
pub(crate) const LINEAGE_DB: &str = "lineage.db";
/// What `init` keeps out of git: the store and the lineage index with its
/// WAL, shared memory and set-aside damaged copies.
/// And this clone's secrets (`.recsys/config.local.json`).
const IGNORED_AT_ROOT: &[&str] = &[
    "/store/",
    "/lineage.db",
    "/lineage.db-*",
    "/lineage.db.*",
    "/.recsys/config.local.json",
];

/// Where the request log's open segments live, relative to the project
/// root (the server writes them, the keep-set and rebuild read them).
pub(crate) const LOG_DIR: &str = "log/requests";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lineage(#[from] LineageError),
    #[error(transparent)]
    Pointer(#[from] PointerError),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error(transparent)]
    Segment(#[from] crate::segment::SegmentError),
    #[error("{path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: PathError,
    },
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    #[error("{0} is not inside a recsys project (run `recsys init` first)")]
    NotAProject(PathBuf),
    #[error(
        "{} exists but is not a registered dataset (left over from an interrupted run?); \
         move it away or `recsys add` it, then retry", .0.display()
    )]
    Occupied(PathBuf),
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
    #[error(
        "removed nothing: cannot tell everything that must be kept while these remain \
         (fix or remove them, then run gc again):\n  {0}"
    )]
    UnsureWhatToKeep(String),
    #[error(
        "user {user} is in no request-log segment, request index row or dataset of this project{}; nothing changed",
        before.as_ref().map(|r| format!(" (forgotten already by run {r})")).unwrap_or_default()
    )]
    UnknownUser { user: i64, before: Option<String> },
}

pub type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

/// Attach an operation and a path to an `io::Error`, as this module's
/// error (the shared [`FsError`](crate::fs_error::FsError) inside).
pub(crate) trait IoCtx<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoCtx<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| crate::fs_error::FsError::new(op, path, source).into())
    }
}

/// Settings the caller (CLI or test) decides; the core reads no environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Milliseconds since the epoch to stamp runs with; `None` = the clock.
    pub now_ms: Option<i64>,
    /// Parallel transfers for push/fetch.
    pub jobs: usize,
    /// S3 credentials from the caller's environment (AWS_ACCESS_KEY_ID...
    /// or a profile); `.recsys/config.local.json` overrides them per remote.
    pub aws: Option<crate::store::s3::S3Credentials>,
    /// AWS_REGION, for S3 remotes that name none.
    pub aws_region: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            now_ms: None,
            jobs: 8,
            aws: None,
            aws_region: None,
        }
    }
}

/// recsys's own version and the commit it was built from.
pub(crate) fn recsys_build() -> (String, String) {
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
        if git && ws.ensure_ignored(&root, IGNORED_AT_ROOT)? {
            created.push(".gitignore entries".into());
        }
        Ok((ws, InitReport { root, git, created }))
    }

    /// Open the project containing `start` (searching upwards for `.recsys/`).
    pub fn discover(start: &Path, settings: Settings) -> Result<Workspace> {
        Workspace::open_at(find_root(start)?, settings)
    }

    /// [`Workspace::discover`] for `lineage --rebuild`: a lineage.db SQLite
    /// finds damaged is set aside (its new name is returned) and a new one
    /// created, to be rebuilt.
    pub(crate) fn discover_for_rebuild(
        start: &Path,
        settings: Settings,
    ) -> Result<(Workspace, Option<PathBuf>)> {
        let root = find_root(start)?;
        match Workspace::open_at(root.clone(), settings.clone()) {
            Err(WorkspaceError::Lineage(LineageError::Corrupt { path, .. })) => {
                let aside = LineageDb::set_aside(&path, now_ms(&settings))?;
                let ws = Workspace::open_at(root.clone(), settings)?;
                if ws.git.is_some() {
                    ws.ensure_ignored(&root, IGNORED_AT_ROOT)?;
                }
                Ok((ws, Some(aside)))
            }
            other => other.map(|ws| (ws, None)),
        }
    }

    /// Set the open lineage.db aside as damaged and start a new, empty one.
    pub(crate) fn replace_damaged_lineage(&mut self) -> Result<PathBuf> {
        let path = self.root.join(LINEAGE_DB);
        // Closed first: a connection closed after the rename would clean up
        // `lineage.db-wal` by name, the new database's.
        let old = std::mem::replace(&mut self.lineage, LineageDb::in_memory()?);
        drop(old);
        let aside = LineageDb::set_aside(&path, self.now_ms())?;
        self.lineage = LineageDb::open(&path)?;
        if self.git.is_some() {
            self.ensure_ignored(&self.root, IGNORED_AT_ROOT)?;
        }
        Ok(aside)
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

    pub(crate) fn now_ms(&self) -> i64 {
        now_ms(&self.settings)
    }

    /// The code version to record in a run started now.
    pub(crate) fn code_version(&self) -> Result<CodeVersion> {
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
    pub(crate) fn rel_path(&self, p: &Path) -> Result<String> {
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().ctx("current dir", p)?.join(p)
        };
        let norm = normalize(&abs);
        // Lexically first, so a path through a symlinked directory keeps its
        // name inside the project (`data/x.csv` with `data -> /mnt/big`);
        // else with the parent's symlinks resolved (the project reached
        // through a link, e.g. an absolute path via a symlinked home).
        let full = if norm.starts_with(&self.root) {
            norm
        } else {
            let parent_real = match norm.parent() {
                Some(par) if par.exists() => fs::canonicalize(par).ctx("resolve", par)?,
                Some(par) => par.to_path_buf(),
                None => return Err(WorkspaceError::OutsideProject(p.into())),
            };
            match norm.file_name() {
                Some(n) => parent_real.join(n),
                None => parent_real,
            }
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
        // A pointer file argument names its artifact: only the rest is
        // checked against git's and recsys's own names.
        let art = s.strip_suffix(pointer::EXT).unwrap_or(&s);
        crate::paths::check_not_owned(art, true).map_err(|source| WorkspaceError::Path {
            path: s.clone().into(),
            source,
        })?;
        Ok(s)
    }

    /// Keep `.recsys/config.local.json` (credentials) out of git, in a
    /// project initialised before it existed too.
    pub fn ignore_local_config(&self) -> Result<()> {
        if self.git.is_some() {
            self.ensure_ignored(&self.root, IGNORED_AT_ROOT)?;
        }
        Ok(())
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
    /// sorted. Does not descend into `.git` (at any level), the root's
    /// store and `.recsys/`, tracked artifact directories, or directories
    /// tagged with `CACHEDIR.TAG` (the request log). Symlinked directories
    /// are followed wherever they lead (`data/` moved to a bigger disk is
    /// still the project's data), after every real directory, each
    /// directory once (so a link cycle ends). What is found through a link
    /// is named by its path inside the project. A `*.recsys` symlink is
    /// listed, so that reading it fails loudly rather than being skipped.
    /// Every command that looks at "all pointer files" (status, checkout,
    /// push, fetch, gc, audit, diff, lineage) takes this list.
    pub(crate) fn pointer_files(&self) -> Result<Vec<String>> {
        use std::collections::HashSet;
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let root_meta = fs::metadata(&self.root).ctx("stat", &self.root)?;
        let mut walked: HashSet<(u64, u64)> = HashSet::from([(root_meta.dev(), root_meta.ino())]);
        let mut stack = vec![(self.root.clone(), String::new())];
        let mut linked: Vec<(PathBuf, String)> = Vec::new();
        loop {
            let (dir, rel) = match stack.pop() {
                Some(x) => x,
                None => match linked.pop() {
                    Some((link, rel)) => {
                        match fs::metadata(&link) {
                            Ok(m) if m.is_dir() && walked.insert((m.dev(), m.ino())) => {
                                stack.push((link, rel));
                            }
                            // A dangling link, a link to a file, or a
                            // directory walked already.
                            _ => {}
                        }
                        continue;
                    }
                    None => break,
                },
            };
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
                names.retain(|(n, _)| n != STORE_DIR && n != DOT_DIR);
            }
            names.retain(|(n, _)| n != ".git");
            if names.iter().any(|(n, _)| n == "CACHEDIR.TAG") {
                continue;
            }
            let is_pointer = |n: &str, ft: &fs::FileType| {
                (ft.is_file() || ft.is_symlink()) && n.ends_with(pointer::EXT)
            };
            let pointers: Vec<&String> = names
                .iter()
                .filter(|(n, ft)| is_pointer(n, ft))
                .map(|(n, _)| n)
                .collect();
            for (n, ft) in &names {
                let child_rel = if rel.is_empty() {
                    n.clone()
                } else {
                    format!("{rel}/{n}")
                };
                if is_pointer(n, ft) {
                    out.push(child_rel);
                    continue;
                }
                let tracked = pointers
                    .iter()
                    .any(|p| **p == format!("{n}{}", pointer::EXT));
                if tracked {
                    continue;
                }
                if ft.is_dir() {
                    let p = dir.join(n);
                    let m = fs::symlink_metadata(&p).ctx("stat", &p)?;
                    if walked.insert((m.dev(), m.ino())) {
                        stack.push((p, child_rel));
                    }
                } else if ft.is_symlink() {
                    linked.push((dir.join(n), child_rel));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Read and check one pointer file (relative to the root). Returns the
    /// pointer and the artifact's path relative to the root. Its directory
    /// may be reached through a symlink (reading changes nothing; writers
    /// check [`Workspace::check_writable`]); the pointer file itself may
    /// not be a symlink: which directory its artifact is "beside" would be
    /// ambiguous.
    pub(crate) fn read_pointer(&self, rel: &str) -> Result<(Pointer, String)> {
        let abs = self.root.join(rel);
        let meta = fs::symlink_metadata(&abs).ctx("open pointer file", &abs)?;
        if meta.file_type().is_symlink() {
            return Err(WorkspaceError::Path {
                path: rel.into(),
                source: PathError::SymlinkPointer(rel.into()),
            });
        }
        let bytes = fs::read(&abs).ctx("read pointer file", &abs)?;
        let p = Pointer::parse(Path::new(rel), &bytes)?;
        let art = artifact_rel(rel, &p.path);
        Ok((p, art))
    }

    /// Refuse to write `rel` (relative to the root) through a symlinked
    /// directory that leads out of the project and that git tracks: such a
    /// link came with someone's commit, like a pointer file, and is just as
    /// untrusted. A link git does not track was made on this machine (the
    /// user's `data -> /mnt/big/data`) and is followed; so is any link that
    /// stays inside the project. The last component itself may be a link:
    /// it is replaced, not followed.
    pub(crate) fn check_writable(&self, rel: &str) -> Result<()> {
        let mut cur = self.root.clone();
        let mut cur_rel = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            cur.push(part);
            if !cur_rel.is_empty() {
                cur_rel.push('/');
            }
            cur_rel.push_str(part);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {}
                Ok(_) => continue,
                Err(_) => break, // does not exist yet: nothing below is a link
            }
            let target = match fs::canonicalize(&cur) {
                Ok(t) => t,
                Err(_) => break, // dangling: the write fails by itself
            };
            if target.starts_with(&self.root) {
                continue;
            }
            let untrusted = match &self.git {
                Some(g) => g.tracks_symlink(&cur_rel)?,
                None => false,
            };
            if untrusted {
                return Err(WorkspaceError::Path {
                    path: rel.into(),
                    source: PathError::SymlinkEscape {
                        path: rel.into(),
                        link: cur.clone(),
                    },
                });
            }
        }
        Ok(())
    }

    /// Pointers at git revision `rev`: (pointer path, pointer, artifact path).
    pub(crate) fn pointers_at(&self, rev: &str) -> Result<Vec<(String, Pointer, String)>> {
        let git = self.git.as_ref().ok_or_else(|| {
            WorkspaceError::Invalid(format!(
                "--rev {rev}: this project is not in a git repository"
            ))
        })?;
        let commit = git.resolve(rev)?;
        let mut out = Vec::new();
        for (rel, bytes) in git.pointer_files_at(&commit, pointer::EXT)? {
            let p = Pointer::parse(Path::new(&rel), &bytes).map_err(|mut e| {
                e.file = PathBuf::from(format!("{rev}:{rel}"));
                e
            })?;
            let art = artifact_rel(&rel, &p.path);
            out.push((rel, p, art));
        }
        Ok(out)
    }

    /// The pointer file path for an argument naming an artifact or its
    /// pointer file.
    pub(crate) fn pointer_for_arg(&self, arg: &Path) -> Result<String> {
        let rel = self.rel_path(arg)?;
        let rel = rel.trim_end_matches('/').to_string();
        if rel.ends_with(pointer::EXT) {
            Ok(rel)
        } else {
            Ok(format!("{rel}{}", pointer::EXT))
        }
    }
}

/// The settings' clock, else the system's, in Unix milliseconds.
fn now_ms(settings: &Settings) -> i64 {
    settings.now_ms.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// The project root containing `start`: the nearest directory upwards
/// with a `.recsys/`.
fn find_root(start: &Path) -> Result<PathBuf> {
    let start = fs::canonicalize(start).ctx("open", start)?;
    let mut cur: &Path = &start;
    loop {
        if cur.join(DOT_DIR).is_dir() {
            return Ok(cur.to_path_buf());
        }
        match cur.parent() {
            Some(p) => cur = p,
            None => return Err(WorkspaceError::NotAProject(start)),
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
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_as(path, bytes, true).map(|_| ())
}

/// [`write_atomic`], but only if nothing is at `path` yet: the complete
/// file appears there (hard link, then the temp name is dropped) or
/// `Ok(false)` says another writer got there first. Two processes claiming
/// the same name this way never both succeed, and neither leaves a partial
/// file.
pub(crate) fn write_atomic_new(path: &Path, bytes: &[u8]) -> Result<bool> {
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
    fn artifact_beside_pointer() {
        assert_eq!(artifact_rel("data/x.recsys", "x"), "data/x");
        assert_eq!(artifact_rel("x.recsys", "x"), "x");
    }
}
